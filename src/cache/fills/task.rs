//! The background side of a fill: fetch, hash, spool, verify, store, publish.
//!
//! When the connection drops mid-blob the task resumes with `Range: bytes=N-` (a few times,
//! with backoff), still hashing the whole blob. The task belongs to no client, and is owned by
//! no cache: it gets its inputs, and its publisher settles the outcome however it ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::pipeline::Pipeline;
use super::rate_floor::RateWatch;
use super::{Fill, FillInputs, FillState, Progress};
use crate::cache::records::BlobLink;
use crate::cache::single_flight::Publisher;
use crate::cache::{blob_unknown, CacheError};
use crate::registry::{Digest, RepoName};
use crate::storage::{layout, ContentWriter, Refusal, SpoolFile, StorageError};
use crate::telemetry::ProblemKind;
use crate::upstream::Resumed;

/// Times a broken download is resumed before the fill gives up.
const MAX_RESUMES: u32 = 4;
/// The first wait before resuming; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

type FillPublisher = Publisher<Digest, Arc<Fill>, Progress>;

/// The background side of a fill.
pub(super) struct FillTask {
    inputs: FillInputs,
    repo: RepoName,
    digest: Digest,
    /// Upstream URL of the blob, for messages.
    url: String,
    spool: SpoolFile,
    /// On an object store: the multipart upload the blob streams into as it arrives, completed
    /// only after the digest matched. None on the filesystem, where the spool is renamed.
    upload: Option<ContentWriter>,
    /// Clients reading the fill right now.
    readers: Arc<AtomicUsize>,
    /// Gives up on an upstream sending too slowly (`proxy.fillminrate`).
    rate: RateWatch,
    /// Body bytes upstream sent, including any it sent again after a resume from the start:
    /// what the rate floor measures.
    arrived: u64,
    /// Where the fill's time went, logged with the cached blob.
    phases: Phases,
    /// Why the blob will not be cached, once storage refused it (the first refusal): the
    /// fill goes on for its clients, and says so once when it ends.
    uncached: Option<Uncached>,
}

/// Storage refused a fill's blob.
struct Uncached {
    key: String,
    cause: String,
    reason: Refusal,
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
    pub(super) fn new(
        inputs: FillInputs,
        repo: &RepoName,
        digest: &Digest,
        spool: SpoolFile,
        readers: Arc<AtomicUsize>,
    ) -> Self {
        FillTask {
            url: inputs.upstream.blob_url(repo, digest),
            rate: inputs.rate_floor.watch(),
            arrived: 0,
            inputs,
            repo: repo.clone(),
            digest: digest.clone(),
            spool,
            upload: None,
            readers,
            phases: Phases::default(),
            uncached: None,
        }
    }

    /// Fetches, verifies and stores the blob, publishing the outcome. Dropping `publisher`
    /// (when this returns, panics or is cancelled) releases the digest for the next fill.
    pub(super) async fn run(mut self, publisher: FillPublisher) {
        let _turn = self.inputs.upstream.fetch_permit().await;
        let _in_flight = self.inputs.metrics.fill_started();
        let key = layout::content(&self.digest);
        self.upload = match self.inputs.storage.begin_blob_upload(&key).await {
            Ok(upload) => upload,
            Err(e) => {
                // Clients still get the verified blob from the spool; it is just not kept.
                self.refused(&key, &e);
                None
            }
        };
        match self.fetch(&publisher).await {
            Ok(size) => {
                // Stored before the last byte goes out: a client that has the whole blob can
                // count on the next request being served from the cache (or from the other
                // replicas on the bucket), and a drained shutdown loses no finished fill.
                self.commit(size).await;
                publisher.publish(|p| p.state = FillState::Verified);
            }
            Err(e) => {
                tracing::warn!(registry = %self.repo.registry(), repository = %self.repo, digest = %self.digest, error = %e, "blob fill failed; nothing was cached");
                self.report_problem(&e);
                if let Some(upload) = self.upload.take() {
                    upload.abort().await;
                }
                let e = Arc::new(blob_unknown(e, &self.repo, &self.digest));
                publisher.publish(|p| p.state = FillState::Failed(e));
            }
        }
    }

