//! The fault proxy itself, against the fake upstream: other tests rely on it doing exactly
//! what it is told, so a broken fault shows up here rather than as a puzzling mirror failure.

use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use reqwest::Method;

const REPO: &str = "library/alpine";

struct Setup {
    up: FakeUpstream,
    proxy: FaultProxy,
    http: reqwest::Client,
    token: String,
    blob: Bytes,
    digest: String,
    /// The blob's registry URL through the proxy.
    blob_url: String,
}

/// A fake upstream holding one 100 000 byte blob, a proxy in front of it, and a pull token
/// (fetched through the proxy), as the mirror would use them.
async fn setup() -> Setup {
    let up = FakeUpstream::start().await;
    let blob = Bytes::from(content("selftest", 100_000));
    let digest = up.add_blob(REPO, &blob);
    let proxy = FaultProxy::start(&up.url).await;
    let http = reqwest::Client::new();
    let answer: serde_json::Value = http
        .get(format!(
            "{}/token?service=fake-hub&scope=repository:{REPO}:pull",
            proxy.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["token"].as_str().unwrap().to_owned();
    let blob_url = format!("{}/v2/{REPO}/blobs/{digest}", proxy.url);
    Setup {
        up,
        proxy,
        http,
        token,
        blob,
        digest,
        blob_url,
    }
}

impl Setup {
    fn get(&self) -> reqwest::RequestBuilder {
        self.http.get(&self.blob_url).bearer_auth(&self.token)
    }
}

#[tokio::test]
async fn pass_through_gives_the_exact_bytes_and_headers() {
    let s = setup().await;
    let response = s.get().send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-length"), "100000");
    assert_eq!(response.bytes().await.unwrap(), s.blob);

    // HEAD keeps upstream's Content-Length although no body is sent.
    let response = s
        .http
        .head(&s.blob_url)
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-length"), "100000");

    let seen = s.proxy.seen();
    assert_eq!(seen.len(), 3, "token, GET, HEAD: {seen:?}");
    assert_eq!(seen[1].method, Method::GET);
    assert!(seen[1].path.ends_with(&s.blob_url[s.proxy.url.len()..]));
    assert_eq!(seen[2].method, Method::HEAD);
    assert_eq!(s.up.count(Method::GET, "/blobs/"), 1);
    assert_eq!(
        s.proxy.max_concurrent_blob_fetches(),
        1,
        "one after the other"
    );
}

#[tokio::test]
async fn cut_after_fails_the_body_after_exactly_n_bytes() {
    let s = setup().await;
    s.proxy.inject("/blobs/", Fault::CutAfter(10), 1);
    let mut response = s.get().send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-length"),
        "100000",
        "the full length is promised"
    );
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("body ended cleanly after {} bytes", received.len()),
            Err(e) => break e,
        }
    };
    assert_eq!(received, s.blob[..10], "{error}");

    // The rule was used up: the next request passes.
    let response = s.get().send().await.unwrap();
    assert_eq!(response.bytes().await.unwrap(), s.blob);
}

#[tokio::test]
async fn truncate_and_corrupt_end_cleanly_with_wrong_bytes() {
    let s = setup().await;
    s.proxy.inject("/blobs/", Fault::Truncate(1000), 1);
    s.proxy.inject("/blobs/", Fault::Corrupt, 1);

    let response = s.get().send().await.unwrap();
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(response.bytes().await.unwrap(), s.blob[..1000]);

    let response = s.get().send().await.unwrap();
    assert_eq!(header(&response, "content-length"), "100000");
    let corrupt = response.bytes().await.unwrap();
    assert_eq!(corrupt[0], s.blob[0] ^ 0xff);
    assert_eq!(corrupt[1..], s.blob[1..]);
}

#[tokio::test]
async fn injected_status_is_not_forwarded() {
    let s = setup().await;
    s.proxy.inject("/blobs/", Fault::Status(429, Some("7")), 1);
    let response = s.get().send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "7");
    assert_eq!(
        s.up.count(Method::GET, "/blobs/"),
        0,
        "upstream never asked"
    );
    assert_eq!(s.proxy.seen().len(), 2, "but the proxy saw it");
    assert_eq!(
        s.proxy.max_concurrent_blob_fetches(),
        0,
        "nothing forwarded"
    );
}

#[tokio::test]
async fn ranges_pass_through_to_upstream() {
    let s = setup().await;
    let response = s.get().header("range", "bytes=5-").send().await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(header(&response, "content-range"), "bytes 5-99999/100000");
    assert_eq!(header(&response, "content-length"), "99995");
    assert_eq!(response.bytes().await.unwrap(), s.blob.slice(5..));

    let response = s.get().header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(header(&response, "content-range"), "bytes 10-19/100000");
    assert_eq!(response.bytes().await.unwrap(), s.blob.slice(10..20));

    let response = s
        .get()
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 416);

    // The CDN path too, and a corrupt blob is corrupted whole before the part is cut out.
    s.up.state.corrupt.lock().unwrap().push(s.digest.clone());
    let response = s
        .http
        .get(format!("{}/cdn/{}", s.proxy.url, s.digest))
        .header("range", "bytes=99990-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        header(&response, "content-range"),
        "bytes 99990-99999/100000"
    );
    let part = response.bytes().await.unwrap();
    assert_eq!(part[..9], s.blob[99990..99999]);
    assert_eq!(part[9], s.blob[99999] ^ 0xff);

    let ranges: Vec<_> = s.proxy.seen().into_iter().map(|r| r.range).collect();
    assert_eq!(ranges[1].as_deref(), Some("bytes=5-"));
    let upstream_ranges: Vec<_> = s.up.seen().into_iter().map(|r| r.range).collect();
    assert_eq!(upstream_ranges[3].as_deref(), Some("bytes=100000-"));
}

#[tokio::test]
async fn slow_bodies_are_paced_and_counted_as_concurrent() {
    let s = setup().await;
    // 100 000 bytes at 400 000 bytes/s: about a quarter of a second each.
    s.proxy.inject(
        "/blobs/",
        Fault::Slow {
            bytes_per_sec: 400_000,
        },
        2,
    );
    let started = Instant::now();
    let fetch = || async { s.get().send().await.unwrap().bytes().await.unwrap() };
    let (a, b) = tokio::join!(fetch(), fetch());
    assert_eq!(a, s.blob);
    assert_eq!(b, s.blob);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(s.proxy.max_concurrent_blob_fetches(), 2);
}

#[tokio::test]
async fn go_down_refuses_connections_until_come_up() {
    let s = setup().await;
    // A keep-alive connection to the proxy exists before it goes down.
    assert_eq!(s.get().send().await.unwrap().status(), 200);

    s.proxy.go_down().await;
    let error = s.get().send().await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");

    s.proxy.come_up().await;
    let response = s.get().send().await.unwrap();
    assert_eq!(response.bytes().await.unwrap(), s.blob);
}
