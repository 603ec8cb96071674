//! Whatever upstream does, clients get verified bytes or a clear error, nothing unverified is
//! cached, and what is cached keeps being served. Faults come from a proxy between cistern and
//! the fake upstream.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use reqwest::Method;

const KIB: usize = 1024;

struct Setup {
    up: FakeUpstream,
    proxy: FaultProxy,
    mirror: Mirror,
    /// A blob upstream has and cistern has not fetched yet.
    cold: String,
    cold_bytes: Vec<u8>,
}

/// `org/app:v1` pulled through cistern (so cached), a tag TTL of zero so every tag request
/// asks upstream, and a cold 2 MiB blob.
async fn setup() -> Setup {
    setup_with(|m| m).await
}

async fn setup_with(configure: impl FnOnce(MirrorSetup) -> MirrorSetup) -> Setup {
    let up = FakeUpstream::start().await;
    add_image(&up, "org/app", Some("v1"), OCI_MANIFEST, "app");
    let cold_bytes = content("cold", 2048 * KIB);
    let cold = up.add_blob("org/app", &cold_bytes);
    let proxy = FaultProxy::start(&up.url).await;
    let mirror = configure(MirrorSetup::new(&proxy.url).tag_ttl("0s"))
        .start()
        .await;
    mirror.pull("org/app", "v1").await;
    Setup {
        up,
        proxy,
        mirror,
        cold,
        cold_bytes,
    }
}

impl Setup {
    fn cold_path(&self) -> String {
        format!("/v2/org/app/blobs/{}", self.cold)
    }

    /// The cached image still pulls, tag and blobs, exact bytes (pull checks every digest).
    async fn cached_image_still_pulls(&self) {
        self.mirror.pull("org/app", "v1").await;
    }

    fn blob_gets(&self) -> usize {
        self.up.count(Method::GET, &format!("/blobs/{}", self.cold))
    }

    /// Nothing of the cold blob is stored or left in the spool.
    async fn nothing_cached(&self) {
        assert!(!self.mirror.has_content(&self.cold));
        until("the spool to empty", Duration::from_secs(5), async || {
            self.mirror.spooled_bytes() == 0
        })
        .await;
    }
}

/// The body's bytes, or the error that ended it (or the error status that answered instead:
/// a fill that failed before the answer started gives one).
async fn body_of(response: reqwest::Response) -> Result<Vec<u8>, String> {
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
    }
    Ok(bytes)
}

#[tokio::test]
async fn upstream_down_cold_requests_fail_clearly_and_cached_ones_are_served() {
    let s = setup().await;
    s.proxy.go_down().await;
    let (status, code, message) = error_of(s.mirror.get(&s.cold_path()).await).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    assert!(
        message.contains(&s.proxy.url),
        "names the upstream: {message}"
    );
    let (status, _, _) = error_of(s.mirror.get_manifest("org/app", "v2").await).await;
    assert_eq!(status, 503);
    s.cached_image_still_pulls().await;
    s.nothing_cached().await;

    s.proxy.come_up().await;
    let body = body_of(s.mirror.get(&s.cold_path()).await).await.unwrap();
    assert!(body == s.cold_bytes);
}

#[tokio::test]
async fn upstream_5xx_is_503_and_cached_content_is_served() {
    let s = setup().await;
    s.proxy.inject("/v2/", Fault::Status(502, None), 1000);
    let (status, code, message) = error_of(s.mirror.get(&s.cold_path()).await).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    assert!(message.contains("502"), "{message}");
    s.cached_image_still_pulls().await;
    s.nothing_cached().await;
}

#[tokio::test]
async fn upstream_429_passes_retry_after_and_cached_content_is_served() {
    let s = setup().await;
    s.proxy.inject("/v2/", Fault::Status(429, Some("7")), 1000);
    let response = s.mirror.get_manifest("org/app", "v2").await;
    assert_eq!(header(&response, "retry-after"), "7");
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (429, "TOOMANYREQUESTS"));
    s.cached_image_still_pulls().await;
}

#[tokio::test]
async fn refused_credentials_deny_cold_pulls_and_cached_content_is_served() {
    let s = setup().await;
    s.up.state
        .faults
        .refuse_credentials
        .store(true, std::sync::atomic::Ordering::SeqCst);
    s.up.state.revoke_tokens();
    let (status, code, message) = error_of(s.mirror.get(&s.cold_path()).await).await;
    assert_eq!((status, code.as_str()), (403, "DENIED"));
    assert!(message.contains("proxy.password"), "{message}");
    s.cached_image_still_pulls().await;
}

