//! `cache.minfree`: free space a filesystem store keeps for everything else on its disk (the
//! OS, logs, other services). Below the floor the store takes no more content: a fill that
//! would write goes through memory uncached (as on a full disk), the evictor is woken, and it
//! frees what brings the disk back above the floor. Records and cistern's own small keys are
//! still written (a few bytes each), so the eviction lease and tag records keep working.

use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::config::MinFree;

/// The floor of one filesystem store; off until `keep` is called.
#[derive(Default)]
pub struct FreeSpaceFloor {
    /// The store's root (any directory on its filesystem).
    root: PathBuf,
    floor: OnceLock<MinFree>,
    /// The last reading, for the evictor and the status: bytes available to cistern.
    last_available: AtomicU64,
}

/// What the filesystem says about its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskRoom {
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// The filesystem's size.
    pub total: u64,
}

impl FreeSpaceFloor {
    pub fn new(root: &Path) -> Self {
        FreeSpaceFloor {
            root: root.to_owned(),
            ..FreeSpaceFloor::default()
        }
    }

    /// Keeps `min_free` free from now on (the first call wins).
    pub fn keep(&self, min_free: MinFree) {
        let _ = self.floor.set(min_free);
    }

    pub fn is_set(&self) -> bool {
        self.floor.get().is_some()
    }

    /// How many bytes to free when the disk is below the floor: back to the floor and a tenth
    /// of it beyond, so the evictor does not run again at the next write. None when there is
    /// room (or no floor, or the filesystem cannot say).
    pub fn bytes_to_free(&self) -> Option<u64> {
        let floor = self.floor.get()?;
        let room = self.room()?;
        let keep = floor.bytes_of(room.total);
        (room.available < keep).then(|| keep - room.available + keep / 10)
    }

    /// Refuses a content write while the disk is below the floor, with an error read as
    /// "out of space" (so the write goes uncached and the evictor is woken).
    pub fn check(&self, key: &str) -> Result<(), Error> {
        let Some(floor) = self.floor.get() else {
            return Ok(());
        };
        let Some(room) = self.room() else {
            return Ok(());
        };
        let keep = floor.bytes_of(room.total);
        if room.available >= keep {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::StorageFull,
            format!(
                "not writing {key}: {} bytes available on {}, cache.minfree keeps {keep} free",
                room.available,
                self.root.display()
            ),
        ))
    }

    /// The bytes available at the last reading (0 before any).
    pub fn last_available(&self) -> u64 {
        self.last_available.load(Ordering::Relaxed)
    }

    fn room(&self) -> Option<DiskRoom> {
        match disk_room(&self.root) {
            Ok(room) => {
                self.last_available.store(room.available, Ordering::Relaxed);
                Some(room)
            }
            Err(e) => {
                tracing::warn!(path = %self.root.display(), error = %e, "cannot read the free space for cache.minfree; not enforcing it for this write");
                None
            }
        }
    }
}

/// The room on the filesystem holding `path`.
#[cfg(target_os = "linux")]
pub fn disk_room(path: &Path) -> std::io::Result<DiskRoom> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is written by the call
    // before it is read (only when it returned 0).
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(Error::last_os_error());
        }
        stat.assume_init()
    };
    let block = stat.f_frsize as u64;
    Ok(DiskRoom {
        available: stat.f_bavail as u64 * block,
        total: stat.f_blocks as u64 * block,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn disk_room(_path: &Path) -> std::io::Result<DiskRoom> {
    Err(Error::new(
        ErrorKind::Unsupported,
        "free space is read on Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_refuses_content_and_names_what_it_is_short_of() {
        let dir = tempfile::tempdir().unwrap();
        let floor = FreeSpaceFloor::new(dir.path());
        assert!(floor.check("blobs/x").is_ok(), "no floor, no refusal");
        assert_eq!(floor.bytes_to_free(), None);

        let room = disk_room(dir.path()).unwrap();
        assert!(room.total >= room.available && room.available > 0);
        floor.keep(MinFree::Bytes(room.total));
        let refused = floor.check("blobs/sha256/ab/abcd").unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::StorageFull);
        assert!(refused.to_string().contains("blobs/sha256/ab/abcd"));
        assert!(crate::storage::out_of_space(&refused));
        let to_free = floor.bytes_to_free().unwrap();
        assert!(to_free > room.total / 10 && to_free <= room.total + room.total / 10);
    }

    #[test]
    fn a_floor_below_the_free_space_lets_writes_through() {
        let dir = tempfile::tempdir().unwrap();
        let floor = FreeSpaceFloor::new(dir.path());
        floor.keep(MinFree::Bytes(1));
        assert!(floor.check("blobs/x").is_ok());
        assert_eq!(floor.bytes_to_free(), None);
        assert!(floor.last_available() > 0);
    }
}
