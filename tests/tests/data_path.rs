//! The data path through real Envoy: warm requests are routed from the filter's own table
//! with no call to the pool-manager (and keep working when it is dead), KServe V1 predict
//! is translated to V2 and back, V2 gRPC is routed by header or by the protobuf body, and
//! a dead replica is routed around.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{assert_close, example};
use mm_tests::paths::{client_script, example_model, python_lib};
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::{json, Value};

async fn route_calls(stack: &Stack) -> f64 {
    stack.route_calls().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_requests_make_no_pool_manager_calls_and_outlive_it() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    for (model, memory) in [("linear", "32Mi"), ("anomaly", "48Mi"), ("xor_mlp", "64Mi")] {
        let (status, _) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201);
    }
    let (linear, linear_out, linear_want) = example("linear");
    let (anomaly, anomaly_out, anomaly_want) = example("anomaly");
    stack
        .wait_warm("linear", &linear, Duration::from_secs(10))
        .await
        .unwrap();
    stack
        .wait_warm("anomaly", &anomaly, Duration::from_secs(10))
        .await
        .unwrap();

    let before = route_calls(&stack).await;
    for i in 0..1000 {
        let (model, body, out, want) = if i % 2 == 0 {
            ("linear", &linear, linear_out, &linear_want)
        } else {
            ("anomaly", &anomaly, anomaly_out, &anomaly_want)
        };
        let r = stack.infer(model, body).await.unwrap();
        assert_eq!(r.status, 200, "warm request {i}: {}", r.text);
        assert_close(&r.output(out).unwrap(), want, model);
    }
    let calls = route_calls(&stack).await - before;
    println!("pool-manager route calls per 1,000 warm requests: {calls}");
    assert_eq!(calls, 0.0, "warm requests reached the pool-manager");

    // The control plane dies: loaded models keep answering, every time.
    stack.pool_manager.process.kill();
    for i in 0..200 {
        let (model, body) = if i % 2 == 0 {
            ("linear", &linear)
        } else {
            ("anomaly", &anomaly)
        };
        let r = stack.infer(model, body).await.unwrap();
        assert_eq!(
            r.status, 200,
            "request {i} with the pool-manager dead: {}",
            r.text
        );
    }
    // A model loaded nowhere cannot be placed without it: a clear 503.
    let (xor, _, _) = example("xor_mlp");
    let cold = stack.infer("xor_mlp", &xor).await.unwrap();
    assert_eq!(cold.status, 503, "{}", cold.text);
    assert_eq!(cold.json["error"], "pool-manager unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_predict_answers_the_same_numbers_as_v2_infer() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    for (model, memory) in [("linear", "32Mi"), ("anomaly", "48Mi")] {
        let (status, _) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201);
    }
    // The first request for linear is a V1 one: the route call carries the inputs.
    let v1 = stack
        .gateway_call(
            Method::POST,
            "/v1/models/linear:predict",
            Some(&json!({"instances": [[1, 2, 3, 4], [0, 0, 0, 0]]})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(v1.status, 200, "{}", v1.text);
    let (v2_body, out, _) = example("linear");
    let v2 = stack.infer("linear", &v2_body).await.unwrap();
    let v2_values = v2.output(out).unwrap();
    let predictions: Vec<f64> = v1.json["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_f64().unwrap())
        .collect();
    assert_close(
        &predictions,
        &v2_values,
        "V1 predictions against V2 outputs",
    );
    assert_close(&predictions, &[7.0, 1.5], "V1 predictions");

    // Two outputs: one object per instance.
    let v1 = stack
        .gateway_call(
            Method::POST,
            "/v1/models/anomaly:predict",
            Some(&json!({"instances": [[21, 55, 1013], [28, 50, 1013]]})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(v1.status, 200, "{}", v1.text);
    let p = &v1.json["predictions"];
    assert_eq!(p[0]["score"][0].as_f64(), Some(0.5), "{}", v1.text);
    assert_eq!(p[1]["score"][0].as_f64(), Some(4.0), "{}", v1.text);
    assert_eq!(p[0]["is_anomaly"][0], false);
    assert_eq!(p[1]["is_anomaly"][0], true);

    // Shapes V1 cannot express for this model: a clear 400 from the gateway.
    for bad in [
        json!({"instances": [[1, 2, 3]]}),
        json!({"instances": [[1, 2, 3, 4], [1, 2]]}),
        json!({"instances": []}),
        json!({"inputs": [[1, 2, 3, 4]]}),
        json!({"instances": [["a", "b", "c", "d"]]}),
    ] {
        let r = stack
            .gateway_call(Method::POST, "/v1/models/linear:predict", Some(&bad), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(r.json["error"].is_string(), "{bad}: {}", r.text);
    }
}

fn grpc_infer(stack: &Stack, model: &str, header: Option<&str>) -> Value {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", python_lib())
        .arg(client_script("grpc_infer.py"))
        .arg(format!("127.0.0.1:{}", stack.envoy.port))
        .arg(model);
    if let Some(h) = header {
        cmd.arg("--header").arg(h);
    }
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "grpc client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_model_infer_reaches_the_models_replica() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    for (model, memory) in [("linear", "32Mi"), ("xor_mlp", "64Mi")] {
        let (status, _) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201);
    }
    // Cold and by body (no header): the filter reads model_name from the protobuf.
    let by_body = tokio::task::block_in_place(|| grpc_infer(&stack, "linear", None));
    assert_eq!(by_body["ready"], true, "{by_body}");
    let y: Vec<f64> = serde_json::from_value(by_body["y"].clone()).unwrap();
    assert_close(&y, &[7.0, 1.5], "gRPC by body");
    // By ModelMesh's header, now warm.
    let by_header =
        tokio::task::block_in_place(|| grpc_infer(&stack, "linear", Some("mm-model-id")));
    assert_eq!(by_header["ready"], true, "{by_header}");

    let (_, view) = stack
        .admin_call(Method::GET, "/api/v1/models/linear", None)
        .await
        .unwrap();
    let placed = view["replicas"][0].as_str().unwrap().to_owned();
    for r in &stack.replicas {
        let count = r.inference_count("linear").await.unwrap();
        assert_eq!(
            count,
            if r.name == placed { 2 } else { 0 },
            "gRPC infers on {}",
            r.name
        );
    }
    // Errors come back as gRPC statuses.
    let unknown = tokio::task::block_in_place(|| grpc_infer(&stack, "ghost", None));
    assert!(
        unknown["status"]
            .as_str()
            .unwrap_or_default()
            .contains("NOT_FOUND"),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_routed_around() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let (status, _) = stack
        .register("linear", &example_model("linear"), "32Mi")
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (body, out, want) = example("linear");
    stack
        .wait_warm("linear", &body, Duration::from_secs(10))
        .await
        .unwrap();
    let home = stack.infer("linear", &body).await.unwrap().replica.unwrap();
    let dead = stack.replicas.iter().position(|r| r.name == home).unwrap();
    stack.replicas[dead].process.kill();

    // Requests fail fast while the gateway notices, then the model is served again from
    // the other replica (re-loaded there on demand).
    let served = stack
        .infer_until_ok(
            "the model served from the other replica",
            "linear",
            &body,
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert_ne!(served.replica.as_deref(), Some(home.as_str()));
    assert_close(&served.output(out).unwrap(), &want, "after failover");
    let (_, replicas) = stack
        .admin_call(Method::GET, "/api/v1/replicas", None)
        .await
        .unwrap();
    let dead_view = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == home.as_str())
        .unwrap()
        .clone();
    assert_eq!(dead_view["healthy"], false, "{dead_view}");
}

/// KServe V1 for a model without a batch dimension (input `[4]`, `max_batch_size: 0`): a
/// single instance of the input's whole shape is the tensor and its answer is one
/// prediction, the same numbers V2 gives; instances that are rows of the first dimension
/// still work, and anything that is neither is a clear 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_predict_takes_the_whole_tensor_of_a_model_without_batching() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let model = mm_tests::models::running_sum(stack.dir.path(), "running_sum").unwrap();
    let (status, _) = stack.register("running_sum", &model, "16Mi").await.unwrap();
    assert_eq!(status, 201);

    // V1 first, so the cold request's route call is the one carrying the input's shape.
    let v1 = stack
        .gateway_call(
            Method::POST,
            "/v1/models/running_sum:predict",
            Some(&json!({"instances": [[1, 2, 3, 4]]})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(v1.status, 200, "{}", v1.text);
    let v2 = stack
        .infer(
            "running_sum",
            &json!({"inputs": [{"name": "v", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        )
        .await
        .unwrap();
    assert_eq!(v2.status, 200, "{}", v2.text);
    assert_eq!(v2.json["outputs"][0]["shape"], json!([4]), "{}", v2.text);
    let v2_values = v2.output("y").unwrap();
    assert_close(&v2_values, &[1.0, 3.0, 6.0, 10.0], "V2 outputs");
    let predictions = v1.json["predictions"].as_array().unwrap();
    assert_eq!(
        predictions.len(),
        1,
        "one instance, one prediction: {}",
        v1.text
    );
    let prediction: Vec<f64> = serde_json::from_value(predictions[0].clone()).unwrap();
    assert_close(&prediction, &v2_values, "V1 prediction against V2 outputs");

    // Rows of the first dimension: four scalar instances, four predictions.
    let rows = stack
        .gateway_call(
            Method::POST,
            "/v1/models/running_sum:predict",
            Some(&json!({"instances": [1, 2, 3, 4]})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.status, 200, "{}", rows.text);
    let rows: Vec<f64> = serde_json::from_value(rows.json["predictions"].clone()).unwrap();
    assert_close(&rows, &v2_values, "V1 rows against V2 outputs");

    for (bad, says) in [
        (
            json!({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}),
            "must be the only instance",
        ),
        (json!({"instances": [[1, 2, 3]]}), "length 3 in dimension 0"),
        (json!({"instances": [1, 2, 3]}), "exactly 4 instances"),
        (
            json!({"instances": [[[1, 2, 3, 4]]]}),
            "or, as the only instance",
        ),
    ] {
        let r = stack
            .gateway_call(
                Method::POST,
                "/v1/models/running_sum:predict",
                Some(&bad),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        let error = r.json["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{bad}: {error:?} lacks {says:?}");
    }
}
