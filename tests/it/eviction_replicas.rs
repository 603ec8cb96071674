//! Replicas of one bucket evict one at a time: the one holding `_cistern/eviction-lease`
//! evicts, the others leave it to it.

use bytes::Bytes;
use cistern::config::Config;
use cistern::storage::Storage;
use object_store::path::Path;

use crate::common::moto::Moto;
use crate::common::{add_image, until, FakeUpstream, MirrorSetup, OCI_MANIFEST};

/// How long the evictor (checking every 5 s) may take.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_over_budget_leaves_eviction_to_the_lease_holder_then_evicts_once_it_is_free() {
    let moto = Moto::start().await;
    moto.create_bucket("cache").await;
    let storage_yaml = moto.storage_yaml(&moto.endpoint, "cache");
    let up = FakeUpstream::start().await;
    let old = add_image(&up, "team/old", Some("1"), OCI_MANIFEST, "lease-old");
    let new = add_image(&up, "team/new", Some("1"), OCI_MANIFEST, "lease-new");

    // Another replica holds the lease, for a good while yet.
    let config = Config::from_yaml(&storage_yaml, Vec::new()).unwrap().config;
    let bucket = Storage::open(&config.storage).await.unwrap();
    let lease = Path::from("_cistern/eviction-lease");
    let until_ms = (std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let record = format!(r#"{{"holder":"other-replica","until_ms":{until_ms}}}"#);
    assert!(bucket
        .create_small(&lease, Bytes::from(record))
        .await
        .unwrap());

    // One image is about 3 MiB: a 4 MiB budget holds one of the two.
    let mirror = MirrorSetup::new(&up.url)
        .storage(storage_yaml)
        .extra_yaml("cache: {maxsize: 4MiB, keeprecent: 0s}\n")
        .start()
        .await;
    mirror.pull("team/old", "1").await;
    mirror.pull("team/new", "1").await;
    until("the evictor to find the lease held", WITHIN, async || {
        mirror
            .metrics()
            .await
            .value("cistern_eviction_deferred_total")
            >= 1.0
    })
    .await;
    let metrics = mirror.metrics().await;
    assert_eq!(metrics.value("cistern_evicted_images_total"), 0.0);

    // The holder is done: this replica takes the lease, evicts the older image, releases it.
    bucket.delete(&lease).await.unwrap();
    until("the older image to be evicted", WITHIN, async || {
        mirror.metrics().await.value("cistern_evicted_images_total") >= 1.0
    })
    .await;
    let before = up.registry_requests();
    mirror.pull("team/new", "1").await;
    assert_eq!(up.registry_requests(), before, "the newer image was kept");
    assert!(
        bucket.read_small(&lease).await.unwrap().is_none(),
        "released"
    );
    let gets_before = up.count(http::Method::GET, &format!("/blobs/{}", old.blobs[2]));
    mirror.pull("team/old", "1").await;
    assert!(
        up.count(http::Method::GET, &format!("/blobs/{}", old.blobs[2])) > gets_before,
        "the older image was evicted and is fetched again"
    );
    let _ = new;
}
