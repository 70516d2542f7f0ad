//! Eviction lab: replays the issue-18 workloads on one cache (the pool's watermarks, no
//! planner) under LRU, GreedyDual-Size-Frequency variants and Belady, next to the offline
//! bounds, to choose and justify the policy's design. Plain-text tables on stdout.
//!
//! `cargo run --release -p pool-manager --example eviction_lab -- --help`

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use pool_manager::eviction::offline::{
    dual_bound, foo, pfoo_l, pfoo_u, Admission, Instance, Objective,
};
use pool_manager::eviction::replay::next_uses;
use pool_manager::eviction::replay::{replay, Cache, Outcome, Victims};
use pool_manager::eviction::traces::{shape, Workload, WorkloadSpec, SHAPES};
use pool_manager::eviction::Gdsf;
use pool_manager::eviction::{Aging, GdsfConfig, MissCost};
use pool_manager::placement::{
    self, Decision, ReplicaSnapshot, Resident, Resources, Snapshot, Standing, VictimOrder,
    Watermarks,
};
use pool_manager::quantity::parse_bytes;

#[derive(Debug, Parser)]
struct Args {
    /// Scenarios to run (comma-separated names, or "all").
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Policy set: "main" (LRU, the chosen GDSF, Belady) or "variants" (design variants).
    #[arg(long, default_value = "main")]
    policies: String,
    #[arg(long, default_value_t = 10_000)]
    models: usize,
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Cache capacity (bytes or a quantity).
    #[arg(long, default_value = "16Gi", value_parser = parse_bytes)]
    capacity: u64,
    #[arg(long, default_value_t = 0.8)]
    high: f64,
    #[arg(long, default_value_t = 0.6)]
    low: f64,
    /// Subgradient rounds of the dual bound.
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Also run the exact FOO (only for a few thousand requests).
    #[arg(long)]
    foo: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Replay on this many replicas of `capacity` each through the live planner
    /// (`placement::plan`) instead of one cache of `capacity`.
    #[arg(long)]
    replicas: Option<usize>,
    /// Spread (log-normal sigma) of one load's time around its model's mean.
    #[arg(long, default_value_t = 0.3)]
    jitter: f64,
}

/// The default policy: the design this lab chose (see `variants`).
fn chosen() -> GdsfConfig {
    GdsfConfig::default()
}

