//! Which mirrored registry a repository belongs to. It is part of every repository name, so
//! nothing keyed by a name (storage, in-memory entries, locks, access decisions) can mix up
//! `ghcr.io/org/app` with `docker.io/org/app`.

use std::fmt;
use std::sync::Arc;

/// What clients call Docker Hub, and so the default upstream (`proxy:`), in labels and logs.
pub const DOCKER_HUB_NAME: &str = "docker.io";

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegistryId {
    /// The default upstream (`proxy:`), which has Docker Hub's role: its repositories are named
    /// as they always were (`library/alpine`), in storage too, so existing caches keep working.
    Default,
    /// A registry configured under `registries:`, by the host clients name it by (lowercase).
    Host(Arc<str>),
}

impl RegistryId {
    /// The registry's name for labels and logs: `docker.io` for the default upstream.
    pub fn name(&self) -> &str {
        match self {
            RegistryId::Default => DOCKER_HUB_NAME,
            RegistryId::Host(host) => host,
        }
    }

    /// Docker Hub's rules apply (a one-segment name is an official image under `library/`).
    pub fn is_default(&self) -> bool {
        matches!(self, RegistryId::Default)
    }
}

impl fmt::Display for RegistryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for RegistryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether a repository path's first component names a registry rather than a namespace:
/// Docker's reference grammar reads it as a host when it holds a `.` or a `:` or is
/// `localhost` (Docker Hub namespaces hold neither).
pub fn is_registry_host(component: &str) -> bool {
    !component.is_empty()
        && (component.contains('.') || component.contains(':') || component == "localhost")
}
