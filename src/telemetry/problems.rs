//! The last things that went wrong, for the status page: upstream failures, digest mismatches,
//! refused clients. Fed where they are already logged; a bounded ring, so a flood of failures
//! costs at most `CAPACITY` entries of memory.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// How many problems are kept; older ones are dropped.
pub const CAPACITY: usize = 200;
/// A problem's message is cut to this many characters (an upstream error can quote a body).
const MAX_MESSAGE_CHARS: usize = 500;

/// What kind of thing went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Upstream failed to answer, or answered with an error the client got.
    Upstream,
    /// Upstream's bytes did not hash to the digest they were fetched for.
    DigestMismatch,
    /// A client was refused (authentication, `access.sources`, `access.repositories`).
    RefusedClient,
    /// Anything else a client got a 5xx for (storage, a panic).
    Server,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Problem {
    /// RFC 3339, seconds.
    pub time: String,
    pub kind: ProblemKind,
    /// The repository it concerns, as the mirror names it, if any: the main listener's status
    /// page shows a viewer only the problems of repositories it may pull.
    pub repository: Option<String>,
    pub message: String,
}

/// The ring; cloning shares it.
#[derive(Clone, Default)]
pub struct Problems {
    ring: Arc<Mutex<VecDeque<Problem>>>,
}

impl Problems {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Problem>> {
        // A queue of plain records: a panic elsewhere cannot leave it inconsistent.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn record(&self, kind: ProblemKind, repository: Option<&str>, message: &str) {
        let message = match message.char_indices().nth(MAX_MESSAGE_CHARS) {
            Some((cut, _)) => format!("{}...", &message[..cut]),
            None => message.to_owned(),
        };
        let problem = Problem {
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            kind,
            repository: repository.map(str::to_owned),
            message,
        };
        let mut ring = self.lock();
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(problem);
    }

    /// The problems kept, newest first.
    pub fn recent(&self) -> Vec<Problem> {
        self.lock().iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_and_cuts_long_messages() {
        let problems = Problems::default();
        for i in 0..CAPACITY + 5 {
            problems.record(ProblemKind::Upstream, Some("library/a"), &format!("no {i}"));
        }
        let recent = problems.recent();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0].message, format!("no {}", CAPACITY + 4));
        assert_eq!(recent[CAPACITY - 1].message, "no 5");
        problems.record(ProblemKind::Server, None, &"x".repeat(10_000));
        assert_eq!(problems.recent()[0].message.len(), MAX_MESSAGE_CHARS + 3);
    }
}
