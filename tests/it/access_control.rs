//! Who may pull through the mirror: htpasswd users, source networks, and repository patterns
//! that keep the stored Docker Hub credentials from reading anything else.

use crate::common::*;
use base64::Engine as _;
use serde_json::Value;

const REALM: &str = "cistern-test";

fn htpasswd_yaml(dir: &std::path::Path, user: &str, password: &str) -> String {
    htpasswd_section(dir, REALM, user, password)
}

fn client_with_basic(user: &str, password: &str) -> reqwest::Client {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Basic {encoded}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn refusal(response: reqwest::Response) -> (u16, Option<String>, String, String) {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    let error = &body["errors"][0];
    (
        status,
        challenge,
        error["code"].as_str().unwrap().to_owned(),
        error["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn htpasswd_challenges_clients_and_admits_the_right_password() {
    let up = FakeUpstream::start().await;
    add_image(&up, "private/secret", Some("1.0"), OCI_MANIFEST, "htpasswd");
    let dir = tempfile::tempdir().unwrap();
    let mut mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&htpasswd_yaml(dir.path(), "ci", "let-me-in"))
        .start()
        .await;

    for path in ["/v2/", "/v2/private/secret/manifests/1.0", "/v2/_catalog"] {
        let (status, challenge, code, _) = refusal(mirror.get(path).await).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"), "{path}");
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Basic realm="cistern-test""#),
            "{path}"
        );
    }
    let wrong = client_with_basic("ci", "guess")
        .get(format!("{}/v2/", mirror.url))
        .send()
        .await
        .unwrap();
    let (status, _, code, message) = refusal(wrong).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    assert!(message.contains("127.0.0.1"), "{message}");
    assert_eq!(
        up.registry_requests(),
        0,
        "refused clients cost no upstream request"
    );
    assert_eq!(
        mirror.get("/healthz").await.status(),
        200,
        "probes need no credentials"
    );

    mirror.http = client_with_basic("ci", "let-me-in");
    let pulled = mirror.pull("private/secret", "1.0").await;
    assert_eq!(pulled.len(), 4);
}

#[tokio::test]
async fn source_networks_admit_daemons_that_cannot_authenticate() {
    let up = FakeUpstream::start().await;
    add_image(&up, "library/alpine", Some("3.20"), OCI_MANIFEST, "sources");
    let dir = tempfile::tempdir().unwrap();

    let loopback = MirrorSetup::new(&up.url)
        .extra_yaml("access:\n  sources: [127.0.0.0/8, '::1']\n")
        .start()
        .await;
    assert_eq!(loopback.pull("alpine", "3.20").await.len(), 4);

    let elsewhere = MirrorSetup::new(&up.url)
        .extra_yaml("access:\n  sources: [10.0.0.0/8]\n")
        .start()
        .await;
    let (status, challenge, code, message) =
        refusal(elsewhere.get_manifest("alpine", "3.20").await).await;
    assert_eq!((status, code.as_str(), challenge), (403, "DENIED", None));
    assert!(
        message.contains("127.0.0.1") && message.contains("access.sources"),
        "{message}"
    );

    // With htpasswd too, a client outside the networks can still log in.
    let mut both = MirrorSetup::new(&up.url)
        .extra_yaml("access:\n  sources: [10.0.0.0/8]\n")
        .extra_yaml(&htpasswd_yaml(dir.path(), "ci", "pw"))
        .start()
        .await;
    assert_eq!(both.get("/v2/").await.status(), 401);
    both.http = client_with_basic("ci", "pw");
    assert_eq!(both.pull("alpine", "3.20").await.len(), 4);
}

#[tokio::test]
async fn repository_patterns_keep_the_credentials_to_allowed_repositories() {
    let up = FakeUpstream::start().await;
    let alpine = add_image(&up, "library/alpine", Some("3.20"), OCI_MANIFEST, "allowed");
    let secret = add_image(&up, "private/secret", Some("1.0"), OCI_MANIFEST, "private");
    add_image(&up, "library/secretive", Some("1"), OCI_MANIFEST, "denied");
    let storage = tempfile::tempdir().unwrap();

    // Something private is already cached (pulled before the rules were added).
    let open = MirrorSetup::new(&up.url)
        .storage_dir(storage.path())
        .start()
        .await;
    open.pull("private/secret", "1.0").await;
    drop(open);
    let before = up.registry_requests();

    let mirror = MirrorSetup::new(&up.url)
        .storage_dir(storage.path())
        .extra_yaml(
            "access:\n  repositories:\n    allow: ['library/*']\n    deny: ['library/secret*']\n",
        )
        .start()
        .await;
    for path in [
        "/v2/private/secret/manifests/1.0".to_owned(),
        format!("/v2/private/secret/blobs/{}", secret.blobs[1]),
        "/v2/private/secret/tags/list".to_owned(),
        "/v2/library/secretive/manifests/1".to_owned(),
        "/v2/secretive/manifests/1".to_owned(),
    ] {
        let (status, _, code, message) = refusal(mirror.get(&path).await).await;
        assert_eq!((status, code.as_str()), (403, "DENIED"), "{path}");
        assert!(message.contains("access.repositories"), "{message}");
    }
    assert_eq!(
        up.registry_requests(),
        before,
        "denied requests never reach upstream"
    );

    let pulled = mirror.pull("alpine", "3.20").await;
    assert_eq!(
        pulled[0].0, alpine.digest,
        "a short name is an official image"
    );
    let catalog: Value = mirror.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["library/alpine"])
    );
}

