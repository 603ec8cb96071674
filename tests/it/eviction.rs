//! The cache within its byte budget (`cache.maxsize`): which images eviction takes (the least
//! recently pulled, whole, across registries), what it never takes (a layer a kept image uses,
//! pinned images, what was pulled within `cache.keeprecent`), and that clients notice nothing
//! but a refetch: every kept image pulls from the cache alone, and no answer is ever broken,
//! even while the evictor deletes under concurrent pulls.
//!
//! The budget in these tests is 24 MiB with the default watermarks: eviction starts above
//! 95 % (22.8 MiB) and stops at 85 % (20.4 MiB). Layers are whole MiB and the rest (configs,
//! manifests) a few hundred bytes, so the images that must go are computed by hand in each
//! test: a planner that takes the wrong one, one too many or one too few fails it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::common::moto::Moto;
use crate::common::*;

const MIB: usize = 1 << 20;
/// `cache.maxsize` in these tests.
const BUDGET: u64 = 24 << 20;

/// Eviction starts above this (the default high watermark, 95 %).
fn high_watermark() -> u64 {
    (BUDGET as f64 * 0.95) as u64
}

/// ... and stops at this (the default low watermark, 85 %).
fn low_watermark() -> u64 {
    (BUDGET as f64 * 0.85) as u64
}

/// The `cache:` section: the test budget, these pins, and `keeprecent`.
fn cache_yaml(keep_recent: &str, pins: &[&str]) -> String {
    let mut yaml = format!("cache:\n  maxsize: 24MiB\n  keeprecent: {keep_recent}\n");
    if !pins.is_empty() {
        yaml.push_str("  pin:\n");
        for pin in pins {
            yaml.push_str(&format!("    - '{pin}'\n"));
        }
    }
    yaml
}

/// An image upstream, and how a client pulls it through the mirror.
#[derive(Clone, Debug)]
struct TestImage {
    /// The repository as clients name it through the mirror (`library/red`,
    /// `ghcr.io/team/amber`).
    name: String,
    /// The tag, or the manifest's digest for an image only ever pulled by digest.
    reference: String,
    manifest: String,
    /// Its config and layers.
    blobs: Vec<String>,
    /// Its layers' sizes.
    layer_bytes: u64,
}

impl TestImage {
    /// Every digest a pull of it fetches: the manifest, the config and the layers.
    fn contents(&self) -> BTreeSet<String> {
        std::iter::once(self.manifest.clone())
            .chain(self.blobs.iter().cloned())
            .collect()
    }

    fn top_layer(&self) -> &str {
        self.blobs.last().unwrap()
    }

    fn shown(&self) -> String {
        format!("{}:{}", self.name, self.reference)
    }
}

/// Adds to `up` an OCI image of `repo` (upstream's name) with one layer per `(seed, bytes)`:
/// equal seeds give equal layers, in any repository and on any upstream. `host` is the
/// registry the mirror serves `up` as (None: the default upstream); `tag` None makes an image
/// reachable only by digest.
fn image(
    up: &FakeUpstream,
    host: Option<&str>,
    repo: &str,
    tag: Option<&str>,
    layers: &[(&str, usize)],
) -> TestImage {
    let config_bytes = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"image":"{repo}:{tag:?}"}}}}}}"#
    );
    let config = up.add_blob(repo, config_bytes.as_bytes());
    let mut blobs = vec![config.clone()];
    let mut descriptors = Vec::new();
    for (seed, len) in layers {
        let digest = up.add_blob(repo, &content(seed, *len));
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": len,
        }));
        blobs.push(digest);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config,
            "size": config_bytes.len(),
        },
        "layers": descriptors,
    });
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    let digest = up.add_manifest(repo, tag, OCI_MANIFEST, &bytes);
    TestImage {
        name: match host {
            Some(host) => format!("{host}/{repo}"),
            None => repo.to_owned(),
        },
        reference: tag.map_or_else(|| digest.clone(), str::to_owned),
        manifest: digest,
        blobs,
        layer_bytes: layers.iter().map(|(_, len)| *len as u64).sum(),
    }
}

/// Pulls `image` through the mirror as dockerd does and checks that every answer was 200 with
/// the bytes of its digest, and that it got exactly the image's content.
async fn pull(mirror: &Mirror, image: &TestImage) {
    let received = mirror.pull(&image.name, &image.reference).await;
    let digests: BTreeSet<String> = received.into_iter().map(|(digest, _)| digest).collect();
    assert_eq!(digests, image.contents(), "{} pulled whole", image.shown());
}

/// Pulls each in turn, in this order: the order they become least recently pulled.
async fn pull_in_order(mirror: &Mirror, images: &[&TestImage]) {
    for image in images {
        pull(mirror, image).await;
    }
}

