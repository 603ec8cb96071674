//! Pulling through the mirror: cold then warm, exact bytes and headers, ranges, listings.

use crate::common::*;
use reqwest::Method;

#[tokio::test]
async fn multi_arch_pull_is_cold_once_then_served_without_upstream() {
    let up = FakeUpstream::start().await;
    let (index, _) = add_multi_arch(&up, "library/alpine", "latest");
    let mirror = MirrorSetup::new(&up.url).start().await;

    let cold = mirror.pull("library/alpine", "latest").await;
    // index + 2 platform manifests + 2 x (config + 2 layers)
    assert_eq!(cold.len(), 9);
    assert_eq!(cold[0].0, index.digest);
    assert_eq!(
        up.count(Method::GET, "/manifests/"),
        3,
        "one GET per manifest"
    );
    assert_eq!(up.count(Method::GET, "/blobs/"), 6, "one GET per blob");
    for digest in &index.blobs {
        assert!(mirror.has_content(digest), "{digest} cached");
    }

    let before = up.seen().len();
    let warm = mirror.pull("library/alpine", "latest").await;
    assert_eq!(
        up.seen().len(),
        before,
        "warm pull within the TTL asks upstream nothing"
    );
    assert_eq!(warm, cold, "the same bytes, cold and warm");
}

#[tokio::test]
async fn docker_v2_image_and_library_normalisation() {
    let up = FakeUpstream::start().await;
    let image = add_image(
        &up,
        "library/busybox",
        Some("1.36"),
        DOCKER_MANIFEST,
        "busybox",
    );
    let mirror = MirrorSetup::new(&up.url).start().await;

    // A one-segment name means library/<name>, upstream and in the cache.
    let pulled = mirror.pull("busybox", "1.36").await;
    assert_eq!(pulled[0].0, image.digest);
    assert!(up.count(Method::GET, "/v2/library/busybox/manifests/1.36") == 1);
    assert_eq!(up.count(Method::GET, "/v2/busybox/"), 0);

    // The same content answers under the full name without another upstream request.
    let before = up.seen().len();
    mirror.pull("library/busybox", "1.36").await;
    assert_eq!(up.seen().len(), before);

    let catalog: serde_json::Value = mirror.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog,
        serde_json::json!({"repositories": ["library/busybox"]})
    );
}

#[tokio::test]
async fn manifests_are_served_byte_for_byte_with_upstream_media_type() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "org/app", Some("v1"), DOCKER_MANIFEST, "app");
    let mirror = MirrorSetup::new(&up.url).start().await;
    let upstream_bytes = up.state.repos.lock().unwrap()["org/app"].manifests[&image.digest]
        .1
        .clone();

    for reference in ["v1", image.digest.as_str(), "v1"] {
        let response = mirror.get_manifest("org/app", reference).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), DOCKER_MANIFEST);
        assert_eq!(header(&response, "docker-content-digest"), image.digest);
        assert_eq!(response.bytes().await.unwrap(), upstream_bytes);
    }
}

#[tokio::test]
async fn head_answers_exact_headers_cold_and_warm_without_downloading() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "org/app", Some("v1"), OCI_MANIFEST, "app");
    let mirror = MirrorSetup::new(&up.url).start().await;
    let manifest_len = up.state.repos.lock().unwrap()["org/app"].manifests[&image.digest]
        .1
        .len();
    let large = &image.blobs[2];
    let large_len = 3 * 1024 * 1024 + 17;

    for round in ["cold", "warm"] {
        let response = mirror.head("/v2/org/app/manifests/v1").await;
        assert_eq!(response.status(), 200, "{round}");
        assert_eq!(header(&response, "docker-content-digest"), image.digest);
        assert_eq!(
            header(&response, "content-length"),
            manifest_len.to_string(),
            "{round}"
        );
        assert_eq!(header(&response, "content-type"), OCI_MANIFEST);

        let response = mirror.head(&format!("/v2/org/app/blobs/{large}")).await;
        assert_eq!(response.status(), 200, "{round}");
        assert_eq!(header(&response, "docker-content-digest"), *large);
        assert_eq!(
            header(&response, "content-length"),
            large_len.to_string(),
            "{round}"
        );
        assert_eq!(
            header(&response, "content-type"),
            "application/octet-stream"
        );
        if round == "cold" {
            assert_eq!(
                up.count(Method::GET, "/blobs/"),
                0,
                "a cold HEAD downloads nothing"
            );
            assert_eq!(
                up.count(Method::GET, "/manifests/"),
                0,
                "a cold HEAD downloads nothing"
            );
            mirror.pull("org/app", "v1").await;
        }
    }
    let missing = format!("/v2/org/app/blobs/{}", sha256(b"missing"));
    let response = mirror.head(&missing).await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn range_requests_on_cached_blobs() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "org/app", Some("v1"), OCI_MANIFEST, "app");
    let mirror = MirrorSetup::new(&up.url).start().await;
    let pulled = mirror.pull("org/app", "v1").await;
    let large = pulled
        .iter()
        .find(|(d, _)| d == &image.blobs[2])
        .unwrap()
        .1
        .clone();
    let total = large.len();
    let path = format!("{}/v2/org/app/blobs/{}", mirror.url, image.blobs[2]);

    let ranged = |range: &'static str| mirror.http.get(&path).header("range", range).send();
    let response = ranged("bytes=1000-").await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes 1000-{}/{total}", total - 1)
    );
    assert_eq!(
        header(&response, "content-length"),
        (total - 1000).to_string()
    );
    assert_eq!(response.bytes().await.unwrap(), large.slice(1000..));

    let response = ranged("bytes=10-19").await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes 10-19/{total}")
    );
    assert_eq!(response.bytes().await.unwrap(), large.slice(10..20));

    let response = ranged("bytes=-5").await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(response.bytes().await.unwrap(), large.slice(total - 5..));

    let response = ranged(Box::leak(format!("bytes={total}-").into_boxed_str()))
        .await
        .unwrap();
    assert_eq!(response.status(), 416);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes */{total}")
    );

    // Several ranges are not supported: the whole blob, as HTTP allows.
    let response = ranged("bytes=0-1,5-6").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), large);
}

