//! Shared test harness: a fake Docker Hub, test images, and cistern running in-process on
//! 127.0.0.1:0 against it.
#![allow(dead_code)]

pub mod binary;
pub mod fault_proxy;
pub mod hostile;
pub mod moto;
pub mod poll;
pub mod tmpfs;
pub mod upstream;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

// Not every test crate that includes this module uses the proxy.
#[allow(unused_imports)]
pub use fault_proxy::{Fault, FaultProxy};
pub use poll::until;
pub use upstream::{sha256, FakeUpstream, PASSWORD, USER};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The Accept list dockerd sends.
pub const DOCKER_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

/// cistern serving in this process.
pub struct Mirror {
    pub url: String,
    /// The debug listener: metrics and health.
    pub debug_url: String,
    pub http: reqwest::Client,
    pub storage: PathBuf,
    _storage_dir: tempfile::TempDir,
    _shutdown: oneshot::Sender<()>,
}

pub struct MirrorSetup<'a> {
    pub remote: &'a str,
    pub credentials: bool,
    pub tag_ttl: &'a str,
    pub content_ttl: &'a str,
    /// More `proxy:` keys, one `key: value` per line.
    pub proxy_options: Vec<String>,
    /// A whole `storage:` section instead of a fresh directory.
    pub storage_yaml: Option<String>,
    /// More top-level sections (`http:`, `health:`, `auth:`...), appended to the file.
    pub extra_yaml: Vec<String>,
    /// `registries:` entries: the host clients name, and its section's lines (`key: value`,
    /// nested keys indented by two more spaces), in order.
    pub registries: Vec<(String, Vec<String>)>,
    /// `REGISTRY_*` environment overrides, as the binary would read them.
    pub env: Vec<(String, String)>,
}

impl<'a> MirrorSetup<'a> {
    pub fn new(remote: &'a str) -> Self {
        MirrorSetup {
            remote,
            credentials: true,
            tag_ttl: "1h",
            content_ttl: "168h",
            proxy_options: Vec::new(),
            storage_yaml: None,
            extra_yaml: Vec::new(),
            registries: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Mirrors `host` (as clients name it) from `remote`: a `registries:` entry with
    /// `remoteurl` and these more `key: value` lines.
    pub fn registry(mut self, host: &str, remote: &str, lines: &[&str]) -> Self {
        let mut section = vec![format!("remoteurl: {remote}")];
        section.extend(lines.iter().map(|l| (*l).to_owned()));
        self.registries.push((host.to_owned(), section));
        self
    }

    /// A `registries:` entry with exactly these lines (no `remoteurl` added).
    pub fn registry_section(mut self, host: &str, lines: &[&str]) -> Self {
        self.registries.push((
            host.to_owned(),
            lines.iter().map(|l| (*l).to_owned()).collect(),
        ));
        self
    }

    /// A `REGISTRY_*` environment override.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The configuration file this setup writes (with `storage` as the default root).
    pub fn yaml(&self, storage_root: &Path) -> String {
        let credentials = if self.credentials {
            format!("  username: {USER}\n  password: {PASSWORD}\n")
        } else {
            String::new()
        };
        let options: String = self
            .proxy_options
            .iter()
            .map(|line| format!("  {line}\n"))
            .collect();
        let storage = self.storage_yaml.clone().unwrap_or_else(|| {
            format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\n",
                storage_root.display()
            )
        });
        let mut registries = String::new();
        if !self.registries.is_empty() {
            registries.push_str("registries:\n");
            for (host, lines) in &self.registries {
                registries.push_str(&format!("  {host}:\n"));
                for line in lines {
                    registries.push_str(&format!("    {line}\n"));
                }
            }
        }
        let extra: String = self.extra_yaml.concat();
        format!(
            "version: 0.1\n{storage}proxy:\n  remoteurl: {}\n  tagttl: {}\n  ttl: {}\n{credentials}{options}{registries}{extra}",
            self.remote,
            self.tag_ttl,
            self.content_ttl
        )
    }

    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra_yaml.push(yaml.to_owned());
        self
    }

