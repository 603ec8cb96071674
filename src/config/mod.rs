//! cistern's configuration: CNCF Distribution's `config.yml` schema where the two overlap
//! (so a registry:2 proxy config runs unchanged), with cistern's extensions beside it.

mod access;
mod admin;
mod cache;
mod prewarm;
mod scalar;
mod storage;
use storage::RawStorage;
pub use storage::{AzureConfig, GcsConfig, S3Config, StorageConfig};
mod duration;
mod health;
mod http;
mod proxy;
mod registries;
mod schema;
pub use access::{AccessConfig, HtpasswdConfig, Patterns};
pub use admin::AdminConfig;
pub use cache::{parse_bytes, Budget, CacheConfig, MinFree, Pins};
use health::RawHealth;
pub use health::{HealthConfig, StorageCheck};
use http::RawHttp;
pub use http::{DebugConfig, HttpConfig, TlsConfig, DEFAULT_DEBUG_ADDR};
pub use prewarm::{
    parse_image, split_image, Platform, Platforms, PrewarmConfig, PrewarmImage, TagSelector,
};
use proxy::RawProxy;
pub use proxy::{
    Credentials, ProxyConfig, DEFAULT_CONTENT_TTL, DEFAULT_FILL_MIN_RATE, DEFAULT_FILL_RATE_WINDOW,
    DEFAULT_MAX_FETCHES, DEFAULT_NOT_FOUND_TTL, DEFAULT_TAG_TTL, DOCKER_HUB,
};
pub use registries::RegistryConfig;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

pub use schema::SchemaError;

#[derive(Debug, Clone)]
pub struct Config {
    pub http: HttpConfig,
    pub storage: StorageConfig,
    /// The default upstream (Docker Hub's role).
    pub proxy: ProxyConfig,
    /// Further registries (`registries:`), sorted by host.
    pub registries: Vec<RegistryConfig>,
    pub log: LogConfig,
    pub health: HealthConfig,
    pub access: AccessConfig,
    /// The byte budget and pins (`cache:`).
    pub cache: CacheConfig,
    /// Who may use the admin actions (`admin:`).
    pub admin: AdminConfig,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive, from `log.level`.
    pub level: String,
    /// `log.formatter`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line (Distribution's `json`; its `logstash` is read as this too).
    Json,
}

/// Why a configuration could not be loaded. Every variant names the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("{0}")]
    Schema(#[from] SchemaError),
    #[error("configuration key `{key}` has a bad value: {reason}")]
    BadValue { key: String, reason: String },
}

/// A loaded configuration and what the operator should be told about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Whether some registry, the default upstream or one of `registries:`, is offline.
    pub fn any_offline(&self) -> bool {
        self.proxy.offline || self.registries.iter().any(|r| r.upstream.offline)
    }

    /// Loads a configuration file and applies `REGISTRY_*` overrides from `env`.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let document: Value =
            serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Yaml {
                path: path.to_owned(),
                source,
            })?;
        Self::from_document(document, env)
    }

    /// Builds a configuration from YAML text, for tests and embedding.
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let document: Value =
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Yaml {
                path: PathBuf::from("<inline>"),
                source,
            })?;
        Self::from_document(document, env)
    }

    fn from_document(
        mut document: Value,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut warnings = Vec::new();
        for var in schema::apply_env_overrides(&mut document, env) {
            warnings.push(format!(
                "ignoring environment variable {var}: it names no configuration key"
            ));
        }
        for key in schema::check(&document)? {
            warnings.push(format!(
                "configuration key `{key}` is part of Distribution's schema but not implemented by cistern; it is ignored"
            ));
        }
        if document.is_null() {
            document = Value::Mapping(Default::default());
        }
        let raw: RawConfig =
            serde_path_to_error::deserialize(document).map_err(|e| ConfigError::BadValue {
                key: e.path().to_string(),
                reason: e.inner().to_string(),
            })?;
        let config = raw.validate()?;
        warnings.extend(open_credentials(&config));
        Ok(Loaded { config, warnings })
    }
}

