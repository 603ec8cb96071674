//! The admin actions on the debug listener: who may use them (only the bearer of
//! `admin.token`; nobody when none is configured), a refresh that sees a moved tag at once, and
//! purges that delete what they name and nothing another image still uses, in any registry,
//! while hostile names delete nothing and the token never reaches the log.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::common::binary::Binary;
use crate::common::*;

const TOKEN: &str = "admin-token-0123456789abcdef";

/// An image whose layers are small blobs made from `layers` (equal seeds, equal layers, in any
/// repository): returns (manifest digest, config and layer digests).
fn image(up: &FakeUpstream, repo: &str, tag: &str, layers: &[&str]) -> (String, Vec<String>) {
    let config = up.add_blob(
        repo,
        format!(r#"{{"os":"linux","image":"{repo}:{tag}"}}"#).as_bytes(),
    );
    let mut blobs = vec![config.clone()];
    let mut descriptors = Vec::new();
    for seed in layers {
        let digest = up.add_blob(repo, &content(seed, 5000));
        descriptors.push(
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                "digest": digest, "size": 5000}),
        );
        blobs.push(digest);
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 0},
        "layers": descriptors});
    let digest = up.add_manifest(
        repo,
        Some(tag),
        OCI_MANIFEST,
        &serde_json::to_vec_pretty(&manifest).unwrap(),
    );
    (digest, blobs)
}

