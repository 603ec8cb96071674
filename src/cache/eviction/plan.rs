//! Which images to evict, decided on a snapshot of the cache: a pure function, so the order and
//! the reference rules are tested without a store.
//!
//! An image is a tag (its manifest, an index's child manifests, their config and layers) or a
//! manifest some repository holds that no tag of it reaches (pulled by digest). Images go in
//! the order they were last pulled, oldest first; before any image, content no image references
//! (orphans). Content is deleted only when no kept image, in any repository or registry,
//! references it: a base layer shared by a kept image stays. Never evicted: pinned images, what
//! is being fetched, and what was served within the protection window.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// One repository's records, with what each tag points to.
#[derive(Debug, Default, Clone)]
pub struct RepoSnapshot {
    /// Tag -> the digest of the manifest it points to.
    pub tags: BTreeMap<String, String>,
    /// Digests of the manifests it holds.
    pub manifests: BTreeSet<String>,
    /// Digests of the blobs it may serve.
    pub blobs: BTreeSet<String>,
}

/// The cache as the planner sees it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Content objects: digest -> size.
    pub content: HashMap<String, u64>,
    pub repositories: BTreeMap<String, RepoSnapshot>,
    /// Manifest digest -> the digests it references (child manifests, config, layers).
    pub references: HashMap<String, Vec<String>>,
    /// (repository, tag) -> when it was last served (ms since the epoch).
    pub tag_served: HashMap<(String, String), u64>,
    /// (repository, tag) -> when upstream was last asked about it (its record's time): a pull
    /// as far as anyone could tell when no serve was recorded (before a restart, or by a
    /// replica that has not published yet).
    pub tag_checked: HashMap<(String, String), u64>,
    /// Digest -> when it was last served.
    pub content_served: HashMap<String, u64>,
}

/// What may not be evicted, and how far to go.
pub struct Policy<'a> {
    /// Stop once content takes at most this many bytes.
    pub target_bytes: u64,
    /// Anything served at or after this time (ms since the epoch) stays.
    pub protect_since_ms: u64,
    /// Digests being fetched right now.
    pub in_flight: &'a HashSet<String>,
    /// Whether `repository:tag` is pinned.
    pub pinned: &'a dyn Fn(&str, &str) -> bool,
}

/// An image the plan evicts, and why it went when it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictedImage {
    pub repository: String,
    /// None for a manifest no tag reaches.
    pub tag: Option<String>,
    pub digest: String,
    /// When it was last pulled (ms since the epoch), 0 when never seen pulled.
    pub last_pulled_ms: u64,
}

/// Keys are named by what they are, in the order they must be deleted: records before the
/// content they point to, so no reader finds a record whose content was deleted first... and
/// if one does, storage's 404 means fetch again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub images: Vec<EvictedImage>,
    /// (repository, tag) tag records to delete.
    pub tags: Vec<(String, String)>,
    /// (repository, digest) manifest links to delete.
    pub manifest_links: Vec<(String, String)>,
    /// (repository, digest) blob links to delete.
    pub blob_links: Vec<(String, String)>,
    /// Content digests to delete, orphans first.
    pub content: Vec<String>,
    /// Of which: orphans, referenced by no image.
    pub orphans: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

pub(super) struct Image {
    pub(super) repository: String,
    pub(super) tag: Option<String>,
    pub(super) digest: String,
    /// The root manifest and everything it references, transitively.
    pub(super) closure: Vec<String>,
    last_pulled_ms: u64,
}

impl Image {
    /// How a person names it: `repository:tag`, or `repository@digest` when no tag reaches it.
    pub(super) fn shown(&self) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{tag}", self.repository),
            None => format!("{}@{}", self.repository, self.digest),
        }
    }
}

/// References held by the images still kept: over all repositories, and per repository.
pub(super) struct Ledger {
    held: HashMap<String, usize>,
    held_in: HashMap<(String, String), usize>,
}

impl Ledger {
    pub(super) fn of(images: &[Image]) -> Self {
        let mut ledger = Ledger {
            held: HashMap::new(),
            held_in: HashMap::new(),
        };
        for image in images {
            for digest in &image.closure {
                *ledger.held.entry(digest.clone()).or_default() += 1;
                *ledger
                    .held_in
                    .entry((image.repository.clone(), digest.clone()))
                    .or_default() += 1;
            }
        }
        ledger
    }

    /// How many kept images reference `digest`, in any repository.
    pub(super) fn holders(&self, digest: &str) -> usize {
        self.held.get(digest).copied().unwrap_or(0)
    }

