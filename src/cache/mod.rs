//! The pull-through policy: answer from storage when we may, otherwise fetch from upstream,
//! verify, store, and answer. The HTTP layer above only translates requests and errors.

mod blobs;
mod expiry;
mod fill;
mod hot;
mod inflight;
mod keyed_lock;
mod manifests;
mod not_found;
mod outcome;
mod pipeline;
mod records;
mod small_blobs;
mod tags;
mod tail;

use std::sync::Arc;
use std::time::Duration;

use crate::config::ProxyConfig;
use crate::registry::{Digest, RepoName};
use crate::storage::{Storage, StorageError};
use crate::telemetry::Metrics;
use crate::upstream::{Upstream, UpstreamError};
use inflight::InFlight;
use keyed_lock::KeyedLock;
use not_found::{ManifestKey, NotFound};

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
    #[error("requested range is not within the blob's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Storage(#[from] StorageError),
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
    upstream: Upstream,
    tag_ttl: Duration,
    inflight: InFlight,
    manifest_turns: KeyedLock<ManifestKey>,
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
        Cache {
            inner: Arc::new(Inner {
                storage,
                upstream,
                tag_ttl: proxy.tag_ttl,
                inflight: InFlight::default(),
                manifest_turns: KeyedLock::default(),
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

    fn inflight(&self) -> &InFlight {
        &self.inner.inflight
    }

    /// Every repository with something cached, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>, CacheError> {
        Ok(self.storage().list_repositories().await?)
    }
}
