//! An upstream registry's section: `proxy:` (Distribution's, the default upstream) and, with
//! the same keys, each entry of cistern's `registries:`.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use super::access::RawRepositories;
use super::{bad, duration, scalar, ConfigError};
use crate::registry::{RegistryId, RepoName};

/// Docker Hub's registry endpoint, the upstream when the config names none.
pub const DOCKER_HUB: &str = "https://registry-1.docker.io";
/// Default for `proxy.tagttl`: how long a tag is served without asking upstream.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(5 * 60);
/// Default for `proxy.notfoundttl`: how long a manifest upstream does not have is answered 404
/// without asking again, so a loop of bad pulls does not hammer upstream.
pub const DEFAULT_NOT_FOUND_TTL: Duration = Duration::from_secs(30);
/// Default for `proxy.maxfetches`: blobs fetched from upstream at the same time.
pub const DEFAULT_MAX_FETCHES: usize = 32;
/// Default for `proxy.fillminrate`: bytes per second a blob fill must receive to keep its
/// upstream slot (see `proxy.fillratewindow`).
pub const DEFAULT_FILL_MIN_RATE: usize = 16 * 1024;
/// Default for `proxy.fillratewindow`: the window `proxy.fillminrate` is measured over. A fill
/// nobody reads is abandoned after one window below the rate; one a client reads, after ten.
pub const DEFAULT_FILL_RATE_WINDOW: Duration = Duration::from_secs(30);
/// Default for `proxy.ttl`, as in Distribution: cached content expires after a week.
pub const DEFAULT_CONTENT_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub remote_url: Url,
    /// Put before every repository name upstream (`k8s-artifacts-prod/images/`), with its
    /// trailing `/`; empty for none.
    pub repository_prefix: String,
    pub credentials: Option<Credentials>,
    /// How long cached content is kept; zero keeps it for ever.
    pub content_ttl: Duration,
    /// How long a tag is trusted before it is revalidated with an upstream HEAD.
    pub tag_ttl: Duration,
    /// How long a manifest upstream answered 404 for is answered 404 from memory; zero never.
    pub not_found_ttl: Duration,
    /// At most this many blobs are fetched from upstream at once; further fills queue.
    pub max_fetches: usize,
    /// Bytes per second a blob fill must receive to keep its slot; 0 turns the floor off.
    pub fill_min_rate: u64,
    /// The window `fill_min_rate` is measured over.
    pub fill_rate_window: Duration,
    /// Never contact this upstream: serve what is cached, answer the rest as not here.
    pub offline: bool,
}

/// Upstream credentials. The password is a secret: it never reaches logs or `Debug` output.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: SecretString,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawProxy {
    remoteurl: Option<String>,
    repositoryprefix: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(deserialize_with = "duration::deserialize_optional")]
    ttl: Option<Duration>,
    #[serde(deserialize_with = "duration::deserialize_optional")]
    tagttl: Option<Duration>,
    #[serde(deserialize_with = "duration::deserialize_optional")]
    notfoundttl: Option<Duration>,
    #[serde(deserialize_with = "scalar::deserialize_optional_count")]
    maxfetches: Option<usize>,
    #[serde(deserialize_with = "scalar::deserialize_optional_count")]
    fillminrate: Option<usize>,
    #[serde(deserialize_with = "duration::deserialize_optional")]
    fillratewindow: Option<Duration>,
    #[serde(deserialize_with = "scalar::deserialize_optional_bool")]
    offline: Option<bool>,
    /// Read in `registries:` sections only; the schema has no `proxy.repositories`, since
    /// `access.repositories` covers the default upstream.
    pub(super) repositories: RawRepositories,
}

impl RawProxy {
    /// `proxy:` itself: Docker Hub unless it says otherwise.
    pub(super) fn validate_default(self) -> Result<ProxyConfig, ConfigError> {
        self.validate("proxy", DOCKER_HUB, None)
    }

