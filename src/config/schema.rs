//! Which configuration keys exist: CNCF Distribution's schema, the part of it cistern
//! implements, and cistern's own extensions. A registry:2 user's file must load unchanged, so
//! Distribution keys we do not implement are accepted with a warning; a key neither schema
//! knows is a typo, and stops start-up.

use serde_yaml_ng::{Mapping, Value};

/// One node of the key tree.
pub enum Key {
    /// A key cistern reads; its value is a scalar or a list.
    Used,
    /// A key cistern reads whose value is a mapping with these children.
    Section(&'static [(&'static str, Key)]),
    /// A key cistern reads whose value is a mapping with free-form keys (e.g. `http.headers`).
    FreeMap,
    /// A Distribution key cistern accepts but does not implement; anything below it is accepted.
    Ignored,
    /// A key cistern reads whose value maps free-form names (e.g. registry hosts) to values
    /// of this shape.
    MapOf(&'static Key),
}

use Key::{FreeMap, Ignored, MapOf, Section, Used};

/// An upstream registry's section: `proxy:`, and with the same keys each entry of
/// `registries:`, plus the keys given.
macro_rules! upstream_section {
    ($($extra:expr),* $(,)?) => {
        Section(&[
            ("remoteurl", Used),
            // cistern's extension: a path upstream puts before every repository name (an
            // Artifact Registry repository such as registry.k8s.io's).
            ("repositoryprefix", Used),
            ("username", Used),
            ("password", Used),
            // In a registry's section it is refused with a reason: content is stored once for
            // every registry, so `proxy.ttl` rules.
            ("ttl", Used),
            // cistern's extensions: how long a tag is trusted before revalidating upstream, how
            // long a manifest upstream does not have is remembered, and how many blobs may be
            // fetched from upstream at once.
            ("tagttl", Used),
            ("notfoundttl", Used),
            ("maxfetches", Used),
            // The floor a blob fill's upstream rate must keep to hold its slot.
            ("fillminrate", Used),
            ("fillratewindow", Used),
            // cistern's extension: contact no upstream at all (an air-gapped site); serve
            // what is cached.
            ("offline", Used),
            $($extra),*
        ])
    };
}

/// A registry section under `registries:`: `proxy:`'s keys, and which of its repositories may
/// be pulled. Each tuning key left out takes `proxy:`'s value.
pub const REGISTRY_SECTION: Key =
    upstream_section!(("repositories", Section(&[("allow", Used), ("deny", Used)])));

