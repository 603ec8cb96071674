//! How the cache answered a request, for the request log and the metrics.

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// From storage, without asking upstream.
    Hit,
    /// A tag past its TTL, confirmed with an upstream HEAD and served from storage.
    Revalidated,
    /// Fetched from upstream for this request.
    Miss,
    /// Streamed from a fill another request started.
    Joined,
    /// Upstream failed to revalidate the tag; the cached manifest was served anyway.
    Stale,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Revalidated => "revalidated",
            Outcome::Miss => "miss",
            Outcome::Joined => "joined",
            Outcome::Stale => "stale",
        }
    }
}
