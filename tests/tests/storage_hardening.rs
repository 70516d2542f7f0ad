//! Storage URIs as an attacker or a careless user writes them, through the real stack:
//! a pre-signed URI with user info never shows its secrets anywhere a client or an operator
//! can read (gateway answers, admin views, events, mmctl, the pool-manager's and Envoy's
//! logs); a pull may not reach loopback addresses unless the pool-manager allows private
//! storage, and never follows a redirect to another host (issue 12, items 8 and 11).

mod common;

use std::time::Duration;

use common::{example, mmctl};
use mm_tests::paths::example_model;
use mm_tests::process::free_port;
use mm_tests::servers::{archives, FileServer, RedirectServer};
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::{json, Value};

const SECRETS: [&str; 3] = ["leakuser", "leakpass", "leaksig"];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

async fn put(stack: &Stack, name: &str, spec: Value) -> (u16, Value) {
    stack
        .admin_call(
            Method::PUT,
            &format!("/api/v1/models/{name}"),
            Some(spec.to_string()),
        )
        .await
        .unwrap()
}

async fn get(stack: &Stack, path: &str) -> Value {
    stack.admin_call(Method::GET, path, None).await.unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_storage_uris_never_leave_the_stored_spec_and_redirects_stay_on_host() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let web = FileServer::start(&served, dir.path()).await.unwrap();
    web.publish(
        "linear.zip",
        &archives::zip_of(&example_model("linear")).unwrap(),
    )
    .unwrap();
    // The same server under another host name: a redirect there leaves the host.
    let elsewhere = format!("http://localhost:{}/linear.zip", web.port);
    let redirect = RedirectServer::start(&elsewhere, dir.path()).await.unwrap();
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "1Gi".into(),
        pool_manager_args: vec!["--allow-private-storage".into()],
        ..StackOptions::default()
    })
    .await
    .unwrap();

    // A pre-signed URL with user info, on a port nothing listens on: the pull really
    // happens and fails (connection refused), which is where URLs used to leak.
    let dead = free_port().unwrap();
    let uri =
        format!("https://leakuser:leakpass@127.0.0.1:{dead}/x.tar.gz?X-Amz-Signature=leaksig");
    let (status, view) = put(
        &stack,
        "presigned",
        json!({"storageUri": uri, "memory": "32Mi"}),
    )
    .await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(
        view["storageUri"],
        format!("https://REDACTED@127.0.0.1:{dead}/x.tar.gz?REDACTED")
    );
    let (body, _, _) = example("linear");
    let r = stack.infer("presigned", &body).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        r.text
            .contains("failed to load: pulling https://REDACTED@127.0.0.1"),
        "{}",
        r.text
    );
    assert_no_secret("the gateway's 503", &r.text);

    // A malformed URI with secrets is refused without echoing them.
    let (status, refused) = put(
        &stack,
        "malformed",
        json!({"storageUri": "https://leakuser:leakpass@/x.zip?leaksig"}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_no_secret("a refused registration", &refused.to_string());

    // A redirect to another host is refused, and the other host sees no request.
    let (status, _) = put(
        &stack,
        "redirected",
        json!({"storageUri": redirect.url("linear.zip"), "memory": "32Mi"}),
    )
    .await;
    assert_eq!(status, 201);
    let r = stack.infer("redirected", &body).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        r.text.contains("redirected to localhost") && r.text.contains("only on the same host"),
        "{}",
        r.text
    );
    let served_log = std::fs::read_to_string(web.process.log_path()).unwrap();
    assert!(!served_log.contains("GET /linear.zip"), "{served_log}");

    // Everything an operator reads.
    let model = get(&stack, "/api/v1/models/presigned").await;
    assert_eq!(model["state"], "Failed", "{model}");
    assert!(model["lastError"]
        .as_str()
        .unwrap_or_default()
        .contains("https://REDACTED@127.0.0.1"));
    let url = stack.pool_manager.url("");
    let mut shown = vec![
        ("GET /api/v1/models/presigned", model.to_string()),
        (
            "GET /api/v1/models",
            get(&stack, "/api/v1/models").await.to_string(),
        ),
        (
            "GET /api/v1/events",
            get(&stack, "/api/v1/events?limit=1000").await.to_string(),
        ),
    ];
    for args in [
        vec!["models", "get", "presigned"],
        vec!["-o", "json", "models", "get", "presigned"],
        vec!["models", "list"],
        vec!["events", "--limit", "1000"],
    ] {
        let run = mmctl(&url, &args, None).await;
        assert_eq!(run.code, 0, "mmctl {args:?}: {run:?}");
        shown.push(("mmctl", format!("{}{}", run.stdout, run.stderr)));
    }
    let get_run = mmctl(&url, &["models", "get", "presigned"], None).await;
    assert!(
        get_run.stdout.contains("https://REDACTED@127.0.0.1"),
        "{get_run:?}"
    );
    for (what, text) in &shown {
        assert_no_secret(what, text);
    }
    // The logs, once the failure has certainly been logged.
    let log = stack.pool_manager.process.log_path().to_path_buf();
    eventually(
        "the pull failure in the log",
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&log)?;
            Ok(text.contains("model pull failed").then_some(()))
        },
    )
    .await
    .unwrap();
    assert_no_secret(
        "the pool-manager's log",
        &std::fs::read_to_string(&log).unwrap(),
    );
    assert_no_secret(
        "Envoy's log",
        &std::fs::read_to_string(stack.envoy.process.log_path()).unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allow_private_storage_a_pull_cannot_reach_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let web = FileServer::start(&served, dir.path()).await.unwrap();
    let good = web
        .publish(
            "linear.zip",
            &archives::zip_of(&example_model("linear")).unwrap(),
        )
        .unwrap();
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "1Gi".into(),
        pool_manager_args: Vec::new(),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let (body, _, _) = example("linear");
    let by_name = format!("http://localhost:{}/linear.zip", web.port);
    for (name, uri) in [("by-address", good.as_str()), ("by-name", by_name.as_str())] {
        let (status, _) = put(&stack, name, json!({"storageUri": uri, "memory": "32Mi"})).await;
        assert_eq!(status, 201);
        let r = stack.infer(name, &body).await.unwrap();
        assert_eq!(r.status, 503, "{name}: {}", r.text);
        for want in ["refused:", "a loopback address", "--allow-private-storage"] {
            assert!(r.text.contains(want), "{name}: {want:?} not in {}", r.text);
        }
        let view = get(&stack, &format!("/api/v1/models/{name}")).await;
        assert_eq!(view["state"], "Failed", "{view}");
    }
    assert_eq!(
        stack
            .pool_manager
            .metric_where("mm_storage_pull_failures_total", "reason=\"refused\"")
            .await
            .unwrap(),
        2.0
    );
    // The server was never asked for the archive.
    let served_log = std::fs::read_to_string(web.process.log_path()).unwrap();
    assert!(!served_log.contains("GET /linear.zip"), "{served_log}");
}
