//! `mm-bench`: the benchmarks behind `make bench`. Each part measures side by side in one
//! run (so a noisy machine shows in both columns, not in the ratio) and writes a markdown
//! section and JSON under `--out`; `scripts/bench.sh` stitches the sections into
//! BENCHMARKS.md.

mod fake_triton;
mod parts;
mod plot;
mod wrk;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use parts::Budget;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the multi-model gateway")]
struct Args {
    /// Where the sections, JSON and plots go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Parts to run (warm, cold, churn, scale).
    #[arg(long, value_delimiter = ',', default_value = "warm,cold,churn,scale")]
    parts: Vec<String>,
    /// Interleaved rounds of the warm path.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per warm-path run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Seconds of the churn trace.
    #[arg(long, default_value_t = 60)]
    churn_seconds: u64,
    /// Registered models for the control-plane scale part.
    #[arg(long, default_value_t = 100_000)]
    scale_models: usize,
    /// Fake replicas for the control-plane scale part.
    #[arg(long, default_value_t = 1_000)]
    scale_replicas: usize,
}

fn write(
    out: &std::path::Path,
    name: &str,
    md: &str,
    json: &impl serde::Serialize,
) -> anyhow::Result<()> {
    std::fs::write(out.join(format!("{name}.md")), md)?;
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    plot::init_font()?;
    let scratch = tempfile::tempdir()?;
    let budget = Budget {
        rounds: args.rounds,
        seconds: args.seconds,
        churn_seconds: args.churn_seconds,
        scale_models: args.scale_models,
        scale_replicas: args.scale_replicas,
    };
    for part in &args.parts {
        eprintln!("[mm-bench] {part}");
        match part.as_str() {
            "warm" => {
                let w = parts::warm(budget, scratch.path())
                    .await
                    .context("warm path")?;
                plot::warm_latency(&w, &args.out.join("warm_latency.png"))?;
                plot::warm_throughput(&w, &args.out.join("warm_throughput.png"))?;
                let (a, b, c) = (&w.targets[0], &w.targets[1], &w.targets[2]);
                let mut md = format!(
                    "### Warm path: direct Triton, plain Envoy, Envoy with the filter\n\n\
                     The `linear` example model loaded on one real Triton replica; `wrk -t2 -c{} -d{}s --latency`, \
                     POST of a [1,4] FP32 V2 infer body; the three targets run interleaved (a, b, c, a, b, c, ...) \
                     for {} rounds after a 1 s warm-up each, and the table shows each target's median over its rounds. \
                     Envoy runs with `--concurrency 2` in both (b) and (c); everything shares the machine's 2 cores, \
                     so compare the columns, not the absolute numbers with another machine.\n\n\
                     | target | requests/s | p50 ms | p90 ms | p99 ms |\n|---|---:|---:|---:|---:|\n",
                    w.connections, w.seconds, w.rounds
                );
                for t in &w.targets {
                    md += &format!(
                        "| {} | {:.0} | {:.3} | {:.3} | {:.3} |\n",
                        t.label, t.rps, t.p50, t.p90, t.p99
                    );
                }
                md += &format!(
                    "\nRatios: throughput c/b = **{:.2}**, c/a = **{:.2}**; p50 latency c/b = **{:.2}**, c/a = **{:.2}**; \
                     p99 latency c/b = **{:.2}**.\n\nPool-manager route calls per 1,000 warm requests through the filter: **{:.2}** \
                     (counted from `mm_route_requests_total` around the filter's runs).\n\n\
                     ![warm latency](bench/results/warm_latency.png)\n![warm throughput](bench/results/warm_throughput.png)\n",
                    c.rps / b.rps,
                    c.rps / a.rps,
                    c.p50 / b.p50,
                    c.p50 / a.p50,
                    c.p99 / b.p99,
                    w.route_calls_per_1000
                );
                write(&args.out, "warm", &md, &w)?;
            }
            "cold" => {
                let c = parts::cold(5).await.context("cold path")?;
                plot::cold(&c, &args.out.join("cold.png"))?;
                let md = format!(
                    "### Cold path\n\n\
                     Five fresh models (the `linear` files under new names), one real replica: the first request \
                     through the gateway (route call, placement, staging the files, Triton's load, the inference) \
                     against Triton's own load call for the same files (staged by hand), one after the other.\n\n\
                     | | median ms | samples ms |\n|---|---:|---|\n\
                     | Triton load call alone | {:.1} | {} |\n| first request through the gateway | {:.1} | {} |\n\n\
                     Gateway overhead on a cold start (median difference): **{:.1} ms**.\n\n\
                     100 concurrent first requests for one cold model: **{} load** caused, {} of {} answered 200, \
                     p50 {:.1} ms, p99 {:.1} ms.\n\n![cold path](bench/results/cold.png)\n",
                    c.direct_median_ms,
                    c.direct_load_ms.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
                    c.gateway_median_ms,
                    c.gateway_ms.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
                    c.gateway_median_ms - c.direct_median_ms,
                    c.burst_loads,
                    c.burst_ok,
                    c.burst_requests,
                    c.burst_p50_ms,
                    c.burst_p99_ms
                );
                write(&args.out, "cold", &md, &c)?;
            }
            "churn" => {
                let c = parts::churn(budget.churn_seconds).await.context("churn")?;
                let md = format!(
                    "### Churn: a Zipf trace over more models than fit\n\n\
                     {} models of 100Mi (the `linear` files) on 2 real replicas of 400Mi at the default 80%/60% \
                     watermarks ({} fit at once), `--min-age 1s`; 4 clients send a Zipf(1.0) trace through the \
                     gateway for {:.0} s.\n\n\
                     | requests | success rate | hit rate | loads/min | evictions/min | p50 ms | p99 ms |\n\
                     |---:|---:|---:|---:|---:|---:|---:|\n| {} | {:.2}% | {:.1}% | {:.0} | {:.0} | {:.1} | {:.1} |\n\n\
                     Hit rate: requests that did not wait for a load (1 - route calls answered after a load / requests).\n",
                    c.models,
                    c.fit,
                    c.seconds,
                    c.requests,
                    100.0 * c.ok as f64 / c.requests as f64,
                    100.0 * c.hit_rate,
                    c.loads_per_min,
                    c.evictions_per_min,
                    c.p50_ms,
                    c.p99_ms
                );
                write(&args.out, "churn", &md, &c)?;
            }
            "scale" => {
                let s = parts::scale(budget.scale_models, budget.scale_replicas)
                    .await
                    .context("scale")?;
                let md = format!(
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
                    s.replicas,
                    s.models,
                    s.registrations_per_second,
                    s.register_seconds,
                    s.rss_before_mib,
                    s.rss_after_mib,
                    s.bytes_per_model,
                    s.loaded,
                    s.cold_route_ms,
                    s.loaded,
                    s.route_p50_ms,
                    s.route_p99_ms,
                    s.list_page,
                    s.list_p50_ms,
                    s.list_p99_ms,
                    s.loaded,
                    s.table_bytes,
                    s.table_p50_ms
                );
                write(&args.out, "scale", &md, &s)?;
            }
            other => anyhow::bail!("unknown part {other}"),
        }
    }
    Ok(())
}
