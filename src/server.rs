//! The listeners: the registry API (HTTP, or HTTPS from `http.tls`) and the debug listener
//! (metrics and health), with the limits every connection gets and a graceful shutdown bounded
//! by `http.draintimeout`.

mod connection_cap;
mod first_request_deadline;
mod guarded_acceptor;
mod open_files;

pub use connection_cap::default_max_connections;
pub use open_files::raise_open_file_limit;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use axum_server::Handle;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;

use crate::config::{HttpConfig, TlsConfig};
use crate::StartError;
use connection_cap::ConnectionCap;
use guarded_acceptor::GuardedAcceptor;

/// A request's header block may be at most this large (hyper answers 431 beyond it). Registry
/// clients send a few hundred bytes; a bearer token is a few KiB.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// An HTTP/2 connection is pinged this often when quiet, and closed when a ping goes unanswered
/// for `H2_KEEP_ALIVE_TIMEOUT`: a peer that vanished (no FIN, no RST) must not hold a connection
/// for ever. A live peer answers pings, so this never cuts a slow blob download.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The debug listener's connection cap: Prometheus and a kubelet need a few connections, and an
/// exposed debug port must not use up the descriptors the API needs.
pub const DEBUG_MAX_CONNECTIONS: usize = 64;

/// The per-connection limits: how long a connection may take to deliver a request head, how
/// many may be open at once, and how long they may finish responses at shutdown.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// `http.timeouts.header`. Bodies are not limited: a blob stream takes as long as it takes.
    pub header_timeout: Duration,
    /// `http.maxconnections`, or the default derived from the open-file limit.
    pub max_connections: usize,
    /// `http.draintimeout`.
    pub drain_timeout: Duration,
}

impl ConnectionLimits {
    pub fn from_config(http: &HttpConfig) -> Self {
        ConnectionLimits {
            header_timeout: http.header_timeout,
            max_connections: http.max_connections.unwrap_or_else(default_max_connections),
            drain_timeout: http.drain_timeout,
        }
    }
}

/// The sockets cistern serves on. Tests bind 127.0.0.1:0; `main` binds what the config says.
pub struct Listeners {
    pub api: TcpListener,
    /// Metrics and health; None when `http.debug.addr` is empty.
    pub debug: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(api: TcpListener) -> Self {
        Listeners { api, debug: None }
    }
}

impl Listeners {
    /// Binds `http.addr` and `http.debug.addr`; an error names the key. A debug listener the
    /// config does not ask for is optional: if its default address is taken, cistern starts
    /// without it, as a registry:2 config (which has none) expects.
    pub async fn bind(http: &HttpConfig) -> Result<Listeners, StartError> {
        let api = bind("http.addr", &http.addr).await?;
        let debug = match &http.debug {
            Some(debug) => optional_unless_configured(
                bind("http.debug.addr", &debug.addr).await,
                debug.addr_configured,
            )?,
            None => None,
        };
        Ok(Listeners { api, debug })
    }
}

/// A listener the operator configured must bind; the default one may fail with a warning.
fn optional_unless_configured(
    bound: Result<TcpListener, StartError>,
    configured: bool,
) -> Result<Option<TcpListener>, StartError> {
    match bound {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if configured => Err(e),
        Err(e) => {
            tracing::warn!(
                "{e}; starting without the debug listener (metrics, health): set http.debug.addr to choose a free address, or to '' to turn it off"
            );
            Ok(None)
        }
    }
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            key,
            addr: addr.to_owned(),
            source,
        })
}

/// Loads `http.tls`; an unreadable or invalid file stops start-up with the key and path.
pub async fn load_tls(tls: &TlsConfig) -> Result<RustlsConfig, StartError> {
    // reqwest and this server share one rustls build with the ring provider; make it the
    // process default so the server config can be built (a second install is harmless).
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(&tls.certificate, &tls.key)
        .await
        .map_err(|source| StartError::Tls {
            certificate: tls.certificate.display().to_string(),
            key: tls.key.display().to_string(),
            source,
        })
}

