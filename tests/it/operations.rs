//! What an operator sees: metrics that move with pulls, readiness that follows storage, a start
//! without upstream that still serves the cache, TLS, and request size limits.

use std::time::Duration;

use crate::common::*;

/// Scrapes until every series has its expected value, and returns that scrape. A response's
/// log line and metrics are recorded when its body ends, a moment after the client has read the
/// last byte, so a single scrape could be early.
async fn expect_metrics(mirror: &Mirror, expected: &[(&str, f64)]) -> Metrics {
    until(
        "the expected metrics",
        Duration::from_secs(10),
        async || {
            let metrics = mirror.metrics().await;
            let wrong: Vec<_> = expected
                .iter()
                .filter(|(series, value)| metrics.value(series) != *value)
                .map(|(series, value)| {
                    format!("{series} = {} (expected {value})", metrics.value(series))
                })
                .collect();
            if wrong.is_empty() {
                Ok(metrics)
            } else {
                Err(format!("{}\n\n{}", wrong.join("\n"), metrics.0))
            }
        },
    )
    .await
}

const MANIFEST_GETS: &str =
    r#"cistern_requests_total{endpoint="manifest",method="GET",status="200"}"#;
const BLOB_GETS: &str = r#"cistern_requests_total{endpoint="blob",method="GET",status="200"}"#;
const UPSTREAM_MANIFEST_GETS: &str = r#"cistern_upstream_requests_total{registry="docker.io",kind="manifest",method="GET",status="200"}"#;
const UPSTREAM_BLOB_GETS: &str = r#"cistern_upstream_requests_total{registry="docker.io",kind="blob",method="GET",status="200"}"#;

