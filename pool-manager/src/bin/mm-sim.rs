//! `mm-sim`: replays synthetic workloads (the issue-18 shapes) against a simulated pool with
//! the live pool's placement and eviction planner, under the live orders (LRU, GDSF) and
//! Belady's furthest-next-use (a reference that needs the future), next to the offline
//! bounds (PFOO-L, the FOO-L dual bound, PFOO-U), and prints one table per trace and a
//! summary, as plain text or as a markdown section for BENCHMARKS.md (`--json` also writes
//! the figures for `mm-bench`'s plot).

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use clap::Parser;
use pool_manager::eviction::knapsack;
use pool_manager::eviction::offline::{dual_bound, pfoo_l, pfoo_u, Admission, Instance, Objective};
use pool_manager::eviction::policy::HALF_LIFE_REQUESTS;
use pool_manager::eviction::traces::{shape, Workload, WorkloadSpec, SHAPES};
use pool_manager::eviction::{Aging, EvictionCost, GdsfConfig};
use pool_manager::placement::{Resources, Watermarks};
use pool_manager::quantity::{format_bytes, parse_bytes};
use pool_manager::sim::{simulate_tuned, Policy, SimConfig, SimResult};
use serde::Serialize;

/// Trace simulator: eviction policies through the live placement planner, against
/// offline bounds.
#[derive(Debug, Clone, Parser)]
#[command(about)]
struct Args {
    /// Workload shapes, comma-separated: zipf-S (any exponent), shift, bursty,
    /// small-popular, large-popular, scan, each optionally with /flat-load (load times
    /// independent of size); "all" is every shape with both load models.
    #[arg(long, default_value = "zipf-1.0")]
    trace: String,
    /// Policies, comma-separated: lru, gdsf, belady, or all.
    #[arg(long, default_value = "all")]
    policy: String,
    /// Offline bounds: none; fast (PFOO-L and PFOO-U, O(N log N)); all (also the FOO-L
    /// dual bound, the tightest upper bound here, slower).
    #[arg(long, default_value = "all")]
    bounds: String,
    /// Subgradient rounds of the FOO-L dual bound.
    #[arg(long, default_value_t = 100)]
    dual_rounds: usize,
    /// Distinct models in the trace.
    #[arg(long, default_value_t = 10_000)]
    models: usize,
    /// Requests in the trace.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
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
    /// Spread (log-normal sigma) of one load's time around its model's mean.
    #[arg(long, default_value_t = 0.3)]
    jitter: f64,
    /// What a miss costs in GDSF's priority: load-time (the smoothed load time plus
    /// 0.5 s, what the pool uses) or uniform (1: tuned for the hit rate; simulator only).
    #[arg(long, default_value = "load-time")]
    eviction_cost: EvictionCost,
    /// Half-life of GDSF's request counts, in requests to the whole pool (the
    /// pool-manager's --gdsf-half-life).
    #[arg(long, default_value_t = HALF_LIFE_REQUESTS)]
    half_life: f64,
    /// GDSF's aging (the pool-manager's --gdsf-aging): inflation (GreedyDual's L rises to
    /// each victim's priority) or decay (no inflation: the order is the decayed f*c/s
    /// alone).
    #[arg(long, value_enum, default_value = "inflation")]
    aging: Aging,
    /// GDSF's size exponent, for experiments: f*c/s^beta (1 is GDSF).
    #[arg(long, default_value_t = 1.0)]
    size_exponent: f64,
    /// Seed of the trace generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print a GitHub markdown section (for BENCHMARKS.md) instead of plain text.
    #[arg(long)]
    markdown: bool,
    /// Also write the figures as JSON to this file (for `mm-bench --plot-eviction`).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

impl Args {
    /// A command line that reproduces this run, every parameter explicit.
    fn command_line(&self) -> String {
        format!(
            "cargo run --release -p pool-manager --bin mm-sim -- --trace {} --policy {} \
             --bounds {} --dual-rounds {} --models {} --requests {} --replicas {} \
             --replica-capacity {} --size-min {} --size-max {} --high {} --low {} \
             --min-age {} --jitter {} --eviction-cost {} --half-life {} --aging {} \
             --size-exponent {} --seed {}{}",
            self.trace,
            self.policy,
            self.bounds,
            self.dual_rounds,
            self.models,
            self.requests,
            self.replicas,
            format_bytes(self.replica_capacity),
            format_bytes(self.size_min),
            format_bytes(self.size_max),
            self.high,
            self.low,
            self.min_age,
            self.jitter,
            self.eviction_cost,
            self.half_life,
            self.aging.name(),
            self.size_exponent,
            self.seed,
            if self.markdown { " --markdown" } else { "" },
        )
    }

