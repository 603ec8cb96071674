//! Every request is parsed into one `Endpoint` from its method and path, here and only here.
//! Paths are read from the right (`.../manifests/<ref>`, `.../blobs/<digest>`,
//! `.../tags/list`) so repository names of any depth work.

use http::Method;

use super::error::ApiError;
use crate::registry::{
    is_registry_host, Digest, MirroredRegistries, Reference, RegistryId, RepoName, Tag,
};

#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /v2/`: the API version check.
    Base,
    /// `GET /v2/_catalog`
    Catalog,
    /// `GET|HEAD /v2/<name>/manifests/<reference>`
    Manifest {
        repo: RepoName,
        reference: Reference,
        head: bool,
    },
    /// `GET|HEAD /v2/<name>/blobs/<digest>`
    Blob {
        repo: RepoName,
        digest: Digest,
        head: bool,
    },
    /// `GET /v2/<name>/tags/list`
    Tags { repo: RepoName },
}

/// A request's endpoint and the registry the client named for it, if it named one.
#[derive(Debug, PartialEq, Eq)]
pub struct Routed {
    pub endpoint: Endpoint,
    /// The registry host from `?ns=` or the path prefix, lowercased; answers carry it back in
    /// `OCI-Namespace`.
    pub namespace: Option<String>,
}

impl Endpoint {
    /// Parses a request and selects its registry: `?ns=` first, else a first path segment
    /// that is a registry host (`/v2/ghcr.io/owner/app/...`), else the default upstream.
    /// A registry this mirror does not serve is refused here, before anything is asked
    /// upstream; `ns` is only ever a lookup key, never something to dial.
    pub fn route(
        method: &Method,
        path: &str,
        query: Option<&str>,
        registries: &MirroredRegistries,
    ) -> Result<Routed, ApiError> {
        let ns = namespace_parameter(query)?.map(|ns| ns.to_ascii_lowercase());
        let (prefix, path) = split_registry_prefix(path);
        let prefix = prefix.map(|p| p.to_ascii_lowercase());
        let named = match (ns, prefix) {
            (Some(ns), Some(prefix)) => {
                let same = ns == prefix
                    || registries
                        .lookup(&ns)
                        .is_some_and(|r| registries.lookup(&prefix) == Some(r));
                if !same {
                    return Err(ApiError::namespace_conflict(
                        &ns,
                        &format!("the path's {prefix}"),
                    ));
                }
                Some(ns)
            }
            (ns, prefix) => ns.or(prefix),
        };
        let registry = match &named {
            None => RegistryId::Default,
            Some(host) => match registries.lookup(host) {
                Some(registry) => registry.clone(),
                None => {
                    // Parsed only to name the repository in the refusal.
                    let unserved = RegistryId::Host(host.as_str().into());
                    let endpoint = Endpoint::parse_in(method, &path, &unserved)?;
                    if let Some(repo) = endpoint.repository() {
                        return Err(ApiError::registry_not_mirrored(
                            host,
                            repo,
                            &registries.describe(),
                        ));
                    }
                    // `/v2/` or the catalog: answered, but not in that registry's name.
                    return Ok(Routed {
                        endpoint,
                        namespace: None,
                    });
                }
            },
        };
        Ok(Routed {
            endpoint: Endpoint::parse_in(method, &path, &registry)?,
            namespace: named,
        })
    }

