use std::fmt::Display;

/// Why upstream could not give us what we asked for. Every variant names the URL involved.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url} answered {status}")]
    Status {
        url: String,
        status: u16,
        retry_after: Option<String>,
    },
    #[error("upstream {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("upstream token service {realm} refused a token for {scope} ({status}){}", if *with_credentials { "; check proxy.username and proxy.password" } else { "" })]
    TokenRefused {
        realm: String,
        scope: String,
        status: u16,
        with_credentials: bool,
    },
    /// The token service failed to answer (down, 5xx, stalled, cut off, oversized): nothing
    /// to do with the credentials, so not a refusal.
    #[error("upstream token service {realm} failed to issue a token for {scope}: {reason}")]
    TokenServiceFailed {
        realm: String,
        scope: String,
        reason: String,
    },
    #[error("upstream {url} sent an unusable response: {reason}")]
    BadResponse { url: String, reason: String },
    /// The registry is configured offline: nothing was sent, nor will be.
    #[error("registry {registry} is offline here ({key}: true): this mirror contacts no upstream for it")]
    Offline { registry: String, key: String },
}

/// What kind of failure an upstream error is. The one classification both decisions made on
/// an error read: whether to try again soon ([`UpstreamError::is_transient`]) and which
/// status the client is told (`api/error.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Upstream, or its token service, refused our credentials or the repository.
    Denied,
    /// Upstream said the thing does not exist.
    NotFound,
    /// Upstream asked us to slow down.
    RateLimited,
    /// Upstream (or its token service) is down, failing, or stopped answering.
    Unavailable,
    /// Upstream answered, but with something we cannot use.
    BadGateway,
    /// The registry is configured offline: upstream was not asked.
    Offline,
}

impl UpstreamError {
    pub fn unreachable(url: &str, error: reqwest::Error) -> Self {
        UpstreamError::Unreachable {
            url: strip_query(url),
            reason: error_chain(error),
        }
    }

    pub fn bad_response(url: &str, error: impl Display) -> Self {
        UpstreamError::BadResponse {
            url: strip_query(url),
            reason: error.to_string(),
        }
    }

    pub fn class(&self) -> FailureClass {
        match self {
            UpstreamError::Status {
                status: 401 | 403, ..
            }
            | UpstreamError::TokenRefused { .. } => FailureClass::Denied,
            UpstreamError::Status { status: 404, .. } => FailureClass::NotFound,
            UpstreamError::Status { status: 429, .. } => FailureClass::RateLimited,
            UpstreamError::Status { .. }
            | UpstreamError::Unreachable { .. }
            | UpstreamError::TokenServiceFailed { .. } => FailureClass::Unavailable,
            UpstreamError::BadResponse { .. } => FailureClass::BadGateway,
            UpstreamError::Offline { .. } => FailureClass::Offline,
        }
    }

    /// Worth asking again shortly: the network, or upstream being busy or broken, rather than
    /// an answer about the thing itself (missing, forbidden).
    pub fn is_transient(&self) -> bool {
        match self {
            // Any other 4xx is an answer about the request, not a passing state.
            UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => matches!(
                self.class(),
                FailureClass::Unavailable | FailureClass::BadGateway
            ),
        }
    }

    /// The upstream said the thing does not exist (as opposed to failing to answer).
    pub fn is_not_found(&self) -> bool {
        self.class() == FailureClass::NotFound
    }

    /// The registry is offline: upstream was not asked, so this says nothing about the thing.
    pub fn is_offline(&self) -> bool {
        self.class() == FailureClass::Offline
    }

    /// `Retry-After` as upstream sent it with a 429.
    pub fn retry_after(&self) -> Option<&str> {
        match self {
            UpstreamError::Status { retry_after, .. } => retry_after.as_deref(),
            _ => None,
        }
    }
}

/// reqwest's Display omits the cause (refused, timed out, DNS, body cut); walk the chain for it.
pub(super) fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reason = format!("{reason}: {cause}");
        source = cause.source();
    }
    reason
}

/// CDN redirect URLs carry signatures in their query; keep them out of messages.
pub(super) fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}
