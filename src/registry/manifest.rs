//! Checking that a manifest body upstream sent is a manifest: a JSON object with the fields
//! its media type requires. Only checked, never re-serialised: the original bytes are what is
//! stored and served (the digest is of those bytes).

use serde_json::{Map, Value};

pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Content types that say nothing about which manifest a body is (or no Content-Type at all):
/// the body's own `mediaType` field, or its shape, says instead.
const UNINFORMATIVE_TYPES: [&str; 4] = [
    "",
    "application/json",
    "text/plain",
    "application/octet-stream",
];

/// The shapes of manifest we know the essential fields of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An image manifest: `config` and `layers`.
    Image,
    /// An index or manifest list: `manifests`.
    Index,
    /// Docker's legacy schema 1: `fsLayers`.
    Schema1,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        DOCKER_MANIFEST_V2 | OCI_MANIFEST => Some(Kind::Image),
        DOCKER_MANIFEST_LIST | OCI_INDEX => Some(Kind::Index),
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Some(Kind::Schema1),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not JSON: {0}")]
    NotJson(String),
    #[error("manifest is not a JSON object")]
    NotAnObject,
    #[error("manifest has no numeric schemaVersion")]
    NoSchemaVersion,
    #[error("manifest says mediaType {body}, but was sent as {content_type}")]
    MediaTypeDisagrees { body: String, content_type: String },
    #[error("{media_type} manifest needs schemaVersion {expected}, has {actual}")]
    WrongSchemaVersion {
        media_type: String,
        expected: u64,
        actual: u64,
    },
    #[error("{media_type} manifest has no valid `{field}`")]
    MissingField {
        media_type: String,
        field: &'static str,
    },
    #[error("manifest sent as {0:?} is none that can be recognised")]
    Unrecognised(String),
}

/// Checks `body` is a manifest of `content_type` (upstream's Content-Type, parameters
/// stripped) and returns the media type to store it under: `content_type` when it is a
/// manifest type we know (the body's `mediaType` must then agree), else the one the body
/// declares, else for a Content-Type that says nothing (missing, `application/json`) the one
/// its shape shows, else upstream's Content-Type as sent.
pub fn check_manifest(body: &[u8], content_type: &str) -> Result<String, ManifestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    let Value::Object(document) = value else {
        return Err(ManifestError::NotAnObject);
    };
    let schema_version = document
        .get("schemaVersion")
        .and_then(Value::as_u64)
        .ok_or(ManifestError::NoSchemaVersion)?;
    let declared = document.get("mediaType").and_then(Value::as_str);
    let content_type = content_type.trim();
    let media_type = if kind_of(content_type).is_some() {
        if let Some(declared) = declared.filter(|d| *d != content_type) {
            return Err(ManifestError::MediaTypeDisagrees {
                body: declared.to_owned(),
                content_type: content_type.to_owned(),
            });
        }
        content_type.to_owned()
    } else if let Some(declared) = declared {
        // An unknown or missing Content-Type: the body says what it is.
        declared.to_owned()
    } else if UNINFORMATIVE_TYPES
        .iter()
        .any(|t| t.eq_ignore_ascii_case(content_type))
    {
        infer(&document, schema_version)
            .ok_or_else(|| ManifestError::Unrecognised(content_type.to_owned()))?
            .to_owned()
    } else {
        content_type.to_owned()
    };
    // A media type we do not know (an artifact, a future format) is kept as upstream sent it:
    // it is still a JSON object with a schema version, which is all a mirror can tell.
    if let Some(kind) = kind_of(&media_type) {
        check_fields(&document, kind, schema_version, &media_type)?;
    }
    Ok(media_type)
}

/// The media type a body without a usable type is, from its shape.
fn infer(document: &Map<String, Value>, schema_version: u64) -> Option<&'static str> {
    match schema_version {
        1 if document.contains_key("signatures") => Some(DOCKER_SCHEMA1_SIGNED),
        1 => Some(DOCKER_SCHEMA1),
        2 if document.contains_key("manifests") => Some(OCI_INDEX),
        2 if document.contains_key("config") => Some(OCI_MANIFEST),
        _ => None,
    }
}

