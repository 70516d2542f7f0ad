//! Updates and aliases across a failover (issues 15 and 17), against a real 3-member etcd,
//! two Triton replicas, two pool-managers and Envoy: a model updated earlier (served by
//! Triton under `{model}--{digest}`) and a weighted alias over it keep answering while the
//! leader is killed (`kill -9`) under warm load, the new leader adopts the versioned copy
//! instead of loading the model again under its own name, and an update the kill
//! interrupted is finished by the new leader with its new version loaded once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::{example, linear_version, read_answer, Answer};
use mm_tests::ha::{HaOptions, HaStack};
use mm_tests::stack::eventually;
use serde_json::{json, Value};

const TTL: Duration = Duration::from_secs(3);
/// Added to the TTL for etcd's expiry sweep (every 500 ms) and a busy 2-core machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(3);
/// The model updated before the failover, the alias's other target, and the model whose
/// update the failover interrupts; `linear`'s answer to the example input is
/// `[5.5 + b, b]`, so every answer says which version computed it.
const UPDATED: &str = "upd";
const OTHER: &str = "other";
const INTERRUPTED: &str = "slow";
const ALIAS: &str = "can";
const B_V1: f64 = 1.5;
const B_UPDATED: f64 = 11.5;
const B_OTHER: f64 = 21.5;
const B_SLOW: f64 = 41.5;
/// How long the interrupted update's new version takes to load (its `initialize`).
const SLOW_LOAD_S: u32 = 3;

/// Warm traffic on one name through the gateway: answers by the model that served them
/// (each checked against that model's numbers), and failures with what went wrong.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<BTreeMap<String, u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Requests `name`; an answer from `model` must carry the bias `expected(model)`.
    fn start(url: String, name: &'static str, expected: fn(&str) -> Option<f64>) -> Self {
        let (body, _, _) = example("linear");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), served.clone(), failures.clone());
        let url = format!("{url}/v2/models/{name}/infer");
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .unwrap();
            while !s.load(Ordering::SeqCst) {
                match http.post(&url).json(&body).send().await {
                    Ok(r) => {
                        let Answer {
                            status,
                            served,
                            text,
                            y,
                        } = read_answer(r).await;
                        let model = served.unwrap_or_else(|| name.to_owned());
                        let bias = expected(&model);
                        match (status, y, bias) {
                            (200, Some(y), Some(b)) if y == [5.5 + b, b] => {
                                *o.lock().unwrap().entry(model).or_default() += 1;
                            }
                            _ => f.lock().unwrap().push(format!("{status} {model}: {text}")),
                        }
                    }
                    Err(e) => f.lock().unwrap().push(e.to_string()),
                }
                // Paces the load (about 50 requests/s); nothing waits on it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            served,
            failures,
            task,
        }
    }

    fn ok(&self) -> u64 {
        self.served.lock().unwrap().values().sum()
    }

    async fn wait_for(&self, what: &str, more: u64) -> anyhow::Result<()> {
        let target = self.ok() + more;
        eventually(what, Duration::from_secs(15), || async {
            Ok((self.ok() >= target).then_some(()))
        })
        .await
    }

    async fn stop(self) -> (BTreeMap<String, u64>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let served = self.served.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (served, failures)
    }
}

/// The updated model answers with its new version only.
fn updated_bias(model: &str) -> Option<f64> {
    (model == UPDATED).then_some(B_UPDATED)
}

