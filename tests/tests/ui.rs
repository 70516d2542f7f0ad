//! The status page (`/ui`) in real headless Chromium against a running stack: after loads,
//! an eviction, a failed load and a cold registration, the rendered page shows every
//! replica with the models the admin API places on it, the failure's reason and the
//! events; a screenshot of it is kept in the test's directory (and printed path).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::example;
use mm_tests::models::broken;
use mm_tests::paths::{self, example_model};
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::Value;

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`);
/// returns its standard output.
async fn chromium(url: &str, profile: &Path, mode: &[String]) -> String {
    let mut cmd = tokio::process::Command::new(paths::chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(mode)
    .arg(url)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium finished within 120 s")
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e} (scripts/install-deps.sh installs it)",
                paths::chromium().display()
            )
        });
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn infer(stack: &Stack, name: &str, example_name: &str) -> u16 {
    let (body, _, _) = example(example_name);
    stack.infer(name, &body).await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_each_replica_with_its_models() {
    // Two replicas of 256Mi (high watermark 204.8Mi, low 192Mi) and no churn guard: once
    // both hold a model, a 180Mi model evicts whatever shares its replica.
    let stack = Stack::start(StackOptions {
        replicas: 2,
        replica_memory: "256Mi".into(),
        pool_manager_args: [
            "--min-age",
            "0s",
            "--low-watermark",
            "0.75",
            "--log-format",
            "json",
        ]
        .map(String::from)
        .to_vec(),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let broken_dir = broken(stack.dir.path()).unwrap();
    for (name, dir, memory) in [
        ("linear", example_model("linear"), "32Mi"),
        ("xor_mlp", example_model("xor_mlp"), "64Mi"),
        ("anomaly", example_model("anomaly"), "48Mi"),
        ("fraud-eu", example_model("linear"), "180Mi"),
        ("churn-us", example_model("anomaly"), "40Mi"),
        ("broken", broken_dir, "16Mi"),
    ] {
        let (status, body) = stack.register(name, &dir, memory).await.unwrap();
        assert_eq!(status, 201, "{name}: {body}");
    }
    for (name, example_name) in [
        ("linear", "linear"),
        ("xor_mlp", "xor_mlp"),
        ("anomaly", "anomaly"),
        ("fraud-eu", "linear"),
        // Whichever was evicted loads again on the other replica.
        ("linear", "linear"),
        ("xor_mlp", "xor_mlp"),
        ("anomaly", "anomaly"),
    ] {
        assert_eq!(infer(&stack, name, example_name).await, 200, "{name}");
    }
    assert_eq!(infer(&stack, "broken", "linear").await, 503);
    // Some warm traffic, for the hit rate and the request rates.
    for _ in 0..10 {
        for (name, example_name) in [
            ("linear", "linear"),
            ("fraud-eu", "linear"),
            ("anomaly", "anomaly"),
            ("xor_mlp", "xor_mlp"),
        ] {
            assert_eq!(infer(&stack, name, example_name).await, 200, "{name}");
        }
    }
    let evictions = stack
        .pool_manager
        .metric("mm_model_evictions_total")
        .await
        .unwrap();
    assert!(
        evictions >= 1.0,
        "fraud-eu should have evicted: {evictions}"
    );

    // The JSON log has one line per placement, load, failure and eviction, with the model,
    // the replica, the sizes and the reason.
    let log = std::fs::read_to_string(stack.dir.path().join("pool-manager.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (message, reason_field) in [
        ("placing model", "purpose"),
        ("model loaded", "purpose"),
        ("model load failed", "error"),
        ("model evicted", "reason"),
    ] {
        let line = lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in the JSON log:\n{log}"));
        let f = &line["fields"];
        for field in ["model", "replica", "memory", "gpu_memory", reason_field] {
            assert!(!f[field].is_null(), "{message:?} without {field}: {line}");
        }
    }

    let (_, replicas) = stack
        .admin_call(Method::GET, "/api/v1/replicas", None)
        .await
        .unwrap();
    let replicas: Vec<Value> = replicas["replicas"].as_array().unwrap().clone();
    assert_eq!(replicas.len(), 2);

    let url = stack.pool_manager.url("/ui");
    let profile = stack.dir.path().join("chromium-profile");
    let dom = chromium(&url, &profile, &["--dump-dom".to_owned()]).await;
    assert!(
        dom.contains("id=\"replicas\""),
        "not the status page:\n{dom}"
    );
    let mut placed = 0;
    for r in &replicas {
        let name = r["name"].as_str().unwrap();
        assert!(
            dom.contains(&format!("data-replica=\"{name}\"")),
            "replica {name} missing:\n{dom}"
        );
        for model in r["models"].as_array().unwrap() {
            let model = model.as_str().unwrap();
            assert!(
                dom.contains(&format!("data-placement=\"{name}/{model}\"")),
                "{model} missing under {name}:\n{dom}"
            );
            placed += 1;
        }
    }
    assert_eq!(
        placed, 4,
        "linear, anomaly, xor_mlp and fraud-eu are loaded: {replicas:?}"
    );
    // The models table: states, the failure's reason, the cold model; and the events.
    for needle in [
        "data-model=\"broken\" data-state=\"Failed\"",
        "weights.json is missing",
        "data-model=\"churn-us\" data-state=\"Pending\"",
        "kind-evicted",
        "kind-load_failed",
        "data-state=\"live\"",
    ] {
        assert!(dom.contains(needle), "{needle:?} missing:\n{dom}");
    }

    // A screenshot for people (README: docs/status-page.png).
    let shot = stack.dir.path().join("status-page.png");
    chromium(
        &url,
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000".to_owned(),
        ],
    )
    .await;
    let png = eventually("the screenshot", Duration::from_secs(10), || async {
        Ok(std::fs::read(&shot).ok().filter(|b| b.len() > 1000))
    })
    .await
    .unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // Keep a copy outside the stack's directory (removed when the test ends).
    let keep = std::env::temp_dir().join("mm-status-page.png");
    std::fs::write(&keep, &png).unwrap();
    eprintln!("status page screenshot: {}", keep.display());
}
