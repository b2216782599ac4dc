//! The Grafana dashboard (`docs/grafana/mdcache.json`) queries only metrics mdcache exports (`mdcache::metrics::METRICS`, what the exporter's output is checked against in `tests/metrics.rs`) and documents (`docs/metrics.md`), and covers the panels an operator needs.

use std::collections::BTreeSet;

use serde_json::Value;

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {full}: {e}"))
}

/// Every `mdcache_*` name in a PromQL expression, with the summary/histogram series
/// suffixes taken off.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("mdcache_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| !b.ends_with("_total"))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exported_and_documented() {
    let dashboard: Value = serde_json::from_str(&read("docs/grafana/mdcache.json"))
        .expect("the dashboard is valid JSON");
    let docs = read("docs/metrics.md");
    let mut queried = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} queries no mdcache metric");
            queried.extend(names);
        }
    }
    for name in &queried {
        assert!(
            mdcache::metrics::METRICS.iter().any(|(n, _)| n == name),
            "the dashboard queries {name}, which mdcache does not export"
        );
        assert!(
            docs.contains(&format!("`{name}`")),
            "the dashboard queries {name}, which docs/metrics.md does not list"
        );
    }
    // What issue 14 asks the dashboard to show.
    for needed in [
        "mdcache_hits_total",
        "mdcache_l2_read_seconds",
        "mdcache_breaker_state",
        "mdcache_fallbacks_total",
        "mdcache_writer_lag_seconds",
        "mdcache_backplane_canary_lag_seconds",
    ] {
        assert!(queried.contains(needed), "no panel shows {needed}");
    }
    // Breaker state per shard: grouped by the shard label.
    let text = read("docs/grafana/mdcache.json");
    assert!(text.contains("max by (shard) (mdcache_breaker_state)"));
}

#[test]
fn the_docs_list_exactly_the_exported_metrics() {
    let docs = read("docs/metrics.md");
    let listed: BTreeSet<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("mdcache_"))
        .collect();
    let exported: BTreeSet<&str> = mdcache::metrics::METRICS.iter().map(|(n, _)| *n).collect();
    assert_eq!(listed, exported);
}

#[test]
fn names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            r#"max by (kind) (mdcache_l2_read_seconds{quantile="0.5"}) / rate(mdcache_hits_total[1m])"#
        ),
        ["mdcache_l2_read_seconds", "mdcache_hits_total"]
    );
    assert_eq!(
        metric_names("mdcache_x_seconds_count"),
        ["mdcache_x_seconds"]
    );
}