    /// Keeps the storage in `dir` (e.g. to start a second mirror on what a first one cached).
    pub fn storage_dir(self, dir: &Path) -> Self {
        self.storage(format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n",
            dir.display()
        ))
    }

    pub fn storage(mut self, yaml: String) -> Self {
        self.storage_yaml = Some(yaml);
        self
    }

    pub fn proxy_option(mut self, line: &str) -> Self {
        self.proxy_options.push(line.to_owned());
        self
    }

    pub fn tag_ttl(mut self, ttl: &'a str) -> Self {
        self.tag_ttl = ttl;
        self
    }

    pub fn content_ttl(mut self, ttl: &'a str) -> Self {
        self.content_ttl = ttl;
        self
    }

    pub fn anonymous(mut self) -> Self {
        self.credentials = false;
        self
    }

    pub async fn start(self) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let yaml = self.yaml(dir.path());
        let config = cistern::config::Config::from_yaml(&yaml, self.env.clone())
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .config;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let debug = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if config.http.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let debug_url = format!("http://{}", debug.local_addr().unwrap());
        let listeners = cistern::server::Listeners {
            api: listener,
            debug: Some(debug),
        };
        // The filesystem root the config names (a fresh directory unless `storage_dir` set one).
        let storage = match &config.storage {
            cistern::config::StorageConfig::Filesystem { root_directory } => root_directory.clone(),
            _ => dir.path().to_owned(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            cistern::serve(&config, listeners, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Mirror {
            url,
            debug_url,
            http: reqwest::Client::new(),
            storage,
            _storage_dir: dir,
            _shutdown: tx,
        }
    }
}

impl Mirror {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// A GET of `path` in a task of its own (to be answered while the test does more): its
    /// status and body.
    pub fn spawn_get(&self, path: &str) -> tokio::task::JoinHandle<(u16, Bytes)> {
        let (http, url) = (self.http.clone(), format!("{}{path}", self.url));
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap())
        })
    }

    /// A GET with `Range: {range}` (e.g. `bytes=10-19`).
    pub async fn get_range(&self, path: &str, range: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .header("range", range)
            .send()
            .await
            .unwrap()
    }

    pub async fn head(&self, path: &str) -> reqwest::Response {
        self.http
            .head(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_manifest(&self, repo: &str, reference: &str) -> reqwest::Response {
        get_manifest(&self.http, &self.url, repo, reference, "").await
    }

    /// A request for `path` (a whole `/v2/...` path with any query) with dockerd's Accept list.
    pub async fn manifest_request(&self, method: http::Method, path: &str) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("accept", DOCKER_ACCEPT)
            .send()
            .await
            .unwrap()
    }

    /// A GET of `path` (a whole `/v2/...` path with any query) with dockerd's Accept list.
    pub async fn get_manifest_path(&self, path: &str) -> reqwest::Response {
        self.manifest_request(http::Method::GET, path).await
    }

    /// Pulls an image the way dockerd does: the tag, then every manifest and blob it names.
    /// Checks every digest and returns all the bytes it received.
    pub async fn pull(&self, repo: &str, tag: &str) -> Vec<(String, Bytes)> {
        pull(&self.http, &self.url, repo, tag, "").await
    }

    /// `pull` as containerd does it through a `_default` mirror: `?ns=<registry>` on every
    /// request.
    pub async fn pull_ns(&self, ns: &str, repo: &str, tag: &str) -> Vec<(String, Bytes)> {
        pull(&self.http, &self.url, repo, tag, &format!("?ns={ns}")).await
    }

    /// The Prometheus text from the debug listener.
    pub async fn metrics(&self) -> Metrics {
        let response = reqwest::get(format!("{}/metrics", self.debug_url))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Metrics(response.text().await.unwrap())
    }

    /// Bytes in the spool: blobs being fetched right now.
    pub fn spooled_bytes(&self) -> u64 {
        std::fs::read_dir(self.storage.join("_spool"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Whether a blob or manifest's content is stored.
    pub fn has_content(&self, digest: &str) -> bool {
        self.content_path(digest).exists()
    }

    /// Where the filesystem store keeps a blob or manifest's content.
    pub fn content_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// Every cached file under the storage root, relative to it (not `_cistern/`, cistern's
    /// own bookkeeping such as the write probe).
    pub fn stored_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        walk(&self.storage, &self.storage, &mut files);
        files.retain(|f| !f.starts_with("_cistern/"));
        files.sort();
        files
    }
}

/// A manifest GET with dockerd's Accept list; `query` is appended (`""` or `?ns=...`).
pub async fn get_manifest(
    http: &reqwest::Client,
    url: &str,
    repo: &str,
    reference: &str,
    query: &str,
) -> reqwest::Response {
    http.get(format!("{url}/v2/{repo}/manifests/{reference}{query}"))
        .header("accept", DOCKER_ACCEPT)
        .send()
        .await
        .unwrap()
}

/// Pulls `repo:tag` from the registry API at `url` the way dockerd does (the tag, then every
/// manifest and blob it names), appending `query` to every request. Checks every digest and
/// returns all the bytes it received.
pub async fn pull(
    http: &reqwest::Client,
    url: &str,
    repo: &str,
    tag: &str,
    query: &str,
) -> Vec<(String, Bytes)> {
    let mut received = Vec::new();
    let top = get_manifest(http, url, repo, tag, query).await;
    assert_eq!(top.status(), 200, "manifest {repo}:{tag}{query}");
    let digest = header(&top, "docker-content-digest");
    let bytes = top.bytes().await.unwrap();
    assert_eq!(sha256(&bytes), digest, "tag manifest digest");
    let document: Value = serde_json::from_slice(&bytes).unwrap();
    received.push((digest, bytes));
    let mut manifests = Vec::new();
    if let Some(list) = document["manifests"].as_array() {
        for entry in list {
            let digest = entry["digest"].as_str().unwrap();
            let response = get_manifest(http, url, repo, digest, query).await;
            assert_eq!(response.status(), 200, "manifest {digest}");
            let bytes = response.bytes().await.unwrap();
            assert_eq!(sha256(&bytes), digest);
            manifests.push(serde_json::from_slice::<Value>(&bytes).unwrap());
            received.push((digest.to_owned(), bytes));
        }
    } else {
        manifests.push(document);
    }
    for manifest in manifests {
        let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
        for layer in manifest["layers"].as_array().unwrap() {
            blobs.push(layer["digest"].as_str().unwrap().to_owned());
        }
        for digest in blobs {
            let response = http
                .get(format!("{url}/v2/{repo}/blobs/{digest}{query}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "blob {digest}");
            let bytes = response.bytes().await.unwrap();
            assert_eq!(sha256(&bytes), digest, "blob bytes");
            received.push((digest, bytes));
        }
    }
    received
}

/// Why cistern refuses to start on this (loadable) configuration.
pub async fn start_error(yaml: &str) -> String {
    let config = cistern::config::Config::from_yaml(yaml, Vec::new())
        .unwrap()
        .config;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    cistern::serve(&config, listener, async {})
        .await
        .unwrap_err()
        .to_string()
}

/// A scrape of `/metrics`.
pub struct Metrics(pub String);

impl Metrics {
    /// The sample `series` (name and labels exactly as rendered, e.g.
    /// `cistern_requests_total{endpoint="blob",method="GET",status="200"}`), 0 when absent.
    pub fn value(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// The sum of every sample of metric `name` whose labels include all of `labels`, in
    /// whatever order they are rendered (e.g. `("registry", "ghcr.io")`).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
                if metric != name {
                    return None;
                }
                let rendered = rest.strip_suffix('}')?;
                let matches = labels.iter().all(|(key, value)| {
                    rendered
                        .split(',')
                        .any(|pair| pair == format!("{key}=\"{value}\""))
                });
                matches.then(|| value.trim().parse::<f64>().unwrap())
            })
            .sum()
    }
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, files);
        } else {
            files.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// The OCI error code of an error response.
/// The status, OCI code and message of an error answer.
pub async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let error = &body["errors"][0];
    (
        status,
        error["code"].as_str().unwrap().to_owned(),
        error["message"].as_str().unwrap().to_owned(),
    )
}

pub async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["errors"][0]["code"].as_str().unwrap().to_owned()
}

