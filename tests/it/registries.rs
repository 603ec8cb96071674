//! Several registries through one mirror (`registries:`): each FakeUpstream below plays a
//! registry host (ghcr.io, quay.io) and holds DIFFERENT images under the SAME repository names as
//! the default upstream (Docker Hub's role), so any confusion between registries shows as wrong
//! bytes, a wrong upstream request or a wrong status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use http::Method;
use serde_json::{json, Value};

use crate::common::binary::Binary;
use crate::common::*;

const QUAY_USER: &str = "quay-robot";
const QUAY_PASSWORD: &str = "quay-robot-s3cret";

/// Bytes of a base layer every registry's image shares: stored once, served through each.
const BASE_LAYER: &[u8] = b"a base layer shared by images on every registry (debian slim, say)";

/// The default upstream (Docker Hub's role) and two registries, `ghcr.io` (anonymous tokens)
/// and `quay.io` (tokens need the mirror's quay credentials), each with its own token realm.
struct Fleet {
    hub: FakeUpstream,
    ghcr: FakeUpstream,
    quay: FakeUpstream,
}

impl Fleet {
    async fn start() -> Fleet {
        let hub = FakeUpstream::start().await;
        let ghcr = FakeUpstream::start().await;
        let quay = FakeUpstream::start().await;
        // ghcr hands out tokens to anyone and knows no credentials of ours: a Basic header
        // sent there would be somebody else's password, and it refuses it.
        ghcr.set_private_prefix(None);
        ghcr.set_credentials("nobody", "nothing-is-configured-for-ghcr");
        // On quay, owner/ repositories need quay's own robot credentials.
        quay.set_private_prefix(Some("owner/"));
        quay.set_credentials(QUAY_USER, QUAY_PASSWORD);
        Fleet { hub, ghcr, quay }
    }

    /// The mirror's setup: proxy = hub (with `USER`/`PASSWORD`), plus ghcr.io and quay.io.
    fn setup(&self) -> MirrorSetup<'_> {
        MirrorSetup::new(&self.hub.url)
            .registry("ghcr.io", &self.ghcr.url, &[])
            .registry(
                "quay.io",
                &self.quay.url,
                &[
                    &format!("username: {QUAY_USER}"),
                    &format!("password: {QUAY_PASSWORD}"),
                ],
            )
    }

    fn all(&self) -> [(&'static str, &FakeUpstream); 3] {
        [
            ("docker.io", &self.hub),
            ("ghcr.io", &self.ghcr),
            ("quay.io", &self.quay),
        ]
    }

    /// Every request any of the three received (registry and token service).
    fn requests(&self) -> usize {
        self.all().iter().map(|(_, up)| up.seen().len()).sum()
    }
}

/// A tiny image (a config, its own layer, `BASE_LAYER`) under `repo:tag`; blobs are
/// [config, own layer, base].
fn add_small_image(
    up: &FakeUpstream,
    repo: &str,
    tag: Option<&str>,
    media_type: &str,
    seed: &str,
) -> Image {
    let config = up.add_blob(
        repo,
        format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).as_bytes(),
    );
    let own = up.add_blob(repo, &content(&format!("{seed}-layer"), 300));
    let base = up.add_blob(repo, BASE_LAYER);
    let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
        (
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": config, "size": 0},
        "layers": [
            {"mediaType": layer_type, "digest": base, "size": BASE_LAYER.len()},
            {"mediaType": layer_type, "digest": own, "size": 300},
        ],
    });
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    let digest = up.add_manifest(repo, tag, media_type, &bytes);
    Image {
        digest,
        blobs: vec![config, own, base],
    }
}

/// The digests a pull of `image` receives, in `pull`'s order (manifest, config, layers).
fn pulled_digests(image: &Image) -> Vec<String> {
    vec![
        image.digest.clone(),
        image.blobs[0].clone(),
        image.blobs[2].clone(),
        image.blobs[1].clone(),
    ]
}

fn digests(pulled: &[(String, bytes::Bytes)]) -> Vec<String> {
    pulled.iter().map(|(d, _)| d.clone()).collect()
}

/// The bytes `up` holds for a manifest of `repo`.
fn upstream_manifest(up: &FakeUpstream, repo: &str, digest: &str) -> bytes::Bytes {
    up.state.repos.lock().unwrap()[repo].manifests[digest]
        .1
        .clone()
}

/// Requests `up` received for `fragment` with GET or HEAD.
fn asked(up: &FakeUpstream, fragment: &str) -> usize {
    up.count(Method::GET, fragment) + up.count(Method::HEAD, fragment)
}

