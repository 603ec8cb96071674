//! A connection must deliver its first request head within `http.timeouts.header` of being
//! accepted, whatever it turns out to be. hyper's own header timeout starts only once hyper
//! knows the connection is HTTP/1: a connection that sends nothing, only part of the TLS
//! handshake, the HTTP/2 preface or an unfinished HEADERS frame would otherwise stay open for
//! ever, holding a file descriptor. Later HTTP/1 request heads are hyper's to time.
//!
//! Until then the connection is also the connection cap's to evict (see `connection_cap`): at a
//! full cap, a new connection takes the place of the oldest one still in this phase.
//!
//! Two halves share one flag: the service marks it when a request reaches it (its head is
//! complete), and the stream fails its reads and writes once the deadline passes unmarked, or
//! once the cap evicts the connection, which makes hyper (and rustls) close the connection. The
//! stream polls the deadline's timer and the eviction signal alongside each read and write, so
//! a connection waiting on a silent peer is woken to fail.
//!
//! An eviction and a first request can cross: the cap decides under its lock, and marking takes
//! the connection off the cap's list under that lock before setting the flag, so a stream that
//! sees the flag set and no eviction has not been evicted and never will be; one evicted before
//! its request was marked fails anyway, as its slot has been promised to the newcomer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::connection_cap::PreRequestPhase;

/// Set once the connection's first request head has arrived.
#[derive(Clone, Default)]
pub struct FirstRequest {
    arrived: Arc<AtomicBool>,
    /// Told of the arrival, so the cap no longer counts the connection as idle.
    phase: Option<PreRequestPhase>,
}

impl FirstRequest {
    pub fn new(phase: PreRequestPhase) -> Self {
        FirstRequest {
            arrived: Arc::default(),
            phase: Some(phase),
        }
    }

    fn arrived(&self) -> bool {
        self.arrived.load(Ordering::Acquire)
    }

    fn mark(&self) {
        if self.arrived() {
            return;
        }
        // Off the cap's list before the flag is set: see the module's comment.
        if let Some(phase) = &self.phase {
            phase.end();
        }
        self.arrived.store(true, Ordering::Release);
    }
}

/// Why a connection's stream fails.
#[derive(Clone, Copy)]
enum Closed {
    TimedOut,
    Evicted,
}

impl Closed {
    fn error(self) -> io::Error {
        match self {
            Closed::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head within http.timeouts.header",
            ),
            Closed::Evicted => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "no request yet, evicted at the connection limit for a new connection",
            ),
        }
    }
}

/// The first-request phase's two ends, dropped once a request has arrived.
struct PreRequest {
    deadline: Pin<Box<Sleep>>,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// A connection's stream that fails once `timeout` has passed without a request, or once the
/// connection cap evicts it before one.
pub struct DeadlineStream<S> {
    inner: S,
    first_request: FirstRequest,
    /// None once a request has arrived: neither the deadline nor eviction applies.
    pre_request: Option<PreRequest>,
    /// Set once the stream has failed: it fails for good.
    closed: Option<Closed>,
    timeout: Duration,
    peer: Option<SocketAddr>,
}

impl<S> DeadlineStream<S> {
    pub fn new(
        inner: S,
        first_request: FirstRequest,
        timeout: Duration,
        peer: Option<SocketAddr>,
        eviction: CancellationToken,
    ) -> Self {
        DeadlineStream {
            inner,
            first_request,
            pre_request: Some(PreRequest {
                deadline: Box::pin(tokio::time::sleep(timeout)),
                evicted: Box::pin(eviction.cancelled_owned()),
            }),
            closed: None,
            timeout,
            peer,
        }
    }

