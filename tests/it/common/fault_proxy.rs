//! An HTTP reverse proxy that sits between the mirror under test and the fake upstream and
//! injects faults the fake upstream cannot produce by itself: connections cut mid-body,
//! truncated or corrupted bodies, slow bodies, injected statuses, and the upstream host going
//! away and coming back on the same port.
//!
//! Without rules it forwards every request unchanged and streams the answer back, so a test
//! can point the mirror at `FaultProxy::url` and decide per request what goes wrong.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{header, HeaderMap, HeaderName, Method, StatusCode};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What happens to a request that matches a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status without forwarding, with an optional Retry-After value.
    Status(u16, Option<&'static str>),
    /// Forward, send the upstream status and headers (including Content-Length) unchanged,
    /// then only the first N body bytes, then abort the connection (the body stream yields an
    /// error so hyper drops the connection mid-body).
    CutAfter(u64),
    /// Forward, but drop Content-Length and end the body cleanly after N bytes (chunked
    /// encoding).
    Truncate(u64),
    /// Forward with one body byte flipped (the byte at offset 0 XOR 0xff); Content-Length
    /// unchanged.
    Corrupt,
    /// Forward, sending the body at about this many bytes per second in 16 KiB pieces.
    Slow { bytes_per_sec: u64 },
    /// Answer this status with an S3 error document of this code (e.g. 403 `QuotaExceeded`,
    /// what Ceph RGW says to a write over quota), without forwarding.
    S3Error(u16, &'static str),
}

/// One request the proxy received, whether or not it was forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySeen {
    pub method: Method,
    /// Path and query, as received.
    pub path: String,
    /// The Range header value, if any.
    pub range: Option<String>,
}

pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    /// The port every incarnation of the server listens on, so `come_up` restores the same
    /// URL the mirror was configured with.
    addr: SocketAddr,
    /// The server while it is up.
    running: Mutex<Option<Running>>,
}

/// State the request handler and the test share.
struct Shared {
    /// Base URL requests are forwarded to, without a trailing slash.
    target: String,
    client: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<ProxySeen>>,
    blob_fetches: AtomicUsize,
    max_blob_fetches: AtomicUsize,
}

