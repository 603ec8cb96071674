//! At most so many client connections at once, so a flood of connections (silent ones held
//! until their header deadline, or many clients at once) cannot use up the process's file
//! descriptors and starve storage, upstream and the clients already connected.
//!
//! At the cap, a new connection takes the place of the oldest admitted connection that has not
//! yet delivered a request: one still in its first-request phase (see `first_request_deadline`),
//! silent, or stalled in the TLS handshake, the HTTP/2 preface or an unfinished request head.
//! That connection is evicted (its pending read and write fail at once, so its task ends and
//! frees its slot and descriptor) and the newcomer waits, at most `EVICTION_HANDOVER`, for that
//! slot. Were new connections simply refused at the cap, anyone holding `limit` silent
//! connections would lock every client out until the header deadline (30 s by default), and
//! could do it again and again. A client that has delivered a request is never evicted, and one
//! that sends its request promptly is rarely the oldest idle connection, so such a flood now
//! costs clients little (a client could still lose a connection not yet sent on to a flood of
//! new connections faster than its own request: it connects again).
//!
//! Only when every admitted connection has delivered a request (the cap is full of clients
//! being served or kept alive) is a new connection closed at once, rather than queued: a queued
//! socket still holds its descriptor, which is what the cap protects. Connections already open
//! keep working, and a slot frees the moment any connection ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::open_files::open_file_limit;

/// How long a newcomer waits for the slot of the connection it evicted: that connection's task
/// is woken at once and ends within milliseconds; the bound only keeps a wedged one from
/// holding the newcomer (which is then closed, as at a cap full of busy connections).
const EVICTION_HANDOVER: Duration = Duration::from_secs(1);

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
    /// Between the first connection found at the cap and the next slot freed by a connection
    /// ending on its own (an evicted connection's slot goes to its evictor), so a flood is
    /// logged once.
    saturated: AtomicBool,
    refused: AtomicU64,
    evicted: AtomicU64,
    /// Admitted connections that have not delivered a request yet, by admission order (oldest
    /// first): the only ones eviction may pick. Never locked across an await.
    idle: Mutex<BTreeMap<u64, IdleConnection>>,
    next_id: AtomicU64,
}

struct IdleConnection {
    evict: CancellationToken,
    peer: Option<SocketAddr>,
}

/// One admitted connection's slot; dropping it (when the connection ends) frees the slot.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    cap: Arc<ConnectionCap>,
    id: u64,
    evicted: CancellationToken,
}

/// A connection's first-request phase as the cap sees it: `end` (on its first request) takes
/// the connection off the list eviction picks from.
#[derive(Clone)]
pub struct PreRequestPhase {
    cap: Arc<ConnectionCap>,
    id: u64,
}

impl ConnectionCap {
    pub fn new(limit: usize, key: &'static str) -> Arc<ConnectionCap> {
        Arc::new(ConnectionCap {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            key,
            saturated: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            idle: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// A slot for a connection from `peer`, or None (and the caller closes it) at a cap full
    /// of connections that have all delivered a request. Waits only after evicting an idle
    /// connection, and then at most `EVICTION_HANDOVER`.
    pub async fn admit(self: Arc<Self>, peer: Option<SocketAddr>) -> Option<ConnectionSlot> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(self.slot(permit, peer));
        }
        self.saturation_begins(peer);
        if self.evict_oldest_idle(peer) {
            // The semaphore hands a freed permit to its waiters in order, before anyone's
            // try_acquire: the evicted connection's slot comes here (or to an earlier evictor).
            if let Ok(Ok(permit)) =
                tokio::time::timeout(EVICTION_HANDOVER, self.slots.clone().acquire_owned()).await
            {
                return Some(self.slot(permit, peer));
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        None
    }

    fn slot(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        peer: Option<SocketAddr>,
    ) -> ConnectionSlot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        self.idle().insert(
            id,
            IdleConnection {
                evict: evicted.clone(),
                peer,
            },
        );
        ConnectionSlot {
            _permit: permit,
            cap: self.clone(),
            id,
            evicted,
        }
    }

    fn idle(&self) -> MutexGuard<'_, BTreeMap<u64, IdleConnection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn saturation_begins(&self, peer: Option<SocketAddr>) {
        if !self.saturated.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                peer = ?peer,
                limit = self.limit,
                "connection limit reached ({} = {}): evicting the oldest connections that have sent no request yet for new ones, closing new connections while every connection has",
                self.key,
                self.limit,
            );
        }
    }

    /// Evicts the oldest connection that has not delivered a request; false if there is none.
    fn evict_oldest_idle(&self, newcomer: Option<SocketAddr>) -> bool {
        let Some((_, oldest)) = ({
            let mut idle = self.idle();
            // Cancelled under the lock, so `PreRequestPhase::end` either took the connection
            // off the list first or finds it evicted (see `first_request_deadline`).
            idle.pop_first()
                .inspect(|(_, oldest)| oldest.evict.cancel())
        }) else {
            return false;
        };
        self.evicted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            peer = ?oldest.peer,
            newcomer = ?newcomer,
            "evicting the oldest connection that has sent no request yet, for a new connection at the limit ({})",
            self.key,
        );
        true
    }
}

impl ConnectionSlot {
    /// Cancelled when the cap evicts this connection for a newer one.
    pub fn eviction(&self) -> CancellationToken {
        self.evicted.clone()
    }

