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
    #[error("upstream {url} sent an unusable response: {reason}")]
    BadResponse { url: String, reason: String },
}

impl UpstreamError {
    pub fn unreachable(url: &str, error: reqwest::Error) -> Self {
        // reqwest's Display omits the cause (refused, timed out, DNS); walk the chain for it.
        let error = error.without_url();
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        UpstreamError::Unreachable {
            url: strip_query(url),
            reason,
        }
    }

    pub fn bad_response(url: &str, error: impl Display) -> Self {
        UpstreamError::BadResponse {
            url: strip_query(url),
            reason: error.to_string(),
        }
    }

    /// Worth asking again shortly: the network, or upstream being busy or broken, rather than
    /// an answer about the thing itself (missing, forbidden).
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Unreachable { .. } | UpstreamError::BadResponse { .. } => true,
            UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
            UpstreamError::TokenRefused { .. } => false,
        }
    }

    /// The upstream said the thing does not exist (as opposed to failing to answer).
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::Status { status: 404, .. })
    }
}

/// CDN redirect URLs carry signatures in their query; keep them out of messages.
fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}
