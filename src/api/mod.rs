//! The HTTP edge: requests in, registry API responses out. No policy lives here.

mod blobs;
mod catalog;
mod endpoint;
mod error;
mod headers;
mod manifests;
mod pagination;
mod tags;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use http::{HeaderName, HeaderValue};

use crate::cache::Cache;
pub use endpoint::Endpoint;
pub use error::ApiError;
use error::ErrorMessage;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub cache: Cache,
    /// Configured `http.headers`, added to every response.
    pub extra_headers: Arc<Vec<(HeaderName, HeaderValue)>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            add_response_headers,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    let endpoint = match Endpoint::parse(&parts.method, parts.uri.path()) {
        Ok(endpoint) => endpoint,
        Err(e) => return e.into_response(),
    };
    let query = parts.uri.query();
    let cache = &state.cache;
    let result = match &endpoint {
        Endpoint::Base => Ok(axum::Json(serde_json::json!({})).into_response()),
        Endpoint::Catalog => catalog::list(cache, query).await,
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

/// One log line per request; a failed request's line carries its error message.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // The query is kept: it shows containerd's `?ns=` and the paging parameters, never a secret.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str())
        .to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match response.extensions().get::<ErrorMessage>() {
        Some(ErrorMessage(error)) if status >= 500 => {
            tracing::error!(%method, %path, status, elapsed_ms, %error, "request failed")
        }
        Some(ErrorMessage(error)) => {
            tracing::info!(%method, %path, status, elapsed_ms, %error, "request refused")
        }
        None => tracing::info!(%method, %path, status, elapsed_ms, "request"),
    }
    response
}
