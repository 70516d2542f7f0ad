//! Several pool-managers serving one pool (issue 17, second part), against a real 3-member
//! etcd, real Triton replicas and real Envoy: the leader killed (`kill -9`) under mixed
//! load loses no warm request, no cold request, no registration, and loads no model twice;
//! a leader paused past its lease (SIGSTOP, SIGCONT) changes nothing in the pool when it
//! wakes. Scenarios in sequence on one stack (one etcd, two replicas, two instances).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::example;
use mm_tests::ha::{HaOptions, HaStack, WarmLoad, WarmOutcome, PREFIX};
use mm_tests::stack::eventually;
use mm_wire::ClusterRole;

const TTL: Duration = Duration::from_secs(3);
/// Added to the TTL for etcd's expiry sweep (every 500 ms) and a busy 2-core machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(3);
/// Models loaded nowhere when the leader dies: each must be loaded exactly once.
const COLD: [&str; 4] = ["cold-0", "cold-1", "cold-2", "cold-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_survives_the_loss_of_its_leader() -> anyhow::Result<()> {
    let stack = HaStack::start(HaOptions {
        lease_ttl: TTL,
        // A deposed leader would reconcile (and unload what it does not know) at its
        // next tick: make that tick due the moment a paused one wakes.
        pool_manager_args: vec!["--reconcile-interval=1s".into()],
        ..HaOptions::default()
    })
    .await?;
    let outcome = scenarios(stack).await;
    if let Err((e, dir)) = outcome {
        eprintln!("logs kept in {}", dir.display());
        return Err(e);
    }
    Ok(())
}

async fn scenarios(mut stack: HaStack) -> Result<(), (anyhow::Error, std::path::PathBuf)> {
    let run = async {
        let leader = a_killed_leader_loses_nothing(&mut stack).await?;
        a_paused_leader_changes_nothing_when_it_wakes(&mut stack, leader).await
    };
    match run.await {
        Ok(()) => Ok(()),
        Err(e) => {
            let dir = stack.dir.path().to_path_buf();
            // Keep the logs: stop every process first, then leave the directory.
            let kept = std::mem::replace(
                &mut stack.dir,
                tempfile::Builder::new()
                    .prefix("mm-ha-gone-")
                    .tempdir()
                    .unwrap(),
            );
            drop(stack);
            let _ = kept.keep();
            Err((e, dir))
        }
    }
}

/// The models every replica lists READY, as (replica, model).
async fn ready_copies(stack: &HaStack) -> anyhow::Result<BTreeSet<(String, String)>> {
    let mut out = BTreeSet::new();
    for r in &stack.replicas {
        for m in r.index().await? {
            if m["state"] == "READY" {
                out.insert((r.name.clone(), m["name"].as_str().unwrap_or("").to_owned()));
            }
        }
    }
    Ok(out)
}