/// Warnings for upstream credentials any client could use: nothing restricts who may pull
/// through the mirror, or which repositories.
fn open_credentials(config: &Config) -> Vec<String> {
    let access = &config.access;
    let default_host = config.proxy.remote_url.host_str().unwrap_or("upstream");
    let mut sections = vec![(default_host, config.proxy.credentials.as_ref(), false)];
    for registry in &config.registries {
        let own_allow = !registry.allow.is_empty();
        sections.push((
            registry.host.as_str(),
            registry.upstream.credentials.as_ref(),
            own_allow,
        ));
    }
    sections
        .into_iter()
        .filter_map(|(section, credentials, own_allow)| {
            let credentials = credentials?;
            (!access.restricts_clients() && !own_allow).then(|| format!(
                "UPSTREAM CREDENTIALS ARE OPEN TO EVERY CLIENT: anyone who can reach this mirror can pull every image, private ones included, that the {section} account {:?} can read. Restrict it with auth.htpasswd, access.sources or access.repositories.allow",
                credentials.username
            ))
        })
        .collect()
}

/// The file as written, before defaults and validation. Unknown keys were already rejected by
/// the schema check, so serde may skip the ignored ones here.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConfig {
    http: RawHttp,
    storage: RawStorage,
    proxy: RawProxy,
    registries: BTreeMap<String, RawProxy>,
    log: RawLog,
    health: RawHealth,
    auth: access::RawAuth,
    access: access::RawAccess,
    cache: cache::RawCache,
    admin: admin::RawAdmin,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLog {
    level: Option<String>,
    formatter: Option<String>,
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let (mut proxy, mut listed) = (self.proxy, self.registries);
        registries::merge_docker_hub(&mut proxy, &mut listed)?;
        let proxy = proxy.validate_default()?;
        let storage = self.storage.validate()?;
        let cache = self.cache.validate()?;
        if cache.min_free.is_some() && !matches!(storage, StorageConfig::Filesystem { .. }) {
            return Err(bad(
                "cache.minfree",
                "keeps free space on a filesystem store's disk; with object storage, set cache.maxsize",
            ));
        }
        Ok(Config {
            http: self.http.validate()?,
            storage,
            registries: registries::validate(listed, &proxy)?,
            proxy,
            log: self.log.validate()?,
            health: self.health.validate()?,
            access: access::validate(self.auth, self.access)?,
            cache,
            admin: self.admin.validate()?,
        })
    }
}

impl RawLog {
    fn validate(self) -> Result<LogConfig, ConfigError> {
        let level = self.level.unwrap_or_else(|| "info".to_owned());
        if !matches!(
            level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(bad(
                "log.level",
                format!("{level:?} is not one of error, warn, info, debug, trace"),
            ));
        }
        let format = match self.formatter.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" | "logstash" => LogFormat::Json,
            other => {
                return Err(bad(
                    "log.formatter",
                    format!("{other:?} is not one of text, json, logstash"),
                ))
            }
        };
        Ok(LogConfig { level, format })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::time::Duration;

