//! What an admin request names: a repository as clients name it (`alpine`, `library/alpine`,
//! `docker.io/library/alpine`, `ghcr.io/owner/app`), and in a purge's path what of it to purge
//! (`<name>`, `<name>/tags/<tag>`, `<name>/manifests/<digest>`, read from the right as the
//! registry API reads its paths). Everything is parsed into the registry types before the cache
//! sees it: a bad name, tag or digest is a 400 and touches nothing.

use crate::api::ApiError;
use crate::cache::PurgeTarget;
use crate::registry::{MirroredRegistries, RepoName, Tag, UnservedName};

/// A repository of a registry this mirror serves.
pub fn repository(registries: &MirroredRegistries, name: &str) -> Result<RepoName, ApiError> {
    registries.repository(name).map_err(|e| match e {
        UnservedName::Invalid(e) => ApiError::name_invalid(e),
        UnservedName::NotMirrored { host, repo } => {
            ApiError::registry_not_mirrored(&host, &repo, &registries.describe())
        }
    })
}

pub fn tag(tag: &str) -> Result<Tag, ApiError> {
    Tag::parse(tag).map_err(ApiError::tag_invalid)
}

/// A purge's path below `/api/admin/repositories/`.
pub fn purge(
    registries: &MirroredRegistries,
    path: &str,
) -> Result<(RepoName, PurgeTarget), ApiError> {
    let path = path.trim_end_matches('/');
    let split = path
        .rsplit_once('/')
        .and_then(|(head, last)| Some((head.rsplit_once('/')?, last)));
    let (name, target) = match split {
        Some(((name, "tags"), tag)) => (name, PurgeTarget::Tag(self::tag(tag)?)),
        Some(((name, "manifests"), digest)) => (
            name,
            PurgeTarget::Manifest(digest.parse().map_err(ApiError::digest_invalid)?),
        ),
        _ => (path, PurgeTarget::Repository),
    };
    Ok((repository(registries, name)?, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registries() -> MirroredRegistries {
        MirroredRegistries::new(
            &"https://registry-1.docker.io".parse().unwrap(),
            ["ghcr.io".to_owned()],
        )
    }

    fn purged(path: &str) -> Result<(String, String), u16> {
        purge(&registries(), path)
            .map(|(repo, target)| (repo.to_string(), format!("{target:?}")))
            .map_err(|e| e.status().as_u16())
    }

    #[test]
    fn names_are_read_as_clients_write_them() {
        assert_eq!(
            purged("alpine").unwrap(),
            ("library/alpine".into(), "Repository".into())
        );
        assert_eq!(
            purged("docker.io/library/alpine/tags/3.20").unwrap(),
            ("library/alpine".into(), "Tag(3.20)".into())
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            purged(&format!("ghcr.io/owner/app/manifests/{digest}")).unwrap(),
            ("ghcr.io/owner/app".into(), format!("Manifest({digest})"))
        );
        assert_eq!(purged("quay.io/owner/app"), Err(404), "not mirrored");
    }

    #[test]
    fn hostile_names_are_refused() {
        for path in [
            "",
            "..",
            "library/../etc",
            "library/alpine/tags/..",
            "library/alpine/manifests/sha256:xyz",
            "library/alpine/manifests/../../x",
            "Library/Alpine",
            "/library/alpine",
            &"a".repeat(300),
            &format!("library/alpine/tags/{}", "t".repeat(200)),
        ] {
            assert_eq!(purged(path).map_err(|s| s / 100), Err(4), "{path:?}");
        }
    }
}
