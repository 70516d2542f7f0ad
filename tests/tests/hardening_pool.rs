//! The pool-manager against hostile or careless callers, with real processes: forged, huge,
//! unknown and flooding gateway reports sent straight to it leave it serving and its state
//! unchanged; its internal routes need the gateway token when one is set; browser requests
//! from elsewhere (CSRF, DNS rebinding) are refused; a delete whose client hangs up still
//! finishes; event numbers go on across a restart.

mod common;

use std::time::Duration;

use common::example;
use mm_tests::paths::example_model;
use mm_tests::process::free_port;
use mm_tests::stack::eventually;
use mm_tests::{PoolManager, Stack, StackOptions};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

fn http() -> Client {
    with_token(None)
}

/// A client that sends `token` (if any) in `x-mm-gateway-token` on every call, as the
/// filter does: for a stack started with a gateway token, the reports it forges are then
/// judged on their content, not refused for the missing token.
fn with_token(token: Option<&str>) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert("x-mm-gateway-token", token.parse().unwrap());
    }
    Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .no_proxy()
        .build()
        .unwrap()
}

async fn get_json(http: &Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn post_json(http: &Client, url: &str, body: &Value) -> (StatusCode, Value) {
    let r = http.post(url).json(body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The admin views a report must not change, without what moves on its own (idle time,
/// the smoothed request rate).
async fn views(http: &Client, pm: &PoolManager) -> (Value, Value) {
    let mut models = get_json(http, &pm.url("/api/v1/models")).await;
    for m in models["models"].as_array_mut().unwrap() {
        let m = m.as_object_mut().unwrap();
        m.remove("idleSeconds");
        m.remove("requestRate");
    }
    let replicas = get_json(http, &pm.url("/api/v1/replicas")).await;
    (models, replicas)
}

/// Waits until the gateway's reports say nothing is in flight any more.
async fn quiet(http: &Client, pm: &PoolManager) {
    eventually("no request in flight", Duration::from_secs(15), || async {
        let (models, replicas) = views(http, pm).await;
        let busy = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .chain(replicas["replicas"].as_array().unwrap())
            .any(|v| v["inFlight"] != 0);
        Ok((!busy).then_some(()))
    })
    .await
    .unwrap();
}

fn usage(reporter: &str, entries: Value) -> Value {
    json!({"reporter": reporter, "entries": entries})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reports_leave_the_pool_serving_and_unchanged() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let pm = &stack.pool_manager;
    let http = with_token(stack.gateway_token.as_deref());
    for (name, memory) in [("linear", "32Mi"), ("xor_mlp", "64Mi")] {
        let (status, body) = stack
            .register(name, &example_model(name), memory)
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let (warm, _, _) = example("linear");
    stack
        .infer_until_ok("linear loaded", "linear", &warm, Duration::from_secs(60))
        .await
        .unwrap();
    stack
        .wait_warm("linear", &warm, Duration::from_secs(30))
        .await
        .unwrap();
    quiet(&http, pm).await;
    let before = views(&http, pm).await;
    let home = before.0["models"][0]["replicas"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let usage_url = pm.url("/internal/v1/usage");
    let failure_url = pm.url("/internal/v1/failure");

    // Huge counts: refused whole (the first one panicked the debug pool-manager).
    for entry in [
        json!({"model": "linear", "replica": home, "requests": 1, "inFlight": u64::MAX}),
        json!({"model": "linear", "replica": home, "requests": u64::MAX, "inFlight": 0}),
        json!({"model": "linear", "replica": home, "requests": 0, "inFlight": 1_000_001}),
    ] {
        let (status, body) = post_json(&http, &usage_url, &usage("forger", json!([entry]))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    // Unknown models and replicas: skipped.
    let unknown = usage(
        "forger",
        json!([
            {"model": "ghost", "replica": home, "requests": 9, "inFlight": 9},
            {"model": "linear", "replica": "r9", "requests": 9, "inFlight": 9},
        ]),
    );
    let (status, body) = post_json(&http, &usage_url, &unknown).await;
    assert_eq!(
        (status, body["applied"].clone()),
        (StatusCode::OK, json!(0))
    );
    // False failure claims: both replicas answer their probes, the model is loaded.
    for claim in [
        json!({"model": "linear", "replica": "r0", "kind": "unreachable"}),
        json!({"model": "linear", "replica": "r1", "kind": "unreachable"}),
        json!({"model": "linear", "replica": home, "kind": "model_missing"}),
        json!({"model": "ghost", "replica": home, "kind": "model_missing"}),
        json!({"model": "linear", "replica": "r9", "kind": "unreachable"}),
    ] {
        let (status, body) = post_json(&http, &failure_url, &claim).await;
        assert_eq!(status, StatusCode::OK, "{claim}: {body}");
    }
    // A flood: thousands of reports and claims at once, 64 connections.
    let sent = flood(&http, &usage_url, &failure_url, &home, 3000).await;
    assert_eq!(sent, 3000 * 2);
    eventually("the claims checked", Duration::from_secs(30), || async {
        Ok((pm.metric("mm_failure_checks").await? == 0.0).then_some(()))
    })
    .await
    .unwrap();
    quiet(&http, pm).await;
    assert_eq!(views(&http, pm).await, before, "the pool's state changed");
    let events = get_json(&http, &pm.url("/api/v1/events?limit=1000")).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for bad in ["replica_unhealthy", "unloaded", "evicted"] {
        assert!(!kinds.contains(&bad), "{bad} after the reports: {kinds:?}");
    }
    assert!(pm.metric("mm_gateway_reports_ignored_total").await.unwrap() >= 3000.0);

    // Still serving: a warm request, and a cold one that loads a model.
    let r = stack.infer("linear", &warm).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let (cold, _, _) = example("xor_mlp");
    let r = stack.infer("xor_mlp", &cold).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Sends `n` usage reports (fresh reporters, unknown names, one in ten out of bounds) and
/// `n` false "unreachable" claims, 64 at a time; returns how many were answered 2xx or 400.
async fn flood(http: &Client, usage_url: &str, failure_url: &str, home: &str, n: usize) -> usize {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..n {
        let in_flight = if i % 10 == 0 { u64::MAX } else { 5 };
        let report = usage(
            &format!("flood-{i}"),
            json!([{"model": format!("ghost-{i}"), "replica": home,
                    "requests": 1, "inFlight": in_flight},
                   {"model": "linear", "replica": format!("x{i}"),
                    "requests": 1, "inFlight": 1}]),
        );
        let claim =
            json!({"model": "linear", "replica": format!("r{}", i % 2), "kind": "unreachable"});
        for (url, body) in [(usage_url, report), (failure_url, claim)] {
            let (http, url, permits) = (http.clone(), url.to_owned(), permits.clone());
            sends.spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                let status = http.post(&url).json(&body).send().await.unwrap().status();
                assert!(
                    status.is_success() || status == StatusCode::BAD_REQUEST,
                    "{url}: {status}"
                );
            });
        }
    }
    let mut answered = 0;
    while let Some(r) = sends.join_next().await {
        r.unwrap();
        answered += 1;
    }
    answered
}

/// A real pool-manager whose one replica never answers (no Triton is needed to check what
/// it refuses), with `extra` flags.
async fn lone_pool_manager(dir: &std::path::Path, extra: &[String]) -> PoolManager {
    let repository = dir.join("repository");
    std::fs::create_dir_all(&repository).unwrap();
    let replica = format!(
        "name=r0,url=http://127.0.0.1:{},memory=1Gi",
        free_port().unwrap()
    );
    let mut pm = PoolManager::spawn(&repository, &[replica], extra, dir).unwrap();
    pm.wait_ready().await.unwrap();
    pm
}

async fn register(http: &Client, pm: &PoolManager, name: &str) {
    let spec = json!({"storageUri": format!("file://{}", example_model("linear").display()),
                      "memory": "32Mi"});
    let r = http
        .put(pm.url(&format!("/api/v1/models/{name}")))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_the_gateway_token_and_browsers_from_elsewhere_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("gateway-token");
    std::fs::write(&token, "g4teway-s3cret\n").unwrap();
    let pm = lone_pool_manager(
        dir.path(),
        &[
            "--gateway-token-file".into(),
            token.display().to_string(),
            "--allowed-host".into(),
            "pool-manager.example".into(),
        ],
    )
    .await;
    let http = http();
    register(&http, &pm, "linear").await;
    let before = views(&http, &pm).await;

    // Without the token (or with a wrong one) every internal route is 401, and nothing
    // the call asks for happens.
    let report = usage(
        "w1",
        json!([{"model": "linear", "replica": "r0", "requests": 5, "inFlight": 2}]),
    );
    let claim = json!({"model": "linear", "replica": "r0", "kind": "unreachable"});
    let calls = [
        (Method::GET, "/internal/v1/route/linear", None),
        (Method::GET, "/internal/v1/route", None),
        (Method::GET, "/internal/v1/table", None),
        (Method::POST, "/internal/v1/usage", Some(&report)),
        (Method::POST, "/internal/v1/failure", Some(&claim)),
    ];
    for token in [None, Some("wrong"), Some("g4teway-s3cret-but-longer")] {
        for (method, path, body) in &calls {
            let mut request = http.request(method.clone(), pm.url(path));
            if let Some(t) = token {
                request = request.header("x-mm-gateway-token", t);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let r = request.send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            let body: Value = r.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("gateway token"),
                "{body}"
            );
        }
    }
    assert_eq!(
        pm.metric("mm_internal_unauthorized_total").await.unwrap(),
        15.0
    );
    assert_eq!(views(&http, &pm).await, before);
    // With it: answered (the replica is down, so a route is 503, not 401).
    let with = |method: Method, path: &str| {
        http.request(method, pm.url(path))
            .header("x-mm-gateway-token", "g4teway-s3cret")
    };
    let r = with(Method::GET, "/internal/v1/table")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = with(Method::GET, "/internal/v1/route/linear")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = with(Method::POST, "/internal/v1/usage")
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // CSRF and DNS rebinding: what a web page could send to the admin port.
    let drain = pm.url("/api/v1/replicas/r0/drain");
    let port = pm.port;
    let refused: Vec<(reqwest::RequestBuilder, StatusCode)> = vec![
        (
            http.post(&drain)
                .header("content-type", "text/plain")
                .body("x"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (http.post(&drain), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            http.post(&drain)
                .json(&json!({}))
                .header("origin", "http://evil.example"),
            StatusCode::FORBIDDEN,
        ),
        (
            http.post(&drain)
                .json(&json!({}))
                .header("sec-fetch-site", "cross-site"),
            StatusCode::FORBIDDEN,
        ),
        (
            http.post(&drain)
                .json(&json!({}))
                .header("host", format!("rebound.evil.example:{port}")),
            StatusCode::FORBIDDEN,
        ),
        (
            http.get(pm.url("/api/v1/models"))
                .header("host", format!("rebound.evil.example:{port}")),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (request, want) in refused {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), want);
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    let replicas = get_json(&http, &pm.url("/api/v1/replicas")).await;
    assert_eq!(replicas["replicas"][0]["draining"], false, "{replicas}");
    // The same write from a client that is no browser page elsewhere goes through.
    for host in [
        format!("localhost:{port}"),
        format!("pool-manager.example:{port}"),
    ] {
        let r = http
            .get(pm.url("/api/v1/models"))
            .header("host", host.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{host}");
    }
    let (status, body) = post_json(&http, &drain, &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["draining"], true, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_numbers_go_on_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut pm = lone_pool_manager(dir.path(), &[]).await;
    let http = http();
    for name in ["a", "b", "c"] {
        register(&http, &pm, name).await;
    }
    let seen = get_json(&http, &pm.url("/api/v1/events")).await["next"]
        .as_u64()
        .unwrap();
    assert!(seen >= 3);
    pm.restart(1).await.unwrap();
    register(&http, &pm, "after-restart").await;
    // A reader resuming where it was sees what happened since.
    let page = get_json(&http, &pm.url(&format!("/api/v1/events?after={seen}"))).await;
    let new: Vec<&Value> = page["events"].as_array().unwrap().iter().collect();
    assert!(
        new.iter()
            .any(|e| e["model"] == "after-restart" && e["kind"] == "registered"),
        "{page}"
    );
    assert!(new.iter().all(|e| e["seq"].as_u64().unwrap() > seen));
    // So does a stream resumed with Last-Event-ID.
    let mut stream = http
        .get(pm.url("/api/v1/events/stream"))
        .header("last-event-id", seen.to_string())
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("after-restart") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("the resumed stream sends the new event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_client_hangs_up_still_finishes() {
    let mut stack = Stack::start(StackOptions {
        replicas: 1,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let pm = &stack.pool_manager;
    let http = with_token(stack.gateway_token.as_deref());
    let slow = mm_tests::models::slow_loading(stack.dir.path(), "slow", 6).unwrap();
    let (status, body) = stack.register("slow", &slow, "16Mi").await.unwrap();
    assert_eq!(status, 201, "{body}");
    // A route call starts the 6 s load, which holds the model's lock.
    let route = {
        let (http, url) = (http.clone(), pm.url("/internal/v1/route/slow"));
        tokio::spawn(async move { http.get(url).send().await })
    };
    eventually("the load to start", Duration::from_secs(30), || async {
        let view = get_json(&http, &pm.url("/api/v1/models/slow")).await;
        Ok((view["state"] == "Loading").then_some(()))
    })
    .await
    .unwrap();
    // The DELETE commits (the model stops routing), then waits for the lock...
    let delete = {
        let (http, url) = (http.clone(), pm.url("/api/v1/models/slow"));
        tokio::spawn(async move { http.delete(url).send().await })
    };
    let mut quick = Client::builder()
        .timeout(Duration::from_millis(300))
        .no_proxy();
    if let Some(token) = &stack.gateway_token {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-mm-gateway-token", token.parse().unwrap());
        quick = quick.default_headers(headers);
    }
    let quick = quick.build().unwrap();
    eventually("the delete to begin", Duration::from_secs(30), || async {
        let r = quick.get(pm.url("/internal/v1/route/slow")).send().await;
        Ok(r.is_ok_and(|r| r.status() == StatusCode::NOT_FOUND)
            .then_some(()))
    })
    .await
    .unwrap();
    // ...and its client hangs up.
    delete.abort();
    assert!(delete.await.unwrap_err().is_cancelled());
    let _ = route.await;
    // Once the load ends the delete carries on: the model is gone everywhere.
    eventually("the delete to finish", Duration::from_secs(60), || async {
        let list = get_json(&http, &pm.url("/api/v1/models")).await;
        let gone = list["models"].as_array().unwrap().is_empty()
            && !stack.replica("r0")?.has_ready("slow").await?;
        Ok(gone.then_some(()))
    })
    .await
    .unwrap();
    let r = http
        .get(pm.url("/api/v1/models/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let events = get_json(&http, &pm.url("/api/v1/events")).await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "deleted" && e["model"] == "slow"),
        "{events}"
    );
    // And from the durable registry: a restart does not bring it back.
    stack.pool_manager.restart(1).await.unwrap();
    let r = http
        .get(stack.pool_manager.url("/api/v1/models/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
