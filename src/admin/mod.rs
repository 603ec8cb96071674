//! Admin actions for an operator, on the debug listener under `/api/admin/`: refresh a tag
//! now, and purge a tag, an image or a repository from the cache. Every action needs
//! `Authorization: Bearer <admin.token>`; with no token configured they all answer 403.
//!
//! Adding an action: a file with its handler (parsing names with `target.rs`, answering JSON,
//! failing with `ApiError`), and one `.route(...)` line in `router` below; the token check
//! covers every route of that router.

mod auth;
mod prewarm;
mod purge;
mod refresh;
mod target;

use std::sync::Arc;

use axum::middleware;
use axum::routing::{delete, post};
use axum::Router;
use secrecy::SecretString;

use crate::cache::prewarm::Prewarmer;
use crate::cache::Cache;
use crate::registry::MirroredRegistries;

/// What every admin action can reach.
#[derive(Clone)]
pub struct AdminState {
    pub cache: Cache,
    /// The registries names may belong to, as clients name them (`ghcr.io/owner/app`).
    pub registries: Arc<MirroredRegistries>,
    /// `admin.token`; None disables every action.
    pub token: Option<Arc<SecretString>>,
    /// Warm-now fetches with the pre-warm list's platforms and fetch limit.
    pub prewarmer: Prewarmer,
}

/// The admin actions, behind the token check, for the debug listener to merge.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/api/admin/refresh", post(refresh::refresh))
        .route("/api/admin/prewarm", post(prewarm::prewarm))
        .route("/api/admin/repositories/{*target}", delete(purge::purge))
        .route_layer(middleware::from_fn_with_state(
            state.token.clone(),
            auth::require_token,
        ))
        .with_state(state)
}
