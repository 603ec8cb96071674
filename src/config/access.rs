//! Who may pull through the mirror: Distribution's `auth.htpasswd`, plus cistern's `access:`
//! section (source networks that may pull without credentials, and the repositories the stored
//! upstream credentials may be used for).

use std::path::PathBuf;

use globset::{GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::Deserialize;

use super::{bad, scalar, ConfigError};
use crate::registry::{is_registry_host, DOCKER_HUB_HOSTS};

#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Clients must present credentials from this file (`auth.htpasswd`).
    pub htpasswd: Option<HtpasswdConfig>,
    /// Clients from these networks are admitted without credentials (`access.sources`).
    pub sources: Vec<IpNet>,
    /// Repositories that may be pulled; empty allows all (`access.repositories.allow`).
    pub allow: Patterns,
    /// Repositories that may never be pulled, whatever `allow` says (`access.repositories.deny`).
    pub deny: Patterns,
}

#[derive(Debug, Clone)]
pub struct HtpasswdConfig {
    pub realm: String,
    pub path: PathBuf,
}

/// Repository name patterns, matched against names as this mirror shows them
/// (`library/alpine`, `ghcr.io/owner/app`): `*` stays within one path segment, `**` crosses
/// them. In `access.repositories`, a pattern without a registry host means the default
/// upstream, and one without `/` is a Docker Hub official image (`alpine` means
/// `library/alpine`, as `docker pull alpine` does); a host alone (`ghcr.io`) is that whole
/// registry. In a registry's own section, patterns are relative to it (`myorg/**`).
///
/// A pattern without a host never matches another registry's names, even where its globs
/// could stand for a host (`*/app`, `**`): it was written for Docker Hub.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    written: Vec<String>,
    /// Patterns for the default upstream's names.
    default_set: GlobSet,
    /// Patterns that start with a registry host.
    registry_set: GlobSet,
    /// A pattern named the default upstream as a whole (`docker.io`).
    whole_default: bool,
}

/// Where a pattern list applies.
#[derive(Debug, Clone, Copy)]
pub(super) enum PatternScope<'a> {
    /// `access.repositories`: every registry, by the names this mirror shows.
    Mirror,
    /// A registry's own section: names within that registry.
    Registry(&'a str),
}

