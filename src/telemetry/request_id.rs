//! The id that ties a request's log lines together and is echoed in `X-Request-Id`, so a user
//! can quote it from a failed pull. A load balancer's id is kept when it sent one.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderMap;

pub const HEADER: &str = "x-request-id";
/// Longer ids from clients are replaced, so a client cannot flood the log through this header.
const MAX_LEN: usize = 128;

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// The client's or load balancer's id if it is a sane token, a fresh one otherwise.
    pub fn from_headers(headers: &HeaderMap) -> RequestId {
        let given = headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_token(v));
        RequestId(given.map_or_else(fresh, str::to_owned))
    }
}

fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Unique within the process and unlikely to repeat across restarts: a random start, counted up.
fn fresh() -> String {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU64::new(RandomState::new().hash_one(std::process::id())));
    format!("{:016x}", next.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_the_rest() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, "lb-1234.abc".parse().unwrap());
        assert_eq!(RequestId::from_headers(&headers).0, "lb-1234.abc");
        for bad in ["has space", "a\"b", &"x".repeat(129), ""] {
            headers.insert(HEADER, bad.parse().unwrap());
            let id = RequestId::from_headers(&headers).0;
            assert_ne!(id, bad);
            assert_eq!(id.len(), 16);
        }
        let a = RequestId::from_headers(&HeaderMap::new()).0;
        let b = RequestId::from_headers(&HeaderMap::new()).0;
        assert_ne!(a, b);
    }
}
