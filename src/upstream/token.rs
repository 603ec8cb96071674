//! Bearer tokens from the upstream's token service (auth.docker.io for Docker Hub), cached per
//! scope until shortly before they expire. One fetch per scope at a time: concurrent requests
//! for a repository wait for the token being fetched instead of each asking for their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::body::read_at_most;
use super::error::strip_query;
use super::{UpstreamError, METADATA_TIMEOUT};
use crate::config::Credentials;
use crate::telemetry::Metrics;

/// The token spec says a token without `expires_in` lasts 60 seconds; a lifetime we cannot
/// read (negative, fractional, not a number) is taken as that too.
const DEFAULT_LIFETIME: u64 = 60;
/// The shortest lifetime believed: the token spec says no token lasts less than 60 seconds,
/// and a shorter one would have us fetch a token per request. Should upstream really expire it
/// sooner, its 401 makes us fetch a new one.
const MIN_LIFETIME: u64 = 60;
/// The longest lifetime believed, so an absurd `expires_in` neither overflows the clock nor
/// keeps a token long after its service has forgotten it. Docker Hub's last 300 seconds.
const MAX_LIFETIME: u64 = 24 * 60 * 60;
/// Real token responses are a few KiB (a JWT with its claims); anything near this is not one.
const MAX_TOKEN_RESPONSE_BYTES: u64 = 64 * 1024;

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    /// Read leniently (see [`lifetime_secs`]): a hostile or sloppy value costs the default
    /// lifetime, not the token.
    expires_in: Option<serde_json::Value>,
}

/// How long to believe a token lasts, in seconds: `expires_in` clamped to
/// [`MIN_LIFETIME`]..=[`MAX_LIFETIME`], or [`DEFAULT_LIFETIME`] when it is missing or not a
/// non-negative whole number.
fn lifetime_secs(expires_in: Option<&serde_json::Value>) -> u64 {
    expires_in
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(DEFAULT_LIFETIME)
        .clamp(MIN_LIFETIME, MAX_LIFETIME)
}

struct CachedToken {
    token: SecretString,
    expires_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

pub struct TokenCache {
    slots: Mutex<HashMap<String, Slot>>,
    metrics: Metrics,
    /// The registry whose tokens these are, for the metrics.
    registry: String,
}

impl TokenCache {
    pub fn new(metrics: Metrics, registry: &str) -> Self {
        TokenCache {
            slots: Mutex::default(),
            metrics,
            registry: registry.to_owned(),
        }
    }

    fn slot(&self, key: &str) -> Slot {
        let mut slots = self.slots.lock().expect("token cache lock poisoned");
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// A valid token for `scope`, fetched from `realm` if none is cached (or `refresh` is set
    /// because upstream just refused the cached one).
    pub async fn token(
        &self,
        http: &reqwest::Client,
        credentials: Option<&Credentials>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        refresh: bool,
    ) -> Result<SecretString, UpstreamError> {
        let slot = self.slot(&format!("{realm} {} {scope}", service.unwrap_or("")));
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref() {
            if !refresh && token.expires_at > Instant::now() {
                return Ok(token.token.clone());
            }
        }
        let fetched = fetch(http, credentials, realm, service, scope).await;
        self.metrics.token_fetch(&self.registry, fetched.is_ok());
        let fresh = fetched?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }
}

async fn fetch(
    http: &reqwest::Client,
    credentials: Option<&Credentials>,
    realm: &str,
    service: Option<&str>,
    scope: &str,
) -> Result<CachedToken, UpstreamError> {
    let mut query = vec![("scope", scope)];
    if let Some(service) = service {
        query.push(("service", service));
    }
    let mut request = http.get(realm).query(&query).timeout(METADATA_TIMEOUT);
    if let Some(c) = credentials {
        request = request.basic_auth(&c.username, Some(c.password.expose_secret()));
    }
    let requested_at = Instant::now();
    let failed = |reason: String| UpstreamError::TokenServiceFailed {
        realm: strip_query(realm),
        scope: scope.to_owned(),
        reason,
    };
    let response = request
        .send()
        .await
        .map_err(|e| failed(super::error::error_chain(e)))?;
    let status = response.status();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Err(UpstreamError::TokenRefused {
            realm: strip_query(realm),
            scope: scope.to_owned(),
            status: status.as_u16(),
            with_credentials: credentials.is_some(),
        });
    }
    if !status.is_success() {
        // Not a verdict on the credentials (5xx, 429, a redirect we never follow with them).
        return Err(failed(format!("it answered {status}")));
    }
    let body = read_at_most(response, MAX_TOKEN_RESPONSE_BYTES, "token response", realm)
        .await
        .map_err(|e| match e {
            UpstreamError::Unreachable { reason, .. } => failed(reason),
            other => other,
        })?;
    let body: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| UpstreamError::BadResponse {
            url: strip_query(realm),
            reason: format!("token response is not the expected JSON: {e}"),
        })?;
    let token = body
        .token
        .or(body.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::BadResponse {
            url: strip_query(realm),
            reason: "token response has neither `token` nor `access_token`".to_owned(),
        })?;
    let lifetime = lifetime_secs(body.expires_in.as_ref());
    // Stop using a token a little before upstream would, so a request never races its expiry.
    let usable = Duration::from_secs(lifetime - (lifetime / 10 + 1));
    // Cannot overflow with the lifetime clamped; should it anyway, the token is used once.
    let expires_at = requested_at.checked_add(usable).unwrap_or(requested_at);
    tracing::debug!(realm, scope, lifetime, "fetched upstream token");
    Ok(CachedToken {
        token: SecretString::from(token),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lifetimes_are_clamped_and_unreadable_ones_are_the_default() {
        let cases = [
            (None, DEFAULT_LIFETIME),
            (Some(json!(300)), 300),
            (Some(json!(u64::MAX)), MAX_LIFETIME),
            (Some(json!(0)), MIN_LIFETIME),
            (Some(json!(1)), MIN_LIFETIME),
            (Some(json!(-5)), DEFAULT_LIFETIME),
            (Some(json!(i64::MIN)), DEFAULT_LIFETIME),
            (Some(json!(12.5)), DEFAULT_LIFETIME),
            (Some(json!(1e300)), DEFAULT_LIFETIME),
            (Some(json!("300")), DEFAULT_LIFETIME),
            (Some(json!(null)), DEFAULT_LIFETIME),
        ];
        for (expires_in, expected) in cases {
            assert_eq!(
                lifetime_secs(expires_in.as_ref()),
                expected,
                "{expires_in:?}"
            );
        }
    }

    #[test]
    fn a_hostile_expires_in_does_not_cost_the_token() {
        for body in [
            r#"{"token":"t","expires_in":-1.5}"#,
            r#"{"token":"t","expires_in":1e300}"#,
            r#"{"token":"t","expires_in":18446744073709551616}"#,
            r#"{"token":"t","expires_in":{"days":1}}"#,
        ] {
            let parsed: TokenResponse = serde_json::from_slice(body.as_bytes()).unwrap();
            assert_eq!(parsed.token.as_deref(), Some("t"));
            assert_eq!(
                lifetime_secs(parsed.expires_in.as_ref()),
                DEFAULT_LIFETIME,
                "{body}"
            );
        }
    }
}
