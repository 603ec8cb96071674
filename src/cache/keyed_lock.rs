//! One turn at a time per key: concurrent requests for the same cold manifest wait for the
//! first one, then find it cached, so upstream sees one request instead of twenty.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

pub struct KeyedLock<K> {
    turns: Mutex<HashMap<K, Arc<AsyncMutex<()>>>>,
}

impl<K> Default for KeyedLock<K> {
    fn default() -> Self {
        KeyedLock {
            turns: Mutex::new(HashMap::new()),
        }
    }
}

/// Holding this is having the turn for its key.
pub struct Turn<'a, K: Hash + Eq> {
    owner: &'a KeyedLock<K>,
    key: K,
    turn: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Hash + Eq + Clone> KeyedLock<K> {
    pub async fn lock(&self, key: K) -> Turn<'_, K> {
        let turn = self
            .turns
            .lock()
            .expect("keyed lock poisoned")
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = turn.clone().lock_owned().await;
        Turn {
            owner: self,
            key,
            turn,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.turns.lock().expect("keyed lock poisoned").len()
    }
}

impl<K: Hash + Eq> Drop for Turn<'_, K> {
    fn drop(&mut self) {
        self.guard.take();
        let mut turns = self.owner.turns.lock().expect("keyed lock poisoned");
        // Nobody else holds or waits for this key (the map and we hold the only references):
        // forget it, so the map does not grow with every manifest ever asked for.
        if Arc::strong_count(&self.turn) == 2 {
            turns.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_turn_per_key_and_nothing_left_behind() {
        let lock = Arc::new(KeyedLock::<String>::default());
        let first = lock.lock("a".to_owned()).await;
        // another key is not blocked
        drop(lock.lock("b".to_owned()).await);
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move {
                let _turn = lock.lock("a".to_owned()).await;
            })
        };
        let blocked = tokio::time::timeout(Duration::from_millis(50), async {
            while !waiter.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(blocked.is_err(), "the second turn waits for the first");
        drop(first);
        waiter.await.unwrap();
        assert_eq!(lock.len(), 0);
    }
}