fn oci_namespace(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("oci-namespace")
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn tags_of(mirror: &Mirror, path: &str) -> Value {
    let response = mirror.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    let body: Value = response.json().await.unwrap();
    body["tags"].clone()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Every registry request `up` received after its `/v2/` probe carried one of its own tokens.
fn only_own_tokens(name: &str, up: &FakeUpstream) {
    let own = format!("Bearer {}", up.token_prefix());
    for seen in up.seen() {
        if seen.path.starts_with("/token") || seen.path == "/v2/" {
            continue;
        }
        if let Some(authorization) = &seen.authorization {
            assert!(
                authorization.starts_with(&own),
                "{name} got a token it did not issue: {authorization} on {} {}",
                seen.method,
                seen.path
            );
        }
    }
}

// 1. No confusion ------------------------------------------------------------------------------

#[tokio::test]
async fn the_same_name_on_three_registries_never_crosses() {
    let fleet = Fleet::start().await;
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    let quay_app = add_small_image(
        &fleet.quay,
        "owner/app",
        Some("1.0"),
        DOCKER_MANIFEST,
        "quay",
    );
    // The same base layer, stored upstream by each registry.
    assert_eq!(hub_app.blobs[2], ghcr_app.blobs[2]);
    assert_eq!(hub_app.blobs[2], quay_app.blobs[2]);
    let base = hub_app.blobs[2].clone();
    let mirror = fleet.setup().start().await;

    // Cold, one form each.
    let hub_pulled = mirror.pull("owner/app", "1.0").await;
    let ghcr_pulled = mirror.pull_ns("ghcr.io", "owner/app", "1.0").await;
    let quay_pulled = mirror.pull("quay.io/owner/app", "1.0").await;
    assert_eq!(digests(&hub_pulled), pulled_digests(&hub_app));
    assert_eq!(digests(&ghcr_pulled), pulled_digests(&ghcr_app));
    assert_eq!(digests(&quay_pulled), pulled_digests(&quay_app));
    assert_eq!(
        ghcr_pulled[0].1,
        upstream_manifest(&fleet.ghcr, "owner/app", &ghcr_app.digest),
        "ghcr's manifest, byte for byte"
    );
    assert_eq!(
        quay_pulled[0].1,
        upstream_manifest(&fleet.quay, "owner/app", &quay_app.digest)
    );
    for (name, up) in fleet.all() {
        assert_eq!(
            up.count(Method::GET, "/v2/owner/app/manifests/1.0"),
            1,
            "{name}: one tag GET"
        );
        assert_eq!(
            up.count(Method::GET, "/manifests/"),
            1,
            "{name}: no other manifest GET: {:?}",
            up.seen()
        );
        only_own_tokens(name, up);
    }
    for (name, up, image) in [
        ("docker.io", &fleet.hub, &hub_app),
        ("ghcr.io", &fleet.ghcr, &ghcr_app),
        ("quay.io", &fleet.quay, &quay_app),
    ] {
        for own in &image.blobs[..2] {
            assert_eq!(up.count(Method::GET, own), 1, "{name}: {own} fetched once");
        }
        // The base layer was fetched by the first registry only; the others confirmed that
        // they hold it (one request each), and it is stored once.
        assert_eq!(asked(up, &base), 1, "{name}: {:?}", up.seen());
    }
    let base_gets: usize = fleet
        .all()
        .iter()
        .map(|(_, up)| up.count(Method::GET, &base))
        .sum();
    assert_eq!(base_gets, 1, "the shared base layer is downloaded once");
    let hex = base.strip_prefix("sha256:").unwrap();
    let copies: Vec<String> = mirror
        .stored_files()
        .into_iter()
        .filter(|f| f.starts_with("blobs/") && f.ends_with(hex))
        .collect();
    assert_eq!(copies, [format!("blobs/sha256/{}/{hex}", &hex[..2])]);
    // The default upstream's repositories keep today's layout; others carry their host.
    let files = mirror.stored_files();
    assert!(
        files.contains(&"repositories/owner/app/_tags/1.0".to_owned()),
        "{files:#?}"
    );
    assert!(
        files.contains(&"repositories/ghcr.io/owner/app/_tags/1.0".to_owned()),
        "{files:#?}"
    );

    // Warm, every other form: each answer is its own registry's, and nothing is asked.
    let before = fleet.requests();
    for (ns, prefix, image) in [
        ("docker.io", "docker.io/", &hub_app),
        ("ghcr.io", "ghcr.io/", &ghcr_app),
        ("quay.io", "quay.io/", &quay_app),
    ] {
        let by_ns = mirror.pull_ns(ns, "owner/app", "1.0").await;
        let by_prefix = mirror.pull(&format!("{prefix}owner/app"), "1.0").await;
        assert_eq!(digests(&by_ns), pulled_digests(image), "?ns={ns}");
        assert_eq!(by_ns, by_prefix, "{prefix}");
        for reference in [image.digest.as_str(), "1.0"] {
            let response = mirror
                .manifest_request(
                    Method::HEAD,
                    &format!("/v2/owner/app/manifests/{reference}?ns={ns}"),
                )
                .await;
            assert_eq!(response.status(), 200);
            assert_eq!(header(&response, "docker-content-digest"), image.digest);
        }
    }
    assert_eq!(
        fleet.requests(),
        before,
        "warm pulls of every registry, any form, ask upstream nothing"
    );
}

#[tokio::test]
async fn a_manifest_or_blob_of_one_registry_is_not_served_through_another() {
    let fleet = Fleet::start().await;
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet.setup().start().await;
    mirror.pull("owner/app", "1.0").await;
    mirror.pull("ghcr.io/owner/app", "1.0").await;
    let ghcr_layer = &ghcr_app.blobs[1];
    assert!(mirror.has_content(ghcr_layer));

    // ghcr's own layer, cached via ghcr, asked for through quay's and the hub's owner/app:
    // their upstreams do not hold it, so the client gets 404 BLOB_UNKNOWN.
    for (path, up) in [
        (
            format!("/v2/quay.io/owner/app/blobs/{ghcr_layer}"),
            &fleet.quay,
        ),
        (
            format!("/v2/owner/app/blobs/{ghcr_layer}?ns=quay.io"),
            &fleet.quay,
        ),
        (format!("/v2/owner/app/blobs/{ghcr_layer}"), &fleet.hub),
        (
            format!("/v2/docker.io/owner/app/blobs/{ghcr_layer}"),
            &fleet.hub,
        ),
    ] {
        let (status, code, _) = error_of(mirror.get(&path).await).await;
        assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"), "{path}");
        assert_eq!(mirror.head(&path).await.status(), 404, "HEAD {path}");
        assert!(asked(up, ghcr_layer) >= 1, "{path}: upstream was asked");
    }

    // A manifest by digest likewise: the hub's digest is not ghcr's, and the other way round.
    for (path, code) in [
        (
            format!("/v2/ghcr.io/owner/app/manifests/{}", hub_app.digest),
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/owner/app/manifests/{}?ns=quay.io", ghcr_app.digest),
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/owner/app/manifests/{}", ghcr_app.digest),
            "MANIFEST_UNKNOWN",
        ),
    ] {
        let (status, got, _) = error_of(mirror.get_manifest_path(&path).await).await;
        assert_eq!((status, got.as_str()), (404, code), "{path}");
    }
    assert_eq!(
        asked(&fleet.ghcr, &format!("/manifests/{}", hub_app.digest)),
        1,
        "ghcr was asked for the hub's digest once: {:?}",
        fleet.ghcr.seen()
    );
    // Its own content still works through its own name.
    let response = mirror
        .get(&format!("/v2/ghcr.io/owner/app/blobs/{ghcr_layer}"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(sha256(&response.bytes().await.unwrap()), *ghcr_layer);
}

#[tokio::test]
async fn tags_and_not_found_answers_belong_to_one_registry() {
    let fleet = Fleet::start().await;
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    add_small_image(
        &fleet.hub,
        "owner/app",
        Some("hub-only"),
        OCI_MANIFEST,
        "hub-2",
    );
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    let ghcr_2 = add_small_image(
        &fleet.ghcr,
        "owner/app",
        Some("2.0"),
        OCI_MANIFEST,
        "ghcr-2",
    );
    let quay_only = add_small_image(&fleet.quay, "owner/quay-only", Some("1"), OCI_MANIFEST, "q");
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet.setup().start().await;

    // Tag 2.0 exists on ghcr only: quay and the hub say 404 first, ghcr still answers.
    for path in [
        "/v2/quay.io/owner/app/manifests/2.0",
        "/v2/owner/app/manifests/2.0",
    ] {
        let (status, code, _) = error_of(mirror.get_manifest_path(path).await).await;
        assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"), "{path}");
    }
    for path in [
        "/v2/owner/app/manifests/2.0?ns=ghcr.io",
        "/v2/ghcr.io/owner/app/manifests/2.0",
    ] {
        let response = mirror.get_manifest_path(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "docker-content-digest"), ghcr_2.digest);
    }
    assert_eq!(fleet.ghcr.count(Method::GET, "/manifests/2.0"), 1);
    // And the other way round: a name only quay holds, asked on the hub and ghcr first.
    for path in [
        "/v2/owner/quay-only/manifests/1",
        "/v2/ghcr.io/owner/quay-only/manifests/1",
    ] {
        assert_eq!(mirror.get_manifest_path(path).await.status(), 404, "{path}");
    }
    let response = mirror
        .get_manifest_path("/v2/owner/quay-only/manifests/1?ns=quay.io")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "docker-content-digest"), quay_only.digest);
    // The not-found answers stay where they were given.
    let (status, code, _) = error_of(
        mirror
            .get_manifest_path("/v2/quay.io/owner/app/manifests/2.0")
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"));

    // The tag 1.0 of each registry is its own, and so are the tag lists.
    for (ns, digest) in [
        ("docker.io", &hub_app.digest),
        ("ghcr.io", &ghcr_app.digest),
    ] {
        let response = mirror
            .get_manifest_path(&format!("/v2/{ns}/owner/app/manifests/1.0"))
            .await;
        assert_eq!(header(&response, "docker-content-digest"), *digest, "{ns}");
    }
    assert_eq!(
        tags_of(&mirror, "/v2/owner/app/tags/list").await,
        json!(["1.0", "hub-only"])
    );
    assert_eq!(
        tags_of(&mirror, "/v2/owner/app/tags/list?ns=ghcr.io").await,
        json!(["1.0", "2.0"])
    );
    assert_eq!(
        tags_of(&mirror, "/v2/ghcr.io/owner/app/tags/list").await,
        json!(["1.0", "2.0"])
    );
    assert_eq!(
        tags_of(&mirror, "/v2/quay.io/owner/app/tags/list").await,
        json!(["1.0"])
    );
}

// 2. Selection ---------------------------------------------------------------------------------

#[tokio::test]
async fn the_registry_is_chosen_by_ns_then_path_prefix_then_the_default() {
    let fleet = Fleet::start().await;
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    let quay_app = add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet.setup().start().await;
    let cases = [
        // No ns, no prefix: the default upstream, and no OCI-Namespace (nothing was named).
        ("/v2/owner/app/manifests/1.0", &hub_app, None),
        // ns names the registry.
        (
            "/v2/owner/app/manifests/1.0?ns=ghcr.io",
            &ghcr_app,
            Some("ghcr.io"),
        ),
        (
            "/v2/owner/app/manifests/1.0?ns=quay.io",
            &quay_app,
            Some("quay.io"),
        ),
        (
            "/v2/owner/app/manifests/1.0?ns=docker.io",
            &hub_app,
            Some("docker.io"),
        ),
        // The path prefix names it.
        (
            "/v2/ghcr.io/owner/app/manifests/1.0",
            &ghcr_app,
            Some("ghcr.io"),
        ),
        (
            "/v2/quay.io/owner/app/manifests/1.0",
            &quay_app,
            Some("quay.io"),
        ),
        (
            "/v2/docker.io/owner/app/manifests/1.0",
            &hub_app,
            Some("docker.io"),
        ),
        // Both, agreeing.
        (
            "/v2/ghcr.io/owner/app/manifests/1.0?ns=ghcr.io",
            &ghcr_app,
            Some("ghcr.io"),
        ),
    ];
    for (path, image, namespace) in cases {
        for method in [Method::GET, Method::HEAD] {
            let response = mirror.manifest_request(method.clone(), path).await;
            assert_eq!(response.status(), 200, "{method} {path}");
            assert_eq!(
                header(&response, "docker-content-digest"),
                image.digest,
                "{method} {path}"
            );
            assert_eq!(
                oci_namespace(&response).as_deref(),
                namespace,
                "{method} {path}"
            );
        }
    }
    // Each registry's upstream saw its own name, without the host, once.
    for (name, up) in fleet.all() {
        assert_eq!(
            up.count(Method::GET, "/v2/owner/app/manifests/1.0"),
            1,
            "{name}: {:?}",
            up.seen()
        );
        assert!(
            up.seen().iter().all(|s| !s.path.contains(".io/")),
            "{name} was asked for a name with a host in it: {:?}",
            up.seen()
        );
    }
    // Blobs and tag lists follow the same selection.
    let response = mirror
        .get(&format!(
            "/v2/owner/app/blobs/{}?ns=quay.io",
            quay_app.blobs[1]
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(oci_namespace(&response).as_deref(), Some("quay.io"));
    assert_eq!(sha256(&response.bytes().await.unwrap()), quay_app.blobs[1]);
    let response = mirror.get("/v2/ghcr.io/owner/app/tags/list").await;
    assert_eq!(oci_namespace(&response).as_deref(), Some("ghcr.io"));
}

#[tokio::test]
async fn library_is_added_for_the_default_upstream_only() {
    let fleet = Fleet::start().await;
    let hub_alpine = add_small_image(
        &fleet.hub,
        "library/alpine",
        Some("x"),
        OCI_MANIFEST,
        "hub-alpine",
    );
    // ghcr has a one-segment repository `alpine`, and also a `library/alpine` that must not
    // be what `ghcr.io/alpine` means.
    let ghcr_alpine = add_small_image(
        &fleet.ghcr,
        "alpine",
        Some("x"),
        OCI_MANIFEST,
        "ghcr-alpine",
    );
    add_small_image(
        &fleet.ghcr,
        "library/alpine",
        Some("x"),
        OCI_MANIFEST,
        "ghcr-library",
    );
    let mirror = fleet.setup().start().await;

    for path in [
        "/v2/ghcr.io/alpine/manifests/x",
        "/v2/alpine/manifests/x?ns=ghcr.io",
    ] {
        let response = mirror.get_manifest_path(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            header(&response, "docker-content-digest"),
            ghcr_alpine.digest,
            "{path}"
        );
    }
    assert_eq!(fleet.ghcr.count(Method::GET, "/v2/alpine/manifests/x"), 1);
    assert_eq!(fleet.ghcr.count(Method::GET, "/v2/library/"), 0);
    assert_eq!(fleet.ghcr.count(Method::HEAD, "/v2/library/"), 0);

    for path in [
        "/v2/alpine/manifests/x",
        "/v2/docker.io/alpine/manifests/x",
        "/v2/alpine/manifests/x?ns=docker.io",
    ] {
        let response = mirror.get_manifest_path(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            header(&response, "docker-content-digest"),
            hub_alpine.digest,
            "{path}"
        );
    }
    assert_eq!(
        fleet
            .hub
            .count(Method::GET, "/v2/library/alpine/manifests/x"),
        1
    );
    assert_eq!(fleet.hub.count(Method::GET, "/v2/alpine/"), 0);
}

#[tokio::test]
async fn an_unconfigured_registry_is_not_mirrored_and_costs_no_upstream_request() {
    let fleet = Fleet::start().await;
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    let mirror = fleet.setup().start().await;
    let blob = &hub_app.blobs[1];
    // ghcr's upstream is reachable, but by the host its remoteurl names nobody configured:
    // `ns` is a key into the configuration, never an address to dial.
    let ghcr_address = fleet.ghcr.url.trim_start_matches("http://").to_owned();
    let cases = [
        (
            format!("/v2/owner/app/manifests/1.0?ns={ghcr_address}"),
            ghcr_address.as_str(),
        ),
        (
            format!("/v2/{ghcr_address}/owner/app/manifests/1.0"),
            ghcr_address.as_str(),
        ),
        (
            "/v2/localhost/owner/app/manifests/1.0".to_owned(),
            "localhost",
        ),
        ("/v2/owner/app/manifests/1.0?ns=gcr.io".to_owned(), "gcr.io"),
        (format!("/v2/owner/app/blobs/{blob}?ns=gcr.io"), "gcr.io"),
        ("/v2/owner/app/tags/list?ns=gcr.io".to_owned(), "gcr.io"),
        (
            "/v2/registry.k8s.io/pause/manifests/3.9".to_owned(),
            "registry.k8s.io",
        ),
        (
            format!("/v2/registry.k8s.io/owner/app/blobs/{blob}"),
            "registry.k8s.io",
        ),
        (
            "/v2/public.ecr.aws/owner/app/tags/list".to_owned(),
            "public.ecr.aws",
        ),
        (
            "/v2/localhost:5000/owner/app/manifests/1.0".to_owned(),
            "localhost:5000",
        ),
    ];
    for (path, registry) in &cases {
        for method in [Method::GET, Method::HEAD] {
            let response = mirror
                .http
                .request(method.clone(), format!("{}{path}", mirror.url))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{method} {path}");
            if method == Method::GET {
                let (_, code, message) = error_of(response).await;
                assert_eq!(code, "NAME_UNKNOWN", "{path}");
                assert!(
                    message.contains(registry) && message.contains("not mirrored"),
                    "{path}: {message}"
                );
            }
        }
    }
    assert_eq!(
        fleet.requests(),
        0,
        "nothing was asked of any upstream: {:?} {:?} {:?}",
        fleet.hub.seen(),
        fleet.ghcr.seen(),
        fleet.quay.seen()
    );
}

#[tokio::test]
async fn ns_and_a_path_prefix_naming_different_registries_are_a_bad_request() {
    let fleet = Fleet::start().await;
    add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet.setup().start().await;
    for path in [
        "/v2/ghcr.io/owner/app/manifests/1.0?ns=quay.io",
        "/v2/quay.io/owner/app/manifests/1.0?ns=ghcr.io",
        "/v2/docker.io/owner/app/manifests/1.0?ns=ghcr.io",
        "/v2/ghcr.io/owner/app/manifests/1.0?ns=docker.io",
        "/v2/ghcr.io/owner/app/tags/list?ns=quay.io",
        "/v2/owner/app/manifests/1.0?ns=ghcr.io&ns=quay.io",
        // A Docker Hub name cannot start with a registry host: the two layouts never meet.
        "/v2/docker.io/quay.io/owner/app/manifests/1.0",
        "/v2/quay.io/owner/app/manifests/1.0?ns=docker.io",
    ] {
        let response = mirror.get(path).await;
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (400, "NAME_INVALID"), "{path}");
    }
    assert_eq!(fleet.requests(), 0);
}

// 3. Per-registry auth -------------------------------------------------------------------------

#[tokio::test]
async fn each_registry_gets_only_its_own_credentials_and_its_own_tokens() {
    let fleet = Fleet::start().await;
    // The same repository name, and so the same token scope, on all three; private on the hub
    // (needs USER/PASSWORD) and on quay (needs quay's robot), public on ghcr.
    fleet.hub.set_private_prefix(Some("owner/"));
    let images = [
        add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub"),
        add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr"),
        add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay"),
    ];
    // tagttl 0: every pull revalidates, so tokens are used again and again.
    let mirror = fleet.setup().tag_ttl("0").start().await;
    for _ in 0..3 {
        for ((ns, _), image) in fleet.all().iter().zip(&images) {
            let pulled = mirror.pull_ns(ns, "owner/app", "1.0").await;
            assert_eq!(digests(&pulled), pulled_digests(image), "{ns}");
        }
    }
    let hub_basic = basic(USER, PASSWORD);
    let quay_basic = basic(QUAY_USER, QUAY_PASSWORD);
    for (name, up, expected) in [
        ("docker.io", &fleet.hub, Some(hub_basic.as_str())),
        ("ghcr.io", &fleet.ghcr, None),
        ("quay.io", &fleet.quay, Some(quay_basic.as_str())),
    ] {
        let token_requests = up.token_requests();
        assert_eq!(
            token_requests.len(),
            1,
            "{name}: one token, cached for this registry: {token_requests:?}"
        );
        for seen in &token_requests {
            assert_eq!(
                seen.authorization.as_deref(),
                expected,
                "{name}'s token service got another registry's credentials"
            );
        }
        assert_eq!(up.tokens_issued(), 1, "{name}");
        only_own_tokens(name, up);
        // Revalidation happened (so the token was used after the first pull).
        assert!(up.count(Method::HEAD, "/manifests/1.0") >= 2, "{name}");
    }
}

#[tokio::test]
async fn a_registry_without_credentials_cannot_borrow_the_default_upstreams() {
    let fleet = Fleet::start().await;
    // ghcr's owner/ is private too, but no credentials are configured for ghcr: the mirror
    // must not try the hub's or quay's.
    fleet.ghcr.set_private_prefix(Some("owner/"));
    fleet.ghcr.set_credentials(USER, PASSWORD);
    add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    let mirror = fleet.setup().start().await;
    let response = mirror
        .get_manifest_path("/v2/ghcr.io/owner/app/manifests/1.0")
        .await;
    assert_ne!(response.status(), 200);
    assert!(
        fleet
            .ghcr
            .token_requests()
            .iter()
            .all(|s| s.authorization.is_none()),
        "{:?}",
        fleet.ghcr.token_requests()
    );
    assert_eq!(fleet.ghcr.tokens_issued(), 0);
}

// 4. Catalog and tags --------------------------------------------------------------------------

#[tokio::test]
async fn the_catalog_names_repositories_with_their_registry_and_pages() {
    let fleet = Fleet::start().await;
    add_small_image(
        &fleet.hub,
        "library/alpine",
        Some("3.20"),
        OCI_MANIFEST,
        "alpine",
    );
    add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet.setup().start().await;
    mirror.pull("alpine", "3.20").await;
    mirror.pull_ns("ghcr.io", "owner/app", "1.0").await;
    mirror.pull("quay.io/owner/app", "1.0").await;
    let before = fleet.requests();

    let catalog: Value = mirror.get("/v2/_catalog").await.json().await.unwrap();
    let all = json!(["ghcr.io/owner/app", "library/alpine", "quay.io/owner/app"]);
    assert_eq!(catalog, json!({ "repositories": all }));

    // Page by page, following the Link header.
    let mut path = "/v2/_catalog?n=1".to_owned();
    let mut pages = Vec::new();
    loop {
        let response = mirror.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        let link = response
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap();
        pages.push(body["repositories"].clone());
        let Some(link) = link else { break };
        assert!(link.ends_with(r#">; rel="next""#), "{link}");
        path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
        assert!(pages.len() <= 3, "{pages:?}");
    }
    assert_eq!(
        pages,
        [
            json!(["ghcr.io/owner/app"]),
            json!(["library/alpine"]),
            json!(["quay.io/owner/app"])
        ]
    );
    let rest: Value = mirror
        .get("/v2/_catalog?n=2&last=ghcr.io%2Fowner%2Fapp")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        rest["repositories"],
        json!(["library/alpine", "quay.io/owner/app"])
    );
    assert_eq!(
        fleet.requests(),
        before,
        "the catalog asks upstream nothing"
    );
}

// 5. Access ------------------------------------------------------------------------------------

async fn refused(mirror: &Mirror, path: &str) {
    let response = mirror.get_manifest_path(path).await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 403, "{path} must be refused: {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED", "{path}: {body}");
}

#[tokio::test]
async fn access_patterns_name_the_registry_and_a_bare_pattern_means_the_default() {
    let fleet = Fleet::start().await;
    add_small_image(
        &fleet.hub,
        "library/alpine",
        Some("3.20"),
        OCI_MANIFEST,
        "alpine",
    );
    add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(
        &fleet.ghcr,
        "other/app",
        Some("1.0"),
        OCI_MANIFEST,
        "ghcr-o",
    );
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet
        .setup()
        .extra_yaml("access:\n  repositories:\n    allow: ['ghcr.io/owner/**', alpine]\n")
        .start()
        .await;

    for path in [
        // owner/app without a host is the hub's, not ghcr's.
        "/v2/owner/app/manifests/1.0",
        "/v2/docker.io/owner/app/manifests/1.0",
        "/v2/owner/app/manifests/1.0?ns=quay.io",
        "/v2/quay.io/owner/app/manifests/1.0",
        "/v2/ghcr.io/other/app/manifests/1.0",
        "/v2/other/app/tags/list?ns=ghcr.io",
    ] {
        refused(&mirror, path).await;
    }
    assert_eq!(fleet.requests(), 0, "denied requests never reach upstream");

    let pulled = mirror.pull_ns("ghcr.io", "owner/app", "1.0").await;
    assert_eq!(digests(&pulled), pulled_digests(&ghcr_app));
    mirror.pull("ghcr.io/owner/app", "1.0").await;
    // `alpine` is the default upstream's library/alpine, however it is named.
    mirror.pull("alpine", "3.20").await;
    mirror.pull("docker.io/library/alpine", "3.20").await;
    mirror.pull_ns("docker.io", "library/alpine", "3.20").await;
    assert_eq!(fleet.quay.seen().len(), 0);
}

#[tokio::test]
async fn an_allow_pattern_without_a_host_never_opens_another_registry() {
    // `*/app` is written for the default upstream (any Docker Hub user's `app`); its first
    // `*` must not stand for a registry host, or it would open ghcr.io's `app` too.
    let fleet = Fleet::start().await;
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    add_small_image(&fleet.ghcr, "app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(&fleet.quay, "app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet
        .setup()
        .extra_yaml("access:\n  repositories:\n    allow: ['*/app']\n")
        .start()
        .await;
    for path in [
        "/v2/ghcr.io/app/manifests/1.0",
        "/v2/app/manifests/1.0?ns=quay.io",
    ] {
        refused(&mirror, path).await;
    }
    assert_eq!(fleet.ghcr.seen().len() + fleet.quay.seen().len(), 0);
    let pulled = mirror.pull("owner/app", "1.0").await;
    assert_eq!(digests(&pulled), pulled_digests(&hub_app));
}

#[tokio::test]
async fn a_deny_pattern_without_a_host_leaves_other_registries_alone() {
    let fleet = Fleet::start().await;
    add_small_image(&fleet.hub, "team/secret", Some("1"), OCI_MANIFEST, "h");
    let ghcr_secret = add_small_image(&fleet.ghcr, "secret", Some("1"), OCI_MANIFEST, "s");
    let mirror = fleet
        .setup()
        .extra_yaml("access:\n  repositories:\n    deny: ['*/secret']\n")
        .start()
        .await;
    refused(&mirror, "/v2/team/secret/manifests/1").await;
    assert_eq!(fleet.hub.seen().len(), 0);
    let pulled = mirror.pull("ghcr.io/secret", "1").await;
    assert_eq!(digests(&pulled), pulled_digests(&ghcr_secret));
}

#[tokio::test]
async fn a_whole_registry_can_be_denied() {
    let fleet = Fleet::start().await;
    add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    let quay_app = add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    for pattern in ["'quay.io/**'", "quay.io"] {
        let mirror = fleet
            .setup()
            .extra_yaml(&format!(
                "access:\n  repositories:\n    deny: [{pattern}]\n"
            ))
            .start()
            .await;
        for path in [
            "/v2/quay.io/owner/app/manifests/1.0".to_owned(),
            "/v2/owner/app/manifests/1.0?ns=quay.io".to_owned(),
            format!("/v2/quay.io/owner/app/blobs/{}", quay_app.blobs[1]),
            "/v2/quay.io/owner/app/tags/list".to_owned(),
            "/v2/quay.io/anything/else/manifests/latest".to_owned(),
        ] {
            let (status, code, _) = error_of(mirror.get(&path).await).await;
            assert_eq!(
                (status, code.as_str()),
                (403, "DENIED"),
                "{pattern}: {path}"
            );
        }
        assert_eq!(fleet.quay.seen().len(), 0, "{pattern}: quay never asked");
        let pulled = mirror.pull("ghcr.io/owner/app", "1.0").await;
        assert_eq!(digests(&pulled), pulled_digests(&ghcr_app));
        mirror.pull("owner/app", "1.0").await;
    }
}

#[tokio::test]
async fn a_registry_section_can_allow_and_deny_its_own_repositories() {
    let fleet = Fleet::start().await;
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(
        &fleet.ghcr,
        "owner/secret",
        Some("1.0"),
        OCI_MANIFEST,
        "ghcr-s",
    );
    add_small_image(
        &fleet.ghcr,
        "other/app",
        Some("1.0"),
        OCI_MANIFEST,
        "ghcr-o",
    );
    let hub_secret = add_small_image(
        &fleet.hub,
        "owner/secret",
        Some("1.0"),
        OCI_MANIFEST,
        "hub-s",
    );
    let mirror = MirrorSetup::new(&fleet.hub.url)
        .registry(
            "ghcr.io",
            &fleet.ghcr.url,
            &[
                "repositories:",
                "  allow: ['owner/**']",
                "  deny: [owner/secret]",
            ],
        )
        .start()
        .await;
    for path in [
        "/v2/ghcr.io/owner/secret/manifests/1.0",
        "/v2/owner/secret/manifests/1.0?ns=ghcr.io",
        "/v2/ghcr.io/other/app/manifests/1.0",
    ] {
        refused(&mirror, path).await;
    }
    assert_eq!(fleet.ghcr.seen().len(), 0);
    let pulled = mirror.pull("ghcr.io/owner/app", "1.0").await;
    assert_eq!(digests(&pulled), pulled_digests(&ghcr_app));
    // The section's rules are ghcr's alone: the hub's owner/secret is not touched by them.
    let pulled = mirror.pull("owner/secret", "1.0").await;
    assert_eq!(digests(&pulled), pulled_digests(&hub_secret));
}

#[tokio::test]
async fn the_catalog_hides_what_may_not_be_pulled() {
    let fleet = Fleet::start().await;
    add_small_image(
        &fleet.hub,
        "library/alpine",
        Some("3.20"),
        OCI_MANIFEST,
        "alpine",
    );
    add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(
        &fleet.ghcr,
        "owner/secret",
        Some("1.0"),
        OCI_MANIFEST,
        "ghcr-s",
    );
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let storage = tempfile::tempdir().unwrap();
    // Everything cached first, by a mirror without rules.
    let open = fleet.setup().storage_dir(storage.path()).start().await;
    open.pull("alpine", "3.20").await;
    open.pull("ghcr.io/owner/app", "1.0").await;
    open.pull("ghcr.io/owner/secret", "1.0").await;
    open.pull("quay.io/owner/app", "1.0").await;
    let catalog: Value = open.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        json!([
            "ghcr.io/owner/app",
            "ghcr.io/owner/secret",
            "library/alpine",
            "quay.io/owner/app"
        ])
    );
    drop(open);

    let ruled = MirrorSetup::new(&fleet.hub.url)
        .storage_dir(storage.path())
        .registry(
            "ghcr.io",
            &fleet.ghcr.url,
            &["repositories: {deny: [owner/secret]}"],
        )
        .registry("quay.io", &fleet.quay.url, &[])
        .extra_yaml("access:\n  repositories:\n    deny: ['quay.io/**']\n")
        .start()
        .await;
    let catalog: Value = ruled.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        json!(["ghcr.io/owner/app", "library/alpine"])
    );
}

// 6. Configuration -----------------------------------------------------------------------------

#[test]
fn bad_registry_sections_stop_start_up_naming_the_key() {
    let cases = [
        ("registries: {ghcr: {}}", "registries.ghcr"),
        (
            "registries: {'https://ghcr.io': {}}",
            "registries.https://ghcr.io",
        ),
        (
            "registries: {'ghcr.io/owner': {}}",
            "registries.ghcr.io/owner",
        ),
        (
            "registries: {ghcr.io: {remoteurl: 'not a url'}}",
            "registries.ghcr.io.remoteurl",
        ),
        (
            "registries: {ghcr.io: {remoteurl: 'ftp://ghcr.io'}}",
            "registries.ghcr.io.remoteurl",
        ),
        (
            "registries: {quay.io: {username: me}}",
            "registries.quay.io.password",
        ),
        (
            "registries: {quay.io: {password: token}}",
            "registries.quay.io.username",
        ),
        ("registries: {ghcr.io: {ttl: 1h}}", "registries.ghcr.io.ttl"),
        (
            "registries: {ghcr.io: {tagttl: soon}}",
            "registries.ghcr.io.tagttl",
        ),
        (
            "registries: {ghcr.io: {tagtll: 1h}}",
            "registries.ghcr.io.tagtll",
        ),
        (
            "registries: {ghcr.io: {repositories: {allow: ['a/[b']}}}",
            "registries.ghcr.io.repositories.allow",
        ),
    ];
    for (yaml, key) in cases {
        let text = format!("proxy: {{remoteurl: 'http://127.0.0.1:1'}}\n{yaml}\n");
        let error = cistern::config::Config::from_yaml(&text, Vec::new())
            .err()
            .unwrap_or_else(|| panic!("{yaml} was accepted"))
            .to_string();
        assert!(error.contains(key), "{yaml}: {key} not named in: {error}");
    }
    // ttl is mirror-wide: the message says where it goes.
    let error =
        cistern::config::Config::from_yaml("registries: {ghcr.io: {ttl: 1h}}\n", Vec::new())
            .unwrap_err()
            .to_string();
    assert!(error.contains("proxy.ttl"), "{error}");
    // A password in an error message would be a leak.
    let error = cistern::config::Config::from_yaml(
        "registries: {quay.io: {password: hunter2-registry-pw}}\n",
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(!error.contains("hunter2-registry-pw"), "{error}");

    // The binary refuses too, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        "proxy:\n  remoteurl: http://127.0.0.1:1\nregistries:\n  ghcr.io:\n    remoteurl: 'not a url'\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cistern"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("registries.ghcr.io.remoteurl"), "{stderr}");
}

#[test]
fn good_registry_sections_load() {
    for yaml in [
        "registries: {ghcr.io: {}}",
        "registries: {'mirror.internal:5000': {remoteurl: 'http://10.0.0.5:5000'}}",
        "registries: {localhost: {remoteurl: 'http://127.0.0.1:5000'}}",
        "registries: {registry.k8s.io: {tagttl: 1h, notfoundttl: 1m, maxfetches: 4}}",
        "registries: {quay.io: {username: me, password: token}}",
        "registries: {ghcr.io: {repositories: {allow: ['myorg/**'], deny: [myorg/secret]}}}",
    ] {
        let text = format!("proxy: {{remoteurl: 'http://127.0.0.1:1'}}\n{yaml}\n");
        if let Err(error) = cistern::config::Config::from_yaml(&text, Vec::new()) {
            panic!("{yaml}: {error}");
        }
    }
}

#[tokio::test]
async fn environment_overrides_reach_the_right_registry() {
    let fleet = Fleet::start().await;
    fleet.ghcr.set_private_prefix(Some("owner/"));
    fleet
        .ghcr
        .set_credentials("ghcr-env-user", "ghcr-env-s3cret");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    fleet.hub.set_private_prefix(Some("owner/"));
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    // A registry named by host and port (its env form: every character not A-Z or 0-9 is `_`).
    let quay_host = fleet.quay.url.trim_start_matches("http://").to_owned();
    let quay_env = quay_host.replace(['.', ':'], "_");
    let quay_app = add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = MirrorSetup::new(&fleet.hub.url)
        .registry("ghcr.io", &fleet.ghcr.url, &[])
        .registry(&quay_host, &fleet.quay.url, &[])
        .env("REGISTRY_REGISTRIES_GHCR_IO_USERNAME", "ghcr-env-user")
        .env("REGISTRY_REGISTRIES_GHCR_IO_PASSWORD", "ghcr-env-s3cret")
        .env(
            &format!("REGISTRY_REGISTRIES_{quay_env}_USERNAME"),
            QUAY_USER,
        )
        .env(
            &format!("REGISTRY_REGISTRIES_{quay_env}_PASSWORD"),
            QUAY_PASSWORD,
        )
        .start()
        .await;
    let pulled = mirror.pull("ghcr.io/owner/app", "1.0").await;
    assert_eq!(digests(&pulled), pulled_digests(&ghcr_app));
    let pulled = mirror.pull(&format!("{quay_host}/owner/app"), "1.0").await;
    assert_eq!(digests(&pulled), pulled_digests(&quay_app));
    let pulled = mirror.pull("owner/app", "1.0").await;
    assert_eq!(digests(&pulled), pulled_digests(&hub_app));
    for (name, up, expected) in [
        (
            "ghcr.io",
            &fleet.ghcr,
            basic("ghcr-env-user", "ghcr-env-s3cret"),
        ),
        ("quay", &fleet.quay, basic(QUAY_USER, QUAY_PASSWORD)),
        ("docker.io", &fleet.hub, basic(USER, PASSWORD)),
    ] {
        let token_requests = up.token_requests();
        assert_eq!(token_requests.len(), 1, "{name}: {token_requests:?}");
        assert_eq!(
            token_requests[0].authorization.as_deref(),
            Some(expected.as_str()),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_passwords_from_the_environment_never_reach_the_log() {
    let fleet = Fleet::start().await;
    fleet.ghcr.set_private_prefix(Some("owner/"));
    fleet
        .ghcr
        .set_credentials("ghcr-env-user", "ghcr-env-s3cret-in-log?");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: debug\n  formatter: json\nhttp:\n  addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: {}\nregistries:\n  ghcr.io:\n    remoteurl: {}\n",
            dir.path().join("storage").display(),
            fleet.hub.url,
            fleet.ghcr.url,
        ),
    )
    .unwrap();
    let mut cistern = Binary::start_program(
        Path::new(env!("CARGO_BIN_EXE_cistern")),
        &config,
        &[
            ("REGISTRY_REGISTRIES_GHCR_IO_USERNAME", "ghcr-env-user"),
            (
                "REGISTRY_REGISTRIES_GHCR_IO_PASSWORD",
                "ghcr-env-s3cret-in-log?",
            ),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let pulled = pull(&http, &cistern.url, "ghcr.io/owner/app", "1.0", "").await;
    assert_eq!(digests(&pulled), pulled_digests(&ghcr_app));
    assert_eq!(
        fleet.ghcr.token_requests()[0].authorization.as_deref(),
        Some(basic("ghcr-env-user", "ghcr-env-s3cret-in-log?").as_str())
    );
    // The request line names the registry.
    let response = http
        .get(format!(
            "{}/v2/owner/app/manifests/1.0?ns=ghcr.io",
            cistern.url
        ))
        .header("accept", DOCKER_ACCEPT)
        .header("x-request-id", "ghcr-pull-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let fields = cistern.request_line("ghcr-pull-1").await;
    assert_eq!(fields["registry"], "ghcr.io", "{fields}");
    cistern.terminate();
    assert!(cistern.exit_status(Duration::from_secs(20)).await.success());
    let log = cistern.log_text();
    for secret in [
        "ghcr-env-s3cret-in-log?".to_owned(),
        basic("ghcr-env-user", "ghcr-env-s3cret-in-log?"),
        "fake-token-".to_owned(),
    ] {
        assert!(!log.contains(&secret), "{secret} leaked:\n{log}");
    }
}

// 7. Existing caches keep working --------------------------------------------------------------

/// A storage directory the cistern before issue 14 (commit d6969f9) wrote, and what it holds.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/pre-registries-storage")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The images in the fixture: (name as pulled, tag).
const FIXTURE_IMAGES: [(&str, &str); 2] = [("alpine", "3.19"), ("someorg/tool", "1.0")];

/// The upstream the fixture was filled from: a two-platform `library/alpine:3.19` and a
/// Docker v2 `someorg/tool:1.0`, all tiny, sharing the base layer.
fn add_fixture_images(up: &FakeUpstream) {
    let platforms: Vec<Value> = ["amd64", "arm64"]
        .iter()
        .map(|arch| {
            let image = add_small_image(
                up,
                "library/alpine",
                None,
                OCI_MANIFEST,
                &format!("fixture-alpine-{arch}"),
            );
            json!({"mediaType": OCI_MANIFEST, "digest": image.digest, "size": 0,
                   "platform": {"architecture": arch, "os": "linux"}})
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": platforms});
    up.add_manifest(
        "library/alpine",
        Some("3.19"),
        OCI_INDEX,
        &serde_json::to_vec_pretty(&index).unwrap(),
    );
    add_small_image(
        up,
        "someorg/tool",
        Some("1.0"),
        DOCKER_MANIFEST,
        "fixture-tool",
    );
}

/// Regenerates the fixture with a cistern built before issue 14:
/// `CISTERN_PRE14=/work/notes/cistern-pre-14 cargo test --release --test it -- --ignored
/// registries::write_pre_registries_fixture`. The old binary fills a storage through a fake
/// upstream; the storage and the digests each pull received are saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "rewrites the checked-in fixture; needs CISTERN_PRE14=<a cistern built at d6969f9>"]
async fn write_pre_registries_fixture() {
    let program = PathBuf::from(std::env::var("CISTERN_PRE14").expect("CISTERN_PRE14"));
    let up = FakeUpstream::start().await;
    add_fixture_images(&up);
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nhttp:\n  addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: {}\n  tagttl: 1h\n",
            storage.display(),
            up.url
        ),
    )
    .unwrap();
    let mut cistern = Binary::start_program(&program, &config, &[]).await;
    let http = reqwest::Client::new();
    let mut expected = serde_json::Map::new();
    for (repo, tag) in FIXTURE_IMAGES {
        let pulled = pull(&http, &cistern.url, repo, tag, "").await;
        expected.insert(format!("{repo}:{tag}"), json!(digests(&pulled)));
    }
    cistern.terminate();
    assert!(cistern.exit_status(Duration::from_secs(20)).await.success());

    // The storage and expected.json are replaced; the README stays.
    let fixture = fixture_dir();
    let _ = std::fs::remove_dir_all(fixture.join("storage"));
    for part in ["blobs", "repositories"] {
        copy_dir(&storage.join(part), &fixture.join("storage").join(part));
    }
    std::fs::write(
        fixture.join("expected.json"),
        serde_json::to_string_pretty(&Value::Object(expected)).unwrap() + "\n",
    )
    .unwrap();
}

#[tokio::test]
async fn a_cache_written_before_registries_is_served_without_fetching_again() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("expected.json")).unwrap())
            .unwrap();
    let storage = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir().join("storage"), storage.path());
    let before: Vec<(PathBuf, Vec<u8>)> = fixture_files(storage.path());
    // Upstreams that hold nothing and count what they are asked.
    let fleet = Fleet::start().await;
    let mirror = fleet
        .setup()
        .storage_dir(storage.path())
        // The tag records carry the time the old version checked them: a tag TTL longer than
        // the fixture's age keeps them fresh; content expiry (proxy.ttl) is off for the same
        // reason.
        .tag_ttl("87600h")
        .content_ttl("0")
        .start()
        .await;

    for (repo, tag) in FIXTURE_IMAGES {
        let want: Vec<String> =
            serde_json::from_value(expected[format!("{repo}:{tag}")].clone()).unwrap();
        let full = if repo.contains('/') {
            repo.to_owned()
        } else {
            format!("library/{repo}")
        };
        let plain = mirror.pull(repo, tag).await;
        assert_eq!(digests(&plain), want, "{repo}:{tag}");
        for pulled in [
            mirror.pull(&full, tag).await,
            mirror.pull_ns("docker.io", repo, tag).await,
            mirror.pull(&format!("docker.io/{full}"), tag).await,
        ] {
            assert_eq!(pulled, plain, "{repo}:{tag}");
        }
        let head = mirror
            .manifest_request(Method::HEAD, &format!("/v2/{full}/manifests/{tag}"))
            .await;
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "docker-content-digest"), want[0]);
    }
    let catalog: Value = mirror.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        json!(["library/alpine", "someorg/tool"])
    );
    assert_eq!(
        fleet.requests(),
        0,
        "the old cache is served as it is: {:?}",
        fleet.hub.seen()
    );
    // Nothing the old version wrote was changed or removed.
    for (path, bytes) in before {
        assert_eq!(
            std::fs::read(&path).ok().as_deref(),
            Some(bytes.as_slice()),
            "{}",
            path.display()
        );
    }
    // The old layout is the default upstream's: the same names on ghcr.io are not served
    // from it; ghcr's upstream is asked (and holds nothing).
    let response = mirror
        .get_manifest_path("/v2/ghcr.io/library/alpine/manifests/3.19")
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        fleet
            .ghcr
            .count(Method::GET, "/v2/library/alpine/manifests/3.19"),
        1
    );
}

