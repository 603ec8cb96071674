//! Parsing `WWW-Authenticate` challenges, e.g.
//! `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`.

/// How upstream wants to be authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Fetch a token from `realm` (with Basic credentials if we have them) and send it as Bearer.
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// Send the stored credentials as HTTP Basic.
    Basic,
}

impl Challenge {
    /// Parses one challenge; None when the scheme is unknown or a Bearer challenge has no realm.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(params)?;
        let find = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: find("realm").filter(|r| !r.is_empty())?,
            service: find("service"),
        })
    }
}

/// `key=value` or `key="quoted \" value"` pairs separated by commas.
fn parse_params(input: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut rest = input.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => text.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => text.push(c),
                }
            }
            value = text;
            rest = &quoted[end?..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        params.push((key, value));
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>) -> Option<Challenge> {
        Some(Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
        })
    }

    #[test]
    fn parses_challenges() {
        let cases = [
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
                bearer("https://auth.docker.io/token", Some("registry.docker.io")),
            ),
            (
                r#"bearer realm="http://127.0.0.1:1/token", service="a,b""#,
                bearer("http://127.0.0.1:1/token", Some("a,b")),
            ),
            (
                r#"Bearer realm=http://x/token,service=svc"#,
                bearer("http://x/token", Some("svc")),
            ),
            (r#"Bearer realm="a\"b""#, bearer("a\"b", None)),
            (r#"Basic realm="Registry Realm""#, Some(Challenge::Basic)),
            (r#"Bearer service="x""#, None),
            (r#"Bearer realm="unterminated"#, None),
            (r#"Bearer realm"#, None),
            (r#"Negotiate abc"#, None),
            ("", None),
        ];
        for (header, expected) in cases {
            assert_eq!(Challenge::parse(header), expected, "{header}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_header_parses_or_is_refused_without_panicking(header in any::<String>()) {
            let _ = Challenge::parse(&header);
        }

        #[test]
        fn bearer_challenges_give_their_realm_and_service(
            realm in "https://[a-z.]{1,20}/[a-z]{0,10}", service in "[a-z.]{1,20}",
            scope in "repository:[a-z/]{1,20}:pull", spaces in " {0,2}"
        ) {
            let header = format!(
                "Bearer realm=\"{realm}\",{spaces}service=\"{service}\",scope=\"{scope}\""
            );
            prop_assert_eq!(
                Challenge::parse(&header),
                Some(Challenge::Bearer { realm, service: Some(service) })
            );
        }
    }
}
