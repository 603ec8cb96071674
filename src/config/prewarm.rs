//! `cache.prewarm` (cistern's extension): images fetched before anyone asks, and kept fresh.
//!
//! ```yaml
//! cache:
//!   prewarm:
//!     images: [alpine:3.20, node:20-*, ghcr.io/myorg/app:latest]
//!     platforms: [linux/amd64, linux/arm64]   # default: the mirror host's; [all] for every one
//!     interval: 1h                            # default 1h; 0 fetches at start only
//!     maxfetches: 2                           # blobs fetched at once for pre-warming
//! ```

use std::time::Duration;

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use super::{bad, duration, scalar, ConfigError};

/// Default for `cache.prewarm.interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Default for `cache.prewarm.maxfetches`: pre-warming stays behind client pulls.
pub const DEFAULT_MAX_FETCHES: usize = 2;

#[derive(Debug, Clone)]
pub struct PrewarmConfig {
    pub images: Vec<PrewarmImage>,
    pub platforms: Platforms,
    /// How often the list is checked again; zero checks it at start only.
    pub interval: Duration,
    /// Blobs fetched at once for pre-warming.
    pub max_fetches: usize,
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        PrewarmConfig {
            images: Vec::new(),
            platforms: Platforms::Host,
            interval: DEFAULT_INTERVAL,
            max_fetches: DEFAULT_MAX_FETCHES,
        }
    }
}

/// One entry: an image name as clients write it, and a tag or a tag pattern.
#[derive(Debug, Clone)]
pub struct PrewarmImage {
    /// As written (`node:20-*`), for logs.
    pub written: String,
    /// The repository as clients name it (`node`, `ghcr.io/myorg/app`).
    pub repository: String,
    pub tag: TagSelector,
}

#[derive(Debug, Clone)]
pub enum TagSelector {
    Exact(String),
    /// A glob over upstream's tag list (`20-*`).
    Pattern(GlobMatcher),
}

impl TagSelector {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        match self {
            TagSelector::Exact(tag) => tag,
            TagSelector::Pattern(glob) => glob.glob().glob(),
        }
    }
}

/// Which platforms of a multi-platform image are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    /// The platform cistern itself runs on (`linux/amd64` on x86-64).
    Host,
    All,
    /// `os/architecture` or `os/architecture/variant`.
    Listed(Vec<Platform>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, named as OCI image indexes name it.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry's platform is this one (a variant written here must match; one
    /// left out matches any).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }

    fn parse(text: &str) -> Option<Platform> {
        let parts: Vec<&str> = text.trim().split('/').collect();
        let valid = |s: &&&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
        match parts.as_slice() {
            [os, architecture] if [os, architecture].iter().all(valid) => Some(Platform {
                os: os.to_string(),
                architecture: architecture.to_string(),
                variant: None,
            }),
            [os, architecture, variant] if [os, architecture, variant].iter().all(valid) => {
                Some(Platform {
                    os: os.to_string(),
                    architecture: architecture.to_string(),
                    variant: Some(variant.to_string()),
                })
            }
            _ => None,
        }
    }
}

impl Platforms {
    /// Whether an index entry for this platform is fetched.
    pub fn wants(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        match self {
            Platforms::All => true,
            Platforms::Host => Platform::host().matches(os, architecture, variant),
            Platforms::Listed(listed) => {
                listed.iter().any(|p| p.matches(os, architecture, variant))
            }
        }
    }
}

/// Splits `name:tag` (a `:` before a `/` is a registry's port, not a tag).
pub fn split_image(written: &str) -> Option<(&str, &str)> {
    match written.trim().rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') && !name.is_empty() && !tag.is_empty() => {
            Some((name, tag))
        }
        _ => None,
    }
}

