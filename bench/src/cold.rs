//! The cold path: the first request for a model through the gateway (route call,
//! placement, staging, Triton's load, the inference) against Triton alone for the same
//! files (its load call, then the first inference straight to the replica), and for the
//! same files without the example models' load-time `import asyncio` (where the first
//! inference's cost went before it moved into the load), side by side in one run, with
//! the route call's round trip as the filter sees it (`mm_filter_route_call_micros`)
//! next to the pool-manager's own time for it (`mm_cold_request_wait_seconds`); and a
//! burst of first requests for one cold model.

use std::path::Path;
use std::time::{Duration, Instant};

use mm_tests::paths::example_model;
use mm_tests::{Stack, StackOptions};
use serde::Serialize;

use crate::phases;
use crate::stats::{median, percentile};
use crate::warm::linear_body;

/// One fresh model's figures, ms.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Triton alone: the load call, the first inference on the fresh model, a second one.
    pub direct_load: f64,
    pub direct_first_infer: f64,
    pub direct_second_infer: f64,
    /// Triton alone, the same files without the models' load-time `import asyncio`:
    /// the load call and the first inference (where that import is paid otherwise).
    pub lazy_load: f64,
    pub lazy_first_infer: f64,
    /// Through the gateway: the first request.
    pub gateway: f64,
    /// Its route call as the filter saw it (dispatch to answer).
    pub route_call: f64,
    /// The pool-manager's own time for that route call.
    pub pool_manager: f64,
    /// Triton's load call inside that route call, as the pool-manager timed it: the same
    /// load the request waited for, so the gateway's overhead over it is not blurred by
    /// the spread between two loads (a's and b's) on a busy machine.
    pub gateway_load_call: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cold {
    pub samples: Vec<Sample>,
    pub gateway_ms: Vec<f64>,
    pub direct_load_ms: Vec<f64>,
    pub gateway_median_ms: f64,
    pub direct_median_ms: f64,
    pub burst_requests: usize,
    pub burst_loads: f64,
    pub burst_ok: usize,
    pub burst_p50_ms: f64,
    pub burst_p99_ms: f64,
    /// `/proc/loadavg`'s 1-minute figure before and after the sequential samples.
    pub load_before: f64,
    pub load_after: f64,
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

/// The line of every example model's `model.py` that imports asyncio at load.
const LOAD_TIME_IMPORT: &str = "import asyncio  # noqa: F401\n";

/// Stages the model at `from` into `to` without its load-time `import asyncio`, so
/// Triton's Python backend imports it on the first inference instead, as it does for a
/// model that does not import it itself: the load and first inference before the move.
fn copy_without_load_time_import(from: &Path, to: &Path) -> anyhow::Result<()> {
    copy_dir(from, to)?;
    let path = to.join("1/model.py");
    let text = std::fs::read_to_string(&path)?;
    anyhow::ensure!(
        text.matches(LOAD_TIME_IMPORT).count() == 1,
        "{} has no line {LOAD_TIME_IMPORT:?}",
        path.display()
    );
    std::fs::write(&path, text.replacen(LOAD_TIME_IMPORT, "", 1))?;
    Ok(())
}

pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The filter's route calls and their summed round trips (µs), and the pool-manager's
/// cold route calls and their summed time (s), as counted now.
#[derive(Debug, Clone, Copy)]
struct Counts {
    route_calls: u64,
    route_micros: u64,
    pm_calls: f64,
    pm_seconds: f64,
    load_call_seconds: f64,
}

async fn counts(stack: &Stack) -> anyhow::Result<Counts> {
    let text = stack.pool_manager.metrics_text().await?;
    Ok(Counts {
        route_calls: stack.envoy.stat("wasmcustom.mm_filter_route_calls").await?,
        route_micros: stack
            .envoy
            .stat("wasmcustom.mm_filter_route_call_micros")
            .await?,
        pm_calls: mm_tests::stack::sum_metric(&text, "mm_cold_request_wait_seconds_count", ""),
        pm_seconds: mm_tests::stack::sum_metric(&text, "mm_cold_request_wait_seconds_sum", ""),
        load_call_seconds: mm_tests::stack::sum_metric(
            &text,
            &format!("{}_sum", phases::METRIC),
            "phase=\"load_call\"",
        ),
    })
}

/// The counts once the filter has flushed one more route call than `before` (its
/// counters reach Envoy on its tick).
async fn counts_after_one(stack: &Stack, before: Counts) -> anyhow::Result<Counts> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = counts(stack).await?;
        // The filter adds its counters one by one: both must have moved (a round trip
        // takes at least a microsecond).
        if now.route_calls > before.route_calls && now.route_micros > before.route_micros {
            anyhow::ensure!(
                now.route_calls == before.route_calls + 1 && now.pm_calls == before.pm_calls + 1.0,
                "expected one route call, counted {:?} -> {:?}",
                before,
                now
            );
            return Ok(now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the filter's route call count did not reach Envoy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn timed_post(
    http: &reqwest::Client,
    url: String,
    body: &serde_json::Value,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = http.post(url).json(body).send().await?;
    let status = r.status();
    let text = r.text().await?;
    anyhow::ensure!(status.is_success(), "{status}: {text}");
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// One fresh model each way: Triton alone, then through the gateway.
async fn sample(stack: &Stack, i: usize) -> anyhow::Result<Sample> {
    let replica = stack.replicas[0].url();
    let http = &stack.http;
    let req = linear_body();
    // Triton alone, the files staged by hand as the pool-manager would.
    let direct = format!("direct{i}");
    copy_dir(&example_model("linear"), &stack.repository.join(&direct))?;
    let load_url = format!("{replica}/v2/repository/models/{direct}/load");
    let direct_load = timed_post(http, load_url, &serde_json::json!({})).await?;
    let infer_url = format!("{replica}/v2/models/{direct}/infer");
    let direct_first_infer = timed_post(http, infer_url.clone(), &req).await?;
    let direct_second_infer = timed_post(http, infer_url, &req).await?;
    // Triton alone, the same files with the first inference's import left to it.
    let lazy = format!("lazy{i}");
    copy_without_load_time_import(&example_model("linear"), &stack.repository.join(&lazy))?;
    let load_url = format!("{replica}/v2/repository/models/{lazy}/load");
    let lazy_load = timed_post(http, load_url, &serde_json::json!({})).await?;
    let infer_url = format!("{replica}/v2/models/{lazy}/infer");
    let lazy_first_infer = timed_post(http, infer_url, &req).await?;

    let name = format!("cold{i}");
    stack
        .register(&name, &example_model("linear"), "32Mi")
        .await?;
    let before = counts(stack).await?;
    let t = Instant::now();
    let r = stack.infer(&name, &req).await?;
    anyhow::ensure!(r.status == 200, "{}", r.text);
    let gateway = t.elapsed().as_secs_f64() * 1000.0;
    let after = counts_after_one(stack, before).await?;
    Ok(Sample {
        direct_load,
        direct_first_infer,
        direct_second_infer,
        lazy_load,
        lazy_first_infer,
        gateway,
        route_call: after.route_micros.saturating_sub(before.route_micros) as f64 / 1000.0,
        pool_manager: (after.pm_seconds - before.pm_seconds) * 1000.0,
        gateway_load_call: (after.load_call_seconds - before.load_call_seconds) * 1000.0,
    })
}

pub async fn run(samples: usize) -> anyhow::Result<Cold> {
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "8Gi".into(),
        ..StackOptions::default()
    })
    .await?;
    let req = linear_body();
    let scrape = || async {
        Ok::<_, anyhow::Error>(phases::totals(&stack.pool_manager.metrics_text().await?))
    };
    let load_before = load_average();
    let phases_before = scrape().await?;
    let mut all = Vec::new();
    for i in 0..samples {
        all.push(sample(&stack, i).await?);
    }
    let phases = phases::means(&phases_before, &scrape().await?);
    let load_after = load_average();
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
    let gateway_ms: Vec<f64> = all.iter().map(|s| s.gateway).collect();
    let direct_ms: Vec<f64> = all.iter().map(|s| s.direct_load).collect();
    Ok(Cold {
        gateway_median_ms: median(&gateway_ms),
        direct_median_ms: median(&direct_ms),
        gateway_ms,
        direct_load_ms: direct_ms,
        samples: all,
        burst_requests: requests,
        burst_loads,
        burst_ok: results.iter().filter(|(ok, _)| *ok).count(),
        burst_p50_ms: percentile(&lat, 0.5),
        burst_p99_ms: percentile(&lat, 0.99),
        load_before,
        load_after,
        phases,
    })
}

impl Cold {
    /// The median over the samples of `f`.
    fn med(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(&self.samples.iter().map(f).collect::<Vec<_>>())
    }

    fn breakdown(&self) -> String {
        let row = |label: &str, f: &dyn Fn(&Sample) -> f64| {
            let all: Vec<String> = self
                .samples
                .iter()
                .map(|s| format!("{:.1}", f(s)))
                .collect();
            format!("| {label} | {:.1} | {} |\n", self.med(f), all.join(", "))
        };
        let mut md = String::from("| | median ms | samples ms |\n|---|---:|---|\n");
        md += &row("(a) Triton alone: load call", &|s| s.direct_load);
        md += &row(
            "(a) Triton alone: first inference on the fresh model",
            &|s| s.direct_first_infer,
        );
        md += &row("(a) Triton alone: second inference", &|s| {
            s.direct_second_infer
        });
        md += &row("(a) Triton alone: load call + first inference", &|s| {
            s.direct_load + s.direct_first_infer
        });
        md += &row(
            "(a') Triton alone, without the load-time import: load call",
            &|s| s.lazy_load,
        );
        md += &row(
            "(a') Triton alone, without the load-time import: first inference",
            &|s| s.lazy_first_infer,
        );
        md += &row(
            "(a') Triton alone, without the load-time import: load call + first inference",
            &|s| s.lazy_load + s.lazy_first_infer,
        );
        md += &row("(b) first request through the gateway", &|s| s.gateway);
        md += &row("(c) its route call, as the filter saw it", &|s| {
            s.route_call
        });
        md += &row("(c) the pool-manager's own time for it", &|s| {
            s.pool_manager
        });
        md += &row(
            "(c) Triton's load call inside it, as the pool-manager timed it",
            &|s| s.gateway_load_call,
        );
        md += &row(
            "(c) Envoy's hop to the pool-manager and back (difference)",
            &|s| s.route_call - s.pool_manager,
        );
        md += &row(
            "(b) after the route answer: forwarding and the first inference",
            &|s| s.gateway - s.route_call,
        );
        md += &row("**gateway overhead over the load call** (b - load)", &|s| {
            s.gateway - s.direct_load
        });
        md += &row(
            "**gateway overhead over load + first inference** (b - a)",
            &|s| s.gateway - s.direct_load - s.direct_first_infer,
        );
        md += &row(
            "**gateway overhead over its own load call** (b - c's load call)",
            &|s| s.gateway - s.gateway_load_call,
        );
        md
    }

    pub fn markdown(&self) -> String {
        format!(
            "### Cold path\n\n\
             {} fresh models (the `linear` files under new names), one real replica, one after the other. \
             Per model, in the same run: (a) Triton alone for the same files (staged by hand): its load call, \
             then the first inference straight to the replica (and a second one); (a') Triton alone for the same \
             files without their load-time `import asyncio` (models/README.md), as the example models were \
             before it: its load call and first inference; (b) a fresh model's first \
             request through the gateway (route call, placement, staging the files, Triton's load, the \
             inference); (c) that request's route call as the filter saw it (`mm_filter_route_call_micros`) \
             and the pool-manager's own time for it (`mm_cold_request_wait_seconds`). Load average (1 min) \
             {:.1} before the samples, {:.1} after, on 2 cores.\n\n{}\n\
             Gateway overhead on a cold start (median of the per-model differences): **{:.1} ms** over \
             Triton's load call, **{:.1} ms** over its load call and first inference, **{:.1} ms** over \
             the load call inside the same request (b minus that load call as the pool-manager timed it: \
             everything the gateway adds to the one load the user waited for, the first inference included; \
             the two figures before it subtract a different load, (a)'s, whose spread on a busy machine \
             can exceed the overhead).\n\n\
             The example models import asyncio while Triton loads them, because Triton's Python backend \
             imports it on a model's first inference otherwise. That moves the cost, it does not remove it: \
             the load call is {:.1} ms longer with the import (a - a'), the first inference {:.1} ms shorter \
             (a' - a), load call + first inference {:.1} ms longer (medians of the per-model differences). \
             The first request's total is what a user waits for either way.\n\n\
             100 concurrent first requests for one cold model: **{} load** caused, {} of {} answered 200, \
             p50 {:.1} ms, p99 {:.1} ms.\n\n![cold path](bench/results/cold.png)\n\n{}\
             \nTarget (issue 14): cold overhead ≤ 10 ms over Triton's own load call.\n",
            self.samples.len(),
            self.load_before,
            self.load_after,
            self.breakdown(),
            self.med(|s| s.gateway - s.direct_load),
            self.med(|s| s.gateway - s.direct_load - s.direct_first_infer),
            self.med(|s| s.gateway - s.gateway_load_call),
            self.med(|s| s.direct_load - s.lazy_load),
            self.med(|s| s.lazy_first_infer - s.direct_first_infer),
            self.med(|s| s.direct_load + s.direct_first_infer - s.lazy_load - s.lazy_first_infer),
            self.burst_loads,
            self.burst_ok,
            self.burst_requests,
            self.burst_p50_ms,
            self.burst_p99_ms,
            phases::markdown(&self.phases)
        )
    }
}
