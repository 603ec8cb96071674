//! The pull-through policy: answer from storage when we may, otherwise fetch from upstream,
//! verify, store, and answer. The HTTP layer above only translates requests and errors.

mod access;
mod access_publish;
mod blobs;
pub mod eviction;
mod expiry;
mod fills;
mod hot;
mod manifests;
mod not_found;
mod offline;
mod outcome;
pub mod prewarm;
mod pulls;
mod purge;
mod records;
mod refresh;
mod registries;
mod single_flight;
mod small_blobs;
mod status;
mod tags;

use std::sync::Arc;

use crate::registry::{Digest, RegistryId, RepoName};
use crate::storage::{Storage, StorageError};
use crate::telemetry::Metrics;
use crate::upstream::{Upstream, UpstreamError};
use access::AccessTimes;
pub use fills::FillView;
use fills::Fills;
use manifests::ManifestFlights;
pub use registries::{CachedRegistries, CachedRegistry};

pub use crate::storage::{PressureState, StoragePressure};
pub use blobs::{BlobAnswer, ByteRange};
pub use manifests::ManifestAnswer;
pub use offline::{Missing, OfflineMiss};
pub use outcome::Outcome;
pub use purge::{PurgeReport, PurgeTarget};
pub use records::now_ms;
pub use refresh::Refreshed;
pub use status::{RepositoryPage, RepositoryView};
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
    /// A name of a registry this cache was not given (routing refuses those first).
    #[error("registry {registry} is not mirrored here (repository {repo})")]
    RegistryNotMirrored { registry: String, repo: RepoName },
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
    /// A registry configured offline was asked for something the cache does not hold.
    #[error("{} is not cached, and {}", .0.missing, .0.offline)]
    NotCachedOffline(Box<OfflineMiss>),
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
    /// The cache cannot do this now (its index is being built, another replica evicts);
    /// trying again shortly will.
    #[error("{reason}; try again shortly")]
    Busy { reason: String },
    /// A pre-warm entry that cannot be warmed (a bad name or tag, a body cut short).
    #[error("cannot pre-warm {0}")]
    Prewarm(String),
}

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    registries: CachedRegistries,
    fills: Fills,
    manifest_flights: ManifestFlights,
    hot: hot::Hot,
    /// When each tag and content object was last served.
    access: AccessTimes,
    /// How many times each repository was pulled.
    pulls: pulls::PullCounts,
    /// What each manifest references, for eviction.
    references: eviction::References,
    /// This process among the replicas of a shared store (`<host>-<pid>`).
    replica: String,
    metrics: Metrics,
}

impl Cache {
    pub fn new(storage: Storage, registries: CachedRegistries, metrics: Metrics) -> Self {
        Cache {
            inner: Arc::new(Inner {
                storage,
                registries,
                fills: Fills::default(),
                manifest_flights: ManifestFlights::default(),
                hot: hot::Hot::default(),
                access: AccessTimes::default(),
                pulls: pulls::PullCounts::default(),
                references: eviction::References::default(),
                replica: access_publish::replica_id(),
                metrics,
            }),
        }
    }

    fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// The registry `repo` belongs to: its upstream and the cache's settings for it.
    fn registry(&self, repo: &RepoName) -> Result<&CachedRegistry, CacheError> {
        self.inner.registries.of(repo)
    }

    /// The upstream client of the registry `repo` belongs to.
    fn upstream(&self, repo: &RepoName) -> Result<&Upstream, CacheError> {
        Ok(&self.registry(repo)?.upstream)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Each registry's pull quota as last reported: (limit, remaining), None before a report.
    pub fn upstream_quotas(&self) -> Vec<(RegistryId, Option<(u64, u64)>)> {
        self.inner
            .registries
            .all()
            .map(|r| {
                (
                    r.upstream.registry().clone(),
                    r.upstream.rate_limit().latest(),
                )
            })
            .collect()
    }

    /// The storage behind the cache, for health checks.
    pub fn storage_handle(&self) -> &Storage {
        &self.inner.storage
    }

    /// Whether storage refuses writes for lack of space, and the signal an evictor waits on
    /// (`StoragePressure::refusal`).
    pub fn storage_pressure(&self) -> &Arc<StoragePressure> {
        self.inner.storage.pressure()
    }

    /// Storage refused to keep something a client is served anyway (`what`, e.g. a tag
    /// record or a link): counted and logged with its cause; the pull goes on.
    fn not_kept(&self, what: &'static str, repo: &RepoName, error: &StorageError) {
        self.metrics().storage_error("request");
        let reason = if error.is_out_of_space() {
            "full"
        } else {
            "error"
        };
        tracing::warn!(registry = %repo.registry(), repository = %repo, what, reason, error = %error, "storage refused a write; serving without it");
    }

    /// A verified manifest served without being cached, because storage refused it.
    fn served_uncached(
        &self,
        kind: &'static str,
        repo: &RepoName,
        digest: &Digest,
        error: &StorageError,
    ) {
        let reason = if error.is_out_of_space() {
            "full"
        } else {
            "error"
        };
        self.metrics().storage_error("request");
        self.metrics().uncached_serve(kind, reason);
        tracing::warn!(registry = %repo.registry(), repository = %repo, %digest, reason, error = %error, "verified {kind} served without being cached: storage refused it");
    }

    fn fills(&self) -> &Fills {
        &self.inner.fills
    }

    /// Every repository with something cached, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>, CacheError> {
        Ok(self.storage().list_repositories().await?)
    }

    /// One catalog page: at most `n` repositories after `last` that `keep` lets through, and
    /// whether more follow; from the index, or from a walk of the store until it is built.
    pub async fn repositories_page(
        &self,
        last: Option<&str>,
        n: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(Vec<String>, bool), CacheError> {
        let index = self.storage().index();
        if index.is_built() {
            return Ok(index.repositories_page(last, n, keep));
        }
        let mut all = self.repositories().await?;
        all.retain(|name| keep(name));
        Ok(tags::paginate(all, Some(n), last))
    }
}

/// A blob upstream does not have, or an offline registry cannot fetch, as the error the
/// client gets.
fn blob_unknown(error: CacheError, repo: &RepoName, digest: &Digest) -> CacheError {
    let error = match error {
        CacheError::Upstream(e) if e.is_not_found() => CacheError::BlobUnknown {
            repo: repo.clone(),
            digest: digest.clone(),
        },
        other => other,
    };
    offline::offline_miss(error, || Missing::Blob {
        repo: repo.clone(),
        digest: digest.clone(),
    })
}