/// kill -9 the leader under warm load, with cold requests in flight and sent during the
/// election: every request succeeds, another instance leads within the lease TTL, every
/// registration is still there, and no model was loaded twice. Returns the new leader.
async fn a_killed_leader_loses_nothing(stack: &mut HaStack) -> anyhow::Result<usize> {
    let leader = stack.leader(TTL * 4).await?;
    let follower = 1 - leader;
    eventually("the follower to know the leader", TTL * 2, || async {
        Ok(stack.view(follower).await?.leader.map(|_| ()))
    })
    .await?;
    // Registrations through the follower too (forwarded to the leader).
    stack.register(leader, "linear", "linear").await?;
    stack.register(follower, "anomaly", "anomaly").await?;
    for (i, name) in COLD.iter().enumerate() {
        stack.register(i % 2, name, "linear").await?;
    }
    for model in ["linear", "anomaly"] {
        let (body, _, _) = example(model);
        eventually(
            &format!("{model} warm"),
            Duration::from_secs(30),
            || async {
                let r = stack
                    .http
                    .post(stack.envoy.url(&format!("/v2/models/{model}/infer")))
                    .json(&body)
                    .send()
                    .await?;
                Ok(r.status().is_success().then_some(()))
            },
        )
        .await?;
    }
    let warm =
        ["linear", "anomaly"].map(|m| WarmLoad::start(&stack.envoy.url(""), m, example(m).0));
    for load in &warm {
        load.wait_for("warm traffic running", 5).await?;
    }
    // Cold requests just before the kill (loading, or held, when the leader dies) and
    // during the election (held by the follower until a leader answers).
    let mut cold = Vec::new();
    let spawn_cold = |model: &'static str| {
        let http = stack.http.clone();
        let url = stack.envoy.url(&format!("/v2/models/{model}/infer"));
        let (body, _, _) = example("linear");
        tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&body)
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            anyhow::Ok((model, r.status().as_u16(), r.text().await?))
        })
    };
    cold.push(spawn_cold(COLD[0]));
    cold.push(spawn_cold(COLD[1]));
    // Kill only once both route calls have reached the leader: its view shows their loads
    // started (the calls are held there, not in Envoy).
    for model in &COLD[..2] {
        eventually(
            &format!("the route call for {model} to reach the leader"),
            Duration::from_secs(10),
            || async {
                let r = stack
                    .http
                    .get(stack.instances[leader].url(&format!("/api/v1/models/{model}")))
                    .send()
                    .await?;
                let view: serde_json::Value = r.json().await?;
                Ok((view["state"] != "Pending").then_some(()))
            },
        )
        .await?;
    }
    let leader_id = stack.view(leader).await?.instance.id;
    stack.instances[leader].process.kill();
    let killed = Instant::now();
    cold.push(spawn_cold(COLD[2]));
    cold.push(spawn_cold(COLD[3]));
    let took_over = stack.until_leads(follower, TTL + TAKEOVER_SLACK).await;
    let took = killed.elapsed();
    took_over.with_context(|| format!("no new leader within {:?}", TTL + TAKEOVER_SLACK))?;
    eprintln!("new leader after {took:?} (TTL {TTL:?})");
    for task in cold {
        let (model, status, body) = task.await??;
        if status != 200 {
            bail!("a cold request for {model} failed across the failover: {status} {body}");
        }
    }
    for load in &warm {
        load.wait_for("warm traffic after the failover", 20).await?;
    }
    for load in warm {
        let WarmOutcome { ok, failures } = load.stop().await;
        if !failures.is_empty() {
            bail!(
                "{} of {} warm requests failed across the failover: {:?}",
                failures.len(),
                ok + failures.len() as u64,
                &failures[..failures.len().min(5)]
            );
        }
    }
    // Every registration survives, in etcd and in the new leader's registry.
    let keys = stack.etcd.keys(&format!("{PREFIX}models/"))?;
    let r = stack
        .http
        .get(stack.instances[follower].url("/api/v1/models"))
        .send()
        .await?;
    let listed: serde_json::Value = r.json().await?;
    let listed = listed["models"].as_array().map_or(0, Vec::len);
    if keys.len() != 2 + COLD.len() || listed != keys.len() {
        bail!("registrations lost: etcd {keys:?}, the new leader lists {listed}");
    }
    // No model loaded twice: Triton's own log counts every load, and each is READY once.
    for model in ["linear", "anomaly"].iter().chain(COLD.iter()) {
        let loads = stack.loads_of(model)?;
        if loads != 1 {
            bail!("{model} was loaded {loads} times (the new leader must adopt, not reload)");
        }
    }
    let copies = ready_copies(stack).await?;
    if copies.len() != 2 + COLD.len() {
        bail!("each model READY on exactly one replica: {copies:?}");
    }
    // The killed instance comes back as a follower of the new leader.
    let new_leader_id = stack.view(follower).await?.instance.id;
    stack.restart_instance(leader, 1).await?;
    eventually("the restarted instance to follow", TTL * 4, || async {
        let v = stack.view(leader).await?;
        Ok((v.role == ClusterRole::Follower
            && v.leader.as_ref().is_some_and(|l| l.id == new_leader_id))
        .then_some(()))
    })
    .await?;
    eprintln!("{leader_id} killed, {new_leader_id} leads, {leader_id} follows again");
    Ok(follower)
}

