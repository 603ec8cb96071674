//! The admin token check: `Authorization: Bearer <admin.token>`, compared in constant time (of
//! SHA-256 digests, so not even the token's length shows in the timing). The token is never
//! logged nor named in an answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::api::ApiError;

pub async fn require_token(
    State(token): State<Option<Arc<SecretString>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return ApiError::admin_disabled().into_response();
    };
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    match offered {
        None => {
            ApiError::admin_unauthorized("admin actions need `Authorization: Bearer <admin.token>`")
                .into_response()
        }
        Some(offered) if !same(offered, token.expose_secret()) => {
            tracing::warn!(
                path = %request.uri().path(),
                "admin action refused: wrong bearer token"
            );
            ApiError::admin_unauthorized("the bearer token is not admin.token").into_response()
        }
        Some(_) => next.run(request).await,
    }
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

fn same(offered: &str, token: &str) -> bool {
    let offered = Sha256::digest(offered.as_bytes());
    let token = Sha256::digest(token.as_bytes());
    offered.ct_eq(&token).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_credentials_and_compares_whole_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert!(same("0123456789abcdef", "0123456789abcdef"));
        assert!(!same("0123456789abcde", "0123456789abcdef"));
        assert!(!same("", "0123456789abcdef"));
    }
}