fn with_token(setup: MirrorSetup<'_>) -> MirrorSetup<'_> {
    setup.extra_yaml(&format!("admin:\n  token: {TOKEN}\n"))
}

/// Content digests in the store.
fn stored_content(mirror: &Mirror) -> BTreeSet<String> {
    mirror
        .stored_files()
        .into_iter()
        .filter_map(|file| {
            let hex = file.strip_prefix("blobs/sha256/")?.split('/').nth(1)?;
            Some(format!("sha256:{hex}"))
        })
        .collect()
}

async fn admin(
    mirror: &Mirror,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = mirror
        .http
        .request(method, format!("{}{path}", mirror.debug_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// A purge with the right token; retried while the store's index is still being built (503).
async fn purge(mirror: &Mirror, path: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = admin(
            mirror,
            reqwest::Method::DELETE,
            &format!("/api/admin/repositories/{path}"),
            Some(TOKEN),
        )
        .await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != 503 || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request sent byte for byte as written (an HTTP client would resolve `..` and `%2e%2e`
/// before sending), with the right token: (status, JSON body).
async fn raw_request(mirror: &Mirror, method: &str, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = mirror.debug_url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn digests(pulled: &[(String, bytes::Bytes)]) -> BTreeSet<String> {
    pulled.iter().map(|(digest, _)| digest.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_every_admin_action_is_refused_saying_how_to_enable_them() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).start().await;
    mirror.pull("library/alpine", "latest").await;
    let before = mirror.stored_files();
    for (method, path) in [
        (
            reqwest::Method::POST,
            "/api/admin/refresh?repository=alpine&tag=latest",
        ),
        (
            reqwest::Method::DELETE,
            "/api/admin/repositories/library/alpine",
        ),
    ] {
        for token in [None, Some(TOKEN)] {
            let (status, code, message) =
                error_of(admin(&mirror, method.clone(), path, token).await).await;
            assert_eq!((status, code.as_str()), (403, "DENIED"), "{path}");
            assert!(
                message.contains("admin.token") && message.contains("REGISTRY_ADMIN_TOKEN"),
                "{message}"
            );
        }
    }
    assert_eq!(mirror.stored_files(), before, "nothing deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_is_refused_and_deletes_nothing() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    // The token from the environment, as a container would get it.
    let mirror = MirrorSetup::new(&up.url)
        .env("REGISTRY_ADMIN_TOKEN", TOKEN)
        .start()
        .await;
    let first = mirror.pull("library/alpine", "latest").await;
    let before = mirror.stored_files();
    let path = "/api/admin/repositories/library/alpine";
    for token in [None, Some("admin-token-0123456789abcdeX"), Some("")] {
        let response = admin(&mirror, reqwest::Method::DELETE, path, token).await;
        assert_eq!(
            header(&response, "www-authenticate"),
            "Bearer realm=\"cistern admin\""
        );
        let (status, code, message) = error_of(response).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
        assert!(!message.contains(TOKEN), "{message}");
    }
    let basic = mirror
        .http
        .delete(format!("{}{path}", mirror.debug_url))
        .basic_auth("admin", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401, "only a bearer token will do");
    assert_eq!(mirror.stored_files(), before, "nothing deleted");
    let requests = up.registry_requests();
    assert_eq!(mirror.pull("library/alpine", "latest").await, first);
    assert_eq!(
        up.registry_requests(),
        requests,
        "still served from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_fetches_a_moved_tag_at_once_whatever_its_ttl() {
    let up = FakeUpstream::start().await;
    let (v1, _) = image(&up, "library/app", "stable", &["base", "v1"]);
    let mirror = with_token(MirrorSetup::new(&up.url).tag_ttl("1h"))
        .start()
        .await;
    mirror.pull("library/app", "stable").await;
    let (v2, v2_blobs) = image(&up, "library/app", "stable", &["base", "v2"]);
    let response = mirror.get_manifest("library/app", "stable").await;
    assert_eq!(
        header(&response, "docker-content-digest"),
        v1,
        "within its TTL"
    );

    let (heads, gets) = (
        up.count(http::Method::HEAD, "/manifests/"),
        up.count(http::Method::GET, "/manifests/"),
    );
    let response = admin(
        &mirror,
        reqwest::Method::POST,
        "/api/admin/refresh?repository=app&tag=stable",
        Some(TOKEN),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["repository"], "library/app");
    assert_eq!(body["digest"], v2);
    assert_eq!(body["previous"], v1);
    assert_eq!(body["changed"], true);
    assert_eq!(
        up.count(http::Method::HEAD, "/manifests/stable"),
        1,
        "one HEAD for the tag"
    );
    assert_eq!(up.count(http::Method::HEAD, "/manifests/"), heads + 1);
    assert_eq!(
        up.count(http::Method::GET, "/manifests/"),
        gets + 1,
        "one GET, for the new manifest"
    );

    // The next pull gets the new image; its manifest costs upstream nothing more.
    let pulled = mirror.pull("library/app", "stable").await;
    let expected: BTreeSet<String> = std::iter::once(v2.clone()).chain(v2_blobs).collect();
    assert_eq!(digests(&pulled), expected);
    assert_eq!(up.count(http::Method::GET, "/manifests/"), gets + 1);
    assert_eq!(up.count(http::Method::HEAD, "/manifests/"), heads + 1);

    // Unchanged now; an unknown tag is a 404.
    let body: Value = admin(
        &mirror,
        reqwest::Method::POST,
        "/api/admin/refresh?repository=library/app&tag=stable",
        Some(TOKEN),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["changed"], false);
    let (status, code, _) = error_of(
        admin(
            &mirror,
            reqwest::Method::POST,
            "/api/admin/refresh?repository=library/app&tag=nope",
            Some(TOKEN),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_an_image_keeps_the_base_layer_another_kept_image_uses() {
    let up = FakeUpstream::start().await;
    let (a, a_blobs) = image(&up, "library/a", "1", &["shared-base", "a-top"]);
    let (b, b_blobs) = image(&up, "library/b", "1", &["shared-base", "b-top"]);
    let base = a_blobs[1].clone();
    assert_eq!(base, b_blobs[1]);
    let mirror = with_token(MirrorSetup::new(&up.url)).start().await;
    let a_first = mirror.pull("library/a", "1").await;
    let b_first = mirror.pull("library/b", "1").await;

    let (status, body) = purge(&mirror, "library/a/tags/1").await;
    assert_eq!(status, 200, "{body}");
    let deleted: BTreeSet<String> = body["deleted"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["digest"].as_str().unwrap().to_owned())
        .collect();
    let a_own: BTreeSet<String> = [a.clone(), a_blobs[0].clone(), a_blobs[2].clone()].into();
    assert_eq!(deleted, a_own);
    assert_eq!(body["deleted"]["tags"], json!(["1"]));
    assert_eq!(
        body["kept"],
        json!([{"digest": base, "reasons": ["used by library/b:1"]}])
    );
    let b_all: BTreeSet<String> = std::iter::once(b.clone()).chain(b_blobs).collect();
    assert_eq!(stored_content(&mirror), b_all, "exactly library/b:1 stays");

    // The kept image: byte for byte, from the cache alone.
    let requests = up.registry_requests();
    assert_eq!(mirror.pull("library/b", "1").await, b_first);
    assert_eq!(up.registry_requests(), requests);
    // The purged one is fetched again.
    assert_eq!(mirror.pull("library/a", "1").await, a_first);
    assert!(up.count(http::Method::GET, "/v2/library/a/manifests/1") >= 2);
    assert!(up.registry_requests() > requests);

    let (status, _) = purge(&mirror, "library/a/tags/nope").await;
    assert_eq!(status, 404);
    let (status, _) = purge(&mirror, "library/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_an_index_by_digest_takes_its_child_manifests() {
    let up = FakeUpstream::start().await;
    let (index, platforms) = add_multi_arch(&up, "library/multi", "1");
    let mirror = with_token(MirrorSetup::new(&up.url)).start().await;
    let pulled = mirror.pull("library/multi", "1").await;
    assert!(digests(&pulled).contains(&platforms[1].digest));
    assert!(!stored_content(&mirror).is_empty());

    let (status, body) = purge(
        &mirror,
        &format!("library/multi/manifests/{}", index.digest),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["deleted"]["tags"],
        json!(["1"]),
        "the tag pointing to it goes too"
    );
    assert!(
        stored_content(&mirror).is_empty(),
        "{:?}",
        stored_content(&mirror)
    );
    assert_eq!(mirror.pull("library/multi", "1").await, pulled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_repository_of_another_registry_leaves_the_same_name_on_docker_hub() {
    let hub = FakeUpstream::start().await;
    let ghcr = FakeUpstream::start().await;
    ghcr.set_private_prefix(None);
    let (_, hub_blobs) = image(&hub, "team/app", "1", &["hub-base", "hub-top"]);
    let (ghcr_manifest, ghcr_blobs) = image(&ghcr, "team/app", "1", &["hub-base", "ghcr-top"]);
    let mirror = with_token(MirrorSetup::new(&hub.url).registry("ghcr.io", &ghcr.url, &[]))
        .start()
        .await;
    let hub_first = mirror.pull("team/app", "1").await;
    let ghcr_first = mirror.pull("ghcr.io/team/app", "1").await;
    let hub_content = digests(&hub_first);

    let (status, body) = purge(&mirror, "ghcr.io/team/app").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["repository"], "ghcr.io/team/app");
    assert_eq!(
        stored_content(&mirror),
        hub_content,
        "Docker Hub's team/app stays whole"
    );
    // The base layer, and the config (same bytes on both registries), stay for Docker Hub's.
    let mut kept: Vec<Value> = body["kept"].as_array().unwrap().clone();
    kept.sort_by_key(|k| k["digest"].as_str().unwrap().to_owned());
    let mut shared = [hub_blobs[0].clone(), hub_blobs[1].clone()];
    shared.sort();
    let expected: Vec<Value> = shared
        .iter()
        .map(|digest| json!({"digest": digest, "reasons": ["used by team/app:1"]}))
        .collect();
    assert_eq!(kept, expected);
    assert!(!mirror.has_content(&ghcr_manifest) && !mirror.has_content(&ghcr_blobs[2]));
    assert!(!mirror
        .storage
        .join("repositories/ghcr.io/team/app/_tags/1")
        .exists());

    let requests = hub.registry_requests();
    assert_eq!(mirror.pull("team/app", "1").await, hub_first);
    assert_eq!(
        hub.registry_requests(),
        requests,
        "not a request to Docker Hub"
    );
    let ghcr_requests = ghcr.registry_requests();
    assert_eq!(mirror.pull("ghcr.io/team/app", "1").await, ghcr_first);
    assert!(ghcr.registry_requests() > ghcr_requests, "fetched again");

    // A registry this mirror does not serve is unknown, not another registry's name.
    let (status, _) = purge(&mirror, "quay.io/team/app").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_digests_get_400_and_delete_nothing() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let mirror = with_token(MirrorSetup::new(&up.url)).start().await;
    mirror.pull("library/alpine", "latest").await;
    let before = mirror.stored_files();
    let requests = up.registry_requests();
    let long = "a".repeat(1000);
    for path in [
        "..".to_owned(),
        "%2e%2e".to_owned(),
        "library/../../etc".to_owned(),
        "library/%2e%2e/%2e%2e/etc".to_owned(),
        "library%2F..%2F..%2Falpine".to_owned(),
        "library/alpine/tags/..".to_owned(),
        "library/alpine/tags/-bad".to_owned(),
        "library/alpine/manifests/sha256:zz".to_owned(),
        "library/alpine/manifests/../../../blobs".to_owned(),
        format!("library/alpine/manifests/sha256:{}", "0".repeat(63)),
        "Library/Alpine".to_owned(),
        format!("library/{long}"),
        format!("library/alpine/tags/{long}"),
    ] {
        let (status, body) = raw_request(
            &mirror,
            "DELETE",
            &format!("/api/admin/repositories/{path}"),
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        let code = body["errors"][0]["code"].as_str().unwrap();
        assert!(
            ["NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID"].contains(&code),
            "{path}: {code}"
        );
    }
    for query in [
        "repository=..&tag=latest".to_owned(),
        "repository=alpine&tag=..".to_owned(),
        "repository=alpine".to_owned(),
        "tag=latest".to_owned(),
        format!("repository={long}&tag=latest"),
    ] {
        let (status, body) =
            raw_request(&mirror, "POST", &format!("/api/admin/refresh?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    assert_eq!(mirror.stored_files(), before, "nothing deleted");
    assert_eq!(up.registry_requests(), requests, "nothing asked upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_streaming_a_blob_being_purged_gets_every_byte() {
    let up = FakeUpstream::start().await;
    let image = add_alpine(&up);
    let mirror = with_token(MirrorSetup::new(&up.url)).start().await;
    mirror.pull("library/alpine", "latest").await;
    let large = &image.blobs[2];
    let mut response = mirror
        .get(&format!("/v2/library/alpine/blobs/{large}"))
        .await;
    assert_eq!(response.status(), 200);
    let mut hasher = Sha256::new();
    let first = response.chunk().await.unwrap().unwrap();
    hasher.update(&first);

    let (status, body) = purge(&mirror, "library/alpine").await;
    assert_eq!(status, 200, "{body}");
    assert!(!mirror.has_content(large), "deleted while being read");
    while let Some(chunk) = response.chunk().await.unwrap() {
        hasher.update(&chunk);
    }
    assert_eq!(format!("sha256:{:x}", hasher.finalize()), *large);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_never_reaches_the_log() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: debug\n  formatter: json\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: {}\n  username: {USER}\n  password: {PASSWORD}\nadmin:\n  token: {TOKEN}\n",
            dir.path().join("storage").display(),
            up.url
        ),
    )
    .unwrap();
    let cistern = Binary::start(&config).await;
    let debug = cistern.debug_url.clone().unwrap();
    let http = reqwest::Client::new();
    http.get(format!(
        "{}/v2/library/alpine/manifests/latest",
        cistern.url
    ))
    .header("accept", DOCKER_ACCEPT)
    .send()
    .await
    .unwrap();
    let wrong = "wrong-token-0123456789abcdef";
    let refused = http
        .delete(format!("{debug}/api/admin/repositories/library/alpine"))
        .bearer_auth(wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let purged = http
            .delete(format!("{debug}/api/admin/repositories/library/alpine"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = purged.status();
        let text = purged.text().await.unwrap();
        assert!(!text.contains(TOKEN));
        if status == 200 {
            break;
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "{status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cistern.log_text().contains("admin: purged") {
        assert!(Instant::now() < deadline, "{}", cistern.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = cistern.log_text();
    assert!(log.contains("wrong bearer token"), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
    assert!(!log.contains(wrong), "{log}");
}
