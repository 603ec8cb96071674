//! A fake Docker Hub on 127.0.0.1: registry v2 pull API behind a token service, a "CDN" on a
//! second port that blob GETs can be redirected to, request recording for counting, and
//! switches for faults.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;

pub const USER: &str = "mirror-user";
pub const PASSWORD: &str = "mirror-s3cret-token";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One request the fake upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
    /// The Range header, if any.
    pub range: Option<String>,
}

#[derive(Default)]
pub struct Repo {
    pub tags: BTreeMap<String, String>,
    pub manifests: HashMap<String, (String, Bytes)>,
    pub blobs: HashMap<String, Bytes>,
}

#[derive(Default)]
pub struct Faults {
    /// Every registry and token request answers 503.
    pub down: AtomicBool,
    /// Blob GETs are redirected to the CDN port.
    pub redirect_blobs: AtomicBool,
    /// Registry requests (not the token service) answer this status, with this Retry-After.
    pub status: Mutex<Option<(u16, Option<String>)>>,
    /// The token service refuses the mirror's credentials, as after a password change.
    pub refuse_credentials: AtomicBool,
    /// Blob GETs ignore `Range` and send the whole blob (200), as some servers do.
    pub ignore_range: AtomicBool,
    /// Manifest answers carry Docker Hub's `ratelimit-limit`/`ratelimit-remaining` (limit,
    /// remaining), the remaining count going down by one per manifest GET.
    pub rate_limit: Mutex<Option<(u64, u64)>>,
}

#[derive(Default)]
pub struct Upstream {
    pub repos: Mutex<HashMap<String, Repo>>,
    /// Repositories whose tokens need the mirror's Basic credentials.
    pub private_prefix: Mutex<Option<String>>,
    pub seen: Mutex<Vec<Seen>>,
    pub faults: Faults,
    /// Blobs served with one byte flipped.
    pub corrupt: Mutex<Vec<String>>,
    tokens: Mutex<HashMap<String, String>>,
    tokens_issued: AtomicU64,
    pub token_lifetime_secs: AtomicU64,
    cdn_port: AtomicU64,
    realm: Mutex<String>,
    /// The Basic credentials the token service accepts (`USER`/`PASSWORD` unless set).
    credentials: Mutex<(String, String)>,
    /// GETs whose path contains one of these fragments wait until its gate is closed
    /// (`FakeUpstream::hold`).
    held: Mutex<Vec<(String, Arc<tokio::sync::Semaphore>)>>,
    /// Makes this upstream's tokens unlike any other's (its port), so a token of one fake
    /// registry presented to another is refused.
    token_prefix: Mutex<String>,
}

pub struct FakeUpstream {
    pub state: Arc<Upstream>,
    pub url: String,
}

impl Upstream {
    /// Forgets every token issued, as if they were revoked.
    pub fn revoke_tokens(&self) {
        self.tokens.lock().unwrap().clear();
    }
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let state = Arc::new(Upstream::default());
        state.token_lifetime_secs.store(300, Ordering::SeqCst);
        *state.private_prefix.lock().unwrap() = Some("private/".to_owned());
        *state.credentials.lock().unwrap() = (USER.to_owned(), PASSWORD.to_owned());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        *state.realm.lock().unwrap() = format!("{url}/token");
        *state.token_prefix.lock().unwrap() =
            format!("fake-token-{}-", listener.local_addr().unwrap().port());
        state
            .cdn_port
            .store(cdn.local_addr().unwrap().port() as u64, Ordering::SeqCst);
        let app = Router::new()
            .fallback(any(handle))
            .with_state(state.clone());
        let cdn_app = app.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        tokio::spawn(async move { axum::serve(cdn, cdn_app).await });
        FakeUpstream { state, url }
    }

    /// Adds a manifest under `repo` (by digest, and under `tag` if given); returns its digest.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = sha256(bytes);
        let mut repos = self.state.repos.lock().unwrap();
        let r = repos.entry(repo.to_owned()).or_default();
        r.manifests.insert(
            digest.clone(),
            (media_type.to_owned(), Bytes::copy_from_slice(bytes)),
        );
        if let Some(tag) = tag {
            r.tags.insert(tag.to_owned(), digest.clone());
        }
        digest
    }

    pub fn add_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let mut repos = self.state.repos.lock().unwrap();
        repos
            .entry(repo.to_owned())
            .or_default()
            .blobs
            .insert(digest.clone(), Bytes::copy_from_slice(bytes));
        digest
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests seen so far with this method whose path contains `fragment`.
    pub fn count(&self, method: Method, fragment: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(fragment))
            .count()
    }

    /// Registry requests (everything under /v2/ and the CDN), not token requests.
    pub fn registry_requests(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| !s.path.starts_with("/token"))
            .count()
    }

    /// The Basic credentials this upstream's token service accepts from now on.
    pub fn set_credentials(&self, user: &str, password: &str) {
        *self.state.credentials.lock().unwrap() = (user.to_owned(), password.to_owned());
    }

    /// Repositories whose tokens need Basic credentials: names starting with `prefix`.
    pub fn set_private_prefix(&self, prefix: Option<&str>) {
        *self.state.private_prefix.lock().unwrap() = prefix.map(str::to_owned);
    }

    /// Holds every GET whose path contains `fragment` (after recording it) until the returned
    /// gate is closed (`gate.close()`), so a test can keep a fetch in flight.
    pub fn hold(&self, fragment: &str) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.state
            .held
            .lock()
            .unwrap()
            .push((fragment.to_owned(), gate.clone()));
        gate
    }

    /// How every token this upstream issues starts (unique to this upstream).
    pub fn token_prefix(&self) -> String {
        self.state.token_prefix.lock().unwrap().clone()
    }

    /// The requests its token service received.
    pub fn token_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with("/token"))
            .collect()
    }

    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.state.faults.down.store(down, Ordering::SeqCst);
    }
}

