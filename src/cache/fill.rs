//! Filling the cache with a cold blob, once for every client that wants it.
//!
//! One task per blob fetches it from upstream, hashes it and appends it to a spool file,
//! publishing how far it got. Every client reads the spool as it grows (tail.rs), so twenty
//! clients cost one upstream GET, and a client that joins late gets what has arrived at once.
//! When the connection drops mid-blob the task resumes with `Range: bytes=N-` (a few times, with
//! backoff), still hashing the whole blob. The blob becomes a cached object only after its size
//! and digest matched; until then readers hold back its last byte, so no client ever receives a
//! complete body of unverified bytes. The task belongs to no client: disconnects do not cancel
//! it, and the blob lands in the cache for the next one.
//! The last byte goes out once the blob is stored, as a cached object, under its digest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::pipeline::Pipeline;
use super::records::BlobLink;
use super::{Cache, CacheError};
use crate::registry::{Digest, RepoName};
use crate::storage::{layout, ContentWriter, SpoolFile, SpoolReader};
use crate::upstream::Resumed;

/// Times a broken download is resumed before the fill gives up.
const MAX_RESUMES: u32 = 4;
/// The first wait before resuming; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// How far a fill got; readers watch it change.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Bytes in the spool, from the start of the blob.
    pub written: u64,
    /// The blob's size, from upstream's Content-Length once it answered.
    pub total: Option<u64>,
    pub state: FillState,
}

#[derive(Clone, Debug)]
pub enum FillState {
    /// Waiting for a turn (`proxy.maxfetches`) or for upstream's answer.
    Connecting,
    Receiving,
    /// Every byte is in the spool and matched the digest.
    Verified,
    Failed(Arc<CacheError>),
}

/// A fill as its clients see it.
pub struct Fill {
    /// The repository it is fetched for (upstream confirmed it holds the blob).
    pub repo: RepoName,
    pub digest: Digest,
    reader: SpoolReader,
    progress: watch::Receiver<Progress>,
}

impl Fill {
    /// Starts fetching `digest` for `repo` in the background.
    pub fn start(cache: &Cache, repo: &RepoName, digest: &Digest) -> Result<Arc<Fill>, CacheError> {
        let spool = cache
            .storage()
            .spool()
            .create(digest.hex())
            .map_err(|source| crate::storage::StorageError::Io {
                key: cache.storage().spool().path().display().to_string(),
                source,
            })?;
        let (progress_tx, progress) = watch::channel(Progress {
            written: 0,
            total: None,
            state: FillState::Connecting,
        });
        let fill = Arc::new(Fill {
            repo: repo.clone(),
            digest: digest.clone(),
            reader: spool.reader(),
            progress,
        });
        let task = FillTask {
            cache: cache.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            url: cache.upstream().blob_url(repo, digest),
            spool,
            upload: None,
            progress: Arc::new(progress_tx),
            phases: Phases::default(),
        };
        tokio::spawn(task.run());
        Ok(fill)
    }

    /// Waits for upstream's answer: the blob's size (None when upstream sent no length), or
    /// why the fill failed.
    pub async fn size(&self) -> Result<Option<u64>, CacheError> {
        let mut progress = self.progress.clone();
        let outcome = progress
            .wait_for(|p| !matches!(p.state, FillState::Connecting))
            .await;
        match outcome {
            Ok(p) => match &p.state {
                FillState::Failed(e) => Err(CacheError::Shared(e.clone())),
                _ => Ok(p.total),
            },
            Err(_) => Err(CacheError::Shared(Arc::new(CacheError::UpstreamBroke {
                url: self.digest.to_string(),
                received: 0,
                reason: "the fill ended without an answer".to_owned(),
            }))),
        }
    }

    pub(super) fn reader(&self) -> SpoolReader {
        self.reader.clone()
    }

    pub(super) fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }
}

/// The background side of a fill.
struct FillTask {
    cache: Cache,
    repo: RepoName,
    digest: Digest,
    /// Upstream URL of the blob, for messages.
    url: String,
    spool: SpoolFile,
    /// On an object store: the multipart upload the blob streams into as it arrives, completed
    /// only after the digest matched. None on the filesystem, where the spool is renamed.
    upload: Option<ContentWriter>,
    progress: Arc<watch::Sender<Progress>>,
    /// Where the fill's time went, logged with the cached blob.
    phases: Phases,
}

