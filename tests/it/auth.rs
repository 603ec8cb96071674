//! Upstream authentication: Docker Hub's token flow with the stored credentials.

use crate::common::*;
use reqwest::Method;

#[tokio::test]
async fn one_token_serves_many_requests_for_a_repository() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).tag_ttl("0").start().await;
    mirror.pull("alpine", "latest").await;
    for _ in 0..10 {
        mirror.get_manifest("alpine", "latest").await;
        mirror
            .head(&format!("/v2/alpine/blobs/{}", image.blobs[0]))
            .await;
    }
    let registry_requests = up.registry_requests();
    assert!(registry_requests >= 15, "{registry_requests}");
    assert_eq!(
        up.tokens_issued(),
        1,
        "one token for {registry_requests} upstream requests"
    );
    // Every registry request but the first probe carried it.
    let unauthenticated = up
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/v2/") && s.path != "/v2/" && s.authorization.is_none())
        .count();
    assert_eq!(unauthenticated, 0);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_token() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).start().await;
    let paths: Vec<String> = image
        .blobs
        .iter()
        .map(|d| format!("/v2/alpine/blobs/{d}"))
        .collect();
    let requests = paths.iter().map(|path| mirror.get(path));
    for response in futures::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(up.tokens_issued(), 1);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).tag_ttl("0").start().await;
    assert_eq!(mirror.get_manifest("alpine", "latest").await.status(), 200);
    up.state.revoke_tokens();
    assert_eq!(mirror.get_manifest("alpine", "latest").await.status(), 200);
    assert_eq!(up.tokens_issued(), 2);
}

#[tokio::test]
async fn private_repository_pulls_with_stored_credentials() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "private/secret", Some("1.0"), OCI_MANIFEST, "secret");
    let mirror = MirrorSetup::new(&up.url).start().await;
    let pulled = mirror.pull("private/secret", "1.0").await;
    assert_eq!(pulled[0].0, image.digest);
    let token_requests: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/token"))
        .collect();
    assert_eq!(token_requests.len(), 1);
    assert!(
        token_requests[0]
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Basic "),
        "credentials go to the token realm as Basic"
    );
}

#[tokio::test]
async fn private_repository_without_credentials_is_denied() {
    let up = FakeUpstream::start().await;
    add_image(&up, "private/secret", Some("1.0"), OCI_MANIFEST, "secret");
    let mirror = MirrorSetup::new(&up.url).anonymous().start().await;
    let response = mirror.get_manifest("private/secret", "1.0").await;
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("/token"));
    // Public images still work anonymously.
    add_alpine(&up);
    assert_eq!(mirror.get_manifest("alpine", "latest").await.status(), 200);
    let token_requests = up
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/token"));
    assert!(token_requests
        .into_iter()
        .all(|s| s.authorization.is_none()));
}

#[tokio::test]
async fn blob_redirects_are_followed_without_the_token() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    up.state
        .faults
        .redirect_blobs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mirror = MirrorSetup::new(&up.url).start().await;
    mirror.pull("alpine", "latest").await;
    let cdn: Vec<_> = up
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), image.blobs.len());
    assert!(
        cdn.iter().all(|s| s.authorization.is_none()),
        "the CDN never sees the token"
    );
    assert_eq!(up.count(Method::GET, "/blobs/"), image.blobs.len());
}
