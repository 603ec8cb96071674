use axum::response::{IntoResponse, Response};
use http::header;
use serde_json::json;

use super::error::ApiError;
use super::pagination::{next_link, PageQuery};
use crate::cache::Cache;
use crate::registry::RepoName;

/// `GET /v2/<name>/tags/list`: upstream's list, or the cached tags when upstream fails.
pub async fn list(
    cache: &Cache,
    repo: &RepoName,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let page = PageQuery::parse(query)?;
    let tags = cache.tags(repo, page.n, page.last.as_deref()).await?;
    let body = axum::Json(json!({ "name": repo.as_str(), "tags": tags.tags }));
    let last = tags.tags.last().filter(|_| tags.more);
    match (last, page.n) {
        (Some(last), n) => {
            let n = n.unwrap_or(tags.tags.len());
            let link = next_link(&format!("/v2/{repo}/tags/list"), n, last);
            Ok(([(header::LINK, link)], body).into_response())
        }
        _ => Ok(body.into_response()),
    }
}
