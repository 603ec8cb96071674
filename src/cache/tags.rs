//! Tag lists: upstream's when it answers, what we hold when it does not (or is offline).

use super::offline::{offline_miss, Missing};
use super::{Cache, CacheError};
use crate::registry::RepoName;
use crate::storage::layout;

pub struct TagListPage {
    pub tags: Vec<String>,
    /// There is a next page.
    pub more: bool,
}

impl Cache {
    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagListPage, CacheError> {
        let error = match self.upstream(repo)?.tags(repo, n, last).await {
            Ok(page) => {
                // Sorted and cut here again: the spec wants lexical order, and some upstreams
                // (Distribution 2.8) return every tag unsorted whatever `n` and `last` say.
                let mut tags = page.tags;
                tags.sort_unstable();
                tags.dedup();
                let (tags, more_here) = paginate(tags, n, last);
                return Ok(TagListPage {
                    tags,
                    more: page.more || more_here,
                });
            }
            Err(e) if e.is_not_found() => {
                return Err(CacheError::NameUnknown { repo: repo.clone() })
            }
            Err(e) => e,
        };
        let cached = match self.storage().index().tags(repo.as_str()) {
            Some(tags) => tags,
            None => self.storage().list_names(&layout::tags_of(repo)).await?,
        };
        if cached.is_empty() {
            return Err(offline_miss(error.into(), || Missing::Repository {
                repo: repo.clone(),
            }));
        }
        if !error.is_offline() {
            tracing::warn!(registry = %repo.registry(), repository = %repo, error = %error, "upstream tag list failed; listing cached tags");
        }
        let (tags, more) = paginate(cached, n, last);
        Ok(TagListPage { tags, more })
    }
}

/// One page of a sorted list: the entries after `last`, at most `n` of them, and whether more
/// follow.
pub fn paginate(sorted: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let mut rest: Vec<String> = match last {
        Some(last) => sorted.into_iter().filter(|s| s.as_str() > last).collect(),
        None => sorted,
    };
    let more = n.is_some_and(|n| rest.len() > n);
    if let Some(n) = n {
        rest.truncate(n);
    }
    (rest, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let all: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(
            paginate(all.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(
            paginate(all.clone(), None, Some("c")),
            (vec!["d".into()], false)
        );
        assert_eq!(paginate(all.clone(), Some(0), None), (vec![], true));
        assert_eq!(paginate(all, Some(9), Some("d")), (vec![], false));
    }
}
