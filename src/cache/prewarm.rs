//! Pre-warming: images fetched before any client asks, and kept fresh (`cache.prewarm`, and
//! warm-now requests). A cached tag costs one HEAD per check (free on Docker Hub); a GET is
//! spent only on a manifest not held yet, and blobs are fetched through the same fills
//! clients use, so a client pulling the same layer meanwhile joins the fetch (and pre-warming
//! joins a client's). Pre-warming fetches at most `cache.prewarm.maxfetches` blobs at once, and
//! does not count as a pull: pins keep pre-warmed images, not access times.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::records::{now_ms, TagRecord};
use super::{Cache, CacheError, Outcome};
use crate::config::{Platforms, PrewarmImage, TagSelector};
use crate::registry::{Digest, MirroredRegistries, RepoName, Tag};
use crate::storage::layout;

/// The most tags one pattern (`node:20-*`) warms: a pattern matching hundreds of tags is a
/// mistake that would fetch gigabytes.
pub const MAX_TAGS_PER_PATTERN: usize = 50;

/// What warming one tag did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WarmedTag {
    /// `repository:tag` as the mirror names it.
    pub image: String,
    /// What the tag points to now.
    pub digest: String,
    /// It pointed elsewhere before (or was not cached).
    pub moved: bool,
    /// Manifests fetched (GETs spent on the pull quota).
    pub manifests_fetched: u64,
    /// Blobs fetched (or joined while a client fetched them).
    pub blobs_fetched: u64,
    /// Blob bytes fetched.
    pub bytes: u64,
}

/// One entry's outcome: the tags it warmed, or why it failed.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Warmed {
    Ok(WarmedTag),
    Error {
        image: String,
        error: String,
    },
    /// Not checked: its registry is offline.
    Skipped {
        image: String,
        reason: String,
    },
}

/// A whole run's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub checked: u64,
    pub moved: u64,
    pub fetched: u64,
    pub bytes: u64,
    pub errors: u64,
}

impl RunReport {
    /// Counts the run in the metrics and logs its figures (`what`: the list or warm-now).
    pub fn finish(&self, metrics: &crate::telemetry::Metrics, what: &str, entries: usize) {
        metrics.prewarm_run(
            self.checked,
            self.moved,
            self.fetched,
            self.bytes,
            self.errors,
            now_ms() / 1000,
        );
        tracing::info!(
            what,
            entries,
            checked = self.checked,
            moved = self.moved,
            fetched = self.fetched,
            bytes = self.bytes,
            errors = self.errors,
            "pre-warm run done"
        );
    }

    pub fn add(&mut self, warmed: &Warmed) {
        match warmed {
            Warmed::Ok(tag) => {
                self.checked += 1;
                self.moved += tag.moved as u64;
                self.fetched += (tag.manifests_fetched + tag.blobs_fetched > 0) as u64;
                self.bytes += tag.bytes;
            }
            Warmed::Error { .. } => self.errors += 1,
            Warmed::Skipped { .. } => {}
        }
    }
}

/// What pre-warming needs besides the cache: which platforms, and its own fetch limit.
#[derive(Clone)]
pub struct Prewarmer {
    cache: Cache,
    platforms: Platforms,
    fetches: Arc<Semaphore>,
    /// The semaphore's size: how many blobs one run asks for at once.
    max_fetches: usize,
    /// How written names (`alpine`, `ghcr.io/myorg/app`) map to the registries served.
    registries: Arc<MirroredRegistries>,
}

impl Prewarmer {
    pub fn new(
        cache: Cache,
        registries: Arc<MirroredRegistries>,
        platforms: Platforms,
        max_fetches: usize,
    ) -> Self {
        Prewarmer {
            cache,
            platforms,
            fetches: Arc::new(Semaphore::new(max_fetches.max(1))),
            max_fetches: max_fetches.max(1),
            registries,
        }
    }

