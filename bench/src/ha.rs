//! High availability: what the shared store costs and how fast leadership moves. The
//! registration rate of the real pool-manager on its embedded store beside the same on a
//! 3-member etcd on loopback (same fake replica, same concurrent clients; each model
//! acknowledged after its commit), and how long after the leader is killed (-9) or
//! stopped (SIGTERM, which resigns) another instance leads, polled every 10 ms; and, after
//! kill -9, how long a route call for a model loaded nowhere, sent to the other instance
//! at once, takes to be answered (held through the election, then loaded by the new leader).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mm_tests::etcd::EtcdCluster;
use mm_tests::PoolManager;
use mm_wire::{ClusterRole, ClusterView};
use serde::Serialize;

use crate::scale::{register, start_pool_manager, Timing};

/// How the part runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub models: usize,
    pub clients: usize,
    /// Failovers measured per way of losing the leader.
    pub rounds: usize,
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ha {
    pub models: usize,
    pub clients: usize,
    pub embedded_per_second: f64,
    pub etcd_per_second: f64,
    pub lease_ttl_seconds: f64,
    /// Milliseconds until another instance led, after kill -9 of the leader.
    pub killed: Timing,
    /// The same after SIGTERM (the leader resigns).
    pub stopped: Timing,
    /// Milliseconds from kill -9 of the leader to the answer of a cold route call sent to
    /// the other instance at that moment.
    pub cold_after_kill: Timing,
}

const PREFIX: &str = "/mm/bench/";

pub async fn run(options: &Options) -> anyhow::Result<Ha> {
    let dir = tempfile::Builder::new().prefix("mm-ha-bench").tempdir()?;
    let replicas = crate::fake_triton::start(1).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients)
        .build()?;

    eprintln!(
        "[mm-bench] ha: {} registrations, embedded store",
        options.models
    );
    let embedded_dir = dir.path().join("embedded");
    std::fs::create_dir_all(embedded_dir.join("repo"))?;
    let embedded = start_pool_manager(&replicas.ports, &embedded_dir, &[]).await?;
    let seconds = register(&http, &embedded, options.models, options.clients).await?;
    let embedded_per_second = options.models as f64 / seconds;
    drop(embedded);

    eprintln!("[mm-bench] ha: {} registrations, etcd", options.models);
    let cluster = EtcdCluster::start(3, dir.path()).await?;
    let mut instances = Vec::new();
    for id in ["pm-a", "pm-b"] {
        let d = dir.path().join(id);
        std::fs::create_dir_all(d.join("repo"))?;
        let extra = [
            format!("--store={}", cluster.store_url()),
            format!("--store-prefix={PREFIX}"),
            format!("--instance-id={id}"),
            format!("--lease-ttl={}s", options.lease_ttl.as_secs()),
        ];
        instances.push(start_pool_manager(&replicas.ports, &d, &extra).await?);
    }
    let leader = leader(&instances, Duration::from_secs(30)).await?;
    let seconds = register(&http, &instances[leader], options.models, options.clients).await?;
    let etcd_per_second = options.models as f64 / seconds;

    let mut killed = Vec::new();
    let mut stopped = Vec::new();
    let mut cold = Vec::new();
    for round in 0..options.rounds * 2 {
        let kill = round % 2 == 0;
        let (took, cold_took) = failover(&mut instances, kill, options.lease_ttl, round)
            .await
            .with_context(|| format!("failover round {round}"))?;
        eprintln!(
            "[mm-bench] ha: {} leader replaced in {took:.0} ms (a cold route call answered after {cold_took:.0} ms)",
            if kill { "killed" } else { "stopped" }
        );
        let samples = if kill { &mut killed } else { &mut stopped };
        samples.push(took);
        if kill {
            cold.push(cold_took);
        }
    }
    Ok(Ha {
        models: options.models,
        clients: options.clients,
        embedded_per_second,
        etcd_per_second,
        lease_ttl_seconds: options.lease_ttl.as_secs_f64(),
        killed: Timing::of(&killed),
        stopped: Timing::of(&stopped),
        cold_after_kill: Timing::of(&cold),
    })
}

async fn view(pm: &PoolManager) -> anyhow::Result<ClusterView> {
    Ok(reqwest::get(pm.url("/api/v1/cluster"))
        .await?
        .json()
        .await?)
}

