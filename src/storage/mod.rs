//! The storage facade: everything cistern keeps goes through here, over any
//! `object_store::ObjectStore` (the local filesystem today; S3, GCS or Azure later).

mod backends;
mod free_space;
mod index;
pub mod layout;
mod local_read;
mod pressure;
mod read_buffers;
mod relay;
mod spool;
mod writer;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use serde::{de::DeserializeOwned, Serialize};

pub use free_space::{disk_room, DiskRoom, FreeSpaceFloor};
pub use index::{Records, RepositorySummary, StoreIndex, Totals};
pub use pressure::{PressureState, Refusal, StoragePressure};
pub use spool::{SpoolAppender, SpoolCursor, SpoolDir, SpoolFile, SpoolReader};
pub use writer::ContentWriter;

/// A storage failure, naming the key it happened on.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage error on key {key}: {source}")]
    Store {
        key: String,
        source: object_store::Error,
    },
    #[error("record {key} in storage is corrupt: {source}")]
    CorruptRecord {
        key: String,
        source: serde_json::Error,
    },
    #[error("cannot create storage root {path}: {source}")]
    Root {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot use storage {store}: {source}")]
    Unreachable {
        store: String,
        source: object_store::Error,
    },
    #[error("storage error on key {key}: {source}")]
    Io { key: String, source: std::io::Error },
}

impl StorageError {
    fn store(key: &Path, source: object_store::Error) -> Self {
        StorageError::Store {
            key: key.to_string(),
            source,
        }
    }

    /// Whether the store refused for lack of space (see `out_of_space`).
    pub fn is_out_of_space(&self) -> bool {
        out_of_space(self)
    }
}

/// What object stores and disks say when they are full or over quota: the texts of ENOSPC and
/// EDQUOT, S3's and Ceph RGW's `QuotaExceeded`, MinIO's `XMinioStorageFull`, HTTP 507.
const OUT_OF_SPACE: [&str; 6] = [
    "No space left on device",
    "Disk quota exceeded",
    "QuotaExceeded",
    "XMinioStorageFull",
    "InsufficientStorage",
    "507 Insufficient Storage",
];

/// Whether `error`, or an error it was caused by, says the store is out of space (a full
/// disk or bucket, a quota), rather than broken or refusing for another reason.
pub fn out_of_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) {
                return true;
            }
        }
        let text = error.to_string();
        if OUT_OF_SPACE.iter().any(|words| text.contains(words)) {
            return true;
        }
        next = error.source();
    }
    false
}

/// How long a blob read waits on an object store for its answer or for the next bytes (the
/// read as a whole may last as long as the client takes).
const STORE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a shared object store is listed again to rebuild the index.
const INDEX_REFRESH: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// A stored object's bytes as a stream, with the part of it the stream covers.
pub struct StoredRead {
    pub total_size: u64,
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The same store through a client without a whole-request timeout, for blob reads that
    /// last as long as a client takes (`read_from` puts an idle deadline on them instead).
    streaming: Arc<dyn ObjectStore>,
    /// The directory behind `store` when it is the local filesystem: a verified spool is then
    /// renamed into place instead of being copied.
    local_root: Option<PathBuf>,
    /// What the store holds, kept up to date by every write and delete through here.
    index: Arc<StoreIndex>,
    spool: Arc<SpoolDir>,
    /// Whether writes are refused for lack of space; every write reports to it.
    pressure: Arc<StoragePressure>,
    /// `cache.minfree` on a filesystem store; never set on object stores.
    free_floor: Arc<FreeSpaceFloor>,
}

