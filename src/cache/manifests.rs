//! Manifests: stored byte for byte with upstream's media type, verified against their digest,
//! and served by tag under the tag freshness rules.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::records::{now_ms, ManifestLink, TagRecord};
use super::single_flight::{self, AttemptState, Role, SingleFlight};
use super::{Cache, CacheError, Outcome};
use crate::registry::{accepts, upstream_accept, Digest, Reference, RepoName, Tag};
use crate::storage::{layout, StorageError};
use crate::telemetry::ProblemKind;
use crate::upstream::ManifestHead;

/// A manifest to serve; `body` is None when only its headers were asked for (HEAD).
#[derive(Clone)]
pub struct ManifestAnswer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub body: Option<Bytes>,
    pub outcome: Outcome,
}

impl ManifestAnswer {
    fn with_outcome(self, outcome: Outcome) -> Self {
        ManifestAnswer { outcome, ..self }
    }
}

/// Requests that get the same answer share one upstream attempt: (repository, tag or digest,
/// the client's Accept, whether the body is wanted).
type FlightKey = (RepoName, String, Option<String>, bool);

/// An upstream attempt's outcome, once it has one.
#[derive(Clone)]
pub struct FlightState(Option<Result<ManifestAnswer, Arc<CacheError>>>);

impl AttemptState for FlightState {
    fn is_settled(&self) -> bool {
        self.0.is_some()
    }

    fn has_failed(&self) -> bool {
        matches!(self.0, Some(Err(_)))
    }

    fn abandon(&mut self) {
        self.0 = Some(Err(Arc::new(CacheError::Abandoned {
            task: "manifest fetch",
        })));
    }
}

pub type ManifestFlights = SingleFlight<FlightKey, watch::Receiver<FlightState>>;

