//! Tasks many clients wait on (blob fills, manifest fetches) against upstreams that stall,
//! trickle, lie about lengths or corrupt bytes: every waiter gets the one attempt's outcome,
//! nothing unverified goes out as complete, and no abandoned fill holds a fetch slot.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use reqwest::Method;

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
