//! Hot metadata in memory: tag records, manifests, blob links and small blobs (image configs)
//! recently read or written, so a warm pull by tag costs no storage round trip but the reads of
//! layers. Storage stays the truth: entries live at most `KEEP_FOR`, a record that is no longer
//! fresh is read again from storage (another replica may have revalidated it), and manifests
//! and blobs are immutable by digest.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::records::TagRecord;
use crate::registry::{Digest, RepoName, Tag};

/// How long an entry may be used without reading storage again.
const KEEP_FOR: Duration = Duration::from_secs(60);
/// Manifest bytes kept in memory at most.
const MAX_MANIFEST_BYTES: u64 = 32 * 1024 * 1024;
/// Blobs up to this size are kept in memory once read: image configs, which every pull reads.
pub const SMALL_BLOB: u64 = 256 * 1024;
/// Small blob bytes kept in memory at most.
const MAX_SMALL_BLOB_BYTES: u64 = 16 * 1024 * 1024;
const MAX_TAGS: u64 = 100_000;
const MAX_BLOBS: u64 = 100_000;

/// A manifest this repository holds: upstream's media type and bytes.
#[derive(Clone)]
pub struct HotManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

pub struct Hot {
    manifests: moka::sync::Cache<(RepoName, Digest), Arc<HotManifest>>,
    tags: moka::sync::Cache<(RepoName, Tag), TagRecord>,
    /// Blobs this repository may serve, and their sizes.
    blobs: moka::sync::Cache<(RepoName, Digest), u64>,
    /// Verified bytes of small blobs, by digest only: whether a repository may serve one is
    /// still asked of `blobs` (or storage) first.
    small_blobs: moka::sync::Cache<Digest, Bytes>,
}

impl Default for Hot {
    fn default() -> Self {
        Hot {
            manifests: moka::sync::Cache::builder()
                .max_capacity(MAX_MANIFEST_BYTES)
                .weigher(|_, m: &Arc<HotManifest>| m.bytes.len().try_into().unwrap_or(u32::MAX))
                .time_to_live(KEEP_FOR)
                .build(),
            tags: moka::sync::Cache::builder()
                .max_capacity(MAX_TAGS)
                .time_to_live(KEEP_FOR)
                .build(),
            blobs: moka::sync::Cache::builder()
                .max_capacity(MAX_BLOBS)
                .time_to_live(KEEP_FOR)
                .build(),
            small_blobs: moka::sync::Cache::builder()
                .max_capacity(MAX_SMALL_BLOB_BYTES)
                .weigher(|_, b: &Bytes| b.len().try_into().unwrap_or(u32::MAX))
                .time_to_live(KEEP_FOR)
                .build(),
        }
    }
}

impl Hot {
    pub fn manifest(&self, repo: &RepoName, digest: &Digest) -> Option<Arc<HotManifest>> {
        self.manifests.get(&(repo.clone(), digest.clone()))
    }

    pub fn keep_manifest(&self, repo: &RepoName, digest: &Digest, media_type: &str, bytes: &Bytes) {
        let manifest = HotManifest {
            media_type: media_type.to_owned(),
            bytes: bytes.clone(),
        };
        self.manifests
            .insert((repo.clone(), digest.clone()), Arc::new(manifest));
    }

    pub fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Option<u64> {
        self.blobs.get(&(repo.clone(), digest.clone()))
    }

    pub fn keep_blob(&self, repo: &RepoName, digest: &Digest, size: u64) {
        self.blobs.insert((repo.clone(), digest.clone()), size);
    }

    pub fn small_blob(&self, digest: &Digest) -> Option<Bytes> {
        self.small_blobs.get(digest)
    }

    pub fn keep_small_blob(&self, digest: &Digest, bytes: &Bytes) {
        self.small_blobs.insert(digest.clone(), bytes.clone());
    }

    pub fn tag(&self, repo: &RepoName, tag: &Tag) -> Option<TagRecord> {
        self.tags.get(&(repo.clone(), tag.clone()))
    }

    pub fn keep_tag(&self, repo: &RepoName, tag: &Tag, record: &TagRecord) {
        self.tags
            .insert((repo.clone(), tag.clone()), record.clone());
    }

    pub fn forget_tag(&self, repo: &RepoName, tag: &Tag) {
        self.tags.invalidate(&(repo.clone(), tag.clone()));
    }

    /// Forgets that `repo` holds this manifest: its link was deleted.
    pub fn forget_manifest(&self, repo: &RepoName, digest: &Digest) {
        self.manifests.invalidate(&(repo.clone(), digest.clone()));
    }

    /// Forgets that `repo` may serve this blob: its link was deleted.
    pub fn forget_blob(&self, repo: &RepoName, digest: &Digest) {
        self.blobs.invalidate(&(repo.clone(), digest.clone()));
    }

    /// Forgets a small blob's bytes: its content was deleted.
    pub fn forget_small_blob(&self, digest: &Digest) {
        self.small_blobs.invalidate(digest);
    }
}
