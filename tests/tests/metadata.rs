//! Metadata and readiness without loading (issue 15 item 3), through the real gateway:
//! for a model evicted after its first load, V2 metadata and configuration (HTTP and gRPC)
//! come from what the pool-manager kept and readiness never loads: the pool-manager's load
//! counter does not move and the replica keeps what it had. The kept metadata survives a
//! pool-manager restart, and a spec change whose files differ drops it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{assert_close, example};
use mm_tests::paths::example_model;
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use serde_json::Value;

/// One replica with room for one of the two models at a time, no churn guard.
async fn room_for_one() -> Stack {
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "100Mi".into(),
        pool_manager_args: ["--min-age", "0s"].map(String::from).to_vec(),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    for (model, memory) in [("linear", "60Mi"), ("xor_mlp", "60Mi"), ("anomaly", "60Mi")] {
        let (status, body) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    stack
}

/// Serves `model` once through the gateway.
async fn serve(stack: &Stack, model: &str) {
    let (body, output, want) = example(model);
    let answer = stack
        .infer_until_ok(model, model, &body, Duration::from_secs(60))
        .await
        .unwrap();
    assert_close(&answer.output(output).unwrap(), &want, model);
}

/// Loads `linear`, then `xor_mlp` in its place: `linear` is evicted after its first load.
async fn evict_linear(stack: &Stack) {
    serve(stack, "linear").await;
    // xor_mlp's load waits (bounded) for linear's request to be reported finished.
    serve(stack, "xor_mlp").await;
    let r0 = stack.replica("r0").unwrap();
    eventually("linear evicted", Duration::from_secs(30), || async {
        Ok((!r0.has_ready("linear").await?).then_some(()))
    })
    .await
    .unwrap();
}

async fn loads(stack: &Stack) -> f64 {
    stack
        .pool_manager
        .metric("mm_model_loads_total")
        .await
        .unwrap()
}

/// What the replica has loaded, by its own index.
async fn loaded(stack: &Stack) -> Vec<String> {
    stack.ready_models("r0").await.unwrap()
}

/// `GET path` through the gateway: status, `x-mm-model-state`, JSON body.
async fn get(stack: &Stack, path: &str) -> (u16, Option<String>, Value) {
    let r = stack.http.get(stack.envoy.url(path)).send().await.unwrap();
    let state = r
        .headers()
        .get("x-mm-model-state")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        r.status().as_u16(),
        state,
        r.json().await.unwrap_or(Value::Null),
    )
}

/// `tests/clients/metadata_client.py` against the gateway, for `model`.
fn ask(stack: &Stack, model: &str) -> Value {
    common::python_client_at("metadata_client.py", stack.envoy.port, &[model])
}

