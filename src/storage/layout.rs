//! Every storage key cistern uses is built here, so the layout can be read in one place:
//!
//! ```text
//! blobs/<alg>/<first two hex>/<hex>              content: layers, configs and manifests, by digest
//! repositories/<name>/_blobs/<alg>/<hex>         link: this repository holds this blob
//! repositories/<name>/_manifests/<alg>/<hex>     link: this repository holds this manifest (+ media type)
//! repositories/<name>/_tags/<tag>                tag record: digest, media type, when it was checked
//! _spool/<hex>.<n>                               a blob being fetched (filesystem only; never served)
//! _cistern/probe                                 written at start and by the readiness check, to prove the store takes writes
//! ```
//! Content is stored once, for every registry; links say which repository may serve it (a
//! blob fetched for a private repository must not be readable through a public name).
//! Repository name components never start with `_`, so the `_blobs`, `_manifests` and `_tags`
//! folders cannot collide with a nested repository.
//!
//! `<name>` is the name as this mirror shows it (`RepoName::as_str`): `library/alpine` for the
//! default upstream, exactly as before registries could be listed, so an existing cache is
//! served as it is; `ghcr.io/owner/app` for another registry. A registry host holds a `.` or a
//! `:` or is `localhost`, and a default-upstream name starting like that is refused, so the two
//! never share a folder.

use object_store::path::Path;

use crate::registry::{Digest, RepoName, Tag};

pub const REPOSITORIES: &str = "repositories";
/// Blobs being fetched; emptied at every start.
pub const SPOOL: &str = "_spool";

/// cistern's own bookkeeping (the start-up write probe); never expires.
pub const INTERNAL: &str = "_cistern";

/// Keys the expiry sweep leaves alone: blobs being fetched and cistern's own.
pub fn is_internal(key: &Path) -> bool {
    key.parts()
        .next()
        .is_some_and(|first| first.as_ref() == SPOOL || first.as_ref() == INTERNAL)
}
/// Separates a repository's name from its records in a key.
pub const RECORDS_MARKER: &str = "/_";

pub fn content(digest: &Digest) -> Path {
    let hex = digest.hex();
    Path::from(format!(
        "blobs/{}/{}/{}",
        digest.algorithm().as_str(),
        &hex[..2],
        hex
    ))
}

pub fn blob_link(repo: &RepoName, digest: &Digest) -> Path {
    Path::from(format!(
        "{REPOSITORIES}/{repo}/_blobs/{}/{}",
        digest.algorithm().as_str(),
        digest.hex()
    ))
}

pub fn manifest_link(repo: &RepoName, digest: &Digest) -> Path {
    Path::from(format!(
        "{REPOSITORIES}/{repo}/_manifests/{}/{}",
        digest.algorithm().as_str(),
        digest.hex()
    ))
}

pub fn tag_record(repo: &RepoName, tag: &Tag) -> Path {
    Path::from(format!("{REPOSITORIES}/{repo}/_tags/{tag}"))
}

pub fn tags_of(repo: &RepoName) -> Path {
    Path::from(format!("{REPOSITORIES}/{repo}/_tags"))
}

/// What a key is, read back from the layout above.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `blobs/...`: content, by digest (`sha256:<hex>`).
    Content {
        digest: String,
    },
    BlobLink {
        repository: &'a str,
        digest: String,
    },
    ManifestLink {
        repository: &'a str,
        digest: String,
    },
    Tag {
        repository: &'a str,
        tag: &'a str,
    },
    /// Anything else: the spool, cistern's own keys, strays.
    Other,
}

/// Reads a key back into what it is.
pub fn classify(key: &str) -> KeyKind<'_> {
    let parts: Vec<&str> = key.split('/').collect();
    if let ["blobs", algorithm, _, hex] = parts.as_slice() {
        return KeyKind::Content {
            digest: format!("{algorithm}:{hex}"),
        };
    }
    let Some(rest) = key
        .strip_prefix(REPOSITORIES)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return KeyKind::Other;
    };
    let Some(end) = rest.find(RECORDS_MARKER) else {
        return KeyKind::Other;
    };
    let (repository, records) = (&rest[..end], &rest[end + 1..]);
    match records.split('/').collect::<Vec<_>>().as_slice() {
        ["_blobs", algorithm, hex] => KeyKind::BlobLink {
            repository,
            digest: format!("{algorithm}:{hex}"),
        },
        ["_manifests", algorithm, hex] => KeyKind::ManifestLink {
            repository,
            digest: format!("{algorithm}:{hex}"),
        },
        ["_tags", tag] => KeyKind::Tag { repository, tag },
        _ => KeyKind::Other,
    }
}

/// The repository a key under `repositories/` belongs to, if it is a record key.
pub fn repository_of(key: &Path) -> Option<&str> {
    let rest = key.as_ref().strip_prefix(REPOSITORIES)?.strip_prefix('/')?;
    rest.find(RECORDS_MARKER).map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_their_repository() {
        let repo = RepoName::parse("a/b/c").unwrap();
        let digest = Digest::sha256_of(b"x");
        let tag = Tag::parse("v1").unwrap();
        assert_eq!(
            content(&digest).as_ref(),
            format!("blobs/sha256/{}/{}", &digest.hex()[..2], digest.hex())
        );
        for key in [
            blob_link(&repo, &digest),
            manifest_link(&repo, &digest),
            tag_record(&repo, &tag),
        ] {
            assert_eq!(repository_of(&key), Some("a/b/c"), "{key}");
        }
        assert_eq!(repository_of(&content(&digest)), None);
        let ghcr = crate::registry::RegistryId::Host("ghcr.io".into());
        let repo = RepoName::parse_in(&ghcr, "owner/app").unwrap();
        let key = tag_record(&repo, &tag);
        assert_eq!(key.as_ref(), "repositories/ghcr.io/owner/app/_tags/v1");
        assert_eq!(repository_of(&key), Some("ghcr.io/owner/app"));
        let port = crate::registry::RegistryId::Host("127.0.0.1:5001".into());
        let repo = RepoName::parse_in(&port, "app").unwrap();
        assert_eq!(
            repository_of(&blob_link(&repo, &digest)),
            Some("127.0.0.1:5001/app")
        );

        let d = digest.to_string();
        assert_eq!(
            classify(content(&digest).as_ref()),
            KeyKind::Content { digest: d.clone() }
        );
        assert_eq!(
            classify(blob_link(&repo, &digest).as_ref()),
            KeyKind::BlobLink {
                repository: "127.0.0.1:5001/app",
                digest: d.clone()
            }
        );
        assert_eq!(
            classify(manifest_link(&repo, &digest).as_ref()),
            KeyKind::ManifestLink {
                repository: "127.0.0.1:5001/app",
                digest: d
            }
        );
        assert_eq!(
            classify(tag_record(&repo, &tag).as_ref()),
            KeyKind::Tag {
                repository: "127.0.0.1:5001/app",
                tag: "v1"
            }
        );
        for other in [
            "_spool/abc.1",
            "_cistern/probe",
            "repositories/x",
            "blobs/sha256/ab",
        ] {
            assert_eq!(classify(other), KeyKind::Other, "{other}");
        }
    }
}
