//! The status page and its JSON API: the figures equal the Prometheus metrics after real pulls,
//! a fill in progress shows its bytes growing, repositories are searched and paged, the main
//! listener's view (`http.statuspage`) shows a viewer only what it may pull, and a hostile
//! query gets a clear error. No answer carries a secret.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use serde_json::Value;

use crate::common::*;

const KIB: u64 = 1024;

async fn json(url: &str) -> Value {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(header(&response, "cache-control"), "no-store", "{url}");
    response.json().await.unwrap()
}

/// Polls `check` until it returns Some, failing after 20 s.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a tag record for each of `names` into a store, as a mirror that cached them would
/// have, so a mirror started on it lists them.
fn seed_repositories(root: &std::path::Path, names: &[String]) {
    for name in names {
        let dir = root.join("repositories").join(name).join("_tags");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("v1"), b"{}").unwrap();
    }
}

fn names(page: &Value) -> Vec<String> {
    page["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_figures_equal_the_metrics_after_real_pulls() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "team/app", Some("v1"), OCI_MANIFEST, "figures");
    let mirror = MirrorSetup::new(&up.url).start().await;
    mirror.pull("team/app", "v1").await;
    mirror.pull("team/app", "v1").await;
    // Each pull is a manifest and three blobs; the request log counts each when its body ends.
    let metrics = eventually("8 cache requests counted", || async {
        let m = mirror.metrics().await;
        (m.sum("cistern_cache_requests_total", &[]) == 8.0).then_some(m)
    })
    .await;
    let summary = json(&format!("{}/api/summary", mirror.debug_url)).await;
    let metric = |name: &str, labels: &[(&str, &str)]| metrics.sum(name, labels) as u64;
    let answers = &summary["answers"];
    assert_eq!(answers["requests"], 8);
    assert_eq!(
        answers["miss"],
        metric("cistern_cache_requests_total", &[("outcome", "miss")])
    );
    assert_eq!(
        answers["hit"],
        metric("cistern_cache_requests_total", &[("outcome", "hit")])
    );
    assert_eq!(answers["from_cache"], answers["hit"]);
    assert_eq!(answers["miss"], 4, "the first pull fetched everything");
    assert_eq!(answers["upstream_requests_avoided"], 4);
    assert_eq!(answers["hit_ratio"], 0.5);
    assert_eq!(
        summary["served_bytes_from_cache"],
        metric("cistern_served_bytes_total", &[("source", "cache")])
    );
    assert_eq!(
        summary["served_bytes_from_upstream"],
        metric("cistern_served_bytes_total", &[("source", "upstream")])
    );
    let registry = &summary["registries"][0];
    assert_eq!(registry["registry"], "docker.io");
    assert_eq!(
        registry["upstream_requests"],
        metric("cistern_upstream_requests_total", &[])
    );
    assert_eq!(
        registry["upstream_fetched_bytes"],
        metric("cistern_upstream_fetched_bytes_total", &[])
    );
    assert_eq!(registry["upstream_errors"], 0);
    // The size the page shows is the one the scrape after it shows.
    let after = mirror.metrics().await;
    assert_eq!(
        summary["storage"]["used_bytes"],
        after.sum("cistern_cache_bytes", &[]) as u64
    );
    let stored: u64 = image
        .blobs
        .iter()
        .map(|d| std::fs::metadata(mirror.content_path(d)).unwrap().len())
        .sum::<u64>()
        + std::fs::metadata(mirror.content_path(&image.digest))
            .unwrap()
            .len();
    assert_eq!(summary["storage"]["used_bytes"], stored);

    let page = json(&format!("{}/api/repositories?q=app", mirror.debug_url)).await;
    assert_eq!(page["total"], 1);
    let repo = &page["repositories"][0];
    assert_eq!(repo["name"], "team/app");
    assert_eq!(repo["tags"], serde_json::json!(["v1"]));
    assert_eq!(repo["bytes"], stored);
    assert_eq!(repo["pulls"], 2);
    assert!(repo["last_pulled"].as_str().unwrap().ends_with('Z'));

    // The page itself carries the figures, before its script runs.
    let page = reqwest::get(format!("{}/", mirror.debug_url))
        .await
        .unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"id="requests">8<"#), "{page}");
    assert!(page.contains(r#"id="hit-ratio">50.0 %<"#), "{page}");

    let history = json(&format!("{}/api/history", mirror.debug_url)).await;
    assert_eq!(history["now"]["requests"], 8);
    assert_eq!(
        history["now"]["served_bytes_from_cache"],
        summary["served_bytes_from_cache"]
    );
}

#[tokio::test]
async fn a_fill_in_progress_shows_its_bytes_growing_then_goes() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "team/slow", Some("v1"), OCI_MANIFEST, "slow");
    let large = image.blobs[2].clone();
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(
        &large,
        Fault::Slow {
            bytes_per_sec: 512 * KIB,
        },
        1,
    );
    let mirror = MirrorSetup::new(&proxy.url).start().await;
    let response = mirror.get(&format!("/v2/team/slow/blobs/{large}")).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while let Some(chunk) = body.next().await {
            received += chunk.unwrap().len();
        }
        received
    });
    let fills_url = format!("{}/api/fills", mirror.debug_url);
    let fill_of = |fills: Value| {
        fills["fills"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["digest"] == large.as_str())
            .cloned()
    };
    let first = eventually("the fill with some bytes", || async {
        fill_of(json(&fills_url).await).filter(|f| f["bytes"].as_u64() > Some(0))
    })
    .await;
    assert_eq!(first["repository"], "team/slow");
    assert_eq!(first["total"], 3 * 1024 * 1024 + 17);
    assert_eq!(first["state"], "receiving");
    assert_eq!(first["clients"], 1);
    let grown = eventually("the fill's bytes to grow", || async {
        fill_of(json(&fills_url).await).filter(|f| f["bytes"].as_u64() > first["bytes"].as_u64())
    })
    .await;
    assert!(grown["bytes_per_second"].as_f64().unwrap() > 0.0);
    let summary = json(&format!("{}/api/summary", mirror.debug_url)).await;
    assert_eq!(summary["fills_in_flight"], 1);
    assert_eq!(reader.await.unwrap(), 3 * 1024 * 1024 + 17);
    eventually("the fill to be gone", || async {
        fill_of(json(&fills_url).await).is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn repositories_are_searched_and_paged() {
    let up = FakeUpstream::start().await;
    let store = tempfile::tempdir().unwrap();
    let all: Vec<String> = (0..120).map(|i| format!("team/app-{i:03}")).collect();
    seed_repositories(store.path(), &all);
    seed_repositories(store.path(), &["other/db".to_owned()]);
    let mirror = MirrorSetup::new(&up.url)
        .storage_dir(store.path())
        .start()
        .await;
    let url = |query: &str| format!("{}/api/repositories?{query}", mirror.debug_url);
    let first = eventually("the index to be built", || async {
        let page = json(&url("q=app-&per_page=50")).await;
        (page["complete"] == true).then_some(page)
    })
    .await;
    assert_eq!(first["total"], 120);
    assert_eq!(names(&first), all[..50]);
    let third = json(&url("q=app-&per_page=50&page=3")).await;
    assert_eq!(names(&third), all[100..]);
    let past = json(&url("q=app-&per_page=50&page=4")).await;
    assert_eq!((past["total"].clone(), names(&past).len()), (120.into(), 0));
    let found = json(&url("q=app-01")).await;
    assert_eq!(names(&found), all[10..20]);
    let db = json(&url("q=db")).await;
    assert_eq!(names(&db), ["other/db"]);
    assert_eq!(json(&url("")).await["total"], 121);
    assert_eq!(
        up.registry_requests(),
        0,
        "the listing asks upstream nothing"
    );
}

#[tokio::test]
async fn hostile_queries_get_a_clear_error() {
    let up = FakeUpstream::start().await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    for (query, expected) in [
        (
            "per_page=100000000",
            "per_page=\"100000000\" must be a whole number from 1 to 200",
        ),
        (
            "page=0",
            "page=\"0\" must be a whole number from 1 to 1000000",
        ),
        ("page=abc", "page=\"abc\" must be"),
        ("page=99999999999999999999999999", "must be a whole number"),
        ("order=name", "unknown parameter \"order\""),
        (
            &format!("q={}", "x".repeat(5000)),
            "q is longer than 256 characters",
        ),
    ] {
        let response = reqwest::get(format!("{}/api/repositories?{query}", mirror.debug_url))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(expected), "{query}: {message}");
    }
}

fn htpasswd_yaml(dir: &std::path::Path, user: &str, password: &str) -> String {
    htpasswd_section(dir, "status-test", user, password)
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

#[tokio::test]
async fn the_main_listener_shows_a_viewer_only_what_it_may_pull() {
    let up = FakeUpstream::start().await;
    add_image(&up, "public/app", Some("v1"), OCI_MANIFEST, "public");
    let store = tempfile::tempdir().unwrap();
    seed_repositories(store.path(), &["private/secret".to_owned()]);
    let auth = tempfile::tempdir().unwrap();
    let mirror = MirrorSetup::new(&up.url)
        .storage_dir(store.path())
        .extra_yaml(&htpasswd_yaml(auth.path(), "viewer", "let-me-see"))
        .extra_yaml(
            "access:\n  repositories:\n    deny: ['private/*']\nhttp:\n  statuspage: true\n",
        )
        .start()
        .await;
    let client = reqwest::Client::new();
    let as_viewer = |path: &str| {
        client
            .get(format!("{}{path}", mirror.url))
            .header("authorization", basic("viewer", "let-me-see"))
            .send()
    };
    // A pull of the public image, and one of the private name (refused: a problem).
    let authorized = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                basic("viewer", "let-me-see").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    pull(&authorized, &mirror.url, "public/app", "v1", "").await;
    let refused = as_viewer("/v2/private/secret/manifests/v1").await.unwrap();
    assert_eq!(refused.status(), 403);

    // Without credentials: the page and its API are refused, as the registry API would be.
    for path in [
        "/_cistern/",
        "/_cistern/api/summary",
        "/_cistern/api/repositories",
    ] {
        let response = mirror.get(path).await;
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(
            header(&response, "www-authenticate"),
            r#"Basic realm="status-test""#
        );
    }
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/_cistern", mirror.url))
        .header("authorization", basic("viewer", "let-me-see"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&redirect, "location"), "/_cistern/");
    let page = as_viewer("/_cistern/").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(header(&page, "content-security-policy").contains("default-src 'none'"));
    assert!(page.text().await.unwrap().contains("Cached repositories"));

    // The operator on the debug listener sees every repository and problem.
    let operator = eventually("both repositories on the debug listener", || async {
        let page = json(&format!("{}/api/repositories", mirror.debug_url)).await;
        (page["total"] == 2).then_some(page)
    })
    .await;
    assert_eq!(names(&operator), ["private/secret", "public/app"]);
    let problems = json(&format!("{}/api/problems", mirror.debug_url)).await;
    let refusal = &problems["problems"][0];
    assert_eq!(refusal["kind"], "refused_client");
    assert_eq!(refusal["repository"], "private/secret");

    // The viewer sees neither the private repository nor its problem.
    let viewer: Value = as_viewer("/_cistern/api/repositories")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(&viewer), ["public/app"]);
    assert_eq!(viewer["total"], 1);
    let searched: Value = as_viewer("/_cistern/api/repositories?q=secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(searched["total"], 0);
    let text = as_viewer("/_cistern/api/problems")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("private/secret"), "{text}");
    let summary: Value = as_viewer("/_cistern/api/summary")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["answers"]["miss"], 4);
}