    fn traces(&self) -> Vec<String> {
        if self.trace == "all" {
            return SHAPES
                .iter()
                .flat_map(|s| [s.to_string(), format!("{s}/flat-load")])
                .collect();
        }
        self.trace.split(',').map(|s| s.trim().to_owned()).collect()
    }

    /// The GDSF tuning these flags describe.
    fn gdsf(&self) -> anyhow::Result<GdsfConfig> {
        ensure!(self.half_life > 0.0, "--half-life must be above 0 requests");
        ensure!(
            self.size_exponent.is_finite() && self.size_exponent >= 0.0,
            "--size-exponent must be a number >= 0"
        );
        Ok(GdsfConfig {
            size_exponent: self.size_exponent,
            ..self.eviction_cost.tuned(self.aging, self.half_life)
        })
    }

    fn policies(&self) -> anyhow::Result<Vec<Policy>> {
        if self.policy == "all" {
            return Ok(Policy::ALL.to_vec());
        }
        self.policy
            .split(',')
            .map(|p| p.trim().parse::<Policy>().map_err(|e| anyhow!(e)))
            .collect()
    }
}

/// Which offline bounds to compute.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bounds {
    None,
    Fast,
    All,
}

/// One policy's outcome on one trace.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// Percent.
    hit_rate: f64,
    byte_hit_rate: Option<f64>,
    load_secs: f64,
    /// Misses (policies only).
    misses: Option<u64>,
    /// Misses whose load had to evict first (policies only): in the live pool each waits
    /// for the table to propagate and for its victims' unloads before it loads.
    evicting_misses: Option<u64>,
    /// Victims per evicting miss (policies only).
    victims_per_evicting_miss: Option<f64>,
    /// An offline bound (upper bound on hits, lower bound on load time) or a feasible
    /// single-cache schedule, not a policy's run.
    bound: bool,
    #[serde(skip)]
    result: Option<SimResult>,
    #[serde(skip)]
    wall: Duration,
}

impl Row {
    /// A reference row (an offline bound or a static set): a hit rate and a load time,
    /// none of a policy run's counts.
    fn reference(name: String, hit_rate: f64, load_secs: f64, started: Instant) -> Self {
        Row {
            name,
            hit_rate,
            byte_hit_rate: None,
            load_secs,
            misses: None,
            evicting_misses: None,
            victims_per_evicting_miss: None,
            bound: true,
            result: None,
            wall: started.elapsed(),
        }
    }
}

/// One trace's rows.
#[derive(Debug, Serialize)]
struct TraceRun {
    trace: String,
    rows: Vec<Row>,
}

impl TraceRun {
    fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// The tightest upper bound on the hit rate computed (FOO-L dual, else PFOO-L).
    fn best_bound(&self) -> Option<&Row> {
        self.row(DUAL).or_else(|| self.row(PFOO_L))
    }
}

const DUAL: &str = "FOO-L dual (upper bound)";
const PFOO_L: &str = "PFOO-L (upper bound)";
const PFOO_U: &str = "PFOO-U (one cache, feasible)";
const STATIC_UPPER: &str = "static best, relaxed (IRM, expected)";
const STATIC_POOL: &str = "static best, packed as the pool (IRM)";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.replicas >= 1, "--replicas must be at least 1");
    ensure!(
        args.replica_capacity > 0,
        "--replica-capacity must be above 0"
    );
    let marks = Watermarks::new(args.high, args.low).map_err(|e| anyhow!(e))?;
    let bounds = match args.bounds.as_str() {
        "none" => Bounds::None,
        "fast" => Bounds::Fast,
        "all" => Bounds::All,
        other => anyhow::bail!("--bounds {other:?}: expected none, fast or all"),
    };
    let policies = args.policies()?;
    let gdsf = args.gdsf()?;
    let config = SimConfig {
        replicas: args.replicas,
        replica_capacity: args.replica_capacity,
        marks,
        min_age: args.min_age,
    };
    let size_max = args.size_max.min(config.max_model_size());
    let base = WorkloadSpec {
        models: args.models,
        requests: args.requests,
        seed: args.seed,
        size_min: args.size_min.min(size_max),
        size_max,
        jitter: args.jitter,
        ..WorkloadSpec::default()
    };
    let traces = args.traces();
    for name in &traces {
        shape(name, &base).with_context(|| format!("--trace {name}"))?;
    }
    let run = |name: &String| -> anyhow::Result<TraceRun> {
        let spec = shape(name, &base)?;
        let w = spec
            .generate()
            .with_context(|| format!("generating {name}"))?;
        let mut run = run_trace(name, &w, &config, &policies, gdsf, bounds, &args)?;
        if bounds != Bounds::None {
            if let Some(p) = spec.probabilities()? {
                run.rows.extend(static_rows(&w, &p, &config));
            }
        }
        Ok(run)
    };
    let runs = in_parallel(&traces, run)?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&runs)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let notes = notes(&args, &config, size_max);
    if args.markdown {
        print_markdown(&args, &notes, &runs);
    } else {
        print_plain(&args, &notes, &runs);
    }
    Ok(())
}

