//! Header names and parsing shared by the handlers.

use http::HeaderMap;

use crate::cache::ByteRange;

pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
pub const API_VERSION: &str = "docker-distribution-api-version";
pub const API_VERSION_VALUE: &str = "registry/2.0";
/// The registry a proxy served a request from, when the client named it with `?ns=`.
pub const OCI_NAMESPACE: &str = "oci-namespace";

/// The client's `Accept` header, all values joined (clients may send several lines).
pub fn accept(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// A single `Range: bytes=...` request. Anything else (several ranges, other units, bad
/// syntax) is ignored, as HTTP allows, and the whole blob is served.
pub fn range(headers: &HeaderMap) -> Option<ByteRange> {
    let value = headers.get(http::header::RANGE)?.to_str().ok()?;
    parse_range(value)
}

fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if start.trim().is_empty() {
        return number(end).map(ByteRange::Suffix);
    }
    let start = number(start)?;
    let end = if end.trim().is_empty() {
        None
    } else {
        Some(number(end)?)
    };
    if end.is_some_and(|end| end < start) {
        return None;
    }
    Some(ByteRange::From { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_byte_ranges() {
        let from = |start, end| Some(ByteRange::From { start, end });
        let cases = [
            ("bytes=0-", from(0, None)),
            ("bytes=100-", from(100, None)),
            ("bytes=5-9", from(5, Some(9))),
            (" bytes= 5 - 9 ", from(5, Some(9))),
            ("bytes=-20", Some(ByteRange::Suffix(20))),
            ("bytes=9-5", None),
            ("bytes=0-1,3-4", None),
            ("items=0-1", None),
            ("bytes=a-", None),
            ("bytes=-", None),
            ("bytes=+1-", None),
            ("bytes=99999999999999999999999-", None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_range(value), expected, "{value:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_parses_or_is_ignored_without_panicking(value in any::<String>()) {
            let _ = parse_range(&value);
        }

        #[test]
        fn a_range_parses_to_exactly_its_bounds(
            (start, end) in prop_oneof![(0u64..8, 0u64..8), (any::<u64>(), any::<u64>())]
        ) {
            prop_assert_eq!(
                parse_range(&format!("bytes={start}-")),
                Some(ByteRange::From { start, end: None })
            );
            let bounded = parse_range(&format!("bytes={start}-{end}"));
            if end >= start {
                prop_assert_eq!(bounded, Some(ByteRange::From { start, end: Some(end) }));
            } else {
                prop_assert_eq!(bounded, None, "an end before the start is not a range");
            }
            prop_assert_eq!(parse_range(&format!("bytes=-{end}")), Some(ByteRange::Suffix(end)));
            prop_assert_eq!(parse_range(&format!("bytes={start}-{end},0-1")), None);
            prop_assert_eq!(parse_range(&format!("items={start}-{end}")), None);
        }
    }
}
