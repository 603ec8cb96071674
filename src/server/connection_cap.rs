//! At most so many client connections at once, so a flood of connections (silent ones held
//! until their header deadline, or many clients at once) cannot use up the process's file
//! descriptors and starve storage, upstream and the clients already connected.
//!
//! Beyond the cap a new connection is closed at once rather than queued: a queued socket
//! still holds its descriptor, which is what the cap protects. Connections already open keep
//! working, and a slot frees the moment any connection ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::open_files::open_file_limit;

/// The default cap when `http.maxconnections` is not set: half the open-file limit (as raised
/// at start), so the other half stays for storage files, upstream sockets and the listeners,
/// within bounds that suit a host with a tiny limit and one with a huge one.
pub fn default_max_connections() -> usize {
    const FLOOR: u64 = 16;
    const CEILING: u64 = 4096;
    match open_file_limit() {
        Some(limit) => (limit / 2).clamp(FLOOR, CEILING) as usize,
        None => CEILING as usize,
    }
}

/// The connections one listener may hold open.
pub struct ConnectionCap {
    slots: Arc<Semaphore>,
    limit: usize,
    /// The config key the limit comes from, for the log.
    key: &'static str,
    /// Between the first refusal and the next free slot, so the flood is logged once.
    saturated: AtomicBool,
    refused: AtomicU64,
}

/// One admitted connection's slot; dropping it (when the connection ends) frees the slot.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    cap: Arc<ConnectionCap>,
}

impl ConnectionCap {
    pub fn new(limit: usize, key: &'static str) -> Arc<ConnectionCap> {
        Arc::new(ConnectionCap {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            key,
            saturated: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        })
    }

    /// A slot for a connection from `peer`, or None (and the caller closes it) at the cap.
    pub fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Option<ConnectionSlot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(ConnectionSlot {
                _permit: permit,
                cap: self.clone(),
            }),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if !self.saturated.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        peer = ?peer,
                        limit = self.limit,
                        "connection limit reached ({} = {}): closing new connections until one ends",
                        self.key,
                        self.limit,
                    );
                }
                None
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if self.cap.saturated.swap(false, Ordering::AcqRel) {
            let refused = self.cap.refused.swap(0, Ordering::Relaxed);
            tracing::info!(
                refused,
                limit = self.cap.limit,
                "below the connection limit again ({}); {refused} connections were closed at the limit",
                self.cap.key,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_again_when_a_slot_frees() {
        let cap = ConnectionCap::new(2, "http.maxconnections");
        let first = cap.admit(None).unwrap();
        let _second = cap.admit(None).unwrap();
        assert!(cap.admit(None).is_none());
        assert!(cap.admit(None).is_none());
        assert_eq!(cap.refused.load(Ordering::Relaxed), 2);
        drop(first);
        assert!(!cap.saturated.load(Ordering::Relaxed));
        assert!(cap.admit(None).is_some());
    }

    #[test]
    fn the_default_leaves_descriptors_for_everything_else() {
        let cap = default_max_connections();
        assert!((16..=4096).contains(&cap), "{cap}");
        if let Some(limit) = open_file_limit() {
            assert!(
                cap as u64 <= limit.max(32) / 2 || cap == 16,
                "{cap} of {limit}"
            );
        }
    }
}
