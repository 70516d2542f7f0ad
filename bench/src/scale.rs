//! Control-plane scale: the real pool-manager with many fake replicas and many registered
//! models; registration rate, memory per model, cold route calls, route decisions, admin
//! list pages and the routing table's size.

use std::time::{Duration, Instant};

use anyhow::Context;
use mm_tests::paths::example_model;
use serde::Serialize;
use serde_json::{json, Value};

use crate::stats::{median, percentile};

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

pub async fn run(models: usize, replicas: usize) -> anyhow::Result<Scale> {
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
        route_p50_ms: percentile(&route, 0.5),
        route_p99_ms: percentile(&route, 0.99),
        list_page: page,
        list_p50_ms: percentile(&list, 0.5),
        list_p99_ms: percentile(&list, 0.99),
        table_bytes,
        table_p50_ms: median(&table),
    })
}
impl Scale {
    pub fn markdown(&self) -> String {
        format!(
                    "### Control-plane scale\n\n\
                     The real pool-manager with {} fake replicas (one process answering Triton's repository API, \
                     loading instantly: this measures the pool-manager, not Triton) and {} registered models.\n\n\
                     | figure | value |\n|---|---:|\n\
                     | registration, 256 concurrent clients (durable: each acknowledged after its commit) | {:.0} models/s ({:.1} s in all) |\n\
                     | RSS before / after registering | {:.0} MiB / {:.0} MiB |\n\
                     | memory per registered model (RSS delta / models) | **{:.0} bytes** |\n\
                     | cold route call: placement over all replicas and models plus an instant fake load, mean of {} | {:.1} ms |\n\
                     | route decision for a loaded model ({} loaded), HTTP round trip, p50 / p99 | {:.3} ms / {:.3} ms |\n\
                     | admin list, pages of {}, p50 / p99 per page | {:.1} ms / {:.1} ms |\n\
                     | routing table the filter polls ({} models loaded) | {} bytes, {:.1} ms to fetch |\n",
                    self.replicas,
                    self.models,
                    self.registrations_per_second,
                    self.register_seconds,
                    self.rss_before_mib,
                    self.rss_after_mib,
                    self.bytes_per_model,
                    self.loaded,
                    self.cold_route_ms,
                    self.loaded,
                    self.route_p50_ms,
                    self.route_p99_ms,
                    self.list_page,
                    self.list_p50_ms,
                    self.list_p99_ms,
                    self.loaded,
                    self.table_bytes,
                    self.table_p50_ms
                )
    }
}
