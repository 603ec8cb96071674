//! Upstream tag lists, read page by page with caps: Docker Hub's lists for popular images are
//! long, and a hostile upstream's can be endless (an unending `Link` chain, or one huge page).

use http::{header, HeaderMap, Method};
use url::Url;

use super::body::read_at_most;
use super::{same_origin, TagPage, Upstream, UpstreamError};
use crate::registry::RepoName;

/// Tags asked for per upstream page (`n`): Distribution's own default page limit.
pub const TAG_PAGE_SIZE: usize = 1000;
/// The most tags read for one listing. Past it the listing ends with a `Link` to the next
/// page, so a client that pages on still sees every tag.
pub const MAX_TAGS: usize = 10_000;
/// The most upstream pages read for one listing, whatever their size.
pub const MAX_TAG_PAGES: usize = 20;
/// The largest tag list page accepted. A page of [`TAG_PAGE_SIZE`] tags of the longest legal
/// length (128) is about 130 KiB; this leaves room for upstreams that ignore `n` and send
/// every tag at once.
pub const MAX_TAG_PAGE_BYTES: u64 = 4 * 1024 * 1024;

impl Upstream {
    /// The repository's tags after `last` (all of them when None): pages of upstream's
    /// `Link: <...>; rel="next"` chain are read until `n` tags came, at most [`MAX_TAGS`].
    /// `more` says upstream has further tags.
    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagPage, UpstreamError> {
        let wanted = n.unwrap_or(MAX_TAGS).min(MAX_TAGS);
        let mut next = Some(self.first_tag_page(repo, wanted, last)?);
        let mut tags = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            if tags.len() >= wanted || pages == MAX_TAG_PAGES {
                next = Some(url);
                break;
            }
            pages += 1;
            let (page, link) = self.tag_page(repo, &url).await?;
            if page.is_empty() {
                break; // a `Link` past the end; nothing more to read
            }
            tags.extend(page);
            next = link;
        }
        // Cut at the cap only, not at `n`: upstreams that ignore `n` send every tag unsorted
        // (Distribution 2.8), so the caller sorts what came before taking its page.
        let more = next.is_some() || tags.len() > MAX_TAGS;
        tags.truncate(MAX_TAGS);
        Ok(TagPage { tags, more })
    }

    fn first_tag_page(
        &self,
        repo: &RepoName,
        wanted: usize,
        last: Option<&str>,
    ) -> Result<Url, UpstreamError> {
        let mut url = Url::parse(&self.url(repo, "tags/list"))
            .map_err(|e| UpstreamError::bad_response(self.base.as_str(), e))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("n", &wanted.clamp(1, TAG_PAGE_SIZE).to_string());
            if let Some(last) = last {
                query.append_pair("last", last);
            }
        }
        Ok(url)
    }

    /// One page: its tags, and the next page's URL if upstream links one.
    async fn tag_page(
        &self,
        repo: &RepoName,
        url: &Url,
    ) -> Result<(Vec<String>, Option<Url>), UpstreamError> {
        let response = self
            .send(repo, Method::GET, url.as_str(), HeaderMap::new(), true)
            .await?;
        let response = super::expect_success(response, url.as_str())?;
        let link = next_page(response.headers(), url, &self.base)?;
        let body = read_at_most(response, MAX_TAG_PAGE_BYTES, "tag list", url.as_str()).await?;
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let list: TagList = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::bad_response(url.as_str(), e))?;
        Ok((list.tags.unwrap_or_default(), link))
    }
}

/// The `rel="next"` target of a `Link` header, resolved against the page it came with. It
/// must stay on upstream's origin: the request carries our token, and a hostile `Link` could
/// otherwise send it anywhere.
fn next_page(headers: &HeaderMap, page: &Url, base: &Url) -> Result<Option<Url>, UpstreamError> {
    let Some(target) = headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(next_target)
    else {
        return Ok(None);
    };
    let next = page
        .join(target)
        .map_err(|e| UpstreamError::bad_response(page.as_str(), format!("bad Link: {e}")))?;
    if !same_origin(&next, base) {
        return Err(UpstreamError::bad_response(
            page.as_str(),
            format!(
                "its Link points to another origin ({}), not followed",
                next.origin().ascii_serialization()
            ),
        ));
    }
    Ok(Some(next))
}

/// The URL of one `<url>; rel="next"` link value, None for any other relation.
fn next_target(link: &str) -> Option<&str> {
    let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
    params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .any(|(k, v)| k.trim().eq_ignore_ascii_case("rel") && v.trim().trim_matches('"') == "next")
        .then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(value: &str) -> Result<Option<String>, UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::LINK, value.parse().unwrap());
        let page = Url::parse("https://hub.example/v2/library/node/tags/list?n=1000").unwrap();
        let base = Url::parse("https://hub.example/").unwrap();
        next_page(&headers, &page, &base).map(|next| next.map(String::from))
    }

    #[test]
    fn next_links_are_resolved_on_upstream_only() {
        assert_eq!(
            link(r#"</v2/library/node/tags/list?last=18&n=1000>; rel="next""#).unwrap(),
            Some("https://hub.example/v2/library/node/tags/list?last=18&n=1000".into())
        );
        assert_eq!(
            link(r#"<https://hub.example/v2/x/tags/list?next_page=abc>;rel=next"#).unwrap(),
            Some("https://hub.example/v2/x/tags/list?next_page=abc".into())
        );
        assert_eq!(
            link(r#"</v2/x/tags/list?last=a>; rel="prev""#).unwrap(),
            None
        );
        assert_eq!(link("garbage").unwrap(), None);
        let foreign = link(r#"<http://evil.example/steal>; rel="next""#).unwrap_err();
        assert!(foreign.to_string().contains("another origin"), "{foreign}");
    }
}
