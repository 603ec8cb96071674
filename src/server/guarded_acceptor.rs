//! The acceptor every client connection passes through: a slot under the connection cap (at a
//! full cap, one taken from the oldest connection that has sent no request yet, see
//! `connection_cap`), and the first-request deadline and eviction on its stream (beneath TLS,
//! so the handshake is timed, and can be evicted, too).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::connection_cap::{ConnectionCap, ConnectionSlot};
use super::first_request_deadline::{DeadlineStream, FirstRequest, MarkFirstRequest};

#[derive(Clone)]
pub struct GuardedAcceptor<A> {
    inner: A,
    cap: Arc<ConnectionCap>,
    header_timeout: Duration,
}

impl<A> GuardedAcceptor<A> {
    pub fn new(inner: A, cap: Arc<ConnectionCap>, header_timeout: Duration) -> Self {
        GuardedAcceptor {
            inner,
            cap,
            header_timeout,
        }
    }
}

/// A connection's stream holding its slot: the slot frees when hyper drops the stream.
pub struct GuardedStream<S> {
    inner: DeadlineStream<S>,
    _slot: ConnectionSlot,
}

impl<A, S> Accept<TcpStream, S> for GuardedAcceptor<A>
where
    A: Accept<TcpStream, S> + Clone + Send + Sync + 'static,
    A::Future: Send + 'static,
    A::Stream: Send,
    S: Send + 'static,
{
    type Stream = GuardedStream<A::Stream>;
    type Service = MarkFirstRequest<A::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = stream.peer_addr().ok();
        let cap = self.cap.clone();
        let inner = self.inner.clone();
        let header_timeout = self.header_timeout;
        Box::pin(async move {
            // Dropping the stream closes it at once, which is what a client beyond the cap gets.
            let slot = cap.admit(peer).await.ok_or_else(|| {
                io::Error::new(io::ErrorKind::ConnectionRefused, "connection limit reached")
            })?;
            let (stream, service) = inner.accept(stream, service).await?;
            let first_request = FirstRequest::new(slot.pre_request_phase());
            Ok((
                GuardedStream {
                    inner: DeadlineStream::new(
                        stream,
                        first_request.clone(),
                        header_timeout,
                        peer,
                        slot.eviction(),
                    ),
                    _slot: slot,
                },
                MarkFirstRequest::new(service, first_request),
            ))
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
