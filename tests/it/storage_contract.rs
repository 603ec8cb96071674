//! One contract for the storage facade, run on every backend: the filesystem, memory and S3 (moto).
//! Whatever the store, cistern sees the same behaviour.

use crate::common::moto::Moto;
use bytes::Bytes;
use cistern::config::Config;
use cistern::storage::Storage;
use futures::TryStreamExt;
use object_store::path::Path;

async fn open(storage_yaml: &str) -> Storage {
    let config = Config::from_yaml(storage_yaml, Vec::new()).unwrap().config;
    Storage::open(&config.storage).await.unwrap()
}

async fn read_all(storage: &Storage, key: &Path, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let read = storage.read_from(key, range).await.unwrap().unwrap();
    let chunks: Vec<Bytes> = read.body.try_collect().await.unwrap();
    chunks.concat()
}

async fn contract(storage: Storage) {
    let key = Path::from("blobs/sha256/ab/abcdef");
    assert_eq!(storage.size_of(&key).await.unwrap(), None);
    assert!(storage.read_from(&key, None).await.unwrap().is_none());
    assert!(storage.read_small(&key).await.unwrap().is_none());

    // A streamed write is invisible until committed, then whole.
    let content: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut writer = storage.begin_write(&key).await.unwrap();
    for chunk in content.chunks(1024 * 1024 + 7) {
        writer.write(chunk).await.unwrap();
    }
    assert_eq!(
        storage.size_of(&key).await.unwrap(),
        None,
        "invisible before commit"
    );
    writer.commit().await.unwrap();
    assert_eq!(
        storage.size_of(&key).await.unwrap(),
        Some(content.len() as u64)
    );
    assert!(read_all(&storage, &key, None).await == content);
    assert!(read_all(&storage, &key, Some(1000..3000)).await == content[1000..3000]);

    // An aborted write leaves nothing.
    let aborted = Path::from("blobs/sha256/cd/cdef");
    let mut writer = storage.begin_write(&aborted).await.unwrap();
    writer.write(&content[..4096]).await.unwrap();
    writer.abort().await;
    assert_eq!(storage.size_of(&aborted).await.unwrap(), None);

    // Small objects and records.
    let tag = Path::from("repositories/library/alpine/_tags/latest");
    storage
        .write_small(&tag, Bytes::from_static(b"{\"digest\":\"x\"}"))
        .await
        .unwrap();
    assert_eq!(
        storage.read_small(&tag).await.unwrap().unwrap(),
        Bytes::from_static(b"{\"digest\":\"x\"}")
    );
    let record: Option<serde_json::Value> = storage.read_record(&tag).await.unwrap();
    assert_eq!(record.unwrap()["digest"], "x");
    let other = Path::from("repositories/org/team/app/_tags/v1");
    storage
        .write_small(&other, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(
        storage.list_repositories().await.unwrap(),
        vec!["library/alpine".to_owned(), "org/team/app".to_owned()]
    );
    assert_eq!(
        storage
            .list_names(&Path::from("repositories/library/alpine/_tags"))
            .await
            .unwrap(),
        vec!["latest".to_owned()]
    );

    // The index knows what was written, and a listing of the store agrees with it.
    let in_index = |storage: &Storage| {
        (
            storage.index().repositories(),
            storage.index().content_size("sha256:abcdef"),
            storage.index().content_size("sha256:cdef"),
        )
    };
    let expected = (
        vec!["library/alpine".to_owned(), "org/team/app".to_owned()],
        Some(content.len() as u64),
        None,
    );
    assert_eq!(in_index(&storage), expected, "as written");
    storage.rebuild_index().await.unwrap();
    assert!(storage.index().is_built());
    assert_eq!(in_index(&storage), expected, "as listed");

    // A create-only write: exactly one of two writers gets it (the eviction lease).
    let lease = Path::from("_cistern/lease-test");
    assert!(storage
        .create_small(&lease, Bytes::from_static(b"a"))
        .await
        .unwrap());
    assert!(!storage
        .create_small(&lease, Bytes::from_static(b"b"))
        .await
        .unwrap());
    assert_eq!(
        storage.read_small(&lease).await.unwrap().unwrap(),
        Bytes::from_static(b"a")
    );
    storage.delete(&lease).await.unwrap();
    assert!(storage
        .create_small(&lease, Bytes::from_static(b"c"))
        .await
        .unwrap());
    storage.delete(&lease).await.unwrap();

    // Deleting, twice, is fine.
    storage.delete(&tag).await.unwrap();
    storage.delete(&tag).await.unwrap();
    assert!(storage.read_small(&tag).await.unwrap().is_none());

    // Expiry removes what was written before the cutoff.
    assert_eq!(
        storage.remove_written_before(0, |_| false).await.unwrap(),
        0
    );
    let later = i64::MAX;
    assert_eq!(
        storage
            .remove_written_before(later, |_| false)
            .await
            .unwrap(),
        2
    );
    assert_eq!(storage.size_of(&key).await.unwrap(), None);
    assert!(storage.index().repositories().is_empty());
    assert_eq!(storage.index().totals().content_bytes, 0);
}

#[tokio::test]
async fn the_filesystem_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&format!(
        "storage: {{filesystem: {{rootdirectory: {}}}}}",
        dir.path().display()
    ))
    .await;
    contract(storage).await;
}

#[tokio::test]
async fn memory_keeps_the_contract() {
    contract(open("storage: {inmemory: }").await).await;
}

#[tokio::test]
async fn s3_keeps_the_contract() {
    let moto = Moto::start().await;
    moto.create_bucket("contract").await;
    contract(open(&moto.storage_yaml(&moto.endpoint, "contract")).await).await;
    assert_eq!(moto.pending_uploads("contract").await, 0);
}

#[tokio::test]
async fn a_bucket_that_does_not_answer_stops_start_up_with_its_name() {
    let moto = Moto::start().await;
    let config = Config::from_yaml(&moto.storage_yaml(&moto.endpoint, "missing"), Vec::new())
        .unwrap()
        .config;
    let error = Storage::open(&config.storage).await.err().expect("refused");
    let message = error.to_string();
    assert!(message.contains("s3://missing/mirror"), "{message}");
}
