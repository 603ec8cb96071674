//! `registries:` (cistern's extension): further registries mirrored beside the default
//! upstream, each by the host clients name it by, with `proxy:`'s keys.

use std::collections::BTreeMap;

use super::access::{PatternScope, Patterns};
use super::proxy::{ProxyConfig, RawProxy};
use super::{bad, ConfigError};
use crate::registry::{default_hosts, is_registry_host, DOCKER_HUB_HOSTS};

/// A registry mirrored beside the default upstream.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The host clients name it by (lowercase, with the port when they name one).
    pub host: String,
    pub upstream: ProxyConfig,
    /// Its repositories that may be pulled, written relative to it; empty allows all.
    pub allow: Patterns,
    /// Its repositories that may never be pulled.
    pub deny: Patterns,
}

/// Moves Docker Hub's entries (`docker.io`, `index.docker.io`, `registry-1.docker.io`) out of
/// `registries` into `proxy`: Docker Hub is the default upstream whether or not it is listed,
/// so a file that configures it under `registries:` means `proxy:`.
pub(super) fn merge_docker_hub(
    proxy: &mut RawProxy,
    registries: &mut BTreeMap<String, RawProxy>,
) -> Result<(), ConfigError> {
    let hub_names: Vec<String> = registries
        .keys()
        .filter(|host| {
            DOCKER_HUB_HOSTS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
        })
        .cloned()
        .collect();
    for host in hub_names {
        if let Some(section) = registries.remove(&host) {
            proxy.absorb(section, &format!("registries.{host}"))?;
        }
    }
    Ok(())
}

pub(super) fn validate(
    raw: BTreeMap<String, RawProxy>,
    proxy: &ProxyConfig,
) -> Result<Vec<RegistryConfig>, ConfigError> {
    let default_hosts = default_hosts(&proxy.remote_url);
    let mut registries: Vec<RegistryConfig> = Vec::new();
    for (host, mut section) in raw {
        let key = format!("registries.{host}");
        let lowercase = host.to_ascii_lowercase();
        check_host(&key, &lowercase)?;
        if default_hosts.contains(&lowercase) {
            // proxy.remoteurl's own host: always served as the default upstream; listing it
            // changes nothing, and its keys belong in one place.
            if !section.is_empty() {
                return Err(bad(
                    &key,
                    format!("{host} is the default upstream (proxy.remoteurl); set its keys under proxy: and leave this entry empty or remove it"),
                ));
            }
            continue;
        }
        if registries.iter().any(|r| r.host == lowercase) {
            return Err(bad(&key, format!("{host} is listed twice")));
        }
        let repositories = std::mem::take(&mut section.repositories);
        let upstream = section.validate(&key, &format!("https://{lowercase}"), Some(proxy))?;
        let scope = PatternScope::Registry(&lowercase);
        registries.push(RegistryConfig {
            allow: Patterns::parse(
                &format!("{key}.repositories.allow"),
                repositories.allow,
                scope,
            )?,
            deny: Patterns::parse(
                &format!("{key}.repositories.deny"),
                repositories.deny,
                scope,
            )?,
            host: lowercase,
            upstream,
        });
    }
    registries.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(registries)
}

/// A registry is named the way Docker's reference grammar reads a host in an image name
/// (`ghcr.io`, `registry:5000`, `localhost`), since clients send it as a name's first path
/// segment, and nothing else: no scheme, path or user.
fn check_host(key: &str, host: &str) -> Result<(), ConfigError> {
    let well_formed = is_registry_host(host)
        && url::Url::parse(&format!("https://{host}/")).is_ok_and(|url| {
            let parsed = match url.port() {
                Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
                None => url.host_str().unwrap_or_default().to_owned(),
            };
            parsed == host
        });
    if well_formed {
        Ok(())
    } else {
        Err(bad(
            key,
            format!("{host:?} is not a registry host as clients name it: a host name with a '.' (ghcr.io), a host and port (registry:5000) or localhost; the upstream URL goes in remoteurl"),
        ))
    }
}