fn oci_error(status: StatusCode, code: &str) -> Response {
    let body =
        format!(r#"{{"errors":[{{"code":"{code}","message":"fake upstream","detail":null}}]}}"#);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn handle(State(state): State<Arc<Upstream>>, request: Request) -> Response {
    let is_manifest_get =
        request.method() == Method::GET && request.uri().path().contains("/manifests/");
    let mut response = answer(&state, request).await;
    let mut quota = state.faults.rate_limit.lock().unwrap();
    if let (Some((limit, remaining)), true) = (quota.as_mut(), is_manifest_get) {
        *remaining = remaining.saturating_sub(1);
        let headers = response.headers_mut();
        headers.insert(
            "ratelimit-limit",
            format!("{limit};w=21600").parse().unwrap(),
        );
        headers.insert(
            "ratelimit-remaining",
            format!("{remaining};w=21600").parse().unwrap(),
        );
    }
    response
}

async fn answer(state: &Arc<Upstream>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let headers = request.headers().clone();
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        },
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        range: headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let gate = state
        .held
        .lock()
        .unwrap()
        .iter()
        .find(|(fragment, _)| method == Method::GET && path.contains(fragment.as_str()))
        .map(|(_, gate)| gate.clone());
    if let Some(gate) = gate {
        // Closed means released.
        let _ = gate.acquire().await;
    }
    if state.faults.down.load(Ordering::SeqCst) {
        return oci_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    }
    if path == "/token" {
        return token(state, &query, &headers);
    }
    if let Some((status, retry_after)) = state.faults.status.lock().unwrap().clone() {
        let mut response = oci_error(StatusCode::from_u16(status).unwrap(), "FAULT");
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, after.parse().unwrap());
        }
        return response;
    }
    if let Some(digest) = path.strip_prefix("/cdn/") {
        return cdn_blob(state, digest, &headers);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let (repo, kind, reference) = if rest.is_empty() {
        // Docker Hub's version check: 401 with the challenge unless a token is presented.
        ("", "base", "")
    } else if let Some(repo) = rest.strip_suffix("/tags/list") {
        (repo, "tags", "")
    } else if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        (repo, "manifests", reference)
    } else if let Some((repo, digest)) = rest.rsplit_once("/blobs/") {
        (repo, "blobs", digest)
    } else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    if !authorized(state, repo, &headers) {
        let realm = state.realm.lock().unwrap().clone();
        let challenge =
            format!(r#"Bearer realm="{realm}",service="fake-hub",scope="repository:{repo}:pull""#);
        let mut response = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
        return response;
    }
    if kind == "base" {
        return StatusCode::OK.into_response();
    }
    let head = method == Method::HEAD;
    let repos = state.repos.lock().unwrap();
    let Some(r) = repos.get(repo) else {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    };
    match kind {
        "tags" => tags(repo, r, &query),
        "manifests" => manifest(r, reference, &headers, head),
        _ => {
            let Some(bytes) = r.blobs.get(reference) else {
                return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
            };
            if head {
                return blob_response(bytes.len(), Body::empty());
            }
            if state.faults.redirect_blobs.load(Ordering::SeqCst) {
                let port = state.cdn_port.load(Ordering::SeqCst);
                let location = format!("http://127.0.0.1:{port}/cdn/{reference}?signature=abc");
                return (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, location)],
                )
                    .into_response();
            }
            blob_get(
                state,
                maybe_corrupt(state, reference, bytes.clone()),
                &headers,
            )
        }
    }
}

fn maybe_corrupt(state: &Upstream, digest: &str, bytes: Bytes) -> Bytes {
    if !state.corrupt.lock().unwrap().iter().any(|d| d == digest) {
        return bytes;
    }
    let mut corrupted = bytes.to_vec();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0xff;
    Bytes::from(corrupted)
}