/// Content in the store (files under `blobs/`): digest -> size.
fn stored_content(mirror: &Mirror) -> BTreeMap<String, u64> {
    mirror
        .stored_files()
        .into_iter()
        .filter_map(|file| {
            let hex = file.strip_prefix("blobs/sha256/")?.split('/').nth(1)?;
            let size = std::fs::metadata(mirror.storage.join(&file)).ok()?.len();
            Some((format!("sha256:{hex}"), size))
        })
        .collect()
}

fn stored_bytes(mirror: &Mirror) -> u64 {
    stored_content(mirror).values().sum()
}

/// Whether the mirror keeps the tag record of `image`.
fn has_tag(mirror: &Mirror, image: &TestImage) -> bool {
    mirror
        .storage
        .join("repositories")
        .join(&image.name)
        .join("_tags")
        .join(&image.reference)
        .exists()
}

fn union(images: &[&TestImage]) -> BTreeSet<String> {
    images.iter().flat_map(|i| i.contents()).collect()
}

fn requests(upstreams: &[&FakeUpstream]) -> usize {
    upstreams.iter().map(|up| up.registry_requests()).sum()
}

/// Waits until the evictor has evicted `images` images in all (it checks every 5 s).
async fn wait_for_evicted(mirror: &Mirror, images: f64) {
    let evicted = until(
        &format!("the evictor to evict {images} images"),
        Duration::from_secs(60),
        async || {
            let evicted = mirror.metrics().await.value("cistern_evicted_images_total");
            if evicted >= images {
                Ok(evicted)
            } else {
                Err(format!(
                    "{evicted} evicted, the filesystem store holding {} bytes",
                    stored_bytes(mirror)
                ))
            }
        },
    )
    .await;
    assert_eq!(
        evicted,
        images,
        "evicted more images than expected; stored: {:?}",
        stored_content(mirror)
    );
}

/// The bucket an S3 store uses.
const BUCKET: &str = "cache";

/// The key of `digest`'s content in the bucket (below the `rootdirectory` of
/// `Moto::storage_yaml`).
fn content_key(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap();
    format!("mirror/blobs/sha256/{}/{hex}", &hex[..2])
}

/// Where the mirror under test caches, with a view into it that does not go through cistern.
enum Store {
    /// A fresh directory (`Mirror::storage`).
    Filesystem,
    /// A bucket on moto, which cistern reaches through `proxy`, so a test can slow its reads
    /// and see which are still under way.
    S3 {
        moto: Box<Moto>,
        proxy: Box<FaultProxy>,
    },
}

impl Store {
    async fn s3() -> Store {
        let moto = Moto::start().await;
        moto.create_bucket(BUCKET).await;
        let proxy = FaultProxy::start(&moto.endpoint).await;
        Store::S3 {
            moto: Box::new(moto),
            proxy: Box::new(proxy),
        }
    }

    /// `setup` caching in this store.
    fn serving<'a>(&self, setup: MirrorSetup<'a>) -> MirrorSetup<'a> {
        match self {
            Store::Filesystem => setup,
            Store::S3 { moto, proxy } => setup.storage(moto.storage_yaml(&proxy.url, BUCKET)),
        }
    }

    /// Whether the store holds the content of `digest`, as its own listing says.
    async fn has_content(&self, mirror: &Mirror, digest: &str) -> bool {
        match self {
            Store::Filesystem => mirror.has_content(digest),
            Store::S3 { moto, .. } => {
                let key = content_key(digest);
                moto.keys(BUCKET, &key).await.contains(&key)
            }
        }
    }

    /// Makes the next read of `digest`'s content from the store last at least `at_least`
    /// where the store can be slowed (S3); a file is read at the pace of its reader anyway.
    fn slow_next_read(&self, digest: &str, bytes: u64, at_least: Duration) {
        if let Store::S3 { proxy, .. } = self {
            proxy.inject_method(
                http::Method::GET,
                &content_key(digest),
                Fault::Slow {
                    bytes_per_sec: bytes / at_least.as_secs(),
                },
                1,
            );
        }
    }

    /// Whether cistern is still reading `digest`'s content from the store: an open file (of
    /// this process, where cistern runs) deleted from under it, or an S3 GET under way.
    fn still_reading(&self, mirror: &Mirror, digest: &str) -> bool {
        match self {
            Store::Filesystem => {
                let deleted = format!("{} (deleted)", mirror.content_path(digest).display());
                std::fs::read_dir("/proc/self/fd")
                    .unwrap()
                    .flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .any(|target| target.to_string_lossy() == deleted)
            }
            Store::S3 { proxy, .. } => proxy.blob_fetches_in_progress() > 0,
        }
    }
}

