//! `cache:` (cistern's extension): the byte budget the cache lives within, and the images it
//! never evicts.

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use super::access::{PatternScope, Patterns};
use std::time::Duration;

use super::{bad, duration, scalar, ConfigError};

/// Default high watermark: eviction starts above this share of `cache.maxsize`.
pub const DEFAULT_HIGH_WATERMARK: f64 = 0.95;
/// Default low watermark: eviction stops at this share of `cache.maxsize`.
pub const DEFAULT_LOW_WATERMARK: f64 = 0.85;

/// Default for `cache.keeprecent`: what was served this recently is never evicted.
pub const DEFAULT_KEEP_RECENT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The byte budget for cached content; None keeps everything (until `proxy.ttl`).
    pub budget: Option<Budget>,
    /// Images never evicted.
    pub pins: Pins,
    /// Content served within this long is never evicted (a pull in progress keeps its image).
    pub keep_recent: Duration,
    /// Free space kept on a filesystem store's disk (`cache.minfree`).
    pub min_free: Option<MinFree>,
}

/// `cache.minfree`: bytes (`5GiB`) or a share of the filesystem (`10%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    Share(f64),
}

impl MinFree {
    /// The bytes to keep free on a filesystem of `total` bytes.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(bytes) => bytes,
            MinFree::Share(share) => (total as f64 * share) as u64,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            budget: None,
            pins: Pins::default(),
            keep_recent: DEFAULT_KEEP_RECENT,
            min_free: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub max_bytes: u64,
    /// Eviction starts when content takes more than this.
    pub high_bytes: u64,
    /// ... and stops once it takes at most this.
    pub low_bytes: u64,
}

/// `cache.pin`: `repository` patterns as in `access.repositories` (all its tags), or
/// `repository:tag` with a tag pattern (`library/alpine:3.*`).
#[derive(Debug, Clone, Default)]
pub struct Pins {
    pins: Vec<(Patterns, Option<GlobMatcher>)>,
}

