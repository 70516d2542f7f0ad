//! The router, called without a socket: status codes, JSON error bodies, and that no bad
//! request changes the registry.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::metrics::Metrics;
use crate::pool::{Replica, Settings};
use crate::replica::fake::FakeReplica;
use crate::repository::ModelRepository;
use crate::spec::StoragePolicy;

pub(super) struct Fixture {
    pub app: Router,
    pub pool: Pool,
    pub fakes: Vec<Arc<FakeReplica>>,
    pub model_dir: tempfile::TempDir,
    _repo: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    fixture_with_token(None).await
}

async fn fixture_with_token(admin_token: Option<&str>) -> Fixture {
    let token = admin_token.map(Arc::from);
    fixture_with(move |state| state.admin_token = token).await
}

/// A pool of one fake replica `r0` (1 GiB) behind the router, its state set by `configure`.
pub(super) async fn fixture_with(configure: impl FnOnce(&mut AppState)) -> Fixture {
    let repo = tempfile::tempdir().unwrap();
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(model_dir.path().join("1")).unwrap();
    std::fs::write(model_dir.path().join("1/model.py"), "pass").unwrap();
    let fake = Arc::new(FakeReplica::default());
    let replica = Replica {
        grpc_port: Some(8001),
        ..fake.as_replica(0, 1 << 30)
    };
    let mut registry = prometheus_client::registry::Registry::with_prefix("mm");
    let metrics = Arc::new(Metrics::register(&mut registry, 100));
    let pool = Pool::new(
        vec![replica],
        ModelRepository::open(repo.path()).unwrap(),
        StoragePolicy::default(),
        metrics,
        Settings::default(),
    );
    pool.probe_replicas().await;
    let mut state = AppState {
        pool: pool.clone(),
        metrics: Arc::new(registry),
        admin_token: None,
        gateway_token: None,
        allowed_hosts: Arc::from(Vec::new()),
        cluster: super::cluster::ClusterState::sole("embedded (test)".into()),
    };
    configure(&mut state);
    Fixture {
        app: app(state),
        pool,
        fakes: vec![fake],
        model_dir,
        _repo: repo,
    }
}

