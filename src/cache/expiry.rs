//! `proxy.ttl`, as in Distribution: cached content and records are removed this long after
//! they were stored, so the cache does not grow for ever. Tag records are rewritten at every
//! revalidation, so tags in use stay; removed content is fetched again on the next pull.

use std::time::Duration;

use super::records::now_ms;
use crate::storage::Storage;

/// How often the sweep runs, relative to the TTL, and its bounds.
const SWEEPS_PER_TTL: u32 = 4;
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Starts the background sweep; a zero TTL keeps everything and starts nothing.
pub fn spawn_expiry(storage: Storage, ttl: Duration) -> Option<tokio::task::JoinHandle<()>> {
    if ttl.is_zero() {
        return None;
    }
    let interval = (ttl / SWEEPS_PER_TTL).clamp(MIN_INTERVAL, MAX_INTERVAL);
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let cutoff = now_ms() as i64 - ttl.as_millis() as i64;
            match storage.remove_written_before(cutoff).await {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(removed, ttl = ?ttl, "expired cached objects (proxy.ttl)")
                }
                Err(e) => tracing::warn!(error = %e, "cache expiry sweep failed"),
            }
        }
    }))
}
