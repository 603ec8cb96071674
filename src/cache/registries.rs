//! Each mirrored registry as the cache sees it: its upstream client, and the policy the
//! cache applies to it (tag TTL, remembered 404s, fill inputs). The cache picks one by the
//! registry in a repository's name and never falls back to another: a name of a registry
//! that is not here is an error, not a request to the default upstream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::fills::{FillInputs, RateFloor};
use super::not_found::NotFound;
use super::CacheError;
use crate::config::ProxyConfig;
use crate::registry::{RegistryId, RepoName};
use crate::storage::Storage;
use crate::telemetry::Metrics;
use crate::upstream::Upstream;

/// One registry: its upstream client and the cache's settings for it.
pub struct CachedRegistry {
    pub upstream: Arc<Upstream>,
    /// How long a tag is trusted before it is revalidated (`tagttl`).
    pub tag_ttl: Duration,
    /// Manifests its upstream said it does not have (`notfoundttl`).
    pub not_found: NotFound,
    /// What a fill of one of its blobs needs.
    pub fill_inputs: FillInputs,
}

impl CachedRegistry {
    pub fn new(
        upstream: Upstream,
        config: &ProxyConfig,
        storage: &Storage,
        metrics: &Metrics,
    ) -> Self {
        metrics.upstream_offline(upstream.registry().name(), upstream.is_offline());
        let upstream = Arc::new(upstream);
        CachedRegistry {
            fill_inputs: FillInputs {
                storage: storage.clone(),
                upstream: upstream.clone(),
                metrics: metrics.clone(),
                rate_floor: RateFloor {
                    min_bytes_per_sec: config.fill_min_rate,
                    window: config.fill_rate_window,
                },
            },
            upstream,
            tag_ttl: config.tag_ttl,
            not_found: NotFound::new(config.not_found_ttl),
        }
    }
}

/// Every registry the cache fetches from.
pub struct CachedRegistries {
    default: CachedRegistry,
    by_host: HashMap<Arc<str>, CachedRegistry>,
}

impl CachedRegistries {
    pub fn new(default: CachedRegistry) -> Self {
        CachedRegistries {
            default,
            by_host: HashMap::new(),
        }
    }

    /// Adds the registry clients name `host`.
    pub fn with(mut self, host: &str, registry: CachedRegistry) -> Self {
        self.by_host.insert(Arc::from(host), registry);
        self
    }

    /// The registry `repo` belongs to.
    pub fn of(&self, repo: &RepoName) -> Result<&CachedRegistry, CacheError> {
        match repo.registry() {
            RegistryId::Default => Ok(&self.default),
            RegistryId::Host(host) => {
                self.by_host
                    .get(host)
                    .ok_or_else(|| CacheError::RegistryNotMirrored {
                        registry: host.to_string(),
                        repo: repo.clone(),
                    })
            }
        }
    }

    /// Every registry, the default first.
    pub fn all(&self) -> impl Iterator<Item = &CachedRegistry> {
        std::iter::once(&self.default).chain(self.by_host.values())
    }
}
