//! `repositoryprefix`: a registry whose repositories live below a path upstream, such as
//! registry.k8s.io's images in Artifact Registry (`k8s-artifacts-prod/images/<name>`). Pointing
//! cistern at that repository directly keeps credentials and tokens with one origin, where
//! following registry.k8s.io's redirects would mean answering another origin's challenge.

use crate::common::{add_image, FakeUpstream, MirrorSetup, OCI_MANIFEST};

#[tokio::test]
async fn a_repository_prefix_is_put_before_every_name_upstream_and_in_the_token_scope() {
    let hub = FakeUpstream::start().await;
    let registry = FakeUpstream::start().await;
    let pause = add_image(
        &registry,
        "k8s-artifacts-prod/images/pause",
        Some("3.9"),
        OCI_MANIFEST,
        "pause",
    );
    let mirror = MirrorSetup::new(&hub.url)
        .extra_yaml(&format!(
            "registries:\n  registry.k8s.io:\n    remoteurl: {}\n    repositoryprefix: /k8s-artifacts-prod/images/\n",
            registry.url
        ))
        .start()
        .await;

    let pulled = mirror.pull("registry.k8s.io/pause", "3.9").await;
    let digests: Vec<&str> = pulled.iter().map(|(digest, _)| digest.as_str()).collect();
    let mut expected = vec![pause.digest.as_str()];
    expected.extend(pause.blobs.iter().map(String::as_str));
    assert_eq!(digests, expected);
    let paths: Vec<String> = registry
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/v2/") && s.path != "/v2/")
        .map(|s| s.path)
        .collect();
    assert!(!paths.is_empty());
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("/v2/k8s-artifacts-prod/images/pause/")),
        "{paths:?}"
    );
    assert!(
        registry.tokens_issued() >= 1,
        "the token's scope names the prefixed repository"
    );
    assert_eq!(hub.registry_requests(), 0);

    // The catalog names the repository as clients do, without the prefix.
    let catalog: serde_json::Value = mirror.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["registry.k8s.io/pause"])
    );
}

#[test]
fn a_bad_repository_prefix_stops_start_up_naming_the_key() {
    let error = cistern::config::Config::from_yaml(
        "registries:\n  registry.k8s.io: {repositoryprefix: 'Images/../x'}\n",
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("registries.registry.k8s.io.repositoryprefix"),
        "{error}"
    );
}