/// What a user sees of the cache after an eviction: exactly `kept` stored (their content and
/// tags, nothing else, within the low watermark), `evicted` gone (tag and own content), the
/// catalog naming exactly the repositories of `kept`, and every kept image pulling whole with
/// no upstream request, in this order.
async fn assert_kept_exactly(
    mirror: &Mirror,
    upstreams: &[&FakeUpstream],
    kept: &[&TestImage],
    evicted: &[&TestImage],
) {
    let stored = stored_content(mirror);
    let stored_digests: BTreeSet<String> = stored.keys().cloned().collect();
    let expected = union(kept);
    let missing: Vec<_> = expected.difference(&stored_digests).collect();
    let extra: Vec<_> = stored_digests.difference(&expected).collect();
    let name = |image: &&TestImage| image.shown();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "kept {:?}, evicted {:?}: content missing {missing:?}, content left over {extra:?}",
        kept.iter().map(name).collect::<Vec<_>>(),
        evicted.iter().map(name).collect::<Vec<_>>(),
    );
    let bytes: u64 = stored.values().sum();
    assert!(
        bytes <= low_watermark(),
        "{bytes} bytes stored after the sweep, above the low watermark {}",
        low_watermark()
    );
    for image in kept.iter().filter(|i| !i.reference.starts_with("sha256:")) {
        assert!(has_tag(mirror, image), "{} keeps its tag", image.shown());
    }
    for image in evicted {
        assert!(!has_tag(mirror, image), "{} lost its tag", image.shown());
        assert!(
            !mirror.has_content(&image.manifest) && !mirror.has_content(image.top_layer()),
            "{} lost its manifest and own layer",
            image.shown()
        );
    }
    let catalog: Value = mirror.get("/v2/_catalog").await.json().await.unwrap();
    let names: BTreeSet<&str> = kept.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        catalog,
        json!({ "repositories": names }),
        "the catalog lists what is kept"
    );
    let before = requests(upstreams);
    for image in kept {
        pull(mirror, image).await;
    }
    assert_eq!(
        requests(upstreams),
        before,
        "every kept image pulls from the cache alone"
    );
}

// 1. Least recently pulled first, whole images, a shared base layer kept while used -----------

#[tokio::test]
async fn the_least_recently_pulled_images_go_and_a_shared_base_layer_stays_while_used() {
    let hub = FakeUpstream::start().await;
    let ghcr = FakeUpstream::start().await;
    ghcr.set_private_prefix(None);
    // Seven images of 3 MiB each on one 4 MiB base layer, on two registries.
    let base = ("base-layer", 4 * MIB);
    let on = |up: &FakeUpstream, host: Option<&str>, repo: &str| {
        image(up, host, repo, Some("1"), &[base, (repo, 3 * MIB)])
    };
    let amber = on(&ghcr, Some("ghcr.io"), "team/amber");
    let red = on(&hub, None, "library/red");
    let green = on(&hub, None, "library/green");
    let violet = on(&ghcr, Some("ghcr.io"), "team/violet");
    let blue = on(&hub, None, "library/blue");
    let teal = on(&ghcr, Some("ghcr.io"), "team/teal");
    let gold = on(&hub, None, "library/gold");
    // And two large images of their own.
    let big_hub = image(&hub, None, "library/big", Some("1"), &[("big", 8 * MIB)]);
    let big_ghcr = image(
        &ghcr,
        Some("ghcr.io"),
        "team/big",
        Some("1"),
        &[("big-ghcr", 8 * MIB)],
    );
    let base_layer = amber.blobs[1].clone();
    assert_eq!(base_layer, gold.blobs[1], "one base layer for all seven");
    let mirror = MirrorSetup::new(&hub.url)
        .registry("ghcr.io", &ghcr.url, &[])
        .extra_yaml(&cache_yaml("0s", &[]))
        .start()
        .await;
    let upstreams = [&hub, &ghcr];

    // 4 + 6 x 3 = 22 MiB, under the high watermark (22.8): nothing goes.
    pull_in_order(&mirror, &[&amber, &red, &green, &violet, &blue, &teal]).await;
    assert!(stored_bytes(&mirror) < high_watermark());
    // The seventh makes 25 MiB: the two least recently pulled go (23, then 20 MiB).
    pull(&mirror, &gold).await;
    wait_for_evicted(&mirror, 2.0).await;
    assert_kept_exactly(
        &mirror,
        &upstreams,
        &[&green, &violet, &blue, &teal, &gold],
        &[&amber, &red],
    )
    .await;
    assert!(mirror.has_content(&base_layer));

    // Pulled again in this order (which assert_kept_exactly just did, with no upstream
    // request), then 8 MiB more makes 27 MiB: three go, by this order (24, 21, 18 MiB).
    pull_in_order(&mirror, &[&teal, &green, &gold, &violet, &blue]).await;
    pull(&mirror, &big_hub).await;
    wait_for_evicted(&mirror, 5.0).await;
    assert_kept_exactly(
        &mirror,
        &upstreams,
        &[&violet, &blue, &big_hub],
        &[&teal, &green, &gold],
    )
    .await;
    assert!(
        mirror.has_content(&base_layer),
        "the base layer stays while a kept image uses it"
    );

    // 26 MiB: the last two images on the base go, and the base layer with the last of them
    // (23, then 16 MiB).
    pull_in_order(&mirror, &[&big_hub]).await;
    pull(&mirror, &big_ghcr).await;
    wait_for_evicted(&mirror, 7.0).await;
    assert_kept_exactly(
        &mirror,
        &upstreams,
        &[&big_hub, &big_ghcr],
        &[&violet, &blue],
    )
    .await;
    assert!(
        !mirror.has_content(&base_layer),
        "the base layer goes with the last image that used it"
    );

    // An evicted image is fetched again, whole.
    let before = requests(&upstreams);
    pull(&mirror, &amber).await;
    assert!(requests(&upstreams) > before);
}

