use axum::response::{IntoResponse, Response};
use http::header;
use serde_json::json;

use super::error::ApiError;
use super::pagination::{next_link, PageQuery};
use crate::access::Access;
use crate::cache::{paginate, Cache};

/// Distribution's `catalog.maxentries` default: the largest page served.
const MAX_ENTRIES: usize = 1000;

/// `GET /v2/_catalog`: the repositories this mirror holds and the client may pull, in pages.
pub async fn list(
    cache: &Cache,
    query: Option<&str>,
    access: &Access,
) -> Result<Response, ApiError> {
    let page = PageQuery::parse(query)?;
    let n = page.n.unwrap_or(MAX_ENTRIES).min(MAX_ENTRIES);
    let mut repositories = cache.repositories().await?;
    repositories.retain(|name| access.allows(name));
    let (repositories, more) = paginate(repositories, Some(n), page.last.as_deref());
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
