//! The upstream registry client: Docker Hub's token flow, redirects to its CDN, and errors
//! that name the upstream URL.

mod body;
mod challenge;
mod error;
mod rate_limit;
mod tag_list;
mod token;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use secrecy::ExposeSecret;
use url::Url;

use crate::config::{Credentials, ProxyConfig};
use crate::registry::{check_manifest, Digest, Reference, RegistryId, RepoName};
use crate::telemetry::Metrics;
use body::read_at_most;
pub use challenge::Challenge;
pub use error::{FailureClass, UpstreamError};
pub use rate_limit::{Quota, RateLimit};
pub use tag_list::{MAX_TAGS, MAX_TAG_PAGES, MAX_TAG_PAGE_BYTES, TAG_PAGE_SIZE};
use token::TokenCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Deadline for requests whose answer is small (manifests, tags, tokens, HEADs). Blob bodies get
/// no overall deadline, only a per-read one, since a large layer can take as long as it needs.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;
/// Distribution refuses manifests over 4 MiB; a larger answer is not a manifest we keep.
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// A manifest as upstream sent it.
pub struct FetchedManifest {
    pub bytes: Bytes,
    /// Upstream's Content-Type, checked against the body (or, when upstream sent none that
    /// says anything, the type the body declares).
    pub media_type: String,
    /// The digest upstream claims in `Docker-Content-Digest`, checked against the bytes.
    pub digest_header: Option<Digest>,
}

/// What an upstream manifest HEAD says.
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A page of an upstream tag list.
pub struct TagPage {
    pub tags: Vec<String>,
    /// Upstream said there is a next page.
    pub more: bool,
}

/// What we know about how upstream wants to be authenticated.
#[derive(Clone, Default)]
enum Probe {
    #[default]
    NotYet,
    Anonymous,
    Challenged(Challenge),
}

pub struct Upstream {
    /// Which registry this client talks to, for metrics and logs.
    registry: RegistryId,
    http: reqwest::Client,
    base: Url,
    /// `proxy.repositoryprefix`, with its trailing `/`, or empty.
    repository_prefix: String,
    credentials: Option<Credentials>,
    /// The challenge upstream answers with, learnt once from `GET /v2/` as clients do, so
    /// requests authenticate up front instead of each paying for a 401 first.
    challenge: RwLock<Probe>,
    tokens: TokenCache,
    /// Bounds the blobs fetched at once (`proxy.maxfetches`).
    fetches: Arc<Semaphore>,
    rate_limit: RateLimit,
    metrics: Metrics,
    /// `offline: true`: every request is refused here, before any lookup or connection.
    offline: bool,
}

/// How a blob GET that asked for `Range: bytes=N-` was answered.
pub enum Resumed {
    /// 206 from the offset asked for: the body continues the blob.
    FromOffset(reqwest::Response),
    /// 200: upstream ignored the range, the body starts at byte 0.
    FromStart(reqwest::Response),
}

impl Upstream {
    /// The client for `registry`, whose upstream `config` describes.
    pub fn new(
        registry: RegistryId,
        config: &ProxyConfig,
        metrics: Metrics,
    ) -> Result<Self, UpstreamError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("cistern/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::unreachable(config.remote_url.as_str(), e))?;
        Ok(Upstream {
            tokens: TokenCache::new(metrics.clone(), registry.name()),
            registry,
            http,
            base: config.remote_url.clone(),
            repository_prefix: config.repository_prefix.clone(),
            credentials: config.credentials.clone(),
            challenge: RwLock::new(Probe::NotYet),
            fetches: Arc::new(Semaphore::new(config.max_fetches)),
            rate_limit: RateLimit::default(),
            metrics,
            offline: config.offline,
        })
    }

    /// Whether the registry is configured offline (`offline: true`), so never contacted.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// The gate of an offline registry: its error, before anything is looked up or sent.
    pub fn refuse_if_offline(&self) -> Result<(), UpstreamError> {
        if !self.offline {
            return Ok(());
        }
        Err(UpstreamError::Offline {
            registry: self.registry.name().to_owned(),
            key: match &self.registry {
                RegistryId::Default => "proxy.offline".to_owned(),
                RegistryId::Host(host) => format!("registries.{host}.offline"),
            },
        })
    }

    /// Waits for a turn to fetch a blob; the turn lasts as long as the permit is held.
    pub async fn fetch_permit(&self) -> OwnedSemaphorePermit {
        self.fetches
            .clone()
            .acquire_owned()
            .await
            .expect("the fetch semaphore is never closed")
    }

    /// The pull quota upstream reported last (Docker Hub's `ratelimit-*` headers).
    pub fn rate_limit(&self) -> &RateLimit {
        &self.rate_limit
    }

    pub fn registry(&self) -> &RegistryId {
        &self.registry
    }

