//! Access times survive a restart and reach every replica of a shared bucket: each process
//! writes what it knows to `_cistern/access/<replica>.json` every minute when something was
//! served, and takes in every replica's file at start and before each expiry sweep. A file no
//! replica wrote within `proxy.ttl` can only hold times the sweep no longer cares about, so the
//! sweep deletes it. A process that published once also deletes the files of its
//! predecessors on the same host (same host name, a process id no longer running): it took in
//! their times at start and publishes them with its own.

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
    format!("{}-{}", host_name(), std::process::id())
}

/// The host part of replica names: the host name when it is a plain one, else `cistern`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "cistern".to_owned())
}

/// Which of the published files `names` (`<host>-<pid>.json`) were written by earlier
/// processes on this host (`host`, a pid other than `own_pid` that `running` says is gone).
fn predecessors<'a>(
    names: &'a [String],
    host: &str,
    own_pid: u32,
    running: impl Fn(u32) -> bool,
) -> Vec<&'a String> {
    names
        .iter()
        .filter(|name| {
            let Some((file_host, pid)) = name
                .strip_suffix(".json")
                .and_then(|stem| stem.rsplit_once('-'))
            else {
                return false;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                return false;
            };
            file_host == host && pid != own_pid && !running(pid)
        })
        .collect()
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

    /// Deletes the files of earlier processes on this host (their times are in ours now).
    async fn retire_predecessors(&self) -> Result<(), CacheError> {
        let names: Vec<String> = self
            .storage()
            .list_with_times(&folder())
            .await?
            .into_iter()
            .filter_map(|(key, _)| key.filename().map(str::to_owned))
            .collect();
        let running = |pid: u32| std::path::Path::new("/proc").join(pid.to_string()).exists();
        for name in predecessors(&names, &host_name(), std::process::id(), running) {
            self.storage()
                .delete(&folder().child(name.as_str()))
                .await?;
            tracing::info!(file = %name, "removed the access times of an earlier process on this host (taken into this one's)");
        }
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
            let mut predecessors_retired = false;
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
                    Ok(()) => {
                        published_at = recordings;
                        if !predecessors_retired {
                            predecessors_retired = true;
                            if let Err(e) = cache.retire_predecessors().await {
                                tracing::warn!(error = %e, "cannot remove the access times of earlier processes on this host");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot publish access times; trying again in a minute")
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_gone_processes_on_this_host_are_predecessors() {
        let names: Vec<String> = [
            "node-1-100.json",  // this host, gone
            "node-1-200.json",  // this host, still running (another process)
            "node-1-300.json",  // this process
            "node-10-100.json", // another host whose name starts alike
            "node-2-100.json",  // another host
            "node-1-x.json",
            "README",
        ]
        .map(String::from)
        .to_vec();
        let gone = predecessors(&names, "node-1", 300, |pid| pid == 200);
        assert_eq!(gone, [&names[0]]);
    }
}
