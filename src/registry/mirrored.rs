//! Which registries this mirror answers for, by the host names clients use for them.
//!
//! containerd (and Docker >= 29) names the registry of every request in `?ns=<host>`; podman,
//! CRI-O, skopeo and BuildKit mirrors with a path send it as the first path segment
//! (`/v2/ghcr.io/owner/app/...`). This is a closed world: a request naming any other registry
//! is refused before anything is asked upstream, and a host is only ever a key into the
//! configured registries, never something to dial, so no request can make this an open proxy.

use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

use super::name::{NameError, RepoName};
use super::registry_id::{is_registry_host, RegistryId, DOCKER_HUB_NAME};

/// Docker Hub's names: what clients call it, and the hosts its API is served from.
pub const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The registry hosts clients may name, and which mirrored registry each one means.
#[derive(Clone, Debug)]
pub struct MirroredRegistries {
    /// Lowercase host (with the port, as clients name it) -> registry.
    by_host: HashMap<String, RegistryId>,
}

impl MirroredRegistries {
    /// The default upstream answers for Docker Hub's names and for its own host: `proxy:` is
    /// Distribution's Docker Hub mirror section, and dockerd's `registry-mirrors` sends it
    /// Docker Hub names, without `ns` before Docker 29 and with `ns=docker.io` since. Each of
    /// `hosts` is a registry configured under `registries:`.
    pub fn new(default_remote: &Url, hosts: impl IntoIterator<Item = String>) -> Self {
        let mut by_host: HashMap<String, RegistryId> = default_hosts(default_remote)
            .into_iter()
            .map(|host| (host, RegistryId::Default))
            .collect();
        for host in hosts {
            let host = host.to_ascii_lowercase();
            by_host
                .entry(host.clone())
                .or_insert_with(|| RegistryId::Host(Arc::from(host)));
        }
        MirroredRegistries { by_host }
    }

    /// The registry `host` (from `ns` or a path prefix) names, if this mirror serves it.
    pub fn lookup(&self, host: &str) -> Option<&RegistryId> {
        self.by_host.get(&host.to_ascii_lowercase())
    }

    /// A repository as a person writes it (`alpine`, `library/alpine`,
    /// `docker.io/library/alpine`, `ghcr.io/owner/app`) in a registry this mirror serves: for
    /// the admin actions and the pre-warm list.
    pub fn repository(&self, written: &str) -> Result<RepoName, UnservedName> {
        match written.split_once('/') {
            Some((host, rest)) if is_registry_host(host) => match self.lookup(host) {
                Some(registry) => Ok(RepoName::parse_in(registry, rest)?),
                None => Err(UnservedName::NotMirrored {
                    host: host.to_owned(),
                    repo: RepoName::parse_in(&RegistryId::Host(host.into()), rest)?,
                }),
            },
            _ => Ok(RepoName::parse(written)?),
        }
    }

    /// Whether `name`, as this mirror shows names (`library/alpine`, `ghcr.io/owner/app`),
    /// belongs to a registry served now: a cache may hold repositories of a registry since
    /// removed from the configuration.
    pub fn serves_name(&self, name: &str) -> bool {
        match name.split_once('/') {
            Some((first, _)) if is_registry_host(first) => {
                matches!(self.lookup(first), Some(RegistryId::Host(_)))
            }
            _ => true,
        }
    }

    /// The registries served, for messages: Docker Hub and each one listed, by the names
    /// clients use. The default upstream's own address is left out: it may be internal.
    pub fn describe(&self) -> String {
        let mut hosts: Vec<&str> = self
            .by_host
            .values()
            .filter_map(|registry| match registry {
                RegistryId::Host(host) => Some(&**host),
                RegistryId::Default => None,
            })
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        hosts.insert(0, DOCKER_HUB_NAME);
        hosts.join(", ")
    }
}

/// Why a written repository name is not one this mirror serves.
#[derive(Debug, thiserror::Error)]
pub enum UnservedName {
    #[error(transparent)]
    Invalid(#[from] NameError),
    #[error("registry {host} is not mirrored here (repository {repo})")]
    NotMirrored { host: String, repo: RepoName },
}

/// The host names that mean the default upstream: Docker Hub's and `remote`'s own.
pub fn default_hosts(remote: &Url) -> Vec<String> {
    let mut hosts: Vec<String> = DOCKER_HUB_HOSTS.iter().map(|h| h.to_string()).collect();
    if let Some(host) = remote.host_str() {
        let host = match remote.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let host = host.to_ascii_lowercase();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_and_the_remote_host_are_the_default_and_listed_hosts_are_their_own() {
        let hub = MirroredRegistries::new(
            &Url::parse("https://registry-1.docker.io").unwrap(),
            ["ghcr.io".to_owned(), "Quay.IO".to_owned()],
        );
        for host in [
            "docker.io",
            "Docker.IO",
            "index.docker.io",
            "registry-1.docker.io",
        ] {
            assert_eq!(hub.lookup(host), Some(&RegistryId::Default), "{host}");
        }
        assert_eq!(
            hub.lookup("GHCR.io"),
            Some(&RegistryId::Host("ghcr.io".into()))
        );
        assert_eq!(
            hub.lookup("quay.io"),
            Some(&RegistryId::Host("quay.io".into()))
        );
        for host in ["registry.k8s.io", "", "docker.io.evil", "127.0.0.1:5000"] {
            assert_eq!(hub.lookup(host), None, "{host}");
        }
        let local = MirroredRegistries::new(&Url::parse("http://127.0.0.1:5000/").unwrap(), []);
        assert_eq!(local.lookup("127.0.0.1:5000"), Some(&RegistryId::Default));
        assert_eq!(local.lookup("docker.io"), Some(&RegistryId::Default));
        assert_eq!(local.lookup("127.0.0.1"), None);
        assert_eq!(local.lookup("ghcr.io"), None);
        assert_eq!(
            local.describe(),
            "docker.io",
            "no internal address in messages"
        );
        assert_eq!(hub.describe(), "docker.io, ghcr.io, quay.io");
        for (name, served) in [
            ("library/alpine", true),
            ("ghcr.io/owner/app", true),
            ("registry.k8s.io/pause", false),
            ("registry-1.docker.io/x", false),
        ] {
            assert_eq!(hub.serves_name(name), served, "{name}");
        }
    }

    #[test]
    fn hosts_are_told_from_namespaces() {
        for host in ["ghcr.io", "localhost", "127.0.0.1:5000", "registry.k8s.io"] {
            assert!(is_registry_host(host), "{host}");
        }
        for namespace in ["library", "myorg", "my-org", "my_org", ""] {
            assert!(!is_registry_host(namespace), "{namespace}");
        }
    }
}