fn fixture_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            } else {
                files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    assert!(files.len() > 10, "{files:?}");
    files
}

// 8. Metrics -----------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_metrics_are_labelled_with_the_registry() {
    let fleet = Fleet::start().await;
    let images = [
        add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub"),
        add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr"),
        add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay"),
    ];
    let mirror = fleet.setup().start().await;
    // Different amounts of work per registry, so the counts tell them apart.
    mirror.pull("owner/app", "1.0").await;
    mirror.pull_ns("ghcr.io", "owner/app", "1.0").await;
    mirror.pull("quay.io/owner/app", "1.0").await;
    for digest in &images[1].blobs {
        mirror
            .get(&format!("/v2/ghcr.io/owner/app/blobs/{digest}"))
            .await;
    }
    mirror
        .get_manifest_path("/v2/ghcr.io/owner/app/manifests/missing")
        .await;
    mirror
        .get_manifest_path("/v2/quay.io/owner/app/manifests/missing")
        .await;
    mirror
        .get_manifest_path("/v2/quay.io/owner/app/manifests/gone")
        .await;

    let metrics = mirror.metrics().await;
    let requests = "cistern_upstream_requests_total";
    for (registry, up) in fleet.all() {
        let label = ("registry", registry);
        assert_eq!(
            metrics.sum(requests, &[label]) as usize,
            up.registry_requests(),
            "{registry}: every registry request counted under its name:\n{}",
            metrics.0
        );
        for (kind, method, fragment) in [
            ("manifest", "GET", "/manifests/"),
            ("blob", "GET", "/blobs/"),
            ("blob", "HEAD", "/blobs/"),
        ] {
            let method_ = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(
                metrics.sum(requests, &[label, ("kind", kind), ("method", method)]) as usize,
                up.count(method_, fragment),
                "{registry} {kind} {method}:\n{}",
                metrics.0
            );
        }
        assert_eq!(
            metrics.sum("cistern_upstream_token_fetches_total", &[label]) as usize,
            up.token_requests().len(),
            "{registry}:\n{}",
            metrics.0
        );
    }
    assert_eq!(
        metrics.sum(
            requests,
            &[
                ("registry", "quay.io"),
                ("kind", "manifest"),
                ("status", "404")
            ]
        ),
        2.0,
        "{}",
        metrics.0
    );
    assert_eq!(
        metrics.sum(
            requests,
            &[
                ("registry", "ghcr.io"),
                ("kind", "manifest"),
                ("status", "404")
            ]
        ),
        1.0
    );
    let total: usize = fleet
        .all()
        .iter()
        .map(|(_, up)| up.registry_requests())
        .sum();
    assert_eq!(metrics.sum(requests, &[]) as usize, total);
}

