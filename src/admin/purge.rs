//! `DELETE /api/admin/repositories/<name>[/tags/<tag> | /manifests/<digest>]`: purge a tag, an
//! image (an index with its child manifests) or a whole repository from the cache. Content
//! another kept image references stays; the answer lists what was deleted and what was kept,
//! and why.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{target, AdminState};
use crate::api::ApiError;
use crate::cache::PurgeTarget;

pub async fn purge(
    State(state): State<AdminState>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let (repo, what) = target::purge(&state.registries, &path)?;
    let report = state.cache.purge(&repo, &what).await?;
    let target = match &what {
        PurgeTarget::Tag(tag) => json!({"tag": tag.as_str()}),
        PurgeTarget::Manifest(digest) => json!({"manifest": digest.to_string()}),
        PurgeTarget::Repository => json!({"repository": repo.as_str()}),
    };
    tracing::info!(
        registry = %repo.registry(),
        repository = %repo,
        target = %target,
        images = report.images.len(),
        objects = report.content.len(),
        kept = report.kept.len(),
        freed = report.bytes_freed,
        "admin: purged from the cache"
    );
    let images: Vec<_> = report
        .images
        .iter()
        .map(|image| json!({"tag": image.tag, "digest": image.digest}))
        .collect();
    let content: Vec<_> = report
        .content
        .iter()
        .map(|(digest, bytes)| json!({"digest": digest, "bytes": bytes}))
        .collect();
    let kept: Vec<_> = report
        .kept
        .iter()
        .map(|kept| json!({"digest": kept.digest, "reasons": kept.reasons}))
        .collect();
    Ok(Json(json!({
        "repository": repo.as_str(),
        "target": target,
        "deleted": {
            "images": images,
            "tags": report.tags,
            "manifest_links": report.manifest_links,
            "blob_links": report.blob_links,
            "content": content,
            "bytes": report.bytes_freed,
        },
        "kept": kept,
    }))
    .into_response())
}