impl Pins {
    /// Whether `repository` (as the mirror names it) `:tag` is pinned.
    pub fn pins(&self, repository: &str, tag: &str) -> bool {
        self.pins.iter().any(|(repos, tags)| {
            repos.matches(repository) && tags.as_ref().is_none_or(|t| t.is_match(tag))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawCache {
    #[serde(deserialize_with = "scalar::deserialize_optional_text")]
    maxsize: Option<String>,
    #[serde(deserialize_with = "scalar::deserialize_optional_text")]
    highwatermark: Option<String>,
    #[serde(deserialize_with = "scalar::deserialize_optional_text")]
    lowwatermark: Option<String>,
    #[serde(deserialize_with = "scalar::deserialize_list")]
    pin: Vec<String>,
    #[serde(deserialize_with = "duration::deserialize_optional")]
    keeprecent: Option<Duration>,
    #[serde(deserialize_with = "scalar::deserialize_optional_text")]
    minfree: Option<String>,
}

impl RawCache {
    pub(super) fn validate(self) -> Result<CacheConfig, ConfigError> {
        let high = watermark(
            "cache.highwatermark",
            self.highwatermark,
            DEFAULT_HIGH_WATERMARK,
        )?;
        let low = watermark(
            "cache.lowwatermark",
            self.lowwatermark,
            DEFAULT_LOW_WATERMARK,
        )?;
        if low > high {
            return Err(bad(
                "cache.lowwatermark",
                format!(
                    "must not be above cache.highwatermark ({:.0}%)",
                    high * 100.0
                ),
            ));
        }
        let budget = match self.maxsize.as_deref().map(str::trim) {
            None | Some("") | Some("0") => None,
            Some(text) => {
                let max_bytes = parse_bytes(text).ok_or_else(|| {
                    bad(
                        "cache.maxsize",
                        format!("{text:?} is not a size such as 50GiB, 500MB or 1073741824"),
                    )
                })?;
                Some(Budget {
                    max_bytes,
                    high_bytes: (max_bytes as f64 * high) as u64,
                    low_bytes: (max_bytes as f64 * low) as u64,
                })
            }
        };
        let mut pins = Vec::new();
        for written in self.pin {
            let (repository, tag) = match written.rsplit_once(':') {
                // A `:` before a `/` is a registry's port (`localhost:5000/app`), not a tag.
                Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
                _ => (written.as_str(), None),
            };
            let repositories = Patterns::parse(
                "cache.pin",
                vec![repository.to_owned()],
                PatternScope::Mirror,
            )?;
            let tags = tag
                .map(|tag| {
                    Glob::new(tag)
                        .map(|g| g.compile_matcher())
                        .map_err(|e| bad("cache.pin", format!("{written:?}: {e}")))
                })
                .transpose()?;
            pins.push((repositories, tags));
        }
        Ok(CacheConfig {
            budget,
            pins: Pins { pins },
            keep_recent: self.keeprecent.unwrap_or(DEFAULT_KEEP_RECENT),
            min_free: self.minfree.map(min_free).transpose()?.flatten(),
        })
    }
}

/// `95%` or `0.95`.
fn watermark(key: &str, written: Option<String>, default: f64) -> Result<f64, ConfigError> {
    let Some(text) = written else {
        return Ok(default);
    };
    let text = text.trim();
    let value = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().ok().map(|p| p / 100.0),
        None => text.parse::<f64>().ok(),
    };
    value.filter(|v| *v > 0.0 && *v <= 1.0).ok_or_else(|| {
        bad(
            key,
            format!("{text:?} is not a share of cache.maxsize such as 90% or 0.9"),
        )
    })
}

/// `5GiB`, `10%`; `0` (or nothing) keeps no floor.
fn min_free(written: String) -> Result<Option<MinFree>, ConfigError> {
    let text = written.trim();
    if text.is_empty() || text == "0" {
        return Ok(None);
    }
    let value = match text.strip_suffix('%') {
        Some(percent) => percent
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|p| *p > 0.0 && *p < 100.0)
            .map(|p| MinFree::Share(p / 100.0)),
        None => parse_bytes(text).map(MinFree::Bytes),
    };
    value.map(Some).ok_or_else(|| {
        bad(
            "cache.minfree",
            format!("{text:?} is not a size such as 5GiB or a share of the disk such as 10%"),
        )
    })
}

/// `50GiB`, `500MB`, `1.5G`, `1073741824`: decimal (kB, MB, GB, TB) and binary (KiB, MiB,
/// GiB, TiB; K, M, G and T alone are binary too, as `docker` and Kubernetes read them).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = number * multiplier as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_with_their_units() {
        for (text, bytes) in [
            ("50GiB", 50 << 30),
            ("50G", 50 << 30),
            ("500MB", 500_000_000),
            ("1.5 GiB", 3 << 29),
            ("1073741824", 1 << 30),
            ("64mib", 64 << 20),
        ] {
            assert_eq!(parse_bytes(text), Some(bytes), "{text}");
        }
        for text in ["", "GiB", "-5GB", "5 parsecs", "0.1", "1e400"] {
            assert_eq!(parse_bytes(text), None, "{text}");
        }
    }

    #[test]
    fn min_free_is_a_size_or_a_share_of_the_disk() {
        assert_eq!(
            min_free("5GiB".into()).unwrap(),
            Some(MinFree::Bytes(5 << 30))
        );
        assert_eq!(min_free("10%".into()).unwrap(), Some(MinFree::Share(0.1)));
        assert_eq!(MinFree::Share(0.1).bytes_of(1000), 100);
        assert_eq!(min_free("0".into()).unwrap(), None);
        for text in ["100%", "-1%", "lots", "5 parsecs"] {
            let error = min_free(text.into()).unwrap_err().to_string();
            assert!(error.contains("cache.minfree"), "{text}: {error}");
        }
    }

    #[test]
    fn pins_name_repositories_and_tag_patterns() {
        let raw = RawCache {
            pin: vec![
                "alpine:3.*".into(),
                "myorg/**".into(),
                "ghcr.io/team/*:latest".into(),
                "localhost:5000/app".into(),
            ],
            ..RawCache::default()
        };
        let pins = raw.validate().unwrap().pins;
        assert!(pins.pins("library/alpine", "3.20"));
        assert!(!pins.pins("library/alpine", "edge"));
        assert!(pins.pins("myorg/a/b", "anything"));
        assert!(pins.pins("ghcr.io/team/app", "latest"));
        assert!(!pins.pins("ghcr.io/team/app", "1.0"));
        assert!(pins.pins("localhost:5000/app", "v1"));
        assert!(!pins.pins("library/nginx", "latest"));
    }
}