/// Milliseconds spent in each phase of a fill.
#[derive(Default)]
struct Phases {
    /// From the GET to the body's last byte.
    download_ms: u128,
    /// After that, until every byte was hashed and in the spool.
    drain_ms: u128,
    /// Storing the verified blob: fsync and rename, or completing the upload.
    store_ms: u128,
}

/// Why receiving a body stopped early.
enum Interrupted {
    /// The connection or upstream failed: worth resuming.
    Upstream(String),
    /// Our side failed (the spool) or upstream sent more than it announced: give up.
    Fatal(CacheError),
}

impl FillTask {
    async fn run(mut self) {
        let _turn = self.cache.upstream().fetch_permit().await;
        let _in_flight = self.cache.metrics().fill_started();
        let key = layout::content(&self.digest);
        self.upload = match self.cache.storage().begin_blob_upload(&key).await {
            Ok(upload) => upload,
            Err(e) => {
                // Clients still get the verified blob from the spool; it is just not kept.
                self.cache.metrics().storage_error("fill");
                tracing::error!(error = %e, "cannot start storing the blob; serving it uncached");
                None
            }
        };
        match self.fetch().await {
            Ok(size) => {
                // Stored before the last byte goes out: a client that has the whole blob can
                // count on the next request being served from the cache (or from the other
                // replicas on the bucket), and a drained shutdown loses no finished fill.
                self.commit(size).await;
                self.progress.send_modify(|p| p.state = FillState::Verified);
            }
            Err(e) => {
                tracing::warn!(repository = %self.repo, digest = %self.digest, error = %e, "blob fill failed; nothing was cached");
                if let Some(upload) = self.upload.take() {
                    upload.abort().await;
                }
                let e = Arc::new(super::blobs::blob_unknown(e, &self.repo, &self.digest));
                self.progress
                    .send_modify(|p| p.state = FillState::Failed(e));
            }
        }
        // Only now, with the blob in storage (or the failure published), may a new request
        // miss this fill.
        self.cache.inflight().remove(&self.digest);
    }

    /// Downloads the whole blob into the spool, resuming when the connection drops; returns
    /// its verified size.
    async fn fetch(&mut self) -> Result<u64, CacheError> {
        let started = Instant::now();
        let response = self
            .cache
            .upstream()
            .get_blob(&self.repo, &self.digest)
            .await?;
        let total = response.content_length();
        self.progress.send_modify(|p| {
            p.total = total;
            p.state = FillState::Receiving;
        });
        let pipeline = Pipeline::start(
            self.digest.hasher(),
            self.spool.appender(),
            self.progress.clone(),
        );
        let downloaded = self.download(&pipeline, response, total).await;
        self.phases.download_ms = started.elapsed().as_millis();
        let finished = pipeline.finish().await;
        self.phases.drain_ms = started.elapsed().as_millis() - self.phases.download_ms;
        // A spool that could not be written explains a download that stopped early.
        finished
            .written
            .map_err(|source| self.spool_error(source))?;
        let received = downloaded?;
        if let Some(expected) = total.filter(|t| *t != received) {
            return Err(CacheError::SizeMismatch {
                url: self.url.clone(),
                expected,
                actual: received,
            });
        }
        if finished.digest != self.digest {
            return Err(CacheError::DigestMismatch {
                what: "blob",
                url: self.url.clone(),
                expected: self.digest.clone(),
                actual: finished.digest,
            });
        }
        Ok(received)
    }

