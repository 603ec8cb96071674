//! Small blobs (image configs) served from memory: every pull of an image reads its config,
//! and opening a file per request held a warm config blob to a fifth of a warm manifest's rate.
//! The bytes are hashed once when they are read from storage, so memory only ever holds bytes
//! that match their digest; stored bytes that do not (a damaged disk) are fetched again.

use bytes::Bytes;

use super::{Cache, CacheError};
use crate::registry::Digest;
use crate::storage::layout;

impl Cache {
    /// The verified bytes of a small stored blob, or None when storage no longer holds it (it
    /// expired) or holds bytes that do not match the digest: either way it must be filled again.
    pub(super) async fn small_blob(&self, digest: &Digest) -> Result<Option<Bytes>, CacheError> {
        if let Some(bytes) = self.inner.hot.small_blob(digest) {
            return Ok(Some(bytes));
        }
        let key = layout::content(digest);
        let Some(bytes) = self.storage().read_small(&key).await? else {
            return Ok(None);
        };
        let actual = digest.recompute(&bytes);
        if actual != *digest {
            self.metrics().storage_error("request");
            tracing::error!(key = %key, actual = %actual, "stored blob does not match its digest; fetching it again");
            return Ok(None);
        }
        self.inner.hot.keep_small_blob(digest, &bytes);
        Ok(Some(bytes))
    }
}
