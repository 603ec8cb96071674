//! cistern caching in S3 (a real S3-compatible server, moto, on loopback), and two replicas on
//! one bucket behaving as one cache.

use std::time::Duration;

use crate::common::moto::Moto;
use crate::common::*;
use futures::StreamExt;
use reqwest::Method;

/// A bucket on a fresh moto, and the `storage:` section for it (through `endpoint` when given,
/// e.g. a proxy counting store requests).
async fn bucket(endpoint: Option<&str>) -> (Moto, String) {
    let moto = Moto::start().await;
    moto.create_bucket("cache").await;
    let yaml = moto.storage_yaml(endpoint.unwrap_or(&moto.endpoint), "cache");
    (moto, yaml)
}

#[tokio::test]
async fn a_pull_through_replica_a_then_b_fetches_from_upstream_once() {
    let up = FakeUpstream::start().await;
    add_multi_arch(&up, "library/multi", "latest");
    let (moto, storage) = bucket(None).await;
    let a = MirrorSetup::new(&up.url)
        .storage(storage.clone())
        .start()
        .await;
    let b = MirrorSetup::new(&up.url).storage(storage).start().await;

    let from_a = a.pull("library/multi", "latest").await;
    let upstream_after_a = up.registry_requests();
    assert!(up.count(Method::GET, "/blobs/") > 0);
    let from_b = b.pull("library/multi", "latest").await;
    assert_eq!(
        up.registry_requests(),
        upstream_after_a,
        "replica B served everything replica A cached"
    );
    assert_eq!(from_a, from_b, "identical bytes from both replicas");

    let keys = moto.keys("cache", "mirror/").await;
    assert!(keys.iter().any(|k| k.starts_with("mirror/blobs/sha256/")));
    assert!(keys.iter().any(|k| k.contains("/_tags/latest")));
    assert_eq!(moto.pending_uploads("cache").await, 0);
}

#[tokio::test]
async fn cached_blobs_serve_ranges_and_heads_from_the_bucket() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let (_moto, storage) = bucket(None).await;
    let a = MirrorSetup::new(&up.url)
        .storage(storage.clone())
        .start()
        .await;
    let b = MirrorSetup::new(&up.url).storage(storage).start().await;
    a.pull("library/alpine", "latest").await;
    let layer = &image.blobs[2];
    let path = format!("/v2/library/alpine/blobs/{layer}");
    let whole = b.get(&path).await.bytes().await.unwrap();

    let head = b.head(&path).await;
    assert_eq!(header(&head, "content-length"), whole.len().to_string());
    let part = b.get_range(&path, "bytes=10-19").await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        header(&part, "content-range"),
        format!("bytes 10-19/{}", whole.len())
    );
    assert_eq!(part.bytes().await.unwrap(), whole.slice(10..20));
    assert_eq!(up.count(Method::GET, &format!("/blobs/{layer}")), 1);
}

#[tokio::test]
async fn both_replicas_filling_one_blob_at_once_stay_correct() {
    let up = FakeUpstream::start().await;
    let bytes = content("shared", 3 * 1024 * 1024);
    let digest = up.add_blob("org/app", &bytes);
    let (moto, storage) = bucket(None).await;
    let a = MirrorSetup::new(&up.url)
        .storage(storage.clone())
        .start()
        .await;
    let b = MirrorSetup::new(&up.url).storage(storage).start().await;
    let path = format!("/v2/org/app/blobs/{digest}");
    let (from_a, from_b) = tokio::join!(a.get(&path), b.get(&path));
    let (from_a, from_b) = tokio::join!(from_a.bytes(), from_b.bytes());
    assert!(from_a.unwrap() == bytes && from_b.unwrap() == bytes);
    // Each replica may have fetched it; the object is the same bytes either way.
    let again = a.get(&path).await.bytes().await.unwrap();
    assert!(again == bytes);
    let hex = digest.strip_prefix("sha256:").unwrap();
    let keys = moto.keys("cache", "mirror/blobs/").await;
    assert_eq!(
        keys,
        vec![format!("mirror/blobs/sha256/{}/{hex}", &hex[..2])]
    );
    assert_eq!(moto.pending_uploads("cache").await, 0);
}

#[tokio::test]
async fn a_corrupted_upstream_blob_leaves_no_object_behind() {
    let up = FakeUpstream::start().await;
    let bytes = content("corrupt", 3 * 1024 * 1024);
    let digest = up.add_blob("org/app", &bytes);
    up.state.corrupt.lock().unwrap().push(digest.clone());
    let (moto, storage) = bucket(None).await;
    let a = MirrorSetup::new(&up.url).storage(storage).start().await;
    let path = format!("/v2/org/app/blobs/{digest}");

    let response = a.get(&path).await;
    let mut failed = !response.status().is_success();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        failed |= chunk.is_err();
    }
    assert!(failed, "the body must not complete");
    assert_eq!(
        moto.keys("cache", "mirror/blobs/").await,
        Vec::<String>::new()
    );
    assert_eq!(
        moto.pending_uploads("cache").await,
        0,
        "the upload was aborted"
    );

    up.state.corrupt.lock().unwrap().clear();
    assert!(a.get(&path).await.bytes().await.unwrap() == bytes);
    assert_eq!(moto.keys("cache", "mirror/blobs/").await.len(), 1);
}