    /// The repository the request is about, if any.
    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Manifest { repo, .. }
            | Endpoint::Blob { repo, .. }
            | Endpoint::Tags { repo } => Some(repo),
        }
    }

    /// A short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::Tags { .. } => "tags",
        }
    }

    /// Parses a request for the default upstream.
    pub fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        Self::parse_in(method, path, &RegistryId::Default)
    }

    /// Parses a request whose names belong to `registry`.
    pub fn parse_in(
        method: &Method,
        path: &str,
        registry: &RegistryId,
    ) -> Result<Endpoint, ApiError> {
        let read = *method == Method::GET || *method == Method::HEAD;
        let head = *method == Method::HEAD;
        // `/v2` or `/v2/...`; not `/v2alpine/...`, which is no registry API path.
        let rest = match path.strip_prefix("/v2") {
            Some("") => "",
            Some(rest) => rest
                .strip_prefix('/')
                .ok_or_else(|| ApiError::not_found(path))?,
            None => return Err(ApiError::not_found(path)),
        };
        if rest.is_empty() {
            return read.then_some(Endpoint::Base).ok_or_else(read_only);
        }
        if rest == "_catalog" {
            return read.then_some(Endpoint::Catalog).ok_or_else(read_only);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            let repo = RepoName::parse_in(registry, name).map_err(ApiError::name_invalid)?;
            return read
                .then_some(Endpoint::Tags { repo })
                .ok_or_else(read_only);
        }
        if let Some(name) = upload_name(rest) {
            RepoName::parse_in(registry, name).map_err(ApiError::name_invalid)?;
            return Err(ApiError::unsupported(
                "cistern is a read-only pull-through mirror: blob uploads are not supported",
            ));
        }
        // A reference or digest never contains '/': the last segment is it, and what comes
        // before must end in `/manifests` or `/blobs` (a name may contain those words).
        let (before, last) = rest.rsplit_once('/').unwrap_or(("", rest));
        if let Some(name) = before.strip_suffix("/manifests") {
            let reference = last;
            let repo = RepoName::parse_in(registry, name).map_err(ApiError::name_invalid)?;
            let reference = parse_reference(reference)?;
            if !read {
                return Err(read_only());
            }
            return Ok(Endpoint::Manifest {
                repo,
                reference,
                head,
            });
        }
        if let Some(name) = before.strip_suffix("/blobs") {
            let digest = last;
            let repo = RepoName::parse_in(registry, name).map_err(ApiError::name_invalid)?;
            let digest = digest.parse().map_err(ApiError::digest_invalid)?;
            if !read {
                return Err(read_only());
            }
            return Ok(Endpoint::Blob { repo, digest, head });
        }
        Err(ApiError::not_found(path))
    }
}

/// The `ns` query parameter (percent-decoded), refused when given twice with different
/// values: two answers to "which registry" leave none.
fn namespace_parameter(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut values = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(key, _)| key == "ns")
        .map(|(_, value)| value.into_owned());
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if let Some(other) = values.find(|other| !other.eq_ignore_ascii_case(&first)) {
        return Err(ApiError::namespace_conflict(&first, &format!("ns={other}")));
    }
    Ok(Some(first))
}

/// `/v2/<host>/<name>/...` -> (`<host>`, `/v2/<name>/...`) when the first segment names a
/// registry and a name follows it; any other path is returned as it is.
fn split_registry_prefix(path: &str) -> (Option<String>, std::borrow::Cow<'_, str>) {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return (None, path.into());
    };
    match rest.split_once('/') {
        Some((first, after)) if is_registry_host(first) && !after.is_empty() => {
            (Some(first.to_owned()), format!("/v2/{after}").into())
        }
        _ => (None, path.into()),
    }
}

/// The name in `<name>/blobs/uploads`, `<name>/blobs/uploads/` or
/// `<name>/blobs/uploads/<session>`, read from the right like every other endpoint, so a
/// repository that has `blobs/uploads` (or `blobs/uploadsfoo`) inside its name is not an upload.
fn upload_name(rest: &str) -> Option<&str> {
    rest.strip_suffix("/blobs/uploads").or_else(|| {
        let (head, _session) = rest.rsplit_once('/')?;
        head.strip_suffix("/blobs/uploads")
    })
}

/// A reference with a `:` can only be a digest; anything else must be a tag.
fn parse_reference(raw: &str) -> Result<Reference, ApiError> {
    if raw.contains(':') {
        raw.parse()
            .map(Reference::Digest)
            .map_err(ApiError::digest_invalid)
    } else {
        Tag::parse(raw)
            .map(Reference::Tag)
            .map_err(ApiError::tag_invalid)
    }
}

