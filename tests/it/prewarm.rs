//! Pre-warming (`cache.prewarm`): images fetched at start and kept fresh, so the first pull
//! asks upstream nothing; an unchanged tag costs one HEAD per interval and no GET (no pull
//! quota), a moved one a HEAD and the GETs for its new content only; an index brings only the
//! platforms asked for; a tag pattern warms the tags it matches.

use std::time::Duration;

use reqwest::Method;

use crate::common::*;

/// The interval between pre-warm runs in these tests.
const INTERVAL: &str = "2s";

fn prewarm_yaml(images: &[&str], platforms: Option<&str>) -> String {
    let mut yaml = format!("cache:\n  prewarm:\n    interval: {INTERVAL}\n    images:\n");
    for image in images {
        yaml.push_str(&format!("      - '{image}'\n"));
    }
    if let Some(platforms) = platforms {
        yaml.push_str(&format!("    platforms: [{platforms}]\n"));
    }
    yaml
}

/// Waits until at least `runs` pre-warm runs ended; returns how many did.
async fn runs_done(mirror: &Mirror, runs: f64) -> f64 {
    until(
        &format!("{runs} pre-warm runs ended"),
        Duration::from_secs(60),
        async || {
            let done = mirror.metrics().await.value("cistern_prewarm_runs_total");
            (done >= runs).then_some(done)
        },
    )
    .await
}

/// Manifest requests upstream (HEAD, GET) and blob GETs, from `from` on in `up.seen()`.
fn requests_since(up: &FakeUpstream, from: usize) -> (usize, usize, usize) {
    let seen = up.seen();
    let later = &seen[from.min(seen.len())..];
    let count = |method: &Method, fragment: &str| {
        later
            .iter()
            .filter(|s| s.method == *method && s.path.contains(fragment))
            .count()
    };
    (
        count(&Method::HEAD, "/manifests/"),
        count(&Method::GET, "/manifests/"),
        count(&Method::GET, "/blobs/"),
    )
}

#[tokio::test]
async fn a_prewarmed_image_pulls_with_no_upstream_request() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "library/app", Some("1"), OCI_MANIFEST, "app");
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&prewarm_yaml(&["app:1"], None))
        .start()
        .await;
    runs_done(&mirror, 1.0).await;
    for blob in &image.blobs {
        assert!(mirror.has_content(blob), "{blob} pre-warmed");
    }
    // Cold: one GET for the tag, one per blob; no HEAD.
    assert_eq!(requests_since(&up, 0), (0, 1, 3));

    let before = up.registry_requests();
    let pulled = mirror.pull("library/app", "1").await;
    assert_eq!(pulled[0].0, image.digest);
    assert_eq!(
        up.registry_requests(),
        before,
        "the pull asked upstream nothing"
    );
    let m = mirror.metrics().await;
    assert_eq!(
        m.value("cistern_prewarm_images_checked_total"),
        m.value("cistern_prewarm_runs_total")
    );
    assert!(m.value("cistern_prewarm_fetched_bytes_total") >= 3.0 * 1024.0 * 1024.0);
    assert_eq!(m.value("cistern_prewarm_errors_total"), 0.0);

    // The status page shows the same figures.
    let summary: serde_json::Value = mirror
        .http
        .get(format!("{}/api/summary", mirror.debug_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = &summary["prewarm"];
    assert_eq!(
        shown["runs"].as_f64(),
        Some(m.value("cistern_prewarm_runs_total"))
    );
    assert_eq!(
        shown["fetched_bytes"].as_f64(),
        Some(m.value("cistern_prewarm_fetched_bytes_total"))
    );
}

#[tokio::test]
async fn an_unchanged_tag_costs_one_head_per_run_and_a_moved_one_only_its_new_content() {
    let up = FakeUpstream::start().await;
    add_image(&up, "library/app", Some("1"), OCI_MANIFEST, "v1");
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&prewarm_yaml(&["library/app:1"], None))
        .start()
        .await;
    let first = runs_done(&mirror, 1.0).await;

    // Unchanged: a HEAD per run, nothing else.
    let mark = up.seen().len();
    let later = runs_done(&mirror, first + 2.0).await;
    let (heads, gets, blobs) = requests_since(&up, mark);
    assert_eq!((heads as f64, gets, blobs), (later - first, 0, 0));

    // The tag moves to an image sharing nothing: one HEAD, the new manifest by digest, and
    // its three blobs; nothing of the old image again.
    let moved = add_image(&up, "library/app", Some("1"), OCI_MANIFEST, "v2");
    let mark = up.seen().len();
    let after = runs_done(&mirror, later + 1.0).await;
    let (heads, gets, blobs) = requests_since(&up, mark);
    assert_eq!(heads as f64, after - later, "one HEAD per run");
    assert_eq!((gets, blobs), (1, 3));
    assert_eq!(
        up.count(Method::GET, &format!("/manifests/{}", moved.digest)),
        1
    );
    for blob in &moved.blobs {
        assert!(
            mirror.has_content(blob),
            "{blob} of the moved tag pre-warmed"
        );
    }
    assert_eq!(
        mirror
            .metrics()
            .await
            .value("cistern_prewarm_images_moved_total"),
        2.0,
        "seen first, then moved"
    );
}