impl Cache {
    /// The manifest `reference` names in `repo`, for a client that sent `accept`.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: Option<&str>,
        want_body: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let answer = self
            .find_manifest(repo, reference, accept, want_body)
            .await?;
        if let Reference::Tag(tag) = reference {
            self.inner.access.tag_served(repo, tag);
            self.inner.pulls.pulled(repo);
        }
        self.inner.access.content_served(&answer.digest);
        Ok(answer)
    }

    async fn find_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: Option<&str>,
        want_body: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let key = (repo.clone(), reference.to_string());
        if self.registry(repo)?.not_found.known_missing(&key) {
            return Err(manifest_unknown(repo, reference));
        }
        if let Some(answer) = self
            .answer_from_cache(repo, reference, accept, want_body)
            .await?
        {
            return Ok(answer);
        }
        // Upstream is needed: one attempt per manifest at a time, in a task of its own (a
        // client going away does not cancel it), whose outcome, failure included, every
        // client asking meanwhile gets.
        let flight = (
            repo.clone(),
            reference.to_string(),
            accept.map(str::to_owned),
            want_body,
        );
        let joined = self.inner.manifest_flights.join_or_start(
            &flight,
            FlightState(None),
            |state| {
                let cache = self.clone();
                let (repo, reference) = (repo.clone(), reference.clone());
                let accept = accept.map(str::to_owned);
                let launch = move |publisher: single_flight::Publisher<_, _, FlightState>| async move {
                    let answer = cache
                        .manifest_from_upstream(&repo, &reference, accept.as_deref(), want_body)
                        .await;
                    publisher.publish(|s| s.0 = Some(answer.map_err(Arc::new)));
                };
                Ok::<_, Infallible>((state, launch))
            },
        );
        let (mut state, role) = match joined {
            Ok(joined) => joined,
            Err(never) => match never {},
        };
        match single_flight::outcome(&mut state).await.0 {
            Some(Ok(answer)) if role == Role::Joined => Ok(answer.with_outcome(Outcome::Joined)),
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(CacheError::Shared(e)),
            None => Err(CacheError::Abandoned {
                task: "manifest fetch",
            }),
        }
    }

    /// The manifest when the cache could not answer alone: revalidated or fetched upstream.
    async fn manifest_from_upstream(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: Option<&str>,
        want_body: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let key = (repo.clone(), reference.to_string());
        if self.registry(repo)?.not_found.known_missing(&key) {
            return Err(manifest_unknown(repo, reference));
        }
        // An attempt that finished since this request looked left the answer in the cache.
        if let Some(answer) = self
            .answer_from_cache(repo, reference, accept, want_body)
            .await?
        {
            return Ok(answer);
        }
        let result = match reference {
            Reference::Digest(digest) => self.manifest_by_digest(repo, digest, want_body).await,
            Reference::Tag(tag) => self.manifest_by_tag(repo, tag, accept, want_body).await,
        };
        let registry = self.registry(repo)?;
        match result {
            Ok(answer) => Ok(answer),
            Err(CacheError::Upstream(e)) if e.is_not_found() => {
                registry.not_found.remember(key);
                Err(manifest_unknown(repo, reference))
            }
            Err(e) => Err(self
                .offline_manifest_miss(e, repo, reference.to_string())
                .await),
        }
    }

    /// The answer when the cache alone can give it: a stored manifest by digest, or by a tag
    /// still within `tagttl`.
    async fn answer_from_cache(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: Option<&str>,
        want_body: bool,
    ) -> Result<Option<ManifestAnswer>, CacheError> {
        let digest = match reference {
            Reference::Digest(digest) => digest.clone(),
            Reference::Tag(tag) => match self.fresh_tag(repo, tag).await? {
                Some((digest, record)) if accepts(accept, &record.media_type) => digest,
                _ => return Ok(None),
            },
        };
        self.cached_manifest(repo, &digest, want_body).await
    }

    /// The tag's record and digest, if it was checked within `tagttl`.
    async fn fresh_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(Digest, TagRecord)>, CacheError> {
        let record = match self
            .inner
            .hot
            .tag(repo, tag)
            .filter(|r| self.is_fresh(repo, r))
        {
            Some(record) => Some(record),
            None => {
                let stored: Option<TagRecord> = self
                    .storage()
                    .read_record(&layout::tag_record(repo, tag))
                    .await?;
                if let Some(record) = &stored {
                    self.inner.hot.keep_tag(repo, tag, record);
                }
                stored
            }
        };
        Ok(record
            .filter(|r| self.is_fresh(repo, r))
            .and_then(|r| Some((r.digest.parse::<Digest>().ok()?, r))))
    }

    /// Whether a tag record was checked upstream within its registry's tag TTL.
    fn is_fresh(&self, repo: &RepoName, record: &TagRecord) -> bool {
        let Ok(registry) = self.registry(repo) else {
            return false;
        };
        now_ms().saturating_sub(record.checked_at_ms) < registry.tag_ttl.as_millis() as u64
    }

    pub(super) async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        want_body: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        if let Some(answer) = self.cached_manifest(repo, digest, want_body).await? {
            return Ok(answer);
        }
        let reference = Reference::Digest(digest.clone());
        let accept = upstream_accept(None);
        if self
            .storage()
            .size_of(&layout::content(digest))
            .await?
            .is_some()
        {
            // Stored for another repository: serve it here only if upstream confirms that this
            // repository holds it too (a free HEAD), or a private manifest would leak.
            let head = self
                .upstream(repo)?
                .head_manifest(repo, &reference, &accept)
                .await?;
            if let Err(e) = self
                .link_manifest(repo, digest, &head.media_type, head.size)
                .await
            {
                // Unlinked, it is fetched below and served from memory.
                self.not_kept("manifest link", repo, &e);
            }
            if let Some(answer) = self.cached_manifest(repo, digest, want_body).await? {
                return Ok(answer.with_outcome(Outcome::Revalidated));
            }
        }
        if !want_body {
            let head = self
                .upstream(repo)?
                .head_manifest(repo, &reference, &accept)
                .await?;
            return Ok(head_answer(head));
        }
        self.fetch_manifest(repo, &reference, &accept).await
    }

    async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        accept: Option<&str>,
        want_body: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let record: Option<TagRecord> = self
            .storage()
            .read_record(&layout::tag_record(repo, tag))
            .await?;
        let record = record.and_then(|r| Some((r.digest.parse::<Digest>().ok()?, r)));
        if let Some((digest, record)) = &record {
            if self.is_fresh(repo, record) && accepts(accept, &record.media_type) {
                return self.manifest_by_digest(repo, digest, want_body).await;
            }
        }
        let outcome = if record.is_none() && want_body {
            self.fetch_cold_tag(repo, tag, accept).await
        } else {
            self.revalidate_tag(repo, tag, accept, want_body).await
        };
        match outcome {
            Ok(answer) => Ok(answer),
            Err(CacheError::Upstream(e)) if !e.is_not_found() => {
                let Some((digest, _)) = &record else {
                    return Err(e.into());
                };
                let Some(answer) = self.cached_manifest(repo, digest, want_body).await? else {
                    return Err(e.into());
                };
                if e.is_offline() {
                    // Expected on every pull of an offline registry: not worth a warning.
                    tracing::debug!(registry = %repo.registry(), repository = %repo, tag = %tag, digest = %digest, "registry offline; serving the tag as last seen");
                } else {
                    tracing::warn!(
                        registry = %repo.registry(), repository = %repo, tag = %tag, digest = %digest, error = %e,
                        "upstream failed to revalidate the tag; serving the cached manifest"
                    );
                    let message = format!("{repo}:{tag}: upstream failed to revalidate the tag, the cached manifest was served: {e}");
                    self.metrics()
                        .problem(ProblemKind::Upstream, Some(repo.as_str()), &message);
                }
                Ok(answer.with_outcome(Outcome::Stale))
            }
            Err(e) => Err(e),
        }
    }

    /// A tag we have never seen: one GET (not HEAD then GET), recorded for later clients.
    pub(super) async fn fetch_cold_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        accept: Option<&str>,
    ) -> Result<ManifestAnswer, CacheError> {
        let reference = Reference::Tag(tag.clone());
        let answer = self
            .fetch_manifest(repo, &reference, &upstream_accept(accept))
            .await?;
        self.record_tag(repo, tag, &answer.digest, &answer.media_type, answer.size)
            .await?;
        if accepts(accept, &answer.media_type) {
            Ok(answer)
        } else {
            self.fetch_manifest(repo, &reference, accept.unwrap_or_default())
                .await
        }
    }

    /// Asks upstream what the tag points to now, with a HEAD when we know the tag (free on
    /// Docker Hub) and a GET only for a manifest we do not hold.
    pub(super) async fn revalidate_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        accept: Option<&str>,
        want_body: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        let reference = Reference::Tag(tag.clone());
        let upstream_accept = upstream_accept(accept);
        let head = match self
            .upstream(repo)?
            .head_manifest(repo, &reference, &upstream_accept)
            .await
        {
            Ok(head) => head,
            Err(e) if e.is_not_found() => {
                self.inner.hot.forget_tag(repo, tag);
                self.storage()
                    .delete(&layout::tag_record(repo, tag))
                    .await?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        self.record_tag(repo, tag, &head.digest, &head.media_type, head.size)
            .await?;
        if !accepts(accept, &head.media_type) {
            // This client cannot read what the tag holds (e.g. an index for an old client):
            // let upstream pick the form it can read, without changing the tag record.
            let client_accept = accept.unwrap_or_default();
            return self.fetch_manifest(repo, &reference, client_accept).await;
        }
        if let Some(answer) = self.cached_manifest(repo, &head.digest, want_body).await? {
            return Ok(answer.with_outcome(Outcome::Revalidated));
        }
        if !want_body {
            return Ok(head_answer(head));
        }
        let by_digest = Reference::Digest(head.digest.clone());
        self.fetch_manifest(repo, &by_digest, &upstream_accept)
            .await
    }

    async fn record_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        media_type: &str,
        size: u64,
    ) -> Result<(), CacheError> {
        let record = TagRecord {
            digest: digest.to_string(),
            media_type: media_type.to_owned(),
            size,
            checked_at_ms: now_ms(),
        };
        // A tag record storage refuses is still kept in memory (for at most a minute).
        if let Err(e) = self
            .storage()
            .write_record(&layout::tag_record(repo, tag), &record)
            .await
        {
            self.not_kept("tag record", repo, &e);
        }
        self.inner.hot.keep_tag(repo, tag, &record);
        Ok(())
    }

    /// GETs a manifest from upstream, verifies it, and stores it for `repo`.
    async fn fetch_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
    ) -> Result<ManifestAnswer, CacheError> {
        let fetched = self
            .upstream(repo)?
            .get_manifest(repo, reference, accept)
            .await?;
        // Verify against the digest asked for, or else the one upstream claims for the tag.
        let expected = match reference {
            Reference::Digest(digest) => Some(digest.clone()),
            Reference::Tag(_) => fetched.digest_header.clone(),
        };
        let digest = match expected {
            Some(expected) => {
                let actual = expected.recompute(&fetched.bytes);
                if actual != expected {
                    return Err(CacheError::DigestMismatch {
                        what: "manifest",
                        url: self
                            .upstream(repo)?
                            .url(repo, &format!("manifests/{reference}")),
                        expected,
                        actual,
                    });
                }
                actual
            }
            None => Digest::sha256_of(&fetched.bytes),
        };
        let size = fetched.bytes.len() as u64;
        self.metrics().upstream_bytes(repo.registry().name(), size);
        // Verified bytes are served even when storage cannot keep them (a full disk).
        if let Err(e) = self
            .store_manifest(repo, &digest, &fetched.media_type, &fetched.bytes)
            .await
        {
            self.served_uncached("manifest", repo, &digest, &e);
        }
        self.inner
            .hot
            .keep_manifest(repo, &digest, &fetched.media_type, &fetched.bytes);
        Ok(ManifestAnswer {
            digest,
            media_type: fetched.media_type,
            size,
            body: Some(fetched.bytes),
            outcome: Outcome::Miss,
        })
    }

    /// Stores a verified manifest's bytes (unless stored already) and links it to `repo`.
    async fn store_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<(), StorageError> {
        let size = bytes.len() as u64;
        let content = layout::content(digest);
        if self.storage().size_of(&content).await? != Some(size) {
            self.storage().write_small(&content, bytes.clone()).await?;
        }
        self.link_manifest(repo, digest, media_type, size).await
    }

    async fn link_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        size: u64,
    ) -> Result<(), StorageError> {
        let link = ManifestLink {
            media_type: media_type.to_owned(),
            size,
        };
        self.storage()
            .write_record(&layout::manifest_link(repo, digest), &link)
            .await
    }

    /// The manifest from storage, if this repository holds it.
    async fn cached_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        want_body: bool,
    ) -> Result<Option<ManifestAnswer>, CacheError> {
        if let Some(hot) = self.inner.hot.manifest(repo, digest) {
            return Ok(Some(ManifestAnswer {
                digest: digest.clone(),
                media_type: hot.media_type.clone(),
                size: hot.bytes.len() as u64,
                body: want_body.then(|| hot.bytes.clone()),
                outcome: Outcome::Hit,
            }));
        }
        let link: Option<ManifestLink> = self
            .storage()
            .read_record(&layout::manifest_link(repo, digest))
            .await?;
        let Some(link) = link else { return Ok(None) };
        let content = layout::content(digest);
        let (size, body) = if want_body {
            match self.storage().read_small(&content).await? {
                Some(bytes) => {
                    self.inner
                        .hot
                        .keep_manifest(repo, digest, &link.media_type, &bytes);
                    (bytes.len() as u64, Some(bytes))
                }
                None => return Ok(None),
            }
        } else {
            match self.storage().size_of(&content).await? {
                Some(size) => (size, None),
                None => return Ok(None),
            }
        };
        Ok(Some(ManifestAnswer {
            digest: digest.clone(),
            media_type: link.media_type,
            size,
            body,
            outcome: Outcome::Hit,
        }))
    }
}

fn head_answer(head: ManifestHead) -> ManifestAnswer {
    ManifestAnswer {
        digest: head.digest,
        media_type: head.media_type,
        size: head.size,
        body: None,
        outcome: Outcome::Miss,
    }
}

fn manifest_unknown(repo: &RepoName, reference: &Reference) -> CacheError {
    CacheError::ManifestUnknown {
        repo: repo.clone(),
        reference: reference.to_string(),
    }
}