fn blob_response(len: usize, body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .unwrap()
}

/// A blob GET's answer: the whole blob, or the part a single `Range: bytes=N-` or
/// `bytes=N-M` asks for, as Docker Hub's CDN does, so a mirror can resume a cut download.
/// Other Range forms are ignored and get the whole blob, which HTTP allows.
fn blob_get(state: &Upstream, bytes: Bytes, headers: &HeaderMap) -> Response {
    let range =
        requested_range(headers).filter(|_| !state.faults.ignore_range.load(Ordering::SeqCst));
    let Some((start, end)) = range else {
        return blob_response(bytes.len(), Body::from(bytes));
    };
    let total = bytes.len() as u64;
    if start >= total {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{total}"))],
        )
            .into_response();
    }
    let end = end.map_or(total - 1, |end| end.min(total - 1));
    let part = bytes.slice(start as usize..=end as usize);
    let mut response = blob_response(part.len(), Body::from(part));
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    response.headers_mut().insert(
        header::CONTENT_RANGE,
        format!("bytes {start}-{end}/{total}").parse().unwrap(),
    );
    response
}

/// The first and (inclusive) last byte of a single `bytes=N-` or `bytes=N-M` Range header.
fn requested_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::RANGE)?.to_str().ok()?;
    let (start, end) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    // A suffix range ("-N") has no start, and a list ("N-M,K-L") leaves a comma in the end:
    // both fail to parse here and are ignored.
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse().ok()?),
    };
    if end.is_some_and(|end| end < start) {
        return None;
    }
    Some((start, end))
}

fn cdn_blob(state: &Upstream, digest: &str, headers: &HeaderMap) -> Response {
    let repos = state.repos.lock().unwrap();
    let found = repos.values().find_map(|r| r.blobs.get(digest).cloned());
    match found {
        // Corrupt the whole blob first, then slice: a range of a corrupt blob is corrupt
        // exactly where the whole one is.
        Some(bytes) => blob_get(state, maybe_corrupt(state, digest, bytes), headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn manifest(r: &Repo, reference: &str, headers: &HeaderMap, head: bool) -> Response {
    let digest = if reference.contains(':') {
        reference.to_owned()
    } else {
        match r.tags.get(reference) {
            Some(d) => d.clone(),
            None => return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        }
    };
    let Some((media_type, bytes)) = r.manifests.get(&digest) else {
        return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    };
    // Like Distribution: a client that does not accept the stored type does not get it.
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = accept.join(",");
    if !accept.is_empty()
        && !accept
            .split(',')
            .any(|a| a.split(';').next().unwrap().trim() == media_type)
    {
        return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    }
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, bytes.len())
        .header("docker-content-digest", &digest);
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes.clone())
    };
    builder.body(body).unwrap()
}

fn tags(repo: &str, r: &Repo, query: &str) -> Response {
    let mut n = None;
    let mut last = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "n" => n = v.parse::<usize>().ok(),
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    let mut tags: Vec<&String> = r
        .tags
        .keys()
        .filter(|t| last.as_ref().is_none_or(|l| *t > l))
        .collect();
    let more = n.is_some_and(|n| tags.len() > n);
    if let Some(n) = n {
        tags.truncate(n);
    }
    let body = serde_json::json!({ "name": repo, "tags": tags }).to_string();
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if more {
        let link = format!(
            "</v2/{repo}/tags/list?n={}&last={}>; rel=\"next\"",
            n.unwrap(),
            tags.last().unwrap()
        );
        response
            .headers_mut()
            .insert(header::LINK, link.parse().unwrap());
    }
    response
}

fn is_private(state: &Upstream, repo: &str) -> bool {
    state
        .private_prefix
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|p| repo.starts_with(p.as_str()))
}

fn authorized(state: &Upstream, repo: &str, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let tokens = state.tokens.lock().unwrap();
    tokens
        .get(token)
        .is_some_and(|scope| repo.is_empty() || scope == &format!("repository:{repo}:pull"))
}

fn token(state: &Upstream, query: &str, headers: &HeaderMap) -> Response {
    let scope = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    if let Some(pair) = &basic {
        let (user, password) = state.credentials.lock().unwrap().clone();
        if pair != &format!("{user}:{password}")
            || state.faults.refuse_credentials.load(Ordering::SeqCst)
        {
            return oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        }
    }
    let repo = scope
        .strip_prefix("repository:")
        .and_then(|s| s.rsplit_once(':'))
        .map(|(r, _)| r)
        .unwrap_or("");
    if is_private(state, repo) && basic.is_none() {
        return oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("{}{n}", state.token_prefix.lock().unwrap());
    state.tokens.lock().unwrap().insert(token.clone(), scope);
    let lifetime = state.token_lifetime_secs.load(Ordering::SeqCst);
    let body = serde_json::json!({ "token": token, "expires_in": lifetime });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
