//! Reading a stored blob straight from the filesystem in large chunks. `object_store`'s local
//! store streams files 8 KiB at a time, one blocking-pool hop each, which caps a warm blob at a
//! few hundred MB/s. Here each hop reads 1 MiB into a pooled buffer (`read_buffers`), and the
//! next chunk is read while hyper sends the last one, so one client's stream is never idle
//! waiting for the disk or the page cache.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path as FsPath;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use tokio::task::JoinHandle;

use super::read_buffers::{self, CHUNK};
use super::{StorageError, StoredRead};

/// A read running on the blocking pool: the file back, with the chunk read from it.
type PendingRead = JoinHandle<std::io::Result<(File, Bytes)>>;

/// The object at `key` below `root` (the keys cistern reads this way, blob contents, are plain
/// `[a-z0-9/]` and map to files one to one), or the part of it `range` covers.
pub async fn read_file(
    root: &FsPath,
    key: &Path,
    range: Option<Range<u64>>,
) -> Result<Option<StoredRead>, StorageError> {
    let path = root.join(key.as_ref());
    let opened = tokio::task::spawn_blocking(move || open_at(&path, range))
        .await
        .map_err(std::io::Error::other)
        .and_then(|opened| opened);
    let (file, total_size, range) = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => return Ok(None),
        Err(source) => {
            return Err(StorageError::Io {
                key: key.to_string(),
                source,
            })
        }
    };
    let key_name = key.to_string();
    let first = read_next(file, range.end - range.start, key_name.clone());
    let body =
        futures::stream::try_unfold((first, range.end - range.start), move |(pending, left)| {
            let key_name = key_name.clone();
            async move {
                let Some(pending) = pending else {
                    return Ok(None);
                };
                let (file, chunk) = pending.await.map_err(std::io::Error::other)??;
                let left = left - chunk.len() as u64;
                // Start the next read now, so it runs while this chunk is being sent.
                let next = read_next(file, left, key_name);
                Ok(Some((chunk, (next, left))))
            }
        })
        .boxed();
    Ok(Some(StoredRead {
        total_size,
        range,
        body,
    }))
}

/// The file at `path` positioned at the start of `range` (clamped to the file), with its size
/// and the clamped range; None if there is no such file.
fn open_at(
    path: &FsPath,
    range: Option<Range<u64>>,
) -> std::io::Result<Option<(File, u64, Range<u64>)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let total_size = file.metadata()?.len();
    let range = range.unwrap_or(0..total_size);
    let range = range.start.min(total_size)..range.end.min(total_size);
    file.seek(SeekFrom::Start(range.start))?;
    Ok(Some((file, total_size, range)))
}

/// The next chunk of at most `left` bytes from `file`, read on the blocking pool; None when
/// nothing is left.
fn read_next(mut file: File, left: u64, key_name: String) -> Option<PendingRead> {
    if left == 0 {
        return None;
    }
    Some(tokio::task::spawn_blocking(move || {
        let len = left.min(CHUNK as u64) as usize;
        let mut buffer = read_buffers::take();
        file.read_exact(&mut buffer[..len]).map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "the file ended early".to_string(),
                _ => e.to_string(),
            };
            std::io::Error::new(e.kind(), format!("reading storage key {key_name}: {what}"))
        })?;
        Ok((file, read_buffers::freeze(buffer, len)))
    }))
}
