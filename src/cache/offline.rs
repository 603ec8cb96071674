//! What an offline registry (`offline: true`) answers for what the cache does not hold. The
//! upstream client refuses every request of such a registry (`UpstreamError::Offline`), and
//! the cache treats that like an upstream that is down: cached tags are served as last seen,
//! whatever their TTL. What is left is a miss nobody can fill; it becomes the error here,
//! which names what is missing and that the registry is offline. It is never remembered as
//! upstream's 404 (upstream was not asked) and never deletes a tag.

use std::fmt;

use super::{Cache, CacheError};
use crate::registry::{Digest, RepoName};
use crate::upstream::UpstreamError;

/// What a request wanted that the cache does not hold.
#[derive(Debug)]
pub enum Missing {
    Manifest {
        repo: RepoName,
        reference: String,
    },
    Blob {
        repo: RepoName,
        digest: Digest,
    },
    /// Nothing at all is cached for the repository.
    Repository {
        repo: RepoName,
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Manifest { repo, reference } => {
                write!(f, "manifest {reference} of repository {repo}")
            }
            Missing::Blob { repo, digest } => write!(f, "blob {digest} of repository {repo}"),
            Missing::Repository { repo } => write!(f, "repository {repo}"),
        }
    }
}

/// A miss of an offline registry: what is missing, and the refusal that says it is offline.
#[derive(Debug)]
pub struct OfflineMiss {
    pub missing: Missing,
    pub offline: UpstreamError,
}

/// `error` as the client's miss when it says the registry is offline; any other error as it is.
pub(super) fn offline_miss(error: CacheError, missing: impl FnOnce() -> Missing) -> CacheError {
    match error {
        CacheError::Upstream(e @ UpstreamError::Offline { .. }) => {
            CacheError::NotCachedOffline(Box::new(OfflineMiss {
                missing: missing(),
                offline: e,
            }))
        }
        other => other,
    }
}

impl Cache {
    /// A manifest miss of an offline registry: the whole repository when nothing of it is
    /// cached (404 `NAME_UNKNOWN`, as the spec answers an unknown repository), else the
    /// manifest (404 `MANIFEST_UNKNOWN`).
    pub(super) async fn offline_manifest_miss(
        &self,
        error: CacheError,
        repo: &RepoName,
        reference: String,
    ) -> CacheError {
        if !matches!(&error, CacheError::Upstream(e) if e.is_offline()) {
            return error;
        }
        let known = match self.repositories().await {
            Ok(held) => held.iter().any(|r| r == repo.as_str()),
            Err(e) => return e,
        };
        offline_miss(error, || match known {
            true => Missing::Manifest {
                repo: repo.clone(),
                reference,
            },
            false => Missing::Repository { repo: repo.clone() },
        })
    }
}
