//! Replica discovery by DNS, locally: Triton replicas on different loopback addresses and
//! the same ports, named `triton-{i}.pool.test` in a hosts file the pool-manager reads
//! (`--hosts-file`), as the pods of a StatefulSet behind a headless Service are named.
//! Scaling up, scaling down and a pod coming back on a new address are followed without a
//! restart of the pool-manager.

mod common;

use std::time::Duration;

use common::{assert_close, example};
use mm_tests::paths::example_model;
use mm_tests::process::free_port;
use mm_tests::stack::eventually;
use mm_tests::{Envoy, PoolManager, Stack, Triton};
use reqwest::Method;
use serde_json::Value;

fn write_hosts(path: &std::path::Path, entries: &[(&str, &str)]) {
    let text: String = entries
        .iter()
        .map(|(ip, name)| format!("{ip} {name}.pool.test\n"))
        .collect();
    // Write then rename: the pool-manager never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn replica_view(stack: &Stack, name: &str) -> Value {
    let (_, replicas) = stack
        .admin_call(Method::GET, "/api/v1/replicas", None)
        .await
        .unwrap();
    replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_health(stack: &Stack, name: &str, healthy: bool) {
    eventually(
        &format!("{name} healthy={healthy}"),
        Duration::from_secs(15),
        || async { Ok((replica_view(stack, name).await["healthy"] == healthy).then_some(())) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_discovered_by_name_and_followed_as_they_scale() {
    let dir = tempfile::Builder::new()
        .prefix("mm-dns-")
        .tempdir()
        .unwrap();
    let repository = dir.path().join("model-repository");
    std::fs::create_dir_all(&repository).unwrap();
    let hosts = dir.path().join("hosts");
    let ports = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );

    // One pod exists so far.
    let mut t0 = Triton::spawn_at("triton-0", "127.0.0.2", ports, &repository, dir.path()).unwrap();
    t0.wait_ready().await.unwrap();
    write_hosts(&hosts, &[("127.0.0.2", "triton-0")]);
    let args: Vec<String> = vec![
        "--replica-dns".into(),
        format!(
            "prefix=triton,service=pool.test,port={},grpcPort={},memory=1Gi,count=3",
            ports.0, ports.1
        ),
        "--hosts-file".into(),
        hosts.display().to_string(),
        "--probe-interval".into(),
        "300ms".into(),
    ];
    let mut pool_manager = PoolManager::spawn(&repository, &[], &args, dir.path()).unwrap();
    pool_manager.wait_ready().await.unwrap();
    let mut envoy = Envoy::spawn(pool_manager.port, dir.path()).unwrap();
    envoy.wait_ready().await.unwrap();
    let mut stack = Stack {
        envoy,
        gateway_token: None,
        pool_manager,
        replicas: vec![t0],
        repository,
        http: reqwest::Client::new(),
        dir,
    };

    assert_eq!(replica_view(&stack, "triton-0").await["healthy"], true);
    assert_eq!(
        replica_view(&stack, "triton-1").await["healthy"],
        false,
        "no pod yet"
    );
    let (status, _) = stack
        .register("linear", &example_model("linear"), "32Mi")
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (body, out, want) = example("linear");
    let r = stack.infer("linear", &body).await.unwrap();
    assert_eq!(
        (r.status, r.replica.as_deref()),
        (200, Some("triton-0")),
        "{}",
        r.text
    );

    // Scale up: triton-1 appears.
    let mut t1 = Triton::spawn_at(
        "triton-1",
        "127.0.0.3",
        ports,
        &stack.repository,
        stack.dir.path(),
    )
    .unwrap();
    t1.wait_ready().await.unwrap();
    stack.replicas.push(t1);
    write_hosts(
        &hosts,
        &[("127.0.0.2", "triton-0"), ("127.0.0.3", "triton-1")],
    );
    wait_health(&stack, "triton-1", true).await;
    assert_eq!(
        replica_view(&stack, "triton-1").await["address"],
        format!("127.0.0.3:{}", ports.0)
    );
    // The new replica takes the next model (it has the most free memory).
    let (status, _) = stack
        .register("xor_mlp", &example_model("xor_mlp"), "64Mi")
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (xor, xor_out, xor_want) = example("xor_mlp");
    let r = stack.infer("xor_mlp", &xor).await.unwrap();
    assert_eq!(
        (r.status, r.replica.as_deref()),
        (200, Some("triton-1")),
        "{}",
        r.text
    );
    assert_close(
        &r.output(xor_out).unwrap(),
        &xor_want,
        "xor_mlp on the new replica",
    );

    // Scale down: triton-0's pod and name go away; linear moves to triton-1.
    stack.replicas[0].process.kill();
    write_hosts(&hosts, &[("127.0.0.3", "triton-1")]);
    wait_health(&stack, "triton-0", false).await;
    let moved = stack
        .infer_until_ok(
            "linear served by triton-1",
            "linear",
            &body,
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert_eq!(moved.replica.as_deref(), Some("triton-1"));
    assert_close(
        &moved.output(out).unwrap(),
        &want,
        "linear after the scale-down",
    );

    // triton-0 comes back on another address: followed without a restart.
    let mut back = Triton::spawn_at(
        "triton-0",
        "127.0.0.4",
        ports,
        &stack.repository,
        stack.dir.path(),
    )
    .unwrap();
    back.wait_ready().await.unwrap();
    stack.replicas[0] = back;
    write_hosts(
        &hosts,
        &[("127.0.0.4", "triton-0"), ("127.0.0.3", "triton-1")],
    );
    wait_health(&stack, "triton-0", true).await;
    assert_eq!(
        replica_view(&stack, "triton-0").await["address"],
        format!("127.0.0.4:{}", ports.0)
    );
}
