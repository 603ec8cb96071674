//! Bad input gets a clear OCI error with the right status, never a panic or an upstream request.

use crate::common::*;

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[tokio::test]
async fn bad_requests_answer_oci_errors_without_asking_upstream() {
    let up = FakeUpstream::start().await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    let long_name = format!("/v2/{}/manifests/latest", "a".repeat(300));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "GET",
            "/v2/UPPER/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/a//b/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        ("GET", "/v2/-a/blobs/sha256:00".into(), 400, "NAME_INVALID"),
        ("GET", long_name, 400, "NAME_INVALID"),
        (
            "GET",
            "/v2/alpine/blobs/sha256:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/alpine/blobs/latest".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "HEAD",
            "/v2/alpine/blobs/md5:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            format!("/v2/alpine/manifests/{}", DIGEST.to_uppercase()),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/alpine/manifests/.bad".into(),
            400,
            "TAG_INVALID",
        ),
        (
            "PUT",
            "/v2/alpine/manifests/latest".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            format!("/v2/alpine/manifests/{DIGEST}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            format!("/v2/alpine/blobs/{DIGEST}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "POST",
            "/v2/alpine/blobs/uploads/".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            "PATCH",
            "/v2/alpine/blobs/uploads/some-uuid".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            "PUT",
            format!("/v2/alpine/blobs/uploads/some-uuid?digest={DIGEST}"),
            405,
            "UNSUPPORTED",
        ),
        ("GET", "/v2/alpine/tags".into(), 404, "UNSUPPORTED"),
        ("GET", "/".into(), 404, "UNSUPPORTED"),
        (
            "GET",
            "/v2/%ff%fe/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        ("GET", "/v2/a/manifests/%00".into(), 400, "TAG_INVALID"),
    ];
    for (method, path, status, code) in cases {
        let response = mirror
            .http
            .request(method.parse().unwrap(), format!("{}{path}", mirror.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert_eq!(header(&response, "content-type"), "application/json");
        if method != "HEAD" {
            assert_eq!(error_code(response).await, code, "{method} {path}");
        }
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn unknown_content_answers_the_specific_unknown_code() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).start().await;
    let cases = [
        ("/v2/alpine/manifests/nope".to_owned(), "MANIFEST_UNKNOWN"),
        (format!("/v2/alpine/manifests/{DIGEST}"), "MANIFEST_UNKNOWN"),
        (format!("/v2/alpine/blobs/{DIGEST}"), "BLOB_UNKNOWN"),
        ("/v2/no/such/tags/list".to_owned(), "NAME_UNKNOWN"),
    ];
    for (path, code) in cases {
        let response = mirror.get(&path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(error_code(response).await, code, "{path}");
    }
}
