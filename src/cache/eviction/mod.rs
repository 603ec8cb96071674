//! Keeping the cache within `cache.maxsize`: least recently pulled images go first, whole, and
//! content goes only when no kept image references it (`plan.rs` decides; this file reads the
//! cache into a snapshot, carries a plan out and runs the evictor).
//!
//! The evictor checks the index's byte count every few seconds (and at once when a write
//! failed for lack of space); above the high watermark it plans down to the low one and deletes:
//! tag records first, then links, then content. A client streaming a blob that is deleted under
//! it keeps reading (an open file on the filesystem; a stream already under way on S3), and one
//! whose record was deleted finds storage's 404, which means fetch again.

pub(super) mod lease;
pub mod plan;
pub mod purge_plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use plan::{Plan, Policy, RepoSnapshot, Snapshot};

use super::records::{now_ms, TagRecord};
use super::{Cache, CacheError};
use crate::config::{Budget, CacheConfig};
use crate::registry::{Digest, RepoName, Tag};
use crate::storage::layout;

/// How often the evictor looks at the cache's size.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The least time between two checks when writes above the high watermark wake the
/// evictor: a burst of writes makes one check, not one each.
const WOKEN_GAP: Duration = Duration::from_millis(500);
/// On a full store, eviction frees this fraction (1/n) of what is stored at least.
const FULL_DISK_SHARE: u64 = 10;

/// What each manifest references, read once per digest (content never changes).
#[derive(Default)]
pub struct References {
    by_manifest: Mutex<HashMap<String, Arc<Vec<String>>>>,
}

/// The digests a manifest references: an index's child manifests, an image's config and
/// layers (and an artifact's blobs). None when the bytes are not a manifest.
fn referenced(bytes: &[u8]) -> Option<Vec<String>> {
    let document: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut digests = Vec::new();
    let mut take = |entry: &serde_json::Value| {
        if let Some(digest) = entry.get("digest").and_then(|d| d.as_str()) {
            digests.push(digest.to_owned());
        }
    };
    if let Some(config) = document.get("config") {
        take(config);
    }
    for list in ["layers", "manifests", "blobs"] {
        for entry in document
            .get(list)
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
        {
            take(entry);
        }
    }
    Some(digests)
}

impl Cache {
    async fn references_of(&self, digest: &str) -> Result<Arc<Vec<String>>, CacheError> {
        let known = self
            .inner
            .references
            .by_manifest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned();
        if let Some(known) = known {
            return Ok(known);
        }
        let Ok(parsed) = digest.parse::<Digest>() else {
            return Ok(Arc::default());
        };
        let bytes = self.storage().read_small(&layout::content(&parsed)).await?;
        let references = Arc::new(bytes.as_deref().and_then(referenced).unwrap_or_default());
        if bytes.is_some() {
            self.inner
                .references
                .by_manifest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(digest.to_owned(), references.clone());
        }
        Ok(references)
    }

    /// The cache as the planner sees it: the index, what each tag points to, what each
    /// manifest references, and when each was last served.
    pub async fn eviction_snapshot(&self) -> Result<Snapshot, CacheError> {
        let index = self.storage().index();
        let mut snapshot = Snapshot {
            content: index.contents().into_iter().collect(),
            tag_served: self.inner.access.tags(),
            content_served: self.inner.access.contents(),
            ..Snapshot::default()
        };
        for (name, records) in index.all_records() {
            let mut repo = RepoSnapshot {
                tags: BTreeMap::new(),
                manifests: records.manifests,
                blobs: records.blobs,
            };
            if let Ok(repo_name) = RepoName::parse_shown(&name) {
                for tag in records.tags {
                    let Ok(parsed) = Tag::parse(&tag) else {
                        continue;
                    };
                    let key = layout::tag_record(&repo_name, &parsed);
                    // A record that cannot be read leaves its manifest an image of its own.
                    if let Ok(Some(record)) = self.storage().read_record::<TagRecord>(&key).await {
                        snapshot
                            .tag_checked
                            .insert((name.clone(), tag.clone()), record.checked_at_ms);
                        repo.tags.insert(tag, record.digest);
                    }
                }
            }
            let roots: HashSet<String> = repo
                .manifests
                .iter()
                .chain(repo.tags.values())
                .cloned()
                .collect();
            for digest in roots {
                let mut pending = vec![digest];
                while let Some(manifest) = pending.pop() {
                    if snapshot.references.contains_key(&manifest) {
                        continue;
                    }
                    let references = self.references_of(&manifest).await?;
                    // An index's children are manifests too.
                    pending.extend(
                        references
                            .iter()
                            .filter(|d| repo.manifests.contains(*d))
                            .cloned(),
                    );
                    snapshot.references.insert(manifest, references.to_vec());
                }
            }
            snapshot.repositories.insert(name, repo);
        }
        Ok(snapshot)
    }

