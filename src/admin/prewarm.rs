//! `POST /api/admin/prewarm`: fetch images into the cache now. The body lists them one per
//! line (`alpine:3.20`, `node:20-*`, `ghcr.io/myorg/app:latest`; blank lines and `#` comments
//! ignored), as `docker compose config --images` prints them. The answer streams one JSON line
//! per tag as it is done (`{"result":"ok",...}` or `{"result":"error",...}`), then a summary
//! line. The work goes on if the caller goes away.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use tokio_stream::wrappers::ReceiverStream;

use super::AdminState;
use crate::api::ApiError;
use crate::cache::prewarm::{log_warmed, RunReport, Warmed};
use crate::config::{parse_image, PrewarmImage};

/// The most images one request may name.
pub const MAX_IMAGES: usize = 1000;

pub async fn prewarm(State(state): State<AdminState>, body: Bytes) -> Result<Response, ApiError> {
    let images = read_list(&body)?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    let prewarmer = state.prewarmer.clone();
    let metrics = state.cache.metrics().clone();
    tokio::spawn(async move {
        let mut run = RunReport::default();
        for image in &images {
            prewarmer
                .warm(image, &mut |warmed: Warmed| {
                    log_warmed(&warmed);
                    run.add(&warmed);
                    let line = serde_json::to_string(&warmed).expect("serialises") + "\n";
                    // The caller may have gone away; the work goes on.
                    let _ = sender.try_send(Ok(line));
                })
                .await;
        }
        run.finish(&metrics, "warm-now request", images.len());
        let summary = serde_json::json!({"result": "done", "summary": run}).to_string() + "\n";
        let _ = sender.send(Ok(summary)).await;
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(receiver)),
    )
        .into_response())
}

/// The images of a request body, each checked before any is fetched.
fn read_list(body: &[u8]) -> Result<Vec<PrewarmImage>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("NAME_INVALID", "the image list is not UTF-8 text"))?;
    let images: Vec<PrewarmImage> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            parse_image("image", line)
                .map_err(|e| ApiError::bad_request("NAME_INVALID", &e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if images.is_empty() {
        return Err(ApiError::bad_request(
            "NAME_INVALID",
            "no image named: send one name:tag per line",
        ));
    }
    if images.len() > MAX_IMAGES {
        return Err(ApiError::bad_request(
            "NAME_INVALID",
            &format!(
                "{} images named; at most {MAX_IMAGES} per request",
                images.len()
            ),
        ));
    }
    Ok(images)
}
