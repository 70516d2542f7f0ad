//! Aliases end to end (real Envoy, filter, pool-manager and two Triton replicas), on one
//! stack: a 90/10 alias splits 1,000 V2 requests by its weights, gRPC (by field 1 and by
//! `mm-vmodel-id`) and KServe V1 reach its targets, moving it (with mmctl) to a cold model
//! under load fails no request, and models and aliases share one namespace (409s).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{example, linear_version, mmctl, read_answer, Answer};
use mm_tests::paths::{client_script, python_lib};
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// The three models behind the alias and their biases: `linear`'s answer to the example
/// input is `[5.5 + b, b]`, so every answer says which model computed it.
const MODELS: [(&str, f64); 3] = [("can-a", 1.5), ("can-b", 11.5), ("can-c", 21.5)];
const ALIAS: &str = "can";
/// Requests whose split is counted, and the bound on the smaller target's share (3
/// percentage points of 1,000).
const SPLIT_REQUESTS: usize = 1_000;
const SPLIT_SLACK: i64 = 30;
/// Clients sending requests at once to the alias while it moves.
const CLIENTS: usize = 3;

fn bias_of(model: &str) -> Option<f64> {
    MODELS.iter().find(|(m, _)| *m == model).map(|(_, b)| *b)
}

/// One V2 inference of the alias: the model that served it (by the response header),
/// checked against the answer's numbers; `Err` with what went wrong otherwise.
async fn infer_alias(stack: &Stack, body: &Value) -> Result<String, String> {
    let response = stack
        .http
        .post(stack.envoy.url(&format!("/v2/models/{ALIAS}/infer")))
        .json(body)
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let Answer {
        status,
        served,
        text,
        y,
    } = read_answer(response).await;
    match (status, served, y) {
        (200, Some(served), Some(y)) if bias_of(&served).is_some_and(|b| y == [5.5 + b, b]) => {
            Ok(served)
        }
        (status, served, _) => Err(format!("{status} served={served:?}: {text}")),
    }
}

/// What the clients saw while the alias moved.
#[derive(Default)]
struct Tally {
    served: Mutex<HashMap<String, u64>>,
    failed: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn count(&self, model: &str) -> u64 {
        self.served.lock().unwrap().get(model).copied().unwrap_or(0)
    }
}

async fn client(stack: Arc<Stack>, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let (body, _, _) = example("linear");
    while !stop.load(Ordering::SeqCst) {
        match infer_alias(&stack, &body).await {
            Ok(model) => *tally.served.lock().unwrap().entry(model).or_default() += 1,
            Err(what) => {
                tally.failed.fetch_add(1, Ordering::SeqCst);
                let mut samples = tally.samples.lock().unwrap();
                if samples.len() < 5 {
                    samples.push(what);
                }
            }
        }
    }
}

/// `tests/clients/grpc_infer.py` against the alias; the bias of the answer's model.
fn grpc_bias(stack: &Stack, header: Option<&str>) -> f64 {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", python_lib())
        .arg(client_script("grpc_infer.py"))
        .arg(format!("127.0.0.1:{}", stack.envoy.port))
        .arg(ALIAS);
    if let Some(h) = header {
        cmd.arg("--header").arg(h);
    }
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "grpc client failed: {stdout}");
    let answer: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(answer["ready"], true, "{header:?}: {answer}");
    let y: Vec<f64> = serde_json::from_value(answer["y"].clone()).unwrap();
    assert_eq!(y.len(), 2, "{answer}");
    assert_eq!(y[0], 5.5 + y[1], "{answer}");
    y[1]
}