#[tokio::test]
async fn an_index_brings_the_platforms_asked_for_and_a_pattern_the_tags_it_matches() {
    let up = FakeUpstream::start().await;
    let (index, platforms) = add_multi_arch(&up, "library/multi", "20-alpine");
    let other = add_image(&up, "library/multi", Some("18-alpine"), OCI_MANIFEST, "old");
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&prewarm_yaml(&["multi:20-*"], Some("linux/arm64")))
        .start()
        .await;
    runs_done(&mirror, 1.0).await;
    let (amd64, arm64) = (&platforms[0], &platforms[1]);
    assert!(mirror.has_content(&index.digest));
    for blob in &arm64.blobs {
        assert!(mirror.has_content(blob), "arm64's {blob}");
    }
    for blob in amd64.blobs.iter().chain(&other.blobs) {
        assert!(!mirror.has_content(blob), "{blob} not asked for");
    }
    assert_eq!(up.count(Method::GET, &amd64.digest), 0);
    assert_eq!(up.count(Method::GET, "/tags/list"), 1);
}

#[tokio::test]
async fn an_image_that_cannot_be_warmed_is_counted_and_named_and_others_still_are() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "library/app", Some("1"), OCI_MANIFEST, "app");
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&prewarm_yaml(
            &["library/missing:1", "ghcr.io/not/mirrored:1", "app:1"],
            None,
        ))
        .start()
        .await;
    runs_done(&mirror, 1.0).await;
    assert!(mirror.has_content(&image.digest));
    let m = mirror.metrics().await;
    assert_eq!(m.value("cistern_prewarm_errors_total"), 2.0, "{}", m.0);
}

const TOKEN: &str = "warm-now-test-token-0123456789";

/// `POST /api/admin/prewarm` with `list`: the status and the JSON lines of the answer.
async fn warm_now(mirror: &Mirror, list: &str, token: &str) -> (u16, Vec<serde_json::Value>) {
    let response = mirror
        .http
        .post(format!("{}/api/admin/prewarm", mirror.debug_url))
        .bearer_auth(token)
        .body(list.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let lines = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (status, lines)
}

#[tokio::test]
async fn warm_now_fetches_the_listed_images_and_reports_each_then_a_summary() {
    let up = FakeUpstream::start().await;
    let app = add_image(&up, "library/app", Some("1"), OCI_MANIFEST, "app");
    let tool = add_image(&up, "org/tool", Some("2"), OCI_MANIFEST, "tool");
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&format!("admin:\n  token: {TOKEN}\n"))
        .start()
        .await;

    // Refused without the token, and nothing fetched.
    let (status, _) = warm_now(&mirror, "app:1\n", "wrong-token-wrong-token").await;
    assert_eq!(status, 401);
    assert_eq!(up.registry_requests(), 0);
    // A bad line refuses the whole list before anything is fetched.
    let (status, _) = warm_now(&mirror, "app:1\nno-tag-here\n", TOKEN).await;
    assert_eq!(status, 400);
    assert_eq!(up.registry_requests(), 0);

    let list = "# what CI pulls\napp:1\n\norg/tool:2\nlibrary/missing:1\n";
    let (status, lines) = warm_now(&mirror, list, TOKEN).await;
    assert_eq!(status, 200);
    let results: Vec<&str> = lines
        .iter()
        .map(|l| l["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["ok", "ok", "error", "done"], "{lines:?}");
    assert_eq!(lines[0]["image"], "library/app:1");
    assert_eq!(lines[0]["digest"], app.digest);
    assert_eq!(lines[1]["blobs_fetched"], 3);
    assert_eq!(lines[3]["summary"]["checked"], 2);
    assert_eq!(lines[3]["summary"]["errors"], 1);
    for blob in app.blobs.iter().chain(&tool.blobs) {
        assert!(mirror.has_content(blob), "{blob} warmed");
    }
    let before = up.registry_requests();
    mirror.pull("org/tool", "2").await;
    assert_eq!(
        up.registry_requests(),
        before,
        "warm pulls ask upstream nothing"
    );
}