#[tokio::test]
async fn the_main_listener_has_no_status_page_unless_configured() {
    let up = FakeUpstream::start().await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    for path in ["/_cistern/", "/_cistern/api/summary"] {
        assert_eq!(mirror.get(path).await.status(), 404, "{path}");
    }
    let page = reqwest::get(format!("{}/", mirror.debug_url))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    for asset in ["/status.js", "/status.css"] {
        let response = reqwest::get(format!("{}{asset}", mirror.debug_url))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
    }
}

#[tokio::test]
async fn no_answer_carries_a_secret() {
    let up = FakeUpstream::start().await;
    add_image(&up, "team/app", Some("v1"), OCI_MANIFEST, "secrets");
    let auth = tempfile::tempdir().unwrap();
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&htpasswd_yaml(auth.path(), "viewer", "client-secret-pw"))
        .extra_yaml("http:\n  statuspage: true\n")
        .start()
        .await;
    let authorization = basic("viewer", "client-secret-pw");
    let client = reqwest::Client::new();
    let get = |url: String| {
        client
            .get(url)
            .header("authorization", &authorization)
            .send()
    };
    assert_eq!(
        get(format!("{}/v2/team/app/manifests/v1", mirror.url))
            .await
            .unwrap()
            .status(),
        200
    );
    // Problems: a wrong password, and an upstream that is down for a cold tag.
    let wrong = client
        .get(format!("{}/v2/", mirror.url))
        .header("authorization", basic("viewer", "a-wrong-guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    up.set_down(true);
    let down = get(format!("{}/v2/team/other/manifests/v1", mirror.url))
        .await
        .unwrap();
    assert!(down.status().is_server_error(), "{}", down.status());
    let problems = eventually("two problems", || async {
        let p = json(&format!("{}/api/problems", mirror.debug_url)).await;
        (p["problems"].as_array().unwrap().len() >= 2).then_some(p)
    })
    .await;
    let kinds: Vec<&str> = problems["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"refused_client") && kinds.contains(&"upstream"),
        "{kinds:?}"
    );

    let paths = [
        "/",
        "/status.js",
        "/api/summary",
        "/api/history",
        "/api/fills",
        "/api/repositories",
        "/api/problems",
    ];
    let mut answers = Vec::new();
    for path in paths {
        answers.push(
            reqwest::get(format!("{}{path}", mirror.debug_url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        answers.push(
            get(format!("{}/_cistern{path}", mirror.url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    let hash = std::fs::read_to_string(auth.path().join("htpasswd")).unwrap();
    let hash = hash.trim().split_once(':').unwrap().1.to_owned();
    for text in &answers {
        for secret in [
            PASSWORD,
            "client-secret-pw",
            "a-wrong-guess",
            hash.as_str(),
            &up.token_prefix(),
        ] {
            assert!(!text.contains(secret), "an answer shows {secret:?}: {text}");
        }
    }
}

#[tokio::test]
async fn a_digest_mismatch_is_a_problem_with_its_repository() {
    let up = FakeUpstream::start().await;
    let image = add_image(&up, "team/corrupt", Some("v1"), OCI_MANIFEST, "corrupt");
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(&image.blobs[2], Fault::Corrupt, 1);
    let mirror = MirrorSetup::new(&proxy.url).start().await;
    let response = mirror
        .get(&format!("/v2/team/corrupt/blobs/{}", image.blobs[2]))
        .await;
    assert!(
        response.bytes().await.is_err(),
        "the body must not complete"
    );
    let problems_url = format!("{}/api/problems", mirror.debug_url);
    let problem = eventually("the mismatch among the problems", || async {
        json(&problems_url).await["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == "digest_mismatch")
            .cloned()
    })
    .await;
    assert_eq!(problem["repository"], "team/corrupt");
    let message = problem["message"].as_str().unwrap();
    assert!(message.contains(&image.blobs[2]), "{message}");
    assert!(message.contains("does not match its digest"), "{message}");
    assert!(problem["time"].as_str().unwrap().ends_with('Z'));
}
