//! Control-plane scale: the real pool-manager with many fake replicas, at several numbers
//! of registered models (a fresh pool-manager and fresh replicas per size), reporting per
//! size the registration rate, memory per registered model, cold route calls (placement
//! plus an instant fake load), route decisions for loaded models, admin list pages, the
//! routing table's size and, if the pool-manager exposes them, the cold phases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use mm_tests::paths::example_model;
use mm_tests::PoolManager;
use serde::Serialize;
use serde_json::{json, Value};

use crate::phases;
use crate::stats::{mean, median, percentile, ratio};

/// How the part runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Registered models, one measurement per size.
    pub sizes: Vec<usize>,
    pub replicas: usize,
    /// Concurrent registration clients.
    pub register_clients: usize,
    /// Cold route calls per size: at most this many, and no more than `cold_budget`.
    pub cold_calls: usize,
    pub cold_budget: Duration,
}

/// Mean and percentiles of a set of timings, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

impl Timing {
    pub(crate) fn of(ms: &[f64]) -> Self {
        Self {
            n: ms.len(),
            mean: mean(ms),
            p50: percentile(ms, 0.5),
            p99: percentile(ms, 0.99),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Size {
    pub models: usize,
    pub register_seconds: f64,
    pub registrations_per_second: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub bytes_per_model: f64,
    /// Cold route calls: placement over the replicas and models plus an instant fake load.
    pub cold_route: Timing,
    /// Route decisions for models already loaded (HTTP round trip).
    pub route_loaded: Timing,
    pub list_page: usize,
    pub list: Timing,
    pub table_bytes: usize,
    pub table_p50_ms: f64,
    pub phases: Vec<phases::Phase>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub replicas: usize,
    pub register_clients: usize,
    pub sizes: Vec<Size>,
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

pub(crate) fn name(i: usize) -> String {
    format!("s{i:06}")
}

pub async fn run(options: &Options) -> anyhow::Result<Scale> {
    let mut sizes = Vec::new();
    for &models in &options.sizes {
        eprintln!(
            "[mm-bench] scale: {models} models on {} fake replicas",
            options.replicas
        );
        sizes.push(
            size(options, models)
                .await
                .with_context(|| format!("{models} models"))?,
        );
    }
    Ok(Scale {
        replicas: options.replicas,
        register_clients: options.register_clients,
        sizes,
    })
}

/// A pool-manager for `replicas` (fake replica ports) with `extra` flags, ready.
pub(crate) async fn start_pool_manager(
    replicas: &[u16],
    dir: &std::path::Path,
    extra: &[String],
) -> anyhow::Result<PoolManager> {
    let config: String = replicas
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "[[replica]]\nname = \"f{i}\"\nurl = \"http://127.0.0.1:{p}\"\nmemory = \"64Gi\"\n"
            )
        })
        .collect();
    let config_path = dir.join("pool.toml");
    std::fs::write(&config_path, config)?;
    let mut args = vec![
        "--config".into(),
        config_path.display().to_string(),
        "--probe-interval".into(),
        "10s".into(),
        "--reconcile-interval".into(),
        "600s".into(),
    ];
    args.extend_from_slice(extra);
    let mut pm = PoolManager::spawn(&dir.join("repo"), &[], &args, dir)?;
    pm.wait_ready().await?;
    Ok(pm)
}

/// Registers `models` models with `clients` concurrent PUTs; returns the seconds it took.
pub(crate) async fn register(
    http: &reqwest::Client,
    pm: &PoolManager,
    models: usize,
    clients: usize,
) -> anyhow::Result<f64> {
    let spec = json!({"storageUri": format!("file://{}", example_model("linear").display()), "memory": "16Mi"}).to_string();
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let workers = (0..clients.max(1)).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= models {
                return Ok::<(), anyhow::Error>(());
            }
            let r = http
                .put(pm.url(&format!("/api/v1/models/{}", name(i))))
                .header("content-type", "application/json")
                .body(spec.clone())
                .send()
                .await?;
            anyhow::ensure!(
                r.status().as_u16() == 201,
                "register {}: {}",
                name(i),
                r.status()
            );
        }
    });
    for r in futures::future::join_all(workers).await {
        r?;
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn timed_get(http: &reqwest::Client, url: String) -> anyhow::Result<(f64, Vec<u8>)> {
    let t = Instant::now();
    let r = http.get(url).send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok((t.elapsed().as_secs_f64() * 1000.0, body.to_vec()))
}

async fn size(options: &Options, models: usize) -> anyhow::Result<Size> {
    let dir = tempfile::Builder::new().prefix("mm-scale-").tempdir()?;
    let replicas = crate::fake_triton::start(options.replicas).await?;
    let mut pm = start_pool_manager(&replicas.ports, dir.path(), &[]).await?;
    let pid = pm.process.pid();
    let rss_before = rss_mib(pid)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(options.register_clients)
        .build()?;
    let register_seconds = register(&http, &pm, models, options.register_clients).await?;
    // Let the allocator settle the registration burst before reading the resident size.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_mib(pid)?;

    // Cold route calls, each timed: placement over every replica and model, an instant load.
    let metrics = || async {
        Ok::<_, anyhow::Error>(phases::totals(
            &http.get(pm.url("/metrics")).send().await?.text().await?,
        ))
    };
    let phases_before = metrics().await?;
    let started = Instant::now();
    let mut cold = Vec::new();
    while cold.len() < options.cold_calls.min(models)
        && (cold.len() < 10 || started.elapsed() < options.cold_budget)
    {
        let (ms, _) = timed_get(
            &http,
            pm.url(&format!("/internal/v1/route/{}", name(cold.len()))),
        )
        .await?;
        cold.push(ms);
    }
    let phases = phases::means(&phases_before, &metrics().await?);
    let loaded = cold.len();
    let mut route = Vec::new();
    for k in 0..2000 {
        let (ms, _) = timed_get(
            &http,
            pm.url(&format!(
                "/internal/v1/route/{}",
                name((k * 7919) % loaded.max(1))
            )),
        )
        .await?;
        route.push(ms);
    }
    let list_page = 1000;
    let mut list = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..50 {
        let url = match &after {
            Some(a) => pm.url(&format!("/api/v1/models?limit={list_page}&after={a}")),
            None => pm.url(&format!("/api/v1/models?limit={list_page}")),
        };
        let (ms, body) = timed_get(&http, url).await?;
        list.push(ms);
        // Past the last page, start again from the first: every size times 50 pages.
        after = serde_json::from_slice::<Value>(&body)?["next"]
            .as_str()
            .map(str::to_owned);
    }
    let mut table = Vec::new();
    let mut table_bytes = 0;
    for _ in 0..20 {
        let (ms, body) = timed_get(&http, pm.url("/internal/v1/table")).await?;
        table.push(ms);
        table_bytes = body.len();
    }
    pm.process.kill();
    Ok(Size {
        models,
        register_seconds,
        registrations_per_second: models as f64 / register_seconds,
        rss_before_mib: rss_before,
        rss_after_mib: rss_after,
        bytes_per_model: (rss_after - rss_before) * 1024.0 * 1024.0 / models.max(1) as f64,
        cold_route: Timing::of(&cold),
        route_loaded: Timing::of(&route),
        list_page,
        list: Timing::of(&list),
        table_bytes,
        table_p50_ms: median(&table),
        phases,
    })
}

impl Scale {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "### Control-plane scale\n\n\
             The real pool-manager with {} fake replicas (one process answering Triton's repository API, \
             loading instantly: this measures the pool-manager, not Triton), started afresh for each number \
             of registered models. Registration: {} concurrent clients, each model acknowledged after its \
             commit. Cold route calls: the first route call for a registered model (placement over every \
             replica and model, an instant fake load), one after the other, as many as fit in the budget. \
             Memory per registered model: the pool-manager's RSS after registering minus before, over the \
             models.\n\n| figure |",
            self.replicas, self.register_clients
        );
        for s in &self.sizes {
            md += &format!(" {} models |", thousands(s.models));
        }
        md += "\n|---|";
        md += &"---:|".repeat(self.sizes.len());
        md += "\n";
        let mut row = |label: &str, cell: &dyn Fn(&Size) -> String| {
            md += &format!("| {label} |");
            for s in &self.sizes {
                md += &format!(" {} |", cell(s));
            }
            md += "\n";
        };
        row("registration rate", &|s| {
            format!(
                "{:.0} models/s ({:.1} s)",
                s.registrations_per_second, s.register_seconds
            )
        });
        row("RSS before / after registering", &|s| {
            format!("{:.0} / {:.0} MiB", s.rss_before_mib, s.rss_after_mib)
        });
        row("memory per registered model", &|s| {
            format!("**{:.0} bytes**", s.bytes_per_model)
        });
        row("cold route call, mean", &|s| {
            format!("**{:.2} ms**", s.cold_route.mean)
        });
        row("cold route call, p50 / p99 (calls)", &|s| {
            format!(
                "{:.2} / {:.2} ms ({})",
                s.cold_route.p50, s.cold_route.p99, s.cold_route.n
            )
        });
        row("route decision for a loaded model, p50 / p99", &|s| {
            format!("{:.3} / {:.3} ms", s.route_loaded.p50, s.route_loaded.p99)
        });
        row("admin list, page of 1,000, p50 / p99", &|s| {
            format!("**{:.2}** / {:.2} ms", s.list.p50, s.list.p99)
        });
        row("routing table the filter polls (models loaded)", &|s| {
            format!(
                "{} bytes, {:.1} ms ({})",
                s.table_bytes, s.table_p50_ms, s.cold_route.n
            )
        });
        if let (Some(small), Some(large)) = (self.sizes.first(), self.sizes.last()) {
            if let Some(r) = ratio(Some(large.cold_route.mean), Some(small.cold_route.mean)) {
                md += &format!(
                    "\nCold route call mean at {} models over {} models: **{r:.2}x**.\n",
                    thousands(large.models),
                    thousands(small.models)
                );
            }
        }
        md += "\nMemory per model at the smallest size is mostly the registration burst's own buffers \
               (connections, request bodies) spread over few models; the largest size is the figure.\n";
        md += "\nTargets (issue 14): cold route call at 100,000 models ≤ 5 ms mean and within 2x of 1,000 models; \
               admin page of 1,000 ≤ 5 ms p50; memory per registered model ≤ 1 KiB.\n\n";
        for s in &self.sizes {
            if !s.phases.is_empty() {
                md += &format!("At {} models: ", thousands(s.models));
            }
            md += &phases::markdown(&s.phases);
            if s.phases.is_empty() {
                break;
            }
            md += "\n";
        }
        md
    }
}

/// 100000 -> "100,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn timing_summary() {
        let t = Timing::of(&[1.0, 2.0, 3.0, 10.0]);
        assert_eq!((t.n, t.mean, t.p50, t.p99), (4, 4.0, 2.0, 10.0));
    }
}
