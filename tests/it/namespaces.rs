//! Which registry a request names (`?ns=`, a path prefix) with only the default upstream
//! configured (a registry:2 config), and the closed world: a registry this mirror does not
//! serve is refused before anything is asked upstream, so a node whose containerd sends every
//! registry here never gets another registry's image under its name. Several registries
//! (`registries:`) are tested in `registries`.

use http::Method;

use crate::common::*;

#[tokio::test]
async fn another_registrys_name_is_refused_without_asking_upstream() {
    let up = FakeUpstream::start().await;
    let alpine = add_alpine(&up);
    up.add_blob("someorg/app", b"someorg's layer on the default upstream");
    let mirror = MirrorSetup::new(&up.url).start().await;
    let cases = [
        "/v2/library/alpine/manifests/latest?ns=ghcr.io".to_owned(),
        "/v2/someorg/app/manifests/latest?ns=quay.io".to_owned(),
        format!("/v2/library/alpine/blobs/{}?ns=ghcr.io", alpine.blobs[0]),
        "/v2/library/alpine/tags/list?ns=registry.k8s.io".to_owned(),
        // The path form podman, CRI-O and BuildKit mirrors use.
        "/v2/ghcr.io/library/alpine/manifests/latest".to_owned(),
        format!("/v2/quay.io/library/alpine/blobs/{}", alpine.blobs[0]),
        // Not a way around it: a second ns, percent-encoding, case.
        "/v2/library/alpine/manifests/latest?ns=GHCR.IO".to_owned(),
        "/v2/library/alpine/manifests/latest?ns=ghcr%2Eio".to_owned(),
    ];
    for path in &cases {
        for method in [Method::GET, Method::HEAD] {
            let response = mirror
                .http
                .request(method.clone(), format!("{}{path}", mirror.url))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{method} {path}");
            if method == Method::GET {
                let body = response.text().await.unwrap();
                assert!(body.contains("NAME_UNKNOWN"), "{path}: {body}");
                assert!(body.contains("not mirrored"), "{path}: {body}");
            }
        }
    }
    assert_eq!(
        up.registry_requests(),
        0,
        "nothing may be asked upstream for another registry: {:?}",
        up.seen()
    );
    assert_eq!(up.tokens_issued(), 0);
}

#[tokio::test]
async fn docker_hubs_names_and_the_remote_host_reach_the_default_upstream() {
    let up = FakeUpstream::start().await;
    let alpine = add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).start().await;
    let remote_host = up.url.trim_start_matches("http://").trim_end_matches('/');
    let forms = [
        ("/v2/library/alpine/manifests/latest".to_owned(), None),
        (
            "/v2/library/alpine/manifests/latest?ns=docker.io".to_owned(),
            Some("docker.io"),
        ),
        (
            "/v2/alpine/manifests/latest?ns=index.docker.io".to_owned(),
            Some("index.docker.io"),
        ),
        (
            "/v2/docker.io/library/alpine/manifests/latest".to_owned(),
            Some("docker.io"),
        ),
        (
            "/v2/docker.io/alpine/manifests/latest?ns=docker.io".to_owned(),
            Some("docker.io"),
        ),
        (
            format!("/v2/library/alpine/manifests/latest?ns={remote_host}"),
            Some(remote_host),
        ),
    ];
    for (path, namespace) in &forms {
        let response = mirror.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "docker-content-digest"), alpine.digest);
        assert_eq!(
            response
                .headers()
                .get("oci-namespace")
                .map(|v| v.to_str().unwrap().to_owned()),
            namespace.map(str::to_owned),
            "{path}"
        );
    }
    let blob = mirror
        .get(&format!(
            "/v2/docker.io/library/alpine/blobs/{}?ns=docker.io",
            alpine.blobs[1]
        ))
        .await;
    assert_eq!(blob.status(), 200);
    assert_eq!(sha256(&blob.bytes().await.unwrap()), alpine.blobs[1]);
    // One upstream GET for the tag whatever form named it: the forms are one repository.
    assert_eq!(up.count(Method::GET, "/manifests/latest"), 1);
}

#[tokio::test]
async fn ns_and_path_prefix_that_disagree_are_a_bad_request() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).start().await;
    for path in [
        "/v2/docker.io/library/alpine/manifests/latest?ns=ghcr.io",
        "/v2/ghcr.io/library/alpine/manifests/latest?ns=docker.io",
        "/v2/library/alpine/manifests/latest?ns=docker.io&ns=ghcr.io",
    ] {
        let response = mirror.get(path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(error_code(response).await, "NAME_INVALID", "{path}");
    }
    assert_eq!(up.registry_requests(), 0);
}
