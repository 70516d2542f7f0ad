//! The router against hostile input: forged and out-of-bounds gateway reports, the gateway
//! token, cross-origin and rebound browser requests, and clients that hang up mid-write.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tower::ServiceExt;

use super::tests::{fixture_with, Fixture};
use super::*;

/// Sends `request` through the router; the status and the JSON answer (Null if none).
async fn send(app: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn usage(entries: serde_json::Value) -> String {
    serde_json::json!({"reporter": "w1", "entries": entries}).to_string()
}

async fn metric(f: &Fixture, series: &str) -> f64 {
    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = f.app.clone().oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8_lossy(&bytes)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The admin views that a report must not change, without what moves by itself (idle
/// time, the smoothed request rate).
async fn views(f: &Fixture) -> (serde_json::Value, serde_json::Value) {
    let (_, mut models) = f.call(Method::GET, "/api/v1/models", Body::empty()).await;
    for m in models["models"].as_array_mut().unwrap() {
        let m = m.as_object_mut().unwrap();
        m.remove("idleSeconds");
        m.remove("requestRate");
    }
    let (_, replicas) = f.call(Method::GET, "/api/v1/replicas", Body::empty()).await;
    (models, replicas)
}

#[tokio::test]
async fn a_huge_in_flight_count_is_refused_and_the_views_keep_working() {
    let f = fixture_with(|_| {}).await;
    f.call(Method::PUT, "/api/v1/models/m", f.spec("1024"))
        .await;
    f.call(Method::GET, "/internal/v1/route/m", Body::empty())
        .await;
    let before = views(&f).await;
    // The report that panicked the debug build's scaler and views (issue 12, item 5).
    let huge = usage(serde_json::json!([
        {"model": "m", "replica": "r0", "requests": 1, "inFlight": u64::MAX},
    ]));
    let (status, body) = f.call(Method::POST, "/internal/v1/usage", huge).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("inFlight"),
        "{body}"
    );
    let requests = usage(serde_json::json!([
        {"model": "m", "replica": "r0", "requests": u64::MAX, "inFlight": 0},
    ]));
    let (status, _) = f.call(Method::POST, "/internal/v1/usage", requests).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    f.pool.scale_once();
    assert_eq!(views(&f).await, before, "a refused report changed the pool");
    assert_eq!(
        metric(
            &f,
            "mm_gateway_reports_ignored_total{report=\"usage\",reason=\"invalid\"}"
        )
        .await,
        2.0
    );

    // The largest counts allowed, from many reporters, for two replicas' worth of one
    // model: every sum saturates instead of wrapping or panicking.
    for w in 0..50 {
        let body = serde_json::json!({"reporter": format!("w{w}"), "entries": [
            {"model": "m", "replica": "r0", "requests": mm_wire::MAX_REPORTED_REQUESTS,
             "inFlight": mm_wire::MAX_REPORTED_IN_FLIGHT},
        ]});
        let (status, _) = f
            .call(Method::POST, "/internal/v1/usage", body.to_string())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    f.pool.scale_once();
    let (status, view) = f.call(Method::GET, "/api/v1/models/m", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["inFlight"], 50 * mm_wire::MAX_REPORTED_IN_FLIGHT);
    let (status, _) = f.call(Method::GET, "/api/v1/replicas", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn entries_for_unknown_models_or_replicas_are_ignored_and_counted() {
    let f = fixture_with(|_| {}).await;
    f.call(Method::PUT, "/api/v1/models/m", f.spec("1024"))
        .await;
    let before = views(&f).await;
    let report = usage(serde_json::json!([
        {"model": "ghost", "replica": "r0", "requests": 5, "inFlight": 3},
        {"model": "m", "replica": "r9", "requests": 5, "inFlight": 3},
        {"model": "../etc", "replica": "r0", "requests": 5, "inFlight": 3},
    ]));
    let (status, body) = f.call(Method::POST, "/internal/v1/usage", report).await;
    assert_eq!(
        (status, body["applied"].clone()),
        (StatusCode::OK, 0.into())
    );
    assert_eq!(views(&f).await, before);
    let ignored = |reason: &'static str| {
        format!("mm_gateway_reports_ignored_total{{report=\"usage\",reason=\"{reason}\"}}")
    };
    assert_eq!(metric(&f, &ignored("unknown_model")).await, 2.0);
    assert_eq!(metric(&f, &ignored("unknown_replica")).await, 1.0);

    // A failure claim about an unregistered model or an unknown replica costs no probe.
    for (model, replica) in [("ghost", "r0"), ("m", "r9")] {
        let claim = serde_json::json!({"model": model, "replica": replica, "kind": "unreachable"});
        let (status, _) = f
            .call(Method::POST, "/internal/v1/failure", claim.to_string())
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        metric(
            &f,
            "mm_gateway_reports_ignored_total{report=\"failure\",reason=\"unknown_model\"}"
        )
        .await,
        1.0
    );
    assert_eq!(views(&f).await, before);
}

#[tokio::test]
async fn internal_routes_need_the_gateway_token_when_one_is_set() {
    let f = fixture_with(|s| s.gateway_token = Some(Arc::from("g4te"))).await;
    f.call(Method::PUT, "/api/v1/models/m", f.spec("1024"))
        .await;
    let before = views(&f).await;
    let report = usage(serde_json::json!([
        {"model": "m", "replica": "r0", "requests": 5, "inFlight": 3},
    ]));
    let claim =
        serde_json::json!({"model": "m", "replica": "r0", "kind": "unreachable"}).to_string();
    let calls = [
        (Method::GET, "/internal/v1/route/m", String::new()),
        (Method::GET, "/internal/v1/route", String::new()),
        (Method::GET, "/internal/v1/table", String::new()),
        (Method::POST, "/internal/v1/usage", report.clone()),
        (Method::POST, "/internal/v1/failure", claim),
    ];
    for token in [None, Some(""), Some("wrong"), Some("g4te "), Some("G4TE")] {
        for (method, uri, body) in &calls {
            let mut b = Request::builder()
                .method(method.clone())
                .uri(*uri)
                .header("content-type", "application/json");
            if let Some(t) = token {
                b = b.header(mm_wire::GATEWAY_TOKEN_HEADER, t);
            }
            let (status, json) = send(&f.app, b.body(Body::from(body.clone())).unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} {token:?}");
            assert!(json["error"].as_str().unwrap().contains("gateway token"));
        }
    }
    assert_eq!(views(&f).await, before, "a refused call changed the pool");
    assert_eq!(
        metric(&f, "mm_internal_unauthorized_total").await,
        (5 * calls.len()) as f64
    );
    let with_token = |method: Method, uri: &str, body: String| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header(mm_wire::GATEWAY_TOKEN_HEADER, "g4te")
            .body(Body::from(body))
            .unwrap()
    };
    let (status, route) = send(
        &f.app,
        with_token(Method::GET, "/internal/v1/route/m", String::new()),
    )
    .await;
    assert_eq!(
        (status, route["replica"].clone()),
        (StatusCode::OK, "r0".into())
    );
    let (status, _) = send(
        &f.app,
        with_token(Method::POST, "/internal/v1/usage", report),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The admin API is not the gateway's: no gateway token needed there.
    let (status, _) = f.call(Method::GET, "/api/v1/models", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn browser_requests_from_elsewhere_are_refused() {
    let f = fixture_with(|s| s.allowed_hosts = Arc::from(vec!["pm.mm.svc".to_owned()])).await;
    f.call(Method::PUT, "/api/v1/models/m", f.spec("1024"))
        .await;
    let before = views(&f).await;
    let drain = "/api/v1/replicas/r0/drain";
    let request = |method: Method, uri: &str, headers: &[(&str, &str)]| {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    };
    let json = ("content-type", "application/json");
    let refused = [
        // A form or fetch with a CORS-safe type: no preflight, so it must be refused here.
        (
            request(Method::POST, drain, &[("content-type", "text/plain")]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            request(Method::POST, drain, &[]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            request(
                Method::PUT,
                "/api/v1/models/x",
                &[("content-type", "application/x-www-form-urlencoded")],
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        // Cross-origin, even with the right type.
        (
            request(
                Method::POST,
                drain,
                &[
                    json,
                    ("host", "127.0.0.1:9090"),
                    ("origin", "http://evil.example"),
                ],
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            request(
                Method::POST,
                drain,
                &[json, ("origin", "null"), ("host", "localhost:9090")],
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            request(
                Method::POST,
                drain,
                &[json, ("sec-fetch-site", "cross-site")],
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            request(
                Method::DELETE,
                "/api/v1/models/m",
                &[("sec-fetch-site", "same-site")],
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            request(
                Method::GET,
                "/internal/v1/route/m",
                &[
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "no-cors"),
                ],
            ),
            StatusCode::FORBIDDEN,
        ),
        // DNS rebinding: the page's own name in Host.
        (
            request(
                Method::POST,
                drain,
                &[json, ("host", "rebind.evil.example:9090")],
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            request(
                Method::GET,
                "/api/v1/models",
                &[("host", "rebind.evil.example")],
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            request(
                Method::GET,
                "/api/v1/models",
                &[
                    ("host", "rebind.evil.example"),
                    ("origin", "http://rebind.evil.example"),
                ],
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            request(
                Method::DELETE,
                "/api/v1/models/m",
                &[("host", "evil.example")],
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            request(Method::GET, "/ui", &[("host", "evil.example")]),
            StatusCode::FORBIDDEN,
        ),
        (
            request(Method::GET, "/metrics", &[("host", "evil.example")]),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (r, want) in refused {
        let what = format!("{} {} {:?}", r.method(), r.uri(), r.headers());
        let (status, body) = send(&f.app, r).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}"
        );
    }
    assert_eq!(views(&f).await, before, "a refused write changed the pool");

    let allowed = [
        request(Method::GET, "/api/v1/models", &[("host", "localhost:9090")]),
        request(Method::GET, "/api/v1/models", &[("host", "PM.mm.svc:9090")]),
        request(Method::GET, "/api/v1/models", &[("host", "[::1]:9090")]),
        request(Method::GET, "/api/v1/models", &[("host", "10.0.3.7:9090")]),
        // The status page's own fetches, and a link to it from another site.
        request(
            Method::GET,
            "/api/v1/replicas",
            &[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://127.0.0.1:9090"),
                ("sec-fetch-site", "same-origin"),
            ],
        ),
        request(
            Method::GET,
            "/ui",
            &[
                ("host", "localhost:9090"),
                ("sec-fetch-site", "cross-site"),
                ("sec-fetch-mode", "navigate"),
            ],
        ),
        // Liveness never depends on the name; the gateway's :authority is not a host name.
        request(Method::GET, "/healthz", &[("host", "anything")]),
        request(
            Method::GET,
            "/internal/v1/route/m",
            &[("host", "pool-manager")],
        ),
        request(
            Method::POST,
            "/api/v1/replicas/r0/undrain",
            &[
                json,
                ("host", "localhost:9090"),
                ("origin", "http://localhost:9090"),
            ],
        ),
        request(
            Method::DELETE,
            "/api/v1/models/m",
            &[("host", "127.0.0.1:9090")],
        ),
    ];
    for r in allowed {
        let what = format!("{} {} {:?}", r.method(), r.uri(), r.headers());
        let (status, body) = send(&f.app, r).await;
        assert!(status.is_success(), "{what}: {status} {body}");
    }
}

/// Waits (bounded, in the test's time) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Starts a 10 s load of `m` (holding the model's lock) and waits until it is under way.
async fn slow_load(f: &Fixture) -> tokio::task::JoinHandle<()> {
    f.fakes[0]
        .load_delay_ms
        .store(10_000, std::sync::atomic::Ordering::SeqCst);
    let pool = f.pool.clone();
    let load = tokio::spawn(async move {
        let _ = pool.route("m").await;
    });
    let pool = f.pool.clone();
    until("the load to start", || {
        pool.model("m")
            .is_ok_and(|m| m.state == crate::pool::ModelState::Loading)
    })
    .await;
    load
}

/// Sends `request` and hangs up after one second, long before the write can end.
async fn hang_up(f: &Fixture, request: Request<Body>) {
    let sent = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        f.app.clone().oneshot(request),
    )
    .await;
    assert!(sent.is_err(), "the write was expected to wait for the load");
}

#[tokio::test(start_paused = true)]
async fn a_delete_finishes_when_its_client_hangs_up() {
    let f = fixture_with(|_| {}).await;
    f.call(Method::PUT, "/api/v1/models/m", f.spec("1024"))
        .await;
    let load = slow_load(&f).await;
    let request = Request::builder()
        .method(Method::DELETE)
        .uri("/api/v1/models/m")
        .body(Body::empty())
        .unwrap();
    hang_up(&f, request).await;
    load.await.unwrap();
    let pool = f.pool.clone();
    until("the delete to finish", || pool.model("m").is_err()).await;
    let (status, _) = f.call(Method::GET, "/api/v1/models/m", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = f.call(Method::GET, "/api/v1/models", Body::empty()).await;
    assert_eq!(
        list["models"],
        serde_json::json!([]),
        "listed after its delete"
    );
    assert!(f.fakes[0].loaded().is_empty(), "the copy was unloaded");
}

#[tokio::test(start_paused = true)]
async fn an_update_applies_when_its_client_hangs_up() {
    let f = fixture_with(|_| {}).await;
    f.call(Method::PUT, "/api/v1/models/m", f.spec("1024"))
        .await;
    let load = slow_load(&f).await;
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/api/v1/models/m")
        .header("content-type", "application/json")
        .body(Body::from(f.spec("2048")))
        .unwrap();
    hang_up(&f, request).await;
    load.await.unwrap();
    let pool = f.pool.clone();
    until("the update to apply", || {
        pool.model("m").is_ok_and(|m| m.memory == 2048)
    })
    .await;
}

/// What schemathesis found against the OpenAPI document (scripts/fuzz-admin.sh).
#[tokio::test]
async fn answers_match_the_document_for_what_the_fuzzer_sent() {
    let f = fixture_with(|_| {}).await;
    let json = |method: Method, uri: &str, body: &'static [u8]| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let cases = [
        // A method no route has is 405 whatever the content type (it was 415).
        (
            Request::builder()
                .method(Method::PUT)
                .uri("/ui/app.js")
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Request::builder()
                .method(Method::POST)
                .uri("/api/v1/models/m")
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        // Drain takes no arguments: garbage is refused, nothing or {} is fine.
        (
            json(Method::POST, "/api/v1/replicas/r0/drain", b"\0"),
            StatusCode::BAD_REQUEST,
        ),
        (
            json(Method::POST, "/api/v1/replicas/r0/undrain", b"[1]"),
            StatusCode::BAD_REQUEST,
        ),
        (
            json(Method::POST, "/api/v1/replicas/r0/drain", b""),
            StatusCode::OK,
        ),
        (
            json(Method::POST, "/api/v1/replicas/r0/undrain", b" {} "),
            StatusCode::OK,
        ),
        (
            json(Method::POST, "/api/v1/replicas/r0/drain", b"null"),
            StatusCode::OK,
        ),
        // Sequence numbers are int64 in the document.
        (
            json(Method::GET, "/api/v1/events?after=9223372036854775808", b""),
            StatusCode::BAD_REQUEST,
        ),
        (
            json(Method::GET, "/api/v1/events?after=9223372036854775807", b""),
            StatusCode::OK,
        ),
        (
            json(
                Method::GET,
                "/internal/v1/table?since=9223372036854775808",
                b"",
            ),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (request, want) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, body) = send(&f.app, request).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(body.is_object(), "{what}: {body}");
    }
}