/// `f` of each item, on as many threads as there are cores, results in the items' order.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<R>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let result = f(item);
                done.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((i, result));
            });
        }
    });
    let mut done = done
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn run_trace(
    name: &str,
    w: &Workload,
    config: &SimConfig,
    policies: &[Policy],
    gdsf: GdsfConfig,
    bounds: Bounds,
    args: &Args,
) -> anyhow::Result<TraceRun> {
    let loads: Vec<f64> = (0..w.len()).map(|i| w.load_time(i)).collect();
    let mut rows = Vec::new();
    for &policy in policies {
        let started = Instant::now();
        let r = simulate_tuned(&w.trace, &loads, config, policy, gdsf)
            .with_context(|| format!("simulating {policy} on {name}"))?;
        rows.push(Row {
            name: policy.to_string(),
            hit_rate: 100.0 * r.hit_rate(),
            byte_hit_rate: Some(100.0 * r.byte_hit_rate()),
            load_secs: r.load_secs,
            misses: Some(r.misses),
            evicting_misses: Some(r.evicting_loads),
            victims_per_evicting_miss: Some(r.victims_per_evicting_load()),
            bound: false,
            result: Some(r),
            wall: started.elapsed(),
        });
    }
    if bounds != Bounds::None {
        // Every pool schedule keeps each replica under its high watermark, so it fits one
        // cache of the replicas' summed high watermarks: that cache's upper bounds bound
        // the pool too (PFOO-U is only feasible for the one cache, not for the pool).
        let capacity = Resources::new(config.replica_capacity, 0)
            .scale(config.marks.high)
            .memory
            .saturating_mul(config.replicas as u64);
        let hits = Instance::from_workload(w, capacity, Admission::Demand, Objective::Misses);
        let time = Instance::from_workload(w, capacity, Admission::Demand, Objective::LoadTime);
        let mut bound =
            |name: &str, f: &dyn Fn(&Instance) -> pool_manager::eviction::offline::Bound| {
                let started = Instant::now();
                let (h, t) = (f(&hits), f(&time));
                rows.push(Row::reference(
                    name.to_owned(),
                    100.0 * h.hit_rate(),
                    t.load_secs,
                    started,
                ));
            };
        bound(PFOO_L, &pfoo_l);
        if bounds == Bounds::All {
            bound(DUAL, &|i| dual_bound(i, args.dual_rounds));
        }
        bound(PFOO_U, &pfoo_u);
    }
    Ok(TraceRun {
        trace: name.to_owned(),
        rows,
    })
}

/// The best static sets under the workload's true popularity ([`knapsack`]): the
/// relaxation over the replicas' summed high watermarks (no static set does better), and
/// a greedy packing the pool could hold: every replica to its high watermark but one,
/// which keeps room to load any miss (the largest model) under its low watermark, as the
/// sweep leaves it. Hit rates measured on the trace (each kept model's first request
/// misses); the relaxation's is its expectation.
fn static_rows(w: &Workload, p: &[f64], config: &SimConfig) -> Vec<Row> {
    let sizes = &w.trace.sizes;
    let per = |mark: f64| {
        Resources::new(config.replica_capacity, 0)
            .scale(mark)
            .memory
    };
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut bins = vec![per(config.marks.high); config.replicas];
    if let Some(last) = bins.last_mut() {
        *last = per(config.marks.low).saturating_sub(largest);
    }
    let summed = per(config.marks.high).saturating_mul(config.replicas as u64);
    let started = Instant::now();
    let upper = knapsack::fractional(sizes, p, summed);
    let set = knapsack::greedy(sizes, p, &bins);
    let mut seen = vec![false; sizes.len()];
    let mut load_secs = 0.0;
    for (i, &m) in w.trace.requests.iter().enumerate() {
        let m = m as usize;
        if !(set.kept[m] && seen[m]) {
            load_secs += w.load_time(i);
        }
        seen[m] = true;
    }
    let requests = w.len().max(1) as f64;
    vec![
        Row::reference(STATIC_UPPER.to_owned(), 100.0 * upper, f64::NAN, started),
        Row::reference(
            format!("{STATIC_POOL} (expected {:.2})", 100.0 * set.expected),
            100.0 * set.hits(&w.trace.requests) as f64 / requests,
            load_secs,
            started,
        ),
    ]
}

