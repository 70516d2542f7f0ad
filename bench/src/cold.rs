//! The cold path: the first request for a model through the gateway (route call,
//! placement, staging, Triton's load, the inference) against Triton's own load call for the
//! same files, and a burst of first requests for one cold model.

use std::path::Path;
use std::time::Instant;

use mm_tests::paths::example_model;
use mm_tests::{Stack, StackOptions};
use serde::Serialize;

use crate::phases;
use crate::stats::{median, percentile};
use crate::warm::linear_body;

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
    /// The pool-manager's per-phase means over the sequential samples (empty: not exposed).
    pub phases: Vec<phases::Phase>,
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

pub async fn run(samples: usize) -> anyhow::Result<Cold> {
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
    let scrape = || async {
        let text = http
            .get(stack.pool_manager.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok::<_, anyhow::Error>(phases::totals(&text))
    };
    let phases_before = scrape().await?;
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
    let phases = phases::means(&phases_before, &scrape().await?);
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
    let lat: Vec<f64> = results.iter().map(|(_, ms)| *ms).collect();
    Ok(Cold {
        gateway_median_ms: median(&gateway_ms),
        direct_median_ms: median(&direct_ms),
        gateway_ms,
        direct_load_ms: direct_ms,
        burst_requests: requests,
        burst_loads,
        burst_ok: results.iter().filter(|(ok, _)| *ok).count(),
        burst_p50_ms: percentile(&lat, 0.5),
        burst_p99_ms: percentile(&lat, 0.99),
        phases,
    })
}

impl Cold {
    pub fn markdown(&self) -> String {
        format!(
                    "### Cold path\n\n\
                     Five fresh models (the `linear` files under new names), one real replica: the first request \
                     through the gateway (route call, placement, staging the files, Triton's load, the inference) \
                     against Triton's own load call for the same files (staged by hand), one after the other.\n\n\
                     | | median ms | samples ms |\n|---|---:|---|\n\
                     | Triton load call alone | {:.1} | {} |\n| first request through the gateway | {:.1} | {} |\n\n\
                     Gateway overhead on a cold start (median difference): **{:.1} ms**.\n\n\
                     100 concurrent first requests for one cold model: **{} load** caused, {} of {} answered 200, \
                     p50 {:.1} ms, p99 {:.1} ms.\n\n![cold path](bench/results/cold.png)\n",
                    self.direct_median_ms,
                    self.direct_load_ms.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
                    self.gateway_median_ms,
                    self.gateway_ms.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
                    self.gateway_median_ms - self.direct_median_ms,
                    self.burst_loads,
                    self.burst_ok,
                    self.burst_requests,
                    self.burst_p50_ms,
                    self.burst_p99_ms
                ) + "\n" + &phases::markdown(&self.phases)
            + "\nTarget (issue 14): cold overhead ≤ 10 ms over Triton's own load call.\n"
    }
}
