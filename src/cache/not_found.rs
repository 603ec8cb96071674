//! Manifests upstream said it does not have, remembered for `proxy.notfoundttl`: a CI loop
//! pulling a mistyped tag gets its 404 from memory instead of costing an upstream request each
//! time. Short, so a tag pushed upstream shows up soon.

use std::time::Duration;

use crate::registry::RepoName;

/// (repository, tag or digest)
pub type ManifestKey = (RepoName, String);

/// How many missing manifests are remembered at most.
const CAPACITY: u64 = 10_000;

pub struct NotFound {
    /// None when `proxy.notfoundttl` is 0: nothing is remembered.
    missing: Option<moka::sync::Cache<ManifestKey, ()>>,
}

impl NotFound {
    pub fn new(ttl: Duration) -> Self {
        let missing = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build()
        });
        NotFound { missing }
    }

    pub fn known_missing(&self, key: &ManifestKey) -> bool {
        self.missing
            .as_ref()
            .is_some_and(|missing| missing.contains_key(key))
    }

    pub fn remember(&self, key: ManifestKey) {
        if let Some(missing) = &self.missing {
            missing.insert(key, ());
        }
    }
}

impl NotFound {
    /// Forgets what upstream said it did not have in `repo` (all of it, or one tag or
    /// digest): an operator refreshed or purged it, so the next pull asks upstream again.
    pub fn forget(&self, repo: &RepoName, reference: Option<&str>) {
        let Some(missing) = &self.missing else { return };
        match reference {
            Some(reference) => missing.invalidate(&(repo.clone(), reference.to_owned())),
            None => {
                let repo = repo.clone();
                // Only fails when closures were not enabled at build time, as they are above.
                let _ = missing.invalidate_entries_if(move |(r, _), _| *r == repo);
            }
        }
    }
}