pub const ROOT: Key = Section(&[
    ("version", Used),
    (
        "log",
        Section(&[
            ("level", Used),
            ("formatter", Used),
            ("fields", Ignored),
            ("accesslog", Ignored),
            ("hooks", Ignored),
            ("reportcaller", Ignored),
        ]),
    ),
    ("loglevel", Ignored),
    (
        "storage",
        Section(&[
            (
                "filesystem",
                Section(&[("rootdirectory", Used), ("maxthreads", Ignored)]),
            ),
            ("inmemory", Section(&[])),
            (
                "s3",
                Section(&[
                    ("accesskey", Used),
                    ("secretkey", Used),
                    ("sessiontoken", Used),
                    ("region", Used),
                    ("regionendpoint", Used),
                    ("forcepathstyle", Used),
                    ("bucket", Used),
                    ("rootdirectory", Used),
                    ("secure", Used),
                    ("skipverify", Used),
                    ("encrypt", Ignored),
                    ("keyid", Ignored),
                    ("v4auth", Ignored),
                    ("chunksize", Ignored),
                    ("multipartcopychunksize", Ignored),
                    ("multipartcopymaxconcurrency", Ignored),
                    ("multipartcopythresholdsize", Ignored),
                    ("storageclass", Ignored),
                    ("useragent", Ignored),
                    ("usedualstack", Ignored),
                    ("accelerate", Ignored),
                    ("objectacl", Ignored),
                    ("loglevel", Ignored),
                ]),
            ),
            (
                "gcs",
                Section(&[
                    ("bucket", Used),
                    ("keyfile", Used),
                    ("rootdirectory", Used),
                    ("credentials", Ignored),
                    ("chunksize", Ignored),
                ]),
            ),
            (
                "azure",
                Section(&[
                    ("accountname", Used),
                    ("accountkey", Used),
                    ("container", Used),
                    ("rootdirectory", Used),
                    ("serviceurl", Used),
                    ("realm", Ignored),
                    ("credentials", Ignored),
                ]),
            ),
            ("swift", Ignored),
            ("oss", Ignored),
            ("cache", Ignored),
            ("maintenance", Ignored),
            ("delete", Ignored),
            ("redirect", Ignored),
            ("tag", Ignored),
        ]),
    ),
    (
        "auth",
        Section(&[
            ("htpasswd", Section(&[("realm", Used), ("path", Used)])),
            ("token", Ignored),
            ("silly", Ignored),
        ]),
    ),
    // cistern's extension: who may use the mirror (and its stored credentials) for what.
    (
        "access",
        Section(&[
            ("sources", Used),
            ("repositories", Section(&[("allow", Used), ("deny", Used)])),
        ]),
    ),
    ("middleware", Ignored),
    ("reporting", Ignored),
    (
        "http",
        Section(&[
            ("addr", Used),
            ("headers", FreeMap),
            ("net", Ignored),
            ("prefix", Ignored),
            ("host", Ignored),
            ("secret", Ignored),
            ("relativeurls", Ignored),
            ("draintimeout", Used),
            (
                "tls",
                Section(&[
                    ("certificate", Used),
                    ("key", Used),
                    ("clientcas", Ignored),
                    ("clientauth", Ignored),
                    ("minimumtls", Ignored),
                    ("ciphersuites", Ignored),
                    ("letsencrypt", Ignored),
                ]),
            ),
            (
                "debug",
                Section(&[
                    ("addr", Used),
                    ("prometheus", Section(&[("enabled", Used), ("path", Used)])),
                ]),
            ),
            ("http2", Ignored),
            ("h2c", Ignored),
            // cistern's extensions: how long a connection may take to send a request head, and
            // how many client connections may be open at once.
            ("timeouts", Section(&[("header", Used)])),
            ("maxconnections", Used),
            // cistern's extension: the status page on this listener too, under /_cistern/.
            ("statuspage", Used),
        ]),
    ),
    ("notifications", Ignored),
    ("redis", Ignored),
    (
        "health",
        Section(&[
            (
                "storagedriver",
                Section(&[("enabled", Used), ("interval", Used), ("threshold", Used)]),
            ),
            ("file", Ignored),
            ("http", Ignored),
            ("tcp", Ignored),
        ]),
    ),
    ("proxy", upstream_section!(("exec", Ignored))),
    // cistern's extension: the byte budget the cache lives within, and what it never evicts.
    (
        "cache",
        Section(&[
            ("maxsize", Used),
            ("highwatermark", Used),
            ("lowwatermark", Used),
            ("pin", Used),
            ("keeprecent", Used),
            ("minfree", Used),
            (
                "prewarm",
                Section(&[
                    ("images", Used),
                    ("platforms", Used),
                    ("interval", Used),
                    ("maxfetches", Used),
                ]),
            ),
        ]),
    ),
    // cistern's extension: the bearer token the admin actions on the debug listener need.
    ("admin", Section(&[("token", Used)])),
    // cistern's extension: further registries, by the host clients name them by.
    ("registries", MapOf(&REGISTRY_SECTION)),
    ("validation", Ignored),
    ("compatibility", Ignored),
    ("policy", Ignored),
    ("catalog", Ignored),
]);

/// A problem with one key, named by its dotted path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("unknown configuration key `{0}`: it is neither a CNCF Distribution key nor a cistern extension")]
    UnknownKey(String),
    #[error("configuration key `{0}` must be a mapping of keys to values")]
    NotAMapping(String),
    #[error("configuration key `{0}` must be a string")]
    KeyNotAString(String),
}

/// Checks every key of `document` against the schema. Returns the dotted paths of accepted
/// but unimplemented Distribution keys, one per key, for the caller to warn about.
pub fn check(document: &Value) -> Result<Vec<String>, SchemaError> {
    let mut ignored = Vec::new();
    check_node(&ROOT, document, "", &mut ignored)?;
    Ok(ignored)
}

fn check_node(
    key: &Key,
    value: &Value,
    path: &str,
    ignored: &mut Vec<String>,
) -> Result<(), SchemaError> {
    match key {
        Used | FreeMap => Ok(()),
        Ignored => {
            ignored.push(path.to_owned());
            Ok(())
        }
        MapOf(_) | Section(_) => {
            let mapping = match value {
                Value::Null => return Ok(()),
                Value::Mapping(m) => m,
                _ => return Err(SchemaError::NotAMapping(path.to_owned())),
            };
            for (name, child_value) in mapping {
                let name = name
                    .as_str()
                    .ok_or_else(|| SchemaError::KeyNotAString(path.to_owned()))?;
                let child_path = join(path, name);
                let child = match key {
                    MapOf(child) => *child,
                    _ => key
                        .child(name)
                        .ok_or_else(|| SchemaError::UnknownKey(child_path.clone()))?,
                };
                check_node(child, child_value, &child_path, ignored)?;
            }
            Ok(())
        }
    }
}

