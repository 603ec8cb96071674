//! Streaming writes that become visible only on commit. A multipart upload is invisible until
//! it completes (on the filesystem it is a staging file renamed into place), so a blob whose
//! digest did not match is aborted and leaves nothing behind.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayloadMut};
use tokio::task::JoinSet;

use super::{StorageError, StoragePressure, StoreIndex};

/// Parts are written in chunks of this size; it bounds the memory one fill holds.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// How many parts may be in flight to the store at once.
const PARTS_IN_FLIGHT: usize = 2;

/// A multipart upload, driven here rather than by `object_store::WriteMultipart`, whose
/// `finish` leaves the upload pending in the bucket when a part fails: every failure here,
/// in a part or in the completion, aborts it, so a refused write leaves nothing behind.
pub struct ContentWriter {
    key: Path,
    upload: Box<dyn MultipartUpload>,
    /// The part being gathered.
    buffer: PutPayloadMut,
    /// Parts on their way to the store.
    parts: JoinSet<object_store::Result<()>>,
    /// Bytes written so far: the object's size once committed.
    written: u64,
    /// Told about the object once it is visible.
    index: Arc<StoreIndex>,
    /// Told whether the store took the parts and the commit.
    pressure: Arc<StoragePressure>,
}

impl ContentWriter {
    pub(super) async fn begin(
        store: &dyn ObjectStore,
        key: &Path,
        index: Arc<StoreIndex>,
        pressure: Arc<StoragePressure>,
    ) -> Result<Self, StorageError> {
        let upload = store
            .put_multipart(key)
            .await
            .map_err(|e| StorageError::store(key, e))
            .inspect_err(|e| {
                pressure.refused(key.as_ref(), e);
            })?;
        Ok(ContentWriter {
            key: key.clone(),
            upload,
            buffer: PutPayloadMut::new(),
            parts: JoinSet::new(),
            written: 0,
            index,
            pressure,
        })
    }

    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), StorageError> {
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = PART_SIZE - self.buffer.content_length();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.content_length() == PART_SIZE {
                self.wait_for_parts(PARTS_IN_FLIGHT - 1).await?;
                self.send_part();
            }
        }
        Ok(())
    }

    fn send_part(&mut self) {
        let part = std::mem::take(&mut self.buffer).freeze();
        self.parts.spawn(self.upload.put_part(part));
    }

    /// Waits until at most `in_flight` parts are on their way.
    async fn wait_for_parts(&mut self, in_flight: usize) -> Result<(), StorageError> {
        while self.parts.len() > in_flight {
            match self.parts.join_next().await {
                Some(Ok(Ok(()))) | None => {}
                Some(Ok(Err(e))) => return Err(self.refused(e)),
                Some(Err(e)) => {
                    return Err(self.refused(object_store::Error::Generic {
                        store: "upload",
                        source: Box::new(e),
                    }))
                }
            }
        }
        Ok(())
    }

    /// Makes the content visible under its key; on failure nothing is left behind.
    pub async fn commit(mut self) -> Result<(), StorageError> {
        if self.buffer.content_length() > 0 {
            self.send_part();
        }
        if let Err(e) = self.wait_for_parts(0).await {
            self.abort().await;
            return Err(e);
        }
        match self.upload.complete().await {
            Ok(_) => {
                self.index.put(self.key.as_ref(), self.written);
                self.pressure.stored();
                Ok(())
            }
            Err(e) => {
                let e = self.refused(e);
                self.abort().await;
                Err(e)
            }
        }
    }

    fn refused(&self, error: object_store::Error) -> StorageError {
        let error = StorageError::store(&self.key, error);
        self.pressure.refused(self.key.as_ref(), &error);
        error
    }

    /// Drops what was written; nothing becomes visible.
    pub async fn abort(mut self) {
        self.parts.shutdown().await;
        if let Err(e) = self.upload.abort().await {
            tracing::warn!(key = %self.key, error = %e, "could not abort a partial write");
        }
    }
}