    pub fn pre_request_phase(&self) -> PreRequestPhase {
        PreRequestPhase {
            cap: self.cap.clone(),
            id: self.id,
        }
    }
}

impl PreRequestPhase {
    /// The connection has delivered a request: it is never evicted from now on. Idempotent.
    pub fn end(&self) {
        self.cap.idle().remove(&self.id);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.cap.idle().remove(&self.id);
        // An evicted connection's slot goes to the newcomer that evicted it: still at the cap.
        if self.evicted.is_cancelled() {
            return;
        }
        if self.cap.saturated.swap(false, Ordering::AcqRel) {
            let refused = self.cap.refused.swap(0, Ordering::Relaxed);
            let evicted = self.cap.evicted.swap(0, Ordering::Relaxed);
            tracing::info!(
                refused,
                evicted,
                limit = self.cap.limit,
                "below the connection limit again ({}); {evicted} connections that had sent no request were evicted for new ones and {refused} new connections were closed at the limit",
                self.cap.key,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    /// Admits at once, or panics.
    fn admit_now(cap: &Arc<ConnectionCap>) -> ConnectionSlot {
        cap.clone()
            .admit(None)
            .now_or_never()
            .expect("admitted without waiting")
            .expect("admitted")
    }

    fn busy(cap: &Arc<ConnectionCap>) -> ConnectionSlot {
        let slot = admit_now(cap);
        slot.pre_request_phase().end();
        slot
    }

    #[test]
    fn admits_up_to_the_limit_and_again_when_a_slot_frees() {
        let cap = ConnectionCap::new(2, "http.maxconnections");
        let first = busy(&cap);
        let second = busy(&cap);
        // Every connection has delivered a request: a newcomer is closed at once.
        assert!(matches!(cap.clone().admit(None).now_or_never(), Some(None)));
        assert!(matches!(cap.clone().admit(None).now_or_never(), Some(None)));
        assert_eq!(cap.refused.load(Ordering::Relaxed), 2);
        assert!(!first.eviction().is_cancelled() && !second.eviction().is_cancelled());
        drop(first);
        assert!(!cap.saturated.load(Ordering::Relaxed));
        assert_eq!(cap.refused.load(Ordering::Relaxed), 0);
        admit_now(&cap);
    }

    #[tokio::test]
    async fn at_the_limit_the_oldest_idle_connection_is_evicted_and_its_slot_goes_to_the_newcomer()
    {
        let cap = ConnectionCap::new(3, "http.maxconnections");
        let served = busy(&cap);
        let oldest_idle = admit_now(&cap);
        let newer_idle = admit_now(&cap);

        let newcomer = tokio::spawn(cap.clone().admit(None));
        tokio::time::timeout(Duration::from_secs(5), oldest_idle.eviction().cancelled())
            .await
            .expect("the oldest idle connection is evicted");
        assert!(!newer_idle.eviction().is_cancelled());
        assert!(!served.eviction().is_cancelled());
        // Its task ends, freeing the slot, which the newcomer takes.
        drop(oldest_idle);
        let newcomer = tokio::time::timeout(Duration::from_secs(5), newcomer)
            .await
            .expect("the newcomer is admitted promptly")
            .unwrap()
            .expect("admitted in the evicted connection's place");
        assert!(
            cap.saturated.load(Ordering::Relaxed),
            "an eviction's slot handed over does not end the episode"
        );
        assert_eq!(cap.evicted.load(Ordering::Relaxed), 1);

        // Once they have delivered a request, neither the survivor nor the newcomer is evicted:
        // with no idle connection left, the next one is closed at once.
        newer_idle.pre_request_phase().end();
        newcomer.pre_request_phase().end();
        assert!(matches!(cap.clone().admit(None).now_or_never(), Some(None)));
        assert!(!served.eviction().is_cancelled());
        assert!(!newer_idle.eviction().is_cancelled());
        assert!(!newcomer.eviction().is_cancelled());
        assert_eq!(cap.refused.load(Ordering::Relaxed), 1);

        drop(served);
        assert!(!cap.saturated.load(Ordering::Relaxed));
        assert_eq!(cap.evicted.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_newcomer_waits_at_most_the_handover_bound_for_an_evicted_slot() {
        let cap = ConnectionCap::new(1, "http.maxconnections");
        // Evicted, but its task never ends (it keeps the slot).
        let wedged = admit_now(&cap);
        let started = std::time::Instant::now();
        let admitted = tokio::time::timeout(Duration::from_secs(5), cap.clone().admit(None))
            .await
            .expect("the wait is bounded");
        assert!(admitted.is_none());
        assert!(wedged.eviction().is_cancelled());
        assert!(started.elapsed() >= EVICTION_HANDOVER);
        // Nothing idle is left to evict: the next newcomer is closed at once.
        assert!(matches!(cap.clone().admit(None).now_or_never(), Some(None)));
        assert_eq!(cap.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_poisoned_list_does_not_wedge_the_cap() {
        let cap = ConnectionCap::new(1, "http.maxconnections");
        let poisoner = cap.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.idle.lock().unwrap();
            panic!("poisoning the list on purpose");
        })
        .join();
        assert!(cap.idle.is_poisoned());
        let slot = busy(&cap);
        drop(slot);
        admit_now(&cap);
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
