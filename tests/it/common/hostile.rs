//! Small hostile servers on 127.0.0.1:0: each test writes the axum routes that misbehave the
//! way it needs (a redirect target with its own challenge, a token service that lies or
//! stalls, endless tag lists, bodies that are not manifests), and reads back what the server
//! received. `raw` serves bytes no well-behaved HTTP library would send.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use http::{header, HeaderMap, StatusCode};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

use super::upstream::Seen;
use super::{sha256, PASSWORD, USER};

/// The token every hostile registry below accepts.
pub const TOKEN: &str = "hostile-registry-token";

/// A valid OCI image manifest (its blobs are never asked for).
pub const MANIFEST: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:c0ffee", "size": 2},
  "layers": []
}"#;

pub struct Hostile {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hostile {
    /// Serves the routes `routes` builds; it is given the server's own URL first, so a route
    /// can name its server in challenges, redirects and links.
    pub async fn start(routes: impl FnOnce(&str) -> Router) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        let app = routes(&url).layer(middleware::from_fn(move |request: Request, next: Next| {
            let seen = recorder.clone();
            async move {
                seen.lock().unwrap().push(Seen {
                    method: request.method().clone(),
                    path: request
                        .uri()
                        .path_and_query()
                        .map_or_else(String::new, |p| p.to_string()),
                    authorization: request
                        .headers()
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    range: None,
                });
                next.run(request).await
            }
        }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hostile { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests received whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }
}

/// Serves `response` verbatim to every connection and then closes it, whatever was asked.
/// Returns the URL.
pub async fn raw(response: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let response = response.clone();
            tokio::spawn(async move {
                // Read the request head first so closing does not reset the connection early.
                let mut buffer = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer).await;
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

/// 401 with a Bearer challenge naming `realm`.
pub fn challenge(realm: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            format!(r#"Bearer realm="{realm}",service="hostile""#),
        )],
    )
        .into_response()
}

/// Whether the request carries `Bearer TOKEN`.
pub fn has_token(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {TOKEN}").as_str())
}

/// Whether the request carries the mirror's Basic credentials.
pub fn has_credentials(headers: &HeaderMap) -> bool {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(format!("Basic {expected}").as_str())
}

/// A well-behaved token service answer: `TOKEN` for the mirror's credentials, 401 otherwise.
pub async fn token_service(headers: HeaderMap) -> Response {
    if !has_credentials(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(serde_json::json!({ "token": TOKEN, "expires_in": 300 })).into_response()
}

/// A registry that wants `Bearer TOKEN` from the token service at `realm` and serves
/// [`MANIFEST`] as `good/app:latest`. More routes can be merged in.
pub fn registry(realm: &str) -> Router {
    let realm = realm.to_owned();
    let authenticated = move |headers: HeaderMap| {
        let realm = realm.clone();
        async move {
            if !has_token(&headers) {
                return challenge(&realm);
            }
            StatusCode::OK.into_response()
        }
    };
    Router::new()
        .route("/v2/", get(authenticated))
        .route("/v2/good/app/manifests/latest", get(good_manifest))
}

async fn good_manifest(headers: HeaderMap) -> Response {
    if !has_token(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                sha256(MANIFEST.as_bytes()),
            ),
        ],
        MANIFEST,
    )
        .into_response()
}