    /// The content being fetched from upstream right now: never deleted.
    pub(super) fn in_flight_digests(&self) -> HashSet<String> {
        self.fills()
            .digests()
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    /// What an eviction down to `target_bytes` would delete now.
    pub async fn plan_eviction(
        &self,
        target_bytes: u64,
        config: &CacheConfig,
    ) -> Result<(Plan, u64), CacheError> {
        let snapshot = self.eviction_snapshot().await?;
        let in_flight = self.in_flight_digests();
        let pinned = |repository: &str, tag: &str| config.pins.pins(repository, tag);
        let policy = Policy {
            target_bytes,
            protect_since_ms: now_ms().saturating_sub(config.keep_recent.as_millis() as u64),
            in_flight: &in_flight,
            pinned: &pinned,
        };
        let pinned_bytes = plan::pinned_bytes(&snapshot, &pinned);
        Ok((plan::plan(&snapshot, &policy), pinned_bytes))
    }

    /// Deletes what `plan` says: records first, then content. Returns the bytes freed.
    pub async fn evict(&self, plan: &Plan) -> Result<u64, CacheError> {
        let storage = self.storage();
        for (repository, tag) in &plan.tags {
            let (Ok(repo), Ok(tag)) = (RepoName::parse_shown(repository), Tag::parse(tag)) else {
                continue;
            };
            storage.delete(&layout::tag_record(&repo, &tag)).await?;
            self.inner.hot.forget_tag(&repo, &tag);
        }
        for (links, key) in [
            (
                &plan.manifest_links,
                layout::manifest_link as fn(&RepoName, &Digest) -> _,
            ),
            (&plan.blob_links, layout::blob_link),
        ] {
            for (repository, digest) in links {
                let (Ok(repo), Ok(digest)) =
                    (RepoName::parse_shown(repository), digest.parse::<Digest>())
                else {
                    continue;
                };
                storage.delete(&key(&repo, &digest)).await?;
                // Served from memory, a deleted link would outlive its record for a minute.
                self.inner.hot.forget_manifest(&repo, &digest);
                self.inner.hot.forget_blob(&repo, &digest);
            }
        }
        let mut freed = 0;
        for digest in &plan.content {
            let Ok(parsed) = digest.parse::<Digest>() else {
                continue;
            };
            freed += storage.index().content_size(digest).unwrap_or(0);
            storage.delete(&layout::content(&parsed)).await?;
            self.inner.hot.forget_small_blob(&parsed);
        }
        Ok(freed)
    }

    /// One check: above the high watermark, evicts down to the low one; below `cache.minfree`,
    /// frees what brings the disk back above it; when storage refused a write for lack of
    /// space for another reason, frees a tenth of what is stored. The lowest target wins.
    /// True when it should have evicted but could not (nothing evictable, another replica's
    /// lease, a storage error): a write going over budget need not wake it again at once.
    pub async fn keep_within(
        &self,
        budget: Option<&Budget>,
        storage_full: bool,
        config: &CacheConfig,
    ) -> bool {
        let index = self.storage().index();
        if !index.is_built() {
            return false;
        }
        let before = index.totals().content_bytes;
        let max_bytes = budget.map_or(0, |b| b.max_bytes);
        let Some(target) = eviction_target(
            before,
            budget,
            self.storage().free_floor().bytes_to_free(),
            storage_full,
        ) else {
            self.metrics().cache_size(before, max_bytes, None);
            return false;
        };
        // Replicas of one bucket evict one at a time.
        let lease = match lease::Lease::take(self.storage(), &self.inner.replica).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                self.metrics().eviction_deferred();
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the eviction lease; trying again shortly");
                return true;
            }
        };
        let stuck = self
            .evict_down_to(target, before, max_bytes, storage_full, config)
            .await;
        lease.release().await;
        stuck
    }

    async fn evict_down_to(
        &self,
        target: u64,
        before: u64,
        max_bytes: u64,
        storage_full: bool,
        config: &CacheConfig,
    ) -> bool {
        let index = self.storage().index();
        let (plan, pinned) = match self.plan_eviction(target, config).await {
            Ok((plan, pinned)) => {
                self.metrics().cache_size(before, max_bytes, Some(pinned));
                (plan, pinned)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot plan an eviction; trying again shortly");
                return true;
            }
        };
        if plan.content.is_empty() && plan.tags.is_empty() {
            tracing::warn!(
                bytes = before,
                budget = max_bytes,
                storage_full,
                "cache is over its budget but nothing may be evicted now (pinned, being fetched or served within cache.keeprecent)"
            );
            return true;
        }
        match self.evict(&plan).await {
            Ok(freed) => {
                let after = index.totals().content_bytes;
                self.metrics().evicted(
                    plan.images.len() as u64,
                    plan.content.len() as u64,
                    freed,
                    now_ms() / 1000,
                );
                self.metrics().cache_size(after, max_bytes, Some(pinned));
                for image in &plan.images {
                    tracing::info!(
                        repository = %image.repository,
                        tag = image.tag.as_deref().unwrap_or("-"),
                        digest = %image.digest,
                        last_pulled_ms = image.last_pulled_ms,
                        "evicted image (least recently pulled)"
                    );
                }
                tracing::info!(
                    images = plan.images.len(),
                    objects = plan.content.len(),
                    orphans = plan.orphans,
                    freed,
                    before,
                    after,
                    budget = max_bytes,
                    storage_full,
                    "evicted to keep within cache.maxsize, or to make room on a full store"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "eviction stopped early; trying again shortly");
                return true;
            }
        }
        false
    }

    /// Starts the evictor: every few seconds against `cache.maxsize` and `cache.minfree` when
    /// set, and at once whenever storage refuses a write for lack of space, with or without.
    pub fn spawn_evictor(&self, config: CacheConfig) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        let periodic = config.budget.is_some() || self.storage().free_floor().is_set();
        if let Some(budget) = &config.budget {
            // Writes that take content above the high mark wake the evictor at once: a
            // small budget would otherwise be overrun many times over between checks.
            self.storage().index().alarm_above(budget.high_bytes);
            self.metrics().cache_size(0, budget.max_bytes, None);
        }
        tokio::spawn(async move {
            let storage = cache.storage().clone();
            let mut ticker = tokio::time::interval(CHECK_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_check: Option<tokio::time::Instant> = None;
            // Off while the cache is over budget with nothing evictable: the ticker retries.
            let mut alarm_armed = true;
            loop {
                let woken = tokio::select! {
                    _ = ticker.tick(), if periodic => Woken::Tick,
                    _ = storage.index().size_alarm(), if alarm_armed => Woken::OverBudget,
                    _ = storage.pressure().refusal() => Woken::Refused,
                };
                let since = last_check.map(|at| at.elapsed());
                match woken {
                    // Every refused write wakes the evictor; one check per interval is enough.
                    Woken::Refused if since.is_some_and(|s| s < CHECK_EVERY) => continue,
                    Woken::OverBudget if since.is_some_and(|s| s < WOKEN_GAP) => {
                        tokio::time::sleep(WOKEN_GAP - since.unwrap_or_default()).await
                    }
                    _ => {}
                }
                last_check = Some(tokio::time::Instant::now());
                let full = woken == Woken::Refused || storage.pressure().is_full();
                let stuck = cache
                    .keep_within(config.budget.as_ref(), full, &config)
                    .await;
                alarm_armed = !stuck;
            }
        })
    }
}