async fn put_alias(stack: &Stack, name: &str, body: Value) -> (u16, Value) {
    stack
        .admin_call(
            Method::PUT,
            &format!("/api/v1/aliases/{name}"),
            Some(body.to_string()),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_splits_by_weight_serves_every_protocol_and_moves_under_load() {
    let stack = Arc::new(Stack::start(StackOptions::default()).await.unwrap());
    let (body, _, _) = example("linear");
    for (model, bias) in MODELS {
        let dir = linear_version(stack.dir.path(), model, bias);
        let (status, view) = stack.register(model, &dir, "32Mi").await.unwrap();
        assert_eq!(status, 201, "{view}");
    }
    for (model, _) in &MODELS[..2] {
        stack
            .infer_until_ok("loads", model, &body, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let (status, view) = put_alias(
        &stack,
        ALIAS,
        json!({"targets": [{"model": "can-a", "weight": 90}, {"model": "can-b", "weight": 10}]}),
    )
    .await;
    assert_eq!(status, 201, "{view}");

    // One namespace: neither name can be taken by the other kind, and a target stays.
    let dir = linear_version(stack.dir.path(), "clash", 1.5);
    let (status, view) = stack.register(ALIAS, &dir, "32Mi").await.unwrap();
    assert_eq!(status, 409, "a model named like an alias: {view}");
    assert!(view["error"].as_str().is_some(), "{view}");
    let (status, view) = put_alias(&stack, "can-a", json!({"target": "can-b"})).await;
    assert_eq!(status, 409, "an alias named like a model: {view}");
    let (status, view) = stack
        .admin_call(Method::DELETE, "/api/v1/models/can-b", None)
        .await
        .unwrap();
    assert_eq!(status, 409, "deleting a target: {view}");
    assert!(
        view["error"].as_str().unwrap_or_default().contains(ALIAS),
        "{view}"
    );

    // The split, once every worker resolves the alias from its table.
    stack
        .wait_warm(ALIAS, &body, Duration::from_secs(30))
        .await
        .unwrap();
    let mut served: HashMap<String, i64> = HashMap::new();
    for _ in 0..SPLIT_REQUESTS {
        let model = infer_alias(&stack, &body).await.unwrap();
        *served.entry(model).or_default() += 1;
    }
    let (a, b) = (served["can-a"], served["can-b"]);
    assert_eq!(a + b, SPLIT_REQUESTS as i64, "{served:?}");
    assert!((b - 100).abs() <= SPLIT_SLACK, "90/10 split: {served:?}");
    println!("90/10 alias over {SPLIT_REQUESTS} requests: can-a {a}, can-b {b}");

    // gRPC by the message's model_name and by ModelMesh's header; KServe V1.
    for header in [None, Some("mm-vmodel-id")] {
        let bias = tokio::task::block_in_place(|| grpc_bias(&stack, header));
        assert!(bias == 1.5 || bias == 11.5, "{header:?}: bias {bias}");
    }
    let v1 = stack
        .gateway_call(
            Method::POST,
            &format!("/v1/models/{ALIAS}:predict"),
            Some(&json!({"instances": [[1, 2, 3, 4]]})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(v1.status, 200, "{}", v1.text);
    let p = v1.json["predictions"][0][0].as_f64();
    assert!(p == Some(7.0) || p == Some(17.0), "{}", v1.text);

    // Moving it to a model loaded nowhere, under load: loaded first, then switched.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(stack.clone(), stop.clone(), tally.clone())))
        .collect();
    eventually("the clients run", Duration::from_secs(30), || async {
        Ok((tally.count("can-a") >= 30).then_some(()))
    })
    .await
    .unwrap();
    // With mmctl: it returns once the alias has moved.
    let run = mmctl(
        &stack.pool_manager.url(""),
        &["aliases", "set", ALIAS, "--target", "can-c"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, format!("alias {ALIAS} set: can-c\n"), "{run:?}");
    eventually("answers from can-c", Duration::from_secs(30), || async {
        Ok((tally.count("can-c") >= 30).then_some(()))
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failed = tally.failed.load(Ordering::SeqCst);
    let counts = tally.served.lock().unwrap().clone();
    assert_eq!(
        failed,
        0,
        "{failed} failed ({counts:?}): {:?}",
        tally.samples.lock().unwrap()
    );
    println!("alias moved under {CLIENTS} clients: {counts:?}, 0 failed");

    // No longer a target: can-b can go now.
    let (status, view) = stack
        .admin_call(Method::DELETE, "/api/v1/models/can-b", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{view}");

    let url = stack.pool_manager.url("");
    let run = mmctl(&url, &["aliases", "list"], None).await;
    assert_eq!(
        run.stdout,
        format!("NAME   TARGETS\n{ALIAS}    can-c\n"),
        "{run:?}"
    );
    let run = mmctl(&url, &["aliases", "delete", ALIAS], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    let run = mmctl(&url, &["aliases", "get", ALIAS], None).await;
    assert_eq!(run.code, 3, "gone: {run:?}");
    let (status, view) = stack
        .admin_call(Method::DELETE, "/api/v1/models/can-c", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "no alias targets it any more: {view}");
}
