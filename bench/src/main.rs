//! `mm-bench`: the benchmarks behind `make bench`. Each part measures side by side in one
//! run (so a noisy machine shows in both columns, not in the ratio) and writes a markdown
//! section and JSON under `--out`; `scripts/bench.sh` stitches the sections into
//! BENCHMARKS.md.

mod churn;
mod cold;
mod cpu;
mod envoys;
mod fake_triton;
mod ha;
mod instructions;
mod phases;
mod plot;
mod profile;
mod scale;
mod stats;
mod warm;
mod wrk;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    about = "Benchmarks of the multi-model gateway",
    args_override_self = true
)]
struct Args {
    /// Where the sections, JSON and plots go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Parts to run: warm, cold, churn, scale, ha; opt-in: instructions (callgrind, slow),
    /// churn-long (the churn trace for --churn-long-seconds) and eviction-plot (plots
    /// `mm-sim --json OUT/eviction.json` into OUT/eviction.png; scripts/bench.sh runs it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "warm,cold,churn,scale,ha"
    )]
    parts: Vec<String>,
    /// Interleaved rounds of the warm path.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per warm-path run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// wrk threads per warm-path run.
    #[arg(long, default_value_t = 1)]
    wrk_threads: u32,
    /// wrk connections per warm-path run.
    #[arg(long, default_value_t = 8)]
    wrk_connections: u32,
    /// Warm targets to run, of direct, plain, noop, noop-upstream, noop-header,
    /// noop-header-unstripped, gateway.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,plain,noop,noop-upstream,gateway"
    )]
    warm_targets: Vec<String>,
    /// Another build of the filter to run as a gateway beside the default one, as
    /// LABEL=PATH.wasm (repeatable): compare builds in the same interleaved rounds.
    #[arg(long = "filter-wasm", value_parser = label_and_path)]
    filter_builds: Vec<(String, PathBuf)>,
    /// Record every Envoy target's warm runs with `perf record` into this directory.
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// Sequential requests per callgrind window (part `instructions`).
    #[arg(long, default_value_t = 200)]
    instruction_requests: usize,
    /// Envoy targets counted by callgrind, of plain, noop, noop-upstream, noop-header,
    /// noop-header-unstripped, gateway (part `instructions`; every `--filter-wasm` build is
    /// counted too).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,noop,noop-upstream,gateway"
    )]
    instruction_targets: Vec<String>,
    /// Callgrind windows per target (part `instructions`).
    #[arg(long, default_value_t = 3)]
    instruction_windows: usize,
    /// Seconds of the idle window that measures an Envoy's background work under callgrind.
    #[arg(long, default_value_t = 10)]
    instruction_idle_seconds: u64,
    /// Seconds of the churn trace.
    #[arg(long, default_value_t = 60)]
    churn_seconds: u64,
    /// Seconds of the long churn trace (part `churn-long`).
    #[arg(long, default_value_t = 300)]
    churn_long_seconds: u64,
    /// Numbers of registered models the control-plane scale part measures at.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    scale_sizes: Vec<usize>,
    /// Fake replicas for the control-plane scale part.
    #[arg(long, default_value_t = 1_000)]
    scale_replicas: usize,
    /// Concurrent registration clients in the scale part.
    #[arg(long, default_value_t = 256)]
    register_clients: usize,
    /// Where the scale part puts the pool-manager's store and repository, LABEL=DIR each;
    /// every size is measured on each (default: /var/tmp, a disk on most machines, and tmpfs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "disk=/var/tmp,tmpfs=/dev/shm"
    )]
    scale_stores: Vec<scale::Store>,
    /// Interleaved rounds of the scale part; figures are the median round's.
    #[arg(long, default_value_t = 3)]
    scale_rounds: usize,
    /// Most cold route calls timed per scale size...
    #[arg(long, default_value_t = 300)]
    cold_calls: usize,
    /// ...within this many seconds (at least 10 calls).
    #[arg(long, default_value_t = 30)]
    cold_budget_seconds: u64,
    /// Models registered on each store in the high-availability part.
    #[arg(long, default_value_t = 2_000)]
    ha_models: usize,
    /// Failovers per way of losing the leader (kill -9, SIGTERM) in the ha part.
    #[arg(long, default_value_t = 5)]
    ha_rounds: usize,
    /// The pool-managers' lease TTL in the ha part, seconds.
    #[arg(long, default_value_t = 3)]
    ha_lease_ttl_seconds: u64,
}

