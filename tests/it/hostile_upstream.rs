//! Upstreams, redirect targets and token services that lie, stall or flood: what the mirror
//! sends them, what it keeps, and what a client is told.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt as _;
use http::{header, HeaderMap, StatusCode};
use serde_json::Value;

use crate::common::hostile::{self, challenge, has_token, Hostile, MANIFEST, TOKEN};
use crate::common::*;

/// A registry (with its token service at `/token`) whose `evil/app` manifests and blobs
/// redirect to `target`.
async fn redirecting_registry(target: &str) -> Hostile {
    let target = target.to_owned();
    Hostile::start(move |url| {
        let redirect = move |headers: HeaderMap| {
            let target = target.clone();
            async move {
                if !has_token(&headers) {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, format!("{target}/redirected?sig=x"))],
                )
                    .into_response()
            }
        };
        hostile::registry(&format!("{url}/token"))
            .route("/token", get(hostile::token_service))
            .route("/v2/evil/app/manifests/latest", get(redirect.clone()))
            .route("/v2/evil/app/blobs/{digest}", get(redirect))
    })
    .await
}

#[tokio::test]
async fn a_redirect_targets_challenge_never_gets_the_credentials() {
    // Answers everything with a challenge naming its own token endpoint, and hands out
    // "tokens" to whoever asks.
    let thief = Hostile::start(|url| {
        let steal_realm = format!("{url}/steal");
        Router::new()
            .route("/steal", get(|| async { r#"{"token":"stolen"}"# }))
            .fallback(move || {
                let realm = steal_realm.clone();
                async move { challenge(&realm) }
            })
    })
    .await;
    let up = redirecting_registry(&thief.url).await;
    let mirror = MirrorSetup::new(&up.url).start().await;

    let manifest = mirror.get_manifest("evil/app", "latest").await;
    let (status, code, message) = error_of(manifest).await;
    assert_eq!((status, code.as_str()), (502, "UNKNOWN"), "{message}");
    assert!(
        message.contains(&format!("{}/redirected", thief.url)),
        "{message}"
    );
    assert!(
        !message.contains("sig=x"),
        "no signed query in messages: {message}"
    );
    let digest = sha256(b"a layer");
    let blob = mirror.get(&format!("/v2/evil/app/blobs/{digest}")).await;
    assert_eq!(blob.status(), 502);

    // Ordinary requests afterwards still answer upstream's own challenge, not the thief's.
    let good = mirror.get_manifest("good/app", "latest").await;
    assert_eq!(good.status(), 200);
    assert_eq!(good.bytes().await.unwrap(), MANIFEST.as_bytes());

    assert!(
        thief.requests_to("/redirected").len() >= 2,
        "the redirects were followed"
    );
    assert!(thief.requests_to("/steal").is_empty(), "{:?}", thief.seen());
    assert!(
        thief.seen().iter().all(|s| s.authorization.is_none()),
        "the redirect target saw credentials or a token: {:?}",
        thief.seen()
    );
    let token_requests = up.requests_to("/token");
    assert!(!token_requests.is_empty());
    assert!(token_requests.iter().all(|s| s
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic "))));
}

/// A registry whose token service (at `/token`) answers with `token`.
async fn registry_with_token_service<H, T>(token: H) -> Hostile
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    Hostile::start(|url| hostile::registry(&format!("{url}/token")).route("/token", get(token)))
        .await
}

#[tokio::test]
async fn absurd_or_unreadable_token_lifetimes_keep_the_token() {
    for expires_in in ["18446744073709551615", "-5", "12.5", "1e300", "\"soon\""] {
        let up = registry_with_token_service(move || async move {
            format!(r#"{{"token":"{TOKEN}","expires_in":{expires_in}}}"#)
        })
        .await;
        let mirror = MirrorSetup::new(&up.url).tag_ttl("0").start().await;
        for _ in 0..3 {
            let response = mirror.get_manifest("good/app", "latest").await;
            assert_eq!(response.status(), 200, "expires_in {expires_in}");
        }
        assert_eq!(
            up.requests_to("/token").len(),
            1,
            "expires_in {expires_in}: one token serves every request"
        );
    }
}

#[tokio::test]
async fn a_failing_token_service_is_unavailable_not_a_credentials_problem() {
    // (token service answer, client status, OCI code, text the message must hold)
    let cases: [(u16, u16, &str, &str); 4] = [
        (500, 503, "UNAVAILABLE", "500"),
        (503, 503, "UNAVAILABLE", "503"),
        (401, 403, "DENIED", "proxy.password"),
        (403, 403, "DENIED", "proxy.password"),
    ];
    for (token_status, status, code, detail) in cases {
        let up = registry_with_token_service(move || async move {
            StatusCode::from_u16(token_status).unwrap()
        })
        .await;
        let mirror = MirrorSetup::new(&up.url).start().await;
        let (got_status, got_code, message) =
            error_of(mirror.get_manifest("good/app", "latest").await).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "token service {token_status}: {message}"
        );
        assert!(message.contains(&format!("{}/token", up.url)), "{message}");
        assert!(message.contains(detail), "{message}");
        let says_check_password = message.contains("proxy.password");
        assert_eq!(says_check_password, status == 403, "{message}");
    }
}

#[tokio::test]
async fn a_token_body_that_breaks_off_is_unavailable() {
    // Announces 100 bytes, sends 10, closes. (Raw: hyper would not send the head of a
    // response whose body fails before its first write.)
    let token_url = hostile::raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\
          connection: close\r\n\r\n{\"token\":\""
            .to_vec(),
    )
    .await;
    let up = Hostile::start(|_| hostile::registry(&token_url)).await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    let (status, code, message) = error_of(mirror.get_manifest("good/app", "latest").await).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"), "{message}");
    assert!(message.contains(&token_url), "{message}");
    assert!(message.contains("broke off"), "{message}");
}

#[tokio::test]
async fn a_token_service_that_stalls_mid_body_is_unavailable() {
    let up = registry_with_token_service(|| async {
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
            b"{\"token\":\"",
        ))])
        .chain(futures::stream::pending());
        ([(header::CONTENT_LENGTH, "100")], Body::from_stream(stream))
    })
    .await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    // The mirror's own deadline for small answers (30 s) ends the wait, not this one.
    let response = tokio::time::timeout(
        Duration::from_secs(90),
        mirror.get_manifest("good/app", "latest"),
    )
    .await
    .expect("the mirror answers within its deadline");
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"), "{message}");
    assert!(message.contains(&format!("{}/token", up.url)), "{message}");
    assert!(message.contains("timed out"), "{message}");
}

