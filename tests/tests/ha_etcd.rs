//! The full stack (a real 3-member etcd, two Triton replicas, two pool-manager instances,
//! Envoy with the filter) under steady warm load while etcd loses members: with one member
//! lost (etcd's own leader) users see nothing, admin writes and cold loads work; with two
//! lost (no quorum) every warm request is still served from the tables the instances
//! keep (a gateway started then too), every instance answers route calls for loaded
//! models from that table, admin writes get a clear 503 on every instance and a cold
//! request is held for the route wait, then refused with a clear 503; when quorum returns an instance leads
//! again, writes work and cold requests load. Every warm request is counted: none fails.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::example;
use mm_tests::ha::{HaOptions, HaStack, WarmLoad};
use mm_tests::paths::example_model;
use mm_tests::stack::eventually;
use mm_tests::Envoy;
use mm_wire::ClusterRole;

const TTL: Duration = Duration::from_secs(3);
/// How long an instance holds a route call while no instance leads (`--route-wait`).
const ROUTE_WAIT: Duration = Duration::from_secs(5);
/// Models with warm traffic all along.
const WARM: [&str; 2] = ["linear", "anomaly"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_no_etcd_member_loss_and_only_refused_writes_without_quorum() -> anyhow::Result<()>
{
    let mut stack = HaStack::start(HaOptions {
        lease_ttl: TTL,
        pool_manager_args: vec![format!("--route-wait={}s", ROUTE_WAIT.as_secs())],
        ..HaOptions::default()
    })
    .await?;
    let outcome = scenarios(&mut stack).await;
    if outcome.is_err() {
        let kept = std::mem::replace(
            &mut stack.dir,
            tempfile::Builder::new().prefix("mm-ha-gone-").tempdir()?,
        );
        eprintln!("logs kept in {}", kept.path().display());
        drop(stack);
        let _ = kept.keep();
    }
    outcome
}

async fn scenarios(stack: &mut HaStack) -> anyhow::Result<()> {
    let leader = stack.leader(TTL * 4).await?;
    for (i, name) in WARM.iter().enumerate() {
        stack.register(i, name, name).await?;
    }
    for name in ["cold-a", "cold-b", "cold-c"] {
        stack.register(leader, name, "linear").await?;
    }
    for model in WARM {
        let (body, _, _) = example(model);
        eventually(
            &format!("{model} warm"),
            Duration::from_secs(30),
            || async { Ok(infer(stack, model, &body).await?.0.eq(&200).then_some(())) },
        )
        .await?;
    }
    for i in 0..stack.instances.len() {
        eventually(
            &format!("pm-{i} to serve a table with the warm models"),
            TTL * 2,
            || async { Ok(serves_warm(stack, i).await?.then_some(())) },
        )
        .await?;
    }
    let warm: Vec<WarmLoad> = WARM
        .iter()
        .map(|m| WarmLoad::start(&stack.envoy.url(""), m, example(m).0))
        .collect();
    for load in &warm {
        load.wait_for("warm traffic running", 5).await?;
    }
    let run = async {
        let lost = one_member_lost_changes_nothing(stack, leader, &warm).await?;
        no_quorum_serves_warm_and_refuses_writes(stack, lost, &warm).await?;
        quorum_back_restores_writes_and_loads(stack, &warm).await
    };
    let result = run.await;
    let mut total = (0, 0);
    let mut failures = Vec::new();
    for load in warm {
        let outcome = load.stop().await;
        total.0 += outcome.ok;
        total.1 += outcome.failures.len();
        failures.extend(outcome.failures);
    }
    eprintln!(
        "warm requests: {} answered, {} failed",
        total.0 + total.1 as u64,
        total.1
    );
    result?;
    if !failures.is_empty() {
        bail!(
            "{} of {} warm requests failed: {:?}",
            failures.len(),
            total.0 + total.1 as u64,
            &failures[..failures.len().min(5)]
        );
    }
    // Nothing was loaded twice across it all: the leader after quorum adopted every copy.
    for model in WARM.iter().chain(["cold-a", "cold-b", "cold-c"].iter()) {
        let loads = stack.loads_of(model)?;
        if loads != 1 {
            bail!("{model} was loaded {loads} times");
        }
    }
    Ok(())
}

/// Kills etcd's own leader (the harder member to lose: etcd elects another): the same
/// pool-manager leads, registrations through either instance work, a cold request
/// loads, warm traffic continues. Returns the lost member.
async fn one_member_lost_changes_nothing(
    stack: &mut HaStack,
    leader: usize,
    warm: &[WarmLoad],
) -> anyhow::Result<usize> {
    let lost = stack.etcd.leader()?.context("etcd has a leader")?;
    let leader_id = stack.view(leader).await?.instance.id;
    stack.etcd.kill(lost);
    eprintln!(
        "etcd {} (etcd's leader) killed",
        stack.etcd.members[lost].name
    );
    for i in 0..stack.instances.len() {
        stack
            .register(i, &format!("one-lost-{i}"), "linear")
            .await?;
    }
    let (status, body) = infer(stack, "cold-a", &example("linear").0).await?;
    if status != 200 {
        bail!("a cold request with one etcd member lost: {status} {body}");
    }
    for load in warm {
        load.wait_for("warm traffic with one etcd member lost", 20)
            .await?;
    }
    for i in 0..stack.instances.len() {
        let v = stack.view(i).await?;
        if v.leader.as_ref().map(|l| &l.id) != Some(&leader_id) || !stack.ready(i).await? {
            bail!("one etcd member lost changed the pool-managers: pm-{i} sees {v:?}");
        }
    }
    Ok(lost)
}

/// Kills a second member: no quorum. Every instance stops leading and says so (no
/// leader, the store unreadable in its cluster view, not ready); admin
/// writes get 503 on every instance; each keeps serving its last routing table, so warm
/// traffic continues even once Envoy's health checks find no instance ready; a cold
/// request is held for the route wait, then refused with a clear 503.
async fn no_quorum_serves_warm_and_refuses_writes(
    stack: &mut HaStack,
    lost: usize,
    warm: &[WarmLoad],
) -> anyhow::Result<()> {
    let second = (lost + 1) % stack.etcd.members.len();
    stack.etcd.kill(second);
    eprintln!("etcd {} killed: no quorum", stack.etcd.members[second].name);
    let lost_at = Instant::now();
    for i in 0..stack.instances.len() {
        eventually(&format!("pm-{i} to know no leader"), TTL * 2, || async {
            let v = stack.view(i).await?;
            let told = v.role == ClusterRole::Follower
                && v.leader.is_none()
                && v.error.is_some()
                && !stack.ready(i).await?;
            Ok(told.then_some(()))
        })
        .await?;
    }
    eprintln!(
        "no pool-manager leads {:?} after quorum was lost",
        lost_at.elapsed()
    );
    for i in 0..stack.instances.len() {
        let (status, body) = register_status(stack, i, &format!("no-quorum-{i}")).await?;
        if status != 503 || !error_of(&body).contains("no pool-manager leads the pool") {
            bail!("pm-{i}: without quorum a registration gets a clear 503: {status} {body}");
        }
        if !serves_warm(stack, i).await? {
            bail!("pm-{i} stopped serving its last routing table without quorum");
        }
    }
    // Every instance fails its readiness check now; warm traffic must go on once Envoy's
    // health checks found none healthy (its panic mode still reaches them all).
    eventually(
        "Envoy to find no pool-manager instance healthy",
        Duration::from_secs(10),
        || async {
            let healthy = stack
                .envoy
                .stat("cluster.pool_managers.membership_healthy")
                .await?;
            Ok((healthy == 0).then_some(()))
        },
    )
    .await?;
    for load in warm {
        load.wait_for("warm traffic without quorum", 50).await?;
    }
    routes_from_every_instance(stack).await?;
    a_new_gateway_serves_warm_models(stack).await?;
    let started = Instant::now();
    let (status, body) = infer(stack, "cold-b", &example("linear").0).await?;
    let held = started.elapsed();
    if status != 503 || !error_of(&body).contains("no pool-manager could place the model") {
        bail!(
            "without quorum a cold request gets a clear 503 after the route wait: {status} {body}"
        );
    }
    eprintln!("a cold request without quorum: {status} after {held:?} (route wait {ROUTE_WAIT:?})");
    for load in warm {
        load.wait_for("warm traffic without quorum", 10).await?;
    }
    Ok(())
}

/// Without a leader every instance still answers the gateway's route calls for loaded
/// models (and for any replica) from the table it keeps, itself.
async fn routes_from_every_instance(stack: &HaStack) -> anyhow::Result<()> {
    let paths = [
        format!("{}{}", mm_wire::ROUTE_PATH_PREFIX, WARM[0]),
        mm_wire::ANY_REPLICA_PATH.to_owned(),
    ];
    for i in 0..stack.instances.len() {
        let id = stack.view(i).await?.instance.id;
        for path in &paths {
            let r = stack
                .http
                .get(stack.instances[i].url(path))
                .header(mm_wire::GATEWAY_TOKEN_HEADER, &stack.gateway_token)
                .timeout(ROUTE_WAIT + Duration::from_secs(10))
                .send()
                .await?;
            let status = r.status().as_u16();
            let by = r
                .headers()
                .get("x-mm-served-by")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let route: serde_json::Value = r.json().await.unwrap_or_default();
            let replicas: Vec<&str> = stack.replicas.iter().map(|r| r.name.as_str()).collect();
            let replica = route["replica"].as_str().unwrap_or_default();
            if status != 200 || by.as_deref() != Some(id.as_str()) || !replicas.contains(&replica) {
                bail!(
                    "pm-{i} routes {path} from its table without quorum: {status} {by:?} {route}"
                );
            }
        }
    }
    Ok(())
}

/// A gateway started while there is no quorum (an empty table, every instance failing
/// its health check) gets the table from the instances and serves every warm model, its
/// first requests included.
async fn a_new_gateway_serves_warm_models(stack: &HaStack) -> anyhow::Result<()> {
    let dir = stack.path().join("gateway-2");
    std::fs::create_dir_all(&dir)?;
    let ports: Vec<u16> = stack.instances.iter().map(|p| p.port).collect();
    let mut gateway = Envoy::spawn_for(&ports, &dir, Some(&stack.gateway_token))?;
    gateway.wait_ready().await?;
    for model in WARM {
        let body = example(model).0;
        for n in 0..5 {
            let (status, answer) = infer_at(stack, &gateway, model, &body).await?;
            if status != 200 {
                bail!("a new gateway without quorum, request {n} for {model}: {status} {answer}");
            }
        }
    }
    Ok(())
}

/// Restarts the lost members: an instance leads again, registrations work through every
/// instance, and cold requests load (one refused without quorum included).
async fn quorum_back_restores_writes_and_loads(
    stack: &mut HaStack,
    warm: &[WarmLoad],
) -> anyhow::Result<()> {
    let back = Instant::now();
    for i in 0..stack.etcd.members.len() {
        if !stack.etcd.members[i].is_running() {
            stack.etcd.restart(i).await?;
        }
    }
    let leader = stack.leader(TTL * 5).await?;
    eprintln!("a ready leader {:?} after quorum returned", back.elapsed());
    for i in 0..stack.instances.len() {
        let name = format!("after-quorum-{i}");
        eventually(
            &format!("a registration through pm-{i}"),
            TTL * 2,
            || async { Ok((register_status(stack, i, &name).await?.0 == 201).then_some(())) },
        )
        .await?;
    }
    for model in ["cold-b", "cold-c"] {
        let (status, body) = infer(stack, model, &example("linear").0).await?;
        if status != 200 {
            bail!("a cold request for {model} after quorum returned: {status} {body}");
        }
    }
    if stack.view(leader).await?.role != ClusterRole::Leader {
        bail!("the leadership changed again after quorum returned");
    }
    for load in warm {
        load.wait_for("warm traffic after quorum returned", 20)
            .await?;
    }
    Ok(())
}

/// `PUT /api/v1/models/{name}` on instance `i`: its status and JSON body.
async fn register_status(
    stack: &HaStack,
    i: usize,
    name: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    stack.put_model(i, name, &example_model("linear")).await
}

/// One V2 inference through the gateway, bounded well past the route wait (a hang
/// fails the test): its status and JSON body.
async fn infer(
    stack: &HaStack,
    model: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    infer_at(stack, &stack.envoy, model, body).await
}

/// [`infer`] through `gateway`.
async fn infer_at(
    stack: &HaStack,
    gateway: &Envoy,
    model: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let r = stack
        .http
        .post(gateway.url(&format!("/v2/models/{model}/infer")))
        .json(body)
        .timeout(ROUTE_WAIT + Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("inference on {model}"))?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or_default()))
}

/// Whether instance `i` serves a table in which every warm model has a copy.
async fn serves_warm(stack: &HaStack, i: usize) -> anyhow::Result<bool> {
    let table = stack.table(i).await?;
    Ok(WARM.iter().all(|m| {
        table
            .models
            .iter()
            .any(|e| e.model == *m && !e.replicas.is_empty())
    }))
}

fn error_of(body: &serde_json::Value) -> String {
    body["error"].as_str().unwrap_or_default().to_owned()
}
