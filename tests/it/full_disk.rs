//! A full disk is survived: when storage refuses writes (a real tmpfs filled to the last page,
//! or an S3 bucket answering `QuotaExceeded`), cold pulls still succeed, every blob verified and
//! nothing partial left, metrics and `/readyz` say so, and caching resumes by itself when space
//! comes back. The tests mount a small tmpfs, so they run as root (as CI does); a refused mount
//! fails them, it never skips them.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::common::moto::Moto;
use crate::common::tmpfs::Tmpfs;
use crate::common::*;

const MIB: usize = 1024 * 1024;

/// A mirror storing on `tmpfs`, serving (so its storage is set up) before it is filled. With
/// `health`, its storage check runs every 50 ms and one failure would make it unready;
/// without, it writes nothing by itself (no probe takes a page a test freed).
async fn mirror_on(tmpfs: &Tmpfs, upstream: &str, health: bool) -> Mirror {
    let check = if health {
        "health:\n  storagedriver:\n    enabled: true\n    interval: 50ms\n    threshold: 1\n"
    } else {
        "health:\n  storagedriver:\n    enabled: false\n"
    };
    let mirror = MirrorSetup::new(upstream)
        .storage_dir(&tmpfs.store())
        .extra_yaml(check)
        .start()
        .await;
    serving(&mirror).await;
    mirror
}

