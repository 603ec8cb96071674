//! What an operator's purge deletes, decided on the same snapshot and with the same ledger as
//! an eviction (`plan.rs`): the images chosen go whole, and content goes only when no kept
//! image, in any repository or registry, references it. Unlike an eviction, a purge ignores
//! recency and pins (the operator asked), but never deletes content being fetched right now or
//! still linked by another repository; each digest it keeps is reported with why.

use std::collections::{BTreeSet, HashSet};

use super::plan::{images, Ledger, Plan, Snapshot};

/// Which images of one repository to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The tag's image (the tag record, and what only it references).
    Tag(String),
    /// Every image whose root manifest is this digest: the untagged one and every tag pointing
    /// to it (an index goes with its child manifests).
    Manifest(String),
    /// Every image of the repository, and every link it holds.
    Repository,
}

/// Why a purge chose nothing: the repository, tag or manifest is not cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCached {
    Repository,
    Image,
}

/// A digest the purged images referenced that stays, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub digest: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Default)]
pub struct PurgePlan {
    pub plan: Plan,
    pub kept: Vec<Kept>,
}

/// At most this many images are named as holding a kept digest.
const HOLDERS_SHOWN: usize = 5;

pub fn purge(
    snapshot: &Snapshot,
    repository: &str,
    selection: &Selection,
    in_flight: &HashSet<String>,
) -> Result<PurgePlan, NotCached> {
    let Some(repo) = snapshot.repositories.get(repository) else {
        return Err(NotCached::Repository);
    };
    let all = images(snapshot);
    let mut ledger = Ledger::of(&all);
    let (chosen, kept_images): (Vec<_>, Vec<_>) = all.into_iter().partition(|image| {
        image.repository == repository
            && match selection {
                Selection::Tag(tag) => image.tag.as_ref() == Some(tag),
                Selection::Manifest(digest) => &image.digest == digest,
                Selection::Repository => true,
            }
    });
    if chosen.is_empty() && *selection != Selection::Repository {
        return Err(NotCached::Image);
    }
    let linked_elsewhere = |digest: &str| {
        snapshot
            .repositories
            .iter()
            .filter(|(name, _)| name.as_str() != repository)
            .find(|(_, r)| r.blobs.contains(digest) || r.manifests.contains(digest))
            .map(|(name, _)| name.clone())
    };
    let keep = |digest: &str| in_flight.contains(digest) || linked_elsewhere(digest).is_some();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut plan = Plan {
        bytes_before: snapshot.content.values().sum(),
        ..Plan::default()
    };
    plan.bytes_after = plan.bytes_before;
    for image in chosen {
        touched.extend(image.closure.iter().cloned());
        ledger.remove(image, snapshot, &mut plan, &keep);
    }
    if *selection == Selection::Repository {
        // Links no image reaches (a blob fetched by digest alone) go with the repository.
        for digest in &repo.blobs {
            if ledger.holders_in(repository, digest) == 0 && touched.insert(digest.clone()) {
                plan.blob_links
                    .push((repository.to_owned(), digest.clone()));
                if ledger.holders(digest) == 0 && !keep(digest) {
                    if let Some(size) = snapshot.content.get(digest) {
                        plan.bytes_after -= size;
                        plan.content.push(digest.clone());
                    }
                }
            }
        }
    }
    let deleted: HashSet<&String> = plan.content.iter().collect();
    let kept = touched
        .iter()
        .filter(|d| !deleted.contains(d) && snapshot.content.contains_key(*d))
        .map(|digest| {
            let holders: Vec<String> = kept_images
                .iter()
                .filter(|image| image.closure.contains(digest))
                .map(|image| image.shown())
                .collect();
            let mut reasons = Vec::new();
            if !holders.is_empty() {
                let more = holders.len().saturating_sub(HOLDERS_SHOWN);
                let mut shown = holders[..holders.len().min(HOLDERS_SHOWN)].join(", ");
                if more > 0 {
                    shown.push_str(&format!(" and {more} more"));
                }
                reasons.push(format!("used by {shown}"));
            }
            if in_flight.contains(digest) {
                reasons.push("being fetched from upstream right now".to_owned());
            }
            // Said only when no image holds it: then the link alone keeps it.
            if let Some(other) = linked_elsewhere(digest).filter(|_| holders.is_empty()) {
                reasons.push(format!("linked by repository {other}"));
            }
            Kept {
                digest: digest.clone(),
                reasons,
            }
        })
        .collect();
    Ok(PurgePlan { plan, kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eviction planner's: library/app:1 and :2 share a base layer with ghcr.io/o/app:1;
    /// here :latest points to :2's manifest too, and library/app holds a blob fetched by
    /// digest alone.
    fn snapshot() -> Snapshot {
        let mut s = super::super::plan::tests::snapshot();
        let app = s.repositories.get_mut("library/app").unwrap();
        app.tags.insert("latest".into(), "m-new".into());
        app.blobs.insert("loose".into());
        s.content.insert("loose".into(), 100);
        s
    }

    fn run(repository: &str, selection: Selection) -> PurgePlan {
        purge(&snapshot(), repository, &selection, &HashSet::new()).unwrap()
    }

    #[test]
    fn a_tag_goes_with_what_only_it_references_and_a_shared_base_stays_with_its_reason() {
        let purged = run("library/app", Selection::Tag("1".into()));
        assert_eq!(
            purged.plan.tags,
            [("library/app".to_owned(), "1".to_owned())]
        );
        assert_eq!(purged.plan.content, ["m-old", "old-top"]);
        assert_eq!(purged.kept.len(), 1);
        assert_eq!(purged.kept[0].digest, "base");
        assert_eq!(
            purged.kept[0].reasons,
            ["used by ghcr.io/o/app:1, library/app:2, library/app:latest"]
        );
        assert!(!purged
            .plan
            .blob_links
            .contains(&("library/app".to_owned(), "base".to_owned())));
    }

    #[test]
    fn a_tag_sharing_its_manifest_with_another_tag_deletes_only_the_tag() {
        let purged = run("library/app", Selection::Tag("latest".into()));
        assert_eq!(purged.plan.tags.len(), 1);
        assert!(purged.plan.content.is_empty());
        assert!(purged.plan.manifest_links.is_empty());
    }

    #[test]
    fn a_manifest_takes_every_tag_pointing_to_it() {
        let purged = run("library/app", Selection::Manifest("m-new".into()));
        let tags: Vec<&str> = purged.plan.tags.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(tags, ["2", "latest"]);
        assert_eq!(purged.plan.content, ["m-new", "new-top"]);
    }

    #[test]
    fn a_repository_goes_whole_but_leaves_another_registrys_same_base() {
        let purged = run("library/app", Selection::Repository);
        let content: BTreeSet<&str> = purged.plan.content.iter().map(String::as_str).collect();
        assert_eq!(
            content,
            BTreeSet::from(["m-old", "m-new", "old-top", "new-top", "loose"])
        );
        assert!(purged
            .plan
            .blob_links
            .contains(&("library/app".to_owned(), "base".to_owned())));
        assert!(purged
            .plan
            .blob_links
            .contains(&("library/app".to_owned(), "loose".to_owned())));
        assert_eq!(purged.kept.len(), 1);
        assert_eq!(purged.kept[0].digest, "base");
        assert_eq!(purged.kept[0].reasons, ["used by ghcr.io/o/app:1"]);
        assert!(purged
            .plan
            .tags
            .iter()
            .all(|(repository, _)| repository == "library/app"));
    }

    #[test]
    fn a_blob_another_repository_links_stays_even_when_no_image_uses_it() {
        let mut s = snapshot();
        s.repositories
            .get_mut("ghcr.io/o/app")
            .unwrap()
            .blobs
            .insert("loose".into());
        let purged = purge(&s, "library/app", &Selection::Repository, &HashSet::new()).unwrap();
        assert!(!purged.plan.content.contains(&"loose".to_owned()));
        assert!(purged
            .plan
            .blob_links
            .contains(&("library/app".to_owned(), "loose".to_owned())));
        let loose = purged.kept.iter().find(|k| k.digest == "loose").unwrap();
        assert_eq!(loose.reasons, ["linked by repository ghcr.io/o/app"]);
    }

    #[test]
    fn content_being_fetched_stays_and_unknown_names_choose_nothing() {
        let in_flight: HashSet<String> = ["old-top".to_owned()].into();
        let purged = purge(
            &snapshot(),
            "library/app",
            &Selection::Tag("1".into()),
            &in_flight,
        )
        .unwrap();
        assert_eq!(purged.plan.content, ["m-old"]);
        assert!(purged.kept.iter().any(
            |k| k.digest == "old-top" && k.reasons == ["being fetched from upstream right now"]
        ));
        assert_eq!(
            purge(
                &snapshot(),
                "library/nope",
                &Selection::Repository,
                &in_flight
            )
            .unwrap_err(),
            NotCached::Repository
        );
        assert_eq!(
            purge(
                &snapshot(),
                "library/app",
                &Selection::Tag("9".into()),
                &in_flight
            )
            .unwrap_err(),
            NotCached::Image
        );
    }
}