    /// How many kept images of `repository` reference `digest`.
    pub(super) fn holders_in(&self, repository: &str, digest: &str) -> usize {
        self.held_in
            .get(&(repository.to_owned(), digest.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Takes `image` out of the kept images and adds to `plan` what goes with it: its tag, the
    /// links its repository no longer needs, and the content no kept image references any
    /// more, unless `keep` says that content must stay.
    pub(super) fn remove(
        &mut self,
        image: Image,
        snapshot: &Snapshot,
        plan: &mut Plan,
        keep: &dyn Fn(&str) -> bool,
    ) {
        let repo = &snapshot.repositories[&image.repository];
        if let Some(tag) = &image.tag {
            plan.tags.push((image.repository.clone(), tag.clone()));
        }
        for digest in &image.closure {
            let in_repo = self
                .held_in
                .get_mut(&(image.repository.clone(), digest.clone()))
                .expect("every closure digest was counted");
            *in_repo -= 1;
            if *in_repo == 0 {
                if repo.manifests.contains(digest) {
                    plan.manifest_links
                        .push((image.repository.clone(), digest.clone()));
                }
                if repo.blobs.contains(digest) {
                    plan.blob_links
                        .push((image.repository.clone(), digest.clone()));
                }
            }
            let anywhere = self
                .held
                .get_mut(digest)
                .expect("every closure digest was counted");
            *anywhere -= 1;
            if *anywhere == 0 {
                if let Some(size) = snapshot.content.get(digest).filter(|_| !keep(digest)) {
                    plan.bytes_after -= size;
                    plan.content.push(digest.clone());
                }
            }
        }
        plan.images.push(EvictedImage {
            repository: image.repository,
            tag: image.tag,
            digest: image.digest,
            last_pulled_ms: image.last_pulled_ms,
        });
    }
}

/// The digest and everything it references, transitively, each once.
fn closure(root: &str, references: &HashMap<String, Vec<String>>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(digest) = stack.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        if let Some(children) = references.get(&digest) {
            stack.extend(children.iter().cloned());
        }
        order.push(digest);
    }
    order
}

pub(super) fn images(snapshot: &Snapshot) -> Vec<Image> {
    let served = |digest: &str| snapshot.content_served.get(digest).copied().unwrap_or(0);
    let mut images = Vec::new();
    for (repository, repo) in &snapshot.repositories {
        let mut reached: HashSet<String> = HashSet::new();
        for (tag, digest) in &repo.tags {
            let closure = closure(digest, &snapshot.references);
            reached.extend(closure.iter().cloned());
            let key = (repository.clone(), tag.clone());
            let tag_served = snapshot
                .tag_served
                .get(&key)
                .copied()
                .unwrap_or(0)
                .max(snapshot.tag_checked.get(&key).copied().unwrap_or(0));
            images.push(Image {
                repository: repository.clone(),
                tag: Some(tag.clone()),
                digest: digest.clone(),
                last_pulled_ms: tag_served.max(served(digest)),
                closure,
            });
        }
        for digest in repo.manifests.iter().filter(|d| !reached.contains(*d)) {
            let closure = closure(digest, &snapshot.references);
            images.push(Image {
                repository: repository.clone(),
                tag: None,
                digest: digest.clone(),
                last_pulled_ms: served(digest),
                closure,
            });
        }
    }
    images
}

/// Bytes of content the pinned images keep.
pub fn pinned_bytes(snapshot: &Snapshot, pinned: &dyn Fn(&str, &str) -> bool) -> u64 {
    let kept: HashSet<String> = images(snapshot)
        .into_iter()
        .filter(|i| i.tag.as_deref().is_some_and(|t| pinned(&i.repository, t)))
        .flat_map(|i| i.closure)
        .collect();
    kept.iter().filter_map(|d| snapshot.content.get(d)).sum()
}

pub fn plan(snapshot: &Snapshot, policy: &Policy) -> Plan {
    let size = |digest: &str| snapshot.content.get(digest).copied().unwrap_or(0);
    let bytes_before: u64 = snapshot.content.values().sum();
    let mut plan = Plan {
        bytes_before,
        bytes_after: bytes_before,
        ..Plan::default()
    };
    let recently_served = |digest: &str| {
        snapshot
            .content_served
            .get(digest)
            .is_some_and(|at| *at >= policy.protect_since_ms)
    };
    let untouchable = |digest: &str| policy.in_flight.contains(digest) || recently_served(digest);
    let mut images = images(snapshot);
    let mut ledger = Ledger::of(&images);
    if plan.bytes_after <= policy.target_bytes {
        return plan;
    }
    // Orphans first: content no image references.
    let mut orphans: Vec<&String> = snapshot
        .content
        .keys()
        .filter(|d| ledger.holders(d) == 0 && !untouchable(d))
        .collect();
    orphans.sort_by_key(|d| (snapshot.content_served.get(*d).copied().unwrap_or(0), *d));
    for digest in orphans {
        if plan.bytes_after <= policy.target_bytes {
            break;
        }
        plan.bytes_after -= size(digest);
        plan.content.push(digest.clone());
        plan.orphans += 1;
        for (repository, repo) in &snapshot.repositories {
            if repo.blobs.contains(digest) {
                plan.blob_links.push((repository.clone(), digest.clone()));
            }
        }
    }
    // Then whole images, least recently pulled first.
    images.sort_by(|a, b| {
        (a.last_pulled_ms, &a.repository, &a.tag, &a.digest).cmp(&(
            b.last_pulled_ms,
            &b.repository,
            &b.tag,
            &b.digest,
        ))
    });
    for image in images {
        if plan.bytes_after <= policy.target_bytes {
            break;
        }
        let pinned = image
            .tag
            .as_deref()
            .is_some_and(|tag| (policy.pinned)(&image.repository, tag));
        // Content only this image holds that is being fetched or was just served (a client
        // reading a layer of it) could not go with it: evicting the rest would leave that
        // content an orphan and free nothing, so the whole image stays.
        let in_use =
            |d: &String| policy.in_flight.contains(d) || (ledger.holders(d) == 1 && untouchable(d));
        let protected =
            image.last_pulled_ms >= policy.protect_since_ms || image.closure.iter().any(in_use);
        if pinned || protected {
            continue;
        }
        ledger.remove(image, snapshot, &mut plan, &untouchable);
    }
    plan
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Two images sharing a base layer in one repository, and one in another registry sharing
    /// it too; each manifest is 1 byte, each layer 100.
    pub(in crate::cache::eviction) fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for (digest, size) in [
            ("m-old", 1),
            ("m-new", 1),
            ("m-ghcr", 1),
            ("base", 100),
            ("old-top", 100),
            ("new-top", 100),
            ("ghcr-top", 100),
            ("orphan", 100),
        ] {
            s.content.insert(digest.into(), size);
        }
        s.references
            .insert("m-old".into(), vec!["base".into(), "old-top".into()]);
        s.references
            .insert("m-new".into(), vec!["base".into(), "new-top".into()]);
        s.references
            .insert("m-ghcr".into(), vec!["base".into(), "ghcr-top".into()]);
        let hub = RepoSnapshot {
            tags: BTreeMap::from([("1".into(), "m-old".into()), ("2".into(), "m-new".into())]),
            manifests: ["m-old", "m-new"].map(String::from).into(),
            blobs: ["base", "old-top", "new-top"].map(String::from).into(),
        };
        let ghcr = RepoSnapshot {
            tags: BTreeMap::from([("1".into(), "m-ghcr".into())]),
            manifests: ["m-ghcr"].map(String::from).into(),
            blobs: ["base", "ghcr-top"].map(String::from).into(),
        };
        s.repositories.insert("library/app".into(), hub);
        s.repositories.insert("ghcr.io/o/app".into(), ghcr);
        s.tag_served.insert(("library/app".into(), "1".into()), 10);
        s.tag_served
            .insert(("ghcr.io/o/app".into(), "1".into()), 20);
        s.tag_served.insert(("library/app".into(), "2".into()), 30);
        s
    }

    fn run(snapshot: &Snapshot, target: u64, pinned: &dyn Fn(&str, &str) -> bool) -> Plan {
        let in_flight = HashSet::new();
        plan(
            snapshot,
            &Policy {
                target_bytes: target,
                protect_since_ms: 1000,
                in_flight: &in_flight,
                pinned,
            },
        )
    }

    #[test]
    fn under_the_target_nothing_goes() {
        let plan = run(&snapshot(), 10_000, &|_, _| false);
        assert!(plan.images.is_empty() && plan.content.is_empty());
        assert_eq!(plan.bytes_before, 503);
    }

    #[test]
    fn orphans_go_first_then_the_least_recently_pulled_image_and_shared_layers_stay() {
        let plan = run(&snapshot(), 403, &|_, _| false);
        assert_eq!(plan.content, ["orphan"]);
        assert!(plan.images.is_empty());

        let plan = run(&snapshot(), 350, &|_, _| false);
        assert_eq!(plan.orphans, 1);
        let images: Vec<_> = plan
            .images
            .iter()
            .map(|i| (i.repository.as_str(), i.tag.as_deref()))
            .collect();
        assert_eq!(images, [("library/app", Some("1"))]);
        assert_eq!(
            plan.content,
            ["orphan", "m-old", "old-top"],
            "the base layer is still used"
        );
        assert_eq!(plan.tags, [("library/app".to_owned(), "1".to_owned())]);
        assert!(plan
            .blob_links
            .contains(&("library/app".to_owned(), "old-top".to_owned())));
        assert!(!plan
            .blob_links
            .contains(&("library/app".to_owned(), "base".to_owned())));
        assert_eq!(plan.bytes_after, 302);

        // Everything but the newest image: the base layer goes with the last image using it
        // only, and stays while library/app:2 is kept.
        let plan = run(&snapshot(), 201, &|_, _| false);
        let tags: Vec<_> = plan.images.iter().map(|i| i.tag.clone().unwrap()).collect();
        assert_eq!(tags, ["1", "1"]);
        assert!(!plan.content.contains(&"base".to_owned()));
        assert!(plan.content.contains(&"ghcr-top".to_owned()));
        assert_eq!(plan.bytes_after, 201);
    }

    #[test]
    fn pinned_recent_and_in_flight_images_stay() {
        let mut s = snapshot();
        let plan = run(&s, 0, &|repo, tag| repo == "library/app" && tag == "1");
        assert!(plan
            .images
            .iter()
            .all(|i| i.tag.as_deref() != Some("1") || i.repository != "library/app"));
        assert!(!plan.content.contains(&"old-top".to_owned()));
        assert!(
            !plan.content.contains(&"base".to_owned()),
            "a pinned image keeps its base"
        );

        s.tag_served
            .insert(("library/app".into(), "2".into()), 5000);
        let plan = run(&s, 0, &|_, _| false);
        assert!(
            plan.images.iter().all(|i| i.tag.as_deref() != Some("2")),
            "served just now"
        );

        let in_flight: HashSet<String> = ["ghcr-top".to_owned()].into();
        let plan = super::plan(
            &s,
            &Policy {
                target_bytes: 0,
                protect_since_ms: 1000,
                in_flight: &in_flight,
                pinned: &|_, _| false,
            },
        );
        assert!(plan.images.iter().all(|i| i.repository != "ghcr.io/o/app"));
    }

    #[test]
    fn an_image_whose_own_layer_was_just_read_stays_whole_but_a_shared_layer_protects_nobody() {
        let mut s = snapshot();
        // A client read library/app:1's own top layer just now: that image stays, whole,
        // and the next least recently pulled goes instead.
        s.content_served.insert("old-top".into(), 5000);
        let plan = run(&s, 350, &|_, _| false);
        let tags: Vec<_> = plan
            .images
            .iter()
            .map(|i| (i.repository.as_str(), i.tag.as_deref()))
            .collect();
        assert_eq!(tags, [("ghcr.io/o/app", Some("1"))]);
        assert!(!plan.content.contains(&"old-top".to_owned()));
        assert!(!plan
            .tags
            .contains(&("library/app".to_owned(), "1".to_owned())));

        // The shared base layer read just now protects no image: it simply stays.
        let mut s = snapshot();
        s.content_served.insert("base".into(), 5000);
        let plan = run(&s, 350, &|_, _| false);
        assert_eq!(plan.images.len(), 1);
        assert_eq!(plan.images[0].tag.as_deref(), Some("1"));
        assert_eq!(plan.images[0].repository, "library/app");
    }

    #[test]
    fn a_manifest_no_tag_reaches_is_an_image_of_its_own() {
        let mut s = snapshot();
        s.content.insert("m-digest".into(), 1);
        s.repositories
            .get_mut("library/app")
            .unwrap()
            .manifests
            .insert("m-digest".into());
        s.references.insert("m-digest".into(), vec!["base".into()]);
        let plan = run(&s, 0, &|_, _| false);
        assert!(plan
            .images
            .iter()
            .any(|i| i.tag.is_none() && i.digest == "m-digest"));
        assert!(plan
            .manifest_links
            .contains(&("library/app".to_owned(), "m-digest".to_owned())));
    }
}
