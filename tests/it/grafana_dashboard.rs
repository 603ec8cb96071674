//! The Grafana dashboard shipped in `tests/grafana/cistern-dashboard.json` only asks for metrics
//! the binary exports: every metric name in every panel's PromQL is checked against what
//! `/metrics` renders after a pull through the fake upstream, so renaming a metric without the
//! dashboard fails here. It is importable as is: its datasource is the `DS_PROMETHEUS` input.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::*;

const DASHBOARD: &str = include_str!("../grafana/cistern-dashboard.json");

/// Every metric name the exposition declares or samples: a counter `x` is queried as
/// `x_total`, the name of its samples.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            });
        } else if !line.starts_with('#') {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The metric names one PromQL expression uses: cistern's names all start with `cistern_`.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        if word_char(bytes[i]) && (i == 0 || !word_char(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && word_char(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("cistern_") {
                found.push(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    found
}

/// (panel title, expression) for every query of every panel, rows' nested panels included.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    let mut queries = Vec::new();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((
                    panel["title"].as_str().unwrap_or("?").to_owned(),
                    expr.to_owned(),
                ));
            }
        }
    }
    queries
}

/// Metric names the dashboard's queries use that `exported` lacks, with their panel.
fn unknown_metrics(dashboard: &Value, exported: &BTreeSet<String>) -> Vec<String> {
    queries(dashboard)
        .into_iter()
        .flat_map(|(title, expr)| {
            metrics_in(&expr)
                .into_iter()
                .filter(|name| !exported.contains(name))
                .map(move |name| format!("{title}: {name}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_queries_metrics_the_binary_exports() {
    let up = FakeUpstream::start().await;
    add_alpine(&up);
    let mirror = MirrorSetup::new(&up.url).tag_ttl("0s").start().await;
    mirror.pull("library/alpine", "latest").await;
    mirror.pull("library/alpine", "latest").await;
    // A stale serve too: upstream down, the cached tag is served.
    up.set_down(true);
    let stale = mirror.get_manifest("library/alpine", "latest").await;
    assert_eq!(stale.status(), 200);
    let exported = exported_names(&mirror.metrics().await.0);
    assert!(
        exported.contains("cistern_cache_requests_total"),
        "{exported:?}"
    );

    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let queries = queries(&dashboard);
    assert!(queries.len() >= 10, "{queries:?}");
    for (title, expr) in &queries {
        assert!(
            !metrics_in(expr).is_empty(),
            "{title}: {expr} queries no cistern metric"
        );
    }
    assert_eq!(unknown_metrics(&dashboard, &exported), Vec::<String>::new());

    // The check catches a renamed metric.
    let renamed = DASHBOARD.replace("cistern_fills_in_flight", "cistern_fills_running");
    let renamed: Value = serde_json::from_str(&renamed).unwrap();
    let unknown = unknown_metrics(&renamed, &exported);
    assert!(
        unknown
            .iter()
            .any(|u| u.ends_with(": cistern_fills_running")),
        "{unknown:?}"
    );
}

#[test]
fn the_dashboard_imports_with_its_prometheus_datasource_as_an_input() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|panel| {
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}");
            }
            panel["title"].as_str().unwrap()
        })
        .collect();
    for wanted in [
        "Cache hit ratio",
        "Bytes served: cache vs upstream",
        "Upstream requests by registry and status",
        "Upstream pull quota remaining",
        "Fills in progress",
        "Storage used vs budget",
        "Evictions",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}: {titles:?}");
    }
}