#[tokio::test]
async fn containerd_ns_parameter_is_accepted() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "library/redis", Some("7"), OCI_MANIFEST, "redis");
    let mirror = MirrorSetup::new(&up.url).start().await;
    let response = mirror
        .http
        .get(format!(
            "{}/v2/library/redis/manifests/7?ns=docker.io",
            mirror.url
        ))
        .header("accept", DOCKER_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "docker-content-digest"), image.digest);
    let blob = mirror
        .get(&format!(
            "/v2/library/redis/blobs/{}?ns=docker.io",
            image.blobs[0]
        ))
        .await;
    assert_eq!(blob.status(), 200);
}

#[tokio::test]
async fn deep_names_work() {
    let up = FakeUpstream::start().await;
    let name = "a/b/c/d/e/f/g/h";
    let image = add_image(&up, name, Some("v1"), OCI_MANIFEST, "deep");
    let mirror = MirrorSetup::new(&up.url).start().await;
    let pulled = mirror.pull(name, "v1").await;
    assert_eq!(pulled[0].0, image.digest);
}

#[tokio::test]
async fn catalog_lists_cached_repositories_in_pages() {
    let up = FakeUpstream::start().await;
    let names = [
        "library/alpine",
        "library/busybox",
        "org/app",
        "org/db",
        "zz/top",
    ];
    for name in names {
        add_image(&up, name, Some("latest"), OCI_MANIFEST, name);
    }
    add_image(&up, "not/pulled", Some("latest"), OCI_MANIFEST, "np");
    let mirror = MirrorSetup::new(&up.url).start().await;
    for name in names {
        assert_eq!(mirror.get_manifest(name, "latest").await.status(), 200);
    }

    let response = mirror.get("/v2/_catalog").await;
    assert!(response.headers().get("link").is_none());
    let all: serde_json::Value = response.json().await.unwrap();
    assert_eq!(all["repositories"], serde_json::json!(names));

    let mut collected = Vec::new();
    let mut next = "/v2/_catalog?n=2".to_owned();
    loop {
        let response = mirror.get(&next).await;
        assert_eq!(response.status(), 200);
        let link = response
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: serde_json::Value = response.json().await.unwrap();
        let repos = page["repositories"].as_array().unwrap();
        assert!(repos.len() <= 2);
        collected.extend(repos.iter().map(|r| r.as_str().unwrap().to_owned()));
        match link {
            Some(link) => {
                assert!(link.ends_with(">; rel=\"next\""), "{link}");
                next = link[1..link.find('>').unwrap()].to_owned();
            }
            None => break,
        }
    }
    assert_eq!(collected, names);
    assert_eq!(next, "/v2/_catalog?n=2&last=org%2Fdb");

    let response = mirror.get("/v2/_catalog?n=x").await;
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "PAGINATION_NUMBER_INVALID");
}

#[tokio::test]
async fn tag_list_comes_from_upstream_with_paging() {
    let up = FakeUpstream::start().await;
    for tag in ["1", "2", "3", "latest"] {
        add_image(&up, "library/alpine", Some(tag), OCI_MANIFEST, "alpine");
    }
    let mirror = MirrorSetup::new(&up.url).start().await;

    let all: serde_json::Value = mirror
        .get("/v2/alpine/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        all,
        serde_json::json!({"name": "library/alpine", "tags": ["1", "2", "3", "latest"]})
    );

    let response = mirror.get("/v2/alpine/tags/list?n=2").await;
    assert_eq!(
        header(&response, "link"),
        "</v2/library/alpine/tags/list?n=2&last=2>; rel=\"next\""
    );
    let page: serde_json::Value = response.json().await.unwrap();
    assert_eq!(page["tags"], serde_json::json!(["1", "2"]));
    let page: serde_json::Value = mirror
        .get("/v2/alpine/tags/list?n=2&last=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["tags"], serde_json::json!(["3", "latest"]));

    let response = mirror.get("/v2/nothing/here/tags/list").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn base_endpoint_announces_the_api_version() {
    let up = FakeUpstream::start().await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    let response = mirror.get("/v2/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(up.seen().len(), 0, "the version check never goes upstream");
}