#[test]
fn stored_credentials_open_to_everyone_get_a_loud_warning() {
    let warnings = |extra: &str, credentials: bool| {
        let creds = if credentials {
            format!("  username: {USER}\n  password: {PASSWORD}\n")
        } else {
            String::new()
        };
        let yaml = format!("proxy:\n  remoteurl: https://r.example\n{creds}{extra}");
        cistern::config::Config::from_yaml(&yaml, Vec::new())
            .unwrap()
            .warnings
            .into_iter()
            .filter(|w| w.contains("OPEN TO EVERY CLIENT"))
            .collect::<Vec<_>>()
    };
    let open = warnings("", true);
    assert_eq!(open.len(), 1);
    assert!(
        open[0].contains(USER) && !open[0].contains(PASSWORD),
        "{}",
        open[0]
    );
    assert!(open[0].contains("auth.htpasswd") && open[0].contains("access.sources"));
    assert!(
        warnings("", false).is_empty(),
        "no credentials, nothing to protect"
    );
    assert!(warnings("auth: {htpasswd: {realm: r, path: /p}}\n", true).is_empty());
    assert!(warnings("access: {sources: [10.0.0.0/8]}\n", true).is_empty());
    assert!(warnings("access: {repositories: {allow: ['library/*']}}\n", true).is_empty());
}

#[tokio::test]
async fn bad_access_settings_stop_start_up_naming_the_key() {
    for (yaml, key) in [
        ("access: {sources: [10.0.0.0/33]}", "access.sources"),
        (
            "access: {repositories: {allow: ['a/[b']}}",
            "access.repositories.allow",
        ),
        (
            "access: {repositories: {deny: ['{x']}}",
            "access.repositories.deny",
        ),
        ("auth: {htpasswd: {realm: r}}", "auth.htpasswd.path"),
    ] {
        let error = cistern::config::Config::from_yaml(yaml, Vec::new()).unwrap_err();
        assert!(error.to_string().contains(key), "{yaml}: {error}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, "ci:$apr1$salt$hash\n").unwrap();
    let yaml = format!(
        "storage: {{inmemory: {{}}}}\nauth: {{htpasswd: {{realm: r, path: {}}}}}\n",
        path.display()
    );
    let error = start_error(&yaml).await;
    assert!(
        error.contains("auth.htpasswd.path") && error.contains("line 1"),
        "{error}"
    );
    assert!(!error.contains("$apr1$salt$hash"), "{error}");
}
