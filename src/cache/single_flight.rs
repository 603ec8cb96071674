//! One attempt per key at a time, shared by every caller that asks while it runs: the cache's
//! only single-flight mechanism (blob fills and manifest fetches both use it).
//!
//! The attempt runs in a task of its own, so a caller that goes away does not cancel it. The task
//! publishes its state through a `watch` channel that every caller of the attempt reads; the
//! entry and the publishing end live in a `Publisher`, whose drop is the guard: whatever way the
//! task ends (an outcome, an early return, a panic, the runtime cancelling it), the state is
//! settled (`abandon` when the task did not settle it) and the entry removed, so nobody waits
//! for an attempt that is gone and the next caller starts a new one. An attempt that failed is
//! never joined, even in the moment between its failure and its release: a caller arriving
//! then starts anew (one whose request differs may succeed, e.g. another repository's fetch
//! of the same blob).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// The state an attempt publishes.
pub trait AttemptState: Send + Sync + 'static {
    /// Whether this is the attempt's outcome (success or failure): nothing changes after it.
    fn is_settled(&self) -> bool;
    /// Whether the attempt ended in failure.
    fn has_failed(&self) -> bool;
    /// Turns an unsettled state into a failure: the task ended without an outcome.
    fn abandon(&mut self);
}

/// Whether the caller started the attempt or joined one in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Started,
    Joined,
}

/// Attempts in flight by key; `H` is what callers of an attempt get (at least a
/// `watch::Receiver` of its state).
pub struct SingleFlight<K, H> {
    entries: Arc<Mutex<HashMap<K, Entry<H>>>>,
    next_id: AtomicU64,
}

struct Entry<H> {
    /// Tells this attempt's entry from a later one under the same key.
    id: u64,
    handle: H,
    /// Reads whether the attempt failed.
    failed: Box<dyn Fn() -> bool + Send>,
}

impl<H> Entry<H> {
    fn joinable(&self) -> bool {
        !(self.failed)()
    }
}

