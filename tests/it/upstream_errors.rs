//! What a client sees when upstream refuses or fails: a clear OCI error naming the upstream.

use crate::common::*;

#[tokio::test]
async fn upstream_failures_map_to_clear_errors() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).start().await;
    let cases = [
        (429, Some("120"), 429, "TOOMANYREQUESTS"),
        (500, None, 503, "UNAVAILABLE"),
        (502, None, 503, "UNAVAILABLE"),
        (403, None, 403, "DENIED"),
    ];
    for (upstream_status, retry_after, status, code) in cases {
        *up.state.faults.status.lock().unwrap() =
            Some((upstream_status, retry_after.map(str::to_owned)));
        let response = mirror.get_manifest("alpine", "latest").await;
        assert_eq!(response.status(), status, "upstream {upstream_status}");
        if let Some(after) = retry_after {
            assert_eq!(header(&response, "retry-after"), after);
        }
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["code"], code,
            "upstream {upstream_status}"
        );
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(&up.url), "{message}");
        assert!(message.contains(&upstream_status.to_string()), "{message}");
    }
}

#[tokio::test]
async fn refused_credentials_are_denied_and_say_which_keys_to_check() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "storage: {{filesystem: {{rootdirectory: {}}}}}\nproxy: {{remoteurl: {}, username: {USER}, password: wrong}}\n",
        dir.path().display(),
        up.url
    );
    let config = cistern::config::Config::from_yaml(&yaml, Vec::new())
        .unwrap()
        .config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { cistern::serve(&config, listener, std::future::pending()).await });
    let response = reqwest::get(format!("{url}/v2/alpine/manifests/latest"))
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("proxy.password"), "{message}");
    assert!(
        !message.contains("wrong"),
        "the password is never echoed: {message}"
    );
}

#[tokio::test]
async fn manifests_over_4_mib_are_refused_even_without_a_content_length() {
    let up = FakeUpstream::start().await;
    let padding = "x".repeat(4 * 1024 * 1024);
    let huge = format!(r#"{{"schemaVersion":2,"annotations":{{"padding":"{padding}"}}}}"#);
    let digest = up.add_manifest("org/huge", Some("big"), OCI_MANIFEST, huge.as_bytes());
    let proxy = FaultProxy::start(&up.url).await;
    let mirror = MirrorSetup::new(&proxy.url).start().await;

    // With Content-Length, then chunked (the proxy drops the length and streams it all).
    for chunked in [false, true] {
        if chunked {
            proxy.inject("/manifests/", Fault::Truncate(u64::MAX), 10);
        }
        for reference in ["big", digest.as_str()] {
            let response = mirror.get_manifest("org/huge", reference).await;
            assert_eq!(response.status(), 502, "chunked: {chunked}, {reference}");
            let body: serde_json::Value = response.json().await.unwrap();
            let message = body["errors"][0]["message"].as_str().unwrap().to_owned();
            assert!(
                message.contains("larger than 4194304 bytes")
                    && message.contains(&format!("org/huge/manifests/{reference}")),
                "{message}"
            );
        }
    }
    assert!(!mirror.has_content(&digest), "nothing cached");
}
