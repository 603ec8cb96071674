//! A small real filesystem for one test: a tmpfs mounted on a temporary directory (so the
//! tests that use it run as root, as CI does), with filler files that take its space.

use std::path::PathBuf;

const MIB: usize = 1024 * 1024;

/// A tmpfs of a few MiB mounted for one test, with filler files to make it full; unmounted
/// when dropped.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
    fillers: Vec<PathBuf>,
}

impl Tmpfs {
    pub fn mount(mib: usize) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status();
        match mounted {
            Ok(status) if status.success() => {}
            other => panic!(
                "these tests need a small real filesystem: `mount -t tmpfs` failed ({other:?}); run them as root, as CI does"
            ),
        }
        Tmpfs {
            dir,
            fillers: Vec::new(),
        }
    }

    /// The storage root inside it.
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Writes 1 MiB filler files until the filesystem refuses, then 4 KiB ones for the pages
    /// left, so not a page is free.
    pub fn fill(&mut self) {
        for size in [MIB, 4096] {
            let chunk = vec![0x5a; size];
            loop {
                let path = self
                    .dir
                    .path()
                    .join(format!("filler-{}", self.fillers.len()));
                let result = std::fs::write(&path, &chunk);
                self.fillers.push(path);
                match result {
                    Ok(()) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
        }
    }

    /// Frees `mib` whole MiB of filler.
    pub fn free(&mut self, mib: usize) {
        for _ in 0..mib {
            let path = self.fillers.remove(0);
            std::fs::remove_file(path).unwrap();
        }
    }

    /// Something else on the disk takes `mib` MiB (one filler file).
    pub fn take(&mut self, mib: usize) {
        let path = self
            .dir
            .path()
            .join(format!("filler-{}", self.fillers.len()));
        std::fs::write(&path, vec![0x5a; mib * MIB]).expect("the tmpfs takes the filler");
        self.fillers.push(path);
    }

    /// Bytes free on it, as `df` says.
    pub fn available(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.dir.path().as_os_str().as_bytes()).unwrap();
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: a valid C string, and `stat` is read only after the call filled it.
        let stat = unsafe {
            assert_eq!(libc::statvfs(path.as_ptr(), stat.as_mut_ptr()), 0);
            stat.assume_init()
        };
        stat.f_bavail as u64 * stat.f_frsize as u64
    }

    /// Space comes back: every filler goes.
    pub fn empty(&mut self) {
        for path in self.fillers.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
