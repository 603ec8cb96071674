//! One evictor at a time on a shared store. Before evicting, a replica takes the lease object
//! `_cistern/eviction-lease` with a create-only put (S3's `If-None-Match: *`, an exclusive
//! create on the filesystem), so of two replicas over budget at once exactly one evicts; the
//! other finds the lease and waits for its next check. The lease names its holder and when it
//! lapses: one whose holder died mid-eviction lapses and is taken over. The holder deletes it
//! when done.

use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::cache::now_ms;
use crate::storage::{layout, Storage, StorageError};

/// A lease lapses this long after it was taken: far longer than an eviction takes.
const LEASE_FOR: Duration = Duration::from_secs(10 * 60);

#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    until_ms: u64,
}

pub fn key() -> Path {
    Path::from(layout::INTERNAL).child("eviction-lease")
}

/// The lease, held until released.
pub struct Lease {
    storage: Storage,
}

impl Lease {
    /// Takes the lease for `holder`, or None while another holds it.
    pub async fn take(storage: &Storage, holder: &str) -> Result<Option<Lease>, StorageError> {
        let record = LeaseRecord {
            holder: holder.to_owned(),
            until_ms: now_ms() + LEASE_FOR.as_millis() as u64,
        };
        let bytes = Bytes::from(serde_json::to_vec(&record).expect("a lease serialises"));
        if storage.create_small(&key(), bytes.clone()).await? {
            return Ok(Some(Lease {
                storage: storage.clone(),
            }));
        }
        let current: Option<LeaseRecord> = storage.read_record(&key()).await.unwrap_or(None);
        match current {
            Some(lease) if lease.until_ms > now_ms() => {
                tracing::debug!(holder = %lease.holder, "another replica is evicting");
                Ok(None)
            }
            // Lapsed (or unreadable): its holder is gone. Delete it and race for it once more;
            // the create decides between replicas that both saw it lapse.
            _ => {
                storage.delete(&key()).await?;
                Ok(storage.create_small(&key(), bytes).await?.then(|| Lease {
                    storage: storage.clone(),
                }))
            }
        }
    }

    pub async fn release(self) {
        if let Err(e) = self.storage.delete(&key()).await {
            tracing::warn!(error = %e, "cannot release the eviction lease; it lapses by itself");
        }
    }
}