#[tokio::test]
async fn oversized_token_responses_are_refused() {
    let up = registry_with_token_service(|| async {
        let padding = "x".repeat(1024 * 1024);
        format!(r#"{{"token":"{TOKEN}","padding":"{padding}"}}"#)
    })
    .await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    let (status, code, message) = error_of(mirror.get_manifest("good/app", "latest").await).await;
    assert_eq!((status, code.as_str()), (502, "UNKNOWN"), "{message}");
    assert!(message.contains(&format!("{}/token", up.url)), "{message}");
    assert!(message.contains("larger than 65536 bytes"), "{message}");
}

#[tokio::test]
async fn a_huge_tag_list_is_refused_while_it_streams() {
    let up = Hostile::start(|_| {
        Router::new()
            .route("/v2/", get(|| async { StatusCode::OK }))
            .route(
                "/v2/big/app/tags/list",
                get(|| async {
                    // 64 MiB of tags, chunked (no Content-Length), ignoring `n`.
                    let head = futures::stream::once(async {
                        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"tags\":[\"t\""))
                    });
                    let chunk = bytes::Bytes::from(",\"tag-padding\"".repeat(64 * 1024));
                    let tail = futures::stream::repeat_with(move || Ok(chunk.clone())).take(75);
                    Body::from_stream(head.chain(tail))
                }),
            )
    })
    .await;
    let mirror = MirrorSetup::new(&up.url).anonymous().start().await;
    let (status, code, message) = error_of(mirror.get("/v2/big/app/tags/list").await).await;
    assert_eq!((status, code.as_str()), (502, "UNKNOWN"), "{message}");
    assert!(
        message.contains(&format!("{}/v2/big/app/tags/list", up.url)),
        "{message}"
    );
    assert!(message.contains("larger than 4194304 bytes"), "{message}");
}

#[derive(serde::Deserialize)]
struct PageQuery {
    n: Option<usize>,
    last: Option<String>,
}

/// Tag `i` of an endless list, in lexical order.
fn endless_tag(i: usize) -> String {
    format!("t{i:09}")
}

/// An endless tag list: every page holds `n` (at most 1000) more tags and links the next.
async fn endless_page(Query(page): Query<PageQuery>) -> Response {
    let first = page
        .last
        .and_then(|l| l.strip_prefix('t')?.parse::<usize>().ok())
        .map_or(0, |l| l + 1);
    let n = page.n.unwrap_or(1000).min(1000);
    let tags: Vec<String> = (first..first + n).map(endless_tag).collect();
    let link = format!(
        "</v2/endless/app/tags/list?n={n}&last={}>; rel=\"next\"",
        tags.last().unwrap()
    );
    (
        [(header::LINK, link)],
        axum::Json(serde_json::json!({ "name": "endless/app", "tags": tags })),
    )
        .into_response()
}

