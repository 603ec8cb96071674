//! Blobs: served from storage when this repository holds them, otherwise filled from upstream.

use std::ops::Range;

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::fills::Fill;
use super::hot::SMALL_BLOB;
use super::records::BlobLink;
use super::single_flight::Role;
use super::{blob_unknown, Cache, CacheError, Outcome};
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
    pub outcome: Outcome,
}

/// Where a blob's bytes come from.
enum Source {
    /// Stored, and this repository may serve it; its size.
    Stored(u64),
    /// Being fetched right now: by this request (`Miss`) or another one (`Joined`).
    Filling(Arc<Fill>, Outcome),
}

impl Cache {
    /// The blob's size, for HEAD: from storage, from a fill in progress, or from an upstream
    /// HEAD (never a download).
    pub async fn blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, Outcome), CacheError> {
        let answer = self.find_blob_size(repo, digest).await?;
        self.inner.access.content_served(digest);
        Ok(answer)
    }

    async fn find_blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, Outcome), CacheError> {
        let result = async {
            if let Some(fill) = self.fills().get(digest) {
                let for_another = &fill.repo != repo;
                match self.join(fill, repo).await?.size().await {
                    Ok(Some(size)) => return Ok((size, Outcome::Joined)),
                    Ok(None) => {}
                    Err(e) if !for_another => return Err(e),
                    // That repository's fetch failed; this one's is asked below.
                    Err(_) => {}
                }
            }
            if let Some(size) = self.linked_blob_size(repo, digest).await? {
                return Ok((size, Outcome::Hit));
            }
            let size = self.upstream(repo)?.head_blob(repo, digest).await?;
            Ok((size, Outcome::Miss))
        };
        result.await.map_err(|e| blob_unknown(e, repo, digest))
    }

    /// The blob, or the part of it `range` asks for.
    pub async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, CacheError> {
        let answer = self.find_blob(repo, digest, range).await?;
        self.inner.access.content_served(digest);
        Ok(answer)
    }

    pub(super) async fn find_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, CacheError> {
        let result = async {
            match self.locate(repo, digest).await? {
                Source::Stored(size) if size <= SMALL_BLOB => {
                    match self.small_blob(digest).await? {
                        Some(bytes) => from_memory(bytes, range),
                        None => self.refill(repo, digest, range).await,
                    }
                }
                Source::Stored(size) => {
                    let part = resolve(range, Some(size))?;
                    let key = layout::content(digest);
                    match self.storage().read_from(&key, part.clone()).await? {
                        // Hashing a large blob on every read would cost what serving it does,
                        // but a file cut short (a full disk, a damaged filesystem) differs from
                        // its verified size, and must not go out as the blob.
                        Some(read) if read.total_size != size => {
                            self.metrics().storage_error("request");
                            tracing::error!(key = %key, expected = size, actual = read.total_size, "stored blob has the wrong size; fetching it again");
                            self.refill(repo, digest, range).await
                        }
                        Some(read) => Ok(BlobAnswer {
                            total_size: Some(read.total_size),
                            partial: part,
                            body: read.body,
                            outcome: Outcome::Hit,
                        }),
                        // Expired between the size check and the read: fetch it again.
                        None => self.refill(repo, digest, range).await,
                    }
                }
                Source::Filling(fill, outcome) => {
                    self.answer_from_fill(repo, fill, range, outcome).await
                }
            }
        };
        result.await.map_err(|e| blob_unknown(e, repo, digest))
    }

    /// A blob storage no longer holds (or holds damaged), fetched again.
    async fn refill(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, CacheError> {
        let (fill, outcome) = self.start_fill(repo, digest).await?;
        self.answer_from_fill(repo, fill, range, outcome).await
    }

    /// The stored blob, a fill to join, or a new fill.
    async fn locate(&self, repo: &RepoName, digest: &Digest) -> Result<Source, CacheError> {
        if let Some(fill) = self.fills().get(digest) {
            return Ok(Source::Filling(
                self.join(fill, repo).await?,
                Outcome::Joined,
            ));
        }
        if let Some(size) = self.linked_blob_size(repo, digest).await? {
            return Ok(Source::Stored(size));
        }
        let (fill, outcome) = self.start_fill(repo, digest).await?;
        Ok(Source::Filling(fill, outcome))
    }

    /// Starts a fill, unless one started since we looked.
    async fn start_fill(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Arc<Fill>, Outcome), CacheError> {
        // An offline registry's fill could only fail: no spool or upload to throw away.
        self.upstream(repo)?.refuse_if_offline()?;
        let (fill, role) =
            self.fills()
                .join_or_start(&self.registry(repo)?.fill_inputs, repo, digest)?;
        match role {
            Role::Started => Ok((fill, Outcome::Miss)),
            Role::Joined => Ok((self.join(fill, repo).await?, Outcome::Joined)),
        }
    }

    /// A fill started for another repository is joined only once upstream confirms this
    /// repository holds the blob too, or a private layer would leak through a public name.
    async fn join(&self, fill: Arc<Fill>, repo: &RepoName) -> Result<Arc<Fill>, CacheError> {
        if &fill.repo != repo {
            self.upstream(repo)?.head_blob(repo, &fill.digest).await?;
        }
        Ok(fill)
    }

    /// The answer from `fill`, which this request started or joined. A fill another
    /// repository started that fails before its first byte failed for that repository (its
    /// upstream said 404, or was down), while this repository's upstream confirmed the blob
    /// when it joined: this repository's own fetch is started (or joined) instead, once.
    async fn answer_from_fill(
        &self,
        repo: &RepoName,
        fill: Arc<Fill>,
        range: Option<ByteRange>,
        outcome: Outcome,
    ) -> Result<BlobAnswer, CacheError> {
        match fill.size().await {
            Err(_) if &fill.repo != repo => {
                let (own, outcome) = self.start_fill(repo, &fill.digest).await?;
                self.stream_fill(repo, own, range, outcome).await
            }
            Err(e) => Err(e),
            Ok(_) => self.stream_fill(repo, fill, range, outcome).await,
        }
    }

    async fn stream_fill(
        &self,
        repo: &RepoName,
        fill: Arc<Fill>,
        range: Option<ByteRange>,
        outcome: Outcome,
    ) -> Result<BlobAnswer, CacheError> {
        let total_size = fill.size().await?;
        let part = resolve(range, total_size)?;
        match fill.stream(part.clone()) {
            Some(body) => Ok(BlobAnswer {
                total_size,
                body,
                partial: part,
                outcome,
            }),
            None => {
                // Storage refused this fill's bytes and the ones this client needs went
                // through memory before it came: once the fill ended, ask again (a new fill,
                // or the blob if it was stored after all).
                fill.settled().await;
                tokio::task::yield_now().await;
                Box::pin(self.find_blob(repo, &fill.digest, range)).await
            }
        }
    }

    /// The size of the stored blob if `repo` may serve it. A blob stored for another
    /// repository is linked here only once upstream confirms this repository holds it.
    pub(super) async fn linked_blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, CacheError> {
        // A blob read after its content expired is noticed by the read, which fills it again.
        if let Some(size) = self.inner.hot.blob_size(repo, digest) {
            return Ok(Some(size));
        }
        let Some(file_size) = self.storage().size_of(&layout::content(digest)).await? else {
            return Ok(None);
        };
        let link_key = layout::blob_link(repo, digest);
        // A link holds the size the blob was verified at, which the read checks the file
        // against; a new link takes the stored file's.
        let size = match self.storage().read_record::<BlobLink>(&link_key).await? {
            Some(link) => link.size,
            None => {
                self.upstream(repo)?.head_blob(repo, digest).await?;
                // Upstream confirmed it: a link storage refuses (a full disk) is asked again
                // next time, and this pull goes on.
                if let Err(e) = self
                    .storage()
                    .write_record(&link_key, &BlobLink { size: file_size })
                    .await
                {
                    self.not_kept("blob link", repo, &e);
                }
                file_size
            }
        };
        self.inner.hot.keep_blob(repo, digest, size);
        Ok(Some(size))
    }
}

/// A small blob held in memory, whole or the part asked for.
fn from_memory(bytes: Bytes, range: Option<ByteRange>) -> Result<BlobAnswer, CacheError> {
    let part = resolve(range, Some(bytes.len() as u64))?;
    let body = match &part {
        Some(part) => bytes.slice(part.start as usize..part.end as usize),
        None => bytes.clone(),
    };
    Ok(BlobAnswer {
        total_size: Some(bytes.len() as u64),
        partial: part,
        body: futures::stream::once(async move { Ok(body) }).boxed(),
        outcome: Outcome::Hit,
    })
}

/// The part of a blob of `size` bytes a Range asks for; the whole blob when there is no Range
/// or the size is not known (a chunked upstream answer), which HTTP allows.
fn resolve(range: Option<ByteRange>, size: Option<u64>) -> Result<Option<Range<u64>>, CacheError> {
    match (range, size) {
        (Some(range), Some(size)) => range
            .resolve(size)
            .map(Some)
            .ok_or(CacheError::RangeNotSatisfiable { size }),
        _ => Ok(None),
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
