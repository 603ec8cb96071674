//! The figures over time, kept in memory in two bounded rings: a point a minute for a day, and
//! a point an hour for 30 days (at most 2,160 points, a few hundred KiB). Not saved: after a
//! restart the plots start again (the Prometheus counters restart at zero too).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::figures::{self, Point};
use crate::cache::Cache;

pub const MINUTE_POINTS: usize = 24 * 60;
pub const HOUR_POINTS: usize = 30 * 24;
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Rings {
    minutes: VecDeque<Point>,
    hours: VecDeque<Point>,
}

/// The history, shared by the sampler and the page; cloning shares it.
#[derive(Clone)]
pub struct History {
    rings: Arc<Mutex<Rings>>,
    started: Instant,
}

/// What `/api/history` answers: the points, oldest first, and the figures now.
#[derive(Serialize)]
pub struct HistoryView {
    pub minutes: Vec<Point>,
    pub hours: Vec<Point>,
    pub now: Point,
}

impl Default for History {
    fn default() -> Self {
        History {
            rings: Arc::default(),
            started: Instant::now(),
        }
    }
}

fn push(ring: &mut VecDeque<Point>, point: Point, capacity: usize) {
    if ring.len() == capacity {
        ring.pop_front();
    }
    ring.push_back(point);
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl History {
    fn lock(&self) -> MutexGuard<'_, Rings> {
        // Queues of plain numbers: a panic elsewhere cannot leave them inconsistent.
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Takes a point: into the minute ring always, into the hour ring when the last hourly
    /// point is an hour old.
    pub fn record(&self, point: Point) {
        let mut rings = self.lock();
        let hourly = rings
            .hours
            .back()
            .is_none_or(|last| point.time >= last.time + 3600);
        if hourly {
            push(&mut rings.hours, point.clone(), HOUR_POINTS);
        }
        push(&mut rings.minutes, point, MINUTE_POINTS);
    }

    pub fn view(&self, now: Point) -> HistoryView {
        let rings = self.lock();
        HistoryView {
            minutes: rings.minutes.iter().cloned().collect(),
            hours: rings.hours.iter().cloned().collect(),
            now,
        }
    }

    /// Samples `cache`'s figures every minute, for as long as the runtime runs.
    pub fn spawn_sampler(&self, cache: Cache) {
        let history = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let readings = figures::read(&cache);
                let summary = figures::summary(&cache, &readings, history.uptime_seconds());
                history.record(Point::of(&summary, unix_now()));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(time: u64) -> Point {
        Point {
            time,
            requests: time,
            from_cache: 0,
            upstream_requests_avoided: 0,
            served_bytes_from_cache: 0,
            served_bytes_from_upstream: 0,
            upstream_requests: 0,
            upstream_errors: 0,
            used_bytes: 0,
            ratelimit_remaining: Default::default(),
        }
    }

    #[test]
    fn minutes_keep_a_day_and_hours_keep_a_month() {
        let history = History::default();
        let minutes = (MINUTE_POINTS + HOUR_POINTS * 60 + 10) as u64;
        for minute in 0..minutes {
            history.record(point(minute * 60));
        }
        let view = history.view(point(0));
        assert_eq!(view.minutes.len(), MINUTE_POINTS);
        assert_eq!(view.minutes.last().unwrap().time, (minutes - 1) * 60);
        assert_eq!(view.hours.len(), HOUR_POINTS);
        let hours: Vec<u64> = view.hours.iter().map(|p| p.time).collect();
        assert!(hours.windows(2).all(|w| w[1] - w[0] == 3600), "{hours:?}");
    }
}
