//! SIGTERM (docker stop, a Kubernetes rollout): no new connections, responses in progress
//! finish within `http.draintimeout`, and nothing partial is ever left in the cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::binary::Binary;
use crate::common::*;
use futures::StreamExt;

const MIB: usize = 1024 * 1024;

fn write_config(dir: &Path, remote: &str, drain_timeout: &str) -> PathBuf {
    let path = dir.join("config.yml");
    std::fs::write(
        &path,
        format!(
            "version: 0.1\nhttp:\n  addr: 127.0.0.1:0\n  draintimeout: {drain_timeout}\n  debug:\n    addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: {remote}\n  username: {USER}\n  password: {PASSWORD}\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    path
}

fn stored(dir: &Path, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    dir.join("storage/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .exists()
}

async fn refuses_connections(url: &str) {
    let addr = url.trim_start_matches("http://");
    until(
        &format!("{addr} to refuse connections"),
        Duration::from_secs(10),
        async || tokio::net::TcpStream::connect(addr).await.is_err(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_pull_lets_it_finish_and_refuses_new_connections() {
    let up = FakeUpstream::start().await;
    let bytes = content("drain", 4 * MIB);
    let digest = up.add_blob("library/big", &bytes);
    let proxy = FaultProxy::start(&up.url).await;
    // About two seconds for the whole blob: long enough to stop the server in the middle.
    let slow = Fault::Slow {
        bytes_per_sec: 2 * MIB as u64,
    };
    proxy.inject("/blobs/", slow, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut cistern = Binary::start(&write_config(dir.path(), &proxy.url, "30s")).await;
    let debug_url = cistern.debug_url.clone().unwrap();

    let response = reqwest::get(format!("{}/v2/library/big/blobs/{digest}", cistern.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = body.next().await.unwrap().unwrap().to_vec();
    assert!(received.len() < bytes.len());

    cistern.terminate();
    refuses_connections(&cistern.url).await;
    let ready = reqwest::get(format!("{debug_url}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while draining");
    assert!(ready.text().await.unwrap().contains("shutting down"));

    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.expect("the pull in progress finishes"));
    }
    assert_eq!(sha256(&received), digest, "every byte, verified");
    let status = cistern.exit_status(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{}", cistern.log_text());
    assert!(
        stored(dir.path(), &digest),
        "the finished fill was committed"
    );
    assert!(cistern.log_text().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_cuts_what_does_not_finish_and_nothing_partial_is_kept() {
    let up = FakeUpstream::start().await;
    let bytes = content("cut", 4 * MIB);
    let digest = up.add_blob("library/big", &bytes);
    let proxy = FaultProxy::start(&up.url).await;
    // Sixteen seconds for the whole blob; the drain timeout is one.
    let crawl = Fault::Slow {
        bytes_per_sec: MIB as u64 / 4,
    };
    proxy.inject("/blobs/", crawl, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &proxy.url, "1s");
    let mut cistern = Binary::start(&config).await;

    let url = format!("{}/v2/library/big/blobs/{digest}", cistern.url);
    let mut body = reqwest::get(&url).await.unwrap().bytes_stream();
    let mut received = body.next().await.unwrap().unwrap().len();
    cistern.terminate();
    let mut cut = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => received += chunk.len(),
            Err(_) => cut = true,
        }
    }
    assert!(
        cut || received < bytes.len(),
        "the client sees the stream end early"
    );
    let status = cistern.exit_status(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}\n{}", cistern.log_text());
    assert!(!stored(dir.path(), &digest), "no partial blob in the cache");

    proxy.clear();
    let restarted = Binary::start(&config).await;
    let again = reqwest::get(format!("{}/v2/library/big/blobs/{digest}", restarted.url))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(sha256(&again.bytes().await.unwrap()), digest);
    let fetches = proxy
        .seen()
        .iter()
        .filter(|seen| seen.method == reqwest::Method::GET && seen.path.contains("/blobs/"))
        .count();
    assert_eq!(
        fetches, 2,
        "the cut fill was not kept, so the blob is fetched again"
    );
}