#[tokio::test]
async fn long_tag_lists_are_read_page_by_page_up_to_a_cap() {
    let up = Hostile::start(|_| {
        Router::new()
            .route("/v2/", get(|| async { StatusCode::OK }))
            .route("/v2/endless/app/tags/list", get(endless_page))
    })
    .await;
    let mirror = MirrorSetup::new(&up.url).anonymous().start().await;

    // No `n`: pages are followed up to the cap, and the answer links on from there.
    let response = mirror.get("/v2/endless/app/tags/list").await;
    assert_eq!(response.status(), 200);
    let link = header(&response, "link");
    let body: Value = response.json().await.unwrap();
    let tags = body["tags"].as_array().unwrap();
    assert_eq!(tags.len(), cistern::upstream::MAX_TAGS);
    assert_eq!(tags[0], endless_tag(0));
    assert_eq!(
        tags[tags.len() - 1],
        endless_tag(cistern::upstream::MAX_TAGS - 1)
    );
    let pages = up.requests_to("/v2/endless/app/tags/list");
    assert_eq!(
        pages.len(),
        cistern::upstream::MAX_TAGS / cistern::upstream::TAG_PAGE_SIZE
    );
    assert!(pages.iter().all(|p| p.path.contains("n=1000")), "{pages:?}");
    let last = endless_tag(cistern::upstream::MAX_TAGS - 1);
    assert!(link.contains(&format!("last={last}")), "{link}");

    // The client's `n` is the page size upstream is asked for: one request.
    let before = up.requests_to("/v2/endless/app/tags/list").len();
    let response = mirror
        .get(&format!("/v2/endless/app/tags/list?n=5&last={last}"))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let expected: Vec<String> = (10_000..10_005).map(endless_tag).collect();
    assert_eq!(body["tags"], serde_json::json!(expected));
    assert_eq!(
        up.requests_to("/v2/endless/app/tags/list").len(),
        before + 1
    );
}

#[tokio::test]
async fn a_tag_list_link_to_another_origin_is_not_followed() {
    let thief = Hostile::start(|_| Router::new()).await;
    let thief_url = thief.url.clone();
    let up = Hostile::start(move |url| {
        let realm = format!("{url}/token");
        let page = move |headers: HeaderMap| {
            let (realm, thief_url) = (realm.clone(), thief_url.clone());
            async move {
                if !has_token(&headers) {
                    return challenge(&realm);
                }
                let link = format!("<{thief_url}/v2/evil/app/tags/list?n=1>; rel=\"next\"");
                ([(header::LINK, link)], r#"{"tags":["a"]}"#).into_response()
            }
        };
        hostile::registry(&format!("{url}/token"))
            .route("/token", get(hostile::token_service))
            .route("/v2/evil/app/tags/list", get(page))
    })
    .await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    let (status, code, message) = error_of(mirror.get("/v2/evil/app/tags/list").await).await;
    assert_eq!((status, code.as_str()), (502, "UNKNOWN"), "{message}");
    assert!(message.contains("another origin"), "{message}");
    assert!(thief.seen().is_empty(), "{:?}", thief.seen());
}

/// A registry serving `bogus/app:<case>` as `body` with `content_type` and no digest header.
async fn manifest_server(cases: Vec<(&'static str, &'static str, &'static str)>) -> Hostile {
    Hostile::start(move |_| {
        let mut router = Router::new().route("/v2/", get(|| async { StatusCode::OK }));
        for (tag, content_type, body) in cases {
            router = router.route(
                &format!("/v2/bogus/app/manifests/{tag}"),
                get(move || async move {
                    let mut response = body.into_response();
                    response.headers_mut().remove(header::CONTENT_TYPE);
                    if !content_type.is_empty() {
                        response
                            .headers_mut()
                            .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
                    }
                    response
                }),
            );
        }
        router
    })
    .await
}

#[tokio::test]
async fn bodies_that_are_not_manifests_are_refused_and_not_stored() {
    let short = &MANIFEST[..10];
    let cases = vec![
        // Cut to a 10-byte Content-Length, no Docker-Content-Digest to catch it.
        ("short", OCI_MANIFEST, short),
        ("html", "text/html", "<html>rate limited, try later</html>"),
        ("array", OCI_MANIFEST, "[1, 2, 3]"),
        (
            "nolayers",
            OCI_MANIFEST,
            r#"{"schemaVersion":2,"config":{"digest":"sha256:a"}}"#,
        ),
        ("disagrees", OCI_INDEX, MANIFEST),
        ("nomanifests", DOCKER_LIST, r#"{"schemaVersion":2}"#),
    ];
    let up = manifest_server(cases.clone()).await;
    let mirror = MirrorSetup::new(&up.url).anonymous().start().await;
    for (tag, _, _) in &cases {
        let (status, code, message) = error_of(mirror.get_manifest("bogus/app", tag).await).await;
        assert_eq!(
            (status, code.as_str()),
            (502, "UNKNOWN"),
            "{tag}: {message}"
        );
        assert!(
            message.contains(&format!("{}/v2/bogus/app/manifests/{tag}", up.url)),
            "{message}"
        );
    }
    let stored = mirror.stored_files();
    assert!(
        stored.iter().all(|f| !f.starts_with("blobs/")),
        "nothing stored: {stored:?}"
    );
}

#[tokio::test]
async fn a_manifest_without_a_content_type_takes_the_type_it_declares() {
    let up = manifest_server(vec![("untyped", "", MANIFEST)]).await;
    let mirror = MirrorSetup::new(&up.url).anonymous().start().await;
    let response = mirror.get_manifest("bogus/app", "untyped").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), OCI_MANIFEST);
    assert_eq!(response.bytes().await.unwrap(), MANIFEST.as_bytes());
}

#[tokio::test]
async fn a_manifest_body_shorter_than_its_content_length_is_an_error() {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {OCI_MANIFEST}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        MANIFEST.len()
    )
    .into_bytes();
    answer.extend_from_slice(&MANIFEST.as_bytes()[..10]);
    let url = hostile::raw(answer).await;
    let mirror = MirrorSetup::new(&url).anonymous().start().await;
    let (status, code, message) = error_of(mirror.get_manifest("cut/app", "latest").await).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"), "{message}");
    assert!(
        message.contains(&format!("{url}/v2/cut/app/manifests/latest")),
        "{message}"
    );
    let stored = mirror.stored_files();
    assert!(
        stored.iter().all(|f| !f.starts_with("blobs/")),
        "nothing stored: {stored:?}"
    );
}