/// SIGSTOP the leader past its lease; the other instance leads; a route call for a cold
/// model sent to the paused one while it sleeps is, once it wakes, handed to the new
/// leader: the woken instance loads and unloads nothing itself (its reconcile tick is
/// due at once, and would unload what it no longer knows), and the replicas hold exactly
/// what the new leader put there.
async fn a_paused_leader_changes_nothing_when_it_wakes(
    stack: &mut HaStack,
    leader: usize,
) -> anyhow::Result<()> {
    let other = 1 - leader;
    stack.register(other, "late", "linear").await?;
    let pm = &stack.instances[leader];
    let (loads, unloads) = (
        pm.metric("mm_model_loads_total").await?,
        pm.metric("mm_model_unloads_total").await?,
    );
    pm.process.signal(libc::SIGSTOP);
    let paused = Instant::now();
    let pid = pm.process.pid();
    eventually(
        "the leader to be stopped",
        Duration::from_secs(5),
        || async move {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            // The state follows the command's closing parenthesis.
            let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
            Ok(state.starts_with('T').then_some(()))
        },
    )
    .await?;
    // Sent to the paused instance directly: the kernel accepts it, the process reads it
    // when it wakes.
    let late = {
        let http = stack.http.clone();
        let url = pm.url("/internal/v1/route/late");
        let token = stack.gateway_token.clone();
        tokio::spawn(async move {
            let r = http
                .get(url)
                .header(mm_wire::GATEWAY_TOKEN_HEADER, token)
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            let by = r
                .headers()
                .get("x-mm-served-by")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            anyhow::Ok((r.status().as_u16(), by, r.text().await?))
        })
    };
    let took_over = stack.until_leads(other, TTL + TAKEOVER_SLACK).await;
    let pm = &stack.instances[leader];
    pm.process.signal(libc::SIGCONT);
    took_over?;
    eprintln!(
        "paused leader replaced {:?} after the pause",
        paused.elapsed()
    );
    let other_id = stack.view(other).await?.instance.id;
    let (status, by, body) = late.await??;
    if status != 200 || by.as_deref() != Some(other_id.as_str()) {
        bail!("the woken instance hands the route call to the new leader: {status} {by:?} {body}");
    }
    eventually("the woken instance to follow", TTL * 2, || async {
        let v = stack.view(leader).await?;
        Ok((v.role == ClusterRole::Follower).then_some(()))
    })
    .await?;
    let before = ready_copies(stack).await?;
    // Two reconcile ticks (the new leader's, at the same interval as the woken one's
    // would be): an unfenced deposed leader would have acted by then.
    let ticks = stack.instances[other]
        .metric("mm_reconciliations_total")
        .await?;
    eventually(
        "two more reconcile ticks",
        Duration::from_secs(10),
        || async {
            let now = stack.instances[other]
                .metric("mm_reconciliations_total")
                .await?;
            // One tick reconciles every replica.
            Ok((now >= ticks + 2.0 * stack.replicas.len() as f64).then_some(()))
        },
    )
    .await?;
    let pm = &stack.instances[leader];
    let after = (
        pm.metric("mm_model_loads_total").await?,
        pm.metric("mm_model_unloads_total").await?,
    );
    if after != (loads, unloads) {
        bail!("the woken instance changed the pool: loads/unloads {loads}/{unloads} -> {after:?}");
    }
    if ready_copies(stack).await? != before || stack.loads_of("late")? != 1 {
        bail!("the replicas changed after the paused leader woke");
    }
    Ok(())
}
