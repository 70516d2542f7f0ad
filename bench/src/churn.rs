//! Churn: a Zipf trace through the gateway over more models than fit on the replicas, so
//! models are loaded and evicted all the time; success rate, hit rate, loads and latency.

use std::time::{Duration, Instant};

use anyhow::bail;
use mm_tests::paths::example_model;
use mm_tests::{Stack, StackOptions};
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::stats::percentile;
use crate::warm::linear_body;

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

pub async fn run(seconds: u64) -> anyhow::Result<Churn> {
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
    let lat: Vec<f64> = results.iter().map(|(_, ms)| *ms).collect();
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
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        latencies_ms: lat,
    })
}

impl Churn {
    /// The section, under `title` (the default run and the long variant share the table).
    pub fn markdown(&self, title: &str) -> String {
        format!(
                    "### {title}\n\n\
                     {} models of 100Mi (the `linear` files) on 2 real replicas of 400Mi at the default 80%/60% \
                     watermarks ({} fit at once), `--min-age 1s`; 4 clients send a Zipf(1.0) trace through the \
                     gateway for {:.0} s.\n\n\
                     | requests | success rate | hit rate | loads/min | evictions/min | p50 ms | p99 ms |\n\
                     |---:|---:|---:|---:|---:|---:|---:|\n| {} | {:.2}% | {:.1}% | {:.0} | {:.0} | {:.1} | {:.1} |\n\n\
                     Hit rate: requests that did not wait for a load (1 - route calls answered after a load / requests). \
                     Target (issue 14): 100% success.\n",
                    self.models,
                    self.fit,
                    self.seconds,
                    self.requests,
                    100.0 * self.ok as f64 / self.requests as f64,
                    100.0 * self.hit_rate,
                    self.loads_per_min,
                    self.evictions_per_min,
                    self.p50_ms,
                    self.p99_ms
                )
    }
}