fn notes(args: &Args, config: &SimConfig, size_max: u64) -> Vec<String> {
    let mut notes = vec![
        format!(
            "workloads: {} models of {}..{} (log-uniform), {} requests at 100/s, seed {}; \
             loads take 50 ms + 4 s/GiB (or log-uniform 0.1..20 s with /flat-load), each \
             jittered (log-normal sigma {}) per request, so every policy pays the same for \
             the same miss",
            args.models,
            approx(args.size_min.min(size_max)),
            approx(size_max),
            args.requests,
            args.seed,
            args.jitter,
        ),
        format!(
            "pool: {} replicas x {}, watermarks high {} / low {}, min age {} requests; every \
             policy plans through the live pool's table, snapshot and planner \
             (placement::plan), only the victim order differs; LRU and GDSF are the pool's \
             `--eviction lru|gdsf`, Belady (furthest next use) needs the future",
            config.replicas,
            approx(config.replica_capacity),
            config.marks.high,
            config.marks.low,
            config.min_age,
        ),
        "bounds: one cache of the replicas' summed high watermarks, demand admission (a \
         model is loaded to be served); hit rates from the cost-1 instance, load times from \
         the cost = load time instance. PFOO-L and the FOO-L dual are upper bounds on any \
         pool's hit rate (lower bounds on its load time); PFOO-U is a feasible schedule of \
         the one cache (not of the pool)"
            .to_owned(),
    ];
    if size_max < args.size_max {
        notes.push(format!(
            "--size-max lowered from {} to {} ({}), a replica's high watermark",
            format_bytes(args.size_max),
            size_max,
            approx(size_max)
        ));
    }
    notes
}

const HEADERS: [&str; 11] = [
    "policy",
    "hit rate %",
    "byte hit rate %",
    "load time paid s",
    "misses",
    "loads",
    "evictions",
    "failed",
    "evicting misses",
    "evicting % of misses",
    "victims per evicting miss",
];

fn cells(row: &Row) -> Vec<String> {
    let count =
        |f: fn(&SimResult) -> u64| row.result.map_or("–".to_owned(), |r| f(&r).to_string());
    vec![
        row.name.clone(),
        format!("{:.2}", row.hit_rate),
        row.byte_hit_rate
            .map_or("–".to_owned(), |b| format!("{b:.2}")),
        if row.load_secs.is_nan() {
            "–".to_owned()
        } else {
            format!("{:.0}", row.load_secs)
        },
        count(|r| r.misses),
        count(|r| r.loads),
        count(|r| r.evictions),
        count(|r| r.failed),
        count(|r| r.evicting_loads),
        row.result.map_or("–".to_owned(), |r| {
            format!("{:.1}", 100.0 * r.evicting_share())
        }),
        row.result.map_or("–".to_owned(), |r| {
            format!("{:.2}", r.victims_per_evicting_load())
        }),
    ]
}

