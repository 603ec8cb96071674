//! One upstream fetch per blob, however many clients want it, streamed to each as it arrives.
//! A fault proxy slows upstream down so that the clients really overlap the fill.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use reqwest::Method;

const MIB: usize = 1024 * 1024;

/// A cold 8 MiB blob behind an upstream sending 4 MiB/s: its fill takes about two seconds.
async fn slow_blob() -> (FakeUpstream, FaultProxy, Mirror, String, Vec<u8>) {
    let up = FakeUpstream::start().await;
    let bytes = content("single-flight", 8 * MIB);
    let digest = up.add_blob("library/big", &bytes);
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(
        "/blobs/",
        Fault::Slow {
            bytes_per_sec: 4 * MIB as u64,
        },
        1,
    );
    let mirror = MirrorSetup::new(&proxy.url).start().await;
    (up, proxy, mirror, digest, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_clients_on_one_cold_blob_share_one_upstream_get() {
    let (up, _proxy, mirror, digest, bytes) = slow_blob().await;
    let path = format!("/v2/library/big/blobs/{digest}");
    let mut early = Vec::new();
    for _ in 0..19 {
        let (http, url) = (mirror.http.clone(), format!("{}{path}", mirror.url));
        early.push(tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        }));
    }

    // The twentieth client joins when 80% has arrived: it gets that much at once, before the
    // fill completes, and the rest as it comes.
    until(
        "80% of the blob is spooled",
        Duration::from_secs(30),
        async || mirror.spooled_bytes() >= (bytes.len() * 8 / 10) as u64,
    )
    .await;
    let late = mirror.get(&path).await;
    assert_eq!(late.status(), 200);
    assert_eq!(header(&late, "content-length"), bytes.len().to_string());
    let mut body = late.bytes_stream();
    let mut received = Vec::new();
    let mut before_fill_completed = 0;
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.unwrap());
        if !mirror.has_content(&digest) {
            before_fill_completed = received.len();
        }
    }
    assert!(
        before_fill_completed >= bytes.len() * 8 / 10,
        "the late joiner got only {before_fill_completed} bytes before the fill completed"
    );
    assert!(received == bytes, "late joiner: exact bytes");

    for client in early {
        assert!(
            client.await.unwrap() == bytes,
            "exact bytes for every client"
        );
    }
    assert_eq!(up.count(Method::GET, &format!("/blobs/{digest}")), 1);
    assert!(mirror.has_content(&digest));
    assert_eq!(mirror.spooled_bytes(), 0, "the spool is moved, not copied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_and_range_of_an_in_flight_blob_answer_from_the_fill() {
    let (up, _proxy, mirror, digest, bytes) = slow_blob().await;
    let path = format!("/v2/library/big/blobs/{digest}");
    let first = mirror.get(&path).await; // starts the fill
    assert_eq!(first.status(), 200);
    assert!(
        !mirror.has_content(&digest),
        "headers go out before the body is complete"
    );

    let head = mirror.head(&path).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), bytes.len().to_string());
    assert_eq!(header(&head, "docker-content-digest"), digest);

    let range = mirror.get_range(&path, "bytes=1000-1999").await;
    assert_eq!(range.status(), 206);
    assert_eq!(
        header(&range, "content-range"),
        format!("bytes 1000-1999/{}", bytes.len())
    );
    // Bytes of the range stream before the fill completes (lazy-pulling snapshotters live on
    // that); only its last byte waits until the blob verified.
    let mut body = range.bytes_stream();
    let first_chunk = body.next().await.unwrap().unwrap();
    assert!(
        !mirror.has_content(&digest),
        "the range's first bytes came from the fill, before it completed"
    );
    let mut received = first_chunk.to_vec();
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.unwrap());
    }
    assert!(received == bytes[1000..2000]);
    assert!(
        mirror.has_content(&digest),
        "the range completed only once the blob was verified and stored"
    );

    assert!(first.bytes().await.unwrap() == bytes);
    assert_eq!(up.count(Method::HEAD, &format!("/blobs/{digest}")), 0);
    assert_eq!(up.count(Method::GET, &format!("/blobs/{digest}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_does_not_cancel_the_fill() {
    let (up, _proxy, mirror, digest, bytes) = slow_blob().await;
    let path = format!("/v2/library/big/blobs/{digest}");
    let mut body = mirror.get(&path).await.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    // A Range client closing early, as containerd's chunked pulls do.
    let partial = mirror.get_range(&path, "bytes=0-").await;
    drop(partial);

    until("the blob is cached", Duration::from_secs(30), async || {
        mirror.has_content(&digest)
    })
    .await;
    let again = mirror.get(&path).await;
    assert!(again.bytes().await.unwrap() == bytes);
    assert_eq!(up.count(Method::GET, &format!("/blobs/{digest}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_a_cold_manifest_share_one_upstream_get() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "org/app", Some("v1"), OCI_MANIFEST, "app");
    let proxy = FaultProxy::start(&up.url).await;
    // Slow enough (about half a second per manifest) that all twenty overlap.
    proxy.inject(
        "/manifests/",
        Fault::Slow {
            bytes_per_sec: 1000,
        },
        100,
    );
    let mirror = MirrorSetup::new(&proxy.url).start().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (http, url) = (
            mirror.http.clone(),
            format!("{}/v2/org/app/manifests/v1", mirror.url),
        );
        clients.push(tokio::spawn(async move {
            let response = http
                .get(url)
                .header("accept", DOCKER_ACCEPT)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            sha256(&response.bytes().await.unwrap())
        }));
    }
    for client in clients {
        assert_eq!(client.await.unwrap(), image.digest);
    }
    assert_eq!(up.count(Method::GET, "/manifests/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_fetches_are_bounded_by_maxfetches() {
    let up = FakeUpstream::start().await;
    let blobs: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let bytes = content(&format!("bounded-{i}"), MIB);
            (up.add_blob("org/app", &bytes), bytes)
        })
        .collect();
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(
        "/blobs/",
        Fault::Slow {
            bytes_per_sec: 2 * MIB as u64,
        },
        5,
    );
    let mirror = MirrorSetup::new(&proxy.url)
        .proxy_option("maxfetches: 2")
        .start()
        .await;
    let mut clients = Vec::new();
    for (digest, bytes) in blobs {
        let (http, url) = (
            mirror.http.clone(),
            format!("{}/v2/org/app/blobs/{digest}", mirror.url),
        );
        clients.push(tokio::spawn(async move {
            let body = http.get(url).send().await.unwrap().bytes().await.unwrap();
            assert!(body == bytes, "exact bytes for {digest}");
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(proxy.max_concurrent_blob_fetches(), 2);
    assert_eq!(up.count(Method::GET, "/blobs/"), 5);
}

/// A fill started for a repository that does not hold the blob ends in 404; a request for a
/// repository that does hold it, joining that fill meanwhile, must not get that 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_fails_for_one_repository_does_not_fail_another_that_holds_the_blob() {
    let up = FakeUpstream::start().await;
    let layer = content("held-layer", 64 * 1024 + 3);
    let digest = up.add_blob("owner/has-it", &layer);
    up.add_blob("owner/lacks-it", b"something else");
    let gate = up.hold(&format!("/v2/owner/lacks-it/blobs/{digest}"));
    let mirror = MirrorSetup::new(&up.url).start().await;
    let get = |path: String| mirror.spawn_get(&path);
    let lacking = get(format!("/v2/owner/lacks-it/blobs/{digest}"));
    until(
        "the lacking repository's fetch is in flight",
        Duration::from_secs(30),
        async || up.count(Method::GET, &format!("/v2/owner/lacks-it/blobs/{digest}")) == 1,
    )
    .await;
    let holding = get(format!("/v2/owner/has-it/blobs/{digest}"));
    until(
        "upstream is asked for the holding repository",
        Duration::from_secs(30),
        async || {
            up.count(Method::HEAD, &format!("/v2/owner/has-it/blobs/{digest}"))
                + up.count(Method::GET, &format!("/v2/owner/has-it/blobs/{digest}"))
                >= 1
        },
    )
    .await;
    gate.close();
    assert_eq!(lacking.await.unwrap().0, 404);
    let (status, bytes) = holding.await.unwrap();
    assert_eq!(
        status,
        200,
        "owner/has-it holds the blob: {}\n{:?}",
        String::from_utf8_lossy(&bytes),
        up.seen()
    );
    assert!(bytes == layer);
}
