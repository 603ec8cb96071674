//! The request log as an operator ships it: `log.formatter: json`, one line per request with
//! its id, and no secret anywhere (upstream password, upstream tokens, client credentials).

use std::time::Duration;

use crate::common::binary::Binary;
use crate::common::*;
use base64::Engine as _;
use serde_json::Value;

const CLIENT_SECRET: &str = "client-secret-pw";

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_request_fields_and_never_a_secret() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "private/secret", Some("1.0"), OCI_MANIFEST, "logs");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: debug\n  formatter: json\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: {}\n  username: {USER}\n  password: {PASSWORD}\n",
            dir.path().join("storage").display(),
            up.url
        ),
    )
    .unwrap();
    let mut cistern = Binary::start(&config).await;
    let http = reqwest::Client::new();

    // A client that sends credentials (as a logged-in docker does) and a load balancer's id.
    let manifest = http
        .get(format!("{}/v2/private/secret/manifests/1.0", cistern.url))
        .header("accept", DOCKER_ACCEPT)
        .header("x-request-id", "pull-42")
        .header(
            "authorization",
            format!("Basic {}", basic("ci-bot", CLIENT_SECRET)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(header(&manifest, "x-request-id"), "pull-42");
    let manifest_len = manifest.bytes().await.unwrap().len();

    let blob = http
        .get(format!(
            "{}/v2/private/secret/blobs/{}",
            cistern.url, image.blobs[2]
        ))
        .send()
        .await
        .unwrap();
    let blob_id = header(&blob, "x-request-id");
    assert_eq!(blob_id.len(), 16, "a generated id: {blob_id}");
    let blob_len = blob.bytes().await.unwrap().len();

    let line = cistern.request_line("pull-42").await;
    assert_eq!(line["message"], "request");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/v2/private/secret/manifests/1.0");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], manifest_len as u64);
    assert_eq!(line["cache"], "miss");
    assert_eq!(line["client"], "127.0.0.1");
    assert!(line["elapsed_ms"].as_f64().is_some(), "{line}");
    let line = cistern.request_line(&blob_id).await;
    assert_eq!(
        (line["bytes"].as_u64(), &line["cache"]),
        (Some(blob_len as u64), &Value::from("miss"))
    );

    cistern.terminate();
    assert!(cistern.exit_status(Duration::from_secs(20)).await.success());
    let log = cistern.log_text();
    for line in cistern.log_lines() {
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    for secret in [
        PASSWORD.to_owned(),
        basic(USER, PASSWORD),
        "fake-token-".to_owned(),
        CLIENT_SECRET.to_owned(),
        basic("ci-bot", CLIENT_SECRET),
    ] {
        assert!(
            !log.contains(&secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}

#[test]
fn configuration_debug_output_hides_the_upstream_password() {
    let loaded = cistern::config::Config::from_yaml(
        &format!(
            "proxy:\n  remoteurl: https://r.example\n  username: {USER}\n  password: {PASSWORD}\n"
        ),
        Vec::new(),
    )
    .unwrap();
    let debug = format!("{loaded:?}");
    assert!(debug.contains(USER));
    assert!(!debug.contains(PASSWORD), "{debug}");
}
