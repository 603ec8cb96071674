//! Spool files: where a blob being fetched lands first. Every client waiting for the blob reads
//! the spool as it grows, with positional reads on a shared handle, so memory stays bounded
//! whatever the blob's size and however many clients wait. A spool becomes a cached object only
//! through `Storage::commit_spool`, after its digest matched; a spool dropped before that is
//! deleted, and whatever a killed process left behind is deleted at the next start.
//!
//! When the spool file cannot take the bytes (the disk is full, over quota, or failing), or
//! cannot even be created, the rest of the fill goes to a bounded relay in memory instead
//! (relay.rs): clients still get every byte, the blob is just not cached from the spool.

use std::fs::File;
use std::io::Write;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::free_space::FreeSpaceFloor;
use super::relay::{Relay, RelayCursor};

/// Names the spool directories of processes using an object store, followed by their pid.
const SPOOL_PREFIX: &str = "cistern-spool-";

/// Numbers spool files uniquely within the process, whichever directory they are in.
static NEXT_SPOOL: AtomicU64 = AtomicU64::new(0);

/// The spool directory of this process for object stores, emptied once when first used.
static PROCESS_SPOOL: OnceLock<PathBuf> = OnceLock::new();

/// The directory spool files live in; it belongs to one cistern process.
pub struct SpoolDir {
    path: PathBuf,
    /// `cache.minfree` of the store the spools are on (filesystem stores only).
    floor: Option<Arc<FreeSpaceFloor>>,
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
        Ok(SpoolDir { path, floor: None })
    }

    /// Spools in this directory stop taking bytes while its disk is below `floor`.
    pub fn with_floor(mut self, floor: Arc<FreeSpaceFloor>) -> Self {
        self.floor = Some(floor);
        self
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
        Ok(SpoolDir {
            path: path.clone(),
            floor: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty spool file; `label` (a digest's hex) makes its name recognisable.
    pub fn create(&self, label: &str) -> std::io::Result<SpoolFile> {
        let n = NEXT_SPOOL.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(format!("{label}.{n}"));
        if let Some(floor) = &self.floor {
            floor.check(&path.display().to_string())?;
        }
        let writer = File::options().write(true).create_new(true).open(&path)?;
        let reader = match File::open(&path) {
            Ok(reader) => reader,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        Ok(SpoolFile {
            path: Some(path),
            writer: Some(Arc::new(writer)),
            shared: Arc::new(Shared::new(Some(reader))),
            kept: false,
            floor: self.floor.clone(),
        })
    }
}

/// What the writer and every reader of one spool share.
struct Shared {
    /// None when the spool could not be created: every byte is in the relay.
    file: Option<File>,
    /// Where the bytes the file could not take go.
    relay: Arc<Relay>,
    /// Why the file stopped taking bytes, and from which offset the relay holds them; unset
    /// while the file takes every byte.
    overflow: OnceLock<Overflow>,
}

struct Overflow {
    at: u64,
    cause: std::io::Error,
}

impl Shared {
    fn new(file: Option<File>) -> Self {
        Shared {
            file,
            relay: Arc::new(Relay::new()),
            overflow: OnceLock::new(),
        }
    }

    /// From `at` on, bytes go to the relay.
    fn overflow(&self, at: u64, cause: std::io::Error) {
        self.relay.start_at(at);
        let _ = self.overflow.set(Overflow { at, cause });
    }

    /// Bytes before this offset are in the file.
    fn in_file(&self) -> u64 {
        self.overflow.get().map_or(u64::MAX, |o| o.at)
    }
}

/// One spool file: appended to by its fill, read by any number of clients.
pub struct SpoolFile {
    /// None when the file could not be created.
    path: Option<PathBuf>,
    writer: Option<Arc<File>>,
    shared: Arc<Shared>,
    /// It became a cached object (renamed into place): do not delete it on drop.
    kept: bool,
    floor: Option<Arc<FreeSpaceFloor>>,
}

impl SpoolFile {
    /// A spool with no file (it could not be created, for `cause`): every byte goes through
    /// the relay in memory.
    pub fn in_memory(cause: std::io::Error) -> SpoolFile {
        let shared = Shared::new(None);
        shared.overflow(0, cause);
        SpoolFile {
            path: None,
            writer: None,
            shared: Arc::new(shared),
            kept: false,
            floor: None,
        }
    }

    /// The handle a fill's writer thread appends with.
    pub fn appender(&self) -> SpoolAppender {
        SpoolAppender {
            file: self.writer.clone(),
            shared: self.shared.clone(),
            written: 0,
            handed_to_disk: 0,
            floor: self.floor.clone(),
        }
    }

    /// A handle for positional reads, valid even after the file was renamed or deleted.
    pub fn reader(&self) -> SpoolReader {
        SpoolReader(self.shared.clone())
    }

    /// The file's path (for messages: `-` when there is no file).
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("-"))
    }

    /// Why the file does not hold the whole blob (some of it went through memory), if so:
    /// such a spool can never be committed.
    pub fn overflowed(&self) -> Option<&std::io::Error> {
        self.shared.overflow.get().map(|o| &o.cause)
    }

    /// Flushes the bytes to disk, so a cached object survives a power cut.
    pub async fn sync(&self) -> std::io::Result<()> {
        let Some(writer) = self.writer.clone() else {
            return Err(std::io::Error::other("the spool has no file"));
        };
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
        if let (false, Some(path)) = (self.kept, &self.path) {
            // Readers keep their handle; the bytes go once the last one is closed.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Written bytes are handed to the disk in steps of this size while the fill goes on.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// The write end of a spool file, for the one thread that fills it (it blocks: disks block).
pub struct SpoolAppender {
    /// None once the file failed (or when there was none): bytes go to the relay.
    file: Option<Arc<File>>,
    shared: Arc<Shared>,
    written: u64,
    /// Bytes before this offset are already on their way to the disk.
    handed_to_disk: u64,
    /// Checked at every writeback step: below `cache.minfree`, the rest goes to the relay.
    floor: Option<Arc<FreeSpaceFloor>>,
}

impl SpoolAppender {
    /// Appends `bytes` to the file, or to the relay once the file failed: a full disk does
    /// not stop the fill, it only keeps the blob from being cached from this spool. Blocks
    /// while the relay is full and clients still need its oldest bytes.
    pub fn append(&mut self, bytes: &Bytes) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            match (&**file).write_all(bytes) {
                Ok(()) => {
                    self.written += bytes.len() as u64;
                    if self.written - self.handed_to_disk >= WRITEBACK_STEP {
                        self.start_writeback();
                        self.keep_above_floor();
                    }
                    return Ok(());
                }
                Err(cause) => {
                    // Part of this chunk may be in the file; readers take it from the relay.
                    self.file = None;
                    self.shared.overflow(self.written, cause);
                }
            }
        }
        self.shared.relay.push(bytes.clone());
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Below `cache.minfree`, the file takes no more: the rest of the blob goes through the
    /// relay (uncached), as on a full disk.
    fn keep_above_floor(&mut self) {
        let Some(floor) = &self.floor else { return };
        if let Err(cause) = floor.check("a spool file") {
            self.file = None;
            self.shared.overflow(self.written, cause);
        }
    }

    /// Starts writing what was appended to the disk without waiting for it, so the fsync
    /// that commits the blob finds little left to do: it ran at the end of every cold fill,
    /// after the last byte arrived, for the whole blob.
    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) {
        let Some(file) = &self.file else { return };
        let (offset, len) = (self.handed_to_disk, self.written - self.handed_to_disk);
        // SAFETY: a plain syscall on a file descriptor this handle keeps open; no memory is
        // passed. It is only advice: when it fails, the fsync at commit does all the work.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
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

/// A read handle on a spool, shared by every client of a fill.
#[derive(Clone)]
pub struct SpoolReader(Arc<Shared>);

impl SpoolReader {
    /// A cursor for one client reading from `position` on. While it lives, bytes it has not
    /// read yet are kept for it if they go through the relay (within the relay's limits).
    pub fn cursor(&self, position: u64) -> SpoolCursor {
        SpoolCursor {
            shared: self.0.clone(),
            relay: self.0.relay.cursor(position),
        }
    }

    /// Whether the bytes from `offset` on can still be read (they did not go through the
    /// relay, or the relay still holds them).
    pub fn holds_from(&self, offset: u64) -> bool {
        offset < self.0.in_file() || offset >= self.0.relay.base()
    }
}

/// One client's reading of a spool.
pub struct SpoolCursor {
    shared: Arc<Shared>,
    relay: RelayCursor,
}

impl SpoolCursor {
    /// Up to `len` bytes from `offset` (fewer only at the end of what was written, or where
    /// the file ends and the relay begins).
    pub async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let in_file = self.shared.in_file();
        if offset >= in_file {
            return self
                .relay
                .read(offset, len)
                .map_err(|behind| std::io::Error::other(behind.to_string()));
        }
        let len = len.min((in_file - offset).min(usize::MAX as u64) as usize);
        let shared = self.shared.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let Some(file) = &shared.file else {
                return Ok(Vec::new());
            };
            let mut buf = vec![0; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64)? {
                    0 => break,
                    n => filled += n,
                }
            }
            buf.truncate(filled);
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.relay.moved_to(offset + bytes.len() as u64);
        Ok(Bytes::from(bytes))
    }
}