// 2. Pins --------------------------------------------------------------------------------------

#[tokio::test]
async fn a_pinned_image_stays_even_when_it_is_the_least_recently_pulled() {
    let hub = FakeUpstream::start().await;
    let ghcr = FakeUpstream::start().await;
    ghcr.set_private_prefix(None);
    let five = |up: &FakeUpstream, host: Option<&str>, repo: &str, tag: &str| {
        image(
            up,
            host,
            repo,
            Some(tag),
            &[(&format!("{repo}:{tag}"), 5 * MIB)],
        )
    };
    let alpine_3 = five(&hub, None, "library/alpine", "3.20");
    let alpine_edge = five(&hub, None, "library/alpine", "edge");
    let team_tool = five(&ghcr, Some("ghcr.io"), "team/tool", "latest");
    let a = five(&hub, None, "library/a", "1");
    let b = five(&hub, None, "library/b", "1");
    let c = five(&hub, None, "library/c", "1");
    let mirror = MirrorSetup::new(&hub.url)
        .registry("ghcr.io", &ghcr.url, &[])
        .extra_yaml(&cache_yaml("0s", &["alpine:3.*", "ghcr.io/team/*:latest"]))
        .start()
        .await;
    let upstreams = [&hub, &ghcr];

    // 20 MiB, then 25: unpinned, the two oldest would go; pinned, they stay and the next
    // one, alpine:edge (same repository, a tag the pin does not match), goes instead.
    pull_in_order(&mirror, &[&alpine_3, &team_tool, &alpine_edge, &a]).await;
    pull(&mirror, &b).await;
    wait_for_evicted(&mirror, 1.0).await;
    // (The catalog check needs every kept image in its own repository: alpine:3.20 keeps
    // library/alpine listed.)
    assert_kept_exactly(
        &mirror,
        &upstreams,
        &[&alpine_3, &team_tool, &a, &b],
        &[&alpine_edge],
    )
    .await;
    let pinned = mirror.metrics().await.value("cistern_cache_pinned_bytes");
    assert!(
        pinned >= (alpine_3.layer_bytes + team_tool.layer_bytes) as f64,
        "cistern_cache_pinned_bytes shows what the pins keep: {pinned}"
    );

    // The pinned images are the least recently pulled of all now; still only a goes.
    pull(&mirror, &c).await;
    wait_for_evicted(&mirror, 2.0).await;
    assert_kept_exactly(
        &mirror,
        &upstreams,
        &[&alpine_3, &team_tool, &b, &c],
        &[&alpine_edge, &a],
    )
    .await;
}

// 3. keeprecent --------------------------------------------------------------------------------

