//! Where a fill's bytes go when its spool file cannot take them (the disk is full, over quota,
//! or failing): a bounded window in memory that every client of the fill reads from, so the
//! blob still streams through to them, uncached. The writer waits while the window is full
//! and a client still needs its oldest bytes, so memory stays bounded (`RELAY_WINDOW` per
//! fill) and the fetch goes at the pace of its slowest client; a client that makes no
//! progress for `LAGGARD_WAIT` is left behind (its stream fails) rather than stalling everyone
//! else. Bytes nobody reads are not kept.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The most a relay holds in memory.
pub const RELAY_WINDOW: usize = 8 * 1024 * 1024;
/// How long the writer waits for a client that still needs the oldest bytes of a full window.
pub const LAGGARD_WAIT: Duration = Duration::from_secs(10);

static NEXT_CURSOR: AtomicU64 = AtomicU64::new(0);

/// A bounded window over a fill's bytes, starting at some offset of the blob.
pub struct Relay {
    state: Mutex<RelayState>,
    /// Signalled when a client moved on (the writer may drop bytes).
    moved: Condvar,
    window: usize,
    laggard_wait: Duration,
}

struct RelayState {
    /// The blob offset of the first byte held.
    base: u64,
    chunks: VecDeque<Bytes>,
    held: usize,
    /// Where each client reads next, by cursor id.
    cursors: HashMap<u64, u64>,
}

/// Why a read from the relay found nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Behind {
    /// The bytes asked for were dropped from the window already.
    Dropped { wanted: u64, base: u64 },
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Behind::Dropped { wanted, base } = self;
        write!(
            f,
            "byte {wanted} of this uncached blob has already been passed on (the relay holds from byte {base}); ask again"
        )
    }
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new()
    }
}

impl Relay {
    /// An empty relay; `start_at` says where in the blob its first byte will be.
    pub fn new() -> Self {
        Relay::with_limits(0, RELAY_WINDOW, LAGGARD_WAIT)
    }

    /// The first byte pushed will be the blob's byte `base` (before anything was pushed).
    pub fn start_at(&self, base: u64) {
        let mut state = self.lock();
        debug_assert!(state.chunks.is_empty());
        state.base = base;
    }

