//! What the store holds, kept in memory: every repository with its records, and every content
//! object with its size. The catalog, the tag-list fallback and the cache's accounting read it
//! instead of walking the store per request (with 5,000 repositories a walk cost ~1 s on the
//! filesystem, and one LIST per 1,000 keys on S3).
//!
//! The store stays the truth. The index is built from one listing at start, and again by
//! `Storage::rebuild_index` (another replica may have changed a shared bucket); every write
//! and delete through `Storage` updates it as it happens. Serving never trusts it: a key the
//! index lists but the store lacks is a 404 from storage, which means fetch again. Changes made
//! while a listing runs are replayed onto it, so a rebuild loses none of them.
//!
//! Memory: one entry per content object (its digest string and size) and one per record name;
//! measured at about 175 bytes per stored object (52.6 MB for 200,000 blobs and 100,000 links
//! in 5,000 repositories), so ~175 MB per million objects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::layout::{classify, KeyKind};

/// The records of one repository.
#[derive(Default, Debug, Clone)]
pub struct Records {
    pub tags: BTreeSet<String>,
    /// Digests of the manifests it holds.
    pub manifests: BTreeSet<String>,
    /// Digests of the blobs it may serve.
    pub blobs: BTreeSet<String>,
}

impl Records {
    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.manifests.is_empty() && self.blobs.is_empty()
    }
}

#[derive(Default)]
struct State {
    /// Content objects by digest: their size.
    content: HashMap<String, u64>,
    content_bytes: u64,
    repositories: BTreeMap<String, Records>,
}

impl State {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Put { key, size } => self.put(key, *size),
            Change::Delete { key } => self.delete(key),
        }
    }

    fn put(&mut self, key: &str, size: u64) {
        match classify(key) {
            KeyKind::Content { digest } => {
                if let Some(old) = self.content.insert(digest, size) {
                    self.content_bytes -= old;
                }
                self.content_bytes += size;
            }
            KeyKind::BlobLink { repository, digest } => {
                self.records(repository).blobs.insert(digest);
            }
            KeyKind::ManifestLink { repository, digest } => {
                self.records(repository).manifests.insert(digest);
            }
            KeyKind::Tag { repository, tag } => {
                self.records(repository).tags.insert(tag.to_owned());
            }
            KeyKind::Other => {}
        }
    }

    fn delete(&mut self, key: &str) {
        let repository = match classify(key) {
            KeyKind::Content { digest } => {
                if let Some(old) = self.content.remove(&digest) {
                    self.content_bytes -= old;
                }
                return;
            }
            KeyKind::BlobLink { repository, digest } => {
                self.with_records(repository, |r| r.blobs.remove(&digest));
                repository
            }
            KeyKind::ManifestLink { repository, digest } => {
                self.with_records(repository, |r| r.manifests.remove(&digest));
                repository
            }
            KeyKind::Tag { repository, tag } => {
                self.with_records(repository, |r| r.tags.remove(tag));
                repository
            }
            KeyKind::Other => return,
        };
        if self
            .repositories
            .get(repository)
            .is_some_and(Records::is_empty)
        {
            self.repositories.remove(repository);
        }
    }

    fn records(&mut self, repository: &str) -> &mut Records {
        self.repositories.entry(repository.to_owned()).or_default()
    }

    fn with_records(&mut self, repository: &str, change: impl FnOnce(&mut Records) -> bool) {
        if let Some(records) = self.repositories.get_mut(repository) {
            change(records);
        }
    }
}

/// A change the index saw while a listing ran, replayed onto the listing's result.
enum Change {
    Put { key: String, size: u64 },
    Delete { key: String },
}

pub struct StoreIndex {
    inner: Mutex<Inner>,
    /// Content bytes above which `size_alarm` rings (u64::MAX: never).
    alarm_above: AtomicU64,
    size_alarm: Notify,
}

