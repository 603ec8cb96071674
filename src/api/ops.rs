//! The operator's endpoints: liveness, readiness, Prometheus metrics and the status page. Health answers on both
//! listeners (a probe may use either); metrics only on the debug listener. None of these touch
//! upstream, and none sit behind client authentication.

use std::time::SystemTime;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{header, StatusCode};
use serde_json::json;

use super::status::{self, History};
use crate::cache::Cache;
use crate::health::Health;
use crate::storage::PressureState;
use crate::telemetry::METRICS_CONTENT_TYPE;

#[derive(Clone)]
pub struct OpsState {
    pub cache: Cache,
    pub health: Health,
    /// The status page's figures over time.
    pub history: History,
}

/// `/healthz`, `/readyz` and Distribution's `/debug/health`.
pub fn health_routes(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/debug/health", get(ready))
        .with_state(state)
}

/// The debug listener: health, the status page at `/`, metrics at `metrics_path` when
/// enabled, and `admin` (the admin actions, each behind the admin token).
pub fn debug_router(state: OpsState, metrics_path: Option<&str>, admin: Router) -> Router {
    let router = health_routes(state.clone()).merge(admin);
    let router = match metrics_path {
        Some(path) => router.merge(
            Router::new()
                .route(path, get(metrics))
                .with_state(state.clone()),
        ),
        None => router,
    };
    let router = match metrics_path.filter(|path| status::uses_path(path)) {
        Some(path) => {
            tracing::warn!(path, "no status page on the debug listener: http.debug.prometheus.path takes one of its paths");
            router
        }
        None => router.merge(status::debug_routes(state.cache, state.history)),
    };
    super::catch_panics(router)
}

async fn live() -> Response {
    Json(json!({"status": "live"})).into_response()
}

/// Ready or not, with what storage's last writes said: a full store keeps the mirror ready
/// (it still serves, uncached, while it evicts), but says since when it is full.
async fn ready(State(state): State<OpsState>) -> Response {
    let storage = storage_detail(&state.cache.storage_handle().pressure().state());
    match state.health.readiness() {
        Ok(()) => Json(json!({"status": "ready", "storage": storage})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason, "storage": storage})),
        )
            .into_response(),
    }
}

fn storage_detail(pressure: &PressureState) -> serde_json::Value {
    let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
    let mut detail = json!({"full": pressure.full_since.is_some()});
    if let Some(since) = time(pressure.full_since) {
        detail["full_since"] = json!(since);
    }
    if let Some(last) = time(pressure.last_refused) {
        detail["last_refused_write"] = json!(last);
        detail["last_refused_cause"] = json!(pressure.last_cause);
        detail["refused_writes"] = json!(pressure.refused_writes);
    }
    detail
}

/// Sets the gauges read on demand (storage full, cache size, quotas): before every scrape and
/// every status page figure, so both show the same.
pub(super) fn refresh_gauges(cache: &Cache) {
    let metrics = cache.metrics();
    let storage = cache.storage_handle();
    metrics.storage_full(storage.pressure().is_full());
    if storage.index().is_built() {
        // Current at every scrape, not only at the evictor's checks (and without a budget).
        metrics.cache_bytes(storage.index().totals().content_bytes);
    }
    for (registry, quota) in cache.upstream_quotas() {
        metrics.rate_limit(registry.name(), quota);
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    refresh_gauges(&state.cache);
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.cache.metrics().render(),
    )
        .into_response()
}
