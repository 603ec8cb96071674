//! A real S3-compatible server for the tests: moto (`pip install "moto[server]"`), started on a
//! free loopback port for one test and killed with it. A machine without moto fails the tests
//! that need it, saying how to install it; they are never skipped.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Moto {
    pub endpoint: String,
    _process: Child,
}

/// Starts moto with PR_SET_PDEATHSIG, so it dies with the test process even on a panic abort.
const LAUNCHER: &str = "import ctypes, signal, runpy, sys\n\
ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM)\n\
sys.argv = ['moto_server', '-H', '127.0.0.1', '-p', sys.argv[1]]\n\
runpy.run_module('moto.server', run_name='__main__')\n";

impl Moto {
    pub async fn start() -> Moto {
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut process = Command::new("python3")
                .args(["-c", LAUNCHER, &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("python3 runs");
            let endpoint = format!("http://127.0.0.1:{port}");
            let http = reqwest::Client::new();
            for _ in 0..300 {
                if let Ok(Some(status)) = process.try_wait() {
                    if status.code() == Some(1) && !moto_installed() {
                        panic!("moto is not installed: pip install \"moto[server]\" (tests/e2e/install.sh does)");
                    }
                    break; // lost the port to someone else: try another
                }
                if http.get(format!("{endpoint}/")).send().await.is_ok() {
                    return Moto {
                        endpoint,
                        _process: process,
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("moto did not start");
    }

    /// Creates a bucket (moto takes unsigned requests).
    pub async fn create_bucket(&self, name: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "create bucket {name}");
    }

    /// Every key in the bucket below `prefix`.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = reqwest::get(format!(
            "{}/{bucket}?list-type=2&prefix={prefix}",
            self.endpoint
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub async fn pending_uploads(&self, bucket: &str) -> usize {
        let body = reqwest::get(format!("{}/{bucket}?uploads", self.endpoint))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.matches("<Upload>").count()
    }

    /// `storage:` YAML for cistern on this bucket.
    pub fn storage_yaml(&self, endpoint: &str, bucket: &str) -> String {
        format!(
            "storage:\n  s3:\n    bucket: {bucket}\n    region: us-east-1\n    regionendpoint: {endpoint}\n    accesskey: test\n    secretkey: test\n    rootdirectory: /mirror\n"
        )
    }
}

fn moto_installed() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import moto.server"])
        .status()
        .is_ok_and(|s| s.success())
}
