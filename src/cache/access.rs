//! When each part of an image was last served: tags (per repository) and content (manifests
//! and blobs, by digest). `proxy.ttl` counts from these times, and eviction takes the least
//! recently pulled images first.
//!
//! Recorded on every answer, so it must cost next to nothing on a warm pull: a map update under
//! a short lock, with no allocation once an entry exists. Kept in memory, and published to the
//! store now and then (`access_publish.rs`) so that a restart, and every replica of a shared
//! bucket, know them too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::records::now_ms;
use crate::registry::{Digest, RepoName, Tag};

#[derive(Default)]
pub struct AccessTimes {
    tags: Mutex<HashMap<RepoName, HashMap<Tag, u64>>>,
    content: Mutex<HashMap<Digest, u64>>,
    /// Counts recordings, so the publisher knows whether anything changed.
    recorded: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A map of plain numbers: a panic elsewhere cannot leave it inconsistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AccessTimes {
    /// A tag of `repo` was resolved for a client now.
    pub fn tag_served(&self, repo: &RepoName, tag: &Tag) {
        self.tag_served_at(repo, tag, now_ms());
    }

    fn tag_served_at(&self, repo: &RepoName, tag: &Tag, now: u64) {
        self.recorded.fetch_add(1, Ordering::Relaxed);
        let mut tags = lock(&self.tags);
        match tags.get_mut(repo) {
            Some(of_repo) => match of_repo.get_mut(tag) {
                Some(at) => *at = now.max(*at),
                None => {
                    of_repo.insert(tag.clone(), now);
                }
            },
            None => {
                tags.insert(repo.clone(), HashMap::from([(tag.clone(), now)]));
            }
        }
    }

    /// A manifest or blob was served now.
    pub fn content_served(&self, digest: &Digest) {
        self.content_served_at(digest, now_ms());
    }

    fn content_served_at(&self, digest: &Digest, now: u64) {
        self.recorded.fetch_add(1, Ordering::Relaxed);
        let mut content = lock(&self.content);
        match content.get_mut(digest) {
            Some(at) => *at = now.max(*at),
            None => {
                content.insert(digest.clone(), now);
            }
        }
    }

    /// When any tag of `repository` was last served (milliseconds since the Unix epoch), as
    /// far as this process knows (its own serves, and what it merged from the store).
    pub fn repository_last_served(&self, repository: &RepoName) -> Option<u64> {
        lock(&self.tags).get(repository)?.values().max().copied()
    }

    /// When the tag was last served by this process (milliseconds since the Unix epoch).
    #[cfg(test)]
    pub fn tag_last_served(&self, repo: &RepoName, tag: &Tag) -> Option<u64> {
        lock(&self.tags).get(repo)?.get(tag).copied()
    }

    /// When the content was last served by this process.
    #[cfg(test)]
    pub fn content_last_served(&self, digest: &Digest) -> Option<u64> {
        lock(&self.content).get(digest).copied()
    }

    /// How many times were recorded so far: it changes when anything was served.
    pub fn recordings(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// Takes in times recorded elsewhere (by another replica, or before a restart), keeping
    /// the later of two. Entries that do not parse are skipped.
    pub fn merge(&self, published: &Published) {
        for (repository, tags) in &published.tags {
            let Ok(repo) = RepoName::parse_shown(repository) else {
                continue;
            };
            for (tag, at) in tags {
                if let Ok(tag) = Tag::parse(tag) {
                    self.tag_served_at(&repo, &tag, *at);
                }
            }
        }
        for (digest, at) in &published.content {
            if let Ok(digest) = digest.parse::<Digest>() {
                self.content_served_at(&digest, *at);
            }
        }
    }

    /// Everything, in the form published to the store.
    pub fn published(&self) -> Published {
        let mut published = Published::default();
        for ((repository, tag), at) in self.tags() {
            published
                .tags
                .entry(repository)
                .or_default()
                .insert(tag, at);
        }
        published.content = self.contents();
        published
    }

    /// Every tag's time, by `repository` (as the mirror names it) and tag.
    pub fn tags(&self) -> HashMap<(String, String), u64> {
        lock(&self.tags)
            .iter()
            .flat_map(|(repo, tags)| {
                tags.iter()
                    .map(|(tag, at)| ((repo.as_str().to_owned(), tag.as_str().to_owned()), *at))
            })
            .collect()
    }

    /// Every content object's time, by digest (`sha256:<hex>`).
    pub fn contents(&self) -> HashMap<String, u64> {
        lock(&self.content)
            .iter()
            .map(|(digest, at)| (digest.to_string(), *at))
            .collect()
    }
}

/// Access times as one replica publishes them: `{"tags": {repository: {tag: ms}}, "content":
/// {digest: ms}}`.
#[derive(Default, Debug, serde::Serialize, serde::Deserialize)]
pub struct Published {
    #[serde(default)]
    pub tags: HashMap<String, HashMap<String, u64>>,
    #[serde(default)]
    pub content: HashMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_serve_is_kept_per_tag_and_per_digest() {
        let times = AccessTimes::default();
        let repo = RepoName::parse("alpine").unwrap();
        let tag = Tag::parse("3.20").unwrap();
        let digest = Digest::sha256_of(b"x");
        assert_eq!(times.tag_last_served(&repo, &tag), None);
        let before = now_ms();
        times.tag_served(&repo, &tag);
        times.content_served(&digest);
        let first = times.tag_last_served(&repo, &tag).unwrap();
        assert!(first >= before);
        times.tag_served(&repo, &tag);
        assert!(times.tag_last_served(&repo, &tag).unwrap() >= first);
        assert!(times.content_last_served(&digest).unwrap() >= before);
        let ghcr = crate::registry::RegistryId::Host("ghcr.io".into());
        let other = RepoName::parse_in(&ghcr, "alpine").unwrap();
        assert_eq!(times.tag_last_served(&other, &tag), None);
        assert_eq!(
            times.tags().keys().cloned().collect::<Vec<_>>(),
            [("library/alpine".to_owned(), "3.20".to_owned())]
        );
        assert_eq!(times.contents().len(), 1);

        // What one process published, another takes in, keeping the later time.
        let elsewhere = AccessTimes::default();
        elsewhere.tag_served_at(&other, &tag, 5);
        elsewhere.tag_served_at(&repo, &tag, 1);
        elsewhere.merge(&times.published());
        assert_eq!(elsewhere.tag_last_served(&other, &tag), Some(5));
        assert_eq!(
            elsewhere.tag_last_served(&repo, &tag),
            Some(first.max(times.tag_last_served(&repo, &tag).unwrap()))
        );
        assert!(elsewhere.content_last_served(&digest).is_some());
    }
}