fn check_fields(
    document: &Map<String, Value>,
    kind: Kind,
    schema_version: u64,
    media_type: &str,
) -> Result<(), ManifestError> {
    let expected = if kind == Kind::Schema1 { 1 } else { 2 };
    if schema_version != expected {
        return Err(ManifestError::WrongSchemaVersion {
            media_type: media_type.to_owned(),
            expected,
            actual: schema_version,
        });
    }
    let missing = |field| ManifestError::MissingField {
        media_type: media_type.to_owned(),
        field,
    };
    let is_descriptor = |v: &Value| v.get("digest").is_some_and(Value::is_string);
    let descriptors = |field| {
        document
            .get(field)
            .and_then(Value::as_array)
            .filter(|list| list.iter().all(is_descriptor))
            .ok_or_else(|| missing(field))
    };
    match kind {
        Kind::Image => {
            if !document.get("config").is_some_and(is_descriptor) {
                return Err(missing("config"));
            }
            descriptors("layers")?;
        }
        Kind::Index => {
            descriptors("manifests")?;
        }
        Kind::Schema1 => {
            document
                .get("fsLayers")
                .and_then(Value::as_array)
                .ok_or_else(|| missing("fsLayers"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:a","size":1},"layers":[{"digest":"sha256:b","size":2}]}"#;
    const IMAGE_UNTYPED: &str = r#"{"schemaVersion":2,"config":{"digest":"sha256:a"},"layers":[]}"#;
    const INDEX: &str = r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:c","size":3}]}"#;
    const SCHEMA1: &str = r#"{"schemaVersion":1,"name":"x","tag":"1","fsLayers":[{"blobSum":"sha256:d"}],"signatures":[]}"#;

    #[test]
    fn manifests_of_every_known_type_are_accepted() {
        let cases = [
            (IMAGE, OCI_MANIFEST, OCI_MANIFEST),
            (IMAGE, "", OCI_MANIFEST),
            (IMAGE, "application/json", OCI_MANIFEST),
            (IMAGE_UNTYPED, DOCKER_MANIFEST_V2, DOCKER_MANIFEST_V2),
            (IMAGE_UNTYPED, "", OCI_MANIFEST),
            (IMAGE, "application/vnd.example+json", OCI_MANIFEST),
            (INDEX, OCI_INDEX, OCI_INDEX),
            (INDEX, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_LIST),
            (INDEX, "", OCI_INDEX),
            (SCHEMA1, DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1_SIGNED),
            (SCHEMA1, "", DOCKER_SCHEMA1_SIGNED),
            // An artifact type we do not know: kept as sent.
            (
                r#"{"schemaVersion":2,"blobs":[]}"#,
                "application/vnd.example+json",
                "application/vnd.example+json",
            ),
        ];
        for (body, content_type, expected) in cases {
            assert_eq!(
                check_manifest(body.as_bytes(), content_type).as_deref(),
                Ok(expected),
                "{content_type}: {body}"
            );
        }
    }

    #[test]
    fn bodies_that_are_not_manifests_are_refused() {
        let cases = [
            ("", OCI_MANIFEST),
            ("{\"schemaVersi", OCI_MANIFEST),
            ("not json at all", ""),
            ("[1,2]", OCI_MANIFEST),
            ("\"a string\"", OCI_INDEX),
            ("{}", OCI_MANIFEST),
            (r#"{"schemaVersion":"2"}"#, OCI_MANIFEST),
            (r#"{"schemaVersion":2}"#, OCI_MANIFEST),
            (
                r#"{"schemaVersion":2,"config":{},"layers":[]}"#,
                OCI_MANIFEST,
            ),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:a"}}"#,
                DOCKER_MANIFEST_V2,
            ),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:a"},"layers":[7]}"#,
                OCI_MANIFEST,
            ),
            (r#"{"schemaVersion":2,"manifests":{}}"#, OCI_INDEX),
            (r#"{"schemaVersion":1,"manifests":[]}"#, OCI_INDEX),
            (SCHEMA1, OCI_MANIFEST),
            (IMAGE, OCI_INDEX),
            (IMAGE, DOCKER_MANIFEST_V2),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                "",
            ),
            (r#"{"schemaVersion":2,"something":"else"}"#, ""),
            (r#"{"schemaVersion":3}"#, "application/json"),
        ];
        for (body, content_type) in cases {
            assert!(
                check_manifest(body.as_bytes(), content_type).is_err(),
                "accepted {content_type:?}: {body}"
            );
        }
    }
}
