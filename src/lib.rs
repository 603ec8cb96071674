//! cistern: a pull-through caching mirror for Docker Hub.

pub mod api;
pub mod cache;
pub mod config;
pub mod registry;
pub mod storage;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::cache::Cache;
use crate::config::Config;
use crate::storage::Storage;
use crate::upstream::Upstream;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
}

/// The whole application for `config`: storage, upstream client, router, and the background
/// expiry sweep (so it must be called within a Tokio runtime).
pub async fn app(config: &Config) -> Result<Router, StartError> {
    let storage = Storage::open(&config.storage).await?;
    let upstream = Upstream::new(&config.proxy)?;
    let cache = Cache::new(storage.clone(), upstream, &config.proxy);
    cache::spawn_expiry(storage, config.proxy.content_ttl);
    let state = api::AppState {
        cache,
        extra_headers: Arc::new(config.http.headers.clone()),
    };
    Ok(api::router(state))
}

/// Serves `config` on `listener` until `shutdown` completes. Tests call this with a listener
/// on 127.0.0.1:0, so the whole server runs in-process.
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let router = app(config).await?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %addr,
        upstream = %config.proxy.remote_url,
        storage = %config.storage.describe(),
        tag_ttl = ?config.proxy.tag_ttl,
        credentials = config.proxy.credentials.is_some(),
        "cistern serving"
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| StartError::Serve { addr, source })
}