fn alias_bias(model: &str) -> Option<f64> {
    match model {
        UPDATED => Some(B_UPDATED),
        OTHER => Some(B_OTHER),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_aliases_survive_the_loss_of_the_leader() -> anyhow::Result<()> {
    let mut stack = HaStack::start(HaOptions {
        lease_ttl: TTL,
        ..HaOptions::default()
    })
    .await?;
    let versions = tempfile::tempdir()?;
    let outcome = failover_with_versions(&mut stack, versions.path()).await;
    if let Err(e) = outcome {
        let dir = stack.dir.path().to_path_buf();
        // Keep the logs: stop every process first, then leave the directory.
        let kept = std::mem::replace(
            &mut stack.dir,
            tempfile::Builder::new().prefix("mm-ha-gone-").tempdir()?,
        );
        drop(stack);
        let _ = kept.keep();
        eprintln!("logs kept in {}", dir.display());
        return Err(e);
    }
    Ok(())
}

/// `PUT /api/v1/models/{name}` with files at `dir` on instance `i` (forwarded when it
/// follows); the answer's status.
async fn put_model(stack: &HaStack, i: usize, name: &str, dir: &Path) -> anyhow::Result<u16> {
    let (status, body) = stack.put_model(i, name, dir).await?;
    if !(200..300).contains(&status) {
        bail!("PUT {name} on pm-{i}: {status} {body}");
    }
    Ok(status)
}

/// `GET /api/v1/models/{name}` on instance `i`.
async fn model_view(stack: &HaStack, i: usize, name: &str) -> anyhow::Result<Value> {
    let r = stack
        .http
        .get(stack.instances[i].url(&format!("/api/v1/models/{name}")))
        .send()
        .await?;
    if r.status() != 200 {
        bail!("GET {name} on pm-{i}: {}", r.status());
    }
    Ok(r.json().await?)
}

/// One inference of `name` through the gateway: (served model, bias) of a 200 answer.
async fn infer(stack: &HaStack, name: &str) -> anyhow::Result<Option<(String, f64)>> {
    let (body, _, _) = example("linear");
    let r = stack
        .http
        .post(stack.envoy.url(&format!("/v2/models/{name}/infer")))
        .json(&body)
        .send()
        .await?;
    let answer = read_answer(r).await;
    Ok(match (answer.status, answer.y) {
        (200, Some(y)) if y.len() == 2 => {
            Some((answer.served.unwrap_or_else(|| name.to_owned()), y[1]))
        }
        _ => None,
    })
}

/// Waits until `name` answers through the gateway with bias `b`.
async fn until_answers(
    stack: &HaStack,
    name: &str,
    b: f64,
    within: Duration,
) -> anyhow::Result<()> {
    eventually(&format!("{name} to answer with b={b}"), within, || async {
        Ok(infer(stack, name)
            .await?
            .filter(|(_, got)| *got == b)
            .map(|_| ()))
    })
    .await
}

/// Whether any replica lists `model` READY.
async fn ready_anywhere(stack: &HaStack, model: &str) -> anyhow::Result<bool> {
    for r in &stack.replicas {
        if r.has_ready(model).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A copy of `linear` with bias `b` whose Python model takes `SLOW_LOAD_S` to start.
fn slow_version(dir: &Path, name: &str, b: f64) -> anyhow::Result<std::path::PathBuf> {
    let target = linear_version(dir, name, b);
    let path = target.join("1/model.py");
    let code = std::fs::read_to_string(&path)?.replacen(
        "    def initialize(self, args):\n",
        &format!("    def initialize(self, args):\n        import time\n        time.sleep({SLOW_LOAD_S})\n"),
        1,
    );
    std::fs::write(&path, code)?;
    Ok(target)
}

async fn failover_with_versions(stack: &mut HaStack, dir: &Path) -> anyhow::Result<()> {
    let leader = stack.leader(TTL * 4).await?;
    let follower = 1 - leader;
    eventually("the follower to know the leader", TTL * 2, || async {
        Ok(stack.view(follower).await?.leader.map(|_| ()))
    })
    .await?;
    let v1 = linear_version(dir, "v1", B_V1);
    put_model(stack, leader, UPDATED, &v1).await?;
    put_model(
        stack,
        follower,
        OTHER,
        &linear_version(dir, "other", B_OTHER),
    )
    .await?;
    put_model(stack, leader, INTERRUPTED, &v1).await?;
    for (name, b) in [(UPDATED, B_V1), (OTHER, B_OTHER), (INTERRUPTED, B_V1)] {
        until_answers(stack, name, b, Duration::from_secs(30)).await?;
    }
    // The update, through the follower: served under a versioned name once switched.
    let v2 = linear_version(dir, "v2", B_UPDATED);
    put_model(stack, follower, UPDATED, &v2).await?;
    until_answers(stack, UPDATED, B_UPDATED, Duration::from_secs(30)).await?;
    let version = eventually("the update to switch", Duration::from_secs(10), || async {
        let view = model_view(stack, leader, UPDATED).await?;
        Ok(view["version"]
            .as_str()
            .filter(|_| view["transition"].is_null())
            .map(str::to_owned))
    })
    .await?;
    eventually(
        "the old version to be unloaded",
        Duration::from_secs(15),
        || async { Ok((!ready_anywhere(stack, UPDATED).await?).then_some(())) },
    )
    .await?;
    // The follower holds the model under the same name (what it adopts by, if it leads).
    let followed = model_view(stack, follower, UPDATED).await?;
    if followed["version"].as_str() != Some(version.as_str()) {
        bail!("the follower does not follow the update: {followed}");
    }
    // A canary alias over the updated model and another one.
    let r = stack
        .http
        .put(stack.instances[follower].url(&format!("/api/v1/aliases/{ALIAS}")))
        .json(&json!({"targets": [
            {"model": UPDATED, "weight": 50}, {"model": OTHER, "weight": 50}]}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT alias: {} {}", r.status(), r.text().await?);
    }
    for (target, b) in [(UPDATED, B_UPDATED), (OTHER, B_OTHER)] {
        eventually(
            &format!("the alias to reach {target}"),
            Duration::from_secs(15),
            || async {
                Ok(infer(stack, ALIAS)
                    .await?
                    .filter(|(served, got)| served == target && *got == b)
                    .map(|_| ()))
            },
        )
        .await?;
    }
    let warm = [
        Load::start(stack.envoy.url(""), UPDATED, updated_bias),
        Load::start(stack.envoy.url(""), ALIAS, alias_bias),
    ];
    for load in &warm {
        load.wait_for("warm traffic running", 5).await?;
    }
    // An update the kill interrupts: its new version takes SLOW_LOAD_S to load, so the
    // leader dies with the update under way.
    let slow = slow_version(dir, "slow-v2", B_SLOW)?;
    put_model(stack, leader, INTERRUPTED, &slow).await?;
    let leader_id = stack.view(leader).await?.instance.id;
    stack.instances[leader].process.kill();
    let killed = Instant::now();
    let took_over = stack.until_leads(follower, TTL + TAKEOVER_SLACK).await;
    let took = killed.elapsed();
    took_over.with_context(|| format!("no new leader within {:?}", TTL + TAKEOVER_SLACK))?;
    eprintln!("{leader_id} killed; new leader after {took:?} (TTL {TTL:?})");
    for load in &warm {
        load.wait_for("warm traffic after the failover", 20).await?;
    }
    // The interrupted update is finished by the new leader.
    until_answers(
        stack,
        INTERRUPTED,
        B_SLOW,
        Duration::from_secs(u64::from(SLOW_LOAD_S) + 20),
    )
    .await?;
    let mut served_by = Vec::new();
    for load in warm {
        let (served, failures) = load.stop().await;
        if !failures.is_empty() {
            bail!(
                "{} warm requests failed across the failover ({served:?} answered): {:?}",
                failures.len(),
                &failures[..failures.len().min(5)]
            );
        }
        served_by.push(served);
    }
    eprintln!(
        "warm answers by model: {UPDATED}: {:?}, {ALIAS}: {:?}",
        served_by[0], served_by[1]
    );
    if served_by[1].len() != 2 {
        bail!("the alias answered from both targets: {:?}", served_by[1]);
    }
    // Nothing loaded twice: the versioned copy was adopted, not loaded again under the
    // model's own name; the interrupted update's version was loaded once.
    let slow_view = model_view(stack, follower, INTERRUPTED).await?;
    let slow_version = slow_view["version"]
        .as_str()
        .with_context(|| format!("{INTERRUPTED} serves a version: {slow_view}"))?
        .to_owned();
    for model in [UPDATED, version.as_str(), OTHER, INTERRUPTED, &slow_version] {
        let loads = stack.loads_of(model)?;
        if loads != 1 {
            bail!("{model} was loaded {loads} times (each exactly once)");
        }
    }
    if ready_anywhere(stack, UPDATED).await? {
        bail!("{UPDATED} is loaded again under its own name");
    }
    let view = model_view(stack, follower, UPDATED).await?;
    if view["version"].as_str() != Some(version.as_str()) {
        bail!("the new leader serves {UPDATED} by another name: {view}");
    }
    Ok(())
}