impl<K, H> Default for SingleFlight<K, H> {
    fn default() -> Self {
        SingleFlight {
            entries: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<K, H> SingleFlight<K, H>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    H: Clone + Send + 'static,
{
    /// The handle of the attempt in flight for `key`, or of a new one. A new attempt's state
    /// starts as `initial`; `prepare` makes its handle from the state's receiver (an error
    /// there leaves nothing behind) and the function that turns the publisher into the task,
    /// which is spawned here.
    pub fn join_or_start<S, E, Launch, Task>(
        &self,
        key: &K,
        initial: S,
        prepare: impl FnOnce(watch::Receiver<S>) -> Result<(H, Launch), E>,
    ) -> Result<(H, Role), E>
    where
        S: AttemptState,
        Launch: FnOnce(Publisher<K, H, S>) -> Task,
        Task: Future<Output = ()> + Send + 'static,
    {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(key).filter(|e| e.joinable()) {
            return Ok((entry.handle.clone(), Role::Joined));
        }
        let (sender, receiver) = watch::channel(initial);
        let probe = receiver.clone();
        let failed = Box::new(move || probe.borrow().has_failed());
        let (handle, launch) = prepare(receiver)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        entries.insert(
            key.clone(),
            Entry {
                id,
                handle: handle.clone(),
                failed,
            },
        );
        drop(entries);
        // From here the publisher's guard owns the entry, whatever happens to the task.
        let publisher = Publisher {
            state: Arc::new(sender),
            entries: self.entries.clone(),
            key: key.clone(),
            id,
        };
        tokio::spawn(launch(publisher));
        Ok((handle, Role::Started))
    }

    /// The handle of the attempt in flight for `key`, if any (one that failed is gone).
    pub fn get(&self, key: &K) -> Option<H> {
        lock(&self.entries)
            .get(key)
            .filter(|e| e.joinable())
            .map(|e| e.handle.clone())
    }

    /// The keys of every attempt in flight.
    pub fn keys(&self) -> Vec<K> {
        lock(&self.entries).keys().cloned().collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

/// The publishing end of one attempt, owned by its task. Dropping it settles the state and
/// releases the entry.
pub struct Publisher<K: Hash + Eq, H, S: AttemptState> {
    state: Arc<watch::Sender<S>>,
    entries: Arc<Mutex<HashMap<K, Entry<H>>>>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq, H, S: AttemptState> Publisher<K, H, S> {
    pub fn publish(&self, change: impl FnOnce(&mut S)) {
        self.state.send_modify(change);
    }

    /// The sending side, for helpers (threads) that publish progress while the task runs. The
    /// guard stays with the publisher: a helper's copy does not keep the entry alive.
    pub fn sender(&self) -> Arc<watch::Sender<S>> {
        self.state.clone()
    }
}

impl<K: Hash + Eq, H, S: AttemptState> Drop for Publisher<K, H, S> {
    fn drop(&mut self) {
        // Settled first, then released: a caller that still finds the entry finds an outcome.
        self.state.send_if_modified(|state| {
            let unsettled = !state.is_settled();
            if unsettled {
                state.abandon();
            }
            unsettled
        });
        let mut entries = lock(&self.entries);
        if entries.get(&self.key).is_some_and(|e| e.id == self.id) {
            entries.remove(&self.key);
        }
    }
}

/// The map is only ever changed in a few statements that cannot panic; a poisoned lock (a
/// panic elsewhere while holding it) still holds a consistent map.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for the attempt's outcome.
pub async fn outcome<S: AttemptState + Clone>(state: &mut watch::Receiver<S>) -> S {
    // The guard settles the state before the sender can go, so an error here (every sender
    // gone) still leaves the outcome to read.
    let _ = state.wait_for(S::is_settled).await;
    let settled = state.borrow().clone();
    settled
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[derive(Clone, Debug, PartialEq)]
    enum State {
        Running,
        Done(Result<u32, &'static str>),
    }

    impl AttemptState for State {
        fn is_settled(&self) -> bool {
            matches!(self, State::Done(_))
        }
        fn has_failed(&self) -> bool {
            matches!(self, State::Done(Err(_)))
        }
        fn abandon(&mut self) {
            *self = State::Done(Err("abandoned"));
        }
    }

    type Flights = SingleFlight<&'static str, watch::Receiver<State>>;

    /// Joins or starts an attempt on "key" that waits for `go`, then runs `body`.
    fn attempt(
        flights: &Flights,
        starts: &Arc<AtomicUsize>,
        go: &Arc<tokio::sync::Notify>,
        body: fn() -> State,
    ) -> (watch::Receiver<State>, Role) {
        let (starts, go) = (starts.clone(), go.clone());
        flights
            .join_or_start(&"key", State::Running, |state| {
                Ok::<_, ()>(
                    (state, move |publisher: Publisher<_, _, State>| async move {
                        starts.fetch_add(1, Ordering::SeqCst);
                        go.notified().await;
                        let outcome = body();
                        publisher.publish(|s| *s = outcome);
                    }),
                )
            })
            .unwrap()
    }

    #[tokio::test]
    async fn every_caller_shares_one_attempt_and_its_outcome() {
        let flights = Flights::default();
        let (starts, go) = (Arc::default(), Arc::new(tokio::sync::Notify::new()));
        let mut roles = Vec::new();
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let (mut state, role) = attempt(&flights, &starts, &go, || State::Done(Ok(7)));
            roles.push(role);
            waiters.push(tokio::spawn(async move { outcome(&mut state).await }));
        }
        assert_eq!(roles.iter().filter(|r| **r == Role::Started).count(), 1);
        go.notify_one();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), State::Done(Ok(7)));
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "the entry is released with the outcome");
    }

    #[tokio::test]
    async fn a_failed_attempt_is_never_joined_even_before_its_entry_is_released() {
        let flights = Flights::default();
        let linger = Arc::new(tokio::sync::Notify::new());
        let failing = |linger: Arc<tokio::sync::Notify>| {
            flights
                .join_or_start(&"key", State::Running, |state| {
                    Ok::<_, ()>(
                        (state, move |publisher: Publisher<_, _, State>| async move {
                            publisher.publish(|s| *s = State::Done(Err("upstream said 404")));
                            // The task lives on with its failure published and its entry held.
                            linger.notified().await;
                        }),
                    )
                })
                .unwrap()
        };
        let (mut first, role) = failing(linger.clone());
        assert_eq!(role, Role::Started);
        assert_eq!(
            outcome(&mut first).await,
            State::Done(Err("upstream said 404"))
        );
        assert_eq!(flights.len(), 1, "the failed attempt still holds its entry");
        assert!(
            flights.get(&"key").is_none(),
            "a failed attempt is not in flight"
        );
        let (_, role) = failing(linger.clone());
        assert_eq!(role, Role::Started, "a failed attempt is not joined");
        linger.notify_waiters();
    }

    #[tokio::test]
    async fn a_task_that_panics_publishes_a_failure_and_releases_its_entry() {
        let flights = Flights::default();
        let (starts, go) = (Arc::default(), Arc::new(tokio::sync::Notify::new()));
        let (mut first, _) = attempt(&flights, &starts, &go, || {
            panic!("a deliberate panic: this test checks the guard")
        });
        let (mut joined, role) = attempt(&flights, &starts, &go, || State::Done(Ok(1)));
        assert_eq!(role, Role::Joined);
        go.notify_one();
        assert_eq!(outcome(&mut first).await, State::Done(Err("abandoned")));
        assert_eq!(outcome(&mut joined).await, State::Done(Err("abandoned")));
        assert_eq!(flights.len(), 0);

        // The next caller starts a new attempt instead of finding the dead one.
        let (mut next, role) = attempt(&flights, &starts, &go, || State::Done(Ok(2)));
        assert_eq!(role, Role::Started);
        go.notify_one();
        assert_eq!(outcome(&mut next).await, State::Done(Ok(2)));
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn callers_that_go_away_do_not_cancel_the_attempt() {
        let flights = Flights::default();
        let (starts, go) = (Arc::default(), Arc::new(tokio::sync::Notify::new()));
        let (state, _) = attempt(&flights, &starts, &go, || State::Done(Ok(3)));
        let mut watching = state.clone();
        let caller = tokio::spawn(async move {
            let mut state = state;
            outcome(&mut state).await
        });
        tokio::task::yield_now().await;
        caller.abort();
        go.notify_one();
        let settled = tokio::time::timeout(Duration::from_secs(5), outcome(&mut watching));
        assert_eq!(settled.await.unwrap(), State::Done(Ok(3)));
    }

    #[tokio::test]
    async fn a_failed_preparation_leaves_nothing_behind() {
        let flights = Flights::default();
        let failed = flights.join_or_start(&"key", State::Running, |_| {
            Err::<(_, fn(Publisher<_, _, State>) -> std::future::Ready<()>), _>("no spool")
        });
        assert!(failed.is_err());
        assert_eq!(flights.len(), 0);
    }
}
