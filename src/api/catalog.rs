use axum::response::{IntoResponse, Response};
use http::header;
use serde_json::json;

use super::error::ApiError;
use super::pagination::{next_link, PageQuery};
use crate::access::Access;
use crate::cache::Cache;
use crate::registry::MirroredRegistries;

/// Distribution's `catalog.maxentries` default: the largest page served.
const MAX_ENTRIES: usize = 1000;

/// `GET /v2/_catalog`: the repositories this mirror holds and the client may pull, in pages,
/// named as clients name them (`library/alpine`, `ghcr.io/owner/app`).
pub async fn list(
    cache: &Cache,
    query: Option<&str>,
    access: &Access,
    registries: &MirroredRegistries,
) -> Result<Response, ApiError> {
    let page = PageQuery::parse(query)?;
    let n = page.n.unwrap_or(MAX_ENTRIES).min(MAX_ENTRIES);
    // A registry removed from the configuration leaves its repositories in the store; they
    // cannot be pulled, so they are not listed.
    let (repositories, more) = cache
        .repositories_page(page.last.as_deref(), n, |name| {
            access.allows(name) && registries.serves_name(name)
        })
        .await?;
    let link = repositories
        .last()
        .filter(|_| more)
        .map(|last| next_link("/v2/_catalog", n, last));
    let body = axum::Json(json!({ "repositories": repositories }));
    Ok(match link {
        Some(link) => ([(header::LINK, link)], body).into_response(),
        None => body.into_response(),
    })
}