#[tokio::test]
async fn metrics_move_as_pulls_happen() {
    let up = FakeUpstream::start().await;
    *up.state.faults.rate_limit.lock().unwrap() = Some((100, 60));
    add_image(
        &up,
        "library/busybox",
        Some("latest"),
        OCI_MANIFEST,
        "metrics",
    );
    let mirror = MirrorSetup::new(&up.url).start().await;

    let before = mirror.metrics().await;
    assert!(
        before.0.contains("# TYPE cistern_fills_in_flight gauge"),
        "{}",
        before.0
    );
    assert_eq!(
        before.value(r#"cistern_upstream_ratelimit_remaining{registry="docker.io"}"#),
        -1.0
    );

    let cold = mirror.pull("library/busybox", "latest").await;
    let total = cold.iter().map(|(_, bytes)| bytes.len()).sum::<usize>() as f64;
    expect_metrics(
        &mirror,
        &[
            (MANIFEST_GETS, 1.0),
            (BLOB_GETS, 3.0),
            (
                r#"cistern_cache_requests_total{registry="docker.io",kind="manifest",outcome="miss"}"#,
                1.0,
            ),
            (
                r#"cistern_cache_requests_total{registry="docker.io",kind="blob",outcome="miss"}"#,
                3.0,
            ),
            (UPSTREAM_MANIFEST_GETS, 1.0),
            (UPSTREAM_BLOB_GETS, 3.0),
            (r#"cistern_upstream_fetched_bytes_total{registry="docker.io"}"#, total),
            (r#"cistern_served_bytes_total{source="upstream"}"#, total),
            (r#"cistern_served_bytes_total{source="cache"}"#, 0.0),
            (
                r#"cistern_upstream_token_fetches_total{registry="docker.io",outcome="issued"}"#,
                1.0,
            ),
            (r#"cistern_upstream_ratelimit_limit{registry="docker.io"}"#, 100.0),
            (r#"cistern_upstream_ratelimit_remaining{registry="docker.io"}"#, 59.0),
            ("cistern_fills_in_flight", 0.0),
        ],
    )
    .await;

    let warm = mirror.pull("library/busybox", "latest").await;
    assert_eq!(warm, cold);
    expect_metrics(
        &mirror,
        &[
            (MANIFEST_GETS, 2.0),
            (BLOB_GETS, 6.0),
            (
                r#"cistern_cache_requests_total{registry="docker.io",kind="manifest",outcome="hit"}"#,
                1.0,
            ),
            (
                r#"cistern_cache_requests_total{registry="docker.io",kind="blob",outcome="hit"}"#,
                3.0,
            ),
            (r#"cistern_served_bytes_total{source="cache"}"#, total),
            (UPSTREAM_MANIFEST_GETS, 1.0),
            (UPSTREAM_BLOB_GETS, 3.0),
            (r#"cistern_upstream_fetched_bytes_total{registry="docker.io"}"#, total),
        ],
    )
    .await;

    let missing = mirror.get_manifest("library/busybox", "nope").await;
    assert_eq!(missing.status(), 404);
    expect_metrics(
        &mirror,
        &[(
            r#"cistern_requests_total{endpoint="manifest",method="GET",status="404"}"#,
            1.0,
        )],
    )
    .await;
}

#[tokio::test]
async fn a_start_without_upstream_serves_the_cache_and_counts_stale_serves() {
    let up = FakeUpstream::start().await;
    add_image(&up, "library/alpine", Some("3.20"), OCI_MANIFEST, "offline");
    let dir = tempfile::tempdir().unwrap();
    let first = MirrorSetup::new(&up.url)
        .storage_dir(dir.path())
        .start()
        .await;
    let cold = first.pull("library/alpine", "3.20").await;
    drop(first);

    // Nothing listens on port 1: upstream is unreachable from the first request on. Distribution
    // refuses to start like this; cistern starts, is ready, and serves what it holds.
    let offline = MirrorSetup::new("http://127.0.0.1:1")
        .storage_dir(dir.path())
        .tag_ttl("0s")
        .start()
        .await;
    let ready = reqwest::get(format!("{}/readyz", offline.debug_url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "upstream is not part of readiness");
    assert_eq!(offline.pull("library/alpine", "3.20").await, cold);
    let m = expect_metrics(
        &offline,
        &[
            (MANIFEST_GETS, 1.0),
            (r#"cistern_stale_serves_total{registry="docker.io",kind="manifest"}"#, 1.0),
            (
                r#"cistern_cache_requests_total{registry="docker.io",kind="manifest",outcome="stale"}"#,
                1.0,
            ),
            (
                r#"cistern_cache_requests_total{registry="docker.io",kind="blob",outcome="hit"}"#,
                3.0,
            ),
        ],
    )
    .await;
    let failed_heads = r#"cistern_upstream_requests_total{registry="docker.io",kind="manifest",method="HEAD",status="error"}"#;
    assert!(m.value(failed_heads) >= 1.0, "{}", m.0);
}

#[tokio::test]
async fn readiness_follows_storage_writability() {
    let up = FakeUpstream::start().await;
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(
            "health:\n  storagedriver:\n    enabled: true\n    interval: 50ms\n    threshold: 2\n",
        )
        .start()
        .await;
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    for base in [&mirror.debug_url, &mirror.url] {
        assert_eq!(status(format!("{base}/healthz")).await, 200);
        assert_eq!(status(format!("{base}/readyz")).await, 200);
    }

    // Even root cannot write below a file: the probe write fails as on a read-only disk.
    let internal = mirror.storage.join("_cistern");
    while !internal.is_file() {
        // The check may recreate the directory between these two calls: then again.
        let _ = std::fs::remove_dir_all(&internal);
        let _ = std::fs::write(&internal, b"not a directory");
    }
    let body = until("readiness to fail", Duration::from_secs(10), async || {
        let response = reqwest::get(format!("{}/readyz", mirror.debug_url))
            .await
            .unwrap();
        if response.status() == 503 {
            Some(response.text().await.unwrap())
        } else {
            None
        }
    })
    .await;
    assert!(body.contains("does not take writes"), "{body}");
    assert!(
        body.contains(&mirror.storage.display().to_string()),
        "names the storage: {body}"
    );
    assert_eq!(status(format!("{}/readyz", mirror.url)).await, 503);
    assert_eq!(
        status(format!("{}/healthz", mirror.url)).await,
        200,
        "still live"
    );
    let m = mirror.metrics().await;
    assert!(
        m.value(r#"cistern_storage_errors_total{operation="health"}"#) >= 2.0,
        "{}",
        m.0
    );

    std::fs::remove_file(&internal).unwrap();
    until(
        "readiness to recover",
        Duration::from_secs(10),
        async || status(format!("{}/readyz", mirror.debug_url)).await == 200,
    )
    .await;
}

/// A CA, and a certificate it signed for 127.0.0.1, as PEM files in `dir`.
fn test_ca(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: a leaf whose issuer equals its subject looks self-signed to OpenSSL.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cistern test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.pem(), cert_path, key_path)
}

#[tokio::test]
async fn tls_serves_a_pull_to_a_client_trusting_the_test_ca() {
    let up = FakeUpstream::start().await;
    add_image(
        &up,
        "library/busybox",
        Some("latest"),
        DOCKER_MANIFEST,
        "tls",
    );
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let mut mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&format!(
            "http:\n  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ))
        .start()
        .await;
    assert!(
        mirror.url.starts_with("https://127.0.0.1:"),
        "{}",
        mirror.url
    );

    let untrusting = reqwest::Client::new();
    assert!(untrusting
        .get(format!("{}/v2/", mirror.url))
        .send()
        .await
        .is_err());
    let plain = mirror.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/v2/"))
        .await
        .map_or(true, |r| r.status() != 200));

    mirror.http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let pulled = mirror.pull("library/busybox", "latest").await;
    assert_eq!(
        pulled.len(),
        4,
        "manifest, config and two layers, digests checked"
    );

    // curl, with the CA file as an operator would pass it (.ci/run installs curl).
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    for (digest, bytes) in &pulled[1..] {
        let output = tokio::process::Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--cacert"])
            .arg(&ca_file)
            .arg(format!("{}/v2/library/busybox/blobs/{digest}", mirror.url))
            .output()
            .await
            .expect("curl is installed");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(&output.stdout[..], &bytes[..], "{digest} through curl");
    }
}

#[tokio::test]
async fn a_start_with_an_unreadable_certificate_names_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let error = start_error(&format!(
        "http:\n  tls:\n    certificate: {0}/missing.pem\n    key: {0}/missing.key\nstorage:\n  inmemory:\n",
        dir.path().display()
    ))
    .await;
    assert!(
        error.contains("missing.pem") && error.contains("http.tls"),
        "{error}"
    );
}

#[tokio::test]
async fn oversized_request_headers_and_uris_are_refused() {
    let up = FakeUpstream::start().await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    let response = mirror
        .http
        .get(format!("{}/v2/", mirror.url))
        .header("x-filler", "a".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let long_name = format!("/v2/{}/manifests/latest", ["a"; 5000].join("/"));
    let response = mirror.get(&long_name).await;
    assert_eq!(response.status(), 414);
    assert_eq!(error_code(response).await, "NAME_INVALID");
    assert_eq!(mirror.get("/v2/").await.status(), 200, "still serving");
    assert_eq!(up.registry_requests(), 0);
}