#[tokio::test]
async fn a_slow_upstream_streams_headers_first_then_the_bytes() {
    let s = setup().await;
    s.proxy.inject(
        "/blobs/",
        Fault::Slow {
            bytes_per_sec: 1024 * KIB as u64,
        },
        1,
    );
    let response = s.mirror.get(&s.cold_path()).await;
    assert_eq!(response.status(), 200);
    assert!(
        !s.mirror.has_content(&s.cold),
        "headers arrived before the fill completed"
    );
    assert!(body_of(response).await.unwrap() == s.cold_bytes);
    assert!(s.mirror.has_content(&s.cold));
}

#[tokio::test]
async fn corrupted_bytes_are_never_cached_nor_served_complete() {
    let s = setup().await;
    s.proxy.inject("/blobs/", Fault::Corrupt, 1);
    let result = body_of(s.mirror.get(&s.cold_path()).await).await;
    assert!(result.is_err(), "the body must not complete");
    s.nothing_cached().await;
    s.cached_image_still_pulls().await;

    let body = body_of(s.mirror.get(&s.cold_path()).await).await.unwrap();
    assert!(body == s.cold_bytes);
    assert_eq!(s.blob_gets(), 2);
}

#[tokio::test]
async fn a_truncated_body_is_never_cached() {
    let s = setup().await;
    // Upstream ends the body early without a Content-Length: only the digest can tell.
    s.proxy.inject("/blobs/", Fault::Truncate(1000), 1);
    let result = body_of(s.mirror.get(&s.cold_path()).await).await;
    assert!(result.is_err(), "the body must not complete");
    s.nothing_cached().await;

    let body = body_of(s.mirror.get(&s.cold_path()).await).await.unwrap();
    assert!(body == s.cold_bytes);
}

#[tokio::test]
async fn a_dropped_connection_is_resumed_with_range() {
    let s = setup().await;
    let cut = 512 * KIB as u64;
    s.proxy.inject("/blobs/", Fault::CutAfter(cut), 1);
    let body = body_of(s.mirror.get(&s.cold_path()).await).await.unwrap();
    assert!(
        body == s.cold_bytes,
        "the whole blob, verified across the resume"
    );
    assert_eq!(s.blob_gets(), 2);
    let resumed: Vec<_> = s
        .proxy
        .seen()
        .into_iter()
        .filter_map(|seen| seen.range)
        .collect();
    assert_eq!(resumed, vec![format!("bytes={cut}-")]);
    assert!(s.mirror.has_content(&s.cold));
}

#[tokio::test]
async fn a_resume_that_upstream_answers_from_the_start_skips_what_was_received() {
    let s = setup().await;
    s.up.state
        .faults
        .ignore_range
        .store(true, std::sync::atomic::Ordering::SeqCst);
    s.proxy
        .inject("/blobs/", Fault::CutAfter(300 * KIB as u64), 1);
    let body = body_of(s.mirror.get(&s.cold_path()).await).await.unwrap();
    assert!(body == s.cold_bytes);
    assert_eq!(s.blob_gets(), 2);
    assert!(s.mirror.has_content(&s.cold));
}

#[tokio::test]
async fn a_download_that_keeps_breaking_fails_every_waiter_and_caches_nothing() {
    let s = setup().await;
    s.proxy
        .inject("/blobs/", Fault::CutAfter(100 * KIB as u64), 1000);
    let first = s.mirror.get(&s.cold_path()).await;
    let second = s.mirror.get(&s.cold_path()).await;
    assert!(body_of(first).await.is_err());
    assert!(body_of(second).await.is_err());
    // one GET and four resumes, shared by both clients
    assert_eq!(s.blob_gets(), 5);
    s.nothing_cached().await;
    s.cached_image_still_pulls().await;

    s.proxy.clear();
    let body = body_of(s.mirror.get(&s.cold_path()).await).await.unwrap();
    assert!(body == s.cold_bytes);
}

#[tokio::test]
async fn a_missing_tag_is_remembered_briefly() {
    let s = setup().await;
    for _ in 0..5 {
        let (status, code, message) =
            error_of(s.mirror.get_manifest("org/app", "nope").await).await;
        assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"));
        assert!(message.contains("org/app"), "{message}");
    }
    assert_eq!(s.up.count(Method::GET, "/manifests/nope"), 1);
    assert_eq!(s.up.count(Method::HEAD, "/manifests/nope"), 0);

    let s = setup_with(|m| m.proxy_option("notfoundttl: 0s")).await;
    for _ in 0..3 {
        let response = s.mirror.get_manifest("org/app", "nope").await;
        assert_eq!(response.status(), 404);
    }
    assert_eq!(s.up.count(Method::GET, "/manifests/nope"), 3);
}
