//! Spool files: where a blob being fetched lands first. Every client waiting for the blob reads
//! the spool as it grows, with positional reads on a shared handle, so memory stays bounded
//! whatever the blob's size and however many clients wait. A spool becomes a cached object only
//! through `Storage::commit_spool`, after its digest matched; a spool dropped before that is
//! deleted, and whatever a killed process left behind is deleted at the next start.

use std::fs::File;
use std::io::Write;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Names the spool directories of processes using an object store, followed by their pid.
const SPOOL_PREFIX: &str = "cistern-spool-";

/// Numbers spool files uniquely within the process, whichever directory they are in.
static NEXT_SPOOL: AtomicU64 = AtomicU64::new(0);

/// The spool directory of this process for object stores, emptied once when first used.
static PROCESS_SPOOL: OnceLock<PathBuf> = OnceLock::new();

/// The directory spool files live in; it belongs to one cistern process.
pub struct SpoolDir {
    path: PathBuf,
}

impl SpoolDir {
    /// Creates `path` empty: a spool left there was a fill cut short (by a crash or SIGKILL),
    /// so it is unverified and must never be served or committed.
    pub fn clean(path: PathBuf) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed spool files of unfinished fills")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&path)?;
        Ok(SpoolDir { path })
    }

    /// For a store that is not a local directory: a directory of this process under the
    /// system's temporary directory. Those of processes no longer running are removed.
    pub fn for_this_process() -> std::io::Result<Self> {
        // Emptied once per process, however many stores it opens (tests run several).
        let path = PROCESS_SPOOL.get_or_init(|| {
            let temp = std::env::temp_dir();
            let ours = format!("{SPOOL_PREFIX}{}", std::process::id());
            if let Ok(entries) = std::fs::read_dir(&temp) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(pid) = name.strip_prefix(SPOOL_PREFIX) else {
                        continue;
                    };
                    if name == ours || !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            temp.join(ours)
        });
        std::fs::create_dir_all(path)?;
        Ok(SpoolDir { path: path.clone() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty spool file; `label` (a digest's hex) makes its name recognisable.
    pub fn create(&self, label: &str) -> std::io::Result<SpoolFile> {
        let n = NEXT_SPOOL.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(format!("{label}.{n}"));
        let writer = File::options().write(true).create_new(true).open(&path)?;
        let reader = File::open(&path)?;
        Ok(SpoolFile {
            path,
            writer: Arc::new(writer),
            reader: Arc::new(reader),
            kept: false,
        })
    }
}

/// One spool file: appended to by its fill, read by any number of clients.
pub struct SpoolFile {
    path: PathBuf,
    writer: Arc<File>,
    reader: Arc<File>,
    /// It became a cached object (renamed into place): do not delete it on drop.
    kept: bool,
}

impl SpoolFile {
    /// The handle a fill's writer thread appends with.
    pub fn appender(&self) -> SpoolAppender {
        SpoolAppender {
            file: self.writer.clone(),
            written: 0,
            handed_to_disk: 0,
        }
    }

    /// A handle for positional reads, valid even after the file was renamed or deleted.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader(self.reader.clone())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the bytes to disk, so a cached object survives a power cut.
    pub async fn sync(&self) -> std::io::Result<()> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || writer.sync_data())
            .await
            .map_err(std::io::Error::other)?
    }

    /// The file now lives elsewhere under a cached object's name.
    pub(super) fn mark_kept(&mut self) {
        self.kept = true;
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.kept {
            // Readers keep their handle; the bytes go once the last one is closed.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Written bytes are handed to the disk in steps of this size while the fill goes on.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// The write end of a spool file, for the one thread that fills it (it blocks: disks block).
pub struct SpoolAppender {
    file: Arc<File>,
    written: u64,
    /// Bytes before this offset are already on their way to the disk.
    handed_to_disk: u64,
}

impl SpoolAppender {
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        (&*self.file).write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.handed_to_disk >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(())
    }

    /// Starts writing what was appended to the disk without waiting for it, so the fsync
    /// that commits the blob finds little left to do: it ran at the end of every cold fill,
    /// after the last byte arrived, for the whole blob.
    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) {
        let (offset, len) = (self.handed_to_disk, self.written - self.handed_to_disk);
        // SAFETY: a plain syscall on a file descriptor this handle keeps open; no memory is
        // passed. It is only advice: when it fails, the fsync at commit does all the work.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.handed_to_disk = self.written;
    }

    /// Elsewhere the fsync at commit does all the writing.
    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) {
        self.handed_to_disk = self.written;
    }
}

/// A read handle on a spool file, shared by every client of a fill.
#[derive(Clone)]
pub struct SpoolReader(Arc<File>);

impl SpoolReader {
    /// Up to `len` bytes from `offset` (fewer only at the end of what was written).
    pub async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let file = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64)? {
                    0 => break,
                    n => filled += n,
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
