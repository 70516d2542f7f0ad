//! The eviction policy through the real gateway and Triton (issue 18): a model that is used
//! often and slow to load survives a burst of one-off requests for cheap models under
//! `--eviction gdsf`, and is the first victim of the same burst under `--eviction lru`.
//! The same holds with the tuning recommended for slow loads (`--gdsf-aging decay
//! --gdsf-half-life 8000`). Asserted from the pool-manager's events (which carry the policy
//! and each victim's priority), its info metric and the replica's own index.

mod common;

use std::time::Duration;

use common::{example, wait_reported};
use mm_tests::models::{sleep_request, slow_to_load};
use mm_tests::paths::example_model;
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;

/// One replica with room for exactly two 100Mi models and no minimum age, so the victim
/// order alone decides. `eviction`: the eviction flags.
fn room_for_two(eviction: &[&str]) -> StackOptions {
    let marks = [
        "--high-watermark",
        "1.0",
        "--low-watermark",
        "1.0",
        "--min-age",
        "0s",
    ];
    StackOptions {
        replicas: 1,
        replica_memory: "200Mi".into(),
        pool_manager_args: marks
            .iter()
            .chain(eviction)
            .map(|a| a.to_string())
            .collect(),
        ..StackOptions::default()
    }
}

/// An eviction as the admin API's events show it.
#[derive(Debug)]
struct Eviction {
    model: String,
    policy: String,
    priority: f64,
}

/// Five requests for "hot" (0.8 s to load), then one request each for three cheap models,
/// each reported by the gateway before the next, on a pool started with the `eviction`
/// flags whose info metric must carry `labels`. Returns the evictions in order and the
/// models the replica holds at the end.
async fn hot_then_one_offs(eviction: &[&str], labels: &str) -> (Vec<Eviction>, Vec<String>) {
    let stack = Stack::start(room_for_two(eviction)).await.unwrap();
    let hot = slow_to_load(stack.dir.path(), "hot", Duration::from_millis(800)).unwrap();
    let (status, body) = stack.register("hot", &hot, "100Mi").await.unwrap();
    assert_eq!(status, 201, "{body}");
    for name in ["c0", "c1", "c2"] {
        let (status, body) = stack
            .register(name, &example_model("linear"), "100Mi")
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    // The info metric names the order in force, with GDSF's tuning and only under GDSF.
    let text = stack.pool_manager.metrics_text().await.unwrap();
    let info = format!("mm_eviction_policy{{{labels}}} 1");
    assert!(text.lines().any(|l| l == info), "no {info:?} in\n{text}");

    for _ in 0..5 {
        let r = stack.infer("hot", &sleep_request(0.0)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    wait_reported(&stack, "hot", 5.0).await;
    let (body, _, _) = example("linear");
    for name in ["c0", "c1", "c2"] {
        let r = stack.infer(name, &body).await.unwrap();
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        wait_reported(&stack, name, 1.0).await;
    }

    let (status, events) = stack
        .admin_call(Method::GET, "/api/v1/events?limit=1000", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let evictions: Vec<Eviction> = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "evicted")
        .map(|e| Eviction {
            model: e["model"].as_str().unwrap_or_default().to_owned(),
            policy: e["policy"].as_str().unwrap_or_default().to_owned(),
            priority: e["priority"].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    // Triton finishes an unload shortly after answering it: wait (bounded) for its index
    // to show two models.
    let ready = eventually("two models READY", Duration::from_secs(5), || async {
        let ready = stack.ready_models("r0").await?;
        Ok((ready.len() == 2).then_some(ready))
    })
    .await
    .unwrap();
    (evictions, ready)
}

/// The scenario's outcome: these victims, in this order, all chosen by `policy`, and these
/// models left READY.
fn assert_evicted(
    evictions: &[Eviction],
    ready: &[String],
    policy: &str,
    victims: [&str; 2],
    left: [&str; 2],
) {
    let chosen: Vec<&str> = evictions.iter().map(|e| e.model.as_str()).collect();
    assert_eq!(chosen, victims, "{evictions:?}");
    assert_eq!(ready, left);
    assert!(
        evictions.iter().all(|e| e.policy == policy),
        "{evictions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdsf_keeps_a_frequent_slow_model_through_one_offs() {
    let (evictions, ready) = hot_then_one_offs(
        &["--eviction", "gdsf"],
        r#"policy="gdsf",aging="inflation",half_life="30000""#,
    )
    .await;
    assert_evicted(&evictions, &ready, "gdsf", ["c0", "c1"], ["c2", "hot"]);
    // GreedyDual's inflation: each victim's priority is at least the previous one's.
    assert!(
        evictions[0].priority > 0.0 && evictions[1].priority >= evictions[0].priority,
        "{evictions:?}"
    );
}

/// The configuration docs/eviction.md (round 5) recommends for slow loads, set by the
/// binary's flags: counts decaying every 8,000 requests and no inflation. The one-off
/// models are larger than a quarter of the replica, so each enters on probation (the
/// lowest priority there is) and goes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdsf_with_decay_keeps_a_frequent_slow_model_through_one_offs() {
    let (evictions, ready) = hot_then_one_offs(
        &[
            "--eviction",
            "gdsf",
            "--gdsf-aging",
            "decay",
            "--gdsf-half-life",
            "8000",
        ],
        r#"policy="gdsf",aging="decay",half_life="8000""#,
    )
    .await;
    assert_evicted(&evictions, &ready, "gdsf", ["c0", "c1"], ["c2", "hot"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_evicts_the_frequent_slow_model_for_one_offs() {
    // GDSF tuning under LRU is accepted (and logged as having no effect).
    let (evictions, ready) = hot_then_one_offs(
        &["--eviction", "lru", "--gdsf-aging", "decay"],
        r#"policy="lru""#,
    )
    .await;
    assert_evicted(&evictions, &ready, "lru", ["hot", "c0"], ["c1", "c2"]);
    assert!(
        evictions.iter().all(|e| e.priority.is_finite()),
        "{evictions:?}"
    );
}
