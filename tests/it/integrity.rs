//! Bytes are served under a digest only if they hash to it; content is linked per repository.

use crate::common::*;
use reqwest::Method;

#[tokio::test]
async fn a_corrupted_upstream_blob_is_not_cached_and_the_client_sees_an_error() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "org/app", Some("v1"), OCI_MANIFEST, "app");
    let mirror = MirrorSetup::new(&up.url).start().await;
    for digest in [&image.blobs[1], &image.blobs[2]] {
        up.state.corrupt.lock().unwrap().push(digest.clone());
        let response = mirror.get(&format!("/v2/org/app/blobs/{digest}")).await;
        // Either the fill failed before the answer started (a 502), or the headers were already
        // out and the body must not complete cleanly.
        let status = response.status();
        let body = response.bytes().await;
        assert!(
            status == 502 || body.is_err(),
            "a corrupted blob must not arrive as a complete body ({status})"
        );
        assert!(!mirror.has_content(digest), "nothing cached for {digest}");
        let leftovers: Vec<_> = mirror
            .stored_files()
            .into_iter()
            .filter(|f| f.starts_with("blobs/"))
            .collect();
        assert!(leftovers.is_empty(), "no partial files: {leftovers:?}");
    }
    // Once upstream is healthy the blob is fetched again, verified and cached.
    up.state.corrupt.lock().unwrap().clear();
    let digest = &image.blobs[2];
    let response = mirror.get(&format!("/v2/org/app/blobs/{digest}")).await;
    assert_eq!(sha256(&response.bytes().await.unwrap()), *digest);
    assert_eq!(up.count(Method::GET, &format!("/blobs/{digest}")), 2);
    assert!(mirror.has_content(digest));
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let up = FakeUpstream::start().await;
    let good = add_image(&up, "org/app", Some("v1"), OCI_MANIFEST, "app");
    // Serve other bytes under the good digest.
    {
        let mut repos = up.state.repos.lock().unwrap();
        let entry = repos
            .get_mut("org/app")
            .unwrap()
            .manifests
            .get_mut(&good.digest)
            .unwrap();
        entry.1 = bytes::Bytes::from_static(b"{\"schemaVersion\":2,\"tampered\":true}");
    }
    let mirror = MirrorSetup::new(&up.url).start().await;
    let response = mirror.get_manifest("org/app", &good.digest).await;
    assert_eq!(response.status(), 502);
    assert!(!mirror.has_content(&good.digest));
    // By tag, upstream's Docker-Content-Digest disagrees with the bytes: refused as well.
    let response = mirror.get_manifest("org/app", "v1").await;
    assert_eq!(response.status(), 502);
}

#[tokio::test]
async fn a_blob_cached_for_one_repository_is_not_served_through_another() {
    let up = FakeUpstream::start().await;
    let secret = add_image(&up, "private/app", Some("1.0"), OCI_MANIFEST, "secret");
    add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).start().await;
    mirror.pull("private/app", "1.0").await;
    let layer = &secret.blobs[2];
    assert!(mirror.has_content(layer));

    // Known digest, public name: upstream says alpine does not hold it, so neither do we.
    let response = mirror
        .get(&format!("/v2/library/alpine/blobs/{layer}"))
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "BLOB_UNKNOWN");
    let response = mirror
        .head(&format!("/v2/library/alpine/blobs/{layer}"))
        .await;
    assert_eq!(response.status(), 404);
    let response = mirror.get_manifest("library/alpine", &secret.digest).await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");

    // A repository upstream confirms (with a HEAD) gets the stored copy, not a new download.
    let bytes = up.state.repos.lock().unwrap()["private/app"].blobs[layer].clone();
    up.state
        .repos
        .lock()
        .unwrap()
        .get_mut("library/alpine")
        .unwrap()
        .blobs
        .insert(layer.clone(), bytes.clone());
    let response = mirror
        .get(&format!("/v2/library/alpine/blobs/{layer}"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), bytes);
    // One confirming HEAD for each of the two refused requests, and one for this one.
    assert_eq!(
        up.count(Method::HEAD, &format!("/v2/library/alpine/blobs/{layer}")),
        3
    );
    assert_eq!(
        up.count(Method::GET, &format!("/blobs/{layer}")),
        1,
        "downloaded once in all"
    );
}

#[tokio::test]
async fn a_config_damaged_on_disk_is_fetched_again_never_served() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "org/app", Some("v1"), OCI_MANIFEST, "app");
    let mirror = MirrorSetup::new(&up.url).start().await;
    mirror.pull("org/app", "v1").await;
    let config = &image.blobs[0];
    let stored = mirror.content_path(config);
    let good = std::fs::read(&stored).unwrap();
    let mut damaged = good.clone();
    damaged[0] ^= 0xff;
    std::fs::write(&stored, &damaged).unwrap();

    let path = format!("/v2/org/app/blobs/{config}");
    let response = mirror.get(&path).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.unwrap() == good,
        "the upstream bytes, not the damaged ones"
    );
    let upstream_gets = || up.count(Method::GET, &format!("/blobs/{config}"));
    assert_eq!(upstream_gets(), 2, "fetched again");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        good,
        "the stored copy is repaired"
    );

    // From memory now: exact bytes and ranges, no further upstream request.
    for _ in 0..3 {
        assert!(mirror.get(&path).await.bytes().await.unwrap() == good);
    }
    let part = mirror.get_range(&path, "bytes=2-5").await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        header(&part, "content-range"),
        format!("bytes 2-5/{}", good.len())
    );
    assert_eq!(part.bytes().await.unwrap(), good[2..6]);
    assert_eq!(upstream_gets(), 2);
}

#[tokio::test]
async fn a_layer_cut_short_on_disk_is_fetched_again_never_served() {
    let up = FakeUpstream::start().await;
    // Larger than the small blobs kept in memory, so it is read from its file each time.
    let good = content("layer", 2 * 1024 * 1024);
    let digest = up.add_blob("org/app", &good);
    let path = format!("/v2/org/app/blobs/{digest}");
    let upstream_gets = || up.count(Method::GET, &format!("/blobs/{digest}"));
    let dir = tempfile::tempdir().unwrap();
    let setup = || MirrorSetup::new(&up.url).storage_dir(dir.path());
    let cut_short = |mirror: &Mirror| {
        std::fs::write(mirror.content_path(&digest), &good[..good.len() / 2]).unwrap()
    };
    let stored_bytes = |mirror: &Mirror| std::fs::read(mirror.content_path(&digest)).unwrap();

    let mirror = setup().start().await;
    for _ in 0..2 {
        assert!(mirror.get(&path).await.bytes().await.unwrap() == good);
    }
    // Read from storage once, the blob's size is held in memory: the file's own size gives
    // the damage away.
    cut_short(&mirror);
    assert!(
        mirror.get(&path).await.bytes().await.unwrap() == good,
        "the upstream bytes, not the stored half"
    );
    assert_eq!(upstream_gets(), 2, "fetched again");
    assert!(stored_bytes(&mirror) == good, "the stored copy is repaired");
    drop(mirror);

    // After a restart, the size comes from the blob's link record.
    let restarted = setup().start().await;
    cut_short(&restarted);
    assert!(restarted.get(&path).await.bytes().await.unwrap() == good);
    assert_eq!(upstream_gets(), 3);
    assert!(stored_bytes(&restarted) == good);
    // Repaired: served from storage again.
    assert!(restarted.get(&path).await.bytes().await.unwrap() == good);
    assert_eq!(upstream_gets(), 3);
}
