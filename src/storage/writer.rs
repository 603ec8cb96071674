//! Streaming writes that become visible only on commit. A multipart upload is invisible until
//! it completes (on the filesystem it is a staging file renamed into place), so a blob whose
//! digest did not match is aborted and leaves nothing behind.

use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};

use super::StorageError;

/// Parts are written in chunks of this size; it bounds the memory one fill holds.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// How many parts may be in flight to the store at once.
const PARTS_IN_FLIGHT: usize = 2;

pub struct ContentWriter {
    key: Path,
    upload: WriteMultipart,
}

impl ContentWriter {
    pub(super) async fn begin(store: &dyn ObjectStore, key: &Path) -> Result<Self, StorageError> {
        let upload = store
            .put_multipart(key)
            .await
            .map_err(|e| StorageError::store(key, e))?;
        Ok(ContentWriter {
            key: key.clone(),
            upload: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.upload
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| StorageError::store(&self.key, e))?;
        self.upload.write(bytes);
        Ok(())
    }

    /// Makes the content visible under its key.
    pub async fn commit(self) -> Result<(), StorageError> {
        self.upload
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| StorageError::store(&self.key, e))
    }

    /// Drops what was written; nothing becomes visible.
    pub async fn abort(self) {
        let key = self.key.clone();
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(key = %key, error = %e, "could not abort a partial write");
        }
    }
}
