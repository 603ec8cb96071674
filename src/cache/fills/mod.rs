//! Filling the cache with a cold blob, once for every client that wants it.
//!
//! One task per blob (task.rs) fetches it from upstream, hashes it and appends it to a spool
//! file (pipeline.rs), publishing how far it got. Every client reads the spool as it grows
//! (tail.rs), so twenty clients cost one upstream GET, and a client that joins late gets what
//! has arrived at once. The blob becomes a cached object only after its size and digest
//! matched; until then every reader holds back the last byte it asked for, so no client ever
//! receives a complete body (or range) of unverified bytes.
//!
//! Fills in flight are found by digest through the cache's one single-flight mechanism: the
//! task runs on its own (client disconnects do not cancel it), and its publisher's guard
//! publishes a failure and releases the digest on every exit, panics included. The task gets
//! what it needs (`FillInputs`) and nothing else of the cache.

mod pipeline;
mod rate_floor;
mod tail;
mod task;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::single_flight::{AttemptState, Role, SingleFlight};
use super::CacheError;
use crate::registry::{Digest, RepoName};
use crate::storage::{SpoolFile, SpoolReader, Storage};
use crate::telemetry::Metrics;
use crate::upstream::Upstream;
pub use rate_floor::RateFloor;

/// How far a fill got; readers watch it change.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Bytes in the spool, from the start of the blob.
    pub written: u64,
    /// The blob's size, from upstream's Content-Length once it answered.
    pub total: Option<u64>,
    pub state: FillState,
}

#[derive(Clone, Debug)]
pub enum FillState {
    /// Waiting for a turn (`proxy.maxfetches`) or for upstream's answer.
    Connecting,
    Receiving,
    /// Every byte is in the spool and matched the digest.
    Verified,
    Failed(Arc<CacheError>),
}

impl AttemptState for Progress {
    fn is_settled(&self) -> bool {
        matches!(self.state, FillState::Verified | FillState::Failed(_))
    }

    fn has_failed(&self) -> bool {
        matches!(self.state, FillState::Failed(_))
    }

    fn abandon(&mut self) {
        self.state = FillState::Failed(Arc::new(CacheError::Abandoned { task: "blob fill" }));
    }
}

/// A fill as its clients see it.
pub struct Fill {
    /// The repository it is fetched for (upstream confirmed it holds the blob).
    pub repo: RepoName,
    pub digest: Digest,
    reader: SpoolReader,
    progress: watch::Receiver<Progress>,
    /// Clients streaming the blob right now; a fill nobody reads is held to the rate floor.
    readers: Arc<AtomicUsize>,
    started: Instant,
}

/// A fill as the status page shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FillView {
    pub repository: String,
    pub digest: String,
    /// Bytes received so far.
    pub bytes: u64,
    /// The blob's size, once upstream said.
    pub total: Option<u64>,
    /// `connecting` (waiting for a turn or for upstream), `receiving`, `verified`, `failed`.
    pub state: &'static str,
    pub elapsed_seconds: f64,
    /// Mean rate since the fill started.
    pub bytes_per_second: f64,
    /// Clients streaming it right now.
    pub clients: usize,
}

/// What a fill task needs from the cache.
#[derive(Clone)]
pub struct FillInputs {
    pub storage: Storage,
    pub upstream: Arc<Upstream>,
    pub metrics: Metrics,
    pub rate_floor: RateFloor,
}

/// The fills in flight, by digest.
#[derive(Default)]
pub struct Fills {
    in_flight: SingleFlight<Digest, Arc<Fill>>,
}

impl Fills {
    /// The digests being fetched right now.
    pub fn digests(&self) -> Vec<Digest> {
        self.in_flight.keys()
    }

    /// Every fill in flight, by digest.
    pub fn views(&self) -> Vec<FillView> {
        let mut views: Vec<FillView> = self
            .digests()
            .iter()
            .filter_map(|digest| self.get(digest))
            .map(|fill| fill.view())
            .collect();
        views.sort_by(|a, b| a.digest.cmp(&b.digest));
        views
    }

    /// The fill in flight for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.in_flight.get(digest)
    }

    /// The fill in flight for `digest`, or a new one fetching it for `repo`.
    pub fn join_or_start(
        &self,
        inputs: &FillInputs,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Arc<Fill>, Role), CacheError> {
        let initial = Progress {
            written: 0,
            total: None,
            state: FillState::Connecting,
        };
        self.in_flight.join_or_start(digest, initial, |progress| {
            // A spool that cannot even be created (a full disk, no inodes left) does not stop
            // the fill: its bytes go through memory, and the blob is not cached from it.
            let spool = match inputs.storage.spool().create(digest.hex()) {
                Ok(spool) => spool,
                Err(cause) => SpoolFile::in_memory(cause),
            };
            let readers = Arc::new(AtomicUsize::new(0));
            let fill = Arc::new(Fill {
                repo: repo.clone(),
                digest: digest.clone(),
                reader: spool.reader(),
                progress,
                readers: readers.clone(),
                started: Instant::now(),
            });
            let task = task::FillTask::new(inputs.clone(), repo, digest, spool, readers);
            Ok((fill, move |publisher| task.run(publisher)))
        })
    }
}

impl Fill {
    /// Waits for upstream's answer: the blob's size (None when upstream sent no length), or
    /// why the fill failed.
    pub async fn size(&self) -> Result<Option<u64>, CacheError> {
        let mut progress = self.progress.clone();
        // The publisher's guard settles the state before the channel can close, so the last
        // state read is an answer either way.
        let _ = progress
            .wait_for(|p| !matches!(p.state, FillState::Connecting))
            .await;
        let progress = progress.borrow().clone();
        match progress.state {
            FillState::Failed(e) => Err(CacheError::Shared(e)),
            _ => Ok(progress.total),
        }
    }

    /// Waits until the fill ended, verified or failed.
    pub async fn settled(&self) {
        let mut progress = self.progress.clone();
        let _ = progress.wait_for(|p| p.is_settled()).await;
    }

    fn view(&self) -> FillView {
        let progress = self.progress.borrow().clone();
        let elapsed = self.started.elapsed().as_secs_f64();
        FillView {
            repository: self.repo.as_str().to_owned(),
            digest: self.digest.to_string(),
            bytes: progress.written,
            total: progress.total,
            state: match progress.state {
                FillState::Connecting => "connecting",
                FillState::Receiving => "receiving",
                FillState::Verified => "verified",
                FillState::Failed(_) => "failed",
            },
            elapsed_seconds: elapsed,
            bytes_per_second: if elapsed > 0.0 {
                progress.written as f64 / elapsed
            } else {
                0.0
            },
            clients: self.readers.load(Ordering::SeqCst),
        }
    }

    fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Counts one client reading the blob for as long as the returned guard lives.
    fn reading(&self) -> Reading {
        self.readers.fetch_add(1, Ordering::SeqCst);
        Reading(self.readers.clone())
    }
}

/// One client streaming a fill.
struct Reading(Arc<AtomicUsize>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