impl Storage {
    /// A filesystem store rooted at `root`, created if missing. Spools live in `root/_spool`,
    /// on the same filesystem, so committing one is a rename.
    pub fn filesystem(root: &FsPath) -> Result<Self, StorageError> {
        let root_error = |source| StorageError::Root {
            path: root.display().to_string(),
            source,
        };
        std::fs::create_dir_all(root).map_err(root_error)?;
        let root = root.canonicalize().map_err(root_error)?;
        let free_floor = Arc::new(FreeSpaceFloor::new(&root));
        let spool = SpoolDir::clean(root.join(layout::SPOOL))
            .map_err(root_error)?
            .with_floor(free_floor.clone());
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| root_error(std::io::Error::other(e)))?
            .with_automatic_cleanup(true);
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        Ok(Storage {
            streaming: store.clone(),
            store,
            local_root: Some(root),
            index: Arc::default(),
            spool: Arc::new(spool),
            pressure: Arc::default(),
            free_floor,
        })
    }

    /// The store is a local directory (blobs are committed by renaming their spool).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// Where fills spool the blobs they fetch.
    pub fn spool(&self) -> &SpoolDir {
        &self.spool
    }

    /// Whether the store is full, as its last writes said; shared by every clone.
    pub fn pressure(&self) -> &Arc<StoragePressure> {
        &self.pressure
    }

    /// Keeps `min_free` free on a filesystem store's disk (`cache.minfree`): content is no
    /// longer written below it. Ignored on object stores (the config refuses the key there).
    pub fn keep_free(&self, min_free: crate::config::MinFree) {
        if self.is_local() {
            self.free_floor.keep(min_free);
        }
    }

    /// The free-space floor (`cache.minfree`), for the evictor.
    pub fn free_floor(&self) -> &FreeSpaceFloor {
        &self.free_floor
    }

    /// Tells the pressure how a write to `key` went, and passes the result on.
    fn reported<T>(&self, key: &Path, result: Result<T, StorageError>) -> Result<T, StorageError> {
        match &result {
            Ok(_) => self.pressure.stored(),
            Err(e) => {
                self.pressure.refused(key.as_ref(), e);
            }
        }
        result
    }

    /// On an object store, the upload a fill streams a blob into while it arrives; it becomes
    /// visible only when committed. None on the filesystem, where the spool itself is renamed
    /// into place (`commit_spool`).
    pub async fn begin_blob_upload(
        &self,
        key: &Path,
    ) -> Result<Option<ContentWriter>, StorageError> {
        if self.local_root.is_some() {
            return Ok(None);
        }
        self.begin_write(key).await.map(Some)
    }

    /// On the filesystem, makes a verified spool the object at `key` with a rename.
    pub async fn commit_spool(
        &self,
        key: &Path,
        spool: &mut SpoolFile,
    ) -> Result<(), StorageError> {
        let result = self.rename_spool(key, spool).await;
        self.reported(key, result)
    }

    async fn rename_spool(&self, key: &Path, spool: &mut SpoolFile) -> Result<(), StorageError> {
        let io_error = |source| StorageError::Io {
            key: key.to_string(),
            source,
        };
        let Some(root) = &self.local_root else {
            return Err(io_error(std::io::Error::other(
                "only a filesystem store takes spools; object stores take uploads",
            )));
        };
        if let Some(cause) = spool.overflowed() {
            // Part of the blob went through memory: the file does not hold it all.
            return Err(io_error(std::io::Error::new(
                cause.kind(),
                format!("the spool could not take the whole blob: {cause}"),
            )));
        }
        spool.sync().await.map_err(io_error)?;
        let destination = root.join(key.as_ref());
        if let Some(parent) = destination.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_error)?;
        }
        tokio::fs::rename(spool.path(), &destination)
            .await
            .map_err(io_error)?;
        spool.mark_kept();
        let size = tokio::fs::metadata(&destination)
            .await
            .map_err(io_error)?
            .len();
        self.index.put(key.as_ref(), size);
        Ok(())
    }

    /// The size of the object at `key`, or None if it does not exist.
    pub async fn size_of(&self, key: &Path) -> Result<Option<u64>, StorageError> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store(key, e)),
        }
    }

    /// Streams the object at `key` from `offset` (None if it does not exist).
    pub async fn read_from(
        &self,
        key: &Path,
        range: Option<Range<u64>>,
    ) -> Result<Option<StoredRead>, StorageError> {
        if let Some(root) = &self.local_root {
            return local_read::read_file(root, key, range).await;
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let started = tokio::time::timeout(STORE_IDLE, self.streaming.get_opts(key, options));
        let answered = started.await.map_err(|_| StorageError::Io {
            key: key.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the store did not answer within {STORE_IDLE:?}"),
            ),
        })?;
        match answered {
            Ok(result) => {
                let total_size = result.meta.size;
                let range = result.range.clone();
                let key_name = key.to_string();
                // Waiting on the store (not on the client) for longer than this is a failure.
                let body = tokio_stream::StreamExt::timeout(result.into_stream(), STORE_IDLE)
                    .map(move |item| match item {
                        Ok(Ok(bytes)) => Ok(bytes),
                        Ok(Err(e)) => Err(std::io::Error::other(format!(
                            "reading storage key {key_name}: {e}"
                        ))),
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "reading storage key {key_name}: nothing came for {STORE_IDLE:?}"
                            ),
                        )),
                    })
                    .boxed();
                Ok(Some(StoredRead {
                    total_size,
                    range,
                    body,
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store(key, e)),
        }
    }

    /// The whole object at `key` in memory; only for small objects such as manifests.
    pub async fn read_small(&self, key: &Path) -> Result<Option<Bytes>, StorageError> {
        match self.store.get(key).await {
            Ok(result) => result
                .bytes()
                .await
                .map(Some)
                .map_err(|e| StorageError::store(key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store(key, e)),
        }
    }

    /// Writes a small object in one atomic put.
    pub async fn write_small(&self, key: &Path, bytes: Bytes) -> Result<(), StorageError> {
        if let layout::KeyKind::Content { .. } = layout::classify(key.as_ref()) {
            if let Err(source) = self.free_floor.check(key.as_ref()) {
                let refused = Err(StorageError::Io {
                    key: key.to_string(),
                    source,
                });
                return self.reported(key, refused);
            }
        }
        let size = bytes.len() as u64;
        let result = self
            .store
            .put(key, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| StorageError::store(key, e));
        if result.is_ok() {
            self.index.put(key.as_ref(), size);
        }
        self.reported(key, result)
    }

    pub async fn read_record<T: DeserializeOwned>(
        &self,
        key: &Path,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.read_small(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StorageError::CorruptRecord {
                key: key.to_string(),
                source,
            })
    }

    pub async fn write_record<T: Serialize>(
        &self,
        key: &Path,
        record: &T,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(record).expect("records serialise to JSON");
        self.write_small(key, Bytes::from(bytes)).await
    }

    pub async fn delete(&self, key: &Path) -> Result<(), StorageError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.index.delete(key.as_ref());
                Ok(())
            }
            Err(e) => Err(StorageError::store(key, e)),
        }
    }

    /// Starts writing content that becomes visible at `key` only when committed.
    pub async fn begin_write(&self, key: &Path) -> Result<ContentWriter, StorageError> {
        ContentWriter::begin(
            self.store.as_ref(),
            key,
            self.index.clone(),
            self.pressure.clone(),
        )
        .await
    }

    /// Writes a small object only if none is at `key`: false when one is (S3's
    /// `If-None-Match: *`, an exclusive create on the filesystem).
    pub async fn create_small(&self, key: &Path, bytes: Bytes) -> Result<bool, StorageError> {
        let options = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(key, PutPayload::from_bytes(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(StorageError::store(key, e)),
        }
    }

    /// What the store holds, as the index knows it.
    pub fn index(&self) -> &StoreIndex {
        &self.index
    }

    /// Builds the index from one listing of the whole store; changes made meanwhile are kept.
    /// Returns how many keys were listed.
    pub async fn rebuild_index(&self) -> Result<usize, StorageError> {
        self.index.begin_rebuild();
        let listed: Result<Vec<(String, u64)>, _> = self
            .store
            .list(None)
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await;
        match listed {
            Ok(listed) => {
                let count = listed.len();
                self.index.finish_rebuild(listed);
                Ok(count)
            }
            Err(e) => {
                self.index.abandon_rebuild();
                Err(StorageError::store(&Path::from(""), e))
            }
        }
    }

    /// Every key below `prefix` with when it was last written (milliseconds since the epoch).
    pub async fn list_with_times(&self, prefix: &Path) -> Result<Vec<(Path, i64)>, StorageError> {
        self.store
            .list(Some(prefix))
            .map_ok(|meta| (meta.location, meta.last_modified.timestamp_millis()))
            .try_collect()
            .await
            .map_err(|e| StorageError::store(prefix, e))
    }

    /// The last segment of every key below `prefix`, sorted.
    pub async fn list_names(&self, prefix: &Path) -> Result<Vec<String>, StorageError> {
        let mut names: Vec<String> = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location.filename().unwrap_or_default().to_owned())
            .try_collect()
            .await
            .map_err(|e| StorageError::store(prefix, e))?;
        names.sort();
        Ok(names)
    }

    /// Deletes every object last written before `cutoff_ms` (milliseconds since the Unix
    /// epoch) for which `keep` (given the key) says no; returns how many. In-progress writes
    /// are invisible until committed, so they are never listed here.
    pub async fn remove_written_before(
        &self,
        cutoff_ms: i64,
        keep: impl Fn(&str) -> bool,
    ) -> Result<usize, StorageError> {
        let root = Path::from("");
        let keep = &keep;
        let old: Vec<Path> = self
            .store
            .list(None)
            .try_filter_map(|meta| async move {
                let old = meta.last_modified.timestamp_millis() < cutoff_ms;
                let internal = layout::is_internal(&meta.location);
                let expired = old && !internal && !keep(meta.location.as_ref());
                Ok(expired.then_some(meta.location))
            })
            .try_collect()
            .await
            .map_err(|e| StorageError::store(&root, e))?;
        for key in &old {
            self.delete(key).await?;
        }
        Ok(old.len())
    }

    /// Builds the index now, in the background, and again every `refresh` on a shared object
    /// store (another replica's writes reach this one's index then; on the filesystem this
    /// process makes every change, so once is enough).
    pub fn spawn_index_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let storage = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(INDEX_REFRESH);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let started = std::time::Instant::now();
                match storage.rebuild_index().await {
                    Ok(keys) => {
                        let totals = storage.index.totals();
                        tracing::info!(
                            keys,
                            repositories = totals.repositories,
                            content_objects = totals.content_objects,
                            content_bytes = totals.content_bytes,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "storage index built"
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list the store to build its index; listing it per request until it can")
                    }
                }
                if storage.is_local() && storage.index.is_built() {
                    return;
                }
            }
        })
    }

    /// Every repository with at least one record, sorted: from the index once it is built,
    /// else from a walk of the store.
    pub async fn list_repositories(&self) -> Result<Vec<String>, StorageError> {
        if self.index.is_built() {
            return Ok(self.index.repositories());
        }
        let prefix = Path::from(layout::REPOSITORIES);
        let repositories: BTreeSet<String> = self
            .store
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                Ok(layout::repository_of(&meta.location).map(str::to_owned))
            })
            .try_collect()
            .await
            .map_err(|e| StorageError::store(&prefix, e))?;
        Ok(repositories.into_iter().collect())
    }
}