    /// Warms every tag `image` names, calling `report` as each is done.
    pub async fn warm(&self, image: &PrewarmImage, report: &mut (dyn FnMut(Warmed) + Send)) {
        let failed = |error: String| Warmed::Error {
            image: image.written.clone(),
            error,
        };
        let repo = match self.registries.repository(&image.repository) {
            Ok(repo) => repo,
            Err(e) => return report(failed(e.to_string())),
        };
        if self.cache.upstream(&repo).is_ok_and(|u| u.is_offline()) {
            // Nothing can be checked or fetched; what is cached stays served (and pinned).
            return report(Warmed::Skipped {
                image: image.written.clone(),
                reason: format!("registry {} is offline", repo.registry()),
            });
        }
        let tags = match self.tags_of(&repo, &image.tag).await {
            Ok(tags) => tags,
            Err(e) => return report(failed(e.to_string())),
        };
        if tags.is_empty() {
            return report(failed(format!(
                "no tag of {repo} upstream matches {:?}",
                image.tag.as_str()
            )));
        }
        for tag in tags {
            let warmed = match self.warm_tag(&repo, &tag).await {
                Ok(warmed) => Warmed::Ok(warmed),
                Err(e) => Warmed::Error {
                    image: format!("{repo}:{tag}"),
                    error: e.to_string(),
                },
            };
            report(warmed);
        }
    }

    /// The tags an entry names: itself, or upstream's tags matching the pattern.
    async fn tags_of(
        &self,
        repo: &RepoName,
        selector: &TagSelector,
    ) -> Result<Vec<Tag>, CacheError> {
        let pattern = match selector {
            TagSelector::Exact(tag) => return Ok(vec![parse_tag(repo, tag)?]),
            TagSelector::Pattern(pattern) => pattern,
        };
        let listed = self.cache.upstream(repo)?.tags(repo, None, None).await?;
        let mut matching: Vec<String> = listed
            .tags
            .into_iter()
            .filter(|tag| pattern.is_match(tag))
            .collect();
        matching.sort();
        if matching.len() > MAX_TAGS_PER_PATTERN {
            tracing::warn!(
                repository = %repo,
                pattern = pattern.glob().glob(),
                matching = matching.len(),
                warmed = MAX_TAGS_PER_PATTERN,
                "a pre-warm pattern matches too many tags; warming the first in sort order only"
            );
            matching.truncate(MAX_TAGS_PER_PATTERN);
        }
        matching.iter().map(|tag| parse_tag(repo, tag)).collect()
    }

    /// Checks one tag upstream (a HEAD when it is cached, a GET when it is not) and fetches
    /// whatever of its image the cache lacks.
    pub async fn warm_tag(&self, repo: &RepoName, tag: &Tag) -> Result<WarmedTag, CacheError> {
        let cache = &self.cache;
        let before: Option<TagRecord> = cache
            .storage()
            .read_record(&layout::tag_record(repo, tag))
            .await?;
        let answer = match &before {
            None => cache.fetch_cold_tag(repo, tag, None).await?,
            Some(_) => cache.revalidate_tag(repo, tag, None, true).await?,
        };
        let mut warmed = WarmedTag {
            image: format!("{repo}:{tag}"),
            digest: answer.digest.to_string(),
            moved: before.is_none_or(|b| b.digest != answer.digest.to_string()),
            manifests_fetched: (answer.outcome == Outcome::Miss) as u64,
            ..WarmedTag::default()
        };
        let body = answer.body.unwrap_or_default();
        let Some(document) = Manifest::read(&body) else {
            return Ok(warmed);
        };
        let mut images = Vec::new();
        match document {
            Manifest::Index(children) => {
                for child in children {
                    if !self.platforms.wants(
                        &child.os,
                        &child.architecture,
                        child.variant.as_deref(),
                    ) {
                        continue;
                    }
                    let answer = cache.manifest_by_digest(repo, &child.digest, true).await?;
                    warmed.manifests_fetched += (answer.outcome == Outcome::Miss) as u64;
                    if let Some(Manifest::Image(blobs)) =
                        Manifest::read(&answer.body.unwrap_or_default())
                    {
                        images.push(blobs);
                    }
                }
            }
            Manifest::Image(blobs) => images.push(blobs),
        }
        let blobs: Vec<Digest> = images.into_iter().flatten().collect();
        let fetched: Vec<u64> = futures::stream::iter(blobs)
            .map(|digest| self.warm_blob(repo, digest))
            .buffer_unordered(self.max_fetches)
            .try_collect()
            .await?;
        for bytes in fetched.into_iter().filter(|b| *b > 0) {
            warmed.blobs_fetched += 1;
            warmed.bytes += bytes;
        }
        Ok(warmed)
    }