#[tokio::test]
async fn images_pulled_within_keeprecent_stay_even_over_the_budget() {
    let hub = FakeUpstream::start().await;
    let images: Vec<TestImage> = ["old", "new1", "new2", "new3", "new4", "new5"]
        .iter()
        .map(|name| {
            image(
                &hub,
                None,
                &format!("library/{name}"),
                Some("1"),
                &[(name, 5 * MIB)],
            )
        })
        .collect();
    let [old, new1, new2, new3, new4, new5] = [0, 1, 2, 3, 4, 5].map(|i| &images[i]);
    let keep_recent = Duration::from_secs(12);
    let mirror = MirrorSetup::new(&hub.url)
        .extra_yaml(&cache_yaml("12s", &[]))
        .start()
        .await;

    pull(&mirror, old).await;
    // Time must pass for `old` to leave the window: nothing else to wait for.
    tokio::time::sleep(keep_recent + Duration::from_secs(1)).await;
    // 30 MiB: over the budget itself. Only `old` may go (to 25 MiB); the five others were
    // pulled within keeprecent.
    let recent = Instant::now();
    pull_in_order(&mirror, &[new1, new2, new3, new4, new5]).await;
    wait_for_evicted(&mirror, 1.0).await;
    assert!(
        recent.elapsed() < keep_recent,
        "the test ran too slowly to say anything about keeprecent"
    );
    let kept = [new1, new2, new3, new4, new5];
    let stored: BTreeSet<String> = stored_content(&mirror).into_keys().collect();
    assert_eq!(
        stored,
        union(&kept),
        "only the image pulled before keeprecent went"
    );
    assert!(!has_tag(&mirror, old));
    let metrics = mirror.metrics().await;
    assert!(
        metrics.value("cistern_cache_bytes") > BUDGET as f64,
        "over the budget, because everything left was pulled within keeprecent"
    );
    // Pulled again now: from the cache alone (and that renews their window).
    let before = hub.registry_requests();
    pull_in_order(&mirror, &kept).await;
    assert_eq!(hub.registry_requests(), before);

    // Once the window has passed, the least recently pulled go too, down to the low
    // watermark (25 -> 20 MiB).
    wait_for_evicted(&mirror, 2.0).await;
    assert_kept_exactly(&mirror, &[&hub], &[new2, new3, new4, new5], &[old, new1]).await;
}

// 4. Eviction racing pulls ---------------------------------------------------------------------

/// One GET through the mirror, checked: status 200 and the bytes of `digest`. Returns what
/// went wrong instead of panicking, so that every failure of a run is reported.
async fn fetch_checked(
    http: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
    digest: &str,
) -> Result<bytes::Bytes, String> {
    let mut request = http.get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{url}: status {status}: {body}"));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("{url}: body cut: {e}"))?;
    if sha256(&body) != digest {
        return Err(format!("{url}: {} bytes not of {digest}", body.len()));
    }
    Ok(body)
}

/// Pulls `image` (by tag) through the mirror at `url` and checks every answer.
async fn pull_checked(http: &reqwest::Client, url: &str, image: &TestImage) -> Result<(), String> {
    let name = &image.name;
    let manifest_url = format!("{url}/v2/{name}/manifests/{}", image.reference);
    let bytes = fetch_checked(http, &manifest_url, Some(DOCKER_ACCEPT), &image.manifest).await?;
    let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    for layer in manifest["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap().to_owned());
    }
    for digest in blobs {
        fetch_checked(
            http,
            &format!("{url}/v2/{name}/blobs/{digest}"),
            None,
            &digest,
        )
        .await?;
    }
    Ok(())
}

