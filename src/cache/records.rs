//! The small JSON records cistern keeps beside content: links and tag records.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// This repository holds this manifest; the media type is upstream's, served back unchanged.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ManifestLink {
    pub media_type: String,
    pub size: u64,
}

/// This repository holds this blob.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BlobLink {
    pub size: u64,
}

/// What a tag pointed to when upstream was last asked.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub checked_at_ms: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
