use std::fmt;

use super::registry_id::{is_registry_host, RegistryId};

/// A repository name as the OCI distribution spec defines it, with the registry it belongs
/// to. For the default upstream it is normalised the way Docker Hub expects (a one-segment
/// name such as `alpine` means `library/alpine`); other registries' names are kept as sent.
///
/// The name this mirror shows (`as_str`: storage, catalog, logs, access patterns) is the
/// registry's host followed by the name upstream knows (`path`), except for the default
/// upstream, whose names are shown as they always were: `library/alpine`, `ghcr.io/owner/app`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName {
    registry: RegistryId,
    full: String,
    /// Where the name upstream knows starts in `full`.
    path_start: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name {0:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    #[error("repository name {0:?} is invalid: each path component must be lowercase letters and digits, optionally separated by '.', '_', '__' or dashes")]
    BadComponent(String),
    #[error("repository name {0:?} starts with what reads as a registry host; name that registry with ?ns= or as the first path segment")]
    LooksLikeRegistry(String),
}

/// Distribution refuses names longer than this, and so do we.
const MAX_NAME_LEN: usize = 255;

impl RepoName {
    /// Parses a name of the default upstream (Docker Hub's role) from a request path.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        Self::parse_in(&RegistryId::Default, raw)
    }

    /// Parses a name of `registry` from a request path; Docker Hub's `library/` rule applies
    /// to the default upstream only.
    pub fn parse_in(registry: &RegistryId, raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() || !raw.split('/').all(is_valid_component) {
            return Err(NameError::BadComponent(raw.to_owned()));
        }
        let (full, path_start) = match registry {
            RegistryId::Default => {
                // Such a name would share a storage folder with that registry's names, and
                // no Docker client can send it without it being read as the registry.
                let first = raw.split('/').next().unwrap_or_default();
                if raw.contains('/') && is_registry_host(first) {
                    return Err(NameError::LooksLikeRegistry(raw.to_owned()));
                }
                let normalised = if raw.contains('/') {
                    raw.to_owned()
                } else {
                    format!("library/{raw}")
                };
                (normalised, 0)
            }
            RegistryId::Host(host) => (format!("{host}/{raw}"), host.len() + 1),
        };
        if full.len() - path_start > MAX_NAME_LEN {
            return Err(NameError::TooLong(raw.to_owned()));
        }
        Ok(RepoName {
            registry: registry.clone(),
            full,
            path_start,
        })
    }

    /// A name as this mirror shows it (`as_str`), read back: a host-like first segment is its
    /// registry, else it is the default upstream's.
    pub fn parse_shown(shown: &str) -> Result<Self, NameError> {
        match shown.split_once('/') {
            Some((host, path)) if is_registry_host(host) => {
                Self::parse_in(&RegistryId::Host(host.into()), path)
            }
            _ => Self::parse(shown),
        }
    }

    /// The name this mirror shows: `library/alpine`, `ghcr.io/owner/app`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The name upstream knows: `library/alpine`, `owner/app`.
    pub fn path(&self) -> &str {
        &self.full[self.path_start..]
    }

    pub fn registry(&self) -> &RegistryId {
        &self.registry
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: alphanumeric runs joined by single separators.
fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let run_start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == run_start {
            return false; // empty component, leading separator, or two separators in a row
        }
        if i == bytes.len() {
            return true;
        }
        let separator_start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[separator_start..i];
        let allowed = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !allowed {
            return false;
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises_valid_names() {
        let cases = [
            ("alpine", "library/alpine"),
            ("library/alpine", "library/alpine"),
            ("bitnami/redis", "bitnami/redis"),
            ("a/b/c/d/e/f/g/h", "a/b/c/d/e/f/g/h"),
            ("my-org/my.app__x/v1_2", "my-org/my.app__x/v1_2"),
            ("a--b/c", "a--b/c"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                RepoName::parse(input).unwrap().as_str(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn other_registries_keep_their_names_and_show_their_host() {
        let ghcr = RegistryId::Host("ghcr.io".into());
        let name = RepoName::parse_in(&ghcr, "alpine").unwrap();
        assert_eq!((name.as_str(), name.path()), ("ghcr.io/alpine", "alpine"));
        let name = RepoName::parse_in(&ghcr, "owner/app").unwrap();
        assert_eq!(
            (name.as_str(), name.path()),
            ("ghcr.io/owner/app", "owner/app")
        );
        let hub = RepoName::parse("owner/app").unwrap();
        assert_ne!(name, hub);
        assert_eq!(hub.path(), hub.as_str());
        // A registry's name may itself start with something host-like; the default's may not,
        // or it would share storage with that registry's names.
        assert!(RepoName::parse_in(&ghcr, "quay.io/x").is_ok());
        for raw in ["ghcr.io/x", "localhost/x"] {
            assert!(
                matches!(RepoName::parse(raw), Err(NameError::LooksLikeRegistry(_))),
                "{raw}"
            );
        }
        assert!(
            RepoName::parse("my.app").is_ok(),
            "one segment is library/my.app"
        );
        for shown in ["ghcr.io/owner/app", "library/alpine", "127.0.0.1:5000/x"] {
            assert_eq!(RepoName::parse_shown(shown).unwrap().as_str(), shown);
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for input in [
            "", "Alpine", "a//b", "/a", "a/", "-a", "a-", "a...b", "a___b", "a_-b", "a b",
            "a/../b", "ümlaut",
        ] {
            assert!(
                matches!(RepoName::parse(input), Err(NameError::BadComponent(_))),
                "{input:?}"
            );
        }
        let long = "a".repeat(256);
        assert!(matches!(
            RepoName::parse(&format!("x/{long}")),
            Err(NameError::TooLong(_))
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A valid path component: alphanumeric runs joined by `.`, `_`, `__` or dashes.
    fn component() -> impl Strategy<Value = String> {
        (
            "[a-z0-9]{1,8}",
            proptest::collection::vec(("(\\.|_|__|-{1,3})", "[a-z0-9]{1,8}"), 0..3),
        )
            .prop_map(|(first, rest)| {
                rest.into_iter()
                    .fold(first, |name, (sep, run)| name + &sep + &run)
            })
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in any::<String>()) {
            let _ = RepoName::parse(&text);
        }

        #[test]
        fn valid_names_parse_and_one_segment_names_are_official_images(
            components in proptest::collection::vec(component(), 1..5)
        ) {
            let raw = components.join("/");
            if components.len() > 1 && components[0].contains('.') {
                prop_assert_eq!(RepoName::parse(&raw), Err(NameError::LooksLikeRegistry(raw.clone())));
                return Ok(());
            }
            let name = RepoName::parse(&raw).unwrap();
            if components.len() == 1 {
                prop_assert_eq!(name.as_str(), format!("library/{raw}"));
            } else {
                prop_assert_eq!(name.as_str(), raw.as_str());
            }
        }

        #[test]
        fn uppercase_empty_components_and_long_names_are_refused(
            parts in proptest::collection::vec(component(), 2..4), upper in "[A-Z]{1,4}"
        ) {
            let raw = parts.join("/");
            assert!(RepoName::parse(&format!("{raw}/{upper}")).is_err());
            assert!(RepoName::parse(&format!("{raw}//x")).is_err());
            assert!(RepoName::parse(&format!("{raw}/")).is_err());
            assert!(RepoName::parse(&format!("{raw}/..")).is_err());
            let long = format!("{raw}/{}", "a".repeat(256));
            assert!(RepoName::parse(&long).is_err());
        }
    }
}
