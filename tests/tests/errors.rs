//! Error answers through the real gateway: each is JSON `{"error": ...}` with a fitting
//! status, from the filter (bad paths), the pool-manager (unknown model, failed load), or
//! the filter on the pool-manager's behalf (unreachable).

mod common;

use common::example;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_fitting_statuses() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    let (body, _, _) = example("linear");

    let cases: [(&str, u16, &str); 7] = [
        ("/v2/models/ghost/infer", 404, "not registered"),
        ("/v2/models/..%2Fetc/infer", 400, "invalid model name"),
        ("/v2/models/a%20b/infer", 400, "invalid model name"),
        (
            "/v2/models/linear/versions/x/infer",
            400,
            "invalid model version",
        ),
        ("/v2/repository/index", 404, "no route"),
        ("/metrics", 404, "no route"),
        ("/v2/models/linear/stats", 404, "no route"),
    ];
    for (path, status, message) in cases {
        let r = stack
            .gateway_call(Method::POST, path, Some(&body), &[])
            .await
            .unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.text);
        let error = r.json["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(message),
            "{path}: {error:?} lacks {message:?}"
        );
    }

    // A model whose load fails: 503 with Triton's reason, and the admin API shows why.
    let broken = mm_tests::models::broken(stack.dir.path()).unwrap();
    let (status, _) = stack.register("broken", &broken, "16Mi").await.unwrap();
    assert_eq!(status, 201);
    let r = stack.infer("broken", &body).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    let error = r.json["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("failed to load"), "{error}");
    assert!(
        error.contains("weights.json is missing"),
        "Triton's reason is passed on: {error}"
    );
    let (_, view) = stack
        .admin_call(Method::GET, "/api/v1/models/broken", None)
        .await
        .unwrap();
    assert_eq!(view["state"], "Failed");
    assert!(
        view["lastError"]
            .as_str()
            .unwrap()
            .contains("weights.json is missing"),
        "{view}"
    );
    // Asked again within the backoff: the same reason, no second load.
    let again = stack.infer("broken", &body).await.unwrap();
    assert_eq!(again.status, 503);
    assert!(
        again.json["error"]
            .as_str()
            .unwrap()
            .contains("next attempt in"),
        "{}",
        again.text
    );

    // The pool-manager gone: a clear 503 from the filter, not a hang or a bare 5xx.
    stack.pool_manager.process.kill();
    let (status, _) = stack
        .register("linear", std::path::Path::new("/nowhere"), "1Mi")
        .await
        .map_or((0, serde_json::Value::Null), |r| r);
    assert_eq!(status, 0, "the admin API is down");
    let r = stack.infer("xor_mlp", &body).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["error"], "pool-manager unreachable");
}