#[tokio::test]
async fn rate_limits_and_cache_outcomes_are_reported_per_registry() {
    let fleet = Fleet::start().await;
    *fleet.hub.state.faults.rate_limit.lock().unwrap() = Some((100, 60));
    *fleet.ghcr.state.faults.rate_limit.lock().unwrap() = Some((5000, 4000));
    add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet.setup().start().await;
    mirror.pull("owner/app", "1.0").await;
    mirror.pull("ghcr.io/owner/app", "1.0").await;
    mirror.pull("quay.io/owner/app", "1.0").await;
    for digest in &ghcr_app.blobs {
        let response = mirror
            .get(&format!("/v2/owner/app/blobs/{digest}?ns=ghcr.io"))
            .await;
        assert_eq!(response.status(), 200);
    }
    let metrics = mirror.metrics().await;
    for (registry, limit, remaining) in [
        ("docker.io", 100.0, 59.0),
        ("ghcr.io", 5000.0, 3999.0),
        // quay reports no quota.
        ("quay.io", -1.0, -1.0),
    ] {
        let label = [("registry", registry)];
        assert_eq!(
            metrics.sum("cistern_upstream_ratelimit_limit", &label),
            limit,
            "{registry}:\n{}",
            metrics.0
        );
        assert_eq!(
            metrics.sum("cistern_upstream_ratelimit_remaining", &label),
            remaining,
            "{registry}"
        );
    }
    // Blob requests by registry: 3 per pull, and ghcr's 3 more (from the cache).
    for (registry, blobs, hits) in [("docker.io", 3.0, 0.0), ("ghcr.io", 6.0, 3.0)] {
        let label = ("registry", registry);
        assert_eq!(
            metrics.sum("cistern_cache_requests_total", &[label, ("kind", "blob")]),
            blobs,
            "{registry}:\n{}",
            metrics.0
        );
        assert!(
            metrics.sum(
                "cistern_cache_requests_total",
                &[label, ("kind", "blob"), ("outcome", "hit")]
            ) >= hits,
            "{registry}:\n{}",
            metrics.0
        );
    }
    assert_eq!(
        metrics.sum(
            "cistern_cache_requests_total",
            &[("registry", "quay.io"), ("kind", "blob")]
        ),
        3.0
    );
}

