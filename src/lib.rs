//! cistern: a pull-through caching mirror for Docker Hub and the other registries a fleet
//! pulls from.

pub mod access;
pub mod admin;
pub mod api;
pub mod cache;
pub mod config;
mod gc;
pub mod health;
pub mod memory;
pub mod registry;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod upstream;
pub mod warm_now;

use std::future::Future;
use std::sync::Arc;

use axum::Router;

use crate::cache::{Cache, CachedRegistries, CachedRegistry};
use crate::config::Config;
use crate::health::Health;
use crate::registry::RegistryId;
use crate::server::Listeners;
use crate::storage::Storage;
use crate::telemetry::Metrics;
use crate::upstream::Upstream;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error(transparent)]
    Access(#[from] access::HtpasswdError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot load TLS certificate {certificate} and key {key} (http.tls): {source}")]
    Tls {
        certificate: String,
        key: String,
        source: std::io::Error,
    },
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
}

/// The routers for `config`: the registry API and the debug listener's.
pub struct App {
    pub api: Router,
    pub debug: Router,
    pub health: Health,
}

/// The whole application for `config`: storage, upstream client, routers, and the background
/// expiry sweep and storage health check (so it must be called within a Tokio runtime).
pub async fn app(config: &Config) -> Result<App, StartError> {
    let access = Arc::new(access::Access::new(&config.access, &config.registries)?);
    let metrics = Metrics::new();
    let storage = Storage::open(&config.storage).await?;
    storage.spawn_index_upkeep();
    let registries = cached_registries(config, &storage, &metrics)?;
    let cache = Cache::new(storage.clone(), registries, metrics.clone());
    cache.spawn_access_publisher();
    if config.any_offline() {
        // Content is stored once for every registry, and what an offline registry's images
        // lose cannot be fetched again: nothing expires while one is offline.
        tracing::info!(
            ttl = ?config.proxy.content_ttl,
            "a registry is offline: proxy.ttl expiry is suspended"
        );
    } else {
        cache.spawn_expiry(config.proxy.content_ttl);
    }
    if let Some(min_free) = config.cache.min_free {
        storage.keep_free(min_free);
    }
    cache.spawn_evictor(config.cache.clone());
    let registries = Arc::new(registry::MirroredRegistries::new(
        &config.proxy.remote_url,
        config.registries.iter().map(|r| r.host.clone()),
    ));
    let prewarm = &config.cache.prewarm;
    let prewarmer = cache::prewarm::Prewarmer::new(
        cache.clone(),
        registries.clone(),
        prewarm.platforms.clone(),
        prewarm.max_fetches,
    );
    cache.spawn_prewarmer(prewarmer.clone(), prewarm.images.clone(), prewarm.interval);
    let health = Health::spawn(
        storage,
        config.storage.describe(),
        config.health.storage.clone(),
        metrics,
    );
    let history = api::History::default();
    history.spawn_sampler(cache.clone());
    let ops = api::OpsState {
        cache: cache.clone(),
        health: health.clone(),
        history,
    };
    let metrics_path = config
        .http
        .debug
        .as_ref()
        .and_then(|d| d.metrics_path.as_deref());
    let admin = admin::router(admin::AdminState {
        cache: cache.clone(),
        registries: registries.clone(),
        token: config.admin.token.clone().map(Arc::new),
        prewarmer,
    });
    let debug = api::debug_router(ops.clone(), metrics_path, admin);
    let state = api::AppState {
        cache,
        access,
        registries,
        extra_headers: Arc::new(config.http.headers.clone()),
    };
    Ok(App {
        api: api::router(state, ops, config.http.status_page),
        debug,
        health,
    })
}

pub use gc::{gc, GcError};

/// One upstream client per registry: the default upstream and each of `registries:`.
fn cached_registries(
    config: &Config,
    storage: &Storage,
    metrics: &Metrics,
) -> Result<CachedRegistries, StartError> {
    let cached = |id: RegistryId, proxy: &config::ProxyConfig| {
        let upstream = Upstream::new(id, proxy, metrics.clone())?;
        Ok::<_, StartError>(CachedRegistry::new(upstream, proxy, storage, metrics))
    };
    let mut registries = CachedRegistries::new(cached(RegistryId::Default, &config.proxy)?);
    for registry in &config.registries {
        let id = RegistryId::Host(registry.host.as_str().into());
        registries = registries.with(&registry.host, cached(id, &registry.upstream)?);
    }
    Ok(registries)
}

/// Says at start that a registry is offline, so whoever reads the log knows why misses fail.
fn log_offline(upstream: &str, registry: &str, offline: bool) {
    if offline {
        tracing::info!(
            registry,
            upstream,
            "registry OFFLINE: its upstream is never contacted; cached images are served (tags as last seen), anything else is answered 404"
        );
    }
}

/// Serves `config` on `listeners` until `shutdown` completes, then drains for at most
/// `http.draintimeout`. Tests call this with listeners on 127.0.0.1:0, so the whole server runs
/// in-process.
pub async fn serve(
    config: &Config,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listeners = listeners.into();
    let tls = match &config.http.tls {
        Some(tls) => Some(server::load_tls(tls).await?),
        None => None,
    };
    let app = app(config).await?;
    let addr = listeners
        .api
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %addr,
        tls = tls.is_some(),
        upstream = %config.proxy.remote_url,
        storage = %config.storage.describe(),
        tag_ttl = ?config.proxy.tag_ttl,
        credentials = config.proxy.credentials.is_some(),
        offline = config.proxy.offline,
        "cistern serving"
    );
    log_offline(
        config.proxy.remote_url.as_str(),
        "docker.io",
        config.proxy.offline,
    );
    for registry in &config.registries {
        tracing::info!(
            registry = %registry.host,
            upstream = %registry.upstream.remote_url,
            tag_ttl = ?registry.upstream.tag_ttl,
            credentials = registry.upstream.credentials.is_some(),
            offline = registry.upstream.offline,
            "mirroring registry"
        );
        log_offline(
            registry.upstream.remote_url.as_str(),
            &registry.host,
            registry.upstream.offline,
        );
    }
    let health = app.health.clone();
    server::run(
        listeners,
        app.api,
        app.debug,
        tls,
        server::ConnectionLimits::from_config(&config.http),
        shutdown,
        move || health.shutting_down(),
    )
    .await
}
