//! Which registries this mirror answers for, by the host names clients use for them.
//!
//! containerd (and Docker >= 29) names the registry of every request in `?ns=<host>`; podman,
//! CRI-O, skopeo and BuildKit mirrors with a path send it as the first path segment
//! (`/v2/ghcr.io/owner/app/...`). This is a closed world: a request naming any other registry
//! is refused before anything is asked upstream, so a node that sends every registry to the
//! mirror never runs what someone published under the same name on the default upstream.

use url::Url;

/// Docker Hub's names: what clients call it, and the hosts its API is served from.
const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The registry hosts the default upstream (`proxy.remoteurl`) answers for.
#[derive(Clone, Debug)]
pub struct MirroredRegistries {
    hosts: Vec<String>,
}

impl MirroredRegistries {
    /// The default upstream answers for its own host (with the port, as clients name it) and
    /// for Docker Hub's names: `proxy:` is Distribution's Docker Hub mirror section, and
    /// dockerd's `registry-mirrors` sends it Docker Hub names, without `ns` before Docker 29
    /// and with `ns=docker.io` since. Both must mean the same upstream.
    pub fn for_default_upstream(remote: &Url) -> Self {
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
        MirroredRegistries { hosts }
    }

    /// Whether `host` (from `ns` or a path prefix) names a registry this mirror serves.
    pub fn serves(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Whether two host names mean one registry: the same name, or two names of the one
    /// registry served (`docker.io` and `index.docker.io`).
    pub fn same_registry(&self, a: &str, b: &str) -> bool {
        a.eq_ignore_ascii_case(b) || (self.serves(a) && self.serves(b))
    }

    /// The names served, for messages.
    pub fn describe(&self) -> String {
        self.hosts.join(", ")
    }
}

/// Whether a repository path's first component names a registry rather than a namespace:
/// Docker's reference grammar reads it as a host when it holds a `.` or a `:` or is
/// `localhost` (Docker Hub namespaces hold neither).
pub fn is_registry_host(component: &str) -> bool {
    !component.is_empty()
        && (component.contains('.') || component.contains(':') || component == "localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_and_the_remote_host_are_served() {
        let hub = MirroredRegistries::for_default_upstream(
            &Url::parse("https://registry-1.docker.io").unwrap(),
        );
        for host in [
            "docker.io",
            "Docker.IO",
            "index.docker.io",
            "registry-1.docker.io",
        ] {
            assert!(hub.serves(host), "{host}");
        }
        for host in ["ghcr.io", "quay.io", "", "docker.io.evil", "127.0.0.1:5000"] {
            assert!(!hub.serves(host), "{host}");
        }
        let local = MirroredRegistries::for_default_upstream(
            &Url::parse("http://127.0.0.1:5000/").unwrap(),
        );
        assert!(local.serves("127.0.0.1:5000"));
        assert!(local.serves("docker.io"));
        assert!(!local.serves("127.0.0.1"));
        assert!(!local.serves("ghcr.io"));
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
