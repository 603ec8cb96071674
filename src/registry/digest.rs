use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The hash algorithms a digest may name. Only these can be verified, so only these are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A content digest such as `sha256:<64 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm prefix (expected e.g. sha256:<hex>)")]
    MissingAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported (use sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} does not have the right number of lowercase hex characters")]
    BadHex(String),
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Self::of(Algorithm::Sha256, bytes)
    }

    /// The digest `bytes` have under this digest's algorithm: equal to it when they are its
    /// content.
    pub fn recompute(&self, bytes: &[u8]) -> Digest {
        Self::of(self.algorithm, bytes)
    }

    fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = DigestHasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    /// A hasher for the same algorithm as this digest, to verify content against it.
    pub fn hasher(&self) -> DigestHasher {
        DigestHasher::new(self.algorithm)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(s.to_owned()))?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let well_formed = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(DigestError::BadHex(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental hashing of content whose digest is checked at the end.
pub enum DigestHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl DigestHasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => DigestHasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => DigestHasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(bytes),
            DigestHasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            DigestHasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            DigestHasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_sha256() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY_SHA256);
    }

    #[test]
    fn hashing_matches_known_value() {
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY_SHA256);
    }

    #[test]
    fn rejects_malformed_digests() {
        let cases = [
            ("nocolon", DigestError::MissingAlgorithm("nocolon".into())),
            ("md5:abc", DigestError::UnsupportedAlgorithm("md5".into())),
            ("sha256:abc", DigestError::BadHex("sha256:abc".into())),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                DigestError::BadHex(
                    "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
                        .into(),
                ),
            ),
            ("sha256:", DigestError::BadHex("sha256:".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<Digest>().unwrap_err(), expected, "{input}");
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
            let _ = text.parse::<Digest>();
        }

        #[test]
        fn valid_digests_round_trip(hex in "[0-9a-f]{64}", long in "[0-9a-f]{128}") {
            for text in [format!("sha256:{hex}"), format!("sha512:{long}")] {
                let digest: Digest = text.parse().unwrap();
                prop_assert_eq!(digest.to_string(), text);
            }
        }

        #[test]
        fn wrong_lengths_uppercase_and_unknown_algorithms_are_refused(
            hex in "[0-9a-f]{1,63}", upper in "[0-9A-F]{64}", alg in "[a-z]{2,8}"
        ) {
            assert!(format!("sha256:{hex}").parse::<Digest>().is_err());
            prop_assume!(upper.bytes().any(|b| b.is_ascii_uppercase()));
            assert!(format!("sha256:{upper}").parse::<Digest>().is_err());
            prop_assume!(alg != "sha256" && alg != "sha512");
            assert!(format!("{alg}:{hex}").parse::<Digest>().is_err());
        }
    }
}