impl Fixture {
    /// Sends `method uri` with a JSON body; returns the status and the JSON answer.
    pub(super) async fn call(
        &self,
        method: Method,
        uri: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    pub(super) fn spec(&self, memory: &str) -> String {
        format!(
            r#"{{"storageUri": "file://{}", "memory": {memory}}}"#,
            self.model_dir.path().display()
        )
    }

    pub(super) async fn registry(&self) -> serde_json::Value {
        self.call(Method::GET, "/api/v1/models", Body::empty())
            .await
            .1
    }
}

#[tokio::test]
async fn registers_lists_gets_routes_and_deletes() {
    let f = fixture().await;
    let (status, body) = f
        .call(Method::PUT, "/api/v1/models/m1", f.spec("\"64Mi\""))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["memory"], 64 << 20);
    assert_eq!(body["state"], "Pending");
    let (status, _) = f
        .call(Method::PUT, "/api/v1/models/m1", f.spec("\"64Mi\""))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = f
        .call(Method::GET, "/internal/v1/route/m1", Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"model": "m1", "replica": "r0", "address": "127.0.0.1:8000",
                           "grpcAddress": "127.0.0.1:8001",
                           "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]})
    );
    let (status, table) = f
        .call(Method::GET, "/internal/v1/table?waitMs=0", Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(table["models"][0]["model"], "m1");
    assert!(table["generation"].as_u64().unwrap() > 0);

    let (_, body) = f
        .call(Method::GET, "/api/v1/models/m1", Body::empty())
        .await;
    assert_eq!(body["state"], "Loaded");
    assert_eq!(body["replicas"], serde_json::json!(["r0"]));

    let (_, body) = f.call(Method::GET, "/api/v1/replicas", Body::empty()).await;
    assert_eq!(body["replicas"][0]["usedBytes"], 64 << 20);
    assert_eq!(body["replicas"][0]["models"], serde_json::json!(["m1"]));

    let (status, body) = f
        .call(Method::DELETE, "/api/v1/models/m1", Body::empty())
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"deleted": "m1"}))
    );
    let (status, _) = f
        .call(Method::GET, "/api/v1/models/m1", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let f = fixture().await;
    let (status, _) = f
        .call(Method::PUT, "/api/v1/models/keep", f.spec("1024"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = f.registry().await;

    let good = f.spec("1024");
    let huge = format!(r#"{{"storageUri": "{}"}}"#, "a".repeat(MAX_SPEC_BYTES));
    let row = |method: Method, uri: &str, body: &str, want| {
        (method, uri.to_owned(), body.to_owned(), want)
    };
    let put = |path: &str, body: String, want| {
        (Method::PUT, format!("/api/v1/models/{path}"), body, want)
    };
    let cases: Vec<(Method, String, String, StatusCode)> = vec![
        put("m", "{".into(), StatusCode::BAD_REQUEST),
        put("m", "".into(), StatusCode::BAD_REQUEST),
        put("m", "null".into(), StatusCode::BAD_REQUEST),
        put("m", f.spec("\"12Qi\""), StatusCode::BAD_REQUEST),
        put("m", f.spec("-1"), StatusCode::BAD_REQUEST),
        put("m", f.spec("\"2Gi\""), StatusCode::BAD_REQUEST),
        put(
            "m",
            good.replace('}', r#", "x": 1}"#),
            StatusCode::BAD_REQUEST,
        ),
        put(
            "m",
            r#"{"storageUri": "file:///etc/../tmp"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        put(
            "m",
            r#"{"storageUri": "s3://b/m"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        put("m", huge, StatusCode::PAYLOAD_TOO_LARGE),
        put("..", good.clone(), StatusCode::BAD_REQUEST),
        put(".hidden", good.clone(), StatusCode::BAD_REQUEST),
        put("a%2Fb", good.clone(), StatusCode::BAD_REQUEST),
        put("mod%C3%A8le", good.clone(), StatusCode::BAD_REQUEST),
        put("%FF", good.clone(), StatusCode::BAD_REQUEST),
        put(&"a".repeat(129), good.clone(), StatusCode::BAD_REQUEST),
        put("keep", "{}".into(), StatusCode::BAD_REQUEST),
        (
            Method::POST,
            "/api/v1/models/m".into(),
            good.clone(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PATCH,
            "/api/v1/models".into(),
            "".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::DELETE,
            "/api/v1/models/ghost".into(),
            "".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/api/v1/models/a%2F..".into(),
            "".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/v1/models/ghost".into(),
            "".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/v1/models?limit=0".into(),
            "".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/v1/models?limit=x".into(),
            "".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/v1/models?bogus=1".into(),
            "".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/v1/nothing".into(),
            "".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/internal/v1/route/ghost".into(),
            "".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/internal/v1/route/..".into(),
            "".into(),
            StatusCode::BAD_REQUEST,
        ),
        row(
            Method::POST,
            "/internal/v1/usage",
            "{}",
            StatusCode::BAD_REQUEST,
        ),
        row(
            Method::POST,
            "/internal/v1/usage",
            r#"{"reporter":"","entries":[]}"#,
            StatusCode::BAD_REQUEST,
        ),
        row(
            Method::GET,
            "/internal/v1/usage",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        row(
            Method::GET,
            "/internal/v1/table?waitMs=30001",
            "",
            StatusCode::BAD_REQUEST,
        ),
        row(
            Method::GET,
            "/internal/v1/table?since=-1",
            "",
            StatusCode::BAD_REQUEST,
        ),
        row(
            Method::GET,
            "/internal/v1/table?x=1",
            "",
            StatusCode::BAD_REQUEST,
        ),
        row(
            Method::POST,
            "/internal/v1/failure",
            r#"{"model":"keep"}"#,
            StatusCode::BAD_REQUEST,
        ),
        row(
            Method::POST,
            "/internal/v1/failure",
            r#"{"model":"..","replica":"r0","kind":"unreachable"}"#,
            StatusCode::BAD_REQUEST,
        ),
        put(
            "m",
            good.replace('}', r#", "minCopies": 3, "maxCopies": 3}"#),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, uri, body, want) in cases {
        let (status, json) = f.call(method.clone(), &uri, body).await;
        assert_eq!(status, want, "{method} {uri}: {json}");
        let message = json["error"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty(),
            "{method} {uri}: no JSON error in {json}"
        );
    }
    assert_eq!(
        f.registry().await,
        before,
        "bad requests changed the registry"
    );
}

#[tokio::test]
async fn serves_metrics_and_health() {
    let f = fixture().await;
    let (status, body) = f.call(Method::GET, "/healthz", Body::empty()).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = f.app.clone().oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        text.contains("mm_replica_capacity_bytes{replica=\"r0\",resource=\"memory\"} 1073741824"),
        "{text}"
    );
    assert!(
        text.contains("mm_replica_healthy{replica=\"r0\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn paging_returns_a_next_token() {
    let f = fixture().await;
    for name in ["a", "b", "c"] {
        f.call(Method::PUT, &format!("/api/v1/models/{name}"), f.spec("1"))
            .await;
    }
    let (_, body) = f
        .call(Method::GET, "/api/v1/models?limit=2", Body::empty())
        .await;
    assert_eq!(body["models"].as_array().unwrap().len(), 2);
    assert_eq!(body["next"], "b");
    let (_, body) = f
        .call(Method::GET, "/api/v1/models?limit=2&after=b", Body::empty())
        .await;
    assert_eq!(body["models"][0]["name"], "c");
    assert_eq!(body["next"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_configured_token_guards_mutating_calls_only() {
    let f = fixture_with_token(Some("s3cret")).await;
    let request = |method: Method, uri: &str, auth: Option<&str>, body: String| {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::from(body)).unwrap()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Bearer s3cret "),
    ] {
        let r = f
            .app
            .clone()
            .oneshot(request(Method::PUT, "/api/v1/models/m", auth, f.spec("1")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    let r = f
        .app
        .clone()
        .oneshot(request(
            Method::PUT,
            "/api/v1/models/m",
            Some("Bearer s3cret"),
            f.spec("1"),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (status, _) = f.call(Method::GET, "/api/v1/models/m", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "reads need no token");
    let (status, body) = f
        .call(Method::DELETE, "/api/v1/models/m", Body::empty())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
}

#[tokio::test]
async fn events_are_listed_paged_and_bounded() {
    let f = fixture().await;
    f.call(Method::PUT, "/api/v1/models/m1", f.spec("\"64Mi\""))
        .await;
    f.call(Method::GET, "/internal/v1/route/m1", Body::empty())
        .await;
    let (status, body) = f.call(Method::GET, "/api/v1/events", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kinds: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["model"] == "m1")
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["registered", "placed", "loaded"], "{body}");
    let loaded = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "loaded")
        .unwrap();
    assert_eq!(loaded["replica"], "r0");
    assert_eq!(loaded["bytes"], 64 << 20);
    assert!(loaded["seconds"].as_f64().is_some(), "{loaded}");

    let last = body["next"].as_u64().unwrap();
    let (_, page) = f
        .call(
            Method::GET,
            &format!("/api/v1/events?after={}&limit=1", last - 2),
            Body::empty(),
        )
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["seq"], last - 1);
    assert_eq!(page["next"], last - 1);
    for bad in ["limit=0", "limit=1001", "after=x", "nope=1"] {
        let (status, body) = f
            .call(Method::GET, &format!("/api/v1/events?{bad}"), Body::empty())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn the_event_stream_replays_after_a_sequence_number() {
    use futures::StreamExt;
    let f = fixture().await;
    f.call(Method::PUT, "/api/v1/models/m1", f.spec("\"64Mi\""))
        .await;
    let request = Request::builder()
        .uri("/api/v1/events/stream?after=0")
        .body(Body::empty())
        .unwrap();
    let response = f.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("registered") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("id: 1"), "{text}");
    assert!(text.contains("data: {"), "{text}");
}

#[tokio::test]
async fn the_summary_counts_route_calls_and_loads() {
    let f = fixture().await;
    f.call(Method::PUT, "/api/v1/models/m1", f.spec("\"64Mi\""))
        .await;
    f.call(Method::GET, "/internal/v1/route/m1", Body::empty())
        .await;
    f.call(Method::GET, "/internal/v1/route/m1", Body::empty())
        .await;
    let (status, body) = f.call(Method::GET, "/api/v1/summary", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let m = &body["metrics"];
    assert_eq!(m["routeCalls"]["miss"], 1, "{body}");
    assert_eq!(m["routeCalls"]["hit"], 1, "{body}");
    assert_eq!(m["loads"], 1);
    assert_eq!(m["loadSeconds"]["count"], 1);
    assert_eq!(m["hitRate"], 0.5);
    assert_eq!(m["modelsRegistered"], 1);
    assert_eq!(body["watermarks"]["high"], 0.8);
    assert_eq!(
        body["eviction"],
        serde_json::json!({"policy": "lru"}),
        "{body}"
    );
    assert_eq!(body["events"]["capacity"], 1000);
}

#[tokio::test]
async fn replicas_drain_and_undrain_with_the_token() {
    let f = fixture_with_token(Some("s3cret")).await;
    let call = |method: Method, uri: &str, auth: Option<&str>| {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let request = b.body(Body::empty()).unwrap();
        let app = f.app.clone();
        async move {
            let r = app.oneshot(request).await.unwrap();
            let status = r.status();
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        }
    };
    let (status, _) = call(Method::POST, "/api/v1/replicas/r0/drain", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = Some("Bearer s3cret");
    let (status, body) = call(Method::POST, "/api/v1/replicas/r0/drain", auth).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["name"].clone(), body["draining"].clone()),
        ("r0".into(), true.into())
    );
    let (_, list) = call(Method::GET, "/api/v1/replicas", None).await;
    assert_eq!(list["replicas"][0]["draining"], true);
    let (status, body) = call(Method::POST, "/api/v1/replicas/r9/drain", auth).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("r9"));
    let (status, _) = call(Method::GET, "/api/v1/replicas/r0/drain", auth).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = call(Method::POST, "/api/v1/replicas/r0/undrain", auth).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["draining"], false);
    let (_, events) = call(Method::GET, "/api/v1/events", None).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| k.contains("drain"))
        .collect();
    assert_eq!(kinds, ["drained", "undrained"]);
}

#[tokio::test]
async fn serves_the_status_page() {
    let f = fixture().await;
    for (path, kind, needle) in [
        ("/ui", "text/html", "/ui/app.js"),
        ("/ui/app.js", "text/javascript", "/api/v1/replicas"),
        ("/ui/style.css", "text/css", ".replica"),
    ] {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = f.app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(needle), "{path}");
    }
}

#[tokio::test]
async fn a_dry_run_says_what_a_registration_would_do_and_changes_nothing() {
    let f = fixture().await;
    let uri = "/api/v1/models/m1?dryRun=true";
    let (status, body) = f.call(Method::PUT, uri, f.spec("\"64Mi\"")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"dryRun": true, "result": "created"})
    );
    assert_eq!(f.registry().await["models"], serde_json::json!([]));
    let (status, body) = f
        .call(Method::PUT, uri, r#"{"storageUri": "ftp://x/m"}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = f
        .call(Method::PUT, "/api/v1/models/m1", f.spec("\"64Mi\""))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, body) = f.call(Method::PUT, uri, f.spec("\"64Mi\"")).await;
    assert_eq!(body["result"], "unchanged");
    let (_, body) = f.call(Method::PUT, uri, f.spec("\"32Mi\"")).await;
    assert_eq!(body["result"], "updated");
    let (_, view) = f
        .call(Method::GET, "/api/v1/models/m1", Body::empty())
        .await;
    assert_eq!(view["memory"], 64 << 20, "the dry run changed nothing");
    let (status, _) = f
        .call(Method::PUT, "/api/v1/models/m1?dryRun=maybe", f.spec("1"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_single_instance_says_it_is_the_sole_member() {
    let f = fixture().await;
    let (status, body) = f.call(Method::GET, "/api/v1/cluster", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let view: mm_wire::ClusterView = serde_json::from_value(body).unwrap();
    assert_eq!(view.role, mm_wire::ClusterRole::Sole);
    assert_eq!(view.store, "embedded (test)");
    assert_eq!(view.members, std::slice::from_ref(&view.instance));
    assert_eq!(view.leader, Some(view.instance));
}

#[tokio::test]
async fn the_metadata_call_answers_without_loading_and_refuses_bad_queries() {
    let f = fixture().await;
    let (status, _) = f
        .call(Method::PUT, "/api/v1/models/m1", f.spec("\"64Mi\""))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = f
        .call(
            Method::GET,
            "/internal/v1/metadata/m1?for=ready&grpc=true",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["standby"]["ready"], true, "{body}");
    assert_eq!(body["standby"]["grpcMessage"], "CAE=", "{body}");
    assert_eq!(
        body["standby"]["carrier"]["grpcAddress"], "127.0.0.1:8001",
        "{body}"
    );
    assert_eq!(
        f.fakes[0].loads.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "ready never loads"
    );
    for (uri, want) in [
        ("/internal/v1/metadata/m1", StatusCode::BAD_REQUEST),
        (
            "/internal/v1/metadata/m1?for=stats",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/internal/v1/metadata/m1?for=metadata&version=1a",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/internal/v1/metadata/m1?for=metadata&version=",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/internal/v1/metadata/m1?for=ready&grpc=maybe",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/internal/v1/metadata/..?for=ready",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/internal/v1/metadata/ghost?for=ready",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = f.call(Method::GET, uri, Body::empty()).await;
        assert_eq!(status, want, "{uri}: {body}");
        assert!(body["error"].is_string(), "{uri}: {body}");
    }
    assert!(f.fakes[0].loaded().is_empty(), "nothing loaded");
}