/// Every way of asking for `linear`'s metadata and readiness gave the standby answers.
fn assert_linear_standby(out: &Value) {
    let r = &out["requests"];
    for case in ["metadata", "version", "ready", "v1"] {
        assert_eq!(r[case]["status"], 200, "{case}: {out}");
        assert_eq!(r[case]["state"], "standby", "{case}: {out}");
    }
    assert_eq!(r["metadata"]["body"]["name"], "linear", "{out}");
    assert_eq!(
        r["metadata"]["body"]["inputs"][0]["shape"],
        serde_json::json!([-1, 4]),
        "{out}"
    );
    assert_eq!(
        r["version"]["body"]["versions"],
        serde_json::json!(["1"]),
        "{out}"
    );
    assert_eq!(
        r["v1"]["body"],
        serde_json::json!({"name": "linear", "ready": true}),
        "{out}"
    );
    assert_eq!(out["http"]["ready"], true, "{out}");
    assert_eq!(out["http"]["metadata"]["name"], "linear", "{out}");
    assert_eq!(out["http"]["metadata"]["platform"], "python", "{out}");
    for case in ["ready", "header_ready"] {
        assert_eq!(out["grpc"][case], true, "{case}: {out}");
    }
    assert_eq!(r["config"]["status"], 200, "{out}");
    assert_eq!(r["config"]["state"], "standby", "{out}");
    assert_eq!(r["config"]["body"]["backend"], "python", "{out}");
    // gRPC ModelConfig: Triton's ModelConfigResponse, encoded from the kept configuration.
    for case in ["config", "header_config"] {
        let c = &out["grpc"][case]["config"];
        assert_eq!(c["name"], "linear", "{case}: {out}");
        assert_eq!(c["backend"], "python", "{case}: {out}");
        assert_eq!(c["input"][0]["data_type"], "TYPE_FP32", "{case}: {out}");
        assert_eq!(
            c["input"][0]["dims"],
            serde_json::json!(["-1", "4"]),
            "{case}: {out}"
        );
    }
    for case in ["metadata", "header_metadata"] {
        let m = &out["grpc"][case];
        assert_eq!(m["name"], "linear", "{case}: {out}");
        assert_eq!(m["inputs"][0]["datatype"], "FP32", "{case}: {out}");
        assert_eq!(
            m["inputs"][0]["shape"],
            serde_json::json!(["-1", "4"]),
            "{case}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_readiness_of_an_evicted_model_load_nothing() {
    let stack = room_for_one().await;
    evict_linear(&stack).await;
    let before = loads(&stack).await;
    assert_eq!(loaded(&stack).await, vec!["xor_mlp"]);

    let out = tokio::task::block_in_place(|| ask(&stack, "linear"));
    assert_linear_standby(&out);
    // A model registered and never loaded is ready (it would load on demand); only its
    // metadata needs a load, which this does not ask for.
    let (status, state, _) = get(&stack, "/v2/models/anomaly/ready").await;
    assert_eq!((status, state.as_deref()), (200, Some("standby")));
    assert_eq!(loads(&stack).await, before, "nothing was loaded");
    assert_eq!(loaded(&stack).await, vec!["xor_mlp"], "nothing was evicted");
    // The filter adds its counts to Envoy's counters on its next tick (every 200 ms).
    eventually(
        "12 answers given without a load",
        Duration::from_secs(5),
        || async {
            let standby = stack
                .envoy
                .stat("wasmcustom.mm_filter_standby_answers")
                .await?;
            Ok((standby >= 12).then_some(()))
        },
    )
    .await
    .unwrap();

    // An unknown model: 404 JSON on HTTP, NOT_FOUND on gRPC.
    let out = tokio::task::block_in_place(|| ask(&stack, "nobody"));
    for case in ["metadata", "ready", "v1"] {
        assert_eq!(out["requests"][case]["status"], 404, "{case}: {out}");
        assert!(out["requests"][case]["body"]["error"].is_string(), "{out}");
    }
    assert_eq!(out["http"]["ready"], false, "{out}");
    assert_eq!(
        out["grpc"]["ready"]["status"], "StatusCode.NOT_FOUND",
        "{out}"
    );
    assert_eq!(
        out["grpc"]["metadata"]["status"], "StatusCode.NOT_FOUND",
        "{out}"
    );
    assert_eq!(
        out["grpc"]["config"]["status"], "StatusCode.NOT_FOUND",
        "{out}"
    );

    // The model itself still loads on its next inference request.
    serve(&stack, "linear").await;
    assert_eq!(loaded(&stack).await, vec!["linear"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_metadata_survives_a_restart_and_goes_with_a_spec_change() {
    let mut stack = room_for_one().await;
    evict_linear(&stack).await;
    stack.pool_manager.restart(1).await.unwrap();
    let (status, state, body) = get(&stack, "/v2/models/linear").await;
    assert_eq!((status, state.as_deref()), (200, Some("standby")), "{body}");
    assert_eq!(body["name"], "linear", "{body}");
    assert_eq!(
        loads(&stack).await,
        0.0,
        "answered after the restart without a load"
    );
    assert_eq!(loaded(&stack).await, vec!["xor_mlp"]);

    // New files (another directory with the same model): the old metadata is no answer.
    let copy = stack.dir.path().join("linear-v2");
    let status = Command::new("cp")
        .arg("-r")
        .arg(example_model("linear"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let (status, body) = stack.register("linear", &copy, "60Mi").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, state, body) = get(&stack, "/v2/models/linear").await;
    assert_eq!((status, state), (200, None), "from the replica: {body}");
    assert_eq!(body["name"], "linear", "{body}");
    assert_eq!(
        loads(&stack).await,
        1.0,
        "loaded once to learn the new metadata"
    );
    assert_eq!(loaded(&stack).await, vec!["linear"]);
}
