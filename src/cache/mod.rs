//! The pull-through policy: answer from storage when we may, otherwise fetch from upstream,
//! verify, store, and answer. The HTTP layer above only translates requests and errors.

mod blobs;
mod expiry;
mod fills;
mod hot;
mod manifests;
mod not_found;
mod outcome;
mod records;
mod single_flight;
mod small_blobs;
mod tags;

use std::sync::Arc;
use std::time::Duration;

use crate::config::ProxyConfig;
use crate::registry::{Digest, RepoName};
use crate::storage::{Storage, StorageError};
use crate::telemetry::Metrics;
use crate::upstream::{Upstream, UpstreamError};
use fills::{FillInputs, Fills, RateFloor};
use manifests::ManifestFlights;
use not_found::NotFound;

pub use blobs::{BlobAnswer, ByteRange};
pub use expiry::spawn_expiry;
pub use manifests::ManifestAnswer;
pub use outcome::Outcome;
pub use tags::{paginate, TagListPage};

/// Why the cache could not answer. The API layer turns each into an OCI error.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("manifest {reference} is unknown to repository {repo}")]
    ManifestUnknown { repo: RepoName, reference: String },
    #[error("blob {digest} is unknown to repository {repo}")]
    BlobUnknown { repo: RepoName, digest: Digest },
    #[error("repository {repo} is unknown upstream")]
    NameUnknown { repo: RepoName },
    #[error("{what} from {url} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("blob from {url} has {actual} bytes, upstream announced {expected}")]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("upstream {url} broke off after {received} bytes and could not be resumed: {reason}")]
    UpstreamBroke {
        url: String,
        received: u64,
        reason: String,
    },
    /// Upstream sent a blob too slowly to keep its fetch slot (`proxy.fillminrate`).
    #[error("upstream {url} was too slow after {received} bytes: {reason}")]
    UpstreamTooSlow {
        url: String,
        received: u64,
        reason: String,
    },
    #[error("requested range is not within the blob's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A shared task (a blob fill, a manifest fetch) ended without an outcome: it panicked or
    /// was cancelled. Its waiters get this; the next request starts a new attempt.
    #[error("the {task} stopped without finishing (it panicked or was cancelled)")]
    Abandoned { task: &'static str },
    /// A fill's failure, seen by every client that waited for it.
    #[error(transparent)]
    Shared(Arc<CacheError>),
}

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    upstream: Arc<Upstream>,
    tag_ttl: Duration,
    fills: Fills,
    fill_inputs: FillInputs,
    manifest_flights: ManifestFlights,
    not_found: NotFound,
    hot: hot::Hot,
    metrics: Metrics,
}

impl Cache {
    pub fn new(
        storage: Storage,
        upstream: Upstream,
        proxy: &ProxyConfig,
        metrics: Metrics,
    ) -> Self {
        let upstream = Arc::new(upstream);
        let fill_inputs = FillInputs {
            storage: storage.clone(),
            upstream: upstream.clone(),
            metrics: metrics.clone(),
            rate_floor: RateFloor {
                min_bytes_per_sec: proxy.fill_min_rate,
                window: proxy.fill_rate_window,
            },
        };
        Cache {
            inner: Arc::new(Inner {
                storage,
                upstream,
                tag_ttl: proxy.tag_ttl,
                fills: Fills::default(),
                fill_inputs,
                manifest_flights: ManifestFlights::default(),
                not_found: NotFound::new(proxy.not_found_ttl),
                hot: hot::Hot::default(),
                metrics,
            }),
        }
    }

    fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Docker Hub's pull quota as last reported: (limit, remaining).
    pub fn upstream_quota(&self) -> Option<(u64, u64)> {
        self.upstream().rate_limit().latest()
    }

    /// The storage behind the cache, for health checks.
    pub fn storage_handle(&self) -> &Storage {
        &self.inner.storage
    }

    fn fills(&self) -> &Fills {
        &self.inner.fills
    }

    /// Every repository with something cached, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>, CacheError> {
        Ok(self.storage().list_repositories().await?)
    }
}

/// A blob upstream does not have, as the error the client gets.
fn blob_unknown(error: CacheError, repo: &RepoName, digest: &Digest) -> CacheError {
    match error {
        CacheError::Upstream(e) if e.is_not_found() => CacheError::BlobUnknown {
            repo: repo.clone(),
            digest: digest.clone(),
        },
        other => other,
    }
}
