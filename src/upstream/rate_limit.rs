//! Docker Hub's pull quota, as it reports it on manifest responses:
//! `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600` (pulls per window of
//! seconds). cistern keeps the latest figures and warns when few pulls are left, so an operator
//! learns about the limit before clients start failing with 429.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

/// Warn when at most this fraction of the quota is left.
const LOW_FRACTION: f64 = 0.1;
/// Marks "not reported yet" in the atomics.
const UNKNOWN: u64 = u64::MAX;

/// The latest quota figures upstream reported.
pub struct RateLimit {
    limit: AtomicU64,
    remaining: AtomicU64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            limit: AtomicU64::new(UNKNOWN),
            remaining: AtomicU64::new(UNKNOWN),
        }
    }
}

/// One reading of the quota headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// The window in seconds, when upstream said.
    pub window_secs: Option<u64>,
}

impl Quota {
    /// The quota in a response's headers, if it carries both of them.
    pub fn from_headers(headers: &HeaderMap) -> Option<Quota> {
        let (limit, window_secs) = parse(headers.get("ratelimit-limit")?.to_str().ok()?)?;
        let (remaining, _) = parse(headers.get("ratelimit-remaining")?.to_str().ok()?)?;
        Some(Quota {
            limit,
            remaining,
            window_secs,
        })
    }

    pub fn is_low(&self) -> bool {
        (self.remaining as f64) <= (self.limit as f64) * LOW_FRACTION
    }
}

/// `100;w=21600` into (100, Some(21600)).
fn parse(value: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = value.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let window = parts.find_map(|p| p.trim().strip_prefix("w=")?.parse().ok());
    Some((count, window))
}

impl RateLimit {
    /// Records the quota a response reports, warning (naming `url`) when it runs low.
    pub fn observe(&self, headers: &HeaderMap, registry: &str, url: &str) {
        let Some(quota) = Quota::from_headers(headers) else {
            return;
        };
        self.limit.store(quota.limit, Ordering::Relaxed);
        self.remaining.store(quota.remaining, Ordering::Relaxed);
        if quota.is_low() {
            tracing::warn!(
                registry,
                url = %url.split('?').next().unwrap_or(url),
                limit = quota.limit,
                remaining = quota.remaining,
                window_secs = ?quota.window_secs,
                "upstream pull quota is running low; cached images keep being served, cold pulls may soon get 429"
            );
        }
    }

    /// The latest (limit, remaining), once upstream reported them.
    pub fn latest(&self) -> Option<(u64, u64)> {
        let limit = self.limit.load(Ordering::Relaxed);
        let remaining = self.remaining.load(Ordering::Relaxed);
        (limit != UNKNOWN && remaining != UNKNOWN).then_some((limit, remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(limit: &str, remaining: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", limit.parse().unwrap());
        h.insert("ratelimit-remaining", remaining.parse().unwrap());
        h
    }

    #[test]
    fn docker_hub_headers_parse() {
        let quota = Quota::from_headers(&headers("100;w=21600", "76;w=21600")).unwrap();
        assert_eq!(
            quota,
            Quota {
                limit: 100,
                remaining: 76,
                window_secs: Some(21600)
            }
        );
        assert!(!quota.is_low());
        assert!(Quota::from_headers(&headers("100;w=21600", "10;w=21600"))
            .unwrap()
            .is_low());
        assert_eq!(
            Quota::from_headers(&headers("200", "3"))
                .unwrap()
                .window_secs,
            None
        );
    }

    #[test]
    fn missing_or_garbled_headers_are_ignored() {
        assert_eq!(Quota::from_headers(&HeaderMap::new()), None);
        assert_eq!(Quota::from_headers(&headers("lots", "76")), None);
        let rate = RateLimit::default();
        rate.observe(&headers("x", "y"), "docker.io", "https://r/v2/");
        assert_eq!(rate.latest(), None);
        rate.observe(
            &headers("100;w=21600", "5;w=21600"),
            "docker.io",
            "https://r/v2/",
        );
        assert_eq!(rate.latest(), Some((100, 5)));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_value_parses_or_is_ignored_without_panicking(value in any::<String>()) {
            let _ = parse(&value);
        }

        #[test]
        fn counts_and_windows_parse(count in any::<u64>(), window in any::<u64>()) {
            prop_assert_eq!(parse(&format!("{count};w={window}")), Some((count, Some(window))));
            prop_assert_eq!(parse(&format!("{count}")), Some((count, None)));
        }
    }
}
