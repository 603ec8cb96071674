//! The status page's numbers, read from the Prometheus metrics (one source of truth: the page
//! and a graph of the same counter agree) and, for what the metrics do not hold, from the
//! store's index.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cache::Cache;
use crate::telemetry::Readings;

const CACHE_REQUESTS: &str = "cistern_cache_requests_total";
const SERVED_BYTES: &str = "cistern_served_bytes_total";
const UPSTREAM_REQUESTS: &str = "cistern_upstream_requests_total";
const UPSTREAM_FETCHED: &str = "cistern_upstream_fetched_bytes_total";
const STALE_SERVES: &str = "cistern_stale_serves_total";

/// Outcomes answered from storage: a hit, a tag revalidated with a HEAD, a stale serve.
const FROM_CACHE: [&str; 3] = ["hit", "revalidated", "stale"];

/// Upstream statuses counted as errors: no answer, throttled, or a server error.
fn is_upstream_error(status: &str) -> bool {
    status == "error" || status == "429" || status.starts_with('5')
}

/// How the cache answered manifest and blob requests.
#[derive(Serialize, Clone, Copy, Default)]
pub struct Answers {
    pub requests: u64,
    /// Answered from storage (`hit`, `revalidated`, `stale`).
    pub from_cache: u64,
    /// Requests that needed no upstream GET of their own: all but `miss` (a `joined` client
    /// shares another's fetch).
    pub upstream_requests_avoided: u64,
    pub hit: u64,
    pub miss: u64,
    pub joined: u64,
    pub revalidated: u64,
    pub stale: u64,
    /// `from_cache / requests`; None before any request.
    pub hit_ratio: Option<f64>,
}

impl Answers {
    fn read(readings: &Readings, labels: &[(&str, &str)]) -> Answers {
        let outcome = |o: &str| {
            let mut with = labels.to_vec();
            with.push(("outcome", o));
            readings.sum(CACHE_REQUESTS, &with) as u64
        };
        let requests = readings.sum(CACHE_REQUESTS, labels) as u64;
        let from_cache = FROM_CACHE.iter().map(|o| outcome(o)).sum::<u64>();
        let miss = outcome("miss");
        Answers {
            requests,
            from_cache,
            upstream_requests_avoided: requests - miss.min(requests),
            hit: outcome("hit"),
            miss,
            joined: outcome("joined"),
            revalidated: outcome("revalidated"),
            stale: outcome("stale"),
            hit_ratio: (requests > 0).then(|| from_cache as f64 / requests as f64),
        }
    }
}

/// One registry's figures.
#[derive(Serialize)]
pub struct RegistryFigures {
    pub registry: String,
    pub answers: Answers,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    pub upstream_fetched_bytes: u64,
    pub stale_serves: u64,
    /// `ratelimit-limit` and `ratelimit-remaining` as last reported; None before any report.
    pub ratelimit_limit: Option<u64>,
    pub ratelimit_remaining: Option<u64>,
}

/// Storage against its budget.
#[derive(Serialize)]
pub struct StorageFigures {
    pub used_bytes: u64,
    /// `cache.maxsize` in bytes; 0 without a budget.
    pub budget_bytes: u64,
    pub pinned_bytes: u64,
    pub objects: u64,
    pub repositories: u64,
    pub evicted_images: u64,
    pub evicted_bytes: u64,
    /// Storage refuses writes for lack of space.
    pub full: bool,
}

/// Pre-warming (`cache.prewarm` and warm-now requests), as the metrics count it.
#[derive(Serialize)]
pub struct PrewarmFigures {
    pub runs: u64,
    pub images_checked: u64,
    pub images_moved: u64,
    pub images_fetched: u64,
    pub fetched_bytes: u64,
    pub errors: u64,
    /// When a run last ended (Unix seconds); 0 never.
    pub last_run: u64,
}

/// Everything `/api/summary` answers.
#[derive(Serialize)]
pub struct Summary {
    pub time: String,
    pub uptime_seconds: u64,
    pub answers: Answers,
    pub served_bytes_from_cache: u64,
    pub served_bytes_from_upstream: u64,
    pub registries: Vec<RegistryFigures>,
    pub storage: StorageFigures,
    pub fills_in_flight: u64,
    pub prewarm: PrewarmFigures,
}

