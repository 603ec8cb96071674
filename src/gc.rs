//! `cistern gc`: eviction on demand, from the command line, with the same configuration as
//! the mirror. It reads the store's index and every replica's published access times, plans
//! as the running evictor would, prints each image it evicts and why, and (without
//! `--dry-run`) deletes them. A running mirror beside it is safe: it finds evicted content
//! missing and fetches it again.

use std::fmt::Write as _;

use crate::cache::eviction::plan::Plan;
use crate::cache::{Cache, CacheError};
use crate::config::Config;
use crate::storage::{Storage, StorageError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Start(#[from] crate::StartError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(
        "no size to evict down to: set cache.maxsize or cache.minfree in the configuration, or pass --target SIZE"
    )]
    NoTarget,
}

/// Plans (and unless `dry_run`, carries out) an eviction down to `target` bytes, or to
/// `cache.maxsize`'s low watermark; returns the report.
pub async fn gc(config: &Config, dry_run: bool, target: Option<u64>) -> Result<String, GcError> {
    let storage = Storage::open(&config.storage).await?;
    storage.rebuild_index().await?;
    let target = gc_target(config, &storage, target)?;
    let metrics = Metrics::new();
    let cache = Cache::new(
        storage.clone(),
        crate::cached_registries(config, &storage, &metrics)?,
        metrics,
    );
    cache.load_access_times(None).await?;
    let (plan, pinned) = cache.plan_eviction(target, &config.cache).await?;
    let mut report = describe(&storage, &plan, target, pinned, dry_run);
    if !dry_run {
        let freed = cache.evict(&plan).await?;
        let _ = writeln!(
            report,
            "evicted: {} freed, {} left",
            size(freed),
            size(storage.index().totals().content_bytes)
        );
    }
    Ok(report)
}

/// `--target`, else `cache.maxsize`'s low watermark; below `cache.minfree`, whatever brings
/// the disk back above it if that is lower.
fn gc_target(config: &Config, storage: &Storage, target: Option<u64>) -> Result<u64, GcError> {
    let asked = target.or(config.cache.budget.map(|b| b.low_bytes));
    let Some(min_free) = config.cache.min_free else {
        return asked.ok_or(GcError::NoTarget);
    };
    storage.keep_free(min_free);
    let stored = storage.index().totals().content_bytes;
    let for_floor = match storage.free_floor().bytes_to_free() {
        Some(to_free) => stored.saturating_sub(to_free),
        None => stored,
    };
    Ok(asked.map_or(for_floor, |asked| asked.min(for_floor)))
}

fn describe(storage: &Storage, plan: &Plan, target: u64, pinned: u64, dry_run: bool) -> String {
    let totals = storage.index().totals();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cache: {} in {} objects, {} repositories; target {}; pinned images keep {}",
        size(totals.content_bytes),
        totals.content_objects,
        totals.repositories,
        size(target),
        size(pinned)
    );
    if plan.content.is_empty() && plan.tags.is_empty() {
        let _ = writeln!(out, "nothing to evict");
        return out;
    }
    let verb = if dry_run { "would evict" } else { "evicting" };
    let _ = writeln!(
        out,
        "{verb} {} images and {} objects ({} referenced by no image), {} -> {}:",
        plan.images.len(),
        plan.content.len(),
        plan.orphans,
        size(plan.bytes_before),
        size(plan.bytes_after)
    );
    let now_ms = crate::cache::now_ms();
    for image in &plan.images {
        let name = match &image.tag {
            Some(tag) => format!("{}:{tag}", image.repository),
            None => format!("{}@{}", image.repository, image.digest),
        };
        let when = if image.last_pulled_ms == 0 {
            "never pulled since it was stored".to_owned()
        } else {
            format!(
                "last pulled {} ago",
                humantime::format_duration(std::time::Duration::from_secs(
                    now_ms.saturating_sub(image.last_pulled_ms) / 1000
                ))
            )
        };
        let _ = writeln!(out, "  {name}  ({when}; least recently pulled first)");
    }
    if plan.orphans > 0 {
        let _ = writeln!(
            out,
            "  {} objects no cached image references (removed first)",
            plan.orphans
        );
    }
    out
}

/// Bytes for people: `1.5 GiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
