use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderMap, StatusCode};

use super::error::ApiError;
use super::headers::{self, DOCKER_CONTENT_DIGEST};
use crate::cache::Cache;
use crate::registry::{Reference, RepoName};

/// `GET|HEAD /v2/<name>/manifests/<reference>`: upstream's bytes and media type, unchanged.
pub async fn get(
    cache: &Cache,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let accept = headers::accept(request_headers);
    let manifest = cache
        .manifest(repo, reference, accept.as_deref(), !head)
        .await?;
    let digest = manifest.digest.to_string();
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, manifest.size)
        .header(DOCKER_CONTENT_DIGEST, &digest)
        .header(header::ETAG, format!("\"{digest}\""));
    if !manifest.media_type.is_empty() {
        response = response.header(header::CONTENT_TYPE, &manifest.media_type);
    }
    let body = match manifest.body {
        Some(bytes) if !head => Body::from(bytes),
        _ => Body::empty(),
    };
    let mut response = response
        .body(body)
        .expect("manifest response headers are valid");
    response.extensions_mut().insert(manifest.outcome);
    Ok(response)
}