/// Every metric, read back after the gauges computed on demand were set, as a scrape does.
pub fn read(cache: &Cache) -> Readings {
    super::super::ops::refresh_gauges(cache);
    Readings::parse(&cache.metrics().render())
}

pub fn summary(cache: &Cache, readings: &Readings, uptime_seconds: u64) -> Summary {
    let value = |name: &str, labels: &[(&str, &str)]| readings.sum(name, labels) as u64;
    let gauge = |name: &str, labels: &[(&str, &str)]| {
        readings
            .get(name, labels)
            .filter(|v| *v >= 0.0)
            .map(|v| v as u64)
    };
    let registries = cache
        .upstream_quotas()
        .into_iter()
        .map(|(id, _)| {
            let registry = id.name();
            let by = [("registry", registry)];
            RegistryFigures {
                registry: registry.to_owned(),
                answers: Answers::read(readings, &by),
                upstream_requests: value(UPSTREAM_REQUESTS, &by),
                upstream_errors: readings.sum_where(
                    UPSTREAM_REQUESTS,
                    &by,
                    "status",
                    is_upstream_error,
                ) as u64,
                upstream_fetched_bytes: value(UPSTREAM_FETCHED, &by),
                stale_serves: value(STALE_SERVES, &by),
                ratelimit_limit: gauge("cistern_upstream_ratelimit_limit", &by),
                ratelimit_remaining: gauge("cistern_upstream_ratelimit_remaining", &by),
            }
        })
        .collect();
    let totals = cache.storage_handle().index().totals();
    Summary {
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        uptime_seconds,
        answers: Answers::read(readings, &[]),
        served_bytes_from_cache: value(SERVED_BYTES, &[("source", "cache")]),
        served_bytes_from_upstream: value(SERVED_BYTES, &[("source", "upstream")]),
        registries,
        storage: StorageFigures {
            used_bytes: value("cistern_cache_bytes", &[]),
            budget_bytes: value("cistern_cache_budget_bytes", &[]),
            pinned_bytes: value("cistern_cache_pinned_bytes", &[]),
            objects: totals.content_objects as u64,
            repositories: totals.repositories as u64,
            evicted_images: value("cistern_evicted_images_total", &[]),
            evicted_bytes: value("cistern_evicted_bytes_total", &[]),
            full: value("cistern_storage_full", &[]) == 1,
        },
        fills_in_flight: value("cistern_fills_in_flight", &[]),
        prewarm: PrewarmFigures {
            runs: value("cistern_prewarm_runs_total", &[]),
            images_checked: value("cistern_prewarm_images_checked_total", &[]),
            images_moved: value("cistern_prewarm_images_moved_total", &[]),
            images_fetched: value("cistern_prewarm_images_fetched_total", &[]),
            fetched_bytes: value("cistern_prewarm_fetched_bytes_total", &[]),
            errors: value("cistern_prewarm_errors_total", &[]),
            last_run: value("cistern_prewarm_last_run_timestamp_seconds", &[]),
        },
    }
}

/// One point of history: the counters as they stood at `time` (cumulative, so a plot takes
/// differences between points), and the gauges.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Point {
    /// Unix seconds.
    pub time: u64,
    pub requests: u64,
    pub from_cache: u64,
    pub upstream_requests_avoided: u64,
    pub served_bytes_from_cache: u64,
    pub served_bytes_from_upstream: u64,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    pub used_bytes: u64,
    /// Each registry's `ratelimit-remaining`, where one was reported.
    pub ratelimit_remaining: BTreeMap<String, u64>,
}

impl Point {
    pub fn of(summary: &Summary, time: u64) -> Point {
        Point {
            time,
            requests: summary.answers.requests,
            from_cache: summary.answers.from_cache,
            upstream_requests_avoided: summary.answers.upstream_requests_avoided,
            served_bytes_from_cache: summary.served_bytes_from_cache,
            served_bytes_from_upstream: summary.served_bytes_from_upstream,
            upstream_requests: summary.registries.iter().map(|r| r.upstream_requests).sum(),
            upstream_errors: summary.registries.iter().map(|r| r.upstream_errors).sum(),
            used_bytes: summary.storage.used_bytes,
            ratelimit_remaining: summary
                .registries
                .iter()
                .filter_map(|r| Some((r.registry.clone(), r.ratelimit_remaining?)))
                .collect(),
        }
    }
}
