//! Blobs: served from storage when this repository holds them, otherwise filled from upstream.

use std::ops::Range;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::fill::Fill;
use super::records::BlobLink;
use super::{Cache, CacheError};
use crate::registry::{Digest, RepoName};
use crate::storage::layout;

/// A single `Range: bytes=` request: `start-` or `start-end` (inclusive), or `-suffix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    From { start: u64, end: Option<u64> },
    Suffix(u64),
}

impl ByteRange {
    /// The byte range this request covers in an object of `size` bytes, if any.
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::From { start, end } => {
                let end = end.map_or(size, |e| e.saturating_add(1).min(size));
                (start < end).then_some(start..end)
            }
            ByteRange::Suffix(len) => (len > 0 && size > 0).then(|| size.saturating_sub(len)..size),
        }
    }
}

/// A blob to stream to the client.
pub struct BlobAnswer {
    /// The blob's whole size, when known (a cold blob from a chunked upstream has none).
    pub total_size: Option<u64>,
    /// Set when the body is only this part of the blob (206).
    pub partial: Option<Range<u64>>,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

impl Cache {
    /// The blob's size, for HEAD: from storage, or from an upstream HEAD (never a download).
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, CacheError> {
        let result = async {
            if let Some(size) = self.linked_blob_size(repo, digest).await? {
                return Ok(size);
            }
            Ok(self.upstream().head_blob(repo, digest).await?)
        };
        result.await.map_err(|e| blob_unknown(e, repo, digest))
    }

    /// The blob, or the part of it `range` asks for when it is cached.
    pub async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, CacheError> {
        let result = async {
            if let Some(size) = self.linked_blob_size(repo, digest).await? {
                let part = match range {
                    Some(range) => Some(
                        range
                            .resolve(size)
                            .ok_or(CacheError::RangeNotSatisfiable { size })?,
                    ),
                    None => None,
                };
                let key = layout::content(digest);
                if let Some(read) = self.storage().read_from(&key, part.clone()).await? {
                    return Ok(BlobAnswer {
                        total_size: Some(read.total_size),
                        partial: part,
                        body: read.body,
                    });
                }
            }
            self.fill_blob(repo, digest).await
        };
        result.await.map_err(|e| blob_unknown(e, repo, digest))
    }

    /// The size of the stored blob if `repo` may serve it. A blob stored for another
    /// repository is linked here only once upstream confirms this repository holds it.
    async fn linked_blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, CacheError> {
        let Some(size) = self.storage().size_of(&layout::content(digest)).await? else {
            return Ok(None);
        };
        let link_key = layout::blob_link(repo, digest);
        let link: Option<BlobLink> = self.storage().read_record(&link_key).await?;
        if link.is_none() {
            self.upstream().head_blob(repo, digest).await?;
            self.storage()
                .write_record(&link_key, &BlobLink { size })
                .await?;
        }
        Ok(Some(size))
    }

    /// Streams a cold blob from upstream to the client while caching it. A Range request on a
    /// cold blob gets the whole blob (200), which HTTP allows and clients handle.
    async fn fill_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobAnswer, CacheError> {
        let response = self.upstream().get_blob(repo, digest).await?;
        let expected_size = response.content_length();
        let fill = Fill {
            storage: self.storage().clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            url: format!("{}v2/{repo}/blobs/{digest}", self.upstream().base_url()),
            expected_size,
        };
        let chunks = fill.start(response);
        Ok(BlobAnswer {
            total_size: expected_size,
            partial: None,
            body: ReceiverStream::new(chunks).boxed(),
        })
    }
}

fn blob_unknown(error: CacheError, repo: &RepoName, digest: &Digest) -> CacheError {
    match error {
        CacheError::Upstream(e) if e.is_not_found() => CacheError::BlobUnknown {
            repo: repo.clone(),
            digest: digest.clone(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_size() {
        let from = |start, end| ByteRange::From { start, end };
        assert_eq!(from(0, None).resolve(10), Some(0..10));
        assert_eq!(from(4, None).resolve(10), Some(4..10));
        assert_eq!(from(4, Some(5)).resolve(10), Some(4..6));
        assert_eq!(from(4, Some(500)).resolve(10), Some(4..10));
        assert_eq!(from(10, None).resolve(10), None);
        assert_eq!(from(5, Some(4)).resolve(10), None);
        assert_eq!(ByteRange::Suffix(3).resolve(10), Some(7..10));
        assert_eq!(ByteRange::Suffix(30).resolve(10), Some(0..10));
        assert_eq!(ByteRange::Suffix(0).resolve(10), None);
    }
}