impl Default for StoreIndex {
    fn default() -> Self {
        StoreIndex {
            inner: Mutex::default(),
            alarm_above: AtomicU64::new(u64::MAX),
            size_alarm: Notify::new(),
        }
    }
}

#[derive(Default)]
struct Inner {
    state: State,
    /// Set while a listing runs: the changes made meanwhile.
    during_rebuild: Option<Vec<Change>>,
    /// A listing completed at least once.
    built: bool,
}

/// One repository as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySummary {
    pub name: String,
    pub tags: Vec<String>,
    pub manifests: usize,
    pub blobs: usize,
    /// Bytes of the content its links reference (content shared with other repositories is
    /// counted in each).
    pub bytes: u64,
}

/// What the store holds, in figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub content_objects: usize,
    pub content_bytes: u64,
    pub repositories: usize,
}

impl StoreIndex {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change is a few map operations that cannot leave the state half done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, change: Change) {
        let mut inner = self.lock();
        inner.state.apply(&change);
        if let Some(log) = inner.during_rebuild.as_mut() {
            log.push(change);
        }
        self.check_size(inner.state.content_bytes);
    }

    fn check_size(&self, content_bytes: u64) {
        if content_bytes > self.alarm_above.load(Ordering::Relaxed) {
            self.size_alarm.notify_one();
        }
    }

    /// Rings `size_alarm` whenever a change leaves more than `bytes` of content (the budget's
    /// high watermark: the evictor need not wait for its next check).
    pub fn alarm_above(&self, bytes: u64) {
        self.alarm_above.store(bytes, Ordering::Relaxed);
        self.check_size(self.totals().content_bytes);
    }

    /// Completes once content went above the alarm's size (at once if it did since the last
    /// wait completed: one permit is kept).
    pub fn size_alarm(&self) -> Notified<'_> {
        self.size_alarm.notified()
    }

    /// An object was written at `key`.
    pub fn put(&self, key: &str, size: u64) {
        self.change(Change::Put {
            key: key.to_owned(),
            size,
        });
    }

    /// The object at `key` was deleted (or found missing).
    pub fn delete(&self, key: &str) {
        self.change(Change::Delete {
            key: key.to_owned(),
        });
    }

    /// A listing of the whole store starts: changes from now on are kept to replay.
    pub fn begin_rebuild(&self) {
        self.lock().during_rebuild = Some(Vec::new());
    }

    /// The listing (every key with its size) is complete: it becomes the index, with the
    /// changes made while it ran replayed onto it.
    pub fn finish_rebuild(&self, listed: impl IntoIterator<Item = (String, u64)>) {
        let mut state = State::default();
        for (key, size) in listed {
            state.put(&key, size);
        }
        let mut inner = self.lock();
        for change in inner.during_rebuild.take().unwrap_or_default() {
            state.apply(&change);
        }
        inner.state = state;
        inner.built = true;
        self.check_size(inner.state.content_bytes);
    }

    /// A listing failed: the index keeps what it had, with the changes made meanwhile.
    pub fn abandon_rebuild(&self) {
        self.lock().during_rebuild = None;
    }

    pub fn is_built(&self) -> bool {
        self.lock().built
    }

    /// Every repository with at least one record, sorted.
    pub fn repositories(&self) -> Vec<String> {
        self.lock().state.repositories.keys().cloned().collect()
    }

    /// One page of repositories, in order: at most `n` after `last` for which `keep` says
    /// yes, and whether more follow. Reads only as far as the page goes.
    pub fn repositories_page(
        &self,
        last: Option<&str>,
        n: usize,
        keep: impl Fn(&str) -> bool,
    ) -> (Vec<String>, bool) {
        use std::ops::Bound;
        let inner = self.lock();
        let from = last.map_or(Bound::Unbounded, |l| Bound::Excluded(l.to_owned()));
        let mut names = inner
            .state
            .repositories
            .range::<String, _>((from, Bound::Unbounded))
            .map(|(name, _)| name)
            .filter(|name| keep(name));
        let page: Vec<String> = names.by_ref().take(n).cloned().collect();
        let more = names.next().is_some();
        (page, more)
    }

    /// Repositories whose name contains `query` and that `keep` lets through, in order: how
    /// many there are, and those from the `skip`th on (at most `take`), each with its tags and
    /// the bytes of the content it references. Reads every name (a substring match cannot use
    /// the order), but sums sizes for the page only.
    pub fn search(
        &self,
        query: &str,
        skip: usize,
        take: usize,
        keep: impl Fn(&str) -> bool,
    ) -> (usize, Vec<RepositorySummary>) {
        let inner = self.lock();
        let state = &inner.state;
        let matching = state
            .repositories
            .iter()
            .filter(|(name, _)| name.contains(query) && keep(name));
        let mut total = 0;
        let mut page = Vec::new();
        for (name, records) in matching {
            if total >= skip && page.len() < take {
                page.push(RepositorySummary {
                    name: name.clone(),
                    tags: records.tags.iter().cloned().collect(),
                    manifests: records.manifests.len(),
                    blobs: records.blobs.len(),
                    bytes: records
                        .manifests
                        .iter()
                        .chain(&records.blobs)
                        .filter_map(|digest| state.content.get(digest))
                        .sum(),
                });
            }
            total += 1;
        }
        (total, page)
    }

    /// The tags of `repository`, sorted, once the index is built and knows any.
    pub fn tags(&self, repository: &str) -> Option<Vec<String>> {
        let inner = self.lock();
        let records = inner
            .state
            .repositories
            .get(repository)
            .filter(|_| inner.built)?;
        Some(records.tags.iter().cloned().collect())
    }

    /// The records of `repository`, if it has any.
    #[cfg(test)]
    pub fn records(&self, repository: &str) -> Option<Records> {
        self.lock().state.repositories.get(repository).cloned()
    }

    /// The size of the content object with this digest, if the store holds it.
    pub fn content_size(&self, digest: &str) -> Option<u64> {
        self.lock().state.content.get(digest).copied()
    }

    pub fn totals(&self) -> Totals {
        let inner = self.lock();
        Totals {
            content_objects: inner.state.content.len(),
            content_bytes: inner.state.content_bytes,
            repositories: inner.state.repositories.len(),
        }
    }

    /// Every content object's digest and size.
    pub fn contents(&self) -> Vec<(String, u64)> {
        let inner = self.lock();
        inner
            .state
            .content
            .iter()
            .map(|(digest, size)| (digest.clone(), *size))
            .collect()
    }

    /// Every repository and its records.
    pub fn all_records(&self) -> Vec<(String, Records)> {
        let inner = self.lock();
        inner
            .state
            .repositories
            .iter()
            .map(|(name, records)| (name.clone(), records.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn content_key(hex: &str) -> String {
        format!("blobs/sha256/{}/{hex}", &hex[..2])
    }

    #[test]
    fn writes_and_deletes_keep_repositories_and_totals() {
        let index = StoreIndex::default();
        index.put(&content_key(HEX), 10);
        index.put(&content_key(HEX), 10); // written again: counted once
        index.put(
            &format!("repositories/library/alpine/_blobs/sha256/{HEX}"),
            40,
        );
        index.put("repositories/ghcr.io/o/a/_tags/v1", 90);
        index.put("_cistern/probe", 1);
        assert_eq!(
            index.totals(),
            Totals {
                content_objects: 1,
                content_bytes: 10,
                repositories: 2
            }
        );
        assert_eq!(index.repositories(), ["ghcr.io/o/a", "library/alpine"]);
        let records = index.records("library/alpine").unwrap();
        assert!(records.blobs.contains(&format!("sha256:{HEX}")));
        index.delete("repositories/ghcr.io/o/a/_tags/v1");
        assert_eq!(index.repositories(), ["library/alpine"]);
        index.delete(&content_key(HEX));
        assert_eq!(index.totals().content_bytes, 0);
        assert_eq!(index.content_size(&format!("sha256:{HEX}")), None);
    }

    #[test]
    fn repository_pages_read_from_the_last_name_on() {
        let index = StoreIndex::default();
        for name in ["a/1", "a/2", "b/1", "b/2", "c/1"] {
            index.put(&format!("repositories/{name}/_tags/v1"), 1);
        }
        let all = |_: &str| true;
        assert_eq!(
            index.repositories_page(None, 2, all),
            (vec!["a/1".into(), "a/2".into()], true)
        );
        assert_eq!(
            index.repositories_page(Some("a/2"), 2, all),
            (vec!["b/1".into(), "b/2".into()], true)
        );
        assert_eq!(
            index.repositories_page(Some("b/2"), 2, all),
            (vec!["c/1".into()], false)
        );
        let no_b = |name: &str| !name.starts_with("b/");
        assert_eq!(
            index.repositories_page(Some("a/1"), 2, no_b),
            (vec!["a/2".into(), "c/1".into()], false)
        );
        assert_eq!(index.repositories_page(None, 0, all), (vec![], true));
    }

    #[test]
    fn a_search_pages_through_the_names_that_match() {
        let index = StoreIndex::default();
        index.put(&content_key(HEX), 10);
        for name in ["a/app", "a/db", "b/app", "c/app"] {
            index.put(&format!("repositories/{name}/_tags/v1"), 1);
            index.put(&format!("repositories/{name}/_blobs/sha256/{HEX}"), 1);
        }
        index.put("repositories/a/app/_tags/v2", 1);
        let all = |_: &str| true;
        let names =
            |page: Vec<RepositorySummary>| page.into_iter().map(|r| r.name).collect::<Vec<_>>();
        let (total, page) = index.search("app", 0, 2, all);
        assert_eq!(total, 3);
        assert_eq!(page[0].tags, ["v1", "v2"]);
        assert_eq!(page[0].bytes, 10);
        assert_eq!(names(page), ["a/app", "b/app"]);
        let (total, page) = index.search("app", 2, 2, all);
        assert_eq!((total, names(page)), (3, vec!["c/app".to_owned()]));
        assert_eq!(index.search("app", 10, 2, all), (3, vec![]));
        let (total, page) = index.search("", 0, 10, |n| !n.starts_with("b/"));
        assert_eq!((total, names(page).len()), (3, 3));
    }

    #[test]
    fn a_rebuild_keeps_the_changes_made_while_it_listed() {
        let index = StoreIndex::default();
        index.put("repositories/old/one/_tags/v1", 1);
        index.begin_rebuild();
        // While the listing runs: one repository is added, one the listing saw is deleted.
        index.put("repositories/new/two/_tags/v1", 1);
        index.delete("repositories/gone/three/_tags/v1");
        assert!(!index.is_built());
        index.finish_rebuild([
            ("repositories/old/one/_tags/v1".to_owned(), 1),
            ("repositories/gone/three/_tags/v1".to_owned(), 1),
            (content_key(HEX), 7),
        ]);
        assert!(index.is_built());
        assert_eq!(index.repositories(), ["new/two", "old/one"]);
        assert_eq!(index.totals().content_bytes, 7);
    }

    #[test]
    fn the_size_alarm_rings_when_content_goes_above_its_size() {
        let index = StoreIndex::default();
        index.alarm_above(10);
        index.put(&format!("blobs/sha256/{}/{HEX}", &HEX[..2]), 10);
        use futures::FutureExt;
        assert!(
            index.size_alarm().now_or_never().is_none(),
            "not above 10 bytes yet"
        );
        let other = "b".repeat(64);
        index.put(&format!("blobs/sha256/bb/{other}"), 1);
        assert!(
            index.size_alarm().now_or_never().is_some(),
            "rung at 11 bytes"
        );
    }
}
