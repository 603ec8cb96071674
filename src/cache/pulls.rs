//! How many times each repository was pulled (a tag of it resolved, by GET or HEAD: one per
//! `docker pull`, whatever the client), for the status page. Counted on every manifest answer,
//! so the warm path pays one read lock and one atomic increment once the repository has an
//! entry; only a repository's first pull allocates. In memory only: counts start at zero with
//! the process, like the Prometheus counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::registry::RepoName;

#[derive(Default)]
pub struct PullCounts {
    by_repository: RwLock<HashMap<String, AtomicU64>>,
}

impl PullCounts {
    pub fn pulled(&self, repo: &RepoName) {
        let name = repo.as_str();
        {
            let counts = self
                .by_repository
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = counts.get(name) {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.by_repository
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Pulls of `repository` (as the mirror names it) since the process started.
    pub fn of(&self, repository: &str) -> u64 {
        self.by_repository
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(repository)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_are_counted_per_repository() {
        let counts = PullCounts::default();
        let alpine = RepoName::parse("alpine").unwrap();
        let ghcr = crate::registry::RegistryId::Host("ghcr.io".into());
        let other = RepoName::parse_in(&ghcr, "alpine").unwrap();
        counts.pulled(&alpine);
        counts.pulled(&alpine);
        counts.pulled(&other);
        assert_eq!(counts.of("library/alpine"), 2);
        assert_eq!(counts.of(other.as_str()), 1);
        assert_eq!(counts.of("library/busybox"), 0);
    }
}
