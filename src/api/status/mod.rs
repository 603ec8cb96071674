//! The status page: what the mirror does, for a person in a browser. The page (HTML, CSS and
//! a little plain JavaScript, all in the binary) polls the JSON under `api/` beside it.
//!
//! It is served at `/` of the debug listener, to whoever can reach that listener, and, when
//! `http.statuspage` is on, under `/_cistern/` of the main listener, to the clients the access
//! config admits: there it never names a repository the viewer could not pull (repositories,
//! fills and problems are filtered by `access.repositories`; problems about no repository,
//! e.g. a refused client's address, are left out).

mod figures;
mod history;
mod query;
mod render;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::ApiError;
use crate::access::Access;
use crate::cache::Cache;
use crate::telemetry::ProblemKind;
pub use history::History;
use query::RepositoryQuery;

/// Where the page is served on the main listener.
pub const MAIN_PREFIX: &str = "/_cistern";

const SCRIPT: &str = include_str!("assets/status.js");
const STYLE: &str = include_str!("assets/status.css");
/// The page loads nothing but its own script and style, and talks only to its own API.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

#[derive(Clone)]
struct StatusState {
    cache: Cache,
    history: History,
    /// The access policy the viewer is held to; None on the debug listener (the operator).
    viewer: Option<Arc<Access>>,
}

impl StatusState {
    fn may_see(&self, repository: &str) -> bool {
        self.viewer.as_ref().is_none_or(|a| a.allows(repository))
    }
}

/// Every route under `prefix` ("" on the debug listener, `/_cistern` on the main one).
fn routes(prefix: &str, state: StatusState) -> Router {
    let at = |path: &str| format!("{prefix}{path}");
    Router::new()
        .route(&at("/"), get(page))
        .route(&at("/status.js"), get(script))
        .route(&at("/status.css"), get(style))
        .route(&at("/api/summary"), get(summary))
        .route(&at("/api/history"), get(history))
        .route(&at("/api/fills"), get(fills))
        .route(&at("/api/repositories"), get(repositories))
        .route(&at("/api/problems"), get(problems))
        .with_state(state)
}

/// The paths the page takes on the debug listener, besides those under `/api/`.
const PATHS: [&str; 3] = ["/", "/status.js", "/status.css"];

/// Whether the page would take `path` on the debug listener.
pub fn uses_path(path: &str) -> bool {
    PATHS.contains(&path) || path.starts_with("/api/")
}

/// The page on the debug listener, for the operator.
pub fn debug_routes(cache: Cache, history: History) -> Router {
    let state = StatusState {
        cache,
        history,
        viewer: None,
    };
    routes("", state)
}

/// The page on the main listener under `/_cistern/`, for clients `access` admits, showing
/// only what they may pull.
pub fn main_routes(cache: Cache, history: History, access: Arc<Access>) -> Router {
    let state = StatusState {
        cache,
        history,
        viewer: Some(access.clone()),
    };
    let to_page = format!("{MAIN_PREFIX}/");
    routes(MAIN_PREFIX, state)
        .route(
            MAIN_PREFIX,
            get(move || async move { Redirect::permanent(&to_page) }),
        )
        .layer(middleware::from_fn_with_state(access, admit))
}

/// Admits the viewer as the registry API would (`auth.htpasswd`, `access.sources`).
async fn admit(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match access.admit(peer, authorization).await {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let error = ApiError::from(refusal);
            tracing::info!(status = error.status().as_u16(), path = %request.uri().path(), "status page refused");
            error.into_response()
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
        .into_response()
}

async fn page(State(state): State<StatusState>) -> Response {
    let readings = figures::read(&state.cache);
    let summary = figures::summary(&state.cache, &readings, state.history.uptime_seconds());
    let mut response = asset("text/html; charset=utf-8", "");
    *response.body_mut() = render::page(&summary).into();
    response
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// A JSON answer that no cache keeps.
fn fresh(value: impl Serialize) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Json(value),
    )
        .into_response()
}

async fn summary(State(state): State<StatusState>) -> Response {
    let readings = figures::read(&state.cache);
    fresh(figures::summary(
        &state.cache,
        &readings,
        state.history.uptime_seconds(),
    ))
}

async fn history(State(state): State<StatusState>) -> Response {
    let readings = figures::read(&state.cache);
    let summary = figures::summary(&state.cache, &readings, state.history.uptime_seconds());
    let now = figures::Point::of(&summary, history::unix_now());
    fresh(state.history.view(now))
}

async fn fills(State(state): State<StatusState>) -> Response {
    let mut fills = state.cache.fill_views();
    fills.retain(|fill| state.may_see(&fill.repository));
    fresh(json!({ "fills": fills }))
}

async fn repositories(State(state): State<StatusState>, RawQuery(raw): RawQuery) -> Response {
    let query = match RepositoryQuery::parse(raw.as_deref()) {
        Ok(query) => query,
        Err(message) => {
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
        }
    };
    let page = state
        .cache
        .repository_page(&query.q, query.skip(), query.per_page, |name| {
            state.may_see(name)
        });
    fresh(json!({
        "q": query.q,
        "page": query.page,
        "per_page": query.per_page,
        "total": page.total,
        "complete": page.complete,
        "repositories": page.repositories,
    }))
}

async fn problems(State(state): State<StatusState>) -> Response {
    let mut problems = state.cache.metrics().problems().recent();
    if state.viewer.is_some() {
        // A viewer sees the problems of repositories it may pull, never those of none (a
        // refused client's address is the operator's business).
        problems.retain(|p| {
            p.kind != ProblemKind::RefusedClient
                && p.repository.as_deref().is_some_and(|r| state.may_see(r))
        });
    }
    fresh(json!({ "problems": problems }))
}
