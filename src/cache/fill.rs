//! Filling the cache with a cold blob: upstream bytes are hashed, written to storage and
//! passed to the client as they arrive. The write becomes visible only after the digest
//! matched. The last chunk is held back until then, so a client never receives a complete
//! body for bytes that failed verification: on a mismatch its stream ends with an error.
//! The fill runs in its own task, so a client that disconnects does not cancel it.

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::records::BlobLink;
use crate::registry::{Digest, RepoName};
use crate::storage::{layout, ContentWriter, Storage};

/// Chunks buffered between the fill and a slow client before the fill waits for it.
const CLIENT_BUFFER_CHUNKS: usize = 16;

pub type ClientChunks = mpsc::Receiver<Result<Bytes, std::io::Error>>;

pub struct Fill {
    pub storage: Storage,
    pub repo: RepoName,
    pub digest: Digest,
    /// Upstream URL of the blob, for messages.
    pub url: String,
    pub expected_size: Option<u64>,
}

impl Fill {
    /// Starts the fill in the background and returns the client's side of it.
    pub fn start(self, response: reqwest::Response) -> ClientChunks {
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER_CHUNKS);
        tokio::spawn(self.run(response, ClientSide { tx, alive: true }));
        rx
    }

    async fn run(self, response: reqwest::Response, mut client: ClientSide) {
        let key = layout::content(&self.digest);
        let mut writer = match self.storage.begin_write(&key).await {
            Ok(writer) => Some(writer),
            Err(e) => {
                // Still serve the client, verified, even if we cannot keep the blob.
                tracing::error!(error = %e, digest = %self.digest, "cannot cache blob; passing it through");
                None
            }
        };
        let mut hasher = self.digest.hasher();
        let mut received: u64 = 0;
        let mut held_back: Option<Bytes> = None;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let reason = format!(
                        "upstream {} broke off after {received} bytes: {}",
                        self.url,
                        e.without_url()
                    );
                    return self.fail(writer, &mut client, reason).await;
                }
            };
            hasher.update(&chunk);
            received += chunk.len() as u64;
            if let Some(w) = writer.as_mut() {
                if let Err(e) = w.write(&chunk).await {
                    tracing::error!(error = %e, "cannot cache blob; passing it through");
                    writer.take().expect("writer present").abort().await;
                }
            }
            if let Some(previous) = held_back.replace(chunk) {
                client.send(Ok(previous)).await;
            }
        }
        let actual = hasher.finish();
        if actual != self.digest {
            let reason = format!(
                "blob from {} does not match its digest: expected {}, got {actual} ({received} bytes)",
                self.url, self.digest
            );
            return self.fail(writer, &mut client, reason).await;
        }
        if let Some(expected) = self.expected_size.filter(|size| *size != received) {
            let reason = format!(
                "blob from {} has {received} bytes, upstream announced {expected}",
                self.url
            );
            return self.fail(writer, &mut client, reason).await;
        }
        if let Some(w) = writer {
            self.commit(w, received).await;
        }
        if let Some(last) = held_back {
            client.send(Ok(last)).await;
        }
    }

    async fn commit(&self, writer: ContentWriter, size: u64) {
        let link = layout::blob_link(&self.repo, &self.digest);
        let committed = match writer.commit().await {
            Ok(()) => self.storage.write_record(&link, &BlobLink { size }).await,
            Err(e) => Err(e),
        };
        match committed {
            Ok(()) => {
                tracing::info!(repository = %self.repo, digest = %self.digest, size, "cached blob")
            }
            Err(e) => tracing::error!(error = %e, "verified blob could not be cached"),
        }
    }

    async fn fail(self, writer: Option<ContentWriter>, client: &mut ClientSide, reason: String) {
        if let Some(w) = writer {
            w.abort().await;
        }
        tracing::warn!(repository = %self.repo, digest = %self.digest, "{reason}; nothing was cached");
        client.send(Err(std::io::Error::other(reason))).await;
    }
}

/// The client's end of a fill; once the client is gone the fill carries on without it.
struct ClientSide {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    alive: bool,
}

impl ClientSide {
    async fn send(&mut self, item: Result<Bytes, std::io::Error>) {
        if self.alive && self.tx.send(item).await.is_err() {
            self.alive = false;
        }
    }
}
