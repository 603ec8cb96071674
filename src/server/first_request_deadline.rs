//! A connection must deliver its first request head within `http.timeouts.header` of being
//! accepted, whatever it turns out to be. hyper's own header timeout starts only once hyper
//! knows the connection is HTTP/1: a connection that sends nothing, only part of the TLS
//! handshake, the HTTP/2 preface or an unfinished HEADERS frame would otherwise stay open for
//! ever, holding a file descriptor. Later HTTP/1 request heads are hyper's to time.
//!
//! Two halves share one flag: the service marks it when a request reaches it (its head is
//! complete), and the stream fails its reads and writes once the deadline passes unmarked, which
//! makes hyper (and rustls) close the connection.

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

/// Set once the connection's first request head has arrived.
#[derive(Clone, Default)]
pub struct FirstRequest(Arc<AtomicBool>);

impl FirstRequest {
    fn arrived(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A connection's stream that fails once `timeout` has passed without a request.
pub struct DeadlineStream<S> {
    inner: S,
    first_request: FirstRequest,
    /// None once a request has arrived: the deadline no longer applies.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    peer: Option<SocketAddr>,
}

impl<S> DeadlineStream<S> {
    pub fn new(
        inner: S,
        first_request: FirstRequest,
        timeout: Duration,
        peer: Option<SocketAddr>,
    ) -> Self {
        DeadlineStream {
            inner,
            first_request,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            timeout,
            peer,
        }
    }

    /// The error every read and write returns once the deadline has passed, else None. Polling
    /// the timer registers the caller's waker, so a connection waiting on a silent peer is woken
    /// to fail.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let deadline = self.deadline.as_mut()?;
        if self.first_request.arrived() {
            self.deadline = None;
            return None;
        }
        deadline.as_mut().poll(cx).is_ready().then(|| {
            tracing::debug!(
                peer = ?self.peer,
                timeout = ?self.timeout,
                "closing a connection that sent no complete request head in time (http.timeouts.header)"
            );
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head within http.timeouts.header",
            )
        })
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
        let mut stream = DeadlineStream::new(ours, FirstRequest::default(), timeout, None);
        let mut buf = [0u8; 8];
        let error = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(stream.write_all(b"x").await.is_err());

        let (ours, mut theirs) = tokio::io::duplex(64);
        let first_request = FirstRequest::default();
        let mut stream = DeadlineStream::new(ours, first_request.clone(), timeout, None);
        first_request.mark();
        // Past the deadline on purpose: a marked connection must not be cut.
        tokio::time::sleep(3 * timeout).await;
        theirs.write_all(b"late").await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 4);
    }
}