fn read_only() -> ApiError {
    ApiError::unsupported(
        "cistern is a read-only pull-through mirror: push and delete are not supported",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn name(n: &str) -> RepoName {
        RepoName::parse(n).unwrap()
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(Tag::parse(t).unwrap())
    }

    #[test]
    fn parses_every_endpoint() {
        let get = Method::GET;
        let head = Method::HEAD;
        let digest: Digest = D.parse().unwrap();
        let cases: Vec<(&Method, String, Endpoint)> = vec![
            (&get, "/v2/".into(), Endpoint::Base),
            (&get, "/v2".into(), Endpoint::Base),
            (&head, "/v2/".into(), Endpoint::Base),
            (&get, "/v2/_catalog".into(), Endpoint::Catalog),
            (
                &get,
                "/v2/alpine/manifests/latest".into(),
                Endpoint::Manifest {
                    repo: name("library/alpine"),
                    reference: tag("latest"),
                    head: false,
                },
            ),
            (
                &head,
                format!("/v2/a/b/c/d/e/f/g/h/manifests/{D}"),
                Endpoint::Manifest {
                    repo: name("a/b/c/d/e/f/g/h"),
                    reference: Reference::Digest(digest.clone()),
                    head: true,
                },
            ),
            (
                &get,
                format!("/v2/library/alpine/blobs/{D}"),
                Endpoint::Blob {
                    repo: name("library/alpine"),
                    digest: digest.clone(),
                    head: false,
                },
            ),
            (
                &head,
                format!("/v2/x/blobs/{D}"),
                Endpoint::Blob {
                    repo: name("library/x"),
                    digest,
                    head: true,
                },
            ),
            (
                &get,
                "/v2/org/app/tags/list".into(),
                Endpoint::Tags {
                    repo: name("org/app"),
                },
            ),
            // A repository may itself be called "manifests", "blobs" or "tags".
            (
                &get,
                "/v2/blobs/tags/tags/list".into(),
                Endpoint::Tags {
                    repo: name("blobs/tags"),
                },
            ),
            (
                &get,
                "/v2/a/manifests/manifests/v1".into(),
                Endpoint::Manifest {
                    repo: name("a/manifests"),
                    reference: tag("v1"),
                    head: false,
                },
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(
                Endpoint::parse(method, &path).unwrap(),
                expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn rejects_with_the_right_code() {
        let cases: Vec<(Method, String, &str, u16)> = vec![
            (
                Method::GET,
                "/v2/UPPER/manifests/latest".into(),
                "NAME_INVALID",
                400,
            ),
            (Method::GET, "/v2/a//b/blobs/x".into(), "NAME_INVALID", 400),
            (
                Method::GET,
                "/v2/a/blobs/sha256:abc".into(),
                "DIGEST_INVALID",
                400,
            ),
            (
                Method::GET,
                "/v2/a/blobs/notadigest".into(),
                "DIGEST_INVALID",
                400,
            ),
            (
                Method::GET,
                "/v2/a/manifests/md5:abc".into(),
                "DIGEST_INVALID",
                400,
            ),
            (
                Method::GET,
                "/v2/a/manifests/-bad".into(),
                "TAG_INVALID",
                400,
            ),
            (
                Method::PUT,
                "/v2/a/manifests/latest".into(),
                "UNSUPPORTED",
                405,
            ),
            (
                Method::DELETE,
                format!("/v2/a/manifests/{D}"),
                "UNSUPPORTED",
                405,
            ),
            (
                Method::DELETE,
                format!("/v2/a/blobs/{D}"),
                "UNSUPPORTED",
                405,
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/".into(),
                "UNSUPPORTED",
                405,
            ),
            (
                Method::PATCH,
                "/v2/a/blobs/uploads/123".into(),
                "UNSUPPORTED",
                405,
            ),
            (
                Method::PUT,
                "/v2/a/blobs/uploads/123?digest=x".into(),
                "UNSUPPORTED",
                405,
            ),
            (Method::POST, "/v2/".into(), "UNSUPPORTED", 405),
            (Method::GET, "/v2/a/nothing".into(), "UNSUPPORTED", 404),
            (Method::GET, "/v3/".into(), "UNSUPPORTED", 404),
        ];
        for (method, path, code, status) in cases {
            let err = Endpoint::parse(&method, &path).unwrap_err();
            assert_eq!(
                (err.code(), err.status().as_u16()),
                (code, status),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn routes_select_the_registry_from_ns_then_the_path() {
        let registries = MirroredRegistries::new(
            &"http://127.0.0.1:5000".parse().unwrap(),
            ["quay.io".to_owned()],
        );
        let manifest = |repo: &str| Endpoint::Manifest {
            repo: name(repo),
            reference: tag("v1"),
            head: false,
        };
        let quay = RegistryId::Host("quay.io".into());
        let quay_manifest = |repo: &str| Endpoint::Manifest {
            repo: RepoName::parse_in(&quay, repo).unwrap(),
            reference: tag("v1"),
            head: false,
        };
        let cases = [
            (
                "/v2/alpine/manifests/v1",
                None,
                manifest("library/alpine"),
                None,
            ),
            (
                "/v2/alpine/manifests/v1",
                Some("ns=docker.io"),
                manifest("library/alpine"),
                Some("docker.io"),
            ),
            (
                "/v2/docker.io/alpine/manifests/v1",
                None,
                manifest("library/alpine"),
                Some("docker.io"),
            ),
            (
                "/v2/127.0.0.1:5000/org/app/manifests/v1",
                None,
                manifest("org/app"),
                Some("127.0.0.1:5000"),
            ),
            (
                "/v2/org/app/manifests/v1",
                Some("n=1&ns=Docker.IO"),
                manifest("org/app"),
                Some("docker.io"),
            ),
            ("/v2/_catalog", Some("ns=ghcr.io"), Endpoint::Catalog, None),
            ("/v2/", Some("ns=quay.io"), Endpoint::Base, Some("quay.io")),
            // A configured registry keeps its names as sent: no `library/`.
            (
                "/v2/alpine/manifests/v1",
                Some("ns=quay.io"),
                quay_manifest("alpine"),
                Some("quay.io"),
            ),
            (
                "/v2/Quay.io/org/app/manifests/v1",
                None,
                quay_manifest("org/app"),
                Some("quay.io"),
            ),
            (
                "/v2/quay.io/org/app/manifests/v1",
                Some("ns=quay.io"),
                quay_manifest("org/app"),
                Some("quay.io"),
            ),
        ];
        for (path, query, endpoint, namespace) in cases {
            let routed = Endpoint::route(&Method::GET, path, query, &registries).unwrap();
            assert_eq!(
                routed,
                Routed {
                    endpoint,
                    namespace: namespace.map(str::to_owned)
                },
                "{path}?{query:?}"
            );
        }
        let refused = [
            (
                "/v2/alpine/manifests/v1",
                Some("ns=ghcr.io"),
                "NAME_UNKNOWN",
                404,
            ),
            (
                "/v2/ghcr.io/org/app/manifests/v1",
                None,
                "NAME_UNKNOWN",
                404,
            ),
            (
                "/v2/localhost/org/app/manifests/v1",
                None,
                "NAME_UNKNOWN",
                404,
            ),
            (
                "/v2/ghcr.io/org/app/manifests/v1",
                Some("ns=docker.io"),
                "NAME_INVALID",
                400,
            ),
            (
                "/v2/org/app/manifests/v1",
                Some("ns=docker.io&ns=quay.io"),
                "NAME_INVALID",
                400,
            ),
            (
                "/v2/quay.io/org/app/manifests/v1",
                Some("ns=docker.io"),
                "NAME_INVALID",
                400,
            ),
            // The default upstream's names never start with a host, or they would share
            // storage with that registry's.
            (
                "/v2/docker.io/quay.io/app/manifests/v1",
                Some("ns=docker.io"),
                "NAME_INVALID",
                400,
            ),
        ];
        for (path, query, code, status) in refused {
            let err = Endpoint::route(&Method::GET, path, query, &registries).unwrap_err();
            assert_eq!(
                (err.code(), err.status().as_u16()),
                (code, status),
                "{path}?{query:?}"
            );
        }
    }

    /// Regressions the property tests found: `/v2` is a whole segment, and paths are read
    /// from the right even when the name contains the path's own words.
    #[test]
    fn v2_must_be_a_whole_segment() {
        for path in [
            "/v2_catalog",
            "/v2alpine/manifests/latest",
            "/v2x/",
            "/v22/",
        ] {
            let err = Endpoint::parse(&Method::GET, path).unwrap_err();
            assert_eq!(
                (err.code(), err.status().as_u16()),
                ("UNSUPPORTED", 404),
                "{path}"
            );
        }
    }

    #[test]
    fn path_words_inside_a_name_are_part_of_it() {
        assert_eq!(
            Endpoint::parse(&Method::GET, "/v2/a/blobs/uploadsx/manifests/v1").unwrap(),
            Endpoint::Manifest {
                repo: name("a/blobs/uploadsx"),
                reference: tag("v1"),
                head: false,
            }
        );
        assert_eq!(
            Endpoint::parse(&Method::GET, &format!("/v2/a/manifests/blobs/{D}")).unwrap(),
            Endpoint::Blob {
                repo: name("a/manifests"),
                digest: D.parse().unwrap(),
                head: false,
            }
        );
        let err = Endpoint::parse(&Method::POST, "/v2/a/blobs/uploads/blobs/uploads/").unwrap_err();
        assert_eq!(err.code(), "UNSUPPORTED");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::HEAD),
            Just(Method::PUT),
            Just(Method::DELETE),
            Just(Method::POST),
            Just(Method::PATCH),
        ]
    }

    proptest! {
        #[test]
        fn any_path_is_an_endpoint_or_an_error_never_a_panic(method in method(), path in any::<String>()) {
            let _ = Endpoint::parse(&method, &path);
            let _ = Endpoint::parse(&method, &format!("/v2/{path}"));
            let _ = Endpoint::parse(&method, &format!("/v2/{path}/manifests/{path}"));
            let _ = Endpoint::parse(&method, &format!("/v2/{path}/blobs/{path}"));
        }

        #[test]
        fn names_of_any_depth_parse_from_the_right(
            components in proptest::collection::vec("[a-z0-9]{1,6}(-[a-z0-9]{1,4})?", 2..6),
            tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,40}",
            hex in "[0-9a-f]{64}",
            head in any::<bool>(),
        ) {
            let name = components.join("/");
            let method = if head { Method::HEAD } else { Method::GET };
            let manifest = Endpoint::parse(&method, &format!("/v2/{name}/manifests/{tag}")).unwrap();
            let Endpoint::Manifest { repo, reference, head: is_head } = manifest else {
                panic!("not a manifest endpoint");
            };
            prop_assert_eq!((repo.as_str(), reference.to_string(), is_head), (name.as_str(), tag, head));
            let digest = format!("sha256:{hex}");
            let blob = Endpoint::parse(&method, &format!("/v2/{name}/blobs/{digest}")).unwrap();
            let Endpoint::Blob { repo, digest: parsed, .. } = blob else {
                panic!("not a blob endpoint");
            };
            prop_assert_eq!((repo.as_str(), parsed.to_string()), (name.as_str(), digest));
            let tags = Endpoint::parse(&Method::GET, &format!("/v2/{name}/tags/list")).unwrap();
            prop_assert_eq!(tags, Endpoint::Tags { repo: RepoName::parse(&name).unwrap() });
        }

        #[test]
        fn writes_are_never_read_endpoints(name in "[a-z]{1,8}/[a-z]{1,8}", tag in "[a-z]{1,8}") {
            for method in [Method::PUT, Method::DELETE, Method::POST, Method::PATCH] {
                let parsed = Endpoint::parse(&method, &format!("/v2/{name}/manifests/{tag}"));
                prop_assert!(parsed.is_err());
            }
        }
    }
}
