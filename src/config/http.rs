//! `http:`: where cistern listens, with what TLS, the debug listener (metrics and health), and
//! how long a shutdown waits for responses in progress. Distribution's keys throughout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{bad, duration, scalar, ConfigError};

/// Default for `http.debug.addr`: loopback only, so metrics are not on the network unless the
/// operator says so. Distribution has no debug listener unless configured, so when this default
/// cannot be bound (another process holds the port) cistern starts without it, with a warning.
pub const DEFAULT_DEBUG_ADDR: &str = "127.0.0.1:5001";
/// Default for `http.debug.prometheus.path`, as in Distribution.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
/// Default for `http.draintimeout`: how long SIGTERM waits for responses in progress. Below
/// Kubernetes' 30 s termination grace period, so cistern exits before it is killed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Default for `http.timeouts.header` (cistern's extension): a connection must deliver each
/// request head within this time, whatever its protocol, or it is closed.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `host:port` to listen on; Distribution's `:5000` means all interfaces.
    pub addr: String,
    /// Extra headers on every response (`http.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Serve HTTPS with this certificate and key (`http.tls`).
    pub tls: Option<TlsConfig>,
    /// The debug listener (`http.debug`); None when `http.debug.addr` is empty.
    pub debug: Option<DebugConfig>,
    /// How long a shutdown waits for responses in progress (`http.draintimeout`).
    pub drain_timeout: Duration,
    /// How long a connection may take to deliver a request head (`http.timeouts.header`): the
    /// first one from the moment it is accepted (TLS handshake and HTTP/2 preface included),
    /// later HTTP/1 ones from the end of the previous response.
    pub header_timeout: Duration,
    /// At most this many client connections at once (`http.maxconnections`); None means
    /// derived from the open-file limit when the server starts.
    pub max_connections: Option<usize>,
    /// Serve the status page on this listener too, under `/_cistern/`, to the clients the
    /// access config admits (`http.statuspage`, cistern's extension; off by default).
    pub status_page: bool,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (`http.tls.certificate`).
    pub certificate: PathBuf,
    /// PEM private key (`http.tls.key`).
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DebugConfig {
    pub addr: String,
    /// Whether the file (or environment) names `http.debug.addr`: only then is an address that
    /// cannot be bound fatal.
    pub addr_configured: bool,
    /// Where Prometheus metrics are served; None when `http.debug.prometheus.enabled` is false.
    pub metrics_path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawHttp {
    addr: Option<String>,
    headers: BTreeMap<String, Vec<String>>,
    tls: Option<RawTls>,
    debug: Option<RawDebug>,
    #[serde(deserialize_with = "duration::deserialize_optional")]
    draintimeout: Option<Duration>,
    timeouts: RawTimeouts,
    #[serde(deserialize_with = "scalar::deserialize_optional_count")]
    maxconnections: Option<usize>,
    #[serde(deserialize_with = "scalar::deserialize_optional_bool")]
    statuspage: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTimeouts {
    #[serde(deserialize_with = "duration::deserialize_optional")]
    header: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTls {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawDebug {
    addr: Option<String>,
    prometheus: RawPrometheus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPrometheus {
    #[serde(deserialize_with = "scalar::deserialize_optional_bool")]
    enabled: Option<bool>,
    path: Option<String>,
}

impl RawHttp {
    pub(super) fn validate(self) -> Result<HttpConfig, ConfigError> {
        let addr = listen_address("http.addr", self.addr.as_deref().unwrap_or(":5000"))?;
        let mut headers = Vec::new();
        for (name, values) in self.headers {
            let key = format!("http.headers.{name}");
            let header_name =
                HeaderName::try_from(name.as_str()).map_err(|e| bad(&key, e.to_string()))?;
            for value in values {
                let header_value =
                    HeaderValue::try_from(value).map_err(|e| bad(&key, e.to_string()))?;
                headers.push((header_name.clone(), header_value));
            }
        }
        let header_timeout = self.timeouts.header.unwrap_or(DEFAULT_HEADER_TIMEOUT);
        if header_timeout.is_zero() {
            return Err(bad(
                "http.timeouts.header",
                "must be more than 0: a connection that never sends a request must be closed",
            ));
        }
        if self.maxconnections == Some(0) {
            return Err(bad(
                "http.maxconnections",
                "must be at least 1, or no client could ever connect",
            ));
        }
        Ok(HttpConfig {
            addr,
            headers,
            tls: self.tls.map(RawTls::validate).transpose()?,
            debug: self.debug.unwrap_or_default().validate()?,
            drain_timeout: self.draintimeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            header_timeout,
            max_connections: self.maxconnections,
            status_page: self.statuspage.unwrap_or(false),
        })
    }
}

impl RawTls {
    fn validate(self) -> Result<TlsConfig, ConfigError> {
        match (self.certificate, self.key) {
            (Some(certificate), Some(key)) => Ok(TlsConfig { certificate, key }),
            (None, _) => Err(bad(
                "http.tls.certificate",
                "missing: http.tls is set, so a PEM certificate file is needed",
            )),
            (_, None) => Err(bad(
                "http.tls.key",
                "missing: http.tls is set, so a PEM private key file is needed",
            )),
        }
    }
}

impl RawDebug {
    fn validate(self) -> Result<Option<DebugConfig>, ConfigError> {
        let addr_configured = self.addr.is_some();
        let addr = self.addr.unwrap_or_else(|| DEFAULT_DEBUG_ADDR.to_owned());
        if addr.trim().is_empty() {
            return Ok(None);
        }
        let metrics_path = match self.prometheus.enabled {
            Some(false) => None,
            _ => {
                let path = self
                    .prometheus
                    .path
                    .unwrap_or_else(|| DEFAULT_METRICS_PATH.to_owned());
                if !path.starts_with('/') {
                    return Err(bad(
                        "http.debug.prometheus.path",
                        format!("{path:?} must start with /"),
                    ));
                }
                Some(path)
            }
        };
        Ok(Some(DebugConfig {
            addr: listen_address("http.debug.addr", &addr)?,
            addr_configured,
            metrics_path,
        }))
    }
}

/// Turns Distribution's `:5000` (all interfaces) into an address a socket can bind.
fn listen_address(key: &str, addr: &str) -> Result<String, ConfigError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad(key, format!("{addr:?} has no port (e.g. :5000)")))?;
    port.parse::<u16>()
        .map_err(|_| bad(key, format!("{addr:?} has no valid port")))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(format!("{host}:{port}"))
}