impl Patterns {
    pub(super) fn parse(
        key: &str,
        written: Vec<String>,
        scope: PatternScope,
    ) -> Result<Patterns, ConfigError> {
        let mut default_builder = GlobSetBuilder::new();
        let mut registry_builder = GlobSetBuilder::new();
        let mut whole_default = false;
        for pattern in &written {
            let normalised = match scope {
                PatternScope::Registry(host) => format!("{host}/{pattern}"),
                PatternScope::Mirror => match normalise(pattern) {
                    Some(normalised) => normalised,
                    None => {
                        whole_default = true;
                        continue;
                    }
                },
            };
            let glob = globset::GlobBuilder::new(&normalised)
                .literal_separator(true)
                .build()
                .map_err(|e| bad(key, format!("{pattern:?} is not a valid pattern: {e}")))?;
            if names_a_registry(&normalised) {
                registry_builder.add(glob);
            } else {
                default_builder.add(glob);
            }
        }
        let build = |builder: GlobSetBuilder| {
            builder
                .build()
                .map_err(|e| bad(key, format!("cannot use these patterns: {e}")))
        };
        Ok(Patterns {
            written,
            default_set: build(default_builder)?,
            registry_set: build(registry_builder)?,
            whole_default,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Whether `name` (as this mirror shows it, e.g. `library/alpine`) matches any pattern.
    pub fn matches(&self, name: &str) -> bool {
        if names_a_registry(name) {
            self.registry_set.is_match(name)
        } else {
            self.whole_default || self.default_set.is_match(name)
        }
    }
}

/// A pattern of `access.repositories` as it matches names: Docker Hub's host dropped and its
/// `library/` rule applied; a host alone widened to its whole registry. None for a pattern
/// that is Docker Hub as a whole.
fn normalise(pattern: &str) -> Option<String> {
    let (first, rest) = match pattern.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (pattern, None),
    };
    if DOCKER_HUB_HOSTS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(first))
    {
        return rest.map(normalise_default);
    }
    if is_registry_host(first) {
        let host = first.to_ascii_lowercase();
        return Some(match rest {
            Some(rest) => format!("{host}/{rest}"),
            None => format!("{host}/**"),
        });
    }
    Some(normalise_default(pattern))
}

/// A pattern for the default upstream: one without `/` is an official image.
fn normalise_default(pattern: &str) -> String {
    if pattern.contains('/') || pattern.starts_with("**") {
        pattern.to_owned()
    } else {
        format!("library/{pattern}")
    }
}

/// Whether a name as this mirror shows it belongs to a registry other than the default.
fn names_a_registry(name: &str) -> bool {
    name.split_once('/')
        .is_some_and(|(first, _)| is_registry_host(first))
}

impl AccessConfig {
    /// Whether anything restricts who may use the stored upstream credentials.
    pub fn restricts_clients(&self) -> bool {
        self.htpasswd.is_some() || !self.sources.is_empty() || !self.allow.is_empty()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAuth {
    htpasswd: Option<RawHtpasswd>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawHtpasswd {
    realm: Option<String>,
    path: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAccess {
    #[serde(deserialize_with = "scalar::deserialize_list")]
    sources: Vec<String>,
    repositories: RawRepositories,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawRepositories {
    #[serde(deserialize_with = "scalar::deserialize_list")]
    pub(super) allow: Vec<String>,
    #[serde(deserialize_with = "scalar::deserialize_list")]
    pub(super) deny: Vec<String>,
}

impl RawRepositories {
    pub(super) fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

pub(super) fn validate(auth: RawAuth, access: RawAccess) -> Result<AccessConfig, ConfigError> {
    let htpasswd = match auth.htpasswd {
        None => None,
        Some(raw) => Some(HtpasswdConfig {
            realm: raw.realm.unwrap_or_else(|| "cistern".to_owned()),
            path: raw.path.ok_or_else(|| {
                bad(
                    "auth.htpasswd.path",
                    "missing: auth.htpasswd needs the path of an htpasswd file (bcrypt entries)",
                )
            })?,
        }),
    };
    let sources = access
        .sources
        .iter()
        .map(|source| parse_network(source))
        .collect::<Result<_, _>>()?;
    Ok(AccessConfig {
        htpasswd,
        sources,
        allow: Patterns::parse(
            "access.repositories.allow",
            access.repositories.allow,
            PatternScope::Mirror,
        )?,
        deny: Patterns::parse(
            "access.repositories.deny",
            access.repositories.deny,
            PatternScope::Mirror,
        )?,
    })
}

/// `10.0.0.0/8`, or a single address (`192.168.1.7`, `::1`).
fn parse_network(source: &str) -> Result<IpNet, ConfigError> {
    let source = source.trim();
    source
        .parse::<IpNet>()
        .or_else(|_| source.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            bad(
                "access.sources",
                format!("{source:?} is not an address or a network such as 10.0.0.0/8"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(written: &[&str]) -> Patterns {
        Patterns::parse(
            "k",
            written.iter().map(|p| p.to_string()).collect(),
            PatternScope::Mirror,
        )
        .unwrap()
    }

    #[test]
    fn patterns_may_name_a_registry_and_without_one_mean_the_default_upstream() {
        let ghcr = patterns(&["ghcr.io/myorg/**"]);
        assert!(ghcr.matches("ghcr.io/myorg/app"));
        assert!(!ghcr.matches("myorg/app"));
        assert!(!ghcr.matches("quay.io/myorg/app"));
        let hub = patterns(&["myorg/**"]);
        assert!(hub.matches("myorg/app"));
        assert!(!hub.matches("ghcr.io/myorg/app"));
        assert!(patterns(&["docker.io/alpine"]).matches("library/alpine"));
        assert!(patterns(&["Docker.io/myorg/*"]).matches("myorg/app"));
        let whole_quay = patterns(&["quay.io"]);
        assert!(whole_quay.matches("quay.io/a/b"));
        assert!(!whole_quay.matches("library/alpine"));
        assert!(!patterns(&["*/app"]).matches("ghcr.io/app"));
        assert!(!patterns(&["**"]).matches("ghcr.io/a/b"));
        assert!(patterns(&["**"]).matches("a/b/c"));
        let whole_hub = patterns(&["docker.io"]);
        assert!(whole_hub.matches("library/alpine"));
        assert!(whole_hub.matches("a/b/c"));
        assert!(!whole_hub.matches("ghcr.io/a/b"));
        let registry_own = Patterns::parse(
            "k",
            vec!["myorg/**".into(), "app".into()],
            PatternScope::Registry("ghcr.io"),
        )
        .unwrap();
        assert!(registry_own.matches("ghcr.io/myorg/x"));
        assert!(registry_own.matches("ghcr.io/app"));
        assert!(!registry_own.matches("myorg/x"));
    }

    #[test]
    fn patterns_keep_star_within_a_segment_and_read_short_names_as_official_images() {
        let official = patterns(&["library/*"]);
        assert!(official.matches("library/alpine"));
        assert!(!official.matches("library/a/b"));
        assert!(!official.matches("private/secret"));
        assert!(patterns(&["alpine"]).matches("library/alpine"));
        assert!(patterns(&["*"]).matches("library/alpine"));
        assert!(!patterns(&["*"]).matches("bitnami/redis"));
        assert!(patterns(&["**"]).matches("a/b/c"));
        assert!(patterns(&["team/**"]).matches("team/x/y"));
        assert!(!patterns(&[]).matches("library/alpine"));
    }

    #[test]
    fn sources_are_networks_or_addresses() {
        assert_eq!(
            parse_network("10.0.0.0/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert!(parse_network("127.0.0.1")
            .unwrap()
            .contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        assert!(parse_network("::1").is_ok());
        let error = parse_network("10.0.0.0/33").unwrap_err().to_string();
        assert!(error.contains("access.sources"), "{error}");
    }
}
