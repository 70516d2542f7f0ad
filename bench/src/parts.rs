//! The benchmark parts. Each starts what it measures with the integration harness (real
//! Triton, the real pool-manager binary, real Envoy with the real filter), measures side by
//! side in one run, and returns figures plus a markdown section.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mm_tests::paths::{envoy, example_model, root};
use mm_tests::process::{free_port, Process};
use mm_tests::{Stack, StackOptions};
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::wrk;

/// How long and how often each measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub rounds: usize,
    pub seconds: u64,
    pub churn_seconds: u64,
    pub scale_models: usize,
    pub scale_replicas: usize,
}

fn linear_body() -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx.min(v.len() - 1)]
}

async fn route_calls(stack: &Stack) -> f64 {
    stack.route_calls().await.unwrap_or(0.0)
}

// ---------------------------------------------------------------- warm path

#[derive(Debug, Clone, Serialize)]
pub struct WarmTarget {
    pub label: String,
    pub runs: Vec<wrk::Run>,
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Warm {
    pub targets: Vec<WarmTarget>,
    pub route_calls_per_1000: f64,
    pub connections: u32,
    pub seconds: u64,
    pub rounds: usize,
}

/// Plain Envoy (no filter) with a static route to `replica_port`.
fn plain_envoy(replica_port: u16, dir: &Path) -> anyhow::Result<(Process, u16, u16)> {
    let (port, admin) = (free_port()?, free_port()?);
    let template = std::fs::read_to_string(root().join("bench/envoy-static.yaml.tmpl"))?;
    let config = template
        .replace("{{GATEWAY_PORT}}", &port.to_string())
        .replace("{{ENVOY_ADMIN_PORT}}", &admin.to_string())
        .replace("{{REPLICA_PORT}}", &replica_port.to_string());
    let path = dir.join("envoy-plain.yaml");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(envoy());
    cmd.arg("-c").arg(&path).args([
        "--disable-hot-restart",
        "--concurrency",
        "2",
        "--log-level",
        "warn",
    ]);
    let process = Process::spawn("envoy-plain", cmd, &dir.join("envoy-plain.log"))?;
    Ok((process, port, admin))
}

pub async fn warm(budget: Budget, scratch: &Path) -> anyhow::Result<Warm> {
    let stack = Stack::start(StackOptions {
        replicas: 1,
        ..StackOptions::default()
    })
    .await?;
    let (status, body) = stack
        .register("linear", &example_model("linear"), "32Mi")
        .await?;
    anyhow::ensure!(status == 201, "register: {body}");
    let req = linear_body();
    stack
        .wait_warm("linear", &req, Duration::from_secs(15))
        .await?;
    let replica = &stack.replicas[0];
    let (mut plain, plain_port, plain_admin) = plain_envoy(replica.http_port, stack.dir.path())?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        plain.check_alive()?;
        let ready = http
            .get(format!("http://127.0.0.1:{plain_admin}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("plain envoy not ready\n{}", plain.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = "/v2/models/linear/infer";
    let targets = [
        ("a: Triton direct", format!("{}{path}", replica.url())),
        (
            "b: Envoy, static route",
            format!("http://127.0.0.1:{plain_port}{path}"),
        ),
        ("c: Envoy + mm filter", stack.envoy.url(path)),
    ];
    let body = req.to_string();
    let connections = 16;
    let duration = Duration::from_secs(budget.seconds);
    let mut runs: Vec<Vec<wrk::Run>> = vec![Vec::new(); targets.len()];
    let mut filter_requests = 0u64;
    let mut filter_route_calls = 0.0;
    // Warm every connection path once, then interleave: a, b, c, a, b, c, ...
    for (_, url) in &targets {
        wrk::run(url, &body, connections, Duration::from_secs(1), scratch)?;
    }
    for _ in 0..budget.rounds {
        for (i, (_, url)) in targets.iter().enumerate() {
            let before = route_calls(&stack).await;
            let run = wrk::run(url, &body, connections, duration, scratch)?;
            if i == 2 {
                filter_requests += run.requests;
                filter_route_calls += route_calls(&stack).await - before;
            }
            runs[i].push(run);
        }
    }
    plain.kill();
    let targets = targets
        .iter()
        .zip(runs)
        .map(|((label, _), runs)| {
            let pick =
                |f: fn(&wrk::Run) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
            WarmTarget {
                label: (*label).to_owned(),
                rps: pick(|r| r.rps),
                p50: pick(|r| r.p50),
                p90: pick(|r| r.p90),
                p99: pick(|r| r.p99),
                runs,
            }
        })
        .collect();
    Ok(Warm {
        targets,
        route_calls_per_1000: if filter_requests == 0 {
            0.0
        } else {
            filter_route_calls * 1000.0 / filter_requests as f64
        },
        connections,
        seconds: budget.seconds,
        rounds: budget.rounds,
    })
}

// ---------------------------------------------------------------- cold path

#[derive(Debug, Clone, Serialize)]
pub struct Cold {
    pub gateway_ms: Vec<f64>,
    pub direct_load_ms: Vec<f64>,
    pub gateway_median_ms: f64,
    pub direct_median_ms: f64,
    pub burst_requests: usize,
    pub burst_loads: f64,
    pub burst_ok: usize,
    pub burst_p50_ms: f64,
    pub burst_p99_ms: f64,
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

pub async fn cold(samples: usize) -> anyhow::Result<Cold> {
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "8Gi".into(),
        ..StackOptions::default()
    })
    .await?;
    let replica = &stack.replicas[0];
    let http = reqwest::Client::new();
    let req = linear_body();
    let (mut gateway_ms, mut direct_ms) = (Vec::new(), Vec::new());
    for i in 0..samples {
        // Triton's own load call for the same files (staged by hand, as the pool-manager
        // would), then a first request through the gateway for a fresh model name.
        let direct = format!("direct{i}");
        copy_dir(&example_model("linear"), &stack.repository.join(&direct))?;
        let t = Instant::now();
        let r = http
            .post(format!(
                "{}/v2/repository/models/{direct}/load",
                replica.url()
            ))
            .body("{}")
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "direct load: {}", r.text().await?);
        direct_ms.push(t.elapsed().as_secs_f64() * 1000.0);

        let name = format!("cold{i}");
        stack
            .register(&name, &example_model("linear"), "32Mi")
            .await?;
        let t = Instant::now();
        let r = stack.infer(&name, &req).await?;
        anyhow::ensure!(r.status == 200, "{}", r.text);
        gateway_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // 100 concurrent first requests for one cold model.
    stack
        .register("burst", &example_model("linear"), "32Mi")
        .await?;
    let loads_before = stack.pool_manager.metric("mm_model_loads_total").await?;
    let requests = 100;
    let started: Vec<_> = (0..requests)
        .map(|_| async {
            let t = Instant::now();
            let r = stack.infer("burst", &req).await;
            (
                r.map(|r| r.status == 200).unwrap_or(false),
                t.elapsed().as_secs_f64() * 1000.0,
            )
        })
        .collect();
    let results = futures::future::join_all(started).await;
    let burst_loads = stack.pool_manager.metric("mm_model_loads_total").await? - loads_before;
    let mut lat: Vec<f64> = results.iter().map(|(_, ms)| *ms).collect();
    Ok(Cold {
        gateway_median_ms: median(&mut gateway_ms.clone()),
        direct_median_ms: median(&mut direct_ms.clone()),
        gateway_ms,
        direct_load_ms: direct_ms,
        burst_requests: requests,
        burst_loads,
        burst_ok: results.iter().filter(|(ok, _)| *ok).count(),
        burst_p50_ms: percentile(&mut lat, 0.5),
        burst_p99_ms: percentile(&mut lat, 0.99),
    })
}

// ---------------------------------------------------------------- churn

#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    pub models: usize,
    pub fit: usize,
    pub seconds: f64,
    pub requests: usize,
    pub ok: usize,
    pub hit_rate: f64,
    pub loads_per_min: f64,
    pub evictions_per_min: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub latencies_ms: Vec<f64>,
}

pub async fn churn(seconds: u64) -> anyhow::Result<Churn> {
    // 2 replicas x 400Mi at an 80% watermark: three 100Mi models each, 6 of 20 fit.
    let models = 20;
    let stack = Stack::start(StackOptions {
        replicas: 2,
        replica_memory: "400Mi".into(),
        pool_manager_args: ["--min-age", "1s"].map(String::from).to_vec(),
        ..StackOptions::default()
    })
    .await?;
    for i in 0..models {
        let (status, body) = stack
            .register(&format!("m{i:02}"), &example_model("linear"), "100Mi")
            .await?;
        anyhow::ensure!(status == 201, "{body}");
    }
    // Zipf(1.0) popularity over the models.
    let weights: Vec<f64> = (1..=models).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let cdf: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let m = |name: &str| {
        let stack = &stack;
        let name = name.to_owned();
        async move { stack.pool_manager.metric(&name).await.unwrap_or(0.0) }
    };
    let (loads0, evictions0) = (
        m("mm_model_loads_total").await,
        m("mm_model_evictions_total").await,
    );
    let misses0 = stack
        .pool_manager
        .metric_where("mm_route_requests_total", "outcome=\"miss\"")
        .await?;
    let req = linear_body();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let clients = (0..4u64).map(|c| {
        let (cdf, req, stack) = (&cdf, &req, &stack);
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(42 + c);
            let mut out = Vec::new();
            while Instant::now() < deadline {
                let u: f64 = rng.random();
                let k = cdf.iter().position(|&c| u <= c).unwrap_or(cdf.len() - 1);
                let t = Instant::now();
                let ok = stack
                    .infer(&format!("m{k:02}"), req)
                    .await
                    .map(|r| r.status == 200)
                    .unwrap_or(false);
                out.push((ok, t.elapsed().as_secs_f64() * 1000.0));
            }
            out
        }
    });
    let results: Vec<(bool, f64)> = futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let loads = m("mm_model_loads_total").await - loads0;
    let evictions = m("mm_model_evictions_total").await - evictions0;
    let misses = stack
        .pool_manager
        .metric_where("mm_route_requests_total", "outcome=\"miss\"")
        .await?
        - misses0;
    let mut lat: Vec<f64> = results.iter().map(|(_, ms)| *ms).collect();
    let requests = results.len();
    if requests == 0 {
        bail!("no request completed");
    }
    Ok(Churn {
        models,
        fit: 6,
        seconds: elapsed,
        requests,
        ok: results.iter().filter(|(ok, _)| *ok).count(),
        hit_rate: 1.0 - misses / requests as f64,
        loads_per_min: loads * 60.0 / elapsed,
        evictions_per_min: evictions * 60.0 / elapsed,
        p50_ms: percentile(&mut lat, 0.5),
        p99_ms: percentile(&mut lat, 0.99),
        latencies_ms: lat,
    })
}

