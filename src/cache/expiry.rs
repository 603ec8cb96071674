//! `proxy.ttl`: cached content and records are removed once nobody pulled them for this long,
//! so the cache does not grow for ever while an image pulled every day is never fetched again.
//! Distribution counts from when an object was stored; cistern counts from its last pull (by
//! any replica, see `access_publish.rs`), falling back to when it was stored.

use std::time::Duration;

use super::records::now_ms;
use super::Cache;
use crate::storage::layout::{classify, KeyKind};

/// How often the sweep runs, relative to the TTL, and its bounds.
const SWEEPS_PER_TTL: u32 = 4;
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(60 * 60);

impl Cache {
    /// Starts the background sweep; a zero TTL keeps everything and starts nothing.
    pub fn spawn_expiry(&self, ttl: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if ttl.is_zero() {
            return None;
        }
        let interval = (ttl / SWEEPS_PER_TTL).clamp(MIN_INTERVAL, MAX_INTERVAL);
        let cache = self.clone();
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                cache.expire(ttl).await;
            }
        }))
    }

    /// One sweep: removes what was neither stored nor served within `ttl`.
    async fn expire(&self, ttl: Duration) {
        let cutoff = now_ms() as i64 - ttl.as_millis() as i64;
        // Other replicas' pulls count too; their files too old to matter go.
        if let Err(e) = self.load_access_times(Some(cutoff)).await {
            tracing::warn!(error = %e, "cannot read published access times; expiring by storage times alone");
        }
        let tags = self.inner.access.tags();
        let contents = self.inner.access.contents();
        let served_since_cutoff = |key: &str| {
            let last_served = match classify(key) {
                KeyKind::Content { digest }
                | KeyKind::BlobLink { digest, .. }
                | KeyKind::ManifestLink { digest, .. } => contents.get(&digest).copied(),
                KeyKind::Tag { repository, tag } => {
                    tags.get(&(repository.to_owned(), tag.to_owned())).copied()
                }
                KeyKind::Other => None,
            };
            last_served.is_some_and(|at| at as i64 >= cutoff)
        };
        match self
            .storage()
            .remove_written_before(cutoff, served_since_cutoff)
            .await
        {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(removed, ttl = ?ttl, "expired cached objects nobody pulled within proxy.ttl")
            }
            Err(e) => tracing::warn!(error = %e, "cache expiry sweep failed"),
        }
    }
}
