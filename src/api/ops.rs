//! The operator's endpoints: liveness, readiness and Prometheus metrics. Health answers on both
//! listeners (a probe may use either); metrics only on the debug listener. None of these touch
//! upstream, and none sit behind client authentication.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{header, StatusCode};
use serde_json::json;

use crate::cache::Cache;
use crate::health::Health;
use crate::telemetry::METRICS_CONTENT_TYPE;

#[derive(Clone)]
pub struct OpsState {
    pub cache: Cache,
    pub health: Health,
}

/// `/healthz`, `/readyz` and Distribution's `/debug/health`.
pub fn health_routes(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/debug/health", get(ready))
        .with_state(state)
}

/// The debug listener: health, plus metrics at `metrics_path` when enabled.
pub fn debug_router(state: OpsState, metrics_path: Option<&str>) -> Router {
    let router = health_routes(state.clone());
    let router = match metrics_path {
        Some(path) => router.merge(Router::new().route(path, get(metrics)).with_state(state)),
        None => router,
    };
    super::catch_panics(router)
}

async fn live() -> Response {
    Json(json!({"status": "live"})).into_response()
}

async fn ready(State(state): State<OpsState>) -> Response {
    match state.health.readiness() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let metrics = state.cache.metrics();
    for (registry, quota) in state.cache.upstream_quotas() {
        metrics.rate_limit(registry.name(), quota);
    }
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics.render(),
    )
        .into_response()
}
