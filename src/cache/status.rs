//! What the cache tells the status page: the fills in flight and the cached repositories with
//! their pulls.

use serde::Serialize;

use super::Cache;
use crate::registry::RepoName;

/// A cached repository as the status page lists it.
#[derive(Serialize, Debug)]
pub struct RepositoryView {
    pub name: String,
    pub tags: Vec<String>,
    pub manifests: usize,
    pub blobs: usize,
    /// Bytes of the content it references (shared layers counted in each repository).
    pub bytes: u64,
    /// When a tag of it was last pulled (RFC 3339), if known.
    pub last_pulled: Option<String>,
    /// Tags of it resolved since this process started.
    pub pulls: u64,
}

/// One page of a search of the cached repositories.
#[derive(Serialize, Debug)]
pub struct RepositoryPage {
    /// Repositories matching the search, on every page.
    pub total: usize,
    pub repositories: Vec<RepositoryView>,
    /// Whether the index of the store is built; until it is, the listing is empty.
    pub complete: bool,
}

impl Cache {
    /// The blob fills in flight.
    pub fn fill_views(&self) -> Vec<super::FillView> {
        self.fills().views()
    }

    /// Repositories whose name contains `query` and that `keep` lets through: `take` of them
    /// from the `skip`th on.
    pub fn repository_page(
        &self,
        query: &str,
        skip: usize,
        take: usize,
        keep: impl Fn(&str) -> bool,
    ) -> RepositoryPage {
        let index = self.storage().index();
        let (total, found) = index.search(query, skip, take, keep);
        let repositories = found
            .into_iter()
            .map(|repo| {
                let last_pulled = RepoName::parse_shown(&repo.name)
                    .ok()
                    .and_then(|name| self.inner.access.repository_last_served(&name))
                    .map(|ms| {
                        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                        humantime::format_rfc3339_seconds(at).to_string()
                    });
                RepositoryView {
                    pulls: self.inner.pulls.of(&repo.name),
                    name: repo.name,
                    tags: repo.tags,
                    manifests: repo.manifests,
                    blobs: repo.blobs,
                    bytes: repo.bytes,
                    last_pulled,
                }
            })
            .collect();
        RepositoryPage {
            total,
            repositories,
            complete: index.is_built(),
        }
    }
}
