//! Tasks many clients wait on (blob fills, manifest fetches) against upstreams that stall,
//! trickle, lie about lengths or corrupt bytes: every waiter gets the one attempt's outcome,
//! nothing unverified goes out as complete, and no abandoned fill holds a fetch slot.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use reqwest::Method;

const MIB: usize = 1024 * 1024;

/// A bound for things that should happen in a few seconds; never a pacing sleep.
const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_waiting_on_a_failing_manifest_share_one_upstream_get_and_its_failure() {
    let up = FakeUpstream::start().await;
    // Upstream names a digest its bytes do not hash to: the fetch fails its verification, after
    // a slow body that makes every client arrive while it runs.
    let bytes = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    let lie = sha256(b"something else");
    {
        let mut repos = up.state.repos.lock().unwrap();
        let repo = repos.entry("org/app".to_owned()).or_default();
        repo.manifests.insert(
            lie.clone(),
            (OCI_MANIFEST.to_owned(), Bytes::from_static(bytes)),
        );
        repo.tags.insert("v1".to_owned(), lie);
    }
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(
        "/manifests/",
        Fault::Slow {
            bytes_per_sec: bytes.len() as u64,
        },
        100,
    );
    let mirror = MirrorSetup::new(&proxy.url).start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
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
            response.status().as_u16()
        }));
    }
    for client in clients {
        assert_eq!(within("a client's answer", client).await.unwrap(), 502);
    }
    assert_eq!(
        up.count(Method::GET, "/manifests/"),
        1,
        "the waiters shared the failed attempt instead of each taking a turn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_announced_empty_is_a_502_for_every_client_and_never_cached() {
    let up = FakeUpstream::start().await;
    let bytes = content("announced-empty", 64 * 1024);
    let digest = up.add_blob("org/app", &bytes);
    // Upstream answers 200 with Content-Length: 0 for a digest that is not the empty blob's.
    up.state
        .repos
        .lock()
        .unwrap()
        .get_mut("org/app")
        .unwrap()
        .blobs
        .insert(digest.clone(), Bytes::new());
    let mirror = MirrorSetup::new(&up.url).start().await;
    let path = format!("/v2/org/app/blobs/{digest}");
    let mut clients = Vec::new();
    for _ in 0..10 {
        let (http, url) = (mirror.http.clone(), format!("{}{path}", mirror.url));
        clients.push(tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.map(|b| b.len()))
        }));
    }
    for client in clients {
        let (status, body) = client.await.unwrap();
        assert_eq!(status, 502, "an empty body for {digest} (body: {body:?})");
    }
    assert!(!mirror.has_content(&digest));

    // Upstream fixed: the next request fetches the real bytes.
    up.add_blob("org/app", &bytes);
    let fixed = mirror.get(&path).await;
    assert_eq!(fixed.status(), 200);
    assert!(fixed.bytes().await.unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_of_a_cold_blob_is_complete_only_once_the_blob_verified() {
    let up = FakeUpstream::start().await;
    let bytes = content("range-of-corrupt", 8 * MIB);
    let digest = up.add_blob("org/app", &bytes);
    up.state.corrupt.lock().unwrap().push(digest.clone());
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(
        "/blobs/",
        Fault::Slow {
            bytes_per_sec: 4 * MIB as u64,
        },
        2,
    );
    let mirror = MirrorSetup::new(&proxy.url).start().await;
    let path = format!("/v2/org/app/blobs/{digest}");

    // The whole-blob client starts the fill; the range client joins it while it runs. Its
    // 16 bytes arrive long before the (corrupt) blob is complete, but they are unverified.
    let whole = mirror.get(&path).await;
    assert_eq!(whole.status(), 200);
    let range = mirror.get_range(&path, "bytes=0-15").await;
    if range.status() == 206 {
        assert!(
            range.bytes().await.is_err(),
            "a complete 206 of bytes that failed verification"
        );
    } else {
        assert_eq!(range.status(), 502);
    }
    assert!(
        whole.bytes().await.is_err(),
        "the corrupt blob is not served"
    );
    assert!(!mirror.has_content(&digest));

    // Upstream fixed: a range during the fill streams and completes with exact bytes.
    up.state.corrupt.lock().unwrap().clear();
    let whole = mirror.get(&path).await;
    assert_eq!(whole.status(), 200);
    let range = mirror.get_range(&path, "bytes=1000-1015").await;
    assert_eq!(range.status(), 206);
    assert_eq!(
        header(&range, "content-range"),
        format!("bytes 1000-1015/{}", bytes.len())
    );
    assert!(range.bytes().await.unwrap() == bytes[1000..1016]);
    assert!(whole.bytes().await.unwrap() == bytes);
    let cached = mirror.get_range(&path, "bytes=0-15").await;
    assert_eq!(cached.status(), 206);
    assert!(cached.bytes().await.unwrap() == bytes[..16]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_trickling_fill_gives_up_its_fetch_slot() {
    let up = FakeUpstream::start().await;
    let trickling = content("trickling", MIB);
    let trickling_digest = up.add_blob("org/app", &trickling);
    let other = content("other", MIB);
    let other_digest = up.add_blob("org/app", &other);
    let proxy = FaultProxy::start(&up.url).await;
    // Headers at once, then a byte a second: the fill holds the only slot.
    proxy.inject(&trickling_digest, Fault::Slow { bytes_per_sec: 1 }, 1);
    let mirror = MirrorSetup::new(&proxy.url)
        .proxy_option("maxfetches: 1")
        .proxy_option("fillminrate: 1024")
        .proxy_option("fillratewindow: 1s")
        .start()
        .await;

    let client = mirror
        .get(&format!("/v2/org/app/blobs/{trickling_digest}"))
        .await;
    assert_eq!(client.status(), 200);
    drop(client); // the client gives up

    let served = within(
        "another cold blob while a trickling fill was abandoned",
        async {
            let response = mirror
                .get(&format!("/v2/org/app/blobs/{other_digest}"))
                .await;
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        },
    )
    .await;
    assert!(served == other);

    // The abandoned blob is fetched again, whole, by the next client.
    let again = mirror
        .get(&format!("/v2/org/app/blobs/{trickling_digest}"))
        .await;
    assert!(again.bytes().await.unwrap() == trickling);
    assert_eq!(
        up.count(Method::GET, &format!("/blobs/{trickling_digest}")),
        2
    );
}