    /// Feeds the whole body to the pipeline, resuming with a range request when it breaks
    /// off; returns how many bytes were received.
    async fn download(
        &mut self,
        pipeline: &Pipeline,
        mut response: reqwest::Response,
        total: Option<u64>,
    ) -> Result<u64, CacheError> {
        let cache = self.cache.clone();
        let upstream = cache.upstream();
        let mut received = 0;
        let mut skip = 0;
        let mut resumes = 0;
        loop {
            let interrupted = match self
                .receive(pipeline, response, skip, total, &mut received)
                .await
            {
                Ok(()) => match total {
                    Some(total) if received < total => {
                        Some(format!("the body ended after {received} of {total} bytes"))
                    }
                    _ => None,
                },
                Err(Interrupted::Upstream(reason)) => Some(reason),
                Err(Interrupted::Fatal(e)) => return Err(e),
            };
            let Some(mut reason) = interrupted else {
                return Ok(received);
            };
            // Resume from what we have; each failed attempt counts against the bound.
            loop {
                resumes += 1;
                if resumes > MAX_RESUMES {
                    return Err(CacheError::UpstreamBroke {
                        url: self.url.clone(),
                        received,
                        reason,
                    });
                }
                tracing::warn!(url = %self.url, received, attempt = resumes, reason = %reason, "blob download broke off; resuming");
                tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(resumes - 1)).await;
                match upstream
                    .get_blob_from(&self.repo, &self.digest, received)
                    .await
                {
                    Ok(Resumed::FromOffset(r)) => (response, skip) = (r, 0),
                    // Upstream ignored the range: skip what we already hold.
                    Ok(Resumed::FromStart(r)) => (response, skip) = (r, received),
                    Err(e) if e.is_transient() => {
                        reason = e.to_string();
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                break;
            }
        }
    }

    /// Feeds one response body to the pipeline, after dropping its first `skip` bytes.
    async fn receive(
        &mut self,
        pipeline: &Pipeline,
        response: reqwest::Response,
        mut skip: u64,
        total: Option<u64>,
        received: &mut u64,
    ) -> Result<(), Interrupted> {
        let mut body = response.bytes_stream();
        while let Some(item) = body.next().await {
            let mut chunk =
                item.map_err(|e| Interrupted::Upstream(format!("{}", e.without_url())))?;
            let dropped = skip.min(chunk.len() as u64);
            skip -= dropped;
            let chunk = chunk.split_off(dropped as usize);
            let len = chunk.len() as u64;
            if let Some(total) = total.filter(|total| *received + len > *total) {
                return Err(Interrupted::Fatal(CacheError::SizeMismatch {
                    url: self.url.clone(),
                    expected: total,
                    actual: *received + len,
                }));
            }
            if let Some(upload) = self.upload.as_mut() {
                if let Err(e) = upload.write(&chunk).await {
                    self.cache.metrics().storage_error("fill");
                    tracing::error!(error = %e, "cannot store the blob; serving it uncached");
                    self.upload.take().expect("upload present").abort().await;
                }
            }
            if pipeline.push(chunk).await.is_err() {
                // fetch() reports the writer's own error.
                return Err(Interrupted::Fatal(
                    self.spool_error(std::io::Error::other("the spool writer stopped")),
                ));
            }
            self.cache.metrics().upstream_bytes(len);
            *received += len;
        }
        Ok(())
    }

    fn spool_error(&self, source: std::io::Error) -> CacheError {
        CacheError::Storage(crate::storage::StorageError::Io {
            key: self.spool.path().display().to_string(),
            source,
        })
    }

    /// Stores the verified blob (renaming the spool, or completing the upload) and links it to
    /// the repository. A failure here
    /// costs only the caching: every client already has (or is reading) verified bytes.
    async fn commit(&mut self, size: u64) {
        let started = Instant::now();
        let storage = self.cache.storage().clone();
        let key = layout::content(&self.digest);
        let link = layout::blob_link(&self.repo, &self.digest);
        let stored = if storage.is_local() {
            storage.commit_spool(&key, &mut self.spool).await
        } else {
            match self.upload.take() {
                Some(upload) => upload.commit().await,
                None => return, // storing failed earlier and was logged then
            }
        };
        let committed = match stored {
            Ok(()) => storage.write_record(&link, &BlobLink { size }).await,
            Err(e) => Err(e),
        };
        self.phases.store_ms = started.elapsed().as_millis();
        let Phases {
            download_ms,
            drain_ms,
            store_ms,
        } = self.phases;
        match committed {
            Ok(()) => {
                tracing::info!(repository = %self.repo, digest = %self.digest, size, download_ms, drain_ms, store_ms, "cached blob")
            }
            Err(e) => {
                self.cache.metrics().storage_error("fill");
                tracing::error!(error = %e, "verified blob could not be cached")
            }
        }
    }
}
