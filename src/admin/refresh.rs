//! `POST /api/admin/refresh?repository=<name>&tag=<tag>`: ask upstream what the tag points to
//! now, whatever its TTL, and fetch the manifest when it moved.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{target, AdminState};
use crate::api::ApiError;

pub async fn refresh(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let name = query
        .get("repository")
        .ok_or_else(|| ApiError::missing_parameter("NAME_INVALID", "repository"))?;
    let tag = query
        .get("tag")
        .ok_or_else(|| ApiError::missing_parameter("TAG_INVALID", "tag"))?;
    let repo = target::repository(&state.registries, name)?;
    let tag = target::tag(tag)?;
    let refreshed = state.cache.refresh_tag(&repo, &tag).await?;
    let changed = refreshed.previous.as_deref() != Some(refreshed.digest.as_str());
    tracing::info!(
        registry = %repo.registry(),
        repository = %repo,
        tag = %tag,
        digest = %refreshed.digest,
        previous = refreshed.previous.as_deref().unwrap_or("-"),
        changed,
        "admin: refreshed tag from upstream"
    );
    Ok(Json(json!({
        "repository": repo.as_str(),
        "tag": tag.as_str(),
        "digest": refreshed.digest,
        "media_type": refreshed.media_type,
        "size": refreshed.size,
        "previous": refreshed.previous,
        "changed": changed,
    }))
    .into_response())
}
