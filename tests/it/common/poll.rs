//! Waiting for what a test cannot be told about (a background task's effect, a log line, a
//! metric, a port): look again and again until a deadline, never sleep a fixed time and hope.

use std::time::{Duration, Instant};

/// How long to wait before looking again.
const AGAIN_AFTER: Duration = Duration::from_millis(20);

/// What one look found: what was awaited (`Ok`), or not yet, with what was seen instead for
/// the message if the deadline passes.
pub trait Look {
    type Found;
    fn found(self) -> Result<Self::Found, Option<String>>;
}

impl Look for bool {
    type Found = ();
    fn found(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Look for Option<T> {
    type Found = T;
    fn found(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err` says what was seen instead, for the message.
impl<T> Look for Result<T, String> {
    type Found = T;
    fn found(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Looks with `look` until it finds what it looks for, and returns that. Once `within` has
/// passed, fails the test naming `what` was awaited and what the last look saw.
pub async fn until<L: Look>(
    what: &str,
    within: Duration,
    mut look: impl AsyncFnMut() -> L,
) -> L::Found {
    let deadline = Instant::now() + within;
    loop {
        let seen = match look().await.found() {
            Ok(found) => return found,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            match seen {
                Some(seen) => panic!("waited {within:?} for {what} in vain; last seen: {seen}"),
                None => panic!("waited {within:?} for {what} in vain"),
            }
        }
        tokio::time::sleep(AGAIN_AFTER).await;
    }
}