/// One line per trace: each policy's hit rate and load time, and the best upper bound.
fn summary_rows(runs: &[TraceRun]) -> (Vec<String>, Vec<Vec<String>>) {
    let policies: Vec<&str> = runs
        .first()
        .map(|r| {
            r.rows
                .iter()
                .filter(|r| !r.bound)
                .map(|r| r.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    let mut headers = vec!["trace".to_owned()];
    headers.extend(policies.iter().map(|p| format!("{p} hit %")));
    headers.push("upper bound hit %".to_owned());
    headers.extend(policies.iter().map(|p| format!("{p} load s")));
    headers.push("lower bound load s".to_owned());
    headers.push("GDSF vs LRU load".to_owned());
    let rows = runs
        .iter()
        .map(|run| {
            let mut cells = vec![run.trace.clone()];
            let get = |p: &str| run.row(p);
            cells.extend(
                policies
                    .iter()
                    .map(|p| get(p).map_or("–".into(), |r| format!("{:.2}", r.hit_rate))),
            );
            cells.push(
                run.best_bound()
                    .map_or("–".into(), |r| format!("{:.2}", r.hit_rate)),
            );
            cells.extend(
                policies
                    .iter()
                    .map(|p| get(p).map_or("–".into(), |r| format!("{:.0}", r.load_secs))),
            );
            cells.push(
                run.best_bound()
                    .map_or("–".into(), |r| format!("{:.0}", r.load_secs)),
            );
            cells.push(match (get("LRU"), get("GDSF")) {
                (Some(l), Some(g)) if l.load_secs > 0.0 => {
                    format!("{:+.1}%", 100.0 * (g.load_secs / l.load_secs - 1.0))
                }
                _ => "–".into(),
            });
            cells
        })
        .collect();
    (headers, rows)
}

/// Whether GDSF met the issue's targets: no worse than LRU on every trace (hit rate and
/// load time), and on Zipf 1.0 at least 55% and within 5 points of the best upper bound.
fn verdict(runs: &[TraceRun]) -> Vec<String> {
    let mut lines = Vec::new();
    let worse: Vec<&str> = runs
        .iter()
        .filter(|run| match (run.row("LRU"), run.row("GDSF")) {
            (Some(l), Some(g)) => g.hit_rate < l.hit_rate || g.load_secs > l.load_secs,
            _ => false,
        })
        .map(|run| run.trace.as_str())
        .collect();
    if runs
        .iter()
        .all(|r| r.row("LRU").is_some() && r.row("GDSF").is_some())
    {
        lines.push(if worse.is_empty() {
            "GDSF's hit rate and load time paid are at least as good as LRU's on every trace."
                .to_owned()
        } else {
            format!(
                "GDSF is worse than LRU in hit rate or load time on: {}.",
                worse.join(", ")
            )
        });
    }
    if let Some(run) = runs.iter().find(|r| r.trace == "zipf-1.0") {
        if let (Some(g), Some(b)) = (run.row("GDSF"), run.best_bound()) {
            let gap = b.hit_rate - g.hit_rate;
            lines.push(format!(
                "Zipf 1.0: GDSF {:.2}% (target >= 55%: {}), {:.2} points below the best upper \
                 bound {:.2}% (target <= 5: {}).",
                g.hit_rate,
                if g.hit_rate >= 55.0 { "met" } else { "not met" },
                gap,
                b.hit_rate,
                if gap <= 5.0 { "met" } else { "not met" },
            ));
        }
    }
    lines
}

fn print_markdown(args: &Args, notes: &[String], runs: &[TraceRun]) {
    println!("### Eviction policies (trace simulator)\n");
    println!("```sh\n{}\n```\n", args.command_line());
    for line in notes {
        println!("- {line}");
    }
    println!();
    if runs.len() > 1 {
        let (headers, rows) = summary_rows(runs);
        markdown_table(&headers, &rows);
        println!();
    }
    for line in verdict(runs) {
        println!("{line}\n");
    }
    if runs.len() > 1 {
        println!("![hit rate per trace and policy](bench/results/eviction.png)\n");
    }
    for run in runs {
        println!("#### {}\n", run.trace);
        let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
        let rows: Vec<Vec<String>> = run.rows.iter().map(cells).collect();
        markdown_table(&headers, &rows);
        println!();
    }
}

fn markdown_table(headers: &[String], rows: &[Vec<String>]) {
    println!("| {} |", headers.join(" | "));
    println!("|---|{}", "---:|".repeat(headers.len().saturating_sub(1)));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

fn print_plain(args: &Args, notes: &[String], runs: &[TraceRun]) {
    println!("{}\n", args.command_line());
    for line in notes {
        println!("{line}");
    }
    for run in runs {
        println!("\n{}", run.trace);
        let mut headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
        headers.push("wall time".to_owned());
        let rows: Vec<Vec<String>> = run
            .rows
            .iter()
            .map(|row| {
                let mut cells = cells(row);
                cells.push(format!("{:.1} ms", row.wall.as_secs_f64() * 1e3));
                cells
            })
            .collect();
        print_plain_table(&headers, &rows);
    }
    if runs.len() > 1 {
        println!();
        let (headers, rows) = summary_rows(runs);
        print_plain_table(&headers, &rows);
    }
    println!();
    for line in verdict(runs) {
        println!("{line}");
    }
}

/// Columns padded to their widest cell; numbers right-aligned, the first column left.
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
