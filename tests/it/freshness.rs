//! Tag freshness: within the TTL no upstream request, after it one HEAD, and the cached tag
//! when upstream fails.

use crate::common::*;
use reqwest::Method;

/// How long content with a 2 s `proxy.ttl` may take to go (the expiry sweep's period, and
/// room for a loaded machine).
const TTL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::test]
async fn within_the_tag_ttl_a_tag_costs_no_upstream_request() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).tag_ttl("1h").start().await;
    assert_eq!(mirror.get_manifest("alpine", "latest").await.status(), 200);
    let before = up.seen().len();
    for _ in 0..5 {
        assert_eq!(mirror.get_manifest("alpine", "latest").await.status(), 200);
        assert_eq!(
            mirror.head("/v2/alpine/manifests/latest").await.status(),
            200
        );
    }
    assert_eq!(up.seen().len(), before);
}

#[tokio::test]
async fn after_the_tag_ttl_revalidation_is_one_head_and_no_get() {
    let up = FakeUpstream::start().await;
    let first = add_alpine(&up);
    // tagttl 0: every request revalidates.
    let mirror = MirrorSetup::new(&up.url).tag_ttl("0").start().await;
    assert_eq!(mirror.get_manifest("alpine", "latest").await.status(), 200);
    let gets = up.count(Method::GET, "/manifests/");
    let heads = up.count(Method::HEAD, "/manifests/");

    let response = mirror.get_manifest("alpine", "latest").await;
    assert_eq!(header(&response, "docker-content-digest"), first.digest);
    assert_eq!(
        up.count(Method::GET, "/manifests/"),
        gets,
        "no manifest GET"
    );
    assert_eq!(up.count(Method::HEAD, "/manifests/"), heads + 1, "one HEAD");

    // The tag moves upstream: the HEAD sees the new digest and only that manifest is fetched.
    let second = add_image(
        &up,
        "library/alpine",
        Some("latest"),
        OCI_MANIFEST,
        "alpine-2",
    );
    let response = mirror.get_manifest("alpine", "latest").await;
    assert_eq!(header(&response, "docker-content-digest"), second.digest);
    assert_eq!(
        up.count(Method::GET, &format!("/manifests/{}", second.digest)),
        1
    );
    assert_eq!(
        up.count(Method::GET, "/manifests/latest"),
        1,
        "the tag itself was GET once, cold"
    );
}

#[tokio::test]
async fn stale_tags_and_cached_blobs_are_served_when_upstream_fails() {
    let up = FakeUpstream::start().await;
    add_image(&up, "library/alpine", Some("3.20"), OCI_MANIFEST, "alpine");
    let mirror = MirrorSetup::new(&up.url).tag_ttl("0").start().await;
    let cold = mirror.pull("alpine", "3.20").await;

    up.set_down(true);
    let before = up.count(Method::HEAD, "/manifests/3.20");
    let warm = mirror.pull("alpine", "3.20").await;
    assert_eq!(warm, cold, "the cached image, byte for byte");
    assert_eq!(
        up.count(Method::HEAD, "/manifests/3.20"),
        before + 1,
        "it did try to revalidate"
    );

    // Tags listing falls back to the cached tags.
    let response = mirror.get("/v2/alpine/tags/list").await;
    assert_eq!(response.status(), 200);
    let tags: serde_json::Value = response.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["3.20"]));

    // What was never cached cannot be served: a clear error naming the upstream.
    let response = mirror.get_manifest("alpine", "edge").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains(&up.url));
}

#[tokio::test]
async fn a_tag_deleted_upstream_is_not_served_from_cache() {
    let up = FakeUpstream::start().await;
    add_image(&up, "org/app", Some("pr-1"), OCI_MANIFEST, "app");
    let mirror = MirrorSetup::new(&up.url).tag_ttl("0").start().await;
    assert_eq!(mirror.get_manifest("org/app", "pr-1").await.status(), 200);
    up.state
        .repos
        .lock()
        .unwrap()
        .get_mut("org/app")
        .unwrap()
        .tags
        .clear();
    let response = mirror.get_manifest("org/app", "pr-1").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn unreachable_upstream_is_a_clear_error_not_a_hang() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mirror = MirrorSetup::new(&url).start().await;
    let response = mirror.get_manifest("alpine", "latest").await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(&url), "{message}");
    let response = mirror
        .get(&format!("/v2/alpine/blobs/{}", sha256(b"x")))
        .await;
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn content_expires_after_proxy_ttl_and_is_fetched_again() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).content_ttl("2s").start().await;
    let cold = mirror.pull("alpine", "latest").await;
    assert!(mirror.has_content(&image.blobs[0]));
    until("the expired content to go", TTL_DEADLINE, async || {
        let stored = mirror.stored_files();
        stored.is_empty().then_some(()).ok_or(format!("{stored:?}"))
    })
    .await;
    let gets = up.count(Method::GET, "/blobs/");
    assert_eq!(mirror.pull("alpine", "latest").await, cold);
    assert_eq!(up.count(Method::GET, "/blobs/"), gets + image.blobs.len());
}

/// `proxy.ttl` counts from the last pull: an image pulled again and again is never expired and
/// fetched again, and goes a TTL after its last pull.
#[tokio::test]
async fn content_pulled_within_proxy_ttl_stays_and_expires_a_ttl_after_the_last_pull() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url)
        .content_ttl("2s")
        .tag_ttl("1h")
        .start()
        .await;
    let cold = mirror.pull("alpine", "latest").await;
    let upstream_after_cold = up.registry_requests();
    // Keep pulling for three TTLs: every pull is served from the cache.
    let keep_pulling_until = std::time::Instant::now() + std::time::Duration::from_secs(6);
    while std::time::Instant::now() < keep_pulling_until {
        assert_eq!(mirror.pull("alpine", "latest").await, cold);
        assert_eq!(
            up.registry_requests(),
            upstream_after_cold,
            "pulled within the TTL, so kept"
        );
        assert!(mirror.has_content(&image.blobs[2]));
    }
    // Then nobody pulls: a TTL later it is gone.
    until("the layer to expire", TTL_DEADLINE, async || {
        if mirror.has_content(&image.blobs[2]) {
            Err(format!("{:?}", mirror.stored_files()))
        } else {
            Ok(())
        }
    })
    .await;
}