/// Distribution 2.8 ignores `n` and sends every tag unsorted: the page a client asks for is cut
/// from the sorted whole, never from upstream's order.
#[tokio::test]
async fn an_upstream_that_ignores_n_and_does_not_sort_still_pages_in_order() {
    let up = Hostile::start(|_| {
        Router::new()
            .route("/v2/", get(|| async { StatusCode::OK }))
            .route(
                "/v2/org/app/tags/list",
                get(|| async { r#"{"name":"org/app","tags":["latest","2.0","1.0"]}"# }),
            )
    })
    .await;
    let mirror = MirrorSetup::new(&up.url).anonymous().start().await;
    let mut seen = Vec::new();
    let mut path = "/v2/org/app/tags/list?n=1".to_owned();
    for _ in 0..5 {
        let response = mirror.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        let link = response
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap();
        seen.extend(body["tags"].as_array().unwrap().iter().cloned());
        let Some(link) = link else { break };
        path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
    }
    assert_eq!(
        seen,
        serde_json::json!(["1.0", "2.0", "latest"])
            .as_array()
            .unwrap()
            .clone()
    );
}

/// A token lifetime past what an `Instant` can hold panicked inside the blob fill, whose
/// in-flight entry then answered 503 for that digest until a restart. Now the blob is served,
/// and served again.
#[tokio::test]
async fn a_blob_fetched_with_an_absurd_token_lifetime_is_served_every_time() {
    let layer = content("layer under an absurd token", 300 * 1024);
    let digest = sha256(&layer);
    let blob_path = format!("/v2/good/app/blobs/{digest}");
    let up = Hostile::start(|url| {
        let layer = layer.clone();
        hostile::registry(&format!("{url}/token"))
            .route(
                "/token",
                get(|| async {
                    format!(r#"{{"token":"{TOKEN}","expires_in":18446744073709551615}}"#)
                }),
            )
            .route(
                &blob_path,
                get(move |headers: HeaderMap| {
                    let layer = layer.clone();
                    async move {
                        if !has_token(&headers) {
                            return StatusCode::UNAUTHORIZED.into_response();
                        }
                        layer.into_response()
                    }
                }),
            )
    })
    .await;
    let mirror = MirrorSetup::new(&up.url).start().await;
    for attempt in 0..3 {
        let response = mirror.get(&blob_path).await;
        assert_eq!(response.status(), 200, "attempt {attempt}");
        let body = response.bytes().await.unwrap();
        assert_eq!(sha256(&body), digest, "attempt {attempt}");
    }
    assert_eq!(
        up.requests_to(&blob_path).len(),
        1,
        "fetched once, then cached"
    );
}
