/// What cistern asks upstream for when the client states no preference: every manifest
/// format a current client can use, so multi-arch images resolve to their index.
pub const DEFAULT_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Whether a client's `Accept` header admits `media_type`. No header, or `*/*`, admits anything.
pub fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    let Some(accept) = accept else { return true };
    let mut any = false;
    for entry in accept.split(',') {
        let entry = entry.split(';').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        any = true;
        if entry == "*/*" || entry.eq_ignore_ascii_case(media_type) {
            return true;
        }
    }
    !any
}

/// The Accept list to send upstream: everything we ask for by default plus what the client
/// asked for, so the tag record always reflects the broadest form (an index for multi-arch).
pub fn upstream_accept(client_accept: Option<&str>) -> String {
    let mut list = DEFAULT_MANIFEST_ACCEPT.to_owned();
    for entry in client_accept.unwrap_or("").split(',') {
        let media_type = entry.split(';').next().unwrap_or("").trim();
        if !media_type.is_empty() && media_type != "*/*" && !list.contains(media_type) {
            list.push_str(", ");
            list.push_str(media_type);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

    #[test]
    fn accept_matching() {
        assert!(accepts(None, INDEX));
        assert!(accepts(Some(""), INDEX));
        assert!(accepts(Some("*/*"), INDEX));
        assert!(accepts(Some(&format!("{V2}, {INDEX};q=0.5")), INDEX));
        assert!(!accepts(Some(V2), INDEX));
    }

    #[test]
    fn upstream_accept_is_a_union() {
        let v1 = "application/vnd.docker.distribution.manifest.v1+prettyjws";
        let list = upstream_accept(Some(&format!("{V2}, {v1}, */*")));
        assert!(list.starts_with(DEFAULT_MANIFEST_ACCEPT));
        assert!(list.ends_with(v1));
        assert_eq!(list.matches(V2).count(), 1);
    }
}
