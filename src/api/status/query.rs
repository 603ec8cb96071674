//! The query of `/api/repositories`: `q` (a substring of the name), `page` (from 1) and
//! `per_page`. Anything else, or a value out of bounds, is refused with a message that says
//! what is allowed, so a hostile or mistyped query costs nothing.

/// Longest search accepted: longer than any repository name.
pub const MAX_QUERY_CHARS: usize = 256;
pub const MAX_PER_PAGE: usize = 200;
pub const DEFAULT_PER_PAGE: usize = 50;
/// Pages past this are refused rather than counted (`page * per_page` must not overflow).
pub const MAX_PAGE: usize = 1_000_000;

#[derive(Debug, PartialEq, Eq)]
pub struct RepositoryQuery {
    pub q: String,
    pub page: usize,
    pub per_page: usize,
}

impl RepositoryQuery {
    pub fn skip(&self) -> usize {
        (self.page - 1) * self.per_page
    }

    pub fn parse(query: Option<&str>) -> Result<RepositoryQuery, String> {
        let mut parsed = RepositoryQuery {
            q: String::new(),
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        };
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "q" if value.chars().count() > MAX_QUERY_CHARS => {
                    return Err(format!("q is longer than {MAX_QUERY_CHARS} characters"));
                }
                "q" => parsed.q = value.into_owned(),
                "page" => parsed.page = number("page", &value, 1, MAX_PAGE)?,
                "per_page" => parsed.per_page = number("per_page", &value, 1, MAX_PER_PAGE)?,
                other => {
                    let shown: String = other.chars().take(40).collect();
                    return Err(format!(
                        "unknown parameter {shown:?}: the parameters are q, page and per_page"
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

fn number(key: &str, value: &str, min: usize, max: usize) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            let shown: String = value.chars().take(40).collect();
            format!("{key}={shown:?} must be a whole number from {min} to {max}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_or_refused_with_the_reason() {
        assert_eq!(
            RepositoryQuery::parse(Some("q=alp%2Fine&page=3&per_page=10")),
            Ok(RepositoryQuery {
                q: "alp/ine".into(),
                page: 3,
                per_page: 10
            })
        );
        assert_eq!(
            RepositoryQuery::parse(None).unwrap().per_page,
            DEFAULT_PER_PAGE
        );
        let refused = |q: &str| RepositoryQuery::parse(Some(q)).unwrap_err();
        assert!(refused("per_page=100000").contains("per_page=\"100000\" must be"));
        assert!(refused("page=0").contains("from 1 to"));
        assert!(refused("page=-1").contains("page="));
        assert!(refused("page=99999999999999999999999").contains("page="));
        assert!(refused("sort=name").contains("unknown parameter \"sort\""));
        assert!(refused(&format!("q={}", "a".repeat(300))).contains("longer than"));
    }

    proptest::proptest! {
        #[test]
        fn any_query_is_read_or_refused_never_a_panic(query in proptest::prelude::any::<String>()) {
            if let Ok(parsed) = RepositoryQuery::parse(Some(&query)) {
                let _ = parsed.skip();
            }
        }
    }
}