#[tokio::test]
async fn tag_ttl_is_per_registry_and_unset_keys_take_proxys() {
    let fleet = Fleet::start().await;
    add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    // proxy.tagttl 1h; ghcr revalidates every time; quay sets nothing and takes proxy's 1h.
    let mirror = MirrorSetup::new(&fleet.hub.url)
        .tag_ttl("1h")
        .registry("ghcr.io", &fleet.ghcr.url, &["tagttl: 0"])
        .registry(
            "quay.io",
            &fleet.quay.url,
            &[
                &format!("username: {QUAY_USER}"),
                &format!("password: {QUAY_PASSWORD}"),
            ],
        )
        .start()
        .await;
    for ns in ["docker.io", "ghcr.io", "quay.io"] {
        let response = mirror
            .get_manifest_path(&format!("/v2/owner/app/manifests/1.0?ns={ns}"))
            .await;
        assert_eq!(response.status(), 200, "{ns}");
    }
    let before: Vec<usize> = fleet.all().iter().map(|(_, up)| up.seen().len()).collect();
    for _ in 0..3 {
        for ns in ["docker.io", "ghcr.io", "quay.io"] {
            let response = mirror
                .get_manifest_path(&format!("/v2/owner/app/manifests/1.0?ns={ns}"))
                .await;
            assert_eq!(response.status(), 200, "{ns}");
        }
    }
    let after: Vec<usize> = fleet.all().iter().map(|(_, up)| up.seen().len()).collect();
    assert_eq!(after[0], before[0], "docker.io: within proxy.tagttl");
    assert_eq!(after[2], before[2], "quay.io: proxy's tagttl, inherited");
    assert_eq!(
        fleet
            .ghcr
            .count(Method::HEAD, "/v2/owner/app/manifests/1.0"),
        3,
        "ghcr.io: tagttl 0, one HEAD per request: {:?}",
        fleet.ghcr.seen()
    );
    assert_eq!(after[1], before[1] + 3, "{:?}", fleet.ghcr.seen());
}

