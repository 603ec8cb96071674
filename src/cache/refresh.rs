//! An operator's refresh: ask upstream what a tag points to now, whatever its TTL, and fetch
//! the manifest if it moved. The same revalidation a pull after the TTL does (a HEAD, free on
//! Docker Hub, and a GET only for a manifest not held).

use super::{Cache, CacheError};
use crate::registry::{Reference, RepoName, Tag};
use crate::storage::layout;

use super::records::TagRecord;

/// What a refresh found.
#[derive(Debug)]
pub struct Refreshed {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// What the tag pointed to before, if it was cached.
    pub previous: Option<String>,
}

impl Cache {
    pub async fn refresh_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Refreshed, CacheError> {
        let registry = self.registry(repo)?;
        let previous: Option<TagRecord> = self
            .storage()
            .read_record(&layout::tag_record(repo, tag))
            .await?;
        // Whatever was remembered about the tag is what the operator wants asked again.
        registry.not_found.forget(repo, Some(tag.as_str()));
        self.inner.hot.forget_tag(repo, tag);
        let answer = self
            .revalidate_tag(repo, tag, None, true)
            .await
            .map_err(|e| match e {
                CacheError::Upstream(e) if e.is_not_found() => CacheError::ManifestUnknown {
                    repo: repo.clone(),
                    reference: Reference::Tag(tag.clone()).to_string(),
                },
                other => other,
            })?;
        Ok(Refreshed {
            digest: answer.digest.to_string(),
            media_type: answer.media_type,
            size: answer.size,
            previous: previous.map(|r| r.digest),
        })
    }
}
