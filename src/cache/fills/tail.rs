//! Reading a fill's spool while it grows: each client streams the bytes it asked for as soon as
//! they are written, from wherever the fill has got to. The last byte the client asked for (of
//! the blob, or of its range) is held back until the fill verified the digest, and the stream
//! ends cleanly only after that, so a client never receives a complete body or range of bytes
//! that failed verification: on a failure its stream ends with an error instead. Bytes before
//! the last still stream early, which lazy-pulling snapshotters (eStargz, SOCI) live on.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::watch;

use super::{Fill, FillState, Progress, Reading};
use crate::storage::SpoolCursor;

/// The most read from the spool at once for one client.
const READ_CHUNK: usize = 256 * 1024;

struct Tail {
    reader: SpoolCursor,
    progress: watch::Receiver<Progress>,
    /// Next byte to send.
    position: u64,
    /// Where to stop: the end of the range asked for, or None for the end of the blob.
    end: Option<u64>,
    /// The fill task is gone; no more progress will come.
    fill_gone: bool,
    done: bool,
    /// Counts this client as reading the fill while the stream lives.
    _reading: Reading,
}

impl Fill {
    /// The bytes of `range` (the whole blob when None) as the fill writes them; None when
    /// the fill could not keep them (storage refused them, and they went through the relay
    /// in memory before this client came).
    pub fn stream(
        self: &Arc<Self>,
        range: Option<Range<u64>>,
    ) -> Option<BoxStream<'static, std::io::Result<Bytes>>> {
        let position = range.as_ref().map_or(0, |r| r.start);
        let tail = Tail {
            reader: self.reader.cursor(position),
            progress: self.watch(),
            position,
            end: range.map(|r| r.end),
            fill_gone: false,
            done: false,
            _reading: self.reading(),
        };
        // Checked once the cursor holds the client's place, so the bytes cannot go meanwhile.
        if !self.reader.holds_from(position) {
            return None;
        }
        let stream = futures::stream::unfold(tail, |mut tail| async move {
            let item = tail.next_chunk().await?;
            Some((item, tail))
        });
        Some(stream.boxed())
    }
}

impl Tail {
    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        loop {
            let progress = self.progress.borrow_and_update().clone();
            let verified = match &progress.state {
                FillState::Failed(e) => return self.fail(e.to_string()),
                FillState::Verified => true,
                FillState::Connecting | FillState::Receiving => false,
            };
            let blob_end = if verified {
                Some(progress.written)
            } else {
                progress.total
            };
            let end = self.end.or(blob_end);
            // Only a verified fill ends a stream cleanly (an announced length of 0 reaches its
            // end before a byte arrived).
            if verified && end.is_some_and(|end| self.position >= end) {
                self.done = true;
                return None;
            }
            let readable = readable_up_to(&progress, verified, end);
            if self.position < readable {
                let len = (readable - self.position).min(READ_CHUNK as u64) as usize;
                return match self.reader.read_at(self.position, len).await {
                    Ok(bytes) if bytes.is_empty() => self.fail("the spool ended early".to_owned()),
                    Ok(bytes) => {
                        self.position += bytes.len() as u64;
                        Some(Ok(bytes))
                    }
                    Err(e) => self.fail(format!("reading the spool: {e}")),
                };
            }
            if self.fill_gone {
                return self.fail("the fill stopped without finishing".to_owned());
            }
            if self.progress.changed().await.is_err() {
                // The task ended; its last state is still there to read once more.
                self.fill_gone = true;
            }
        }
    }

    fn fail(&mut self, reason: String) -> Option<std::io::Result<Bytes>> {
        self.done = true;
        Some(Err(std::io::Error::other(reason)))
    }
}

/// How far a client may read now: what was written, but never the last byte it asked for
/// (`end`, or the blob's end when unknown) before the digest matched.
fn readable_up_to(progress: &Progress, verified: bool, end: Option<u64>) -> u64 {
    let written = progress.written;
    match (verified, end) {
        (true, Some(end)) => written.min(end),
        (true, None) => written,
        (false, Some(end)) => written.min(end.saturating_sub(1)),
        (false, None) => written.saturating_sub(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(written: u64, total: Option<u64>) -> Progress {
        Progress {
            written,
            total,
            state: FillState::Receiving,
        }
    }

    #[test]
    fn the_last_byte_waits_for_verification() {
        // all 10 bytes written, not verified yet: 9 may go
        assert_eq!(readable_up_to(&progress(10, Some(10)), false, Some(10)), 9);
        assert_eq!(readable_up_to(&progress(10, Some(10)), true, Some(10)), 10);
        // halfway: everything written may go
        assert_eq!(readable_up_to(&progress(5, Some(10)), false, Some(10)), 5);
        // unknown size: always one byte held back until verified
        assert_eq!(readable_up_to(&progress(5, None), false, None), 4);
        assert_eq!(readable_up_to(&progress(0, None), false, None), 0);
    }

    #[test]
    fn a_range_streams_early_but_its_last_byte_waits_for_verification() {
        // bytes 0..4 asked for, 10 written, not verified: 3 may go, not the fourth
        assert_eq!(readable_up_to(&progress(10, Some(10)), false, Some(4)), 3);
        assert_eq!(readable_up_to(&progress(3, Some(10)), false, Some(4)), 3);
        assert_eq!(readable_up_to(&progress(2, Some(10)), false, Some(4)), 2);
        assert_eq!(readable_up_to(&progress(10, Some(10)), true, Some(4)), 4);
    }
}