/// Deterministic blob content of `len` bytes, different per `seed`.
pub fn content(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut state = u64::from_le_bytes(sha2_prefix(seed));
    while out.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha2_prefix(seed: &str) -> [u8; 8] {
    use sha2::Digest as _;
    sha2::Sha256::digest(seed.as_bytes())[..8]
        .try_into()
        .unwrap()
}

/// A test image as stored upstream.
pub struct Image {
    /// What the tag points to.
    pub digest: String,
    pub blobs: Vec<String>,
}

/// A single-platform image: a config and two layers, one spanning many chunks.
pub fn add_image(
    up: &FakeUpstream,
    repo: &str,
    tag: Option<&str>,
    media_type: &str,
    seed: &str,
) -> Image {
    let config = up.add_blob(
        repo,
        format!(r#"{{"architecture":"{seed}","os":"linux"}}"#).as_bytes(),
    );
    let small = up.add_blob(repo, &content(&format!("{seed}-small"), 1000));
    let large = up.add_blob(
        repo,
        &content(&format!("{seed}-large"), 3 * 1024 * 1024 + 17),
    );
    let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
        (
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": config, "size": 0},
        "layers": [
            {"mediaType": layer_type, "digest": small, "size": 1000},
            {"mediaType": layer_type, "digest": large, "size": 3 * 1024 * 1024 + 17},
        ],
    });
    // Pretty-printed on purpose: a mirror that re-serialises would change the digest.
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    let digest = up.add_manifest(repo, tag, media_type, &bytes);
    Image {
        digest,
        blobs: vec![config, small, large],
    }
}

/// A multi-arch OCI index over amd64 and arm64 images; returns (index, per-platform images).
pub fn add_multi_arch(up: &FakeUpstream, repo: &str, tag: &str) -> (Image, Vec<Image>) {
    let platforms = ["amd64", "arm64"];
    let images: Vec<Image> = platforms
        .iter()
        .map(|arch| add_image(up, repo, None, OCI_MANIFEST, &format!("{repo}-{arch}")))
        .collect();
    let entries: Vec<Value> = images
        .iter()
        .zip(platforms)
        .map(|(image, arch)| {
            json!({"mediaType": OCI_MANIFEST, "digest": image.digest, "size": 0,
                   "platform": {"architecture": arch, "os": "linux"}})
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let bytes = serde_json::to_vec_pretty(&index).unwrap();
    let digest = up.add_manifest(repo, Some(tag), OCI_INDEX, &bytes);
    let blobs = images.iter().flat_map(|i| i.blobs.clone()).collect();
    (Image { digest, blobs }, images)
}

/// The image most tests pull: `library/alpine:latest`, single platform.
pub fn add_alpine(up: &FakeUpstream) -> Image {
    add_image(up, "library/alpine", Some("latest"), OCI_MANIFEST, "alpine")
}

/// An `auth.htpasswd` section with one user (bcrypt cost 4, quick in tests), its file in `dir`.
pub fn htpasswd_section(dir: &Path, realm: &str, user: &str, password: &str) -> String {
    let path = dir.join("htpasswd");
    let hash = bcrypt::hash(password, 4).unwrap();
    std::fs::write(&path, format!("{user}:{hash}\n")).unwrap();
    format!(
        "auth:\n  htpasswd:\n    realm: {realm}\n    path: {}\n",
        path.display()
    )
}
