//! Capacity management through the real gateway: lazy loads are single-flight, a replica
//! with room for two models serves four by evicting the least recently used, a model with
//! requests in flight is never unloaded under them (the gateway's usage reports say so) and
//! a load that needs its room waits for them, and a pinned model is loaded without a
//! request and never evicted.

mod common;

use std::time::Duration;

use common::{assert_close, example, wait_reported};
use mm_tests::models::{sleep_request, sleepy};
use mm_tests::paths::example_model;
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;

/// One replica with room for exactly two 100Mi models, no churn guard: eviction order is
/// then LRU alone.
fn room_for_two() -> StackOptions {
    StackOptions {
        replicas: 1,
        replica_memory: "200Mi".into(),
        pool_manager_args: [
            "--high-watermark",
            "1.0",
            "--low-watermark",
            "1.0",
            "--min-age",
            "0s",
        ]
        .map(String::from)
        .to_vec(),
        ..StackOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_requests_cause_one_load() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let (status, _) = stack
        .register("linear", &example_model("linear"), "32Mi")
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (body, output, want) = example("linear");
    let requests = (0..50).map(|_| stack.infer("linear", &body));
    let responses = futures_join(requests).await;
    for r in &responses {
        let r = r.as_ref().unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        assert_close(&r.output(output).unwrap(), &want, "concurrent cold request");
    }
    assert_eq!(
        stack
            .pool_manager
            .metric("mm_model_loads_total")
            .await
            .unwrap(),
        1.0
    );
    // Every one of the 50 route calls waited for that one load (a miss), none was a hit.
    let pm = &stack.pool_manager;
    assert_eq!(
        pm.metric_where("mm_route_requests_total", "outcome=\"miss\"")
            .await
            .unwrap(),
        50.0
    );
    assert_eq!(
        pm.metric_where("mm_route_requests_total", "outcome=\"hit\"")
            .await
            .unwrap(),
        0.0
    );
    let placed = responses[0].as_ref().unwrap().replica.clone().unwrap();
    assert_eq!(
        stack
            .replica(&placed)
            .unwrap()
            .inference_count("linear")
            .await
            .unwrap(),
        50
    );
}

/// Joins futures without an extra dependency: spawns nothing, polls them all together.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_models_cycle_through_room_for_two_evicting_lru_first() {
    let stack = Stack::start(room_for_two()).await.unwrap();
    let names = ["m0", "m1", "m2", "m3"];
    for name in names {
        let (status, body) = stack
            .register(name, &example_model("linear"), "100Mi")
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let (body, output, want) = example("linear");
    // Two rounds in order: every request after the first two evicts the least recently
    // used model, which is always the one requested two steps before.
    let order = names.iter().chain(names.iter());
    let mut sent = std::collections::HashMap::<&str, f64>::new();
    for (step, name) in order.enumerate() {
        let r = stack.infer(name, &body).await.unwrap();
        assert_eq!(r.status, 200, "step {step} {name}: {}", r.text);
        assert_close(&r.output(output).unwrap(), &want, name);
        *sent.entry(name).or_default() += 1.0;
        wait_reported(&stack, name, sent[name]).await;
        let want_ready: Vec<String> = if step == 0 {
            vec![name.to_string()]
        } else {
            let prev = names[(step + 3) % 4];
            let mut v = vec![prev.to_string(), name.to_string()];
            v.sort();
            v
        };
        // Triton finishes an unload shortly after answering it: wait (bounded) for its
        // own index to show exactly the two expected models.
        let stack = &stack;
        let want = &want_ready;
        eventually(
            &format!("step {step}: READY on the replica is {want:?}"),
            Duration::from_secs(5),
            || async move { Ok((stack.ready_models("r0").await? == *want).then_some(())) },
        )
        .await
        .unwrap();
    }
    let evictions = stack
        .pool_manager
        .metric("mm_model_evictions_total")
        .await
        .unwrap();
    assert_eq!(evictions, 6.0);
    let (_, replicas) = stack
        .admin_call(Method::GET, "/api/v1/replicas", None)
        .await
        .unwrap();
    assert_eq!(replicas["replicas"][0]["usedBytes"], 200 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_waits_for_requests_in_flight_and_never_unloads_under_them() {
    let stack = Stack::start(room_for_two()).await.unwrap();
    for name in ["slow_a", "slow_b"] {
        let dir = sleepy(stack.dir.path(), name).unwrap();
        let (status, _) = stack.register(name, &dir, "100Mi").await.unwrap();
        assert_eq!(status, 201);
    }
    let (status, _) = stack
        .register("linear", &example_model("linear"), "100Mi")
        .await
        .unwrap();
    assert_eq!(status, 201);

    // Two long requests hold both slots. With no minimum age, only the in-flight counts
    // that the filter reports keep them from being evicted.
    let six_seconds = sleep_request(6.0);
    let long_a = stack.infer("slow_a", &six_seconds);
    let long_b = stack.infer("slow_b", &six_seconds);
    let waiting = async {
        eventually(
            "both slow models reported in flight",
            Duration::from_secs(5),
            || async {
                let (_, a) = stack
                    .admin_call(Method::GET, "/api/v1/models/slow_a", None)
                    .await?;
                let (_, b) = stack
                    .admin_call(Method::GET, "/api/v1/models/slow_b", None)
                    .await?;
                Ok((a["inFlight"] == 1 && b["inFlight"] == 1).then_some(()))
            },
        )
        .await
        .unwrap();
        let soon_before = stack
            .envoy
            .stat("wasmcustom.mm_filter_usage_reports_soon")
            .await
            .unwrap();
        // Only requests in flight block the load: the request waits for them (within the
        // route wait) instead of failing.
        let (body, _, _) = example("linear");
        (stack.infer("linear", &body).await.unwrap(), soon_before)
    };
    let during = async {
        // While it waits, the pool-manager asks the gateway to watch the model it needs.
        eventually("a slow model watched", Duration::from_secs(5), || async {
            let (_, table) = stack
                .internal_call(Method::GET, "/internal/v1/table", None)
                .await?;
            let watched = table["models"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["watch"] == true);
            Ok(watched.then_some(()))
        })
        .await
        .unwrap();
        stack.ready_models("r0").await.unwrap()
    };
    let (a, b, (served, soon_before), ready_during) = tokio::join!(long_a, long_b, waiting, during);
    assert_eq!(
        ready_during,
        vec!["slow_a", "slow_b"],
        "nothing was unloaded under its requests"
    );
    for r in [a.unwrap(), b.unwrap()] {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_close(&r.output("slept").unwrap(), &[6.0], "slow request");
    }
    assert_eq!(served.status, 200, "{}", served.text);
    let (_, output, want) = example("linear");
    assert_close(&served.output(output).unwrap(), &want, "linear");
    assert_eq!(
        stack
            .pool_manager
            .metric("mm_model_evictions_total")
            .await
            .unwrap(),
        1.0
    );
    // The end of the watched model's last request was reported at once, not at the next
    // once-a-second report.
    let soon = stack
        .envoy
        .stat("wasmcustom.mm_filter_usage_reports_soon")
        .await
        .unwrap();
    assert!(
        soon > soon_before,
        "no early usage report: {soon} after {soon_before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_model_is_loaded_at_once_and_never_evicted() {
    let stack = Stack::start(room_for_two()).await.unwrap();
    let spec = serde_json::json!({
        "storageUri": format!("file://{}", example_model("xor_mlp").display()),
        "memory": "100Mi",
        "minCopies": 1,
    });
    let (status, body) = stack
        .admin_call(
            Method::PUT,
            "/api/v1/models/always_on",
            Some(spec.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    eventually(
        "the pinned model loaded without a request",
        Duration::from_secs(20),
        || async {
            Ok(stack
                .ready_models("r0")
                .await?
                .contains(&"always_on".to_string())
                .then_some(()))
        },
    )
    .await
    .unwrap();
    for name in ["a", "b", "c"] {
        let (status, _) = stack
            .register(name, &example_model("linear"), "100Mi")
            .await
            .unwrap();
        assert_eq!(status, 201);
    }
    let (body, output, want) = example("linear");
    let mut sent = std::collections::HashMap::<&str, f64>::new();
    for name in ["a", "b", "c", "a", "b", "c"] {
        let r = stack.infer(name, &body).await.unwrap();
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        assert_close(&r.output(output).unwrap(), &want, name);
        *sent.entry(name).or_default() += 1.0;
        wait_reported(&stack, name, sent[name]).await;
        let ready = stack.ready_models("r0").await.unwrap();
        assert!(
            ready.contains(&"always_on".to_string()),
            "pinned model evicted: {ready:?}"
        );
        let stack_ref = &stack;
        eventually("two models READY", Duration::from_secs(5), || async move {
            Ok((stack_ref.ready_models("r0").await?.len() == 2).then_some(()))
        })
        .await
        .unwrap();
    }
    assert_eq!(
        stack
            .pool_manager
            .metric("mm_model_evictions_total")
            .await
            .unwrap(),
        5.0
    );
    let (xor_body, xor_out, xor_want) = example("xor_mlp");
    let pinned = stack.infer("always_on", &xor_body).await.unwrap();
    assert_close(&pinned.output(xor_out).unwrap(), &xor_want, "pinned model");
}