    pub fn with_limits(base: u64, window: usize, laggard_wait: Duration) -> Self {
        Relay {
            state: Mutex::new(RelayState {
                base,
                chunks: VecDeque::new(),
                held: 0,
                cursors: HashMap::new(),
            }),
            moved: Condvar::new(),
            window,
            laggard_wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RelayState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bytes`, first making room: dropping the oldest bytes every client has read
    /// (at once when no client reads), waiting (blocking this thread) for clients that still
    /// need them, and dropping them anyway after `laggard_wait` without progress.
    pub fn push(&self, bytes: Bytes) {
        let mut state = self.lock();
        let mut waited_since = Instant::now();
        let mut slowest = state.slowest();
        while state.held > 0 && state.held + bytes.len() > self.window {
            let front = state.chunks.front().map_or(0, |c| c.len() as u64);
            let front_end = state.base + front;
            let free = slowest.is_none_or(|slowest| slowest >= front_end);
            if free || waited_since.elapsed() >= self.laggard_wait {
                state.drop_front();
                continue;
            }
            let left = self.laggard_wait.saturating_sub(waited_since.elapsed());
            state = self
                .moved
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            let now = state.slowest();
            if now != slowest {
                // Someone moved on: the wait for laggards starts again.
                waited_since = Instant::now();
                slowest = now;
            }
        }
        state.held += bytes.len();
        state.chunks.push_back(bytes);
    }

    /// A cursor for one client, which reads from `position` on; the writer keeps the bytes
    /// from there while the cursor lives (within its limits).
    pub fn cursor(self: &Arc<Self>, position: u64) -> RelayCursor {
        let id = NEXT_CURSOR.fetch_add(1, Ordering::Relaxed);
        self.lock().cursors.insert(id, position);
        RelayCursor {
            relay: self.clone(),
            id,
        }
    }

    /// The blob offset of the first byte still held.
    pub fn base(&self) -> u64 {
        self.lock().base
    }

    /// Up to `len` bytes from `offset`, as far as they are held (empty at the end of what
    /// was pushed).
    fn read(&self, offset: u64, len: usize) -> Result<Bytes, Behind> {
        let state = self.lock();
        if offset < state.base {
            return Err(Behind::Dropped {
                wanted: offset,
                base: state.base,
            });
        }
        let mut start = state.base;
        for chunk in &state.chunks {
            let end = start + chunk.len() as u64;
            if offset < end {
                let from = (offset - start) as usize;
                let to = chunk.len().min(from + len);
                return Ok(chunk.slice(from..to));
            }
            start = end;
        }
        Ok(Bytes::new())
    }
}

impl RelayState {
    /// The position of the slowest client the relay can still serve (one behind `base` was
    /// left behind already: waiting for it would stall everyone for nothing).
    fn slowest(&self) -> Option<u64> {
        self.cursors
            .values()
            .copied()
            .filter(|position| *position >= self.base)
            .min()
    }

    fn drop_front(&mut self) {
        if let Some(chunk) = self.chunks.pop_front() {
            self.base += chunk.len() as u64;
            self.held -= chunk.len();
        }
    }
}

/// One client's place in a relay.
pub struct RelayCursor {
    relay: Arc<Relay>,
    id: u64,
}

impl RelayCursor {
    /// Up to `len` bytes from `offset`; the client needs nothing before `offset` any more.
    pub fn read(&self, offset: u64, len: usize) -> Result<Bytes, Behind> {
        let bytes = self.relay.read(offset, len);
        if let Ok(bytes) = &bytes {
            self.moved_to(offset + bytes.len() as u64);
        }
        bytes
    }

    /// The client needs nothing before `position` any more.
    pub fn moved_to(&self, position: u64) {
        self.relay.lock().cursors.insert(self.id, position);
        self.relay.moved.notify_all();
    }
}

impl Drop for RelayCursor {
    fn drop(&mut self) {
        self.relay.lock().cursors.remove(&self.id);
        self.relay.moved.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    #[test]
    fn reads_what_was_pushed_across_chunks() {
        let relay = Arc::new(Relay::with_limits(0, 100, Duration::from_secs(5)));
        relay.push(bytes(4, 1));
        relay.push(bytes(4, 2));
        let cursor = relay.cursor(0);
        assert_eq!(&cursor.read(2, 10).unwrap()[..], &[1, 1]);
        assert_eq!(&cursor.read(4, 10).unwrap()[..], &[2, 2, 2, 2]);
        assert!(cursor.read(8, 10).unwrap().is_empty());
    }

    #[test]
    fn the_window_is_bounded_and_the_oldest_bytes_go_once_every_client_read_them() {
        let relay = Arc::new(Relay::with_limits(0, 8, Duration::from_secs(60)));
        let cursor = relay.cursor(0);
        relay.push(bytes(4, 1));
        relay.push(bytes(4, 2));
        assert_eq!(cursor.read(0, 4).unwrap().len(), 4);
        relay.push(bytes(4, 3)); // the first chunk was read: it goes without waiting
        assert_eq!(relay.base(), 4);
        assert_eq!(
            cursor.read(0, 4),
            Err(Behind::Dropped { wanted: 0, base: 4 })
        );
    }

    #[test]
    fn a_writer_waits_for_a_reader_then_leaves_a_laggard_behind() {
        let relay = Arc::new(Relay::with_limits(0, 8, Duration::from_millis(200)));
        let laggard = relay.cursor(0);
        relay.push(bytes(8, 1));
        let started = Instant::now();
        relay.push(bytes(4, 2)); // the laggard does not read: waited for, then left behind
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(laggard.read(0, 1).is_err());
        assert_eq!(relay.base(), 8);

        // A reader that moves on lets the writer go on at once.
        let reader = relay.cursor(8);
        let writer = {
            let relay = relay.clone();
            std::thread::spawn(move || relay.push(bytes(8, 3)))
        };
        drop(laggard);
        assert_eq!(reader.read(8, 4).unwrap().len(), 4);
        writer.join().unwrap();
        assert_eq!(relay.base(), 12);
    }

    #[test]
    fn bytes_nobody_reads_are_not_kept() {
        let relay = Arc::new(Relay::with_limits(0, 8, Duration::from_secs(60)));
        for fill in 0..4 {
            relay.push(bytes(4, fill)); // returns at once: there is nobody to wait for
        }
        assert_eq!(relay.base(), 8);
    }
}
