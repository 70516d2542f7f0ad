//! The monitoring files in `deploy/`: the Grafana dashboard and the Prometheus alert rules
//! parse, have the shape their tools expect, and every metric their queries name is one
//! that the real pool-manager (`/metrics`) or the real Envoy with the filter
//! (`/stats/prometheus`) exports.

use std::collections::BTreeSet;

use mm_tests::paths::root;
use mm_tests::{Stack, StackOptions};
use serde_json::Value;

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/mm-gateway.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alerts() -> Value {
    let path = root().join("deploy/prometheus/alerts.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression in both files, with where it comes from.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard()["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?}", panel["title"]),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for group in alerts()["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            out.push((
                format!("alert {:?}", rule["alert"]),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// The metric names a PromQL expression reads: identifiers outside label matchers,
/// strings and `by (...)`/`without (...)` lists that look like metrics of ours or Envoy's.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut text = String::new();
    let mut depth = 0;
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            _ if quoted || depth > 0 => {}
            _ => text.push(c),
        }
    }
    // Tokens: identifiers and single punctuation characters.
    let mut tokens: Vec<String> = Vec::new();
    let mut ident = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            ident.push(c);
            continue;
        }
        if !ident.is_empty() {
            tokens.push(std::mem::take(&mut ident));
        }
        if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    tokens.extend((!ident.is_empty()).then_some(ident));
    let mut names = BTreeSet::new();
    let mut tokens = tokens.iter().peekable();
    while let Some(t) = tokens.next() {
        if (t == "by" || t == "without") && tokens.peek().is_some_and(|n| *n == "(") {
            // A label list, not metrics.
            for inner in tokens.by_ref() {
                if inner == ")" {
                    break;
                }
            }
        } else if t.starts_with("mm_") || t.starts_with("envoy_") || t == "up" {
            names.insert(t.clone());
        }
    }
    names
}

#[test]
fn the_dashboard_and_the_alerts_have_the_expected_shape() {
    let d = dashboard();
    assert_eq!(d["uid"], "mm-gateway");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {panel}"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        titles.push(panel["title"].as_str().unwrap().to_owned());
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(!expr.trim().is_empty(), "{panel}");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{expr}"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{panel}");
        }
    }
    for want in [
        "Route calls by outcome",
        "Cold request wait",
        "Load duration",
        "Loads, evictions and failures per minute",
        "Mass evictions",
        "Replica used and capacity by resource",
        "Requests per model (top 10)",
        "Requests to Triton replicas",
        "Gateway request latency",
        "Filter: table hits and route calls",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "no panel {want:?} in {titles:?}"
        );
    }

    let a = alerts();
    let mut names = BTreeSet::new();
    for group in a["groups"].as_array().unwrap() {
        assert!(group["name"].as_str().is_some_and(|n| !n.is_empty()));
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(names.insert(name.to_owned()), "duplicate alert {name}");
            let expr = rule["expr"].as_str().unwrap();
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{name}"
            );
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("warning" | "critical")
                ),
                "{name}"
            );
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
            assert!(rule["for"].as_str().is_some(), "{name}");
        }
    }
    for want in [
        "MMPoolManagerDown",
        "MMReplicaDown",
        "MMModelLoadFailures",
        "MMEvictionStorm",
        "MMMassEvictions",
        "MMColdRequestWaitP99High",
        "MMPlacementFailures",
    ] {
        assert!(names.contains(want), "no alert {want}: {names:?}");
    }
}

#[test]
fn metric_names_are_read_from_expressions() {
    assert_eq!(
        metric_names(
            r#"sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_total{envoy_cluster_name=~"t.*"}[5m])) / mm_x"#
        ),
        BTreeSet::from([
            "envoy_cluster_upstream_rq_total".to_owned(),
            "mm_x".to_owned()
        ])
    );
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(mm_a_bucket[10m]))) > 30"),
        BTreeSet::from(["mm_a_bucket".to_owned()])
    );
}

/// The sample names a Prometheus/OpenMetrics text can contain, from its `# TYPE` lines.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" | "summary" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {}
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let stack = Stack::start(StackOptions {
        replicas: 1,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let (status, _) = stack
        .register("linear", &mm_tests::paths::example_model("linear"), "32Mi")
        .await
        .unwrap();
    assert_eq!(status, 201);
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    for _ in 0..2 {
        let r = stack.infer("linear", &body).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let pool_manager = stack
        .http
        .get(stack.pool_manager.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let envoy = stack
        .http
        .get(format!(
            "http://127.0.0.1:{}/stats/prometheus",
            stack.envoy.admin_port
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut known = exported(&pool_manager);
    known.extend(exported(&envoy));
    known.insert("up".to_owned());
    assert!(known.contains("mm_model_loads_total"), "{pool_manager}");
    assert!(known.contains("mm_filter_table_hits"), "{envoy}");
    let mut unknown = Vec::new();
    for (place, expr) in expressions() {
        for name in metric_names(&expr) {
            if !known.contains(&name) {
                unknown.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics nobody exports:\n{}",
        unknown.join("\n")
    );
}