fn policies(set: &str) -> anyhow::Result<Vec<(String, Victims)>> {
    let gdsf = |name: &str, c: GdsfConfig| (name.to_owned(), Victims::Gdsf(c));
    let base = chosen();
    Ok(match set {
        "main" => vec![
            ("LRU".to_owned(), Victims::Lru),
            gdsf("GDSF", base),
            ("Belady".to_owned(), Victims::Belady),
        ],
        "variants" => vec![
            ("LRU".to_owned(), Victims::Lru),
            gdsf("GDSF", base),
            gdsf(
                "cost=1",
                GdsfConfig {
                    cost: MissCost::Unit,
                    ..base
                },
            ),
            gdsf(
                "cost=EWMA",
                GdsfConfig {
                    cost: MissCost::LoadTime { overhead: 0.0 },
                    ..base
                },
            ),
            gdsf(
                "cost=last",
                GdsfConfig {
                    cost: MissCost::LastLoadTime,
                    ..base
                },
            ),
            gdsf(
                "no history",
                GdsfConfig {
                    history: false,
                    ..base
                },
            ),
            gdsf(
                "no admission",
                GdsfConfig {
                    admission: None,
                    ..base
                },
            ),
            gdsf(
                "half-life 600s",
                GdsfConfig {
                    half_life: 600.0,
                    ..base
                },
            ),
            gdsf(
                "sweep inflates",
                GdsfConfig {
                    sweep_inflates: true,
                    ..base
                },
            ),
            gdsf(
                "no decay",
                GdsfConfig {
                    half_life: f64::INFINITY,
                    ..base
                },
            ),
            gdsf(
                "no decay, sweep inflates (old)",
                GdsfConfig {
                    half_life: f64::INFINITY,
                    sweep_inflates: true,
                    ..base
                },
            ),
            gdsf(
                "no aging",
                GdsfConfig {
                    aging: Aging::None,
                    ..base
                },
            ),
            gdsf(
                "decay 200s",
                GdsfConfig {
                    aging: Aging::Decay,
                    half_life: 200.0,
                    ..base
                },
            ),
            gdsf(
                "decay 60s",
                GdsfConfig {
                    aging: Aging::Decay,
                    half_life: 60.0,
                    ..base
                },
            ),
            ("Belady".to_owned(), Victims::Belady),
        ],
        "zipf-target" => {
            let mut v = vec![("LRU".to_owned(), Victims::Lru), gdsf("GDSF", base)];
            for beta in [1.5, 2.0, 3.0] {
                for (cost, label) in [(base.cost, "c=EWMA+0.5"), (MissCost::Unit, "c=1")] {
                    v.push(gdsf(
                        &format!("s^{beta} {label}"),
                        GdsfConfig {
                            size_exponent: beta,
                            cost,
                            ..base
                        },
                    ));
                }
            }
            for (admission, label) in [(0.0, "probation all"), (0.05, "probation >5%")] {
                for beta in [1.0, 2.0] {
                    for (cost, c) in [(base.cost, "c=EWMA+0.5"), (MissCost::Unit, "c=1")] {
                        v.push(gdsf(
                            &format!("{label} s^{beta} {c}"),
                            GdsfConfig {
                                admission: Some(admission),
                                size_exponent: beta,
                                cost,
                                ..base
                            },
                        ));
                    }
                }
            }
            v.push(gdsf(
                "s^2 decay 200s",
                GdsfConfig {
                    size_exponent: 2.0,
                    aging: Aging::Decay,
                    half_life: 200.0,
                    ..base
                },
            ));
            v.push(("Belady".to_owned(), Victims::Belady));
            v
        }
        "offline" => vec![("Belady".to_owned(), Victims::Belady)],
        other => bail!("unknown policy set {other:?} (main, variants, zipf-target, offline)"),
    })
}

fn scenarios(args: &Args) -> anyhow::Result<Vec<(String, WorkloadSpec)>> {
    let base = WorkloadSpec {
        models: args.models,
        requests: args.requests,
        seed: args.seed,
        jitter: args.jitter,
        ..WorkloadSpec::default()
    };
    let mut all = Vec::new();
    for name in SHAPES {
        for name in [name.to_owned(), format!("{name}/flat-load")] {
            all.push((name.clone(), shape(&name, &base)?));
        }
    }
    Ok(all)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let marks = Watermarks::new(args.high, args.low).map_err(|e| anyhow::anyhow!(e))?;
    let cache = Cache {
        capacity: args.capacity,
        marks,
    };
    let policies = policies(&args.policies)?;
    let wanted: Vec<&str> = args.scenarios.split(',').collect();
    for (name, spec) in scenarios(&args)? {
        if !wanted.contains(&"all") && !wanted.contains(&name.as_str()) {
            continue;
        }
        let w = spec
            .generate()
            .with_context(|| format!("generating {name}"))?;
        println!(
            "\n## {name}: {} requests, {} models",
            w.len(),
            w.trace.sizes.len()
        );
        let run = |victims: &Victims| match args.replicas {
            Some(n) => pool_replay(&w, n, &cache, victims),
            None => replay(&w, &cache, victims),
        };
        let lru = run(&Victims::Lru);
        println!(
            "{:<16} {:>7} {:>7} {:>11} {:>9} {:>9}",
            "policy", "hit %", "byte %", "load s", "vs LRU", "misses"
        );
        for (policy, victims) in &policies {
            let started = Instant::now();
            let r = run(victims);
            row(policy, &r, &lru, started);
        }
        if let (Some(n), "offline") = (args.replicas, args.policies.as_str()) {
            let started = Instant::now();
            let r = pool_replay_size_belady(&w, n, &cache);
            row("size-Belady", &r, &lru, started);
        }
        if args.replicas.is_none() {
            bounds(&w, &cache, &args);
        }
    }
    Ok(())
}

