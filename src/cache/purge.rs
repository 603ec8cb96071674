//! An operator's purge: a tag, an image or a whole repository out of the cache, through the
//! eviction's own planner ledger and executor (records, then links, then content), so a blob
//! goes only when no kept image in any repository or registry references it. Memory goes with
//! the records (hot manifests, tags, links, not-found answers), so the next pull fetches again.
//! A client streaming a blob deleted under it keeps reading, as with eviction.

use std::time::{Duration, Instant};

use super::eviction::lease::Lease;
use super::eviction::plan::EvictedImage;
use super::eviction::purge_plan::{self, Kept, NotCached, Selection};
use super::{Cache, CacheError};
use crate::registry::{Digest, RepoName, Tag};

/// How long a purge waits for an eviction (here or on another replica) to finish.
const LEASE_WAIT: Duration = Duration::from_secs(10);
const LEASE_POLL: Duration = Duration::from_millis(100);

/// What to purge in one repository.
#[derive(Debug, Clone)]
pub enum PurgeTarget {
    Tag(Tag),
    Manifest(Digest),
    Repository,
}

/// What a purge deleted, and what it kept and why.
#[derive(Debug)]
pub struct PurgeReport {
    pub images: Vec<EvictedImage>,
    pub tags: Vec<String>,
    /// Manifest and blob links deleted from the repository.
    pub manifest_links: Vec<String>,
    pub blob_links: Vec<String>,
    /// Content deleted: (digest, bytes).
    pub content: Vec<(String, u64)>,
    pub bytes_freed: u64,
    pub kept: Vec<Kept>,
}

impl Cache {
    pub async fn purge(
        &self,
        repo: &RepoName,
        target: &PurgeTarget,
    ) -> Result<PurgeReport, CacheError> {
        let registry = self.registry(repo)?;
        if !self.storage().index().is_built() {
            return Err(CacheError::Busy {
                reason: "the store's index is still being built, so what other images reference is not known yet".to_owned(),
            });
        }
        let lease = self.purge_lease().await?;
        let result = self.purge_holding_lease(repo, target).await;
        lease.release().await;
        let report = result?;
        match target {
            PurgeTarget::Tag(tag) => registry.not_found.forget(repo, Some(tag.as_str())),
            PurgeTarget::Manifest(digest) => {
                registry.not_found.forget(repo, Some(&digest.to_string()))
            }
            PurgeTarget::Repository => registry.not_found.forget(repo, None),
        }
        Ok(report)
    }

    /// The eviction lease: a purge and an eviction (of this or another replica) never
    /// plan on the same store at once.
    async fn purge_lease(&self) -> Result<Lease, CacheError> {
        let deadline = Instant::now() + LEASE_WAIT;
        loop {
            if let Some(lease) = Lease::take(self.storage(), &self.inner.replica).await? {
                return Ok(lease);
            }
            if Instant::now() >= deadline {
                return Err(CacheError::Busy {
                    reason: format!(
                        "an eviction has been running for over {}s",
                        LEASE_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    async fn purge_holding_lease(
        &self,
        repo: &RepoName,
        target: &PurgeTarget,
    ) -> Result<PurgeReport, CacheError> {
        let snapshot = self.eviction_snapshot().await?;
        let in_flight = self.in_flight_digests();
        let selection = match target {
            PurgeTarget::Tag(tag) => Selection::Tag(tag.to_string()),
            PurgeTarget::Manifest(digest) => Selection::Manifest(digest.to_string()),
            PurgeTarget::Repository => Selection::Repository,
        };
        let purged = purge_plan::purge(&snapshot, repo.as_str(), &selection, &in_flight).map_err(
            |not_cached| match (not_cached, target) {
                (NotCached::Image, PurgeTarget::Tag(tag)) => CacheError::ManifestUnknown {
                    repo: repo.clone(),
                    reference: tag.to_string(),
                },
                (NotCached::Image, PurgeTarget::Manifest(digest)) => CacheError::ManifestUnknown {
                    repo: repo.clone(),
                    reference: digest.to_string(),
                },
                _ => CacheError::NameUnknown { repo: repo.clone() },
            },
        )?;
        let plan = purged.plan;
        let bytes_freed = self.evict(&plan).await?;
        let content = plan
            .content
            .iter()
            .map(|d| (d.clone(), snapshot.content.get(d).copied().unwrap_or(0)))
            .collect();
        let second = |pairs: &[(String, String)]| pairs.iter().map(|(_, x)| x.clone()).collect();
        Ok(PurgeReport {
            tags: second(&plan.tags),
            manifest_links: second(&plan.manifest_links),
            blob_links: second(&plan.blob_links),
            images: plan.images,
            content,
            bytes_freed,
            kept: purged.kept,
        })
    }
}
