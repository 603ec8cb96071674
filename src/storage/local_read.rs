//! Reading a stored blob straight from the filesystem in large chunks. `object_store`'s local
//! store streams files 8 KiB at a time, one blocking-pool hop each, which caps a warm blob at a
//! few hundred MB/s; reading 1 MiB per hop serves at disk or page-cache speed.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::Path as FsPath;

use bytes::BytesMut;
use futures::StreamExt;
use object_store::path::Path;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{StorageError, StoredRead};

const CHUNK: u64 = 1024 * 1024;

/// The object at `key` below `root` (the keys cistern reads this way, blob contents, are plain
/// `[a-z0-9/]` and map to files one to one), or the part of it `range` covers.
pub async fn read_file(
    root: &FsPath,
    key: &Path,
    range: Option<Range<u64>>,
) -> Result<Option<StoredRead>, StorageError> {
    let io_error = |source| StorageError::Io {
        key: key.to_string(),
        source,
    };
    let path = root.join(key.as_ref());
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let total_size = file.metadata().await.map_err(io_error)?.len();
    let range = range.unwrap_or(0..total_size);
    let range = range.start.min(total_size)..range.end.min(total_size);
    file.seek(SeekFrom::Start(range.start))
        .await
        .map_err(io_error)?;
    let key_name = key.to_string();
    let body =
        futures::stream::try_unfold((file, range.end - range.start), move |(mut file, left)| {
            let key_name = key_name.clone();
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let mut chunk = BytesMut::with_capacity(left.min(CHUNK) as usize);
                while (chunk.len() as u64) < left.min(CHUNK) {
                    if file.read_buf(&mut chunk).await? == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("storage key {key_name} ended early"),
                        ));
                    }
                }
                let read = chunk.len() as u64;
                Ok(Some((chunk.freeze(), (file, left - read))))
            }
        })
        .boxed();
    Ok(Some(StoredRead {
        total_size,
        range,
        body,
    }))
}