/// The index of the instance that leads, once one does (and the others follow it).
async fn leader(instances: &[PoolManager], within: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        let mut leaders = Vec::new();
        let mut followers = 0;
        for (i, pm) in instances.iter().enumerate() {
            match view(pm).await.map(|v| (v.role, v.leader.is_some())) {
                Ok((ClusterRole::Leader, _)) => leaders.push(i),
                Ok((ClusterRole::Follower, true)) => followers += 1,
                _ => {}
            }
        }
        if let ([one], true) = (leaders.as_slice(), followers == instances.len() - 1) {
            return Ok(*one);
        }
        if Instant::now() > deadline {
            bail!("no single leader within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes the leader down (SIGKILL or SIGTERM), times until another instance says it
/// leads and until a route call for a model loaded nowhere (model `round`), sent to
/// another instance at once, is answered; then starts the old one again and waits for it
/// to follow. Returns both in ms.
async fn failover(
    instances: &mut [PoolManager],
    kill: bool,
    ttl: Duration,
    round: usize,
) -> anyhow::Result<(f64, f64)> {
    let old = leader(instances, ttl * 4).await?;
    let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
    let other = (old + 1) % instances.len();
    let route = reqwest::Client::new()
        .get(instances[other].url(&format!("/internal/v1/route/{}", crate::scale::name(round))))
        .timeout(ttl * 10);
    let start = Instant::now();
    instances[old].process.signal(signal);
    let cold = tokio::spawn(async move {
        let r = route.send().await?;
        anyhow::ensure!(r.status().is_success(), "cold route call: {}", r.status());
        anyhow::Ok(start.elapsed())
    });
    let deadline = start + ttl * 4;
    let took = loop {
        let mut led = false;
        for (i, pm) in instances.iter().enumerate() {
            if i != old && view(pm).await.is_ok_and(|v| v.role == ClusterRole::Leader) {
                led = true;
            }
        }
        if led {
            break start.elapsed();
        }
        if Instant::now() > deadline {
            bail!("no new leader within {:?}", ttl * 4);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cold = cold.await??;
    let generation = u32::try_from(round + 1).unwrap_or(u32::MAX);
    instances[old].restart(generation).await?;
    leader(instances, ttl * 4).await?;
    Ok((took.as_secs_f64() * 1000.0, cold.as_secs_f64() * 1000.0))
}

impl Ha {
    pub fn markdown(&self) -> String {
        let timing = |t: &Timing| {
            format!(
                "{:.0} ms mean, {:.0} ms p50, {:.0} ms p99 ({} failovers)",
                t.mean, t.p50, t.p99, t.n
            )
        };
        format!(
            "### High availability\n\n\
             Registration: the real pool-manager with one fake replica, {} models registered by {} concurrent \
             clients, each acknowledged after its commit: on the embedded store (redb, group commit) and, as \
             the leader of two instances, on a 3-member etcd 3.4 on loopback (one transaction per registration, \
             fenced by the leader key's revision). Failover: two instances on that etcd with a {:.0} s lease; \
             the time from taking the leader down to the other instance answering `GET /api/v1/cluster` \
             as leader (polled every 10 ms). A killed leader's lease runs out on etcd (at most the TTL after \
             its last renewal, plus etcd's expiry sweep of up to 0.5 s); a stopped one resigns first. \
             With the pool: a route call for a model loaded nowhere, sent to the surviving instance the moment \
             the leader is killed, is held there until the new leader has rebuilt its view (registry, probes, \
             the replica's index) and loaded the model (the fake replica loads instantly).\n\n\
             | figure | value |\n|---|---:|\n\
             | registrations, embedded store | **{:.0} models/s** |\n\
             | registrations, etcd (3 members) | **{:.0} models/s** |\n\
             | new leader after kill -9 of the leader | **{}** |\n\
             | new leader after SIGTERM of the leader | {} |\n\
             | a cold route call answered, after kill -9 of the leader | **{}** |\n\n\
             The test etcd elects its own leader in 0.5-1 s (heartbeat 50 ms, election timeout 500 ms); \
             with etcd's defaults (1-2 s) use a lease TTL of at least 5 s.\n",
            self.models,
            self.clients,
            self.lease_ttl_seconds,
            self.embedded_per_second,
            self.etcd_per_second,
            timing(&self.killed),
            timing(&self.stopped),
            timing(&self.cold_after_kill),
        )
    }
}
