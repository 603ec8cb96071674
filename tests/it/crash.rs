//! cistern killed with SIGKILL in the middle of a fill, then restarted on the same storage: the
//! partial blob is never served, and what it left behind is removed at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::binary::Binary;
use crate::common::*;
use futures::StreamExt;
use reqwest::Method;

const MIB: usize = 1024 * 1024;

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_below(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_fill_leaves_nothing_served_and_the_restart_cleans_up() {
    let up = FakeUpstream::start().await;
    let bytes = content("crash", 8 * MIB);
    let digest = up.add_blob("library/big", &bytes);
    let proxy = FaultProxy::start(&up.url).await;
    proxy.inject(
        "/blobs/",
        Fault::Slow {
            bytes_per_sec: 2 * MIB as u64,
        },
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {}\nproxy:\n  remoteurl: {}\n  username: {USER}\n  password: {PASSWORD}\n",
            storage.display(),
            proxy.url
        ),
    )
    .unwrap();
    let path = format!("/v2/library/big/blobs/{digest}");
    let spool = storage.join("_spool");
    let blobs = storage.join("blobs");

    let mut cistern = Binary::start(&config).await;
    let url = cistern.url.clone();
    let mut body = reqwest::get(format!("{url}{path}"))
        .await
        .unwrap()
        .bytes_stream();
    let mut received = body.next().await.unwrap().unwrap().len();
    until("1 MiB spooled", Duration::from_secs(10), async || {
        let spooled: u64 = files_below(&spool)
            .iter()
            .map(|f| f.metadata().unwrap().len())
            .sum();
        spooled >= MIB as u64
    })
    .await;
    cistern.child.start_kill().unwrap();
    cistern.child.wait().await.unwrap();
    while let Some(Ok(chunk)) = body.next().await {
        received += chunk.len();
    }
    assert!(
        received < bytes.len(),
        "the killed server cannot have sent it all"
    );
    assert_eq!(
        files_below(&blobs),
        Vec::<PathBuf>::new(),
        "no partial blob stored"
    );
    assert_eq!(
        files_below(&spool).len(),
        1,
        "the killed fill left its spool"
    );

    let restarted = Binary::start(&config).await;
    let url = restarted.url.clone();
    assert_eq!(
        files_below(&spool),
        Vec::<PathBuf>::new(),
        "cleaned at start"
    );
    let again = reqwest::get(format!("{url}{path}")).await.unwrap();
    assert_eq!(again.status(), 200);
    assert!(
        again.bytes().await.unwrap() == bytes,
        "exact bytes after the restart"
    );
    assert_eq!(up.count(Method::GET, &format!("/blobs/{digest}")), 2);
    assert_eq!(files_below(&blobs).len(), 1);
}