/// Waits until the mirror answers `/v2/` (its storage is set up by then).
async fn serving(mirror: &Mirror) {
    until("the mirror serves", Duration::from_secs(30), async || {
        mirror
            .http
            .get(format!("{}/v2/", mirror.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// Files below `dir`, relative to it.
fn files_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

/// Nothing cached, nothing partial: no content, no link or record, no spool file, no staging
/// file (once the fills ended, which the spool shows).
async fn nothing_stored(mirror: &Mirror) {
    until(
        "every spool file is gone",
        Duration::from_secs(30),
        async || files_below(&mirror.storage.join("_spool")).is_empty(),
    )
    .await;
    assert_eq!(mirror.stored_files(), Vec::<String>::new());
}

async fn readyz(base: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

const UNCACHED_BLOBS: &str = r#"cistern_uncached_serves_total{kind="blob",reason="full"}"#;
const UNCACHED_MANIFESTS: &str = r#"cistern_uncached_serves_total{kind="manifest",reason="full"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_pull_on_a_full_disk_streams_through_verified_and_leaves_nothing() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let mut tmpfs = Tmpfs::mount(8);
    let mirror = mirror_on(&tmpfs, &up.url, true).await;
    tmpfs.fill();

    // `pull` checks every digest: the 3 MiB layer is far more than the free space (none).
    let pulled = mirror.pull("library/alpine", "latest").await;
    assert_eq!(pulled.len(), 4);
    assert_eq!(pulled[0].0, image.digest);
    for (blob, (digest, _)) in image.blobs.iter().zip(&pulled[1..]) {
        assert_eq!(blob, digest);
    }
    nothing_stored(&mirror).await;

    let m = mirror.metrics().await;
    assert_eq!(m.value(UNCACHED_BLOBS), 3.0, "{}", m.0);
    assert_eq!(m.value(UNCACHED_MANIFESTS), 1.0, "{}", m.0);
    assert_eq!(m.value("cistern_storage_full"), 1.0, "{}", m.0);

    // The probe fails too (every 50 ms, threshold 1), yet a full store keeps the mirror ready:
    // it serves, and says since when storage is full.
    let m = &mirror;
    until(
        "the health check ran on the full disk",
        Duration::from_secs(30),
        async || {
            m.metrics()
                .await
                .value(r#"cistern_storage_errors_total{operation="health"}"#)
                >= 2.0
        },
    )
    .await;
    for base in [&mirror.debug_url, &mirror.url] {
        let (status, body) = readyz(base).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ready", "{body}");
        assert_eq!(body["storage"]["full"], true, "{body}");
        assert!(body["storage"]["full_since"].is_string(), "{body}");
        let cause = body["storage"]["last_refused_cause"].as_str().unwrap();
        assert!(cause.contains("No space left on device"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caching_resumes_by_itself_when_space_comes_back() {
    let up = FakeUpstream::start().await;
    let first = add_image(&up, "org/first", Some("1"), OCI_MANIFEST, "first");
    let second = add_image(&up, "org/second", Some("1"), OCI_MANIFEST, "second");
    let mut tmpfs = Tmpfs::mount(8);
    let mirror = mirror_on(&tmpfs, &up.url, false).await;
    tmpfs.fill();
    let uncached = mirror.pull("org/first", "1").await;
    nothing_stored(&mirror).await;

    assert_eq!(readyz(&mirror.debug_url).await.1["storage"]["full"], true);

    // A cold image is cached once space is back, with no restart; pulling it again asks
    // upstream nothing.
    tmpfs.empty();
    let cold = mirror.pull("org/second", "1").await;
    for blob in &second.blobs {
        assert!(mirror.has_content(blob), "{blob} is cached");
    }
    let (status, body) = readyz(&mirror.debug_url).await;
    assert_eq!(
        (status, &body["storage"]["full"]),
        (200, &Value::Bool(false)),
        "{body}"
    );
    assert!(body["storage"]["last_refused_write"].is_string(), "{body}");
    assert_eq!(mirror.metrics().await.value("cistern_storage_full"), 0.0);
    let before = up.registry_requests();
    assert_eq!(mirror.pull("org/second", "1").await, cold);
    assert_eq!(
        up.registry_requests(),
        before,
        "the warm pull asked upstream nothing"
    );

    // And the blobs that went through uncached are cached when pulled again.
    assert_eq!(mirror.pull("org/first", "1").await, uncached);
    for blob in &first.blobs {
        assert!(mirror.has_content(blob), "{blob} is cached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_bigger_than_the_space_left_is_relayed_past_the_spool() {
    let up = FakeUpstream::start().await;
    let bytes = content("partly-full", 6 * MIB + 5);
    let digest = up.add_blob("org/app", &bytes);
    let mut tmpfs = Tmpfs::mount(8);
    let mirror = mirror_on(&tmpfs, &up.url, false).await;
    tmpfs.fill();
    tmpfs.free(2); // the spool takes about 2 MiB, the rest goes through memory

    let response = mirror.get(&format!("/v2/org/app/blobs/{digest}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-length"), bytes.len().to_string());
    assert!(response.bytes().await.unwrap() == bytes, "exact bytes");
    nothing_stored(&mirror).await;
    let m = mirror.metrics().await;
    assert_eq!(m.value(UNCACHED_BLOBS), 1.0, "{}", m.0);
    // The spool's 2 MiB were given back: the filesystem takes them again.
    std::fs::write(tmpfs.dir.path().join("given-back"), vec![0; 2 * MIB - 4096])
        .expect("the partial spool was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_manifest_on_a_full_disk_is_served() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let (index, _) = add_multi_arch(&up, "org/multi", "1");
    let mut tmpfs = Tmpfs::mount(8);
    let mirror = mirror_on(&tmpfs, &up.url, false).await;
    tmpfs.fill();

    for (repo, reference, digest) in [
        ("library/alpine", "latest", &image.digest),
        ("org/multi", index.digest.as_str(), &index.digest),
    ] {
        let response = mirror.get_manifest(repo, reference).await;
        assert_eq!(response.status(), 200, "{repo}:{reference}");
        assert_eq!(&header(&response, "docker-content-digest"), digest);
        let body = response.bytes().await.unwrap();
        assert_eq!(&sha256(&body), digest, "the bytes upstream sent");
    }
    nothing_stored(&mirror).await;
    let m = mirror.metrics().await;
    assert_eq!(m.value(UNCACHED_MANIFESTS), 2.0, "{}", m.0);
}

/// A 12 MiB blob (more than a fill relays in memory at once) sent at 8 MiB/s.
async fn slow_blob_on_a_full_disk(
    corrupt: bool,
) -> (FakeUpstream, FaultProxy, Tmpfs, Mirror, String, Vec<u8>) {
    let up = FakeUpstream::start().await;
    let bytes = content("full-disk-flight", 12 * MIB);
    let digest = up.add_blob("library/big", &bytes);
    if corrupt {
        up.state.corrupt.lock().unwrap().push(digest.clone());
    }
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(
        "/blobs/",
        Fault::Slow {
            bytes_per_sec: 8 * MIB as u64,
        },
        1,
    );
    let mut tmpfs = Tmpfs::mount(8);
    let mirror = mirror_on(&tmpfs, &proxy.url, false).await;
    tmpfs.fill();
    (up, proxy, tmpfs, mirror, digest, bytes)
}

/// What each of `n` concurrent clients of `path` got: the status, and the body or why it
/// broke off.
async fn concurrent_gets(
    mirror: &Mirror,
    path: &str,
    n: usize,
) -> Vec<(u16, Result<Vec<u8>, String>)> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (http, url) = (mirror.http.clone(), format!("{}{path}", mirror.url));
            tokio::spawn(async move {
                let response = http.get(url).send().await.unwrap();
                let status = response.status().as_u16();
                let mut body = response.bytes_stream();
                let mut received = Vec::new();
                while let Some(chunk) = body.next().await {
                    match chunk {
                        Ok(chunk) => received.extend_from_slice(&chunk),
                        Err(e) => return (status, Err(format!("{e:?}"))),
                    }
                }
                (status, Ok(received))
            })
        })
        .collect();
    let mut results = Vec::new();
    for client in clients {
        results.push(
            tokio::time::timeout(Duration::from_secs(60), client)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_clients_on_one_cold_blob_on_a_full_disk_get_exact_bytes_from_one_get() {
    let (up, _proxy, _tmpfs, mirror, digest, bytes) = slow_blob_on_a_full_disk(false).await;
    let path = format!("/v2/library/big/blobs/{digest}");
    for (i, (status, body)) in concurrent_gets(&mirror, &path, 20)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(status, 200, "client {i}");
        let body = body.unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(
            body == bytes,
            "client {i}: exact bytes ({} of {})",
            body.len(),
            bytes.len()
        );
    }
    assert_eq!(up.count(Method::GET, &format!("/blobs/{digest}")), 1);
    nothing_stored(&mirror).await;
    let m = mirror.metrics().await;
    assert_eq!(m.value(UNCACHED_BLOBS), 1.0, "{}", m.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_that_does_not_match_its_digest_on_a_full_disk_fails_for_every_client() {
    let (_up, _proxy, _tmpfs, mirror, digest, bytes) = slow_blob_on_a_full_disk(true).await;
    let path = format!("/v2/library/big/blobs/{digest}");
    for (i, (status, body)) in concurrent_gets(&mirror, &path, 5)
        .await
        .into_iter()
        .enumerate()
    {
        if let (200, Ok(body)) = (status, &body) {
            panic!(
                "client {i} got a complete body of {} bytes (of {})",
                body.len(),
                bytes.len()
            );
        }
    }
    nothing_stored(&mirror).await;
    let m = mirror.metrics().await;
    assert_eq!(
        m.value(UNCACHED_BLOBS),
        0.0,
        "a failed fill is no uncached serve: {}",
        m.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_bucket_over_quota_serves_the_pull_uncached_and_caches_again_after() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let second = add_image(&up, "org/second", Some("1"), OCI_MANIFEST, "second");
    let moto = Moto::start().await;
    moto.create_bucket("cache").await;
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let mirror = MirrorSetup::new(&up.url)
        .storage(moto.storage_yaml(&proxy.url, "cache"))
        .start()
        .await;
    serving(&mirror).await;
    // Every write of a part or an object is refused as over quota (what Ceph RGW answers);
    // starting a multipart upload still works, so blobs fail mid-way.
    proxy.inject_method(
        Method::PUT,
        "/cache/mirror/",
        Fault::S3Error(403, "QuotaExceeded"),
        usize::MAX,
    );

    let pulled = mirror.pull("library/alpine", "latest").await;
    assert_eq!(pulled[0].0, image.digest);
    assert_eq!(
        moto.keys("cache", "mirror/blobs/").await,
        Vec::<String>::new()
    );
    assert_eq!(
        moto.keys("cache", "mirror/repositories/").await,
        Vec::<String>::new()
    );
    assert_eq!(
        moto.pending_uploads("cache").await,
        0,
        "the uploads were aborted"
    );
    let m = mirror.metrics().await;
    assert_eq!(m.value(UNCACHED_BLOBS), 3.0, "{}", m.0);
    assert_eq!(m.value(UNCACHED_MANIFESTS), 1.0, "{}", m.0);
    let (status, body) = readyz(&mirror.debug_url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["storage"]["full"], true, "{body}");
    assert!(
        body["storage"]["last_refused_cause"]
            .as_str()
            .unwrap()
            .contains("QuotaExceeded"),
        "{body}"
    );

    proxy.clear();
    mirror.pull("org/second", "1").await;
    let keys = moto.keys("cache", "mirror/blobs/").await;
    for blob in &second.blobs {
        let hex = blob.strip_prefix("sha256:").unwrap();
        assert!(
            keys.iter().any(|k| k.ends_with(hex)),
            "{blob} cached: {keys:?}"
        );
    }
    assert_eq!(readyz(&mirror.debug_url).await.1["storage"]["full"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_comes_after_the_relay_moved_on_gets_the_blob_from_a_new_fetch() {
    let (up, _proxy, _tmpfs, mirror, digest, bytes) = slow_blob_on_a_full_disk(false).await;
    let path = format!("/v2/library/big/blobs/{digest}");
    let first = mirror.get(&path).await;
    assert_eq!(first.status(), 200);
    let first = tokio::spawn(async move { first.bytes().await.unwrap() });
    // More than the relay holds has gone through: the first bytes are gone from memory.
    let m = &mirror;
    until("10 MiB went through", Duration::from_secs(30), async || {
        m.metrics()
            .await
            .value(r#"cistern_upstream_fetched_bytes_total{registry="docker.io"}"#)
            >= (10 * MIB) as f64
    })
    .await;
    let late = mirror.get(&path).await;
    assert_eq!(late.status(), 200);
    assert!(
        late.bytes().await.unwrap() == bytes,
        "the late client: exact bytes"
    );
    assert!(
        first.await.unwrap() == bytes,
        "the first client: exact bytes"
    );
    assert_eq!(up.count(Method::GET, &format!("/blobs/{digest}")), 2);
    nothing_stored(&mirror).await;
}