/// Reads one image as written (`alpine:3.20`, `node:20-*`); the key names it in errors.
pub fn parse_image(key: &str, written: &str) -> Result<PrewarmImage, ConfigError> {
    let (repository, tag) = split_image(written).ok_or_else(|| {
        bad(
            key,
            format!("{written:?} names no tag: write name:tag, or name:pattern such as node:20-*"),
        )
    })?;
    let tag = if tag.contains(['*', '?', '[', '{']) {
        let glob = Glob::new(tag).map_err(|e| bad(key, format!("{written:?}: {e}")))?;
        TagSelector::Pattern(glob.compile_matcher())
    } else {
        TagSelector::Exact(tag.to_owned())
    };
    Ok(PrewarmImage {
        written: written.trim().to_owned(),
        repository: repository.to_owned(),
        tag,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawPrewarm {
    #[serde(deserialize_with = "scalar::deserialize_list")]
    images: Vec<String>,
    #[serde(deserialize_with = "scalar::deserialize_list")]
    platforms: Vec<String>,
    #[serde(deserialize_with = "duration::deserialize_optional")]
    interval: Option<Duration>,
    #[serde(deserialize_with = "scalar::deserialize_optional_count")]
    maxfetches: Option<usize>,
}

impl RawPrewarm {
    pub(super) fn validate(self) -> Result<PrewarmConfig, ConfigError> {
        let images = self
            .images
            .iter()
            .map(|written| parse_image("cache.prewarm.images", written))
            .collect::<Result<_, _>>()?;
        let platforms = match self.platforms.as_slice() {
            [] => Platforms::Host,
            [all] if all.trim() == "all" => Platforms::All,
            listed => Platforms::Listed(
                listed
                    .iter()
                    .map(|text| {
                        Platform::parse(text).ok_or_else(|| {
                            bad(
                                "cache.prewarm.platforms",
                                format!("{text:?} is not a platform such as linux/amd64 or linux/arm/v7 (or write [all])"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let max_fetches = match self.maxfetches {
            Some(0) => return Err(bad("cache.prewarm.maxfetches", "must be at least 1")),
            other => other.unwrap_or(DEFAULT_MAX_FETCHES),
        };
        Ok(PrewarmConfig {
            images,
            platforms,
            interval: self.interval.unwrap_or(DEFAULT_INTERVAL),
            max_fetches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_names_with_tags_or_tag_patterns() {
        let image = parse_image("k", "ghcr.io/myorg/app:latest").unwrap();
        assert_eq!(image.repository, "ghcr.io/myorg/app");
        assert!(matches!(image.tag, TagSelector::Exact(ref t) if t == "latest"));
        let image = parse_image("k", "localhost:5000/app:v1").unwrap();
        assert_eq!(image.repository, "localhost:5000/app");
        let TagSelector::Pattern(glob) = parse_image("k", "node:20-*").unwrap().tag else {
            panic!("a pattern");
        };
        assert!(glob.is_match("20-alpine") && !glob.is_match("18-alpine"));
        for written in ["alpine", "localhost:5000/app", "app:", ":x"] {
            assert!(parse_image("k", written).is_err(), "{written}");
        }
    }

    #[test]
    fn platforms_default_to_the_host_and_match_variants_when_written() {
        let raw = RawPrewarm {
            platforms: vec!["linux/arm/v7".into(), "linux/amd64".into()],
            ..RawPrewarm::default()
        };
        let platforms = raw.validate().unwrap().platforms;
        assert!(platforms.wants("linux", "amd64", None));
        assert!(platforms.wants("linux", "arm", Some("v7")));
        assert!(!platforms.wants("linux", "arm", Some("v6")));
        assert!(!platforms.wants("windows", "amd64", None));
        let host = Platform::host();
        assert!(Platforms::Host.wants(&host.os, &host.architecture, Some("v8")));
        assert!(Platforms::All.wants("plan9", "mips", None));
        let bad = RawPrewarm {
            platforms: vec!["amd64".into()],
            ..RawPrewarm::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cache.prewarm.platforms"));
    }
}
