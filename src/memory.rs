//! How the process keeps memory it freed.
//!
//! Every cold fill passes its blob through short-lived buffers: hyper's receive chunks, queued
//! to the hashing and spool threads and freed there. glibc's malloc hands such memory back to
//! the kernel soon after it is freed (it trims heaps with `madvise` and maps chunks of 128 KiB
//! and more with `mmap`, adjusting both thresholds as it goes), so the next fill faults the
//! same amount in again as freshly zeroed pages: about 8,000 page faults (32 MiB) per 64 MiB
//! fill, and on a VM whose balloon returns freed pages to its host, each fault also costs the
//! host a page, which doubled the fill's time. With fixed thresholds, freed buffers are reused
//! and a fill causes almost no page faults.
//!
//! Kept memory is only reusable by the heap (arena) it was freed to, and glibc makes up to 8
//! per core, one for each thread that meets contention: with thresholds alone, peak RSS while
//! serving 8 streams rose from 38 to 52 MiB. One heap per core keeps it at 32 MiB.

/// Allocations from this size up get their own mapping; smaller ones (1 MiB read buffers,
/// receive chunks) come from the heap and are reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 4 * 1024 * 1024;
/// Free memory at the top of a heap is returned to the kernel only beyond this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 64 * 1024 * 1024;

/// Sets the allocator up to reuse freed memory; call it first thing in `main`, before any
/// other thread starts. Elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let heaps = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets allocator parameters, and no other thread exists yet.
        // It returns 0 when it declines a value, which only leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, heaps);
        }
    }
}