fn row(name: &str, r: &Outcome, lru: &Outcome, started: Instant) {
    println!(
        "{:<16} {:>7.2} {:>7.2} {:>11.0} {:>+8.1}% {:>9}   ({:.0} ms)",
        name,
        100.0 * r.hit_rate(),
        100.0 * r.byte_hit_rate(),
        r.load_secs,
        100.0 * (r.load_secs / lru.load_secs - 1.0),
        r.requests - r.hits,
        started.elapsed().as_secs_f64() * 1e3,
    );
}

fn bounds(w: &Workload, cache: &Cache, args: &Args) {
    let hits = Instance::from_workload(w, cache.limit(), Admission::Demand, Objective::Misses);
    let time = Instance::from_workload(w, cache.limit(), Admission::Demand, Objective::LoadTime);
    let started = Instant::now();
    let line = |name: &str, h: f64, t: f64| {
        println!("{:<16} {:>7.2} {:>7} {:>11.0}", name, 100.0 * h, "", t);
    };
    let (dh, dt) = (
        dual_bound(&hits, args.rounds),
        dual_bound(&time, args.rounds),
    );
    line("FOO-L (dual)", dh.hit_rate(), dt.load_secs);
    line("PFOO-L", pfoo_l(&hits).hit_rate(), pfoo_l(&time).load_secs);
    line("PFOO-U", pfoo_u(&hits).hit_rate(), pfoo_u(&time).load_secs);
    if args.foo {
        let (fh, ft) = (foo(&hits), foo(&time));
        line("FOO-L", fh.best.hit_rate(), ft.best.load_secs);
        line("FOO-U", fh.feasible.hit_rate(), ft.feasible.load_secs);
    }
    println!(
        "(bounds in {:.1} s; hit rates bound hits, load times bound load time)",
        started.elapsed().as_secs_f64()
    );
}

/// A victim order read from a per-model key table (the lab's LRU, GDSF or Belady keys).
struct Keys<'a>(&'a [u64]);

impl VictimOrder<u32> for Keys<'_> {
    fn key(&self, r: &Resident<u32>) -> u64 {
        self.0.get(r.key as usize).copied().unwrap_or(0)
    }
}

/// Size-aware furthest next use: the copy holding the most byte-requests until its next
/// use goes first (never-again first).
struct SizeBelady<'a> {
    next: &'a [u64],
    sizes: &'a [u64],
    now: u64,
}

impl VictimOrder<u32> for SizeBelady<'_> {
    fn key(&self, r: &Resident<u32>) -> u64 {
        let m = r.key as usize;
        let next = self.next.get(m).copied().unwrap_or(u64::MAX);
        if next == u64::MAX {
            return 0;
        }
        let cost = (next.saturating_sub(self.now) as u128) * self.sizes[m] as u128;
        u64::MAX - u64::try_from(cost).unwrap_or(u64::MAX)
    }
}

