//! Bearer tokens from the upstream's token service (auth.docker.io for Docker Hub), cached per
//! scope until shortly before they expire. One fetch per scope at a time: concurrent requests
//! for a repository wait for the token being fetched instead of each asking for their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{UpstreamError, METADATA_TIMEOUT};
use crate::config::Credentials;
use crate::telemetry::Metrics;

/// The token spec says a token without `expires_in` lasts 60 seconds.
const DEFAULT_LIFETIME: u64 = 60;

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

struct CachedToken {
    token: SecretString,
    expires_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

pub struct TokenCache {
    slots: Mutex<HashMap<String, Slot>>,
    metrics: Metrics,
}

impl TokenCache {
    pub fn new(metrics: Metrics) -> Self {
        TokenCache {
            slots: Mutex::default(),
            metrics,
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
        self.metrics.token_fetch(fetched.is_ok());
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
    let response = request
        .send()
        .await
        .map_err(|e| UpstreamError::unreachable(realm, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(UpstreamError::TokenRefused {
            realm: realm.to_owned(),
            scope: scope.to_owned(),
            status: status.as_u16(),
            with_credentials: credentials.is_some(),
        });
    }
    let body: TokenResponse = response
        .json()
        .await
        .map_err(|e| UpstreamError::BadResponse {
            url: realm.to_owned(),
            reason: format!("token response is not the expected JSON: {e}"),
        })?;
    let token = body
        .token
        .or(body.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| UpstreamError::BadResponse {
            url: realm.to_owned(),
            reason: "token response has neither `token` nor `access_token`".to_owned(),
        })?;
    let lifetime = body.expires_in.unwrap_or(DEFAULT_LIFETIME);
    // Stop using a token a little before upstream would, so a request never races its expiry.
    let usable = Duration::from_secs(lifetime.saturating_sub(lifetime / 10 + 1));
    tracing::debug!(realm, scope, lifetime, "fetched upstream token");
    Ok(CachedToken {
        token: SecretString::from(token),
        expires_at: requested_at + usable,
    })
}
