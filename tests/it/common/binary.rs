//! The `cistern` binary as an operator runs it: a config file, signals, and its log.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::until;

/// A running cistern process whose log (stdout and stderr) is collected line by line.
pub struct Binary {
    pub child: Child,
    pub url: String,
    /// The debug listener, when the config has one.
    pub debug_url: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    /// Starts the binary on `config` and waits for it to say where it serves (text or JSON log).
    pub async fn start(config: &Path) -> Binary {
        Self::start_program(Path::new(env!("CARGO_BIN_EXE_cistern")), config, &[]).await
    }

    /// Starts `program` (e.g. an older cistern build) on `config` with these more environment
    /// variables.
    pub async fn start_program(program: &Path, config: &Path, env: &[(&str, &str)]) -> Binary {
        let mut child = Command::new(program)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            // Keep draining the log so the process never blocks on a full pipe.
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut binary = Binary {
            child,
            url: String::new(),
            debug_url: None,
            log,
        };
        let addr = until("cistern to serve", Duration::from_secs(20), async || {
            if let Some(addr) = binary.logged_addr("cistern serving") {
                return Ok(addr);
            }
            assert!(
                binary.child.try_wait().unwrap().is_none(),
                "cistern exited at start:\n{}",
                binary.log_text()
            );
            Err(format!("the log:\n{}", binary.log_text()))
        })
        .await;
        binary.url = format!("http://{addr}");
        binary.debug_url = binary
            .logged_addr("debug listener (metrics, health) serving")
            .map(|addr| format!("http://{addr}"));
        binary
    }

    /// The `addr` field of the first line with this message.
    fn logged_addr(&self, message: &str) -> Option<String> {
        self.log.lock().unwrap().iter().find_map(|line| {
            if let Ok(json) = serde_json::from_str::<Value>(line) {
                let fields = &json["fields"];
                return (fields["message"] == message)
                    .then(|| fields["addr"].as_str().map(str::to_owned))
                    .flatten();
            }
            let rest = line.split(&format!("{message} addr=")).nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        })
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// The `fields` of the JSON request line for request id `id`, once it is written.
    pub async fn request_line(&self, id: &str) -> Value {
        until(
            &format!("the request line of {id}"),
            Duration::from_secs(10),
            async || {
                let found = self.log_lines().iter().find_map(|line| {
                    let json: Value = serde_json::from_str(line).ok()?;
                    (json["fields"]["request_id"] == id).then(|| json["fields"].clone())
                });
                found.ok_or_else(|| format!("the log:\n{}", self.log_text()))
            },
        )
        .await
    }

    /// Sends SIGTERM, as `docker stop` and Kubernetes do.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit on its own.
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("cistern still running after {within:?}"))
            .unwrap()
    }
}
