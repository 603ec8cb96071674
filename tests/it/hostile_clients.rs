//! Clients that stall, flood or send garbage (issue 13): every connection gets a request-head
//! deadline whatever its protocol, and the number of connections is capped.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::binary::Binary;
use crate::common::*;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: what a client sends right after the preface.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn header_timeout_yaml(timeout: &str) -> String {
    format!("http:\n  timeouts:\n    header: {timeout}\n")
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent, or
/// None if it is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    return
                }
                Err(e) => panic!("reading from the mirror: {e}"),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(received)
}

/// What each kind of stalled client sends before going quiet.
fn stalled_openings() -> Vec<(&'static str, Vec<u8>)> {
    let hpack_get = 0x82; // `:method: GET`, from the static table
    let mut unfinished_headers = [H2_PREFACE, H2_SETTINGS].concat();
    // A HEADERS frame that announces 100 bytes of header block and sends 1.
    unfinished_headers.extend_from_slice(&[0, 0, 100, 1, 0x4, 0, 0, 0, 1, hpack_get]);
    let mut awaiting_continuation = [H2_PREFACE, H2_SETTINGS].concat();
    // A complete HEADERS frame without END_HEADERS: the head waits for a CONTINUATION.
    awaiting_continuation.extend_from_slice(&[0, 0, 1, 1, 0x0, 0, 0, 0, 1, hpack_get]);
    vec![
        ("silent", Vec::new()),
        ("half the h2 preface", H2_PREFACE[..10].to_vec()),
        ("the h2 preface", [H2_PREFACE, H2_SETTINGS].concat()),
        ("an unfinished HEADERS frame", unfinished_headers),
        ("HEADERS awaiting CONTINUATION", awaiting_continuation),
        (
            "half an HTTP/1 head",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\n".to_vec(),
        ),
        (
            "a TLS ClientHello's first bytes",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        ),
    ]
}

/// One HTTP/1.1 `GET /v2/` on a kept-alive connection; returns the status.
async fn get_base(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: mirror\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed mid-answer"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_of_every_protocol_are_closed_at_the_header_deadline() {
    let up = FakeUpstream::start().await;
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&header_timeout_yaml("1s"))
        .start()
        .await;
    let addr = mirror.url.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for (kind, opening) in stalled_openings() {
        for _ in 0..5 {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            stream.write_all(&opening).await.unwrap();
            stalled.push((kind, stream));
        }
    }
    // While they stall, clients are served.
    assert_eq!(mirror.get("/v2/").await.status(), 200);

    // 1 s deadline, with room for a loaded machine; before it, hyper waited for ever (h2 and
    // anything not yet recognised as HTTP/1) or 30 s (HTTP/1).
    let closed = futures::future::join_all(stalled.iter_mut().map(|(kind, stream)| async move {
        (
            *kind,
            read_until_closed(stream, Duration::from_secs(6)).await,
        )
    }))
    .await;
    for (kind, received) in closed {
        assert!(
            received.is_some(),
            "a connection sending {kind} is still open"
        );
    }
    assert_eq!(mirror.get("/v2/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_served_then_closed_when_idle_past_the_header_deadline() {
    let up = FakeUpstream::start().await;
    let mirror = MirrorSetup::new(&up.url)
        .extra_yaml(&header_timeout_yaml("1s"))
        .start()
        .await;
    let addr = mirror.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(get_base(&mut stream).await, 200);
    // hyper times the next HTTP/1 head: an idle kept-alive connection is closed too.
    assert!(
        read_until_closed(&mut stream, Duration::from_secs(6))
            .await
            .is_some(),
        "an idle kept-alive connection stays open past the header deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_cap_new_connections_close_and_clients_are_served_again_once_stalled_ones_are_reaped(
) {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: ''\n  timeouts:\n    header: 3s\n  maxconnections: 3\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: {}\n",
            dir.path().join("storage").display(),
            up.url
        ),
    )
    .unwrap();
    let cistern = Binary::start(&config).await;
    let addr = cistern.url.trim_start_matches("http://").to_owned();

    let mut established = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(get_base(&mut established).await, 200);
    // Two slots are left for three new connections: one of them is closed at once, long before
    // the 3 s header deadline (which order the server admits them in is its business).
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        newcomers.push(TcpStream::connect(&addr).await.unwrap());
    }
    let refused = futures::future::join_all(
        newcomers
            .iter_mut()
            .map(|stream| read_until_closed(stream, Duration::from_millis(1500))),
    )
    .await
    .into_iter()
    .filter(Option::is_some)
    .count();
    assert_eq!(
        refused, 1,
        "exactly the connection beyond the cap is closed at once"
    );
    assert_eq!(
        get_base(&mut established).await,
        200,
        "a connected client keeps working at the cap"
    );

    // Once the deadline reaps the stalled ones, a new client is served.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(response) = http.get(format!("{}/v2/", cistern.url)).send().await {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the stalled connections' deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = cistern.log_text();
    assert!(
        log.contains("connection limit reached (http.maxconnections = 3)"),
        "the cap is logged with its key and value:\n{log}"
    );
}
