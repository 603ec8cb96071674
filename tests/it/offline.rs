//! `offline: true` (`proxy.offline`, `registries.<host>.offline`): a mirror that pulled images
//! while online, restarted on the same storage with its upstream set offline, serves every
//! cached image byte for byte (tags as last seen, whatever their TTL), answers anything else
//! with a 404 that says the registry is offline, and never opens a connection upstream: the
//! upstream URL is a listener that counts the connections it accepts, or a host name that
//! does not resolve (`.invalid`), so start-up needs no network either.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Method;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::common::*;

/// A host name that never resolves (RFC 6761): an upstream only a lookup could reach.
const UNRESOLVABLE: &str = "http://upstream.invalid:5000";

/// A TCP listener standing in for upstream that counts the connections made to it (and
/// closes them).
struct CountingListener {
    url: String,
    accepted: Arc<AtomicUsize>,
}

impl CountingListener {
    async fn start() -> CountingListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        CountingListener { url, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Status, OCI code and message of an error answer; asserts the message says the registry
/// is offline and names the key that made it so.
async fn offline_error(response: reqwest::Response, key: &str) -> (u16, String) {
    let (status, code, message) = error_of(response).await;
    assert!(
        message.contains("offline") && message.contains(key),
        "{message}"
    );
    (status, code)
}

async fn tag_list(mirror: &Mirror, repo: &str) -> (u16, Value) {
    let response = mirror.get(&format!("/v2/{repo}/tags/list")).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn an_offline_mirror_serves_what_it_cached_and_contacts_no_upstream() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let (_, platforms) = add_multi_arch(&up, "library/node", "20");
    let busybox = add_image(
        &up,
        "library/busybox",
        Some("1"),
        DOCKER_MANIFEST,
        "busybox",
    );
    let app = add_image(&up, "owner/app", Some("v1"), OCI_MANIFEST, "ghcr-app");
    let storage = tempfile::tempdir().unwrap();

    let online = MirrorSetup::new(&up.url)
        .registry("ghcr.io", &up.url, &[])
        .storage_dir(storage.path())
        .start()
        .await;
    let alpine_bytes = online.pull("library/alpine", "latest").await;
    let node_bytes = online.pull("library/node", "20").await;
    let app_bytes = online.pull("ghcr.io/owner/app", "v1").await;
    drop(online);
    let upstream_requests = up.seen().len();

    // Restarted offline through the environment, as a container would be; ghcr.io inherits
    // it. The tag TTL is zero: every tag is past it.
    let counting = CountingListener::start().await;
    let offline = MirrorSetup::new(&counting.url)
        .registry("ghcr.io", UNRESOLVABLE, &[])
        .env("REGISTRY_PROXY_OFFLINE", "true")
        .tag_ttl("0s")
        .storage_dir(storage.path())
        .start()
        .await;
    assert_eq!(offline.get("/v2/").await.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", offline.debug_url))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "offline is no reason to leave the load balancer"
    );

    assert_eq!(offline.pull("library/alpine", "latest").await, alpine_bytes);
    assert_eq!(offline.pull("library/node", "20").await, node_bytes);
    assert_eq!(offline.pull("ghcr.io/owner/app", "v1").await, app_bytes);
    // Again, HEAD as dockerd resolves a tag: still served, still as last seen.
    let head = offline
        .manifest_request(Method::HEAD, "/v2/library/alpine/manifests/latest")
        .await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "docker-content-digest"), alpine_bytes[0].0);

    // What was never cached: the answer names what and why, with the code of what is missing.
    let hub = "proxy.offline";
    let cases = [
        ("/v2/library/alpine/manifests/edge", hub, "MANIFEST_UNKNOWN"),
        ("/v2/library/nothing/manifests/latest", hub, "NAME_UNKNOWN"),
        ("/v2/library/nothing/tags/list", hub, "NAME_UNKNOWN"),
        (
            &format!("/v2/library/alpine/blobs/sha256:{}", "0".repeat(64)),
            hub,
            "BLOB_UNKNOWN",
        ),
        // Stored, but for another repository: without upstream's word that this repository
        // holds it too, it would leak a private layer, so it stays refused.
        (
            &format!("/v2/library/alpine/blobs/{}", busybox.blobs[1]),
            hub,
            "BLOB_UNKNOWN",
        ),
        (
            &format!("/v2/library/alpine/manifests/{}", platforms[0].digest),
            hub,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/ghcr.io/owner/app/manifests/v2",
            "registries.ghcr.io.offline",
            "MANIFEST_UNKNOWN",
        ),
        (
            &format!("/v2/ghcr.io/library/alpine/blobs/{}", app.blobs[0]),
            "registries.ghcr.io.offline",
            "BLOB_UNKNOWN",
        ),
    ];
    for (path, key, code) in &cases {
        let response = offline.get_manifest_path(path).await;
        assert_eq!(
            offline_error(response, key).await,
            (404, (*code).to_owned()),
            "{path}"
        );
    }
    let head = offline
        .head(&format!("/v2/library/alpine/blobs/{}", busybox.blobs[1]))
        .await;
    assert_eq!(head.status(), 404, "HEAD of another repository's blob");

