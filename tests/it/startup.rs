//! The `cistern` binary: a registry:2 proxy config starts it unchanged; a typo stops it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("config.yml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn distribution_proxy_config_runs_unchanged() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "private/secret", Some("1.0"), OCI_MANIFEST, "secret");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let debug_port = free_port();
    // Distribution's documented proxy example, with our local upstream and a temp root.
    let config = write_config(
        dir.path(),
        &format!(
            r#"version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
  debug:
    addr: 127.0.0.1:{debug_port}
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: {remote}
  username: {USER}
  password: {PASSWORD}
"#,
            root = dir.path().join("storage").display(),
            remote = up.url,
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_cistern"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "cistern=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let response = until("cistern to listen", Duration::from_secs(20), async || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "cistern exited at start"
        );
        http.get(format!("{url}/v2/")).send().await.ok()
    })
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    let response = http
        .get(format!("{url}/v2/private/secret/manifests/1.0"))
        .header("accept", DOCKER_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "docker-content-digest"), image.digest);

    child.kill().unwrap();
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child.wait().unwrap();
    for key in ["log.fields", "storage.cache"] {
        assert_eq!(
            output.matches(&format!("`{key}`")).count(),
            1,
            "one warning for {key}:\n{output}"
        );
    }
    assert!(
        !output.contains(PASSWORD),
        "the password never reaches the log:\n{output}"
    );
    assert!(
        !output.contains("fake-token-"),
        "nor the upstream token:\n{output}"
    );
}

#[test]
fn unknown_keys_and_bad_values_stop_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "proxy:\n  remoteurl: http://127.0.0.1:1\n  tagtll: 5m\n",
            "proxy.tagtll",
        ),
        ("proxy:\n  tagttl: soon\n", "proxy.tagttl"),
        ("http:\n  addr: nowhere\n", "http.addr"),
    ];
    for (text, key) in cases {
        let config = write_config(dir.path(), text);
        let output = Command::new(env!("CARGO_BIN_EXE_cistern"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{key} named in: {stderr}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_cistern"))
        .arg("--config")
        .arg(dir.path().join("missing.yml"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.yml"));
}

#[test]
fn help_explains_the_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_cistern"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--config"), "{help}");
    assert!(help.contains("registry-mirrors"), "{help}");
}

/// A config that binds `http.addr` on 127.0.0.1:0 with this `http.debug` section.
fn config_with_debug(debug_yaml: &str) -> cistern::config::Config {
    cistern::config::Config::from_yaml(
        &format!("http:\n  addr: 127.0.0.1:0\n{debug_yaml}storage:\n  inmemory:\n"),
        Vec::new(),
    )
    .unwrap()
    .config
}

#[tokio::test]
async fn a_taken_default_debug_address_is_skipped_but_a_taken_configured_one_is_fatal() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap().to_string();

    // The default address (DEFAULT_DEBUG_ADDR), pointed at the held port: the test cannot rely
    // on what holds 127.0.0.1:5001.
    let mut config = config_with_debug("");
    let debug = config.http.debug.as_mut().unwrap();
    assert!(!debug.addr_configured);
    debug.addr = held_addr.clone();
    let listeners = cistern::server::Listeners::bind(&config.http)
        .await
        .expect("a registry:2 config starts whatever holds the default debug port");
    assert!(listeners.debug.is_none());

    let config = config_with_debug(&format!("  debug:\n    addr: {held_addr}\n"));
    let error = cistern::server::Listeners::bind(&config.http)
        .await
        .err()
        .expect("an address the operator asked for must bind")
        .to_string();
    assert!(
        error.contains("http.debug.addr") && error.contains(&held_addr),
        "{error}"
    );
}

#[tokio::test]
async fn a_registry2_config_starts_while_the_default_debug_port_is_taken() {
    // Hold the default debug port; if it cannot be bound, something else holds it already,
    // which is the case under test as well.
    let default = cistern::config::DEFAULT_DEBUG_ADDR;
    let _held = std::net::TcpListener::bind(default);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "version: 0.1\nhttp:\n  addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: http://127.0.0.1:1\n",
            dir.path().join("storage").display()
        ),
    );
    let cistern = crate::common::binary::Binary::start(&config).await;
    assert_eq!(
        reqwest::get(format!("{}/v2/", cistern.url))
            .await
            .unwrap()
            .status(),
        200
    );
    let log = cistern.log_text();
    assert!(
        log.contains("http.debug.addr") && log.contains("starting without the debug listener"),
        "the skipped debug listener is a warning naming the key:\n{log}"
    );
}
