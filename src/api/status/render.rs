//! The page as the server sends it: the figures of the moment written into the HTML, so it
//! shows them before (and without) its script, which then keeps them current.

use super::figures::Summary;

/// The page template with `{{name}}` placeholders for the tiles' figures.
const TEMPLATE: &str = include_str!("assets/index.html");

/// The page with `summary`'s figures in place. Every value is a number and its unit, so
/// nothing needs escaping.
pub fn page(summary: &Summary) -> String {
    let answers = &summary.answers;
    let hit_ratio = answers
        .hit_ratio
        .map_or_else(|| "–".to_owned(), |r| format!("{:.1} %", r * 100.0));
    let values = [
        ("hit_ratio", hit_ratio),
        ("requests", answers.requests.to_string()),
        ("avoided", answers.upstream_requests_avoided.to_string()),
        ("bytes_cache", bytes(summary.served_bytes_from_cache)),
        ("bytes_upstream", bytes(summary.served_bytes_from_upstream)),
        ("storage_used", bytes(summary.storage.used_bytes)),
        (
            "evicted",
            format!("{} images", summary.storage.evicted_images),
        ),
        ("fills", summary.fills_in_flight.to_string()),
        (
            "prewarm",
            format!("{} checks", summary.prewarm.images_checked),
        ),
    ];
    values
        .iter()
        .fold(TEMPLATE.to_owned(), |page, (name, value)| {
            page.replace(&format!("{{{{{name}}}}}"), value)
        })
}

/// `n` bytes in binary units, as the script writes them (`1.75 KiB`, `812 B`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if value < 10.0 => format!("{value:.2} {}", UNITS[unit]),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_written_in_binary_units() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1792), "1.75 KiB");
        assert_eq!(bytes(13 * 1024 * 1024 + 512 * 1024), "13.5 MiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn every_placeholder_is_filled_with_its_figure() {
        use super::super::figures::{Answers, PrewarmFigures, StorageFigures};
        let summary = Summary {
            time: String::new(),
            uptime_seconds: 0,
            answers: Answers {
                requests: 8,
                hit_ratio: Some(0.5),
                ..Answers::default()
            },
            served_bytes_from_cache: 1792,
            served_bytes_from_upstream: 0,
            registries: Vec::new(),
            storage: StorageFigures {
                used_bytes: 0,
                budget_bytes: 0,
                pinned_bytes: 0,
                objects: 0,
                repositories: 0,
                evicted_images: 3,
                evicted_bytes: 0,
                full: false,
            },
            fills_in_flight: 0,
            prewarm: PrewarmFigures {
                runs: 1,
                images_checked: 4,
                images_moved: 1,
                images_fetched: 1,
                fetched_bytes: 10,
                errors: 0,
                last_run: 0,
            },
        };
        let page = page(&summary);
        assert!(page.contains(r#"id="prewarm">4 checks<"#));
        assert!(!page.contains("{{"), "a placeholder is left");
        assert!(page.contains(r#"id="hit-ratio">50.0 %<"#));
        assert!(page.contains(r#"id="requests">8<"#));
        assert!(page.contains(r#"id="bytes-cache">1.75 KiB<"#));
        assert!(page.contains(r#"id="evicted">3 images<"#));
    }
}