/// Not a target, a figure for the README: the store requests one blob costs.
#[tokio::test]
async fn store_requests_per_cold_and_warm_blob() {
    let up = FakeUpstream::start().await;
    let bytes = content("counted", 20 * 1024 * 1024);
    let digest = up.add_blob("org/app", &bytes);
    let moto = Moto::start().await;
    moto.create_bucket("cache").await;
    let counter = FaultProxy::start(&moto.endpoint).await;
    let storage = moto.storage_yaml(&counter.url, "cache");
    // No expiry sweep (its LIST runs at start and every ttl/4, off the request path).
    let mirror = MirrorSetup::new(&up.url)
        .storage(storage)
        .content_ttl("0s")
        .start()
        .await;
    // Once it answers, start-up (with its bucket check) is over; its listings of the bucket
    // (the index, the published access times) run beside it, off the request path.
    assert_eq!(mirror.get("/v2/").await.status(), 200);
    let listed = |prefix: &str| {
        counter
            .seen()
            .iter()
            .any(|s| s.path.contains("list-type") && s.path.ends_with(&format!("prefix={prefix}")))
    };
    until(
        "the listings at start",
        Duration::from_secs(10),
        async || {
            if listed("mirror%2F") && listed("mirror%2F_cistern%2Faccess%2F") {
                Ok(())
            } else {
                Err(format!("{:?}", counter.seen()))
            }
        },
    )
    .await;
    let path = format!("/v2/org/app/blobs/{digest}");

    let start = counter.seen().len();
    assert!(mirror.get(&path).await.bytes().await.unwrap() == bytes);
    let cold: Vec<String> = counter.seen()[start..]
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    let start = counter.seen().len();
    assert!(mirror.get(&path).await.bytes().await.unwrap() == bytes);
    let warm: Vec<String> = counter.seen()[start..]
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    println!("cold 20 MiB blob: {} store requests: {cold:#?}", cold.len());
    println!("warm 20 MiB blob: {} store requests: {warm:#?}", warm.len());
    // HEAD (miss), create upload, 3 parts of 8 MiB, complete, PUT link
    assert_eq!(cold.len(), 7, "{cold:#?}");
    // HEAD, GET link, GET blob
    assert_eq!(warm.len(), 3, "{warm:#?}");
    assert!(
        !cold.iter().chain(&warm).any(|r| r.contains("list-type")),
        "no LIST"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_clients_on_one_cold_blob_in_s3_share_one_upstream_get() {
    let up = FakeUpstream::start().await;
    let bytes = content("s3-single-flight", 8 * 1024 * 1024);
    let digest = up.add_blob("library/big", &bytes);
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(
        "/blobs/",
        Fault::Slow {
            bytes_per_sec: 8 * 1024 * 1024,
        },
        1,
    );
    let (moto, storage) = bucket(None).await;
    let mirror = MirrorSetup::new(&proxy.url).storage(storage).start().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (http, url) = (
            mirror.http.clone(),
            format!("{}/v2/library/big/blobs/{digest}", mirror.url),
        );
        clients.push(tokio::spawn(async move {
            http.get(url).send().await.unwrap().bytes().await.unwrap()
        }));
    }
    for client in clients {
        assert!(
            client.await.unwrap() == bytes,
            "exact bytes for every client"
        );
    }
    assert_eq!(up.count(Method::GET, &format!("/blobs/{digest}")), 1);
    assert_eq!(moto.keys("cache", "mirror/blobs/").await.len(), 1);
}

#[tokio::test]
async fn blobs_read_whole_from_the_bucket_are_not_counted_as_cut_short() {
    let up = FakeUpstream::start().await;
    // Streamed from the bucket once cached (not held in memory), and larger than what the
    // sockets buffer, so the client leaving mid-blob below really cuts the response short.
    let bytes = content("whole-from-s3", 16 * 1024 * 1024);
    let digest = up.add_blob("org/app", &bytes);
    let (_moto, storage) = bucket(None).await;
    let mirror = MirrorSetup::new(&up.url).storage(storage).start().await;
    let path = format!("/v2/org/app/blobs/{digest}");
    for turn in ["cold", "warm"] {
        let response = mirror.get(&path).await;
        assert_eq!(response.status(), 200, "{turn}");
        assert!(
            response.bytes().await.unwrap() == bytes,
            "{turn}: exact bytes"
        );
    }
    // The request's metrics are written when the server is done with its body.
    let answered = r#"cistern_requests_total{endpoint="blob",method="GET",status="200"}"#;
    let metrics = until("both GETs counted", Duration::from_secs(10), async || {
        let metrics = mirror.metrics().await;
        (metrics.value(answered) >= 2.0).then_some(metrics)
    })
    .await;
    let cut_short = r#"cistern_responses_cut_short_total{kind="blob"}"#;
    assert_eq!(
        metrics.value(cut_short),
        0.0,
        "complete answers are not counted as cut short"
    );

    // A client that really leaves mid-blob still is.
    let mut body = mirror.get(&path).await.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    until(
        "a body abandoned mid-blob counted as cut short",
        Duration::from_secs(10),
        async || mirror.metrics().await.value(cut_short) >= 1.0,
    )
    .await;
}