#[tokio::test]
async fn a_registry_that_fails_serves_its_cached_tags_and_the_others_carry_on() {
    let fleet = Fleet::start().await;
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(
        &fleet.ghcr,
        "owner/app",
        Some("2.0"),
        OCI_MANIFEST,
        "ghcr-2",
    );
    add_small_image(
        &fleet.hub,
        "owner/app",
        Some("hub-only"),
        OCI_MANIFEST,
        "hub-2",
    );
    let mirror = fleet.setup().tag_ttl("0").start().await;
    let cold = mirror.pull("ghcr.io/owner/app", "1.0").await;
    mirror.pull("owner/app", "1.0").await;
    mirror.pull("owner/app", "hub-only").await;

    fleet.ghcr.set_down(true);
    let warm = mirror.pull("ghcr.io/owner/app", "1.0").await;
    assert_eq!(warm, cold, "ghcr's cached image, byte for byte");
    assert_eq!(digests(&warm), pulled_digests(&ghcr_app));
    // What ghcr never served cannot be: 503 naming ghcr's upstream, not the hub's.
    let (status, code, message) = error_of(
        mirror
            .get_manifest_path("/v2/ghcr.io/owner/app/manifests/2.0")
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"));
    assert!(message.contains(&fleet.ghcr.url), "{message}");
    // Its tag list falls back to the tags cached for ghcr, not the hub's.
    for path in [
        "/v2/ghcr.io/owner/app/tags/list",
        "/v2/owner/app/tags/list?ns=ghcr.io",
    ] {
        assert_eq!(tags_of(&mirror, path).await, json!(["1.0"]), "{path}");
    }
    // The hub still revalidates and answers.
    let heads = fleet.hub.count(Method::HEAD, "/manifests/1.0");
    let pulled = mirror.pull("owner/app", "1.0").await;
    assert_eq!(digests(&pulled), pulled_digests(&hub_app));
    assert_eq!(fleet.hub.count(Method::HEAD, "/manifests/1.0"), heads + 1);

    let metrics = mirror.metrics().await;
    assert_eq!(
        metrics.sum(
            "cistern_stale_serves_total",
            &[("registry", "ghcr.io"), ("kind", "manifest")]
        ),
        1.0,
        "{}",
        metrics.0
    );
    assert_eq!(
        metrics.sum("cistern_stale_serves_total", &[("registry", "docker.io")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_layer_asked_through_two_registries_at_once_is_downloaded_once() {
    let fleet = Fleet::start().await;
    // A big layer both registries hold, so the two requests overlap.
    let big = content("shared-big-layer", 4 * 1024 * 1024 + 5);
    let digest = fleet.hub.add_blob("owner/app", &big);
    fleet.ghcr.add_blob("owner/app", &big);
    let mirror = fleet.setup().start().await;
    let paths = [
        format!("/v2/owner/app/blobs/{digest}"),
        format!("/v2/ghcr.io/owner/app/blobs/{digest}"),
    ];
    let answers = futures::future::join_all(paths.iter().map(|path| async {
        let response = mirror.get(path).await;
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap())
    }))
    .await;
    for (path, (status, bytes)) in paths.iter().zip(&answers) {
        assert_eq!(*status, 200, "{path}");
        assert!(*bytes == big, "{path}: not the layer's bytes");
    }
    let gets = fleet.hub.count(Method::GET, &digest) + fleet.ghcr.count(Method::GET, &digest);
    assert_eq!(gets, 1, "one download for both registries");
    assert_eq!(
        asked(&fleet.hub, &digest) + asked(&fleet.ghcr, &digest),
        2,
        "the other registry confirmed it holds the layer: {:?} {:?}",
        fleet.hub.seen(),
        fleet.ghcr.seen()
    );
    assert!(mirror.has_content(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_failing_for_one_registry_does_not_fail_another_that_holds_the_blob() {
    let fleet = Fleet::start().await;
    // A layer only ghcr holds. A client asks for it through quay first (quay's upstream will
    // say 404, but not yet: its answer is held), then through ghcr while quay's fetch is in
    // flight.
    let layer = content("ghcr-only-layer", 64 * 1024 + 9);
    let digest = fleet.ghcr.add_blob("owner/app", &layer);
    let gate = fleet.quay.hold(&digest);
    let mirror = fleet.setup().start().await;
    let get = |path: String| mirror.spawn_get(&path);
    let through_quay = get(format!("/v2/quay.io/owner/app/blobs/{digest}"));
    until(
        "quay's upstream is asked",
        Duration::from_secs(10),
        async || fleet.quay.count(Method::GET, &digest) == 1,
    )
    .await;
    let through_ghcr = get(format!("/v2/ghcr.io/owner/app/blobs/{digest}"));
    until(
        "ghcr's upstream is asked while quay's fetch is in flight",
        Duration::from_secs(10),
        async || asked(&fleet.ghcr, &digest) >= 1,
    )
    .await;
    gate.close();
    let (status, _) = through_quay.await.unwrap();
    assert_eq!(status, 404, "quay does not hold ghcr's layer");
    let (status, bytes) = through_ghcr.await.unwrap();
    let trace = format!(
        "ghcr saw {:?}\nquay saw {:?}",
        fleet.ghcr.seen(),
        fleet.quay.seen()
    );
    assert_eq!(
        status,
        200,
        "ghcr holds the layer; quay's 404 is not ghcr's answer: {}\n{trace}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(bytes == layer, "ghcr's bytes");
    // And afterwards, ghcr's name serves it, quay's does not.
    let response = mirror
        .get(&format!("/v2/ghcr.io/owner/app/blobs/{digest}"))
        .await;
    assert_eq!(response.status(), 200, "{trace}");
    let (status, code, _) = error_of(
        mirror
            .get(&format!("/v2/quay.io/owner/app/blobs/{digest}"))
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
}

#[tokio::test]
async fn a_registry_removed_from_the_config_is_no_longer_served_or_listed() {
    let fleet = Fleet::start().await;
    add_small_image(
        &fleet.hub,
        "library/alpine",
        Some("3.20"),
        OCI_MANIFEST,
        "alpine",
    );
    add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    let storage = tempfile::tempdir().unwrap();
    let before = fleet.setup().storage_dir(storage.path()).start().await;
    before.pull("alpine", "3.20").await;
    before.pull("ghcr.io/owner/app", "1.0").await;
    drop(before);

    // ghcr.io is taken out of the configuration: what was cached for it stays in storage but
    // is neither listed nor served (closed world), and nothing is asked upstream.
    let after = MirrorSetup::new(&fleet.hub.url)
        .storage_dir(storage.path())
        .start()
        .await;
    let requests = fleet.requests();
    for path in [
        "/v2/ghcr.io/owner/app/manifests/1.0",
        "/v2/owner/app/manifests/1.0?ns=ghcr.io",
    ] {
        let (status, code, message) = error_of(after.get_manifest_path(path).await).await;
        assert_eq!((status, code.as_str()), (404, "NAME_UNKNOWN"), "{path}");
        assert!(message.contains("not mirrored"), "{message}");
    }
    assert_eq!(fleet.requests(), requests);
    let catalog: Value = after.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        json!(["library/alpine"]),
        "a repository that cannot be pulled is not listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_tags_of_the_same_name_on_two_registries_are_not_shared() {
    let fleet = Fleet::start().await;
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    // The hub's answer for the tag is held while ghcr is asked for the same name and tag.
    let gate = fleet.hub.hold("/manifests/1.0");
    let mirror = fleet.setup().start().await;
    let get = |path: &str| {
        let (http, url, path) = (mirror.http.clone(), mirror.url.clone(), path.to_owned());
        tokio::spawn(async move {
            let response = http
                .get(format!("{url}{path}"))
                .header("accept", DOCKER_ACCEPT)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
            header(&response, "docker-content-digest")
        })
    };
    let from_hub = get("/v2/owner/app/manifests/1.0");
    until(
        "the hub is asked for the tag",
        Duration::from_secs(10),
        async || fleet.hub.count(Method::GET, "/manifests/1.0") == 1,
    )
    .await;
    let from_ghcr = get("/v2/owner/app/manifests/1.0?ns=ghcr.io");
    until(
        "ghcr is asked for its own tag while the hub's is in flight",
        Duration::from_secs(10),
        async || fleet.ghcr.count(Method::GET, "/manifests/1.0") == 1,
    )
    .await;
    gate.close();
    assert_eq!(from_ghcr.await.unwrap(), ghcr_app.digest);
    assert_eq!(from_hub.await.unwrap(), hub_app.digest);
    // Each cached its own: warm answers are still apart.
    for (path, digest) in [
        ("/v2/owner/app/manifests/1.0", &hub_app.digest),
        ("/v2/ghcr.io/owner/app/manifests/1.0", &ghcr_app.digest),
    ] {
        let response = mirror.get_manifest_path(path).await;
        assert_eq!(
            header(&response, "docker-content-digest"),
            *digest,
            "{path}"
        );
    }
}

#[tokio::test]
async fn docker_hub_listed_under_registries_configures_the_default_upstream() {
    let fleet = Fleet::start().await;
    fleet.hub.set_private_prefix(Some("owner/"));
    let hub_app = add_small_image(&fleet.hub, "owner/app", Some("1.0"), OCI_MANIFEST, "hub");
    let mirror = MirrorSetup::new(&fleet.hub.url)
        .anonymous()
        .registry_section(
            "docker.io",
            &[
                &format!("username: {USER}"),
                &format!("password: {PASSWORD}"),
            ],
        )
        .start()
        .await;
    for pulled in [
        mirror.pull("owner/app", "1.0").await,
        mirror.pull("docker.io/owner/app", "1.0").await,
    ] {
        assert_eq!(digests(&pulled), pulled_digests(&hub_app));
    }
    let token_requests = fleet.hub.token_requests();
    assert_eq!(token_requests.len(), 1, "{token_requests:?}");
    assert_eq!(
        token_requests[0].authorization.as_deref(),
        Some(basic(USER, PASSWORD).as_str())
    );

    // The same key set differently in both places is refused, naming both, showing neither.
    let error = cistern::config::Config::from_yaml(
        "proxy: {remoteurl: 'https://registry-1.docker.io', username: u, password: first-secret}\nregistries: {docker.io: {username: u, password: second-secret}}\n",
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("registries.docker.io.password") && error.contains("proxy.password"),
        "{error}"
    );
    assert!(
        !error.contains("first-secret") && !error.contains("second-secret"),
        "{error}"
    );
}

/// Every page of a tag list from `path` on, following `Link` headers.
async fn tag_pages(mirror: &Mirror, path: &str) -> Vec<Value> {
    let mut path = path.to_owned();
    let mut pages = Vec::new();
    loop {
        let response = mirror.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        let link = response
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap();
        pages.push(body["tags"].clone());
        let Some(link) = link else { return pages };
        path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
        assert!(pages.len() < 10, "{pages:?}");
    }
}

#[tokio::test]
async fn tag_list_pages_stay_on_their_registry() {
    let fleet = Fleet::start().await;
    for tag in ["hub-a", "hub-b", "hub-c"] {
        add_small_image(&fleet.hub, "owner/app", Some(tag), OCI_MANIFEST, tag);
    }
    for tag in ["1.0", "2.0", "3.0"] {
        add_small_image(&fleet.ghcr, "owner/app", Some(tag), OCI_MANIFEST, tag);
    }
    let mirror = fleet.setup().start().await;
    let ghcr_pages = vec![json!(["1.0"]), json!(["2.0"]), json!(["3.0"])];
    // skopeo list-tags through a path mirror, and a client using ns, both follow the Link.
    assert_eq!(
        tag_pages(&mirror, "/v2/ghcr.io/owner/app/tags/list?n=1").await,
        ghcr_pages
    );
    assert_eq!(
        tag_pages(&mirror, "/v2/owner/app/tags/list?ns=ghcr.io&n=1").await,
        ghcr_pages
    );
    assert_eq!(
        tag_pages(&mirror, "/v2/owner/app/tags/list?n=2").await,
        vec![json!(["hub-a", "hub-b"]), json!(["hub-c"])]
    );
}

#[tokio::test]
async fn a_digest_one_registry_lacks_is_still_fetched_from_another() {
    let fleet = Fleet::start().await;
    let ghcr_app = add_small_image(&fleet.ghcr, "owner/app", Some("1.0"), OCI_MANIFEST, "ghcr");
    add_small_image(&fleet.quay, "owner/app", Some("1.0"), OCI_MANIFEST, "quay");
    let mirror = fleet.setup().start().await;
    // By digest, cold: quay (and the hub) say 404 first and that is remembered for them.
    for path in [
        format!("/v2/quay.io/owner/app/manifests/{}", ghcr_app.digest),
        format!("/v2/owner/app/manifests/{}", ghcr_app.digest),
        format!("/v2/quay.io/owner/app/blobs/{}", ghcr_app.blobs[1]),
    ] {
        assert_eq!(
            mirror.get_manifest_path(&path).await.status(),
            404,
            "{path}"
        );
    }
    let response = mirror
        .get_manifest_path(&format!(
            "/v2/owner/app/manifests/{}?ns=ghcr.io",
            ghcr_app.digest
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.unwrap(),
        upstream_manifest(&fleet.ghcr, "owner/app", &ghcr_app.digest)
    );
    let response = mirror
        .get(&format!(
            "/v2/ghcr.io/owner/app/blobs/{}",
            ghcr_app.blobs[1]
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(sha256(&response.bytes().await.unwrap()), ghcr_app.blobs[1]);
    // And quay's 404 for it stands.
    let response = mirror
        .get_manifest_path(&format!(
            "/v2/quay.io/owner/app/manifests/{}",
            ghcr_app.digest
        ))
        .await;
    assert_eq!(response.status(), 404);
}