    /// Downloads the whole blob into the spool, resuming when the connection drops; returns
    /// its verified size.
    async fn fetch(&mut self, publisher: &FillPublisher) -> Result<u64, CacheError> {
        let started = Instant::now();
        let response = self
            .inputs
            .upstream
            .get_blob(&self.repo, &self.digest)
            .await?;
        let total = response.content_length();
        // Only the empty blob has no bytes: an empty body announced for any other digest is
        // wrong already, and must fail before a client is told the length (a 200 with
        // Content-Length 0 and nothing to hold back would be a complete, wrong answer).
        let empty = self.digest.recompute(b"");
        if total == Some(0) && empty != self.digest {
            return Err(CacheError::DigestMismatch {
                what: "blob",
                url: self.url.clone(),
                expected: self.digest.clone(),
                actual: empty,
            });
        }
        publisher.publish(|p| {
            p.total = total;
            p.state = FillState::Receiving;
        });
        self.rate = self.inputs.rate_floor.watch();
        let pipeline = Pipeline::start(
            self.digest.hasher(),
            self.spool.appender(),
            publisher.sender(),
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
        let digest = finished.digest.map_err(|e| {
            tracing::error!(error = %e, "blob hashing failed");
            CacheError::Abandoned {
                task: "blob hashing",
            }
        })?;
        if digest != self.digest {
            return Err(CacheError::DigestMismatch {
                what: "blob",
                url: self.url.clone(),
                expected: self.digest.clone(),
                actual: digest,
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
        let upstream = self.inputs.upstream.clone();
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
        loop {
            // Woken at the end of each rate window even when nothing arrives, so a stalled
            // upstream is noticed.
            let next = match self.rate.window_end() {
                Some(end) => match tokio::time::timeout_at(end.into(), body.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.check_rate()?;
                        continue;
                    }
                },
                None => body.next().await,
            };
            let Some(item) = next else { break };
            let mut chunk =
                item.map_err(|e| Interrupted::Upstream(format!("{}", e.without_url())))?;
            self.arrived += chunk.len() as u64;
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
                    self.refused(&layout::content(&self.digest), &e);
                    self.upload.take().expect("upload present").abort().await;
                }
            }
            if pipeline.push(chunk).await.is_err() {
                // fetch() reports the writer's own error.
                return Err(Interrupted::Fatal(
                    self.spool_error(std::io::Error::other("the spool writer stopped")),
                ));
            }
            self.inputs
                .metrics
                .upstream_bytes(self.repo.registry().name(), len);
            *received += len;
            self.check_rate()?;
        }
        Ok(())
    }

    /// Gives up when upstream sent less than the floor over the last window: at once when no
    /// client reads the fill, after several such windows when one does.
    fn check_rate(&mut self) -> Result<(), Interrupted> {
        let attended = self.readers.load(Ordering::SeqCst) > 0;
        let arrived = self.arrived;
        self.rate
            .check(Instant::now(), arrived, attended)
            .map_err(|reason| {
                Interrupted::Fatal(CacheError::UpstreamTooSlow {
                    url: self.url.clone(),
                    received: arrived,
                    reason,
                })
            })
    }

    /// A failed fill goes on the status page's problems, unless upstream just does not have
    /// the blob (the client's 404 says so).
    fn report_problem(&self, error: &CacheError) {
        let kind = match error {
            CacheError::Upstream(e) if e.is_not_found() => return,
            CacheError::DigestMismatch { .. } | CacheError::SizeMismatch { .. } => {
                ProblemKind::DigestMismatch
            }
            _ => ProblemKind::Upstream,
        };
        let message = format!("blob fill of {} failed: {error}", self.digest);
        let repository = Some(self.repo.as_str());
        self.inputs.metrics.problem(kind, repository, &message);
    }

    fn spool_error(&self, source: std::io::Error) -> CacheError {
        CacheError::Storage(crate::storage::StorageError::Io {
            key: self.spool.path().display().to_string(),
            source,
        })
    }

    /// Remembers the first refusal of storage to take the blob (the fill goes on uncached).
    fn refused(&mut self, key: &object_store::path::Path, error: &StorageError) {
        self.inputs.metrics.storage_error("fill");
        if self.uncached.is_none() {
            self.uncached = Some(Uncached {
                key: key.to_string(),
                cause: error.to_string(),
                reason: if error.is_out_of_space() {
                    Refusal::Full
                } else {
                    Refusal::Error
                },
            });
        }
    }

    /// Stores the verified blob (renaming the spool, or completing the upload) and links it to
    /// the repository. A failure here costs only the caching: every client already has (or is
    /// reading) verified bytes.
    async fn commit(&mut self, size: u64) {
        let started = Instant::now();
        let storage = self.inputs.storage.clone();
        let key = layout::content(&self.digest);
        let link = layout::blob_link(&self.repo, &self.digest);
        if self.uncached.is_none() {
            let stored = if storage.is_local() {
                storage.commit_spool(&key, &mut self.spool).await
            } else if let Some(upload) = self.upload.take() {
                upload.commit().await
            } else {
                Ok(())
            };
            let linked = match stored {
                Ok(()) => storage
                    .write_record(&link, &BlobLink { size })
                    .await
                    .map_err(|e| (link, e)),
                Err(e) => Err((key, e)),
            };
            if let Err((key, e)) = linked {
                self.refused(&key, &e);
            }
        }
        self.phases.store_ms = started.elapsed().as_millis();
        let Phases {
            download_ms,
            drain_ms,
            store_ms,
        } = self.phases;
        let (registry, repository, digest) = (self.repo.registry(), &self.repo, &self.digest);
        match &self.uncached {
            None => {
                tracing::info!(%registry, %repository, %digest, size, download_ms, drain_ms, store_ms, "cached blob")
            }
            Some(Uncached { key, cause, reason }) => {
                self.inputs.metrics.uncached_serve("blob", reason.label());
                tracing::warn!(%registry, %repository, %digest, size, key, cause, reason = reason.label(), "verified blob served without being cached: storage refused it");
            }
        }
    }
}
