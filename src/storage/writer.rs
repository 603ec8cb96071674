//! Streaming writes that become visible only on commit. A multipart upload is invisible until
//! it completes (on the filesystem it is a staging file renamed into place), so a blob whose
//! digest did not match is aborted and leaves nothing behind.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};

use super::{StorageError, StoreIndex};

/// Parts are written in chunks of this size; it bounds the memory one fill holds.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// How many parts may be in flight to the store at once.
const PARTS_IN_FLIGHT: usize = 2;

pub struct ContentWriter {
    key: Path,
    upload: WriteMultipart,
    /// Bytes written so far: the object's size once committed.
    written: u64,
    /// Told about the object once it is visible.
    index: Arc<StoreIndex>,
}

impl ContentWriter {
    pub(super) async fn begin(
        store: &dyn ObjectStore,
        key: &Path,
        index: Arc<StoreIndex>,
    ) -> Result<Self, StorageError> {
        let upload = store
            .put_multipart(key)
            .await
            .map_err(|e| StorageError::store(key, e))?;
        Ok(ContentWriter {
            key: key.clone(),
            upload: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
            written: 0,
            index,
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.upload
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| StorageError::store(&self.key, e))?;
        self.upload.write(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Makes the content visible under its key.
    pub async fn commit(self) -> Result<(), StorageError> {
        self.upload
            .finish()
            .await
            .map_err(|e| StorageError::store(&self.key, e))?;
        self.index.put(self.key.as_ref(), self.written);
        Ok(())
    }

    /// Drops what was written; nothing becomes visible.
    pub async fn abort(self) {
        let key = self.key.clone();
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(key = %key, error = %e, "could not abort a partial write");
        }
    }
}