/// What woke the evictor.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Woken {
    Tick,
    /// A write took content above the high watermark.
    OverBudget,
    /// A write was refused for lack of space.
    Refused,
}

/// The content bytes to evict down to, if any: the low watermark above the high one; enough
/// to bring the disk back above `cache.minfree` (`floor_to_free`); a tenth of what is stored
/// when a write was refused for lack of space and the floor does not explain it (a full disk
/// before the budget is reached, or with none). The lowest wins.
fn eviction_target(
    stored: u64,
    budget: Option<&Budget>,
    floor_to_free: Option<u64>,
    storage_full: bool,
) -> Option<u64> {
    let budget_target = budget
        .filter(|b| stored > b.high_bytes)
        .map(|b| b.low_bytes);
    let room_target = match floor_to_free {
        Some(to_free) => Some(stored.saturating_sub(to_free)),
        None if storage_full => Some(stored - stored / FULL_DISK_SHARE),
        None => None,
    };
    match (budget_target, room_target) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_of_budget_floor_and_full_disk_targets_wins() {
        let budget = Budget {
            max_bytes: 1000,
            high_bytes: 950,
            low_bytes: 850,
        };
        assert_eq!(eviction_target(900, Some(&budget), None, false), None);
        assert_eq!(eviction_target(960, Some(&budget), None, false), Some(850));
        assert_eq!(eviction_target(900, None, None, true), Some(810));
        assert_eq!(eviction_target(960, Some(&budget), None, true), Some(850));
        assert_eq!(
            eviction_target(900, Some(&budget), Some(300), false),
            Some(600)
        );
        assert_eq!(
            eviction_target(960, Some(&budget), Some(50), true),
            Some(850)
        );
        assert_eq!(eviction_target(100, None, Some(300), true), Some(0));
        assert_eq!(eviction_target(900, None, None, false), None);
    }

    #[test]
    fn manifests_name_what_they_reference() {
        let image = br#"{"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:l1"},{"digest":"sha256:l2"}]}"#;
        assert_eq!(
            referenced(image).unwrap(),
            ["sha256:c", "sha256:l1", "sha256:l2"]
        );
        let index = br#"{"manifests":[{"digest":"sha256:a"},{"digest":"sha256:b"}]}"#;
        assert_eq!(referenced(index).unwrap(), ["sha256:a", "sha256:b"]);
        assert_eq!(referenced(b"not json"), None);
    }
}
