//! Access times survive a restart and reach every replica of a shared bucket: each process
//! writes what it knows to `_cistern/access/<replica>.json` every minute when something was
//! served, and takes in every replica's file at start and before each expiry sweep. A file no
//! replica wrote within `proxy.ttl` can only hold times the sweep no longer cares about, so the
//! sweep deletes it.

use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;

use super::access::Published;
use super::{Cache, CacheError};
use crate::storage::layout;

/// How often a process publishes its access times (when it served anything since).
const PUBLISH_EVERY: Duration = Duration::from_secs(60);

/// Where the access times are published, below cistern's own keys.
fn folder() -> Path {
    Path::from(layout::INTERNAL).child("access")
}

/// This process's name among the replicas: the host and the process id.
pub(super) fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "cistern".to_owned());
    format!("{host}-{}", std::process::id())
}

impl Cache {
    /// Takes in every replica's published access times; returns how many files were read.
    /// Files written before `stale_before_ms` are deleted instead (their times are too old to
    /// matter); None keeps them all.
    pub async fn load_access_times(
        &self,
        stale_before_ms: Option<i64>,
    ) -> Result<usize, CacheError> {
        let mut read = 0;
        for (key, written_ms) in self.storage().list_with_times(&folder()).await? {
            if stale_before_ms.is_some_and(|cutoff| written_ms < cutoff) {
                self.storage().delete(&key).await?;
                continue;
            }
            match self.storage().read_record::<Published>(&key).await {
                Ok(Some(published)) => {
                    self.inner.access.merge(&published);
                    read += 1;
                }
                Ok(None) => {}
                // Another version's or a damaged file: its times are lost, nothing else.
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot read published access times; ignoring them")
                }
            }
        }
        Ok(read)
    }

    /// Writes this process's access times to the store.
    pub async fn publish_access_times(&self, replica: &str) -> Result<(), CacheError> {
        let published = self.inner.access.published();
        let bytes = serde_json::to_vec(&published).expect("access times serialise to JSON");
        self.storage()
            .write_small(
                &folder().child(format!("{replica}.json")),
                Bytes::from(bytes),
            )
            .await?;
        Ok(())
    }

    /// Loads the published access times, then publishes this process's every minute in which
    /// something was served.
    pub fn spawn_access_publisher(&self) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            if let Err(e) = cache.load_access_times(None).await {
                tracing::warn!(error = %e, "cannot read the published access times");
            }
            let replica = cache.inner.replica.clone();
            let mut published_at = cache.inner.access.recordings();
            let mut ticker = tokio::time::interval(PUBLISH_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let recordings = cache.inner.access.recordings();
                if recordings == published_at {
                    continue;
                }
                match cache.publish_access_times(&replica).await {
                    Ok(()) => published_at = recordings,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot publish access times; trying again in a minute")
                    }
                }
            }
        })
    }
}