/// Serves `api` (and `debug`) until `shutdown` completes, then stops accepting, lets responses
/// in progress finish for up to `limits.drain_timeout`, and returns.
pub async fn run(
    listeners: Listeners,
    api: Router,
    debug: Router,
    tls: Option<RustlsConfig>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_shutdown: impl FnOnce() + Send + 'static,
) -> Result<(), StartError> {
    let drain_timeout = limits.drain_timeout;
    let api_addr = local_addr(&listeners.api);
    let api_handle = Handle::new();
    let debug_handle = Handle::new();
    {
        let (api_handle, debug_handle) = (api_handle.clone(), debug_handle.clone());
        tokio::spawn(async move {
            shutdown.await;
            on_shutdown();
            tracing::info!(
                connections = api_handle.connection_count(),
                drain_timeout = ?drain_timeout,
                "shutting down: no new connections; responses in progress may finish (http.draintimeout)"
            );
            api_handle.graceful_shutdown(Some(drain_timeout));
            // The debug listener answers (readiness: not ready) until the API has drained.
            while api_handle.connection_count() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            debug_handle.graceful_shutdown(Some(Duration::ZERO));
        });
    }
    if let Some(listener) = listeners.debug {
        let addr = local_addr(&listener);
        tracing::info!(%addr, "debug listener (metrics, health) serving");
        let acceptor = GuardedAcceptor::new(
            NoDelayAcceptor,
            ConnectionCap::new(DEBUG_MAX_CONNECTIONS, "the debug listener's limit"),
            limits.header_timeout,
        );
        let mut server = axum_server::from_tcp(into_std(listener, &addr)?)
            .acceptor(acceptor)
            .handle(debug_handle);
        limit(server.http_builder(), limits.header_timeout);
        tokio::spawn(async move {
            if let Err(e) = server
                .serve(debug.into_make_service_with_connect_info::<SocketAddr>())
                .await
            {
                tracing::error!(%addr, error = %e, "debug listener failed");
            }
        });
    }
    let std_listener = into_std(listeners.api, &api_addr)?;
    let service = api.into_make_service_with_connect_info::<SocketAddr>();
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout = ?limits.header_timeout,
        "client connection limits (http.maxconnections, http.timeouts.header)"
    );
    // TCP_NODELAY: a blob answer is written as headers then body; with Nagle's algorithm the
    // body waits for the client's delayed ACK (40 ms per small blob).
    let guarded = GuardedAcceptor::new(
        NoDelayAcceptor,
        ConnectionCap::new(limits.max_connections, "http.maxconnections"),
        limits.header_timeout,
    );
    let served = match tls {
        Some(tls) => {
            // The guard sits beneath TLS, so its deadline covers the handshake as well.
            let acceptor = RustlsAcceptor::new(tls)
                .handshake_timeout(limits.header_timeout)
                .acceptor(guarded);
            let mut server = axum_server::from_tcp(std_listener)
                .acceptor(acceptor)
                .handle(api_handle);
            limit(server.http_builder(), limits.header_timeout);
            server.serve(service).await
        }
        None => {
            let mut server = axum_server::from_tcp(std_listener)
                .acceptor(guarded)
                .handle(api_handle);
            limit(server.http_builder(), limits.header_timeout);
            server.serve(service).await
        }
    };
    served.map_err(|source| StartError::Serve {
        addr: api_addr,
        source,
    })
}

/// The limits hyper enforces on every connection. The first request head's deadline is the
/// acceptor's (hyper's starts too late, see `first_request_deadline`); hyper times each later
/// HTTP/1 head, idle keep-alive included.
fn limit(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header_timeout: Duration,
) {
    builder
        .http1()
        .max_buf_size(MAX_HEADER_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

fn into_std(listener: TcpListener, addr: &str) -> Result<std::net::TcpListener, StartError> {
    listener.into_std().map_err(|source| StartError::Serve {
        addr: addr.to_owned(),
        source,
    })
}
