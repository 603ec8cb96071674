//! `cistern gc`: eviction on demand from the command line, on the mirror's own configuration.

use std::process::Command;

use crate::common::{add_image, FakeUpstream, MirrorSetup, OCI_MANIFEST};

fn gc(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cistern"))
        .arg("--config")
        .arg(config)
        .arg("gc")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn gc_reports_the_least_recently_pulled_image_then_evicts_it_and_only_it() {
    let up = FakeUpstream::start().await;
    let old = add_image(&up, "team/old", Some("1"), OCI_MANIFEST, "old");
    let new = add_image(&up, "team/new", Some("1"), OCI_MANIFEST, "new");
    let mirror = MirrorSetup::new(&up.url).start().await;
    let pulled_new = {
        mirror.pull("team/old", "1").await;
        mirror.pull("team/new", "1").await
    };
    let config = mirror.storage.parent().unwrap().join("gc-config.yml");
    std::fs::write(
        &config,
        format!(
            // Nothing is protected for being pulled a moment ago (cache.keeprecent).
            "storage: {{filesystem: {{rootdirectory: {}}}}}\ncache: {{keeprecent: 0s}}\n",
            mirror.storage.display()
        ),
    )
    .unwrap();
    let image_bytes: u64 = new
        .blobs
        .iter()
        .map(|d| std::fs::metadata(mirror.content_path(d)).unwrap().len())
        .sum();
    // Down to a little more than one image: the older one must go.
    let target = format!("{}", image_bytes + 4096);

    let (ok, report, errors) = gc(&config, &["--dry-run", "--target", &target]);
    assert!(ok, "{errors}");
    assert!(report.contains("would evict 1 images"), "{report}");
    assert!(report.contains("team/old:1"), "{report}");
    assert!(!report.contains("team/new"), "{report}");
    assert!(
        mirror.has_content(&old.blobs[2]),
        "a dry run deletes nothing"
    );

    let (ok, report, errors) = gc(&config, &["--target", &target]);
    assert!(ok, "{errors}");
    assert!(report.contains("evicted:"), "{report}");
    for digest in &old.blobs {
        assert!(!mirror.has_content(digest), "{digest} of the evicted image");
    }
    assert!(!mirror.has_content(&old.digest));
    for digest in new.blobs.iter().chain([&new.digest]) {
        assert!(mirror.has_content(digest), "{digest} of the kept image");
    }
    // The kept image pulls with no upstream request; the evicted one is fetched again.
    let before = up.registry_requests();
    assert_eq!(mirror.pull("team/new", "1").await, pulled_new);
    assert_eq!(up.registry_requests(), before);
    mirror.pull("team/old", "1").await;
    assert!(up.registry_requests() > before);

    let (ok, _, errors) = gc(&config, &["--dry-run"]);
    assert!(!ok);
    assert!(errors.contains("cache.maxsize"), "{errors}");
}