struct Rule {
    /// Only requests with this method match; any method when None.
    method: Option<Method>,
    path_fragment: String,
    fault: Fault,
    remaining: usize,
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Body pieces are at most this long under `Fault::Slow`.
const SLOW_PIECE: usize = 16 * 1024;

/// How long a `CutAfter` body waits before failing. While the body stream is pending hyper
/// flushes what it has buffered, so the promised N bytes really reach the client before the
/// connection is dropped; failing immediately could discard them together with the
/// connection.
const CUT_FLUSH_PAUSE: Duration = Duration::from_millis(50);

impl FaultProxy {
    /// Starts on 127.0.0.1:0 forwarding every request to `target` (e.g.
    /// "http://127.0.0.1:1234").
    pub async fn start(target: &str) -> FaultProxy {
        let client = reqwest::Client::builder()
            // Redirects (the fake upstream's CDN redirect) go back to the mirror untouched:
            // following them here would hide them from the code under test.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            target: target.trim_end_matches('/').to_owned(),
            client,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            blob_fetches: AtomicUsize::new(0),
            max_blob_fetches: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = FaultProxy {
            url: format!("http://{addr}"),
            shared,
            addr,
            running: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    /// The next `times` requests whose path-and-query contains `path_fragment` get `fault`.
    /// Rules are checked in insertion order; a rule with times exhausted is ignored.
    pub fn inject(&self, path_fragment: &str, fault: Fault, times: usize) {
        self.shared.rules.lock().unwrap().push(Rule {
            method: None,
            path_fragment: path_fragment.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// As `inject`, for requests with `method` only (e.g. the PUTs of an object store's
    /// writes, not the GETs of the same keys).
    pub fn inject_method(&self, method: Method, path_fragment: &str, fault: Fault, times: usize) {
        self.shared.rules.lock().unwrap().push(Rule {
            method: Some(method),
            path_fragment: path_fragment.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// Removes all rules.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Upstream unreachable: stop listening (new connections are refused) and close idle
    /// keep-alive connections. Waits until the server task ended, which also means responses
    /// still in progress were finished (or dropped by their client) first.
    pub async fn go_down(&self) {
        let Some(running) = self.running.lock().unwrap().take() else {
            return;
        };
        let _ = running.shutdown.send(());
        running.task.await.unwrap();
        // The server closed its side of every connection; give clients' connection tasks a
        // moment to see the FIN, so a pooled connection is not handed out again and the next
        // request fails to connect rather than failing on a dead keep-alive connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Listen again on the same port.
    pub async fn come_up(&self) {
        if self.running.lock().unwrap().is_some() {
            return;
        }
        // SO_REUSEADDR: the connections the server closed in `go_down` linger in TIME_WAIT
        // on this port and would otherwise make the bind fail.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(1024).unwrap();
        self.serve(listener);
    }

    /// The largest number of forwarded requests whose path contains "/blobs/" that were in
    /// progress at the same time (from forwarding start until the response body was
    /// completely sent or dropped).
    pub fn max_concurrent_blob_fetches(&self) -> usize {
        self.shared.max_blob_fetches.load(Ordering::SeqCst)
    }

    /// Forwarded requests whose path contains "/blobs/" in progress now (their response body
    /// not yet completely sent nor dropped).
    pub fn blob_fetches_in_progress(&self) -> usize {
        self.shared.blob_fetches.load(Ordering::SeqCst)
    }

    /// Requests the proxy received, in order.
    pub fn seen(&self) -> Vec<ProxySeen> {
        self.shared.seen.lock().unwrap().clone()
    }

    fn serve(&self, listener: TcpListener) {
        let app = Router::new()
            .fallback(any(forward))
            .with_state(self.shared.clone());
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // A dropped sender (the FaultProxy dropped) also shuts the server down.
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = signal.await;
                })
                .await
                .unwrap();
        });
        *self.running.lock().unwrap() = Some(Running { shutdown, task });
    }
}

impl Shared {
    /// The fault of the first live rule matching `path_and_query`, using up one of its times.
    fn take_fault(&self, method: &Method, path_and_query: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| {
            r.remaining > 0
                && r.method.as_ref().is_none_or(|m| m == method)
                && path_and_query.contains(&r.path_fragment)
        })?;
        rule.remaining -= 1;
        Some(rule.fault)
    }
}

/// Counts one blob fetch as in progress for as long as it lives; it travels inside the
/// response body so it ends when hyper has sent the body or dropped it.
struct BlobFetch(Arc<Shared>);

impl BlobFetch {
    fn start(shared: &Arc<Shared>) -> BlobFetch {
        let now = shared.blob_fetches.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_blob_fetches.fetch_max(now, Ordering::SeqCst);
        BlobFetch(shared.clone())
    }
}

impl Drop for BlobFetch {
    fn drop(&mut self) {
        self.0.blob_fetches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Headers that describe one connection rather than the message, so they are not copied
/// across the proxy. Content-Length and Transfer-Encoding are recomputed by hyper from what
/// the proxy actually sends (except that an upstream Content-Length is kept on purpose).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove(header::TRANSFER_ENCODING);
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.seen.lock().unwrap().push(ProxySeen {
        method: method.clone(),
        path: path_and_query.clone(),
        range,
    });

    let fault = shared.take_fault(&method, &path_and_query);
    if let Some(Fault::Status(status, retry_after)) = fault {
        return injected_status(status, retry_after);
    }
    if let Some(Fault::S3Error(status, code)) = fault {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by fault proxy</Message></Error>"
        );
        let status = StatusCode::from_u16(status).expect("a valid HTTP status");
        return (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response();
    }

    let fetch = request
        .uri()
        .path()
        .contains("/blobs/")
        .then(|| BlobFetch::start(&shared));

    let mut headers = request.headers().clone();
    // reqwest sets Host from the target URL, and Content-Length from the body it forwards
    // (an object store's uploads have bodies; registry GETs and HEADs have none).
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    strip_hop_by_hop(&mut headers);
    let body = match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(body) => body,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("fault proxy: {e}\n")).into_response(),
    };
    let url = format!("{}{path_and_query}", shared.target);
    let upstream = match shared
        .client
        .request(method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("fault proxy: {e}\n")).into_response();
        }
    };

    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    if matches!(fault, Some(Fault::Truncate(_))) {
        // Without a length the short body is a complete, well-formed chunked message.
        headers.remove(header::CONTENT_LENGTH);
    }
    let body = Shaped {
        upstream: Box::pin(upstream.bytes_stream()),
        fault,
        sent: 0,
        pending: Bytes::new(),
        started: Instant::now(),
        finished: false,
        _fetch: fetch,
    };
    let mut response = Response::new(Body::from_stream(futures::stream::unfold(
        body,
        Shaped::next_piece,
    )));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// An OCI-style error answer for `Fault::Status`, as a registry would send it.
fn injected_status(status: u16, retry_after: Option<&'static str>) -> Response {
    let status = StatusCode::from_u16(status).expect("a valid HTTP status");
    let code = match status.as_u16() {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        429 => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    };
    let body = format!(
        r#"{{"errors":[{{"code":"{code}","message":"injected by fault proxy","detail":null}}]}}"#
    );
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(after) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, after.parse().unwrap());
    }
    response
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// A response body on its way from upstream to the client, with the fault applied to it.
struct Shaped {
    upstream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    fault: Option<Fault>,
    /// Body bytes passed on so far.
    sent: u64,
    /// Bytes read from upstream but not passed on yet (the rest of a chunk cut into pieces).
    pending: Bytes,
    /// When the body started, for pacing `Fault::Slow`.
    started: Instant,
    /// Nothing more is sent once the body failed.
    finished: bool,
    _fetch: Option<BlobFetch>,
}

impl Shaped {
    /// The next piece of the body, for `futures::stream::unfold`.
    async fn next_piece(mut self) -> Option<(Result<Bytes, BoxError>, Shaped)> {
        if self.finished {
            return None;
        }
        let limit = match self.fault {
            Some(Fault::CutAfter(n) | Fault::Truncate(n)) => Some(n),
            _ => None,
        };
        if limit.is_some_and(|n| self.sent >= n) {
            if let Some(Fault::CutAfter(_)) = self.fault {
                self.finished = true;
                tokio::time::sleep(CUT_FLUSH_PAUSE).await;
                let cut = std::io::Error::other("fault proxy: connection cut mid-body");
                return Some((Err(cut.into()), self));
            }
            return None;
        }
        if self.pending.is_empty() {
            match self.upstream.next().await? {
                Ok(chunk) => self.pending = chunk,
                Err(e) => {
                    // Upstream failed mid-body: pass the failure on, so the client sees a
                    // broken connection too.
                    self.finished = true;
                    return Some((Err(e.into()), self));
                }
            }
        }
        let mut take = self.pending.len();
        if let Some(n) = limit {
            take = take.min((n - self.sent) as usize);
        }
        if let Some(Fault::Slow { .. }) = self.fault {
            take = take.min(SLOW_PIECE);
        }
        let mut piece = self.pending.split_to(take);
        if self.fault == Some(Fault::Corrupt) && self.sent == 0 && !piece.is_empty() {
            let mut bytes = piece.to_vec();
            bytes[0] ^= 0xff;
            piece = Bytes::from(bytes);
        }
        if let Some(Fault::Slow { bytes_per_sec }) = self.fault {
            // Each piece leaves when it would have finished arriving at this rate, so the
            // whole body takes about len / rate however upstream chunked it.
            let due = (self.sent + piece.len() as u64) as f64 / bytes_per_sec.max(1) as f64;
            tokio::time::sleep_until(self.started + Duration::from_secs_f64(due)).await;
        }
        self.sent += piece.len() as u64;
        Some((Ok(piece), self))
    }
}
