//! `mm-sim`: replays a synthetic Zipf trace against a simulated pool with the live pool's
//! placement and eviction planner, once with LRU victims (the live order) and once with
//! Belady's furthest-next-use victims (a reference that needs the future), and prints one
//! comparison table, as plain text or as a markdown section for BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use clap::Parser;
use pool_manager::placement::Watermarks;
use pool_manager::quantity::{format_bytes, parse_bytes};
use pool_manager::sim::{simulate, Policy, SimConfig, SimResult, TraceSpec};

/// Trace simulator: LRU against Belady eviction, through the live placement planner.
#[derive(Debug, Clone, Parser)]
#[command(about)]
struct Args {
    /// Distinct models in the trace.
    #[arg(long, default_value_t = 10_000)]
    models: usize,
    /// Requests in the trace.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Zipf exponent of model popularity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Replicas in the simulated pool.
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Memory of each replica (bytes, or a quantity such as 4Gi).
    #[arg(long, default_value = "4Gi", value_parser = parse_bytes)]
    replica_capacity: u64,
    /// Smallest model (sizes are log-uniform between the bounds).
    #[arg(long, default_value = "16Mi", value_parser = parse_bytes)]
    size_min: u64,
    /// Largest model; lowered to a replica's high watermark if above it, since larger
    /// models could never be placed.
    #[arg(long, default_value = "512Mi", value_parser = parse_bytes)]
    size_max: u64,
    /// High watermark, as a fraction of capacity: crossing it triggers eviction.
    #[arg(long, default_value_t = 0.8)]
    high: f64,
    /// Low watermark: eviction frees memory down to it.
    #[arg(long, default_value_t = 0.6)]
    low: f64,
    /// Minimum age, in requests, before a used or loaded model may be evicted.
    #[arg(long, default_value_t = 0)]
    min_age: u64,
    /// Seed of the trace generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print a GitHub markdown section (for BENCHMARKS.md) instead of plain text.
    #[arg(long)]
    markdown: bool,
}

impl Args {
    /// A command line that reproduces this run, every parameter explicit.
    fn command_line(&self) -> String {
        let mut line = format!(
            "cargo run --release -p pool-manager --bin mm-sim -- --models {} --requests {} \
             --zipf {} --replicas {} --replica-capacity {} --size-min {} --size-max {} \
             --high {} --low {} --min-age {} --seed {}",
            self.models,
            self.requests,
            self.zipf,
            self.replicas,
            format_bytes(self.replica_capacity),
            format_bytes(self.size_min),
            format_bytes(self.size_max),
            self.high,
            self.low,
            self.min_age,
            self.seed,
        );
        if self.markdown {
            line.push_str(" --markdown");
        }
        line
    }
}

