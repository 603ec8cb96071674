//! Liveness and readiness. The process is live while it answers; it is ready while storage
//! takes writes: a background check writes a probe object every `health.storagedriver.interval`
//! and readiness fails after `threshold` failures in a row (Distribution's semantics), so a
//! load balancer stops sending pulls to a replica whose disk or bucket is gone.
//! A store that refuses writes for lack of space is not a failure here: the mirror still
//! serves (what is new, uncached) while eviction makes room, and `/readyz` reports it.
//! Upstream is deliberately not part of readiness: a mirror whose upstream is down still serves
//! everything it holds, which is the point of having one.

use std::sync::{Arc, Mutex};

use crate::config::StorageCheck;
use crate::storage::{out_of_space, Storage};
use crate::telemetry::Metrics;

#[derive(Clone, Default)]
pub struct Health {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    failures_in_a_row: usize,
    threshold: usize,
    last_error: Option<String>,
    /// Set on SIGTERM: the load balancer should stop sending requests while we drain.
    shutting_down: bool,
}

impl Health {
    /// Starts the storage check (if enabled) and returns the readiness it maintains.
    pub fn spawn(
        storage: Storage,
        store_name: String,
        check: Option<StorageCheck>,
        metrics: Metrics,
    ) -> Health {
        let health = Health::default();
        let Some(check) = check else {
            return health;
        };
        health.lock().threshold = check.threshold;
        let reported = health.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(check.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate; start-up already probed
            loop {
                ticker.tick().await;
                let result = storage.check_writable().await;
                if result.is_err() {
                    metrics.storage_error("health");
                }
                let result = match result {
                    // A full store still serves (uncached, while it evicts): every replica
                    // on one full bucket or disk leaving the load balancer would stop every
                    // pull. `/readyz` says since when it is full.
                    Err(e) if out_of_space(&e) => Ok(()),
                    other => other,
                };
                reported.record(
                    result.map_err(|e| format!("storage {store_name} does not take writes: {e}")),
                );
            }
        });
        health
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("health lock poisoned")
    }

    fn record(&self, result: Result<(), String>) {
        let mut state = self.lock();
        match result {
            Ok(()) => {
                if state.failures_in_a_row >= state.threshold {
                    tracing::info!("storage takes writes again; ready");
                }
                state.failures_in_a_row = 0;
                state.last_error = None;
            }
            Err(error) => {
                state.failures_in_a_row += 1;
                if state.failures_in_a_row == state.threshold {
                    tracing::error!(%error, failures = state.failures_in_a_row, "not ready: storage check failed (health.storagedriver)");
                } else {
                    tracing::warn!(%error, failures = state.failures_in_a_row, "storage check failed");
                }
                state.last_error = Some(error);
            }
        }
    }

    /// From now on readiness fails: the server is draining.
    pub fn shutting_down(&self) {
        self.lock().shutting_down = true;
    }

    /// Ok while ready; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.lock();
        if state.shutting_down {
            return Err("shutting down".to_owned());
        }
        if state.threshold > 0 && state.failures_in_a_row >= state.threshold {
            Err(state
                .last_error
                .clone()
                .unwrap_or_else(|| "storage check failed".to_owned()))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unready_after_threshold_failures_in_a_row_and_ready_after_one_success() {
        let health = Health::default();
        health.lock().threshold = 2;
        health.record(Err("disk gone".into()));
        assert!(health.readiness().is_ok());
        health.record(Ok(()));
        health.record(Err("disk gone".into()));
        assert!(health.readiness().is_ok(), "a success resets the count");
        health.record(Err("disk gone again".into()));
        assert_eq!(health.readiness(), Err("disk gone again".to_owned()));
        health.record(Ok(()));
        assert!(health.readiness().is_ok());
    }
}
