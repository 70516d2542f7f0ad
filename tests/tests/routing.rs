//! The spine, end to end through real Envoy, the real filter, the real pool-manager and two
//! real Triton replicas: models load on first use, land where the pool-manager says, answer
//! correctly, unload on delete, and no client header can choose the upstream.

mod common;

use std::time::Duration;

use common::{assert_close, example, EXAMPLES};
use mm_tests::paths::example_model;
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_on_first_use_and_answer_from_the_replica_the_pool_manager_reports() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();

    for (model, memory) in EXAMPLES {
        let (status, body) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["state"], "Pending", "registering does not load");
    }
    for r in &stack.replicas {
        for (model, _) in EXAMPLES {
            assert!(
                !r.has_ready(model).await.unwrap(),
                "{model} loaded on {} before use",
                r.name
            );
        }
    }

    for (model, _) in EXAMPLES {
        let (body, output, want) = example(model);
        let response = stack.infer(model, &body).await.unwrap();
        assert_eq!(response.status, 200, "{model}: {}", response.text);
        assert_close(&response.output(output).unwrap(), &want, model);

        let (_, view) = stack
            .admin_call(Method::GET, &format!("/api/v1/models/{model}"), None)
            .await
            .unwrap();
        assert_eq!(view["state"], "Loaded", "{view}");
        let placed = view["replicas"][0].as_str().unwrap().to_owned();
        assert_eq!(
            response.replica.as_deref(),
            Some(placed.as_str()),
            "x-mm-replica"
        );
        for r in &stack.replicas {
            let ready = r.has_ready(model).await.unwrap();
            assert_eq!(
                ready,
                r.name == placed,
                "{model} READY on {}: {ready}",
                r.name
            );
        }
        // Triton counts an inference just after it answers: wait for it, then check
        // that exactly one was counted.
        let placed_replica = stack.replica(&placed).unwrap();
        let count = eventually(
            "the inference counted on the replica that served it",
            Duration::from_secs(10),
            || async {
                let count = placed_replica.inference_count(model).await?;
                Ok((count >= 1).then_some(count))
            },
        )
        .await
        .unwrap();
        assert_eq!(count, 1, "{model} on {placed}");
    }

    // Worst-fit placement spreads the three models over both replicas, and the replica
    // view accounts their declared memory.
    let (_, replicas) = stack
        .admin_call(Method::GET, "/api/v1/replicas", None)
        .await
        .unwrap();
    let replicas = replicas["replicas"].as_array().unwrap().clone();
    assert_eq!(replicas.len(), 2);
    let used: u64 = replicas
        .iter()
        .map(|r| r["usedBytes"].as_u64().unwrap())
        .sum();
    assert_eq!(used, (32 + 64 + 48) << 20);
    assert!(
        replicas
            .iter()
            .all(|r| !r["models"].as_array().unwrap().is_empty()),
        "{replicas:?}"
    );
    assert!(replicas.iter().all(|r| r["healthy"] == true));

    // The other V2 model routes, with and without a version.
    let (body, output, want) = example("linear");
    let versioned = stack
        .gateway_call(
            Method::POST,
            "/v2/models/linear/versions/1/infer",
            Some(&body),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(versioned.status, 200, "{}", versioned.text);
    assert_close(&versioned.output(output).unwrap(), &want, "versioned infer");
    let metadata = stack
        .gateway_call(Method::GET, "/v2/models/linear", None, &[])
        .await
        .unwrap();
    assert_eq!(
        (metadata.status, &metadata.json["name"]),
        (200, &serde_json::json!("linear"))
    );
    let ready = stack
        .gateway_call(Method::GET, "/v2/models/linear/ready", None, &[])
        .await
        .unwrap();
    assert_eq!(ready.status, 200);

    // Server-level routes go to any healthy replica.
    let health = stack
        .gateway_call(Method::GET, "/v2/health/ready", None, &[])
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    assert!(health.replica.is_some());
    let server = stack
        .gateway_call(Method::GET, "/v2", None, &[])
        .await
        .unwrap();
    assert_eq!(server.status, 200);
    assert_eq!(server.json["name"], "triton");

    // KServe V1 predict is routed to the model's replica (and translated; see data_path.rs).
    let (_, view) = stack
        .admin_call(Method::GET, "/api/v1/models/linear", None)
        .await
        .unwrap();
    let v1 = stack
        .gateway_call(
            Method::POST,
            "/v1/models/linear:predict",
            Some(&serde_json::json!({"instances": [[1, 2, 3, 4]]})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(v1.status, 200, "{}", v1.text);
    assert_eq!(
        v1.replica.as_deref(),
        view["replicas"][0].as_str(),
        "{}",
        v1.text
    );

    // Deleting a model unloads it from its replica and it stops routing.
    let placed = view["replicas"][0].as_str().unwrap().to_owned();
    let (status, _) = stack
        .admin_call(Method::DELETE, "/api/v1/models/linear", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let replica = stack.replica(&placed).unwrap();
    eventually(
        "linear unloaded from its replica",
        Duration::from_secs(20),
        || async { Ok((!replica.has_ready("linear").await?).then_some(())) },
    )
    .await
    .unwrap();
    // Every gateway worker drops the model from its table within a refresh period
    // (200 ms); until then a request may still reach the replica and get Triton's own 404.
    let gone = eventually(
        "the gateway forgot linear",
        Duration::from_secs(5),
        || async {
            let r = stack.infer("linear", &body).await?;
            let ours = r.json["error"]
                .as_str()
                .is_some_and(|e| e.contains("not registered"));
            Ok((r.status == 404 && ours).then_some(r))
        },
    )
    .await
    .unwrap();
    assert_eq!(gone.status, 404, "{}", gone.text);
    let (_, replicas) = stack
        .admin_call(Method::GET, "/api/v1/replicas", None)
        .await
        .unwrap();
    let used: u64 = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["usedBytes"].as_u64().unwrap())
        .sum();
    assert_eq!(used, (64 + 48) << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_the_upstream() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let (status, _) = stack
        .register("linear", &example_model("linear"), "32Mi")
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (body, output, want) = example("linear");
    let first = stack.infer("linear", &body).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    let home = first.replica.clone().unwrap();
    let other = stack.replicas.iter().find(|r| r.name != home).unwrap();

    // Point the spoofed header at the other replica, at the pool-manager's admin API, and at
    // Envoy's own admin port: the request still goes where the filter decided.
    let targets = [
        format!("127.0.0.1:{}", other.http_port),
        format!("127.0.0.1:{}", stack.pool_manager.port),
        format!("127.0.0.1:{}", stack.envoy.admin_port),
    ];
    for target in &targets {
        let spoofed = stack
            .gateway_call(
                Method::POST,
                "/v2/models/linear/infer",
                Some(&body),
                &[
                    ("x-envoy-original-dst-host", target),
                    ("x-mm-replica", "spoofed"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(spoofed.status, 200, "spoof to {target}: {}", spoofed.text);
        assert_eq!(
            spoofed.replica.as_deref(),
            Some(home.as_str()),
            "spoof to {target}"
        );
        assert_close(&spoofed.output(output).unwrap(), &want, "spoofed request");
    }
    assert_eq!(other.inference_count("linear").await.unwrap(), 0);
    assert!(!other.has_ready("linear").await.unwrap());
    // Triton counts an inference just after it answers: wait for the last one's.
    let home_replica = stack.replica(&home).unwrap();
    let want_count = 1 + targets.len() as u64;
    let count = eventually(
        "every spoofed request counted on the home replica",
        Duration::from_secs(10),
        || async {
            let count = home_replica.inference_count("linear").await?;
            Ok((count >= want_count).then_some(count))
        },
    )
    .await
    .unwrap();
    assert_eq!(count, want_count);

    // Neither the admin API nor Triton's repository API is reachable through the gateway,
    // whatever header the client adds.
    for path in [
        "/api/v1/models",
        "/v2/repository/index",
        "/v2/repository/models/linear/unload",
        "/internal/v1/route/linear",
    ] {
        let r = stack
            .gateway_call(
                Method::POST,
                path,
                None,
                &[("x-envoy-original-dst-host", &targets[1])],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert!(r.json["error"].is_string(), "{path}: {}", r.text);
    }
    assert!(
        home_replica.has_ready("linear").await.unwrap(),
        "the unload attempt did nothing"
    );
}