    /// The section at key `section`. `default_remote` is the upstream when it names none;
    /// a registry's section passes `proxy:` as `inherit`, whose tuning it takes for the keys it
    /// leaves out.
    pub(super) fn validate(
        self,
        section: &str,
        default_remote: &str,
        inherit: Option<&ProxyConfig>,
    ) -> Result<ProxyConfig, ConfigError> {
        let key = |name: &str| format!("{section}.{name}");
        let remote = self.remoteurl.as_deref().unwrap_or(default_remote);
        let remote_url = Url::parse(remote)
            .map_err(|e| bad(&key("remoteurl"), format!("{remote:?} is not a URL: {e}")))?;
        if !matches!(remote_url.scheme(), "http" | "https") || remote_url.host().is_none() {
            return Err(bad(
                &key("remoteurl"),
                format!("{remote:?} must be an http:// or https:// URL with a host"),
            ));
        }
        let repository_prefix = match self
            .repositoryprefix
            .as_deref()
            .map(|p| p.trim_matches('/'))
        {
            None | Some("") => String::new(),
            Some(prefix) => {
                RepoName::parse_in(&RegistryId::Host("upstream".into()), prefix).map_err(|e| {
                    bad(
                        &key("repositoryprefix"),
                        format!("{prefix:?} is not a repository path: {e}"),
                    )
                })?;
                format!("{prefix}/")
            }
        };
        // An empty value counts as unset, so `REGISTRY_PROXY_USERNAME=` (as docker compose
        // passes an unset variable) means anonymous.
        let username = self.username.filter(|u| !u.is_empty());
        let password = self.password.filter(|p| !p.is_empty());
        let credentials = match (username, password) {
            (None, None) => None,
            (Some(username), Some(password)) => Some(Credentials {
                username,
                password: SecretString::from(password),
            }),
            (Some(_), None) => {
                return Err(bad(
                    &key("password"),
                    format!(
                        "missing: {} is set, so a password or access token is needed",
                        key("username")
                    ),
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    &key("username"),
                    format!(
                        "missing: {} is set, so a username is needed",
                        key("password")
                    ),
                ))
            }
        };
        let content_ttl = match inherit {
            None => self.ttl.unwrap_or(DEFAULT_CONTENT_TTL),
            Some(_) if self.ttl.is_some() => {
                return Err(bad(
                    &key("ttl"),
                    "content is stored once for every registry, so only proxy.ttl sets how long it is kept",
                ))
            }
            Some(proxy) => proxy.content_ttl,
        };
        let max_fetches = self
            .maxfetches
            .or(inherit.map(|p| p.max_fetches))
            .unwrap_or(DEFAULT_MAX_FETCHES);
        if max_fetches == 0 {
            return Err(bad(
                &key("maxfetches"),
                "must be at least 1, or no blob could ever be fetched",
            ));
        }
        Ok(ProxyConfig {
            remote_url,
            repository_prefix,
            credentials,
            content_ttl,
            tag_ttl: self
                .tagttl
                .or(inherit.map(|p| p.tag_ttl))
                .unwrap_or(DEFAULT_TAG_TTL),
            not_found_ttl: self
                .notfoundttl
                .or(inherit.map(|p| p.not_found_ttl))
                .unwrap_or(DEFAULT_NOT_FOUND_TTL),
            max_fetches,
            fill_min_rate: self
                .fillminrate
                .map(|rate| rate as u64)
                .or(inherit.map(|p| p.fill_min_rate))
                .unwrap_or(DEFAULT_FILL_MIN_RATE as u64),
            fill_rate_window: self
                .fillratewindow
                .or(inherit.map(|p| p.fill_rate_window))
                .unwrap_or(DEFAULT_FILL_RATE_WINDOW),
            offline: self.offline.or(inherit.map(|p| p.offline)).unwrap_or(false),
        })
    }

    /// Takes the keys `other` (the section at key `other_section`) sets and this one does not:
    /// Docker Hub listed under `registries:` is the default upstream, configured in two places.
    /// A key both set to different values is an error naming both.
    pub(super) fn absorb(
        &mut self,
        other: RawProxy,
        other_section: &str,
    ) -> Result<(), ConfigError> {
        macro_rules! absorb_keys {
            ($($key:ident),*) => {$(
                match (&self.$key, other.$key) {
                    (_, None) => {}
                    (None, Some(value)) => self.$key = Some(value),
                    (Some(mine), Some(theirs)) if *mine == theirs => {}
                    (Some(_), Some(_)) => {
                        return Err(bad(
                            &format!("{other_section}.{}", stringify!($key)),
                            format!(
                                "proxy.{} is set to another value; Docker Hub is the default upstream, so set it in one place",
                                stringify!($key)
                            ),
                        ))
                    }
                }
            )*};
        }
        absorb_keys!(
            remoteurl,
            repositoryprefix,
            username,
            password,
            ttl,
            tagttl,
            notfoundttl,
            maxfetches,
            fillminrate,
            fillratewindow,
            offline
        );
        if !other.repositories.is_empty() {
            return Err(bad(
                &format!("{other_section}.repositories"),
                "Docker Hub's repositories are restricted with access.repositories",
            ));
        }
        Ok(())
    }

    /// Whether the section sets nothing (`docker.io: {}`).
    pub(super) fn is_empty(&self) -> bool {
        self.remoteurl.is_none()
            && self.repositoryprefix.is_none()
            && self.username.is_none()
            && self.password.is_none()
            && self.ttl.is_none()
            && self.tagttl.is_none()
            && self.notfoundttl.is_none()
            && self.maxfetches.is_none()
            && self.fillminrate.is_none()
            && self.fillratewindow.is_none()
            && self.offline.is_none()
            && self.repositories.is_empty()
    }
}