    /// The error every read and write returns once the deadline has passed or the connection
    /// was evicted, else None. Polling the timer and the eviction registers the caller's waker,
    /// so a connection waiting on a silent peer is woken to fail.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(closed) = self.closed {
            return Some(closed.error());
        }
        let pre_request = self.pre_request.as_mut()?;
        // The flag first, then the eviction: see the module's comment.
        let arrived = self.first_request.arrived();
        let closed = if pre_request.evicted.as_mut().poll(cx).is_ready() {
            tracing::debug!(
                peer = ?self.peer,
                "closing a connection that sent no request yet: evicted at the connection limit for a new connection"
            );
            Closed::Evicted
        } else if arrived {
            self.pre_request = None;
            return None;
        } else if pre_request.deadline.as_mut().poll(cx).is_ready() {
            tracing::debug!(
                peer = ?self.peer,
                timeout = ?self.timeout,
                "closing a connection that sent no complete request head in time (http.timeouts.header)"
            );
            Closed::TimedOut
        } else {
            return None;
        };
        self.closed = Some(closed);
        Some(closed.error())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeadlineStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeadlineStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection's service, marking the first request's arrival before answering it.
#[derive(Clone)]
pub struct MarkFirstRequest<S> {
    inner: S,
    first_request: FirstRequest,
}

impl<S> MarkFirstRequest<S> {
    pub fn new(inner: S, first_request: FirstRequest) -> Self {
        MarkFirstRequest {
            inner,
            first_request,
        }
    }
}

impl<S, R> tower::Service<R> for MarkFirstRequest<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.first_request.mark();
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_peer_fails_at_the_deadline_and_a_marked_one_never() {
        let timeout = Duration::from_millis(100);
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut stream = DeadlineStream::new(
            ours,
            FirstRequest::default(),
            timeout,
            None,
            CancellationToken::new(),
        );
        let mut buf = [0u8; 8];
        let error = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(stream.write_all(b"x").await.is_err());

        let (ours, mut theirs) = tokio::io::duplex(64);
        let first_request = FirstRequest::default();
        let mut stream = DeadlineStream::new(
            ours,
            first_request.clone(),
            timeout,
            None,
            CancellationToken::new(),
        );
        first_request.mark();
        // Past the deadline on purpose: a marked connection must not be cut.
        tokio::time::sleep(3 * timeout).await;
        theirs.write_all(b"late").await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn eviction_wakes_a_pending_read_to_fail_and_spares_a_connection_served_first() {
        let timeout = Duration::from_secs(600);
        let (ours, _theirs) = tokio::io::duplex(64);
        let eviction = CancellationToken::new();
        let mut stream = DeadlineStream::new(
            ours,
            FirstRequest::default(),
            timeout,
            None,
            eviction.clone(),
        );
        let mut buf = [0u8; 8];
        let reading = tokio::spawn(async move {
            let error = stream.read(&mut buf).await.unwrap_err();
            (error, stream.write_all(b"x").await.is_err())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reading.is_finished(), "a silent peer's read is pending");
        eviction.cancel();
        let (error, write_failed) = tokio::time::timeout(Duration::from_secs(5), reading)
            .await
            .expect("eviction wakes the pending read")
            .unwrap();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert!(write_failed, "an evicted connection fails for good");

        // Evicted before its request was marked: it fails anyway (its slot is promised away).
        let (ours, mut theirs) = tokio::io::duplex(64);
        let first_request = FirstRequest::default();
        let eviction = CancellationToken::new();
        let mut stream =
            DeadlineStream::new(ours, first_request.clone(), timeout, None, eviction.clone());
        eviction.cancel();
        first_request.mark();
        theirs.write_all(b"late").await.unwrap();
        assert!(stream.read(&mut buf).await.is_err());

        // Served first: later its stream no longer listens for eviction.
        let (ours, mut theirs) = tokio::io::duplex(64);
        let first_request = FirstRequest::default();
        let eviction = CancellationToken::new();
        let mut stream =
            DeadlineStream::new(ours, first_request.clone(), timeout, None, eviction.clone());
        first_request.mark();
        theirs.write_all(b"head").await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 4);
        eviction.cancel();
        theirs.write_all(b"next").await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 4);
    }
}
