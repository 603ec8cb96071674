//! Fills in progress, by digest: a client asking for a blob that is being fetched joins that
//! fill instead of fetching the blob again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::fill::Fill;
use crate::registry::Digest;

#[derive(Default)]
pub struct InFlight {
    fills: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Held while deciding to start a fill (not in flight, not stored: start one), so two
    /// clients can never both start one for the same blob.
    starting: tokio::sync::Mutex<()>,
}

impl InFlight {
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.fills
            .lock()
            .expect("in-flight lock poisoned")
            .get(digest)
            .cloned()
    }

    pub fn insert(&self, fill: Arc<Fill>) {
        self.fills
            .lock()
            .expect("in-flight lock poisoned")
            .insert(fill.digest.clone(), fill);
    }

    /// Called by the fill itself once the blob is stored or the fill failed.
    pub fn remove(&self, digest: &Digest) {
        self.fills
            .lock()
            .expect("in-flight lock poisoned")
            .remove(digest);
    }

    pub async fn starting(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.starting.lock().await
    }
}
