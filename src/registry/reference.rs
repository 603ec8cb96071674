use std::fmt;

use super::Digest;

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tag {0:?} is invalid: up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")]
pub struct TagError(String);

impl Tag {
    pub fn parse(raw: &str) -> Result<Self, TagError> {
        let bytes = raw.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 128
            && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Tag(raw.to_owned()))
        } else {
            Err(TagError(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for ok in ["latest", "1.0", "_x", "v1.2.3-alpine_3", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", &"a".repeat(129), "ü"] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in any::<String>()) {
            let _ = Tag::parse(&text);
        }

        #[test]
        fn tags_follow_the_grammar(tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", long in "[a-z]{129,200}") {
            prop_assert_eq!(Tag::parse(&tag).unwrap().to_string(), tag.clone());
            assert!(Tag::parse(&long).is_err(), "over 128 characters");
            assert!(Tag::parse(&format!(".{tag}")).is_err());
            assert!(Tag::parse(&format!("-{tag}")).is_err());
        }
    }
}
