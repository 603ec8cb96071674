use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderMap, StatusCode};

use super::error::ApiError;
use super::headers::{self, DOCKER_CONTENT_DIGEST};
use crate::cache::Cache;
use crate::registry::{Digest, RepoName};

/// `HEAD /v2/<name>/blobs/<digest>`: the size from storage or an upstream HEAD.
pub async fn head(cache: &Cache, repo: &RepoName, digest: &Digest) -> Result<Response, ApiError> {
    let (size, outcome) = cache.blob_size(repo, digest).await?;
    let mut response = blob_headers(digest, StatusCode::OK)
        .header(header::CONTENT_LENGTH, size)
        .body(Body::empty())
        .expect("blob response headers are valid");
    response.extensions_mut().insert(outcome);
    Ok(response)
}

/// `GET /v2/<name>/blobs/<digest>`, with a single `Range` honoured on cached blobs.
pub async fn get(
    cache: &Cache,
    repo: &RepoName,
    digest: &Digest,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let blob = cache
        .blob(repo, digest, headers::range(request_headers))
        .await?;
    let mut response = match (&blob.partial, blob.total_size) {
        (Some(part), Some(total)) => blob_headers(digest, StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{total}", part.start, part.end - 1),
            )
            .header(header::CONTENT_LENGTH, part.end - part.start),
        _ => blob_headers(digest, StatusCode::OK),
    };
    if let (None, Some(total)) = (&blob.partial, blob.total_size) {
        response = response.header(header::CONTENT_LENGTH, total);
    }
    let mut response = response
        .body(Body::from_stream(blob.body))
        .expect("blob response headers are valid");
    response.extensions_mut().insert(blob.outcome);
    Ok(response)
}

fn blob_headers(digest: &Digest, status: StatusCode) -> http::response::Builder {
    let digest = digest.to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(DOCKER_CONTENT_DIGEST, &digest)
        .header(header::ETAG, format!("\"{digest}\""))
}
