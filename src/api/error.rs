//! The only place an error becomes an HTTP status and an OCI error body:
//! `{"errors":[{"code":"...","message":"...","detail":...}]}`.
//! Errors are not logged here; the request log middleware logs each failed request once,
//! reading the message this module leaves in the response's extensions.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use crate::access::Refusal;
use crate::cache::{CacheError, Missing};
use crate::registry::{DigestError, NameError, RepoName, TagError};
use crate::storage::StorageError;
use crate::telemetry::StorageFailed;
use crate::upstream::{FailureClass, UpstreamError};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: Vec<(header::HeaderName, String)>,
    /// Storage failed (counted in the metrics as a storage error).
    storage_failed: bool,
    /// What the request log says instead of `message`, when the client must not see it.
    log_message: Option<String>,
}

/// The message of a failed request, for the request log.
#[derive(Clone, Debug)]
pub struct ErrorMessage(pub String);

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            storage_failed: false,
            log_message: None,
        }
    }

    fn with_header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn name_invalid(e: NameError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string())
    }

    pub fn digest_invalid(e: DigestError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
    }

    pub fn tag_invalid(e: TagError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "TAG_INVALID", e.to_string())
    }

    pub fn pagination_invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "PAGINATION_NUMBER_INVALID",
            message,
        )
    }

    pub fn unsupported(message: &str) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }

    /// 401 with a Basic challenge: docker login and dockerd answer it with credentials.
    pub fn unauthorized(realm: &str, message: String) -> Self {
        let realm = realm.replace(['"', '\\'], "");
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
            .with_header(header::WWW_AUTHENTICATE, format!("Basic realm=\"{realm}\""))
    }

    /// Answers 414. No valid registry request comes near the limit: names are at most 255 characters,
    /// tags 128 and digests 135. An over-long URI can only carry an invalid name or reference,
    /// so the code is `NAME_INVALID`, the closest one the spec has.
    pub fn uri_too_long(len: usize, limit: usize) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "NAME_INVALID",
            format!("request URI is {len} bytes; the limit is {limit}"),
        )
    }

    pub fn denied(message: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "DENIED", message)
    }

    /// An admin action while no `admin.token` is configured: they are all off.
    pub fn admin_disabled() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            "admin actions are disabled: set admin.token in the configuration (or the REGISTRY_ADMIN_TOKEN environment variable) and send it as `Authorization: Bearer <token>`",
        )
    }

    /// An admin action without the right bearer token (which is never named).
    pub fn admin_unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).with_header(
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"cistern admin\"".to_owned(),
        )
    }

    /// A request whose body or parameters cannot be used, with why.
    pub fn bad_request(code: &'static str, message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A request missing what it needs (`?repository=`, `?tag=`).
    pub fn missing_parameter(code: &'static str, name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("the query parameter `{name}` is required"),
        )
    }

    /// A registry this mirror does not serve: 404 `NAME_UNKNOWN`, so containerd falls back to
    /// the registry itself.
    pub fn registry_not_mirrored(registry: &str, repo: &RepoName, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!(
                "registry {registry} is not mirrored here (repository {repo}); this mirror serves {served}: pull from {registry} itself"
            ),
        )
    }

    /// `?ns=` and the path's registry prefix name different registries.
    pub fn namespace_conflict(ns: &str, other: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("ns={ns} and {other} name different registries"),
        )
    }

    /// Answers a request whose handler panicked: a bug. The client learns only that; the panic's
    /// message, which may name internals, goes to the request log.
    pub fn panicked(panic_message: &str) -> Self {
        ApiError {
            log_message: Some(format!("panicked while answering: {panic_message}")),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal error while answering this request; the server log has the details",
            )
        }
    }

    /// A path that is no registry API endpoint: 404, with the spec's `UNSUPPORTED` (the spec
    /// has no code for an unknown route, and clients only understand its codes).
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!("no registry API endpoint at {path}"),
        )
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthorized { realm, message } => Self::unauthorized(&realm, message),
            Refusal::Denied(message) => Self::denied(message),
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        (&e).into()
    }
}

impl From<&CacheError> for ApiError {
    fn from(e: &CacheError) -> Self {
        let message = e.to_string();
        match e {
            CacheError::ManifestUnknown { .. } => {
                Self::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message)
            }
            CacheError::BlobUnknown { .. } => {
                Self::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", message)
            }
            CacheError::NameUnknown { .. } | CacheError::RegistryNotMirrored { .. } => {
                Self::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message)
            }
            // 404 with the code of what is missing, as for anything upstream lacks: dockerd
            // and containerd then go on to their next endpoint at once (a 503 on a layer
            // makes dockerd retry it with back-off first), and the message says why.
            CacheError::NotCachedOffline(miss) => {
                let code = match miss.missing {
                    Missing::Manifest { .. } => "MANIFEST_UNKNOWN",
                    Missing::Blob { .. } => "BLOB_UNKNOWN",
                    Missing::Repository { .. } => "NAME_UNKNOWN",
                };
                Self::new(StatusCode::NOT_FOUND, code, message)
            }
            CacheError::RangeNotSatisfiable { size } => {
                Self::new(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", message)
                    .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
            }
            CacheError::DigestMismatch { .. } | CacheError::SizeMismatch { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, "UNKNOWN", message)
            }
            CacheError::UpstreamBroke { .. }
            | CacheError::UpstreamTooSlow { .. }
            | CacheError::Abandoned { .. }
            | CacheError::Busy { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
            }
            CacheError::Prewarm(_) => Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", message),
            CacheError::Upstream(e) => e.into(),
            CacheError::Storage(e) => e.into(),
            CacheError::Shared(e) => e.as_ref().into(),
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        (&e).into()
    }
}

impl From<&UpstreamError> for ApiError {
    fn from(e: &UpstreamError) -> Self {
        let message = e.to_string();
        match e.class() {
            FailureClass::Denied => Self::new(StatusCode::FORBIDDEN, "DENIED", message),
            FailureClass::RateLimited => {
                let error = Self::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", message);
                match e.retry_after() {
                    Some(after) => error.with_header(header::RETRY_AFTER, after.to_owned()),
                    None => error,
                }
            }
            FailureClass::NotFound => Self::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message),
            // Offline reaches here only where the cache had no miss to name (it names them
            // all today): the mirror cannot answer, which is not the thing being absent.
            FailureClass::Unavailable | FailureClass::Offline => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
            }
            FailureClass::BadGateway => Self::new(StatusCode::BAD_GATEWAY, "UNKNOWN", message),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        (&e).into()
    }
}

impl From<&StorageError> for ApiError {
    fn from(e: &StorageError) -> Self {
        ApiError {
            storage_failed: true,
            ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::try_from(value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
            .extensions_mut()
            .insert(ErrorMessage(self.log_message.unwrap_or(self.message)));
        if self.storage_failed {
            response.extensions_mut().insert(StorageFailed);
        }
        response
    }
}