/// One policy's outcome.
struct Run {
    policy: Policy,
    result: SimResult,
    wall: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.replicas >= 1, "--replicas must be at least 1");
    ensure!(
        args.replica_capacity > 0,
        "--replica-capacity must be above 0"
    );
    let marks = Watermarks::new(args.high, args.low).map_err(|e| anyhow!(e))?;
    let config = SimConfig {
        replicas: args.replicas,
        replica_capacity: args.replica_capacity,
        marks,
        min_age: args.min_age,
    };
    let mut spec = TraceSpec {
        models: args.models,
        requests: args.requests,
        zipf_s: args.zipf,
        seed: args.seed,
        size_min: args.size_min,
        size_max: args.size_max,
    };
    let clamped = spec.clamp_sizes_to(&config);

    let started = Instant::now();
    let trace = spec.generate().context("generating the trace")?;
    let generation = started.elapsed();
    let runs = Policy::ALL
        .into_iter()
        .map(|policy| {
            let started = Instant::now();
            let result = simulate(&trace, &config, policy)
                .with_context(|| format!("simulating {policy}"))?;
            Ok(Run {
                policy,
                result,
                wall: started.elapsed(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let size_note = clamped.map(|original| {
        format!(
            "--size-max lowered from {} to {} bytes ({}), the high watermark of a replica: \
             the live pool refuses larger models at registration",
            format_bytes(original),
            spec.size_max,
            approx(spec.size_max),
        )
    });
    let parameters = [
        format!(
            "trace: {} models ({} requested), {} requests, Zipf popularity s = {} (ranks \
             shuffled against sizes), sizes log-uniform in {}..{}, seed {}",
            spec.models,
            trace.distinct_models(),
            spec.requests,
            spec.zipf_s,
            approx(spec.size_min),
            approx(spec.size_max),
            spec.seed,
        ),
        format!(
            "pool: {} replicas x {}, watermarks high {} / low {}, min age {} requests",
            config.replicas,
            approx(config.replica_capacity),
            marks.high,
            marks.low,
            config.min_age,
        ),
        "both policies plan from the live pool's own table, snapshot and planner (placement::plan); \
         only the victim order differs. Belady (furthest next use) needs the future: a \
         reference, optimal only for one cache of equal-sized models"
            .to_owned(),
    ];
    let headers = [
        "policy",
        "hit rate",
        "misses",
        "loads",
        "evictions",
        "mass evictions",
        "failed",
    ];
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let r = &run.result;
            vec![
                run.policy.to_string(),
                format!("{:.2}%", 100.0 * r.hit_rate()),
                r.misses.to_string(),
                r.loads.to_string(),
                r.evictions.to_string(),
                r.mass_evictions.to_string(),
                r.failed.to_string(),
            ]
        })
        .collect();
    let summary = summary(&runs);

    if args.markdown {
        println!("### Trace simulator\n");
        println!("```sh\n{}\n```\n", args.command_line());
        for line in parameters.iter().chain(&size_note) {
            println!("- {line}");
        }
        println!();
        println!("| {} |", headers.join(" | "));
        println!("|---|{}", "---:|".repeat(headers.len() - 1));
        for row in &rows {
            println!("| {} |", row.join(" | "));
        }
        println!("\n{summary}");
    } else {
        println!("{}\n", args.command_line());
        for line in parameters.iter() {
            println!("{line}");
        }
        if let Some(note) = &size_note {
            println!("note: {note}");
        }
        println!(
            "trace generated in {:.0} ms\n",
            generation.as_secs_f64() * 1e3
        );
        let mut headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        headers.push("wall time".to_owned());
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .zip(&runs)
            .map(|(mut row, run)| {
                row.push(format!("{:.1} ms", run.wall.as_secs_f64() * 1e3));
                row
            })
            .collect();
        print_plain_table(&headers, &rows);
        println!("\n{summary}");
    }
    Ok(())
}

/// "LRU achieves X% of Belady's hit rate", or why that ratio is undefined.
fn summary(runs: &[Run]) -> String {
    let rate = |p: Policy| {
        runs.iter()
            .find(|r| r.policy == p)
            .map(|r| r.result.hit_rate())
    };
    match (rate(Policy::Lru), rate(Policy::Belady)) {
        (Some(lru), Some(belady)) if belady > 0.0 => {
            format!(
                "LRU achieves {:.1}% of Belady's hit rate.",
                100.0 * lru / belady
            )
        }
        _ => "Belady has no hits: no ratio to report.".to_owned(),
    }
}

/// Columns padded to their widest cell; numbers right-aligned, the policy left-aligned.
fn print_plain_table(headers: &[String], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .chain(headers.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("{}", line(headers));
    println!(
        "{}",
        widths
            .iter()
            .map(|&w| "-".repeat(w))
            .collect::<Vec<_>>()
            .join("-|-")
    );
    for row in rows {
        println!("{}", line(row));
    }
}

/// A size for people: exact when it is a whole binary unit, else to one decimal.
fn approx(bytes: u64) -> String {
    let exact = format_bytes(bytes);
    if exact != bytes.to_string() || bytes < 1 << 10 {
        return exact;
    }
    let units = [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    units
        .iter()
        .find(|(_, unit)| bytes >= *unit)
        .map(|(suffix, unit)| format!("~{:.1}{suffix}", bytes as f64 / *unit as f64))
        .unwrap_or(exact)
}