// ---------------------------------------------------------------- control-plane scale

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub models: usize,
    pub replicas: usize,
    pub register_seconds: f64,
    pub registrations_per_second: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub bytes_per_model: f64,
    pub loaded: usize,
    /// Mean time of a cold route call (placement and an instant fake load) while loading.
    pub cold_route_ms: f64,
    pub route_p50_ms: f64,
    pub route_p99_ms: f64,
    pub list_page: usize,
    pub list_p50_ms: f64,
    pub list_p99_ms: f64,
    pub table_bytes: usize,
    pub table_p50_ms: f64,
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

pub async fn scale(models: usize, replicas: usize) -> anyhow::Result<Scale> {
    let dir = tempfile::Builder::new().prefix("mm-scale-").tempdir()?;
    let ports = crate::fake_triton::start(replicas).await?;
    let config: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "[[replica]]\nname = \"f{i}\"\nurl = \"http://127.0.0.1:{p}\"\nmemory = \"64Gi\"\n"
            )
        })
        .collect();
    let config_path = dir.path().join("pool.toml");
    std::fs::write(&config_path, config)?;
    let repo = dir.path().join("repo");
    let mut pm = mm_tests::PoolManager::spawn(
        &repo,
        &[],
        &[
            "--config".into(),
            config_path.display().to_string(),
            "--probe-interval".into(),
            "10s".into(),
            "--reconcile-interval".into(),
            "600s".into(),
        ],
        dir.path(),
    )?;
    pm.wait_ready().await?;
    let pid = pm.process.pid();
    let rss_before = rss_mib(pid)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let spec = json!({"storageUri": format!("file://{}", example_model("linear").display()), "memory": "16Mi"}).to_string();
    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = (0..256).map(|_| async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= models {
                return Ok::<(), anyhow::Error>(());
            }
            let r = http
                .put(pm.url(&format!("/api/v1/models/s{i:06}")))
                .body(spec.clone())
                .send()
                .await?;
            anyhow::ensure!(r.status().as_u16() == 201, "register s{i}: {}", r.status());
        }
    });
    for r in futures::future::join_all(workers).await {
        r?;
    }
    let register_seconds = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_mib(pid)?;

    // Load some models (fake replicas load instantly), then time route decisions for them.
    let loaded = 300.min(models);
    let t = Instant::now();
    for i in 0..loaded {
        let r = http
            .get(pm.url(&format!("/internal/v1/route/s{i:06}")))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "route: {}", r.text().await?);
    }
    let cold_route_ms = t.elapsed().as_secs_f64() * 1000.0 / loaded.max(1) as f64;
    let mut route = Vec::new();
    for k in 0..5000 {
        let i = (k * 7919) % loaded;
        let t = Instant::now();
        let r = http
            .get(pm.url(&format!("/internal/v1/route/s{i:06}")))
            .send()
            .await?;
        r.bytes().await?;
        route.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let page = 1000;
    let mut list = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..50 {
        let url = match &after {
            Some(a) => pm.url(&format!("/api/v1/models?limit={page}&after={a}")),
            None => pm.url(&format!("/api/v1/models?limit={page}")),
        };
        let t = Instant::now();
        let v: Value = http.get(url).send().await?.json().await?;
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        after = v["next"].as_str().map(str::to_owned);
        if after.is_none() {
            break;
        }
    }
    let mut table = Vec::new();
    let mut table_bytes = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let body = http
            .get(pm.url("/internal/v1/table"))
            .send()
            .await?
            .bytes()
            .await?;
        table.push(t.elapsed().as_secs_f64() * 1000.0);
        table_bytes = body.len();
    }
    pm.process.kill();
    Ok(Scale {
        models,
        replicas,
        register_seconds,
        registrations_per_second: models as f64 / register_seconds,
        rss_before_mib: rss_before,
        rss_after_mib: rss_after,
        bytes_per_model: (rss_after - rss_before) * 1024.0 * 1024.0 / models as f64,
        loaded,
        cold_route_ms,
        route_p50_ms: percentile(&mut route.clone(), 0.5),
        route_p99_ms: percentile(&mut route, 0.99),
        list_page: page,
        list_p50_ms: percentile(&mut list.clone(), 0.5),
        list_p99_ms: percentile(&mut list, 0.99),
        table_bytes,
        table_p50_ms: median(&mut table),
    })
}
