//! Fault injection against the real stack (each bounded in time): a replica killed under
//! load, the pool-manager killed under load and restarted, Envoy restarted, and a table
//! of bad inputs that must each get a clear 4xx and change nothing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_close, example};
use mm_tests::paths::example_model;
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// Steady background load on `model`: counts successes and failures until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(url: String, model: &str) -> Self {
        let (body, _, _) = example(model);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let url = format!("{url}/v2/models/{model}/infer");
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            while !s.load(Ordering::SeqCst) {
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => o.fetch_add(1, Ordering::SeqCst),
                    _ => f.fetch_add(1, Ordering::SeqCst),
                };
                // Paces the load (about 100 requests/s); nothing waits on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }

    /// Waits (bounded, 10 s) until `more` requests succeeded from now on.
    async fn wait_for_successes(&self, what: &str, more: u64) {
        let target = self.counts().0 + more;
        eventually(what, Duration::from_secs(10), || async {
            Ok((self.counts().0 >= target).then_some(()))
        })
        .await
        .unwrap();
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

async fn register_examples(stack: &Stack, models: &[(&str, &str)]) {
    for (model, memory) in models {
        let (status, body) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        let (req, out, want) = example(model);
        let r = stack.infer(model, &req).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        assert_close(&r.output(out).unwrap(), &want, model);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_s_models_are_served_again_within_ten_seconds() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    register_examples(&stack, &[("linear", "32Mi"), ("xor_mlp", "64Mi")]).await;
    let (_, view) = stack
        .admin_call(Method::GET, "/api/v1/models/linear", None)
        .await
        .unwrap();
    let victim = view["replicas"][0].as_str().unwrap().to_owned();
    let load = Load::start(stack.envoy.url(""), "linear");
    let other_load = Load::start(stack.envoy.url(""), "xor_mlp");
    load.wait_for_successes("background load running", 5).await;
    let before = load.counts().0;

    let idx = stack
        .replicas
        .iter()
        .position(|r| r.name == victim)
        .unwrap();
    stack.replicas[idx].process.kill();
    let killed = Instant::now();
    let (body, _, _) = example("linear");
    let recovered = stack
        .infer_until_ok(
            "linear served again after its replica died",
            "linear",
            &body,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let took = killed.elapsed();
    println!("linear served again {took:?} after its replica was killed");
    assert_ne!(recovered.replica.as_deref(), Some(victim.as_str()));
    // The background load recovers too.
    let after = load.counts().0;
    eventually(
        "background load succeeding again",
        Duration::from_secs(5),
        || async { Ok((load.counts().0 > after).then_some(())) },
    )
    .await
    .unwrap();
    assert!(after >= before);
    let (ok, failed) = load.stop().await;
    let (other_ok, _) = other_load.stop().await;
    println!("linear under load: {ok} ok, {failed} failed; xor_mlp: {other_ok} ok");

    let (_, replicas) = stack
        .admin_call(Method::GET, "/api/v1/replicas", None)
        .await
        .unwrap();
    let dead = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == victim.as_str())
        .unwrap()
        .clone();
    assert_eq!(dead["healthy"], false, "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_manager_killed_under_load_loses_nothing() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    register_examples(&stack, &[("linear", "32Mi"), ("anomaly", "48Mi")]).await;
    // Registered, never loaded: must survive too.
    let (status, _) = stack
        .register("xor_mlp", &example_model("xor_mlp"), "64Mi")
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (_, before) = stack
        .admin_call(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    let loads_before = stack
        .pool_manager
        .metric("mm_model_loads_total")
        .await
        .unwrap();
    assert_eq!(loads_before, 2.0);
    // Every Envoy worker routes both models from its table.
    for model in ["linear", "anomaly"] {
        let (body, _, _) = example(model);
        stack
            .wait_warm(model, &body, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let load = Load::start(stack.envoy.url(""), "linear");
    let other = Load::start(stack.envoy.url(""), "anomaly");
    load.wait_for_successes("linear traffic running", 5).await;
    other.wait_for_successes("anomaly traffic running", 5).await;
    stack.pool_manager.process.kill();
    // Warm traffic goes on while the pool-manager is down.
    load.wait_for_successes("linear served with the pool-manager down", 50)
        .await;
    other
        .wait_for_successes("anomaly served with the pool-manager down", 50)
        .await;
    let during = (load.counts(), other.counts());
    let refreshes = stack
        .envoy
        .stat("wasmcustom.mm_filter_table_refreshes")
        .await
        .unwrap();
    stack.pool_manager.restart(1).await.unwrap();
    // ... and after its restart, once the gateway has the new pool-manager's table.
    eventually(
        "the gateway applied the restarted pool-manager's table",
        Duration::from_secs(10),
        || async {
            let now = stack
                .envoy
                .stat("wasmcustom.mm_filter_table_refreshes")
                .await?;
            Ok((now > refreshes).then_some(()))
        },
    )
    .await
    .unwrap();
    load.wait_for_successes("linear served after the restart", 20)
        .await;
    let (ok, failed) = load.stop().await;
    let (other_ok, other_failed) = other.stop().await;
    println!(
        "warm traffic across a pool-manager kill -9 and restart: linear {ok} ok / {failed} failed, \
         anomaly {other_ok} ok / {other_failed} failed (at the kill: {during:?})"
    );
    assert_eq!(
        (failed, other_failed),
        (0, 0),
        "warm requests failed while the pool-manager was down"
    );
    assert!(ok > 50 && other_ok > 50);

    // Everything registered is still registered, with the same specs.
    let (_, after) = stack
        .admin_call(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    let names = |v: &Value| -> Vec<(String, Value, Value)> {
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_owned(),
                    m["storageUri"].clone(),
                    m["memory"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(names(&after), names(&before));
    // Loaded models were adopted from the replicas, not loaded again, and all route.
    let (_, linear) = stack
        .admin_call(Method::GET, "/api/v1/models/linear", None)
        .await
        .unwrap();
    assert_eq!(linear["state"], "Loaded", "{linear}");
    assert_eq!(
        stack
            .pool_manager
            .metric("mm_model_loads_total")
            .await
            .unwrap(),
        0.0
    );
    for model in ["linear", "anomaly", "xor_mlp"] {
        let (req, out, want) = example(model);
        let r = stack.infer(model, &req).await.unwrap();
        assert_eq!(r.status, 200, "{model} after restart: {}", r.text);
        assert_close(&r.output(out).unwrap(), &want, model);
    }
    assert_eq!(
        stack
            .pool_manager
            .metric("mm_model_loads_total")
            .await
            .unwrap(),
        1.0,
        "only xor_mlp loads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_envoy_rebuilds_its_table_and_serves() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    register_examples(&stack, &[("linear", "32Mi")]).await;
    stack.envoy.restart(1).await.unwrap();
    let (body, out, want) = example("linear");
    let r = stack.infer("linear", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_close(&r.output(out).unwrap(), &want, "after an Envoy restart");
    // The table comes back from the pool-manager: warm again without route calls.
    stack
        .wait_warm("linear", &body, Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_4xx_and_change_nothing() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    register_examples(&stack, &[("linear", "32Mi")]).await;
    let (_, before) = stack
        .admin_call(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    let dir = example_model("linear").display().to_string();
    let spec = |extra: &str| format!(r#"{{"storageUri": "file://{dir}", "memory": "1Mi"{extra}}}"#);
    let huge_spec = format!(
        r#"{{"storageUri": "file://{dir}", "x": "{}"}}"#,
        "a".repeat(100_000)
    );

    // (method, path, body, expected status) against the admin API.
    let admin: Vec<(Method, String, String, u16)> = vec![
        (Method::PUT, "/api/v1/models/m".into(), "{".into(), 400),
        (Method::PUT, "/api/v1/models/m".into(), "".into(), 400),
        (Method::PUT, "/api/v1/models/m".into(), "null".into(), 400),
        (Method::PUT, "/api/v1/models/m".into(), "[]".into(), 400),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            r#"{"storageUri": 5}"#.into(),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            format!(r#"{{"storageUri": "file://{dir}", "memory": "12Qi"}}"#),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            format!(r#"{{"storageUri": "file://{dir}", "memory": -5}}"#),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            format!(r#"{{"storageUri": "file://{dir}", "memory": "1.5.5Gi"}}"#),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            format!(r#"{{"storageUri": "file://{dir}", "memory": "900Gi"}}"#),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            spec(r#", "bogus": true"#),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            r#"{"storageUri": "file:///tmp/../etc"}"#.into(),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            r#"{"storageUri": "file:///tmp/%2e%2e/etc"}"#.into(),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            r#"{"storageUri": "ftp://host/m"}"#.into(),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            r#"{"storageUri": "file://relative/m"}"#.into(),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            r#"{"storageUri": "file:///no/such/dir"}"#.into(),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            spec(r#", "minCopies": 2, "maxCopies": 1"#),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/models/m".into(),
            spec(r#", "maxCopies": 0"#),
            400,
        ),
        (Method::PUT, "/api/v1/models/..%2Fetc".into(), spec(""), 400),
        (Method::PUT, "/api/v1/models/.hidden".into(), spec(""), 400),
        (
            Method::PUT,
            "/api/v1/models/mod%C3%A8le".into(),
            spec(""),
            400,
        ),
        (Method::PUT, "/api/v1/models/a%2Fb".into(), spec(""), 400),
        (
            Method::PUT,
            format!("/api/v1/models/{}", "a".repeat(129)),
            spec(""),
            400,
        ),
        (Method::PUT, "/api/v1/models/m".into(), huge_spec, 413),
        (Method::POST, "/api/v1/models/linear".into(), spec(""), 405),
        (Method::PATCH, "/api/v1/models".into(), "".into(), 405),
        (
            Method::DELETE,
            "/api/v1/models/ghost".into(),
            "".into(),
            404,
        ),
        (Method::GET, "/api/v1/models/ghost".into(), "".into(), 404),
        (Method::GET, "/api/v1/models?limit=0".into(), "".into(), 400),
        (
            Method::GET,
            "/api/v1/models?sort=name".into(),
            "".into(),
            400,
        ),
        (Method::GET, "/api/v2/models".into(), "".into(), 404),
    ];
    for (method, path, body, want) in &admin {
        let (status, json) = stack
            .admin_call(method.clone(), path, Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(status, *want, "{method} {path}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {json}"
        );
    }
    // The gateway's own routes, called as the filter calls them (with the stack's gateway
    // token, if it has one): bad input is a 400 there too.
    let internal: Vec<(Method, &str, &str)> = vec![
        (Method::POST, "/internal/v1/usage", "{}"),
        (Method::GET, "/internal/v1/table?waitMs=99999999", ""),
    ];
    for (method, path, body) in internal {
        let (status, json) = stack
            .internal_call(method.clone(), path, Some(body.to_owned()))
            .await
            .unwrap();
        assert_eq!(status, 400, "{method} {path}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {json}"
        );
    }

    // (method, path, body, expected status) through the gateway.
    let gateway: Vec<(Method, &str, Value, u16)> = vec![
        (Method::POST, "/v2/models/ghost/infer", json!({}), 404),
        (Method::POST, "/v2/models/..%2Fetc/infer", json!({}), 400),
        (Method::POST, "/v2/models/%E2%9C%93/infer", json!({}), 400),
        (
            Method::POST,
            "/v2/models/linear/versions/abc/infer",
            json!({}),
            400,
        ),
        (Method::POST, "/v2/repository/index", json!({}), 404),
        (
            Method::POST,
            "/v2/repository/models/linear/unload",
            json!({}),
            404,
        ),
        (Method::GET, "/api/v1/models", json!({}), 404),
        (
            Method::POST,
            "/v1/models/linear:predict",
            json!({"instances": "x"}),
            400,
        ),
        (
            Method::POST,
            "/v1/models/linear:predict",
            json!({"instances": [[1, 2]]}),
            400,
        ),
    ];
    for (method, path, body, want) in &gateway {
        let r = stack
            .gateway_call(method.clone(), path, Some(body), &[])
            .await
            .unwrap();
        assert_eq!(r.status, *want, "gateway {method} {path}: {}", r.text);
        assert!(
            r.json["error"].is_string(),
            "gateway {method} {path}: {}",
            r.text
        );
    }
    let malformed = stack
        .http
        .post(stack.envoy.url("/v1/models/linear:predict"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    // A body over the gateway's limit is refused before it reaches a replica.
    let huge = stack
        .http
        .post(stack.envoy.url("/v2/models/linear/infer"))
        .header("content-type", "application/json")
        .body(vec![b' '; 40 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status().as_u16(), 413);
    let huge: Value = huge.json().await.unwrap();
    assert!(huge["error"].is_string(), "{huge}");

    let (_, after) = stack
        .admin_call(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    assert_eq!(
        after["models"].as_array().map(Vec::len),
        before["models"].as_array().map(Vec::len)
    );
    assert_eq!(after["models"][0]["name"], "linear");
    assert_eq!(
        after["models"][0]["state"], "Loaded",
        "the bad requests changed nothing"
    );
    println!(
        "{} admin and {} gateway bad inputs refused cleanly",
        admin.len(),
        gateway.len() + 2
    );
}
