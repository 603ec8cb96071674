//! One log line and one set of metrics per request, written when the response body has been
//! sent (or abandoned), so the line carries the real byte count and duration of a blob stream.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tracing::Instrument;

use super::problems::ProblemKind;
use super::request_id::{self, RequestId};
use super::Metrics;
use crate::api::ErrorMessage;
use crate::cache::Outcome;
use crate::registry::RegistryId;

/// Which endpoint answered, set on the response by the dispatcher.
#[derive(Clone, Copy, Debug)]
pub struct EndpointLabel(pub &'static str);

/// The repository a failed request named (as the mirror names it), set on error responses
/// only, so the status page can show a viewer the problems of repositories it may pull.
#[derive(Clone, Debug)]
pub struct FailedRepository(pub String);

/// Set on a response whose request failed because storage did.
#[derive(Clone, Copy, Debug)]
pub struct StorageFailed;

/// The middleware: request id in, `X-Request-Id` out, a log line and metrics at the end.
pub async fn log_requests(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = RequestId::from_headers(request.headers());
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let method = request.method().clone();
    // The query is kept: it shows containerd's `?ns=` and the paging parameters, never a secret.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    let path = shortened(path);
    // Lines logged while the request is handled (a fill failing, a stale tag) carry its id.
    let span = tracing::info_span!("request", id = %id.0);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(request_id::HEADER, value);
    }
    // hyper stops polling a body once it has sent the Content-Length it announced, and drops
    // it without reading its end: a body that sent that much is complete.
    let announced_bytes = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let extensions = response.extensions();
    let line = LogLine {
        metrics,
        id,
        client,
        method,
        path,
        status: response.status().as_u16(),
        endpoint: extensions.get::<EndpointLabel>().map_or("other", |e| e.0),
        registry: extensions.get::<RegistryId>().cloned(),
        outcome: extensions.get::<Outcome>().copied(),
        error: extensions.get::<ErrorMessage>().map(|e| e.0.clone()),
        repository: extensions.get::<FailedRepository>().map(|r| r.0.clone()),
        storage_failed: extensions.get::<StorageFailed>().is_some(),
        started,
        bytes: 0,
        announced_bytes,
        finished: false,
    };
    response.map(|body| {
        Body::new(CountedBody {
            inner: body,
            line: Some(line),
        })
    })
}

/// Paths longer than any valid request (refused with 414) are cut, so one request cannot
/// write a 64 KiB log line.
fn shortened(path: &str) -> String {
    const MAX: usize = 1024;
    match path.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}... ({} bytes)", &path[..cut], path.len()),
        None => path.to_owned(),
    }
}

/// Everything the line needs, held until the body is done.
struct LogLine {
    metrics: Metrics,
    id: RequestId,
    client: Option<SocketAddr>,
    method: Method,
    path: String,
    status: u16,
    endpoint: &'static str,
    /// The registry of the repository asked for, if the request named one.
    registry: Option<RegistryId>,
    outcome: Option<Outcome>,
    error: Option<String>,
    repository: Option<String>,
    storage_failed: bool,
    started: Instant,
    bytes: u64,
    /// The response's Content-Length, when it has one.
    announced_bytes: Option<u64>,
    /// The body reached its end; false when the client went away first.
    finished: bool,
}

impl LogLine {
    fn write(self) {
        let metrics = &self.metrics;
        metrics.request(self.endpoint, &self.method, self.status);
        if let (Some(outcome), "manifest" | "blob") = (self.outcome, self.endpoint) {
            let registry = self.registry.as_ref().map_or("-", RegistryId::name);
            metrics.cache_outcome(registry, self.endpoint, outcome);
        }
        metrics.served(self.outcome, self.bytes);
        if self.storage_failed {
            metrics.storage_error("request");
        }
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let outcome = self.outcome.map_or("-", Outcome::label);
        let registry = self.registry.as_ref().map_or("-", RegistryId::name);
        let client = self.client.map(|c| c.ip().to_string()).unwrap_or_default();
        let (id, method, path, status, bytes) = (
            &self.id.0,
            &self.method,
            &self.path,
            self.status,
            self.bytes,
        );
        let complete = self.finished;
        if !complete && method != Method::HEAD {
            metrics.cut_short(self.endpoint);
        }
        if let Some(error) = &self.error {
            if let Some(kind) = problem_kind(status, error) {
                let message = format!("{method} {path}: {status}: {error}");
                metrics.problem(kind, self.repository.as_deref(), &message);
            }
        }
        match &self.error {
            Some(error) if status >= 500 => tracing::error!(
                request_id = %id, %client, %method, %path, status, bytes, elapsed_ms,
                registry, cache = outcome, %error, "request failed"
            ),
            Some(error) => tracing::info!(
                request_id = %id, %client, %method, %path, status, bytes, elapsed_ms,
                registry, cache = outcome, %error, "request refused"
            ),
            None if !complete && method != Method::HEAD => tracing::warn!(
                request_id = %id, %client, %method, %path, status, bytes, elapsed_ms,
                registry, cache = outcome, "response cut short (the client went away or the stream failed)"
            ),
            None => tracing::info!(
                request_id = %id, %client, %method, %path, status, bytes, elapsed_ms,
                registry, cache = outcome, "request"
            ),
        }
    }
}

/// Which failed requests the status page lists: refused clients and server-side failures (a
/// 404 or a bad request is the client's business).
fn problem_kind(status: u16, error: &str) -> Option<ProblemKind> {
    match status {
        401 | 403 => Some(ProblemKind::RefusedClient),
        _ if status < 500 => None,
        _ if error.contains("does not match its digest") => Some(ProblemKind::DigestMismatch),
        502..=504 => Some(ProblemKind::Upstream),
        _ => Some(ProblemKind::Server),
    }
}

/// The response body, counted as it goes out; the log line is written when it ends or is
/// dropped (a client that disconnects drops it).
struct CountedBody {
    inner: Body,
    line: Option<LogLine>,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                if let Some(line) = self.line.as_mut() {
                    line.bytes += len;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut line) = self.line.take() {
                    line.finished = true;
                    line.write();
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        if let Some(mut line) = self.line.take() {
            // hyper drops a body without polling it to its end once it sent the announced
            // length (or at once when the body is empty).
            line.finished = self.inner.is_end_stream() || line.announced_bytes == Some(line.bytes);
            line.write();
        }
    }
}