/// The simulator's pool (identical replicas, the live planner, every model evictable)
/// with the victim order of `victims`: what `mm-sim` will measure once the planner takes
/// a victim order.
fn pool_replay(w: &Workload, replicas: usize, cache: &Cache, victims: &Victims) -> Outcome {
    let sizes = &w.trace.sizes;
    let mut gdsf = match victims {
        Victims::Gdsf(c) => Some(Gdsf::<u32>::new(*c)),
        _ => None,
    };
    let next = match victims {
        Victims::Belady => next_uses(&w.trace.requests),
        _ => Vec::new(),
    };
    let mut rank_of = vec![0u64; sizes.len()];
    let mut location: Vec<Option<usize>> = vec![None; sizes.len()];
    let mut residents: Vec<Vec<u32>> = vec![Vec::new(); replicas];
    let mut used = vec![0u64; replicas];
    let mut out = Outcome::default();
    for (i, &model) in w.trace.requests.iter().enumerate() {
        let (m, now) = (model as usize, w.times[i]);
        out.requests += 1;
        out.requested_bytes += sizes[m] as u128;
        if let Some(g) = gdsf.as_mut() {
            g.requested(&model, 1, now);
        }
        rank_of[m] = match (&gdsf, victims) {
            (Some(g), _) => g.rank(&model),
            (None, Victims::Belady) => u64::MAX - next[i],
            _ => i as u64,
        };
        if location[m].is_some() {
            out.hits += 1;
            out.hit_bytes += sizes[m] as u128;
            continue;
        }
        let snapshot = pool_snapshot(sizes, m, cache, &used, &residents);
        let Decision::Place(plan) = placement::plan(&snapshot, &Keys(&rank_of)) else {
            out.failed += 1;
            continue;
        };
        let needed = placement::needed(&snapshot, &plan);
        for (n, victim) in plan.evict.into_iter().enumerate() {
            let v = victim as usize;
            if let Some(r) = location[v].take() {
                residents[r].retain(|&k| k != victim);
                used[r] -= sizes[v];
                out.evictions += 1;
                match gdsf.as_mut() {
                    Some(g) if n < needed => g.evicted(&victim),
                    Some(g) => g.swept(&victim),
                    None => {}
                }
            }
        }
        let secs = w.load_time(i);
        if let Some(g) = gdsf.as_mut() {
            g.loaded(&model, sizes[m] as f64 / cache.capacity as f64, secs, now);
            rank_of[m] = g.rank(&model);
        }
        location[m] = Some(plan.replica);
        residents[plan.replica].push(model);
        used[plan.replica] += sizes[m];
        out.loads += 1;
        out.load_secs += secs;
    }
    out
}

/// The pool replay under [`SizeBelady`]: a feasible schedule of the pool's own rules
/// (planner, watermarks, sweep), so the best such schedule does at least as well.
fn pool_replay_size_belady(w: &Workload, replicas: usize, cache: &Cache) -> Outcome {
    let sizes = &w.trace.sizes;
    let next_req = next_uses(&w.trace.requests);
    let mut next_of = vec![u64::MAX; sizes.len()];
    let mut location: Vec<Option<usize>> = vec![None; sizes.len()];
    let mut residents: Vec<Vec<u32>> = vec![Vec::new(); replicas];
    let mut used = vec![0u64; replicas];
    let mut out = Outcome::default();
    for (i, &model) in w.trace.requests.iter().enumerate() {
        let m = model as usize;
        out.requests += 1;
        out.requested_bytes += sizes[m] as u128;
        next_of[m] = next_req[i];
        if location[m].is_some() {
            out.hits += 1;
            out.hit_bytes += sizes[m] as u128;
            continue;
        }
        let snapshot = pool_snapshot(sizes, m, cache, &used, &residents);
        let order = SizeBelady {
            next: &next_of,
            sizes,
            now: i as u64,
        };
        let decision = placement::plan(&snapshot, &order);
        let Decision::Place(plan) = decision else {
            out.failed += 1;
            continue;
        };
        for victim in plan.evict {
            let v = victim as usize;
            if let Some(r) = location[v].take() {
                residents[r].retain(|&k| k != victim);
                used[r] -= sizes[v];
                out.evictions += 1;
            }
        }
        let secs = w.load_time(i);
        location[m] = Some(plan.replica);
        residents[plan.replica].push(model);
        used[plan.replica] += sizes[m];
        out.loads += 1;
        out.load_secs += secs;
    }
    out
}

/// The planner's view of the lab's pool when model `m` misses.
fn pool_snapshot(
    sizes: &[u64],
    m: usize,
    cache: &Cache,
    used: &[u64],
    residents: &[Vec<u32>],
) -> Snapshot<u32> {
    Snapshot {
        need: Resources::new(sizes[m], 0),
        marks: cache.marks,
        replicas: residents
            .iter()
            .zip(used)
            .map(|(on, &used)| ReplicaSnapshot {
                standing: Standing::Open,
                capacity: Resources::new(cache.capacity, 0),
                used: Resources::new(used, 0),
                in_flight: 0,
                models: on.len(),
                residents: on
                    .iter()
                    .map(|&k| Resident {
                        key: k,
                        size: Resources::new(sizes[k as usize], 0),
                        last_use: 0,
                        blocker: None,
                    })
                    .collect(),
            })
            .collect(),
    }
}