    // The tag list comes from the cache.
    let (status, list) = tag_list(&offline, "library/alpine").await;
    assert_eq!(
        (status, &list["tags"]),
        (200, &serde_json::json!(["latest"]))
    );
    let (status, list) = tag_list(&offline, "ghcr.io/owner/app").await;
    assert_eq!((status, &list["tags"]), (200, &serde_json::json!(["v1"])));

    let metrics = offline.metrics().await;
    assert_eq!(
        metrics.sum("cistern_upstream_offline", &[("registry", "docker.io")]),
        1.0
    );
    assert_eq!(
        metrics.sum("cistern_upstream_offline", &[("registry", "ghcr.io")]),
        1.0
    );
    assert!(
        metrics.sum(
            "cistern_cache_requests_total",
            &[("kind", "manifest"), ("outcome", "stale")]
        ) >= 4.0,
        "{}",
        metrics.0
    );
    assert_eq!(
        metrics.sum("cistern_cache_requests_total", &[("outcome", "miss")]),
        0.0
    );
    assert_eq!(metrics.sum("cistern_upstream_requests_total", &[]), 0.0);

    assert_eq!(counting.accepted(), 0, "no connection attempt upstream");
    assert_eq!(up.seen().len(), upstream_requests);
}

#[tokio::test]
async fn one_registry_offline_another_online_each_behaves_accordingly() {
    let hub = FakeUpstream::start().await;
    let ghcr = FakeUpstream::start().await;
    ghcr.set_private_prefix(None);
    let hub_v1 = add_image(&hub, "library/alpine", Some("3"), OCI_MANIFEST, "hub-v1");
    add_image(&ghcr, "owner/app", Some("1"), OCI_MANIFEST, "ghcr-v1");
    let storage = tempfile::tempdir().unwrap();

    let online = MirrorSetup::new(&hub.url)
        .registry("ghcr.io", &ghcr.url, &[])
        .tag_ttl("0s")
        .storage_dir(storage.path())
        .start()
        .await;
    online.pull("library/alpine", "3").await;
    let app_v1 = online.pull("ghcr.io/owner/app", "1").await;
    drop(online);

    // Both tags move upstream, and a new one appears on each registry.
    let hub_v2 = add_image(&hub, "library/alpine", Some("3"), OCI_MANIFEST, "hub-v2");
    add_image(&ghcr, "owner/app", Some("1"), OCI_MANIFEST, "ghcr-v2");
    add_image(
        &hub,
        "library/alpine",
        Some("edge"),
        OCI_MANIFEST,
        "hub-edge",
    );
    add_image(&ghcr, "owner/app", Some("2"), OCI_MANIFEST, "ghcr-2");
    let ghcr_requests = ghcr.seen().len();

    let counting = CountingListener::start().await;
    let mirror = MirrorSetup::new(&hub.url)
        .registry("ghcr.io", &counting.url, &["offline: true"])
        .tag_ttl("0s")
        .storage_dir(storage.path())
        .start()
        .await;

    // Online: the moved tag is revalidated and the new one fetched.
    let pulled = mirror.pull("library/alpine", "3").await;
    assert_ne!(pulled[0].0, hub_v1.digest);
    assert_eq!(pulled[0].0, hub_v2.digest);
    mirror.pull("library/alpine", "edge").await;
    let (status, list) = tag_list(&mirror, "library/alpine").await;
    assert_eq!(
        (status, &list["tags"]),
        (200, &serde_json::json!(["3", "edge"]))
    );

    // Offline: the tag as last seen, and nothing new.
    assert_eq!(mirror.pull("ghcr.io/owner/app", "1").await, app_v1);
    let response = mirror.get_manifest("ghcr.io/owner/app", "2").await;
    assert_eq!(
        offline_error(response, "registries.ghcr.io.offline").await,
        (404, "MANIFEST_UNKNOWN".to_owned())
    );
    let (status, list) = tag_list(&mirror, "ghcr.io/owner/app").await;
    assert_eq!((status, &list["tags"]), (200, &serde_json::json!(["1"])));

    let metrics = mirror.metrics().await;
    assert_eq!(
        metrics.sum("cistern_upstream_offline", &[("registry", "docker.io")]),
        0.0
    );
    assert_eq!(
        metrics.sum("cistern_upstream_offline", &[("registry", "ghcr.io")]),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "cistern_upstream_requests_total",
            &[("registry", "ghcr.io")]
        ),
        0.0
    );
    assert!(
        metrics.sum(
            "cistern_upstream_requests_total",
            &[("registry", "docker.io")]
        ) > 0.0
    );
    assert_eq!(counting.accepted(), 0);
    assert_eq!(ghcr.seen().len(), ghcr_requests);
}

#[tokio::test]
async fn an_offline_mirror_starts_with_an_upstream_no_lookup_could_find() {
    // Nothing cached, no upstream anywhere: it starts, is ready, and says what it cannot do.
    let mirror = MirrorSetup::new(UNRESOLVABLE)
        .proxy_option("offline: true")
        .start()
        .await;
    assert_eq!(mirror.get("/v2/").await.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", mirror.debug_url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let response = mirror.get_manifest("library/alpine", "latest").await;
    assert_eq!(
        offline_error(response, "proxy.offline").await,
        (404, "NAME_UNKNOWN".to_owned())
    );
}
