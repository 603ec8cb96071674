//! The `n` and `last` query parameters of `/tags/list` and `/_catalog`, and the `Link` header
//! that points at the next page.

use super::error::ApiError;

/// Query parameters a listing accepts (`ns`, the registry, is read by the endpoint parser).
#[derive(Default)]
pub struct PageQuery {
    n: Option<String>,
    last: Option<String>,
}

pub struct Page {
    pub n: Option<usize>,
    pub last: Option<String>,
}

impl PageQuery {
    pub fn parse(query: Option<&str>) -> Result<Page, ApiError> {
        let query: PageQuery = read_query(query.unwrap_or(""));
        let n = match query.n.as_deref() {
            None | Some("") => None,
            Some(n) => Some(n.parse::<usize>().map_err(|_| {
                ApiError::pagination_invalid(format!(
                    "n={n:?} is not a non-negative number of entries"
                ))
            })?),
        };
        Ok(Page {
            n,
            last: query.last.filter(|l| !l.is_empty()),
        })
    }
}

fn read_query(query: &str) -> PageQuery {
    let mut page = PageQuery::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "n" => page.n = Some(value.into_owned()),
            "last" => page.last = Some(value.into_owned()),
            _ => {}
        }
    }
    page
}

/// `Link: </v2/...?n=N&last=LAST>; rel="next"` for the page after `last`.
pub fn next_link(path: &str, n: usize, last: &str) -> String {
    let last: String = url::form_urlencoded::byte_serialize(last.as_bytes()).collect();
    format!("<{path}?n={n}&last={last}>; rel=\"next\"")
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_query_is_a_page_or_an_error_never_a_panic(query in any::<String>()) {
            let _ = PageQuery::parse(Some(&query));
        }

        #[test]
        fn the_next_link_carries_n_and_last_back_unchanged(n in 1usize..10_000, last in any::<String>()) {
            prop_assume!(!last.is_empty());
            let link = next_link("/v2/_catalog", n, &last);
            let query = link
                .strip_prefix("</v2/_catalog?")
                .and_then(|rest| rest.strip_suffix(">; rel=\"next\""))
                .unwrap();
            let page = PageQuery::parse(Some(query)).ok().unwrap();
            prop_assert_eq!((page.n, page.last), (Some(n), Some(last)));
        }
    }
}