    /// Fetches a blob this repository does not hold (joining a fetch under way); returns the
    /// bytes that came, 0 when it was cached already.
    async fn warm_blob(&self, repo: &RepoName, digest: Digest) -> Result<u64, CacheError> {
        if self.cache.linked_blob_size(repo, &digest).await?.is_some() {
            return Ok(0);
        }
        let _permit = self.fetches.acquire().await.expect("never closed");
        let answer = self.cache.find_blob(repo, &digest, None).await?;
        if answer.outcome == Outcome::Hit {
            return Ok(0);
        }
        // Read to the end: the fill verifies and stores the blob as it goes; this reader
        // only keeps it going, as a client would.
        let mut body = answer.body;
        let mut bytes = 0;
        while let Some(chunk) = body.next().await {
            bytes += chunk
                .map_err(|e| CacheError::Prewarm(format!("{digest}: {e}")))?
                .len() as u64;
        }
        Ok(bytes)
    }
}

impl Cache {
    /// Runs the pre-warm list now, then every `interval` (never again when zero).
    pub fn spawn_prewarmer(
        &self,
        prewarmer: Prewarmer,
        images: Vec<PrewarmImage>,
        interval: std::time::Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if images.is_empty() {
            return None;
        }
        let metrics = self.metrics().clone();
        Some(tokio::spawn(async move {
            loop {
                let mut run = RunReport::default();
                for image in &images {
                    prewarmer
                        .warm(image, &mut |warmed| {
                            log_warmed(&warmed);
                            run.add(&warmed);
                        })
                        .await;
                }
                run.finish(&metrics, "pre-warm list", images.len());
                if interval.is_zero() {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        }))
    }
}

/// One line per warmed tag: what moved and what was fetched, or what failed.
pub fn log_warmed(warmed: &Warmed) {
    match warmed {
        Warmed::Ok(tag) if tag.moved || tag.manifests_fetched + tag.blobs_fetched > 0 => {
            tracing::info!(image = %tag.image, digest = %tag.digest, moved = tag.moved, manifests = tag.manifests_fetched, blobs = tag.blobs_fetched, bytes = tag.bytes, "pre-warmed")
        }
        Warmed::Ok(tag) => {
            tracing::debug!(image = %tag.image, digest = %tag.digest, "pre-warmed image unchanged")
        }
        Warmed::Error { image, error } => {
            tracing::warn!(image = %image, error = %error, "cannot pre-warm")
        }
        Warmed::Skipped { image, reason } => {
            tracing::debug!(image = %image, reason = %reason, "not pre-warmed")
        }
    }
}

fn parse_tag(repo: &RepoName, tag: &str) -> Result<Tag, CacheError> {
    Tag::parse(tag).map_err(|e| CacheError::Prewarm(format!("{repo}:{tag}: {e}")))
}

/// The parts of a manifest pre-warming follows.
enum Manifest {
    /// An index's child manifests and their platforms.
    Index(Vec<Child>),
    /// An image's config and layers.
    Image(Vec<Digest>),
}

struct Child {
    digest: Digest,
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Manifest {
    fn read(bytes: &[u8]) -> Option<Manifest> {
        let document: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let digest_of = |entry: &serde_json::Value| {
            entry
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| d.parse::<Digest>().ok())
        };
        if let Some(children) = document.get("manifests").and_then(|m| m.as_array()) {
            let text = |entry: &serde_json::Value, key: &str| {
                entry
                    .get("platform")
                    .and_then(|p| p.get(key))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            return Some(Manifest::Index(
                children
                    .iter()
                    .filter_map(|entry| {
                        Some(Child {
                            digest: digest_of(entry)?,
                            os: text(entry, "os").unwrap_or_default(),
                            architecture: text(entry, "architecture").unwrap_or_default(),
                            variant: text(entry, "variant"),
                        })
                    })
                    .collect(),
            ));
        }
        let config = document.get("config").and_then(digest_of);
        let layers = document
            .get("layers")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(digest_of);
        Some(Manifest::Image(config.into_iter().chain(layers).collect()))
    }
}