    const DISTRIBUTION_EXAMPLE: &str = r#"
version: 0.1
log: {fields: {service: registry}}
storage:
  cache: {blobdescriptor: inmemory}
  filesystem: {rootdirectory: /var/lib/registry}
http:
  addr: :5000
  headers: {X-Content-Type-Options: [nosniff]}
health: {storagedriver: {enabled: true, interval: 10s, threshold: 3}}
proxy:
  remoteurl: https://registry-1.docker.io
  username: someuser
  password: some-access-token
"#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn distribution_proxy_config_loads_unchanged() {
        let loaded = Config::from_yaml(DISTRIBUTION_EXAMPLE, no_env()).unwrap();
        let c = loaded.config;
        assert_eq!(c.http.addr, "0.0.0.0:5000");
        assert_eq!(c.http.headers.len(), 1);
        assert!(matches!(
            &c.storage,
            StorageConfig::Filesystem { root_directory } if root_directory == &PathBuf::from("/var/lib/registry")
        ));
        assert_eq!(c.proxy.remote_url.as_str(), "https://registry-1.docker.io/");
        let creds = c.proxy.credentials.unwrap();
        assert_eq!(creds.username, "someuser");
        assert_eq!(creds.password.expose_secret(), "some-access-token");
        assert_eq!(c.proxy.tag_ttl, DEFAULT_TAG_TTL);
        let check = c.health.storage.unwrap();
        assert_eq!(
            (check.interval, check.threshold),
            (Duration::from_secs(10), 3)
        );
        // log.fields and storage.cache are Distribution's but not cistern's; the credentials
        // are open to every client.
        assert_eq!(loaded.warnings.len(), 3, "{:?}", loaded.warnings);
    }

    #[test]
    fn production_keys_have_safe_defaults_and_name_bad_values() {
        let c = Config::from_yaml("", no_env()).unwrap().config;
        let debug = c.http.debug.unwrap();
        assert_eq!(debug.addr, "127.0.0.1:5001");
        assert!(
            !debug.addr_configured,
            "the default may be skipped if taken"
        );
        assert_eq!(debug.metrics_path.as_deref(), Some("/metrics"));
        assert!(c.http.tls.is_none());
        assert_eq!(c.http.drain_timeout, Duration::from_secs(25));
        assert_eq!(c.http.header_timeout, Duration::from_secs(30));
        assert_eq!(c.http.max_connections, None);
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.health.storage.is_some());

        let yaml = "log: {formatter: json}\nhttp: {debug: {addr: ':9001', prometheus: {enabled: false}}, draintimeout: 3s, timeouts: {header: 2s}, maxconnections: 100, tls: {certificate: /c.pem, key: /k.pem}}\nhealth: {storagedriver: {enabled: false}}\n";
        let c = Config::from_yaml(yaml, no_env()).unwrap().config;
        assert_eq!(c.log.format, LogFormat::Json);
        let debug = c.http.debug.unwrap();
        assert!(debug.addr_configured);
        assert_eq!(
            (debug.addr.as_str(), debug.metrics_path),
            ("0.0.0.0:9001", None)
        );
        assert_eq!(c.http.drain_timeout, Duration::from_secs(3));
        assert_eq!(c.http.header_timeout, Duration::from_secs(2));
        assert_eq!(c.http.max_connections, Some(100));
        assert_eq!(c.http.tls.unwrap().key, PathBuf::from("/k.pem"));
        assert!(c.health.storage.is_none());
        let off = Config::from_yaml("http: {debug: {addr: ''}}", no_env()).unwrap();
        assert!(off.config.http.debug.is_none());

        for (yaml, key) in [
            ("log: {formatter: xml}", "log.formatter"),
            ("http: {tls: {certificate: /c.pem}}", "http.tls.key"),
            ("http: {debug: {addr: nowhere}}", "http.debug.addr"),
            (
                "http: {debug: {prometheus: {path: metrics}}}",
                "http.debug.prometheus.path",
            ),
            ("http: {draintimeout: 5}", "http.draintimeout"),
            ("http: {timeouts: {header: 0}}", "http.timeouts.header"),
            ("http: {timeouts: {header: soon}}", "http.timeouts.header"),
            ("http: {maxconnections: 0}", "http.maxconnections"),
            ("http: {maxconnections: lots}", "http.maxconnections"),
            (
                "health: {storagedriver: {interval: 0}}",
                "health.storagedriver.interval",
            ),
            ("cache: {minfree: 150%}", "cache.minfree"),
            (
                "storage: {inmemory: {}}\ncache: {minfree: 1GiB}",
                "cache.minfree",
            ),
        ] {
            let error = Config::from_yaml(yaml, no_env()).unwrap_err().to_string();
            assert!(error.contains(key), "{yaml}: {error}");
        }
    }

    #[test]
    fn empty_file_means_anonymous_docker_hub_on_5000() {
        let c = Config::from_yaml("", no_env()).unwrap().config;
        assert_eq!(c.http.addr, "0.0.0.0:5000");
        assert_eq!(c.proxy.remote_url.as_str(), "https://registry-1.docker.io/");
        assert!(c.proxy.credentials.is_none());
        assert!(matches!(
            &c.storage,
            StorageConfig::Filesystem { root_directory } if root_directory == &PathBuf::from("./storage")
        ));
    }

    #[test]
    fn environment_overrides_win() {
        let env = [
            ("REGISTRY_PROXY_USERNAME", "envuser"),
            ("REGISTRY_PROXY_PASSWORD", "123456"),
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000"),
            ("REGISTRY_PROXY_TAGTTL", "90s"),
            ("REGISTRY_PROXY_MAXFETCHES", "8"),
            ("REGISTRY_PROXY_NOTFOUNDTTL", "1m"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::from_yaml(DISTRIBUTION_EXAMPLE, env).unwrap().config;
        assert_eq!(c.http.addr, "127.0.0.1:6000");
        let creds = c.proxy.credentials.unwrap();
        assert_eq!(creds.username, "envuser");
        assert_eq!(creds.password.expose_secret(), "123456");
        assert_eq!(c.proxy.tag_ttl, Duration::from_secs(90));
        assert_eq!(c.proxy.max_fetches, 8);
        assert_eq!(c.proxy.not_found_ttl, Duration::from_secs(60));
    }

    #[test]
    fn empty_credentials_mean_anonymous() {
        let env = [
            ("REGISTRY_PROXY_USERNAME", ""),
            ("REGISTRY_PROXY_PASSWORD", ""),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::from_yaml("proxy: {remoteurl: https://r}", env)
            .unwrap()
            .config;
        assert!(c.proxy.credentials.is_none());
    }

    #[test]
    fn storage_drivers_in_distribution_keys() {
        let s3 = "storage:\n  s3:\n    bucket: cache\n    region: eu-west-1\n    regionendpoint: http://127.0.0.1:9000\n    accesskey: AKIA\n    secretkey: s3cr3t\n    rootdirectory: /mirror/\n    encrypt: false\n";
        let loaded = Config::from_yaml(s3, Vec::new()).unwrap();
        assert_eq!(
            loaded.warnings.len(),
            1,
            "encrypt is ignored with a warning"
        );
        let StorageConfig::S3(c) = loaded.config.storage else {
            panic!("s3 expected")
        };
        assert_eq!(c.bucket, "cache");
        assert_eq!(c.root_directory, "mirror");
        assert!(c.allow_http && c.force_path_style);
        assert_eq!(c.secret_key.unwrap().expose_secret(), "s3cr3t");

        let env =
            [("REGISTRY_STORAGE_S3_BUCKET", "from-env")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::from_yaml("storage: {s3: {bucket: x, forcepathstyle: 'false'}}", env)
            .unwrap()
            .config;
        let StorageConfig::S3(c) = c.storage else {
            panic!("s3 expected")
        };
        assert_eq!(c.bucket, "from-env");
        assert!(!c.force_path_style);

        let c = Config::from_yaml("storage: {inmemory: }", Vec::new())
            .unwrap()
            .config;
        assert!(matches!(c.storage, StorageConfig::InMemory));
        let c = Config::from_yaml("storage: {gcs: {bucket: b}}", Vec::new())
            .unwrap()
            .config;
        assert!(matches!(c.storage, StorageConfig::Gcs(_)));
        let c = Config::from_yaml(
            "storage: {azure: {accountname: a, container: c}}",
            Vec::new(),
        )
        .unwrap()
        .config;
        assert!(matches!(c.storage, StorageConfig::Azure(_)));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("proxy: {tagttl: soon}", "proxy.tagttl"),
            ("proxy: {notfoundttl: -1}", "proxy.notfoundttl"),
            ("proxy: {maxfetches: 0}", "proxy.maxfetches"),
            ("proxy: {maxfetches: many}", "proxy.maxfetches"),
            ("proxy: {fillminrate: lots}", "proxy.fillminrate"),
            ("proxy: {fillratewindow: soon}", "proxy.fillratewindow"),
            ("proxy: {offline: maybe}", "proxy.offline"),
            (
                "registries: {ghcr.io: {offline: 2}}",
                "registries.ghcr.io.offline",
            ),
            ("storage: {s3: {region: x}}", "storage.s3.bucket"),
            (
                "storage: {s3: {bucket: b, accesskey: a}}",
                "storage.s3.secretkey",
            ),
            (
                "storage: {s3: {bucket: b, secretkey: a}}",
                "storage.s3.accesskey",
            ),
            (
                "storage: {s3: {bucket: b, regionendpoint: 'not a url'}}",
                "storage.s3.regionendpoint",
            ),
            (
                "storage: {s3: {bucket: b, secure: maybe}}",
                "storage.s3.secure",
            ),
            ("storage: {gcs: {keyfile: k}}", "storage.gcs.bucket"),
            (
                "storage: {azure: {container: c}}",
                "storage.azure.accountname",
            ),
            (
                "storage: {inmemory: , filesystem: {rootdirectory: /x}}",
                "storage",
            ),
            ("proxy: {remoteurl: 'not a url'}", "proxy.remoteurl"),
            ("proxy: {remoteurl: 'ftp://x'}", "proxy.remoteurl"),
            ("proxy: {username: u}", "proxy.password"),
            ("http: {addr: nowhere}", "http.addr"),
            (
                "http: {headers: {'Bad Header': [x]}}",
                "http.headers.Bad Header",
            ),
            ("log: {level: loud}", "log.level"),
            ("proxy: {ttl: [1]}", "proxy.ttl"),
            ("http: {addr: [1]}", "http.addr"),
        ];
        for (yaml, key) in cases {
            let err = Config::from_yaml(yaml, no_env()).unwrap_err();
            assert!(
                matches!(&err, ConfigError::BadValue { key: k, .. } if k == key),
                "{yaml}: {err}"
            );
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn offline_is_inherited_by_registries_and_set_from_the_environment() {
        let yaml = "registries: {ghcr.io: {}, quay.io: {offline: false}}\n";
        let c = Config::from_yaml(yaml, no_env()).unwrap().config;
        assert!(!c.proxy.offline, "online unless asked");
        assert!(!c.registries[0].upstream.offline);

        let env = [("REGISTRY_PROXY_OFFLINE".to_owned(), "true".to_owned())];
        let c = Config::from_yaml(yaml, env).unwrap().config;
        assert!(c.proxy.offline);
        let hosts: Vec<(&str, bool)> = c
            .registries
            .iter()
            .map(|r| (r.host.as_str(), r.upstream.offline))
            .collect();
        assert_eq!(hosts, [("ghcr.io", true), ("quay.io", false)]);

        let yaml = "registries: {ghcr.io: {offline: true}}\n";
        let c = Config::from_yaml(yaml, no_env()).unwrap().config;
        assert!(!c.proxy.offline && c.registries[0].upstream.offline);
    }

    #[test]
    fn registries_take_proxys_keys_default_to_their_host_and_inherit_tuning() {
        let yaml = "proxy: {tagttl: 2m, maxfetches: 4}\nregistries:\n  ghcr.io: {}\n  Quay.io: {username: me, password: token, tagttl: 1h}\n  'mirror.internal:5000': {remoteurl: 'http://10.0.0.5:5000', repositories: {allow: ['team/**']}}\n  docker.io: {}\n";
        let loaded = Config::from_yaml(yaml, no_env()).unwrap();
        let r = &loaded.config.registries;
        let hosts: Vec<&str> = r.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(hosts, ["ghcr.io", "mirror.internal:5000", "quay.io"]);
        assert_eq!(r[0].upstream.remote_url.as_str(), "https://ghcr.io/");
        assert_eq!(r[0].upstream.tag_ttl, Duration::from_secs(120));
        assert_eq!(r[0].upstream.max_fetches, 4);
        assert!(r[0].upstream.credentials.is_none());
        assert_eq!(r[1].upstream.remote_url.as_str(), "http://10.0.0.5:5000/");
        assert!(r[1].allow.matches("mirror.internal:5000/team/app"));
        assert!(!r[1].allow.matches("team/app"));
        assert_eq!(r[2].upstream.tag_ttl, Duration::from_secs(3600));
        let creds = r[2].upstream.credentials.as_ref().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.expose_secret()),
            ("me", "token")
        );
        assert!(
            !format!("{loaded:?}").contains("token\""),
            "the password stays hidden"
        );
        let open: Vec<_> = loaded
            .warnings
            .iter()
            .filter(|w| w.contains("OPEN TO EVERY CLIENT"))
            .collect();
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(open[0].contains("quay.io") && !open[0].contains("token"));

        let env = [
            ("REGISTRY_REGISTRIES_GHCR_IO_USERNAME", "u"),
            ("REGISTRY_REGISTRIES_GHCR_IO_PASSWORD", "p"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::from_yaml(yaml, env).unwrap().config;
        let creds = c.registries[0].upstream.credentials.as_ref().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.expose_secret()),
            ("u", "p")
        );

        for (yaml, key) in [
            ("registries: {ghcr: {}}", "registries.ghcr"),
            (
                "registries: {'https://ghcr.io': {}}",
                "registries.https://ghcr.io",
            ),
            ("registries: {ghcr.io/x: {}}", "registries.ghcr.io/x"),
            (
                "registries: {ghcr.io: {remoteurl: 'ftp://x'}}",
                "registries.ghcr.io.remoteurl",
            ),
            (
                "registries: {ghcr.io: {username: u}}",
                "registries.ghcr.io.password",
            ),
            ("registries: {ghcr.io: {ttl: 1h}}", "registries.ghcr.io.ttl"),
            (
                "registries: {ghcr.io: {tagttl: soon}}",
                "registries.ghcr.io.tagttl",
            ),
            (
                "registries: {ghcr.io: {maxfetches: 0}}",
                "registries.ghcr.io.maxfetches",
            ),
            (
                "registries: {ghcr.io: {repositories: {allow: ['a/[b']}}}",
                "registries.ghcr.io.repositories.allow",
            ),
            (
                "proxy: {username: a, password: b}\nregistries: {docker.io: {username: u, password: b}}",
                "registries.docker.io.username",
            ),
            (
                "registries: {docker.io: {repositories: {allow: [x]}}}",
                "registries.docker.io.repositories",
            ),
            (
                "proxy: {remoteurl: 'http://127.0.0.1:5000'}\nregistries: {'127.0.0.1:5000': {tagttl: 1m}}",
                "registries.127.0.0.1:5000",
            ),
            (
                "registries: {ghcr.io: {}, GHCR.io: {}}",
                "registries.ghcr.io",
            ),
        ] {
            let err = Config::from_yaml(yaml, no_env()).unwrap_err();
            assert!(
                matches!(&err, ConfigError::BadValue { key: k, .. } if k == key),
                "{yaml}: {err}"
            );
        }
        // Docker Hub listed under `registries:` is the default upstream, configured there.
        let c = Config::from_yaml(
            "registries: {docker.io: {remoteurl: 'http://127.0.0.1:5000', username: u, password: p}, ghcr.io: {}}",
            no_env(),
        )
        .unwrap()
        .config;
        assert_eq!(c.proxy.remote_url.as_str(), "http://127.0.0.1:5000/");
        assert_eq!(c.proxy.credentials.unwrap().username, "u");
        assert_eq!(c.registries.len(), 1);
        let c = Config::from_yaml(
            "proxy: {tagttl: 1m}\nregistries: {Index.Docker.io: {tagttl: 1m, maxfetches: 3}}",
            no_env(),
        )
        .unwrap()
        .config;
        assert_eq!(
            (c.proxy.tag_ttl, c.proxy.max_fetches),
            (Duration::from_secs(60), 3)
        );
        assert!(c.registries.is_empty());

        let err = Config::from_yaml("registries: {ghcr.io: {tagtl: 1m}}", no_env()).unwrap_err();
        assert!(
            err.to_string().contains("`registries.ghcr.io.tagtl`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_stops_start_up_with_its_name() {
        let err =
            Config::from_yaml("proxy: {remoteurl: https://x, tagtl: 1m}", no_env()).unwrap_err();
        assert!(err.to_string().contains("`proxy.tagtl`"), "{err}");
    }

    /// The key tree (`schema.rs`) and the `Raw*` structs are written separately; a key declared
    /// in one but not read by the other would be accepted and silently do nothing. So every key
    /// the schema says cistern reads must reach serde: given a value of the wrong shape, loading
    /// fails naming exactly that key.
    #[test]
    fn every_key_the_schema_declares_is_read_by_the_config_structs() {
        fn used_leaves(key: &schema::Key, path: &str, out: &mut Vec<String>) {
            match key {
                schema::Key::Used => out.push(path.to_owned()),
                schema::Key::Section(children) => {
                    for (name, child) in children.iter() {
                        let child_path = if path.is_empty() {
                            (*name).to_owned()
                        } else {
                            format!("{path}.{name}")
                        };
                        used_leaves(child, &child_path, out);
                    }
                }
                // A registry section's keys, under an example host.
                schema::Key::MapOf(child) => {
                    used_leaves(child, &format!("{path}.example.com"), out)
                }
                schema::Key::FreeMap | schema::Key::Ignored => {}
            }
        }
        let mut leaves = Vec::new();
        used_leaves(&schema::ROOT, "", &mut leaves);
        // `version` is checked by the schema only: like Distribution, any value is accepted.
        leaves.retain(|leaf| leaf != "version");
        assert!(leaves.contains(&"http.timeouts.header".to_owned()));
        assert!(leaves.contains(&"registries.example.com.tagttl".to_owned()));
        for leaf in leaves {
            let mut text = String::new();
            // The example host is one key, dot and all.
            let names: Vec<&str> = match leaf.strip_prefix("registries.example.com.") {
                Some(rest) => ["registries", "example.com"]
                    .into_iter()
                    .chain(rest.split('.'))
                    .collect(),
                None => leaf.split('.').collect(),
            };
            for (depth, name) in names.iter().enumerate() {
                text.push_str(&format!("{}{name}:\n", "  ".repeat(depth)));
            }
            text.push_str(&format!("{}wrong: shape\n", "  ".repeat(names.len())));
            match Config::from_yaml(&text, no_env()) {
                Err(ConfigError::BadValue { key, .. }) => assert_eq!(key, leaf, "{text}"),
                other => panic!(
                    "`{leaf}` is declared in the schema but not read: {:?}",
                    other.map(|_| "loaded")
                ),
            }
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let c = Config::from_yaml(DISTRIBUTION_EXAMPLE, no_env())
            .unwrap()
            .config;
        let debug = format!("{c:?}");
        assert!(!debug.contains("some-access-token"), "{debug}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Key paths cistern reads, and a few it does not, to build plausible documents from.
    const PATHS: &[&str] = &[
        "version",
        "log.level",
        "log.formatter",
        "log.fields.service",
        "http.addr",
        "http.headers.X-Test",
        "http.debug.addr",
        "http.debug.prometheus.enabled",
        "http.debug.prometheus.path",
        "http.draintimeout",
        "http.timeouts.header",
        "http.maxconnections",
        "http.tls.certificate",
        "http.tls.key",
        "storage.filesystem.rootdirectory",
        "storage.inmemory",
        "storage.s3.bucket",
        "storage.s3.regionendpoint",
        "storage.s3.forcepathstyle",
        "storage.gcs.bucket",
        "storage.azure.accountname",
        "proxy.remoteurl",
        "proxy.username",
        "proxy.password",
        "proxy.ttl",
        "proxy.tagttl",
        "proxy.notfoundttl",
        "proxy.maxfetches",
        "proxy.fillminrate",
        "proxy.fillratewindow",
        "proxy.offline",
        "health.storagedriver.enabled",
        "health.storagedriver.interval",
        "health.storagedriver.threshold",
        "auth.htpasswd.realm",
        "auth.htpasswd.path",
        "access.sources",
        "access.repositories.allow",
        "access.repositories.deny",
        "admin.token",
        "typo.key",
    ];

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            any::<f64>().prop_map(|f| Value::Number(f.into())),
            "[ -~]{0,24}".prop_map(Value::String),
            proptest::collection::vec("[ -~]{0,12}".prop_map(Value::String), 0..3)
                .prop_map(Value::Sequence),
        ]
    }

    fn document() -> impl Strategy<Value = Value> {
        proptest::collection::vec((proptest::sample::select(PATHS), scalar()), 0..8).prop_map(
            |entries| {
                let mut document = Value::Mapping(Default::default());
                for (path, value) in entries {
                    let path: Vec<String> = path.split('.').map(str::to_owned).collect();
                    schema_set(&mut document, &path, value);
                }
                document
            },
        )
    }

    /// Like the env override's setter, so the documents have the shapes a user would write.
    fn schema_set(document: &mut Value, path: &[String], value: Value) {
        let mut node = document;
        for name in path {
            if !node.is_mapping() {
                *node = Value::Mapping(Default::default());
            }
            let Value::Mapping(map) = node else {
                unreachable!()
            };
            node = map
                .entry(Value::String(name.clone()))
                .or_insert(Value::Null);
        }
        *node = value;
    }

    proptest! {
        #[test]
        fn any_text_loads_or_fails_naming_why(text in any::<String>()) {
            let _ = Config::from_yaml(&text, Vec::new());
        }

        #[test]
        fn any_document_and_environment_load_or_fail_without_panicking(
            document in document(),
            env in proptest::collection::vec(
                (proptest::sample::select(PATHS), "[ -~]{0,16}"), 0..4),
        ) {
            let env = env.into_iter().map(|(path, value)| {
                (format!("REGISTRY_{}", path.replace('.', "_").to_uppercase()), value)
            });
            let text = serde_yaml_ng::to_string(&document).unwrap();
            if let Err(e) = Config::from_yaml(&text, env) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