impl Key {
    /// The key named `name` below this section.
    fn child(&self, name: &str) -> Option<&Key> {
        match self {
            Section(children) => children
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, child)| child),
            _ => None,
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Applies Distribution-style overrides such as `REGISTRY_PROXY_PASSWORD=...` (the variable
/// names the key path, joined with `_`). Returns the variables that name no known key: like
/// Distribution, those are reported and ignored, since CI environments often carry unrelated
/// `REGISTRY_*` variables.
pub fn apply_env_overrides(
    document: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Vec<String> {
    let mut unrecognised = Vec::new();
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with("REGISTRY_"))
        .collect();
    vars.sort(); // REGISTRY_STORAGE comes before the REGISTRY_STORAGE_<DRIVER>_* it selects
    for (name, value) in vars {
        if name == "REGISTRY_STORAGE" {
            if !select_storage_driver(document, &value) {
                unrecognised.push(format!("{name}={value}"));
            }
            continue;
        }
        let segments: Vec<String> = name["REGISTRY_".len()..]
            .split('_')
            .map(str::to_ascii_lowercase)
            .collect();
        match resolve_env_path(&segments, document) {
            Some(path) => set_path(document, &path, Value::String(value)),
            None => unrecognised.push(name),
        }
    }
    unrecognised
}

/// Storage drivers `REGISTRY_STORAGE` may name.
const STORAGE_DRIVERS: [&str; 5] = ["filesystem", "inmemory", "s3", "gcs", "azure"];

/// `REGISTRY_STORAGE=s3`, as in Distribution: the file's storage driver is replaced by this
/// one, whose settings then come from `REGISTRY_STORAGE_S3_*`. False for an unknown driver.
fn select_storage_driver(document: &mut Value, driver: &str) -> bool {
    if !STORAGE_DRIVERS.contains(&driver) {
        return false;
    }
    if let Some(Value::Mapping(storage)) = document.get_mut("storage") {
        for other in STORAGE_DRIVERS {
            storage.remove(other);
        }
    }
    set_path(
        document,
        &["storage".to_owned(), driver.to_owned()],
        Value::Mapping(Mapping::new()),
    );
    true
}

/// Maps the segments of an environment variable onto key names, or None when they name no key.
fn resolve_env_path(segments: &[String], document: &Value) -> Option<Vec<String>> {
    resolve_below(&ROOT, segments, Some(document)).filter(|path| !path.is_empty())
}

fn resolve_below(key: &Key, segments: &[String], node: Option<&Value>) -> Option<Vec<String>> {
    let Some((segment, rest)) = segments.split_first() else {
        return Some(Vec::new());
    };
    let path = match key {
        Section(children) => {
            let (name, child) = children.iter().find(|(known, _)| known == segment)?;
            let mut path = vec![(*name).to_owned()];
            path.extend(resolve_below(child, rest, node.and_then(|n| n.get(*name)))?);
            path
        }
        // Below these any key is acceptable; header names use '-' not '_', so the rest of
        // the variable is one key.
        FreeMap | Ignored => vec![segments.join("_")],
        MapOf(child) => return resolve_map_entry(child, segments, node),
        Used => return None,
    };
    Some(path)
}

/// An entry of a map with free-form names such as registry hosts, which may hold characters
/// a variable name cannot (`ghcr.io`, `127.0.0.1:5000`): the variable spells the name in
/// upper case with each other character as `_` (`GHCR_IO`), and must match exactly one name
/// already in the file.
fn resolve_map_entry(
    child: &Key,
    segments: &[String],
    node: Option<&Value>,
) -> Option<Vec<String>> {
    let Some(Value::Mapping(entries)) = node else {
        return None;
    };
    let mut found = entries.iter().filter_map(|(name, value)| {
        let name = name.as_str()?;
        let spelled: Vec<String> = name
            .to_ascii_lowercase()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .map(str::to_owned)
            .collect();
        let rest = segments.strip_prefix(spelled.as_slice())?;
        if rest.is_empty() {
            return None;
        }
        let mut path = vec![name.to_owned()];
        path.extend(resolve_below(child, rest, Some(value))?);
        Some(path)
    });
    let first = found.next()?;
    // Two names spelled alike (`a.b` and `a-b`): the variable cannot say which.
    found.next().is_none().then_some(first)
}

fn set_path(document: &mut Value, path: &[String], value: Value) {
    let mut node = document;
    for name in path {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            unreachable!("made a mapping above")
        };
        node = map
            .entry(Value::String(name.clone()))
            .or_insert(Value::Null);
    }
    *node = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn accepts_distribution_keys_with_one_warning_each() {
        let doc = yaml(
            "version: 0.1\nlog: {fields: {service: registry}}\nstorage: {cache: {blobdescriptor: inmemory}, filesystem: {rootdirectory: /x}}\nhealth: {storagedriver: {enabled: true}}\nproxy: {remoteurl: https://r}\n",
        );
        let mut ignored = check(&doc).unwrap();
        ignored.sort();
        assert_eq!(ignored, ["log.fields", "storage.cache"]);
    }

    #[test]
    fn rejects_unknown_keys_by_path() {
        let doc = yaml("proxy: {remoteurl: https://r, pasword: x}\n");
        assert_eq!(
            check(&doc).unwrap_err(),
            SchemaError::UnknownKey("proxy.pasword".into())
        );
        let doc = yaml("proxyy: {}\n");
        assert_eq!(
            check(&doc).unwrap_err(),
            SchemaError::UnknownKey("proxyy".into())
        );
        let doc = yaml("proxy: 3\n");
        assert_eq!(
            check(&doc).unwrap_err(),
            SchemaError::NotAMapping("proxy".into())
        );
    }

    #[test]
    fn env_overrides_set_known_paths_and_report_the_rest() {
        let mut doc = yaml("proxy: {remoteurl: https://r}\n");
        let unknown = apply_env_overrides(
            &mut doc,
            [
                ("REGISTRY_PROXY_PASSWORD".to_owned(), "s3cret".to_owned()),
                ("REGISTRY_HTTP_ADDR".to_owned(), ":6000".to_owned()),
                ("REGISTRY_STORAGE_S3_BUCKET".to_owned(), "b".to_owned()),
                ("REGISTRY_URL".to_owned(), "x".to_owned()),
                ("REGISTRY_PROXY_PASSWORD_X".to_owned(), "x".to_owned()),
                ("PATH".to_owned(), "/bin".to_owned()),
            ],
        );
        assert_eq!(unknown, ["REGISTRY_PROXY_PASSWORD_X", "REGISTRY_URL"]);
        assert_eq!(doc["proxy"]["password"].as_str(), Some("s3cret"));
        assert_eq!(doc["proxy"]["remoteurl"].as_str(), Some("https://r"));
        assert_eq!(doc["http"]["addr"].as_str(), Some(":6000"));
        assert_eq!(doc["storage"]["s3"]["bucket"].as_str(), Some("b"));
    }

    #[test]
    fn env_overrides_reach_registries_listed_in_the_file_by_their_spelled_out_host() {
        let mut doc =
            yaml("registries: {ghcr.io: {}, '127.0.0.1:5001': {tagttl: 1m}, a.b: {}, a-b: {}}\n");
        let unknown = apply_env_overrides(
            &mut doc,
            [
                ("REGISTRY_REGISTRIES_GHCR_IO_PASSWORD", "s3cret"),
                ("REGISTRY_REGISTRIES_127_0_0_1_5001_USERNAME", "me"),
                (
                    "REGISTRY_REGISTRIES_127_0_0_1_5001_REPOSITORIES_DENY",
                    "x/**",
                ),
                ("REGISTRY_REGISTRIES_QUAY_IO_PASSWORD", "x"),
                ("REGISTRY_REGISTRIES_GHCR_IO", "x"),
                ("REGISTRY_REGISTRIES_A_B_USERNAME", "x"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert_eq!(
            unknown,
            [
                "REGISTRY_REGISTRIES_A_B_USERNAME",
                "REGISTRY_REGISTRIES_GHCR_IO",
                "REGISTRY_REGISTRIES_QUAY_IO_PASSWORD"
            ]
        );
        assert_eq!(
            doc["registries"]["ghcr.io"]["password"].as_str(),
            Some("s3cret")
        );
        let local = &doc["registries"]["127.0.0.1:5001"];
        assert_eq!(local["username"].as_str(), Some("me"));
        assert_eq!(local["tagttl"].as_str(), Some("1m"));
        assert_eq!(local["repositories"]["deny"].as_str(), Some("x/**"));
    }
}