    /// The upstream URL of `tail` (`manifests/latest`) in `repo`.
    pub fn url(&self, repo: &RepoName, tail: &str) -> String {
        format!(
            "{}/v2/{}/{tail}",
            self.base.as_str().trim_end_matches('/'),
            self.name_upstream(repo)
        )
    }

    /// The repository's name as upstream knows it: its path, after the repository prefix.
    fn name_upstream(&self, repo: &RepoName) -> String {
        format!("{}{}", self.repository_prefix, repo.path())
    }

    /// GET a manifest, verifying it against the digest when one was asked for.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
    ) -> Result<FetchedManifest, UpstreamError> {
        let url = self.url(repo, &format!("manifests/{reference}"));
        let response = self
            .send(repo, Method::GET, &url, accept_header(accept), true)
            .await?;
        let response = expect_success(response, &url)?;
        let media_type = content_type(response.headers());
        let digest_header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = read_at_most(response, MAX_MANIFEST_BYTES, "manifest", &url).await?;
        // Whatever is returned here gets stored and served as a manifest: a body that is not
        // one (truncated, an HTML error page, the wrong type) is upstream's failure, not content.
        let media_type = check_manifest(&bytes, &media_type)
            .map_err(|e| UpstreamError::bad_response(&url, e))?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest_header,
        })
    }

    /// HEAD a manifest: its digest without spending Docker Hub pull quota.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
    ) -> Result<ManifestHead, UpstreamError> {
        let url = self.url(repo, &format!("manifests/{reference}"));
        let response = self
            .send(repo, Method::HEAD, &url, accept_header(accept), true)
            .await?;
        let response = expect_success(response, &url)?;
        let headers = response.headers();
        let digest = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
            .ok_or_else(|| UpstreamError::BadResponse {
                url: url.clone(),
                reason: "manifest HEAD has no valid Docker-Content-Digest header".to_owned(),
            })?;
        Ok(ManifestHead {
            digest,
            media_type: content_type(headers),
            size: content_length(headers).unwrap_or(0),
        })
    }

    /// GET a blob; the response body is streamed by the caller.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self.url(repo, &format!("blobs/{digest}"));
        let response = self
            .send(repo, Method::GET, &url, HeaderMap::new(), false)
            .await?;
        expect_success(response, &url)
    }

    /// The URL of a blob upstream, for messages.
    pub fn blob_url(&self, repo: &RepoName, digest: &Digest) -> String {
        self.url(repo, &format!("blobs/{digest}"))
    }

    /// GET a blob from byte `offset` on, to resume a download that broke off.
    pub async fn get_blob_from(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<Resumed, UpstreamError> {
        let url = self.url(repo, &format!("blobs/{digest}"));
        let mut headers = HeaderMap::new();
        let range = HeaderValue::from_str(&format!("bytes={offset}-")).expect("a valid header");
        headers.insert(header::RANGE, range);
        let response = self.send(repo, Method::GET, &url, headers, false).await?;
        let response = expect_success(response, &url)?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Ok(Resumed::FromStart(response));
        }
        let starts_at_offset = response
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|start| start.parse::<u64>().ok())
            == Some(offset);
        if !starts_at_offset {
            return Err(UpstreamError::bad_response(
                &url,
                format!("asked for bytes from {offset}, got a different Content-Range"),
            ));
        }
        Ok(Resumed::FromOffset(response))
    }

    /// HEAD a blob: its size, without downloading it.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        let url = self.url(repo, &format!("blobs/{digest}"));
        let response = self
            .send(repo, Method::HEAD, &url, HeaderMap::new(), true)
            .await?;
        let response = expect_success(response, &url)?;
        content_length(response.headers()).ok_or_else(|| UpstreamError::BadResponse {
            url,
            reason: "blob HEAD has no Content-Length".to_owned(),
        })
    }

    /// Sends a request with whatever authentication upstream asks for: on a 401 it learns the
    /// challenge, fetches a fresh token, and retries once. Redirects (Docker Hub sends blob GETs
    /// to its CDN) are followed without the Authorization header when they leave the origin, and
    /// a 401 from a redirect target is an error, never a challenge to answer.
    async fn send(
        &self,
        repo: &RepoName,
        method: Method,
        url: &str,
        headers: HeaderMap,
        metadata: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        // Every request upstream (the probe, tokens, redirects) starts here.
        self.refuse_if_offline()?;
        let scope = format!("repository:{}:pull", self.name_upstream(repo));
        let known = self.known_challenge().await;
        let mut authorization = match &known {
            Some(challenge) => self.authorization(challenge, &scope, false).await?,
            None => None,
        };
        let mut response = self
            .send_following_redirects(&method, url, &headers, authorization.as_ref(), metadata)
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            let Some(challenge) = challenge else {
                return Ok(response); // nothing we can answer; the caller reports the 401
            };
            // A 401 despite a token we believed valid means it was revoked: fetch a new one.
            let refresh = known.as_ref() == Some(&challenge);
            *self.challenge.write().expect("challenge lock poisoned") =
                Probe::Challenged(challenge.clone());
            authorization = self.authorization(&challenge, &scope, refresh).await?;
            if authorization.is_some() {
                response = self
                    .send_following_redirects(
                        &method,
                        url,
                        &headers,
                        authorization.as_ref(),
                        metadata,
                    )
                    .await?;
            }
        }
        self.rate_limit
            .observe(response.headers(), self.registry.name(), url);
        Ok(response)
    }

    /// The challenge upstream answers with, probing `GET /v2/` the first time. A failed probe
    /// is not remembered: the request itself will meet the 401 and learn from it.
    async fn known_challenge(&self) -> Option<Challenge> {
        let probe = self
            .challenge
            .read()
            .expect("challenge lock poisoned")
            .clone();
        match probe {
            Probe::Challenged(challenge) => return Some(challenge),
            Probe::Anonymous => return None,
            Probe::NotYet => {}
        }
        let url = format!("{}/v2/", self.base.as_str().trim_end_matches('/'));
        let sent = self.http.get(&url).timeout(METADATA_TIMEOUT).send().await;
        let status = sent.as_ref().ok().map(|r| r.status().as_u16());
        self.metrics
            .upstream_request(self.registry.name(), "version-check", &Method::GET, status);
        let response = sent.ok()?;
        let learnt = match response.status() {
            StatusCode::UNAUTHORIZED => response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse)
                .map(Probe::Challenged)?,
            status if status.is_success() => Probe::Anonymous,
            _ => return None,
        };
        *self.challenge.write().expect("challenge lock poisoned") = learnt.clone();
        match learnt {
            Probe::Challenged(challenge) => Some(challenge),
            _ => None,
        }
    }

    async fn authorization(
        &self,
        challenge: &Challenge,
        scope: &str,
        refresh: bool,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let value = match challenge {
            Challenge::Bearer { realm, service } => {
                let token = self
                    .tokens
                    .token(
                        &self.http,
                        self.credentials.as_ref(),
                        realm,
                        service.as_deref(),
                        scope,
                        refresh,
                    )
                    .await?;
                format!("Bearer {}", token.expose_secret())
            }
            Challenge::Basic => {
                let Some(c) = &self.credentials else {
                    return Ok(None);
                };
                use base64::Engine as _;
                let pair = format!("{}:{}", c.username, c.password.expose_secret());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
        };
        let mut value = HeaderValue::try_from(value).map_err(|_| UpstreamError::BadResponse {
            url: self.base.to_string(),
            reason: "token is not a valid header value".to_owned(),
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    async fn send_following_redirects(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        authorization: Option<&HeaderValue>,
        metadata: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let origin = Url::parse(url).map_err(|e| UpstreamError::bad_response(url, e))?;
        let mut current = origin.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self
                .http
                .request(method.clone(), current.clone())
                .headers(headers.clone());
            // The CDN a blob redirects to gets a pre-signed URL and must never see our token.
            if let Some(auth) = authorization.filter(|_| same_origin(&current, &origin)) {
                request = request.header(header::AUTHORIZATION, auth.clone());
            }
            if metadata {
                request = request.timeout(METADATA_TIMEOUT);
            }
            let sent = request.send().await;
            let status = sent.as_ref().ok().map(|r| r.status().as_u16());
            self.metrics
                .upstream_request(self.registry.name(), request_kind(url), method, status);
            let response = sent.map_err(|e| UpstreamError::unreachable(current.as_str(), e))?;
            if response.status() == StatusCode::UNAUTHORIZED && !same_origin(&current, &self.base) {
                // Only the configured upstream's own challenge is answered: one from wherever it
                // redirected us would have us send our credentials, or a token, to a third party.
                return Err(UpstreamError::bad_response(
                    current.as_str(),
                    format!(
                        "{url} redirected here and this answered 401; credentials only go to \
                         the realm the upstream itself names"
                    ),
                ));
            }
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| UpstreamError::BadResponse {
                    url: current.to_string(),
                    reason: format!("{} redirect without a Location", response.status()),
                })?;
            current = current
                .join(location)
                .map_err(|e| UpstreamError::bad_response(current.as_str(), e))?;
        }
        Err(UpstreamError::BadResponse {
            url: url.to_owned(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }
}

/// What an upstream URL asks for, as the metrics label it.
fn request_kind(url: &str) -> &'static str {
    let path = url.split('?').next().unwrap_or(url);
    if path.contains("/manifests/") {
        "manifest"
    } else if path.contains("/blobs/") {
        "blob"
    } else if path.ends_with("/tags/list") {
        "tags"
    } else {
        "other"
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn accept_header(accept: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::try_from(accept) {
        headers.insert(header::ACCEPT, value);
    }
    headers
}

fn expect_success(
    response: reqwest::Response,
    url: &str,
) -> Result<reqwest::Response, UpstreamError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Err(UpstreamError::Status {
        url: url.to_owned(),
        status: status.as_u16(),
        retry_after,
    })
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .unwrap_or_default()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