fn label_and_path(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((label, path)) if !label.is_empty() && !path.is_empty() => {
            Ok((label.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("expected LABEL=PATH.wasm, got {s:?}")),
    }
}

fn write(out: &Path, name: &str, md: &str, json: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(out.join(format!("{name}.md")), md)?;
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    Ok(())
}

async fn warm_part(args: &Args, scratch: &Path) -> anyhow::Result<()> {
    for t in &args.warm_targets {
        anyhow::ensure!(
            warm::Kind::NAMES.contains(&t.as_str()),
            "unknown warm target {t} (one of {:?})",
            warm::Kind::NAMES
        );
    }
    if let Some(dir) = &args.perf_dir {
        std::fs::create_dir_all(dir)?;
    }
    let options = warm::Options {
        rounds: args.rounds,
        load: wrk::Load {
            threads: args.wrk_threads,
            connections: args.wrk_connections,
            seconds: args.seconds,
        },
        targets: args.warm_targets.clone(),
        filter_builds: args.filter_builds.clone(),
        perf_dir: args.perf_dir.clone(),
    };
    let w = warm::run(&options, scratch).await.context("warm path")?;
    plot::warm_latency(&w, &args.out.join("warm_latency.png"))?;
    plot::warm_throughput(&w, &args.out.join("warm_throughput.png"))?;
    plot::warm_cpu(&w, &args.out.join("warm_cpu.png"))?;
    write(&args.out, "warm", &w.markdown(), &w)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    plot::init_font()?;
    let scratch = tempfile::tempdir()?;
    for part in &args.parts {
        eprintln!("[mm-bench] {part}");
        match part.as_str() {
            "warm" => warm_part(&args, scratch.path()).await?,
            "instructions" => {
                let options = instructions::Options {
                    requests: args.instruction_requests,
                    windows: args.instruction_windows,
                    idle_seconds: args.instruction_idle_seconds,
                    targets: args.instruction_targets.clone(),
                    filter_builds: args.filter_builds.clone(),
                    dir: args.out.join("callgrind"),
                };
                let i = instructions::run(&options).await.context("instructions")?;
                write(&args.out, "instructions", &i.markdown(), &i)?;
            }
            "eviction-plot" => {
                let json = args.out.join("eviction.json");
                let text = std::fs::read_to_string(&json)
                    .with_context(|| format!("{} (mm-sim --json)", json.display()))?;
                let traces: Vec<plot::EvictionTrace> = serde_json::from_str(&text)?;
                plot::eviction(&traces, &args.out.join("eviction.png"))?;
            }
            "cold" => {
                let c = cold::run(9).await.context("cold path")?;
                plot::cold(&c, &args.out.join("cold.png"))?;
                write(&args.out, "cold", &c.markdown(), &c)?;
            }
            "churn" => {
                let c = churn::run(args.churn_seconds).await.context("churn")?;
                let title = "Churn: a Zipf trace over more models than fit";
                write(&args.out, "churn", &c.markdown(title), &c)?;
            }
            "churn-long" => {
                let c = churn::run(args.churn_long_seconds)
                    .await
                    .context("churn-long")?;
                let title = format!("Churn, long variant ({} s)", args.churn_long_seconds);
                write(&args.out, "churn-long", &c.markdown(&title), &c)?;
            }
            "scale" => {
                let options = scale::Options {
                    sizes: args.scale_sizes.clone(),
                    replicas: args.scale_replicas,
                    register_clients: args.register_clients,
                    cold_calls: args.cold_calls,
                    cold_budget: std::time::Duration::from_secs(args.cold_budget_seconds),
                    stores: args.scale_stores.clone(),
                    rounds: args.scale_rounds,
                };
                let s = scale::run(&options).await.context("scale")?;
                write(&args.out, "scale", &s.markdown(), &s)?;
            }
            "ha" => {
                let options = ha::Options {
                    models: args.ha_models,
                    clients: 64,
                    rounds: args.ha_rounds,
                    lease_ttl: std::time::Duration::from_secs(args.ha_lease_ttl_seconds),
                };
                let h = ha::run(&options).await.context("ha")?;
                write(&args.out, "ha", &h.markdown(), &h)?;
            }
            other => anyhow::bail!("unknown part {other}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_builds_are_label_and_path() {
        assert_eq!(
            label_and_path("no-usage=/tmp/a.wasm").unwrap(),
            ("no-usage".to_owned(), PathBuf::from("/tmp/a.wasm"))
        );
        assert!(label_and_path("/tmp/a.wasm").is_err());
        assert!(label_and_path("=x").is_err());
    }

    #[test]
    fn a_later_option_overrides_an_earlier_one() {
        // scripts/profile-warm.sh passes its defaults first, then the caller's arguments.
        let args = Args::parse_from(["mm-bench", "--rounds", "1", "--rounds", "3"]);
        assert_eq!(args.rounds, 3);
    }
}
