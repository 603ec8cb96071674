//! Reusable 1 MiB buffers for reading stored blobs. A warm blob is read into one of these and
//! handed to hyper as `Bytes`; when hyper has sent it, the buffer comes back here instead of
//! going back to the allocator. Without this, glibc trims the freed chunks (`madvise`) and the
//! next read faults fresh zeroed pages in: about 100k page faults per 4 GiB served by 8
//! streams, each one dearer still on a VM that hands freed pages back to its host.

use std::sync::Mutex;

use bytes::Bytes;

/// The size of one read, and of one chunk of a response body.
pub const CHUNK: usize = 1024 * 1024;

/// Idle buffers kept for the next reads; more are freed. 16 MiB covers 8 streams reading ahead.
const MAX_IDLE: usize = 16;

static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A `CHUNK`-long buffer: an idle one, or a new zeroed one if none is idle. Its contents are
/// whatever was read into it last; callers overwrite what they use.
pub fn take() -> Vec<u8> {
    let idle = IDLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .pop();
    idle.unwrap_or_else(|| vec![0; CHUNK])
}

/// The first `len` bytes of `buffer` as `Bytes`; the buffer returns to the pool when the last
/// clone of them is dropped.
pub fn freeze(buffer: Vec<u8>, len: usize) -> Bytes {
    Bytes::from_owner(Filled { buffer, len })
}

struct Filled {
    buffer: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        let mut idle = IDLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buffer.len() == CHUNK && idle.len() < MAX_IDLE {
            idle.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_chunk_returns_its_buffer_for_the_next_read() {
        let mut buffer = take();
        buffer[..3].copy_from_slice(b"abc");
        let address = buffer.as_ptr();
        let bytes = freeze(buffer, 3);
        assert_eq!(&bytes[..], b"abc");
        let clone = bytes.slice(1..);
        drop(bytes);
        assert_eq!(&clone[..], b"bc", "a clone keeps the buffer alive");
        drop(clone);
        // Other tests may take buffers concurrently, so look for ours among the idle ones.
        let idle = IDLE.lock().unwrap();
        assert!(idle.iter().any(|b| b.as_ptr() == address));
    }
}
