//! Who may pull through the mirror: Distribution's `auth.htpasswd`, plus cistern's `access:`
//! section (source networks that may pull without credentials, and the repositories the stored
//! upstream credentials may be used for).

use std::path::PathBuf;

use globset::{GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::Deserialize;

use super::{bad, scalar, ConfigError};

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

/// Repository name patterns: `*` stays within one path segment, `**` crosses them, and a
/// pattern without `/` is a Docker Hub official image (`alpine` means `library/alpine`, as
/// `docker pull alpine` does).
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    written: Vec<String>,
    set: GlobSet,
}

impl Patterns {
    fn parse(key: &str, written: Vec<String>) -> Result<Patterns, ConfigError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &written {
            let normalised = if pattern.contains('/') || pattern.starts_with("**") {
                pattern.clone()
            } else {
                format!("library/{pattern}")
            };
            let glob = globset::GlobBuilder::new(&normalised)
                .literal_separator(true)
                .build()
                .map_err(|e| bad(key, format!("{pattern:?} is not a valid pattern: {e}")))?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|e| bad(key, format!("cannot use these patterns: {e}")))?;
        Ok(Patterns { written, set })
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Whether `name` (normalised, e.g. `library/alpine`) matches any pattern.
    pub fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }
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
struct RawRepositories {
    #[serde(deserialize_with = "scalar::deserialize_list")]
    allow: Vec<String>,
    #[serde(deserialize_with = "scalar::deserialize_list")]
    deny: Vec<String>,
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
        allow: Patterns::parse("access.repositories.allow", access.repositories.allow)?,
        deny: Patterns::parse("access.repositories.deny", access.repositories.deny)?,
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
        Patterns::parse("k", written.iter().map(|p| p.to_string()).collect()).unwrap()
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
