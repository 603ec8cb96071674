//! Whether the store is full: every write the storage facade makes reports here, so a write
//! refused for lack of space (ENOSPC, EDQUOT, a bucket over quota) marks the store full,
//! wakes whoever evicts, and the next write that succeeds marks it writable again. Nothing
//! here stops a write from being tried: caching resumes by itself as soon as space is back.
//!
//! The episode is logged once when it starts and once when it ends; each item served
//! uncached meanwhile is logged (and counted) by the cache, naming its key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::out_of_space;

/// The store's room for writes, shared by every clone of a `Storage`.
#[derive(Default)]
pub struct StoragePressure {
    /// Mirrors `State::full_since.is_some()`, read without the lock on every write.
    full: AtomicBool,
    state: Mutex<PressureState>,
    /// Signalled (with `notify_one`, so one permit is kept when nobody waits) at every write
    /// refused for lack of space.
    refused: Notify,
}

/// What the store's last writes said about its room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PressureState {
    /// Since when writes are refused for lack of space; None while the store takes them.
    pub full_since: Option<SystemTime>,
    /// The last write refused for lack of space (in this or an earlier episode).
    pub last_refused: Option<SystemTime>,
    /// Its key and cause.
    pub last_cause: Option<String>,
    /// Writes refused for lack of space since the process started.
    pub refused_writes: u64,
}

/// Why a write was refused, as metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No space: a full disk or bucket, a quota.
    Full,
    /// Any other failure (permissions, a broken disk, an unreachable bucket).
    Error,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::Error => "error",
        }
    }
}

impl StoragePressure {
    /// A write to `key` failed with `error`: if for lack of space, the store is full from now
    /// on (until a write succeeds) and the evictor is woken.
    pub fn refused(&self, key: &str, error: &(dyn std::error::Error + 'static)) -> Refusal {
        if !out_of_space(error) {
            return Refusal::Error;
        }
        let now = SystemTime::now();
        let mut state = self.lock();
        state.last_refused = Some(now);
        state.last_cause = Some(format!("{key}: {error}"));
        state.refused_writes += 1;
        if state.full_since.is_none() {
            state.full_since = Some(now);
            self.full.store(true, Ordering::SeqCst);
            tracing::error!(key, error = %error, "storage is full: cold blobs and manifests are served without being cached until a write succeeds; eviction requested");
        }
        drop(state);
        self.refused.notify_one();
        Refusal::Full
    }

    /// A write succeeded: the store takes writes (again).
    pub fn stored(&self) {
        if !self.full.load(Ordering::SeqCst) {
            return;
        }
        let mut state = self.lock();
        if let Some(since) = state.full_since.take() {
            self.full.store(false, Ordering::SeqCst);
            let full_for_s = since.elapsed().map_or(0, |d| d.as_secs());
            tracing::info!(
                full_for_s,
                refused_writes = state.refused_writes,
                "storage takes writes again; caching resumes"
            );
        }
    }

    /// Whether the last write was refused for lack of space.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// Everything known about the store's room, for readiness and metrics.
    pub fn state(&self) -> PressureState {
        self.lock().clone()
    }

    /// Completes at the next write refused for lack of space, or at once if one was refused
    /// since the last wait completed (one permit is kept). For the evictor:
    /// `loop { pressure.refusal().await; evict().await }`.
    pub fn refusal(&self) -> Notified<'_> {
        self.refused.notified()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PressureState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_disk_marks_the_store_full_and_wakes_the_evictor_until_a_write_succeeds() {
        let pressure = StoragePressure::default();
        assert!(!pressure.is_full());
        let denied = Error::new(ErrorKind::PermissionDenied, "read-only");
        assert_eq!(pressure.refused("blobs/a", &denied), Refusal::Error);
        assert!(!pressure.is_full(), "only a lack of space is fullness");

        let full = Error::new(
            ErrorKind::StorageFull,
            "No space left on device (os error 28)",
        );
        assert_eq!(pressure.refused("blobs/b", &full), Refusal::Full);
        assert!(pressure.is_full());
        // The permit was kept: a waiter that comes later is woken at once.
        tokio::time::timeout(Duration::from_secs(5), pressure.refusal())
            .await
            .expect("the evictor is woken");
        let state = pressure.state();
        assert!(state.full_since.is_some());
        assert_eq!(state.refused_writes, 1);
        assert!(state.last_cause.unwrap().starts_with("blobs/b: "));

        pressure.stored();
        assert!(!pressure.is_full());
        assert_eq!(pressure.state().full_since, None);
        assert!(
            pressure.state().last_refused.is_some(),
            "the last refusal stays known"
        );
    }

    #[test]
    fn object_store_quota_errors_count_as_full() {
        let pressure = StoragePressure::default();
        let quota = Error::other(
            "Client error with status 403 Forbidden: <Error><Code>QuotaExceeded</Code></Error>",
        );
        assert_eq!(pressure.refused("blobs/c", &quota), Refusal::Full);
    }
}
