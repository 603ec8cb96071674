//! What cistern counts, exposed in Prometheus' text format on the debug listener.
//!
//! Every server owns its registry (no process-wide global), so two servers in one process, as
//! in the tests, never see each other's numbers.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

use super::problems::{ProblemKind, Problems};
use crate::cache::Outcome;

/// The content type Prometheus expects for the OpenMetrics text this module renders.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    registry: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    registry: String,
    kind: &'static str,
    method: String,
    /// The HTTP status, or `error` when no answer came (refused, timed out, broke off).
    status: String,
}

/// The registry an upstream figure is about: `docker.io` for the default upstream, else the
/// host clients name it by.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryKindLabels {
    registry: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryOutcomeLabels {
    registry: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindReasonLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// cistern's counters and gauges. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
    served_bytes: Family<SourceLabels, Counter>,
    upstream_bytes: Family<RegistryLabels, Counter>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    token_fetches: Family<RegistryOutcomeLabels, Counter>,
    fills_in_flight: Gauge,
    stale_serves: Family<RegistryKindLabels, Counter>,
    rate_limit_limit: Family<RegistryLabels, Gauge<i64, AtomicI64>>,
    rate_limit_remaining: Family<RegistryLabels, Gauge<i64, AtomicI64>>,
    upstream_offline: Family<RegistryLabels, Gauge>,
    storage_errors: Family<OperationLabels, Counter>,
    uncached_serves: Family<KindReasonLabels, Counter>,
    storage_full: Gauge,
    cut_short: Family<KindLabels, Counter>,
    cache_bytes: Gauge<i64, AtomicI64>,
    cache_budget_bytes: Gauge<i64, AtomicI64>,
    pinned_bytes: Gauge<i64, AtomicI64>,
    evicted_images: Counter,
    evicted_objects: Counter,
    evicted_bytes: Counter,
    last_eviction: Gauge<i64, AtomicI64>,
    eviction_deferred: Counter,
    /// The last problems, for the status page (not a Prometheus metric).
    problems: Problems,
    prewarm_runs: Counter,
    prewarm_checked: Counter,
    prewarm_moved: Counter,
    prewarm_fetched: Counter,
    prewarm_bytes: Counter,
    prewarm_errors: Counter,
    prewarm_last_run: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cistern");
        let r = &mut registry;
        let inner = Inner {
            requests: registered(r, "requests", "Requests answered, by endpoint, method and status"),
            cache: registered(r, "cache_requests", "Manifest and blob requests by how the cache answered: hit (storage only), miss (fetched upstream), joined (an in-progress fill), revalidated (tag checked with a HEAD), stale (upstream failed, cached copy served)"),
            served_bytes: registered(r, "served_bytes", "Body bytes sent to clients, by where they came from (cache or upstream)"),
            upstream_bytes: registered(r, "upstream_fetched_bytes", "Bytes received from upstream (blob and manifest bodies), by registry"),
            upstream_requests: registered(r, "upstream_requests", "HTTP requests sent upstream, by registry, kind, method and status"),
            token_fetches: registered(r, "upstream_token_fetches", "Tokens fetched from upstream auth servers, by registry and outcome"),
            fills_in_flight: registered(r, "fills_in_flight", "Blobs being fetched from upstream right now"),
            stale_serves: registered(r, "stale_serves", "Cached tags served because upstream failed to revalidate them, by registry"),
            rate_limit_limit: registered(r, "upstream_ratelimit_limit", "The registry's ratelimit-limit (Docker Hub's pull quota), as last reported (-1 before any report)"),
            rate_limit_remaining: registered(r, "upstream_ratelimit_remaining", "The registry's ratelimit-remaining (Docker Hub's pull quota), as last reported (-1 before any report)"),
            upstream_offline: registered(r, "upstream_offline", "1 for a registry configured offline (offline: true), whose upstream is never contacted; else 0"),
            storage_errors: registered(r, "storage_errors", "Storage operations that failed, by where (request, fill, health)"),
            uncached_serves: registered(r, "uncached_serves", "Blobs and manifests fetched and served but not cached because storage refused the write, by kind and reason (full: no space or over quota; error: any other failure)"),
            storage_full: registered(r, "storage_full", "1 while storage refuses writes for lack of space (since the last refused write, until one succeeds), else 0"),
            cut_short: registered(r, "responses_cut_short", "Responses whose body stopped before its end (the client went away or the stream failed), by endpoint"),
            cache_bytes: registered(r, "cache_bytes", "Bytes of cached content (blobs and manifests), as the index counts them"),
            cache_budget_bytes: registered(r, "cache_budget_bytes", "cache.maxsize in bytes (0 without a budget)"),
            pinned_bytes: registered(r, "cache_pinned_bytes", "Bytes of cached content that pinned images (cache.pin) keep, as counted when the cache last went over its high watermark"),
            evicted_images: registered(r, "evicted_images", "Images (tags, and manifests no tag reaches) evicted to keep within cache.maxsize"),
            evicted_objects: registered(r, "evicted_objects", "Content objects (blobs and manifests) deleted by eviction"),
            evicted_bytes: registered(r, "evicted_bytes", "Bytes of content deleted by eviction"),
            last_eviction: registered(r, "last_eviction_timestamp_seconds", "When eviction last deleted something (Unix time; 0 never)"),
            eviction_deferred: registered(r, "eviction_deferred", "Checks over budget that left eviction to another replica holding the eviction lease"),
            problems: Problems::default(),
            prewarm_runs: registered(r, "prewarm_runs", "Runs over the pre-warm list (cache.prewarm) and warm-now requests"),
            prewarm_checked: registered(r, "prewarm_images_checked", "Pre-warmed tags checked upstream (one HEAD each when cached)"),
            prewarm_moved: registered(r, "prewarm_images_moved", "Pre-warmed tags found pointing to new content (or seen for the first time)"),
            prewarm_fetched: registered(r, "prewarm_images_fetched", "Pre-warmed tags for which manifests or blobs were fetched"),
            prewarm_bytes: registered(r, "prewarm_fetched_bytes", "Blob bytes fetched for pre-warming"),
            prewarm_errors: registered(r, "prewarm_errors", "Pre-warmed images that could not be checked or fetched"),
            prewarm_last_run: registered(r, "prewarm_last_run_timestamp_seconds", "When a pre-warm run last ended (Unix time; 0 never)"),
            registry,
        };
        // Failure counters whose labels are all known start at 0, so they are exported (and
        // dashboards and `rate()` see them) before the first failure.
        for operation in ["request", "fill", "health"] {
            let _ = inner
                .storage_errors
                .get_or_create(&OperationLabels { operation });
        }
        for kind in ["blob", "manifest"] {
            for reason in ["full", "error"] {
                let _ = inner
                    .uncached_serves
                    .get_or_create(&KindReasonLabels { kind, reason });
            }
        }
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// One answered request.
    pub fn request(&self, endpoint: &'static str, method: &http::Method, status: u16) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                endpoint,
                method: method.as_str().to_owned(),
                status,
            })
            .inc();
    }

    /// How the cache answered one manifest or blob request for `registry`.
    pub fn cache_outcome(&self, registry: &str, kind: &'static str, outcome: Outcome) {
        self.inner
            .cache
            .get_or_create(&CacheLabels {
                registry: registry.to_owned(),
                kind,
                outcome: outcome.label(),
            })
            .inc();
        if outcome == Outcome::Stale {
            self.inner
                .stale_serves
                .get_or_create(&RegistryKindLabels {
                    registry: registry.to_owned(),
                    kind,
                })
                .inc();
        }
    }

    /// Body bytes sent to a client; from the cache unless the answer was fetched upstream.
    pub fn served(&self, outcome: Option<Outcome>, bytes: u64) {
        let source = match outcome {
            Some(Outcome::Miss | Outcome::Joined) => "upstream",
            _ => "cache",
        };
        self.inner
            .served_bytes
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }

    pub fn upstream_bytes(&self, registry: &str, bytes: u64) {
        self.inner
            .upstream_bytes
            .get_or_create(&RegistryLabels {
                registry: registry.to_owned(),
            })
            .inc_by(bytes);
    }

    /// One HTTP request sent to `registry`'s upstream; `status` None when no answer came.
    pub fn upstream_request(
        &self,
        registry: &str,
        kind: &'static str,
        method: &http::Method,
        status: Option<u16>,
    ) {
        self.inner
            .upstream_requests
            .get_or_create(&UpstreamLabels {
                registry: registry.to_owned(),
                kind,
                method: method.as_str().to_owned(),
                status: status.map_or_else(|| "error".to_owned(), |s| s.to_string()),
            })
            .inc();
    }

    pub fn token_fetch(&self, registry: &str, ok: bool) {
        let outcome = if ok { "issued" } else { "failed" };
        self.inner
            .token_fetches
            .get_or_create(&RegistryOutcomeLabels {
                registry: registry.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts a fill as in flight until the guard is dropped.
    pub fn fill_started(&self) -> FillGuard {
        self.inner.fills_in_flight.inc();
        FillGuard(self.inner.fills_in_flight.clone())
    }

    pub fn storage_error(&self, operation: &'static str) {
        self.inner
            .storage_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// A blob or manifest served without being cached, because storage refused it.
    pub fn uncached_serve(&self, kind: &'static str, reason: &'static str) {
        self.inner
            .uncached_serves
            .get_or_create(&KindReasonLabels { kind, reason })
            .inc();
    }

    /// Whether storage refuses writes for lack of space right now.
    pub fn storage_full(&self, full: bool) {
        self.inner.storage_full.set(i64::from(full));
    }

    /// Records the pull quota `registry` last reported; None before any report.
    pub fn rate_limit(&self, registry: &str, quota: Option<(u64, u64)>) {
        let (limit, remaining) = quota.map_or((-1, -1), |(l, r)| (l as i64, r as i64));
        let labels = RegistryLabels {
            registry: registry.to_owned(),
        };
        self.inner
            .rate_limit_limit
            .get_or_create(&labels)
            .set(limit);
        self.inner
            .rate_limit_remaining
            .get_or_create(&labels)
            .set(remaining);
    }

    /// Whether `registry` is configured offline.
    pub fn upstream_offline(&self, registry: &str, offline: bool) {
        self.inner
            .upstream_offline
            .get_or_create(&RegistryLabels {
                registry: registry.to_owned(),
            })
            .set(i64::from(offline));
    }

    /// The cache's size against its budget, and what pins keep (None: not counted this time,
    /// the last figure stands).
    pub fn cache_size(&self, bytes: u64, budget: u64, pinned: Option<u64>) {
        self.inner.cache_bytes.set(bytes as i64);
        self.inner.cache_budget_bytes.set(budget as i64);
        if let Some(pinned) = pinned {
            self.inner.pinned_bytes.set(pinned as i64);
        }
    }

    /// The bytes of cached content now.
    pub fn cache_bytes(&self, bytes: u64) {
        self.inner.cache_bytes.set(bytes as i64);
    }

    /// One eviction run that deleted something.
    pub fn evicted(&self, images: u64, objects: u64, bytes: u64, at_unix_secs: u64) {
        self.inner.evicted_images.inc_by(images);
        self.inner.evicted_objects.inc_by(objects);
        self.inner.evicted_bytes.inc_by(bytes);
        self.inner.last_eviction.set(at_unix_secs as i64);
    }

    /// An eviction left to the replica holding the lease.
    pub fn eviction_deferred(&self) {
        self.inner.eviction_deferred.inc();
    }

    /// One pre-warm run's figures.
    pub fn prewarm_run(
        &self,
        checked: u64,
        moved: u64,
        fetched: u64,
        bytes: u64,
        errors: u64,
        at_unix_secs: u64,
    ) {
        self.inner.prewarm_runs.inc();
        self.inner.prewarm_checked.inc_by(checked);
        self.inner.prewarm_moved.inc_by(moved);
        self.inner.prewarm_fetched.inc_by(fetched);
        self.inner.prewarm_bytes.inc_by(bytes);
        self.inner.prewarm_errors.inc_by(errors);
        self.inner.prewarm_last_run.set(at_unix_secs as i64);
    }

    /// A response body that stopped before its end.
    pub fn cut_short(&self, endpoint: &'static str) {
        self.inner
            .cut_short
            .get_or_create(&KindLabels { kind: endpoint })
            .inc();
    }

    /// Something went wrong that the status page lists (it is logged where it happens).
    pub fn problem(&self, kind: ProblemKind, repository: Option<&str>, message: &str) {
        self.inner.problems.record(kind, repository, message);
    }

    pub fn problems(&self) -> &Problems {
        &self.inner.problems
    }

    /// Everything, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// A new metric, registered under `name`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Keeps `cistern_fills_in_flight` up while a fill runs.
pub struct FillGuard(Gauge<i64, AtomicI64>);

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
