//! The HTTP edge: requests in, registry API responses out. No policy lives here.

mod blobs;
mod catalog;
mod endpoint;
mod error;
mod headers;
mod manifests;
mod ops;
mod pagination;
mod panics;
mod status;
mod tags;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http::{HeaderName, HeaderValue};

use crate::access::Access;
use crate::cache::Cache;
use crate::registry::MirroredRegistries;
use crate::telemetry::{log_requests, EndpointLabel, FailedRepository};
pub use endpoint::{Endpoint, Routed};
pub use error::{ApiError, ErrorMessage};
pub use ops::{debug_router, OpsState};
use panics::catch_panics;
pub use status::History;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub cache: Cache,
    /// Who may pull what (`auth.htpasswd`, `access:`).
    pub access: Arc<Access>,
    /// The registries requests may name (`?ns=`, a path prefix); any other is refused.
    pub registries: Arc<MirroredRegistries>,
    /// Configured `http.headers`, added to every response.
    pub extra_headers: Arc<Vec<(HeaderName, HeaderValue)>>,
}

/// The registry API, with health endpoints beside it, and the status page under `/_cistern/`
/// when `status_page` (`http.statuspage`) is on.
pub fn router(state: AppState, ops: OpsState, status_page: bool) -> Router {
    let metrics = state.cache.metrics().clone();
    let (cache, access) = (state.cache.clone(), state.access.clone());
    let registry = Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(dispatch);
    // Inside the request log, so a panic's 500 is logged once, like any failed request.
    let router = catch_panics(registry)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            add_response_headers,
        ))
        .layer(middleware::from_fn_with_state(metrics, log_requests))
        .with_state(state)
        // Probes every few seconds would drown the request log, so health is not logged.
        .merge(catch_panics(ops::health_routes(ops.clone())));
    if status_page {
        let page = status::main_routes(cache, ops.history, access);
        router.merge(catch_panics(page))
    } else {
        router
    }
}

/// Longer request URIs are refused before any other work.
pub const MAX_URI_BYTES: usize = 8 * 1024;

async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    let uri_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return ApiError::uri_too_long(uri_len, MAX_URI_BYTES).into_response();
    }
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if let Err(refusal) = state.access.admit(peer, authorization).await {
        return ApiError::from(refusal).into_response();
    }
    let routed = Endpoint::route(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &state.registries,
    );
    let Routed {
        endpoint,
        namespace,
    } = match routed {
        Ok(routed) => routed,
        Err(e) => return e.into_response(),
    };
    if let Some(repo) = endpoint.repository() {
        if !state.access.allows(repo.as_str()) {
            let mut response = ApiError::denied(format!(
                "repository {repo} may not be pulled through this mirror (access.repositories)"
            ))
            .into_response();
            let named = FailedRepository(repo.as_str().to_owned());
            response.extensions_mut().insert(named);
            return response;
        }
    }
    let mut response = answer(&state, &endpoint, &parts).await;
    response
        .extensions_mut()
        .insert(EndpointLabel(endpoint.label()));
    if let Some(repo) = endpoint.repository() {
        let failed = response.extensions().get::<ErrorMessage>().is_some();
        let extensions = response.extensions_mut();
        extensions.insert(repo.registry().clone());
        if failed {
            extensions.insert(FailedRepository(repo.as_str().to_owned()));
        }
    }
    // The distribution spec: a proxy that used `ns` says so, naming the registry it served.
    if let Some(value) = namespace.and_then(|ns| HeaderValue::try_from(ns).ok()) {
        response.headers_mut().insert(headers::OCI_NAMESPACE, value);
    }
    response
}

async fn answer(state: &AppState, endpoint: &Endpoint, parts: &http::request::Parts) -> Response {
    let query = parts.uri.query();
    let cache = &state.cache;
    let result = match endpoint {
        Endpoint::Base => Ok(axum::Json(serde_json::json!({})).into_response()),
        Endpoint::Catalog => catalog::list(cache, query, &state.access, &state.registries).await,
        Endpoint::Tags { repo } => tags::list(cache, repo, query).await,
        Endpoint::Manifest {
            repo,
            reference,
            head,
        } => manifests::get(cache, repo, reference, *head, &parts.headers).await,
        Endpoint::Blob {
            repo,
            digest,
            head: true,
        } => blobs::head(cache, repo, digest).await,
        Endpoint::Blob { repo, digest, .. } => {
            blobs::get(cache, repo, digest, &parts.headers).await
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn add_response_headers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        headers::API_VERSION,
        HeaderValue::from_static(headers::API_VERSION_VALUE),
    );
    for (name, value) in state.extra_headers.iter() {
        headers.append(name.clone(), value.clone());
    }
    response
}