/// 20 clients pull ten images (40 MiB, a budget of 24) round and round until the evictor has
/// evicted at least `evictions` images under them; every answer must be whole and right.
async fn race_pulls_against_the_evictor(store: Store, evictions: f64) {
    let hub = FakeUpstream::start().await;
    let images: Arc<Vec<TestImage>> = Arc::new(
        (0..10)
            .map(|i| {
                let repo = format!("library/race{i}");
                image(
                    &hub,
                    None,
                    &repo,
                    Some("1"),
                    &[("race-base", MIB), (&repo, 3 * MIB)],
                )
            })
            .collect(),
    );
    let mirror = store
        .serving(MirrorSetup::new(&hub.url).extra_yaml(&cache_yaml("0s", &[])))
        .start()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let pulls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..20)
        .map(|client| {
            let (images, stop, failures, pulls) = (
                images.clone(),
                stop.clone(),
                failures.clone(),
                pulls.clone(),
            );
            let (http, url) = (reqwest::Client::new(), mirror.url.clone());
            tokio::spawn(async move {
                let mut next = client;
                while !stop.load(Ordering::SeqCst) {
                    let image = &images[next % images.len()];
                    next += 3;
                    if let Err(failure) = pull_checked(&http, &url, image).await {
                        failures.lock().unwrap().push(failure);
                    }
                    pulls.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    until(
        &format!("{evictions} images evicted under the pulls"),
        Duration::from_secs(180),
        async || {
            let evicted = mirror.metrics().await.value("cistern_evicted_images_total");
            if evicted >= evictions {
                return Ok(());
            }
            let failures = failures.lock().unwrap();
            Err(format!(
                "{evicted} evicted in {} pulls, of which {} went wrong, e.g. {:?}",
                pulls.load(Ordering::SeqCst),
                failures.len(),
                failures.first()
            ))
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("no client panicked");
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} of {} pulls went wrong while evicting, e.g. {:?}",
        failures.len(),
        pulls.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    // And afterwards every image pulls whole.
    for image in images.iter() {
        pull_checked(&mirror.http, &mirror.url, image)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn eviction_racing_twenty_concurrent_pulls_breaks_no_answer() {
    race_pulls_against_the_evictor(Store::Filesystem, 12.0).await;
}

#[tokio::test]
async fn eviction_racing_twenty_concurrent_pulls_breaks_no_answer_on_s3() {
    race_pulls_against_the_evictor(Store::s3().await, 6.0).await;
}

/// A client reads a cached 16 MiB layer and stalls after the first chunk; its image becomes
/// the least recently pulled and is evicted. With `keeprecent: 0s` nothing protects what is
/// being read, so the evictor deletes the layer from the store under the reader (while cistern
/// is still reading it from there), and the client, reading on, still gets every byte.
async fn a_reader_gets_every_byte_of_a_blob_evicted_under_it(store: Store) {
    const LAYER: usize = 16 * MIB;
    let hub = FakeUpstream::start().await;
    let slow = image(&hub, None, "library/slow", Some("1"), &[("slow", LAYER)]);
    let a = image(&hub, None, "library/a", Some("1"), &[("a", 5 * MIB)]);
    let b = image(&hub, None, "library/b", Some("1"), &[("b", 5 * MIB)]);
    let mirror = store
        .serving(MirrorSetup::new(&hub.url).extra_yaml(&cache_yaml("0s", &[])))
        .start()
        .await;
    pull(&mirror, &slow).await;
    let layer = slow.top_layer().to_owned();
    assert!(store.has_content(&mirror, &layer).await);

    // A client starts reading the cached layer, and stops after the first bytes. (On S3 the
    // store sends it slowly too, so that the whole of it cannot have reached cistern before
    // the eviction.)
    store.slow_next_read(&layer, LAYER as u64, Duration::from_secs(16));
    let mut reader =
        HeldBackReader::get(&mirror, &format!("/v2/{}/blobs/{layer}", slow.name)).await;

    // 26 MiB: the slow image is the least recently pulled, and goes (to 10 MiB).
    pull_in_order(&mirror, &[&a, &b]).await;
    wait_for_evicted(&mirror, 1.0).await;
    assert!(
        !store.has_content(&mirror, &layer).await,
        "deleted from the store while being read"
    );
    assert!(
        store.still_reading(&mirror, &layer),
        "cistern was still reading the layer from the store when it was deleted"
    );

    let (read, digest) = reader.read_to_end().await;
    assert_eq!(read, LAYER);
    assert_eq!(digest, layer);
}

/// A client reading a body through a small receive buffer: what it has not read yet stays
/// with the server (a few MiB of send buffer at most), not in a receive buffer the kernel
/// would grow to take the whole body. Speaks just enough HTTP/1.1 for one GET.
struct HeldBackReader {
    stream: tokio::net::TcpStream,
    hasher: Sha256,
    read: usize,
    length: usize,
}

impl HeldBackReader {
    /// Sends the GET, reads the head (it must say 200 and the length) and the first bytes.
    async fn get(mirror: &Mirror, path: &str) -> HeldBackReader {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = mirror.url.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no content-length: {head}"));
        let mut reader = HeldBackReader {
            stream,
            hasher: Sha256::new(),
            read: 0,
            length,
        };
        reader.read_once().await;
        reader
    }

    /// Reads what has arrived of the body (at most 64 KiB).
    async fn read_once(&mut self) {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0; 64 * 1024];
        let n = self.stream.read(&mut buffer).await.unwrap();
        assert!(
            n > 0,
            "the body ended after {} of {} bytes",
            self.read,
            self.length
        );
        self.hasher.update(&buffer[..n]);
        self.read += n;
    }

    /// Reads the rest of the body: how long it was, and its digest.
    async fn read_to_end(&mut self) -> (usize, String) {
        while self.read < self.length {
            self.read_once().await;
        }
        let digest = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        (self.read, digest)
    }
}

#[tokio::test]
async fn a_client_reading_a_blob_evicted_under_it_gets_every_byte() {
    a_reader_gets_every_byte_of_a_blob_evicted_under_it(Store::Filesystem).await;
}

#[tokio::test]
async fn a_client_reading_a_blob_evicted_under_it_gets_every_byte_on_s3() {
    a_reader_gets_every_byte_of_a_blob_evicted_under_it(Store::s3().await).await;
}

// 5. An image pulled by digest -----------------------------------------------------------------

#[tokio::test]
async fn an_image_pulled_by_digest_is_evicted_in_its_turn_not_as_garbage() {
    let hub = FakeUpstream::start().await;
    let five = |repo: &str, tag: Option<&str>| {
        image(
            &hub,
            None,
            repo,
            tag,
            &[(&format!("{repo}-layer"), 5 * MIB)],
        )
    };
    let a = five("library/a", Some("1"));
    // Upstream has no tag for it at all: clients can only name it by digest.
    let pinned_by_digest = five("library/deployed", None);
    let b = five("library/b", Some("1"));
    let c = five("library/c", Some("1"));
    let d = five("library/d", Some("1"));
    let e = five("library/e", Some("1"));
    assert!(pinned_by_digest.reference.starts_with("sha256:"));
    let mirror = MirrorSetup::new(&hub.url)
        .extra_yaml(&cache_yaml("0s", &[]))
        .start()
        .await;

    // 25 MiB: one image goes, the least recently pulled (a), not the untagged one.
    pull_in_order(&mirror, &[&a, &pinned_by_digest, &b, &c]).await;
    pull(&mirror, &d).await;
    wait_for_evicted(&mirror, 1.0).await;
    assert_kept_exactly(&mirror, &[&hub], &[&pinned_by_digest, &b, &c, &d], &[&a]).await;

    // Now it is the least recently pulled (assert_kept_exactly pulled them in this order,
    // from the cache): it goes next, whole.
    pull(&mirror, &e).await;
    wait_for_evicted(&mirror, 2.0).await;
    assert_kept_exactly(
        &mirror,
        &[&hub],
        &[&b, &c, &d, &e],
        &[&a, &pinned_by_digest],
    )
    .await;
}

// 6. What operators see ------------------------------------------------------------------------

#[tokio::test]
async fn metrics_and_the_catalog_show_what_eviction_did() {
    let hub = FakeUpstream::start().await;
    let images: Vec<TestImage> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|name| {
            let repo = format!("library/{name}");
            image(&hub, None, &repo, Some("1"), &[(&repo, 5 * MIB)])
        })
        .collect();
    let mirror = MirrorSetup::new(&hub.url)
        .extra_yaml(&cache_yaml("0s", &[]))
        .start()
        .await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let metrics = mirror.metrics().await;
    assert_eq!(metrics.value("cistern_evicted_images_total"), 0.0);
    assert_eq!(
        metrics.value("cistern_last_eviction_timestamp_seconds"),
        0.0
    );

    let all: Vec<&TestImage> = images.iter().collect();
    pull_in_order(&mirror, &all[..4]).await;
    let catalog: Value = mirror.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        json!(["library/a", "library/b", "library/c", "library/d"])
    );
    let before = stored_content(&mirror);
    pull(&mirror, all[4]).await;
    wait_for_evicted(&mirror, 1.0).await;

    let catalog: Value = mirror.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(
        catalog["repositories"],
        json!(["library/b", "library/c", "library/d", "library/e"]),
        "a repository whose every image went leaves the catalog"
    );
    let gone = &images[0];
    let gone_bytes: u64 = gone.contents().iter().map(|d| before[d]).sum();
    let metrics = mirror.metrics().await;
    assert_eq!(metrics.value("cistern_evicted_images_total"), 1.0);
    assert_eq!(
        metrics.value("cistern_evicted_objects_total"),
        3.0,
        "its manifest, config and layer"
    );
    assert_eq!(
        metrics.value("cistern_evicted_bytes_total"),
        gone_bytes as f64
    );
    assert_eq!(metrics.value("cistern_cache_budget_bytes"), BUDGET as f64);
    assert_eq!(
        metrics.value("cistern_cache_bytes"),
        stored_bytes(&mirror) as f64,
        "the cache's size is what the store holds"
    );
    assert!(metrics.value("cistern_cache_bytes") <= low_watermark() as f64);
    let at = metrics.value("cistern_last_eviction_timestamp_seconds");
    assert!(at >= started as f64 && at <= started as f64 + 120.0, "{at}");
    // The repository's records are gone from the store, not only from the listing.
    assert!(!mirror
        .storage
        .join("repositories/library/a/_tags/1")
        .exists());
}

// An image whose manifest was pulled before keeprecent but whose layer a client is reading
// now used to lose its tag and manifest (the layer stayed, as an orphan), and the sweep,
// having freed almost nothing, evicted the next image too.

#[tokio::test]
async fn an_image_whose_layer_was_just_read_is_not_evicted_around_it() {
    let hub = FakeUpstream::start().await;
    let five = |repo: &str| image(&hub, None, repo, Some("1"), &[(repo, 5 * MIB)]);
    let [a, b, c, d, e] = [
        "library/a",
        "library/b",
        "library/c",
        "library/d",
        "library/e",
    ]
    .map(five);
    let keep_recent = Duration::from_secs(12);
    let mirror = MirrorSetup::new(&hub.url)
        .extra_yaml(&cache_yaml("12s", &[]))
        .start()
        .await;
    pull_in_order(&mirror, &[&a, &b]).await;
    tokio::time::sleep(keep_recent + Duration::from_secs(1)).await;
    // A client reads a's layer again now (a resumed download, or a slow pull that fetched
    // the manifest long ago): a is in use.
    let layer = mirror
        .get(&format!("/v2/{}/blobs/{}", a.name, a.top_layer()))
        .await;
    assert_eq!(layer.status(), 200);
    assert_eq!(sha256(&layer.bytes().await.unwrap()), a.top_layer());
    // 25 MiB: one image must go, and b, neither in use nor recent, is the one.
    pull_in_order(&mirror, &[&c, &d, &e]).await;
    wait_for_evicted(&mirror, 1.0).await;
    assert_kept_exactly(&mirror, &[&hub], &[&a, &c, &d, &e], &[&b]).await;
}

// 8. A free-space floor (`cache.minfree`) on a real filesystem ----------------------------------

/// A mirror storing on a 40 MiB tmpfs that keeps 16 MiB free, holding two 9 MiB images (`a`
/// pulled before `b`) with about 22 MiB free.
async fn mirror_keeping_16_mib_free(
    hub: &FakeUpstream,
) -> (crate::common::tmpfs::Tmpfs, Mirror, TestImage, TestImage) {
    let tmpfs = crate::common::tmpfs::Tmpfs::mount(40);
    let a = image(hub, None, "library/a", Some("1"), &[("a", 9 * MIB)]);
    let b = image(hub, None, "library/b", Some("1"), &[("b", 9 * MIB)]);
    let mirror = MirrorSetup::new(&hub.url)
        .storage_dir(&tmpfs.store())
        .extra_yaml(
            "cache:\n  minfree: 16MiB\n  keeprecent: 0s\nhealth:\n  storagedriver:\n    enabled: false\n",
        )
        .start()
        .await;
    pull_in_order(&mirror, &[&a, &b]).await;
    for image in [&a, &b] {
        assert!(mirror.has_content(image.top_layer()), "{}", image.shown());
    }
    assert!(tmpfs.available() >= 20 * MIB as u64);
    (tmpfs, mirror, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_filled_below_minfree_by_something_else_gets_room_back_from_the_least_recently_pulled(
) {
    let hub = FakeUpstream::start().await;
    let (mut tmpfs, mirror, a, b) = mirror_keeping_16_mib_free(&hub).await;

    // Another program takes 8 MiB: 14 MiB free, under the floor. The evictor sees it at its
    // next check and frees the least recently pulled image, whole.
    tmpfs.take(8);
    wait_for_evicted(&mirror, 1.0).await;
    assert!(!mirror.has_content(a.top_layer()), "a went");
    assert!(
        tmpfs.available() >= 16 * MIB as u64,
        "back above the floor: {} bytes free",
        tmpfs.available()
    );
    let before = hub.registry_requests();
    pull(&mirror, &b).await;
    assert_eq!(hub.registry_requests(), before, "b is still cached whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_pull_that_would_go_below_minfree_is_served_uncached_then_cached_once_room_is_made()
{
    let hub = FakeUpstream::start().await;
    let (mut tmpfs, mirror, a, b) = mirror_keeping_16_mib_free(&hub).await;
    tmpfs.take(4); // 18 MiB free: above the floor, but not by a 9 MiB layer
    let c = image(&hub, None, "library/c", Some("1"), &[("c", 9 * MIB)]);

    // `pull` checks every byte against its digest.
    pull(&mirror, &c).await;
    let m = mirror.metrics().await;
    assert_eq!(
        m.value(r#"cistern_uncached_serves_total{kind="blob",reason="full"}"#),
        1.0,
        "{}",
        m.0
    );
    assert!(
        !mirror.has_content(c.top_layer()),
        "not cached below the floor"
    );

    // The refusal woke the evictor: the least recently pulled image made room.
    wait_for_evicted(&mirror, 1.0).await;
    assert!(!mirror.has_content(a.top_layer()), "a went");
    assert!(mirror.has_content(b.top_layer()), "b stays");

    // Now the layer fits above the floor, and is cached.
    pull(&mirror, &c).await;
    assert!(
        mirror.has_content(c.top_layer()),
        "cached once room was made"
    );
    assert!(
        tmpfs.available() >= 16 * MIB as u64,
        "{} bytes free",
        tmpfs.available()
    );
}
