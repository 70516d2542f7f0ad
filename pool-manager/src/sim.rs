//! Trace simulator: replays a synthetic request trace against a simulated pool of replicas
//! kept in the live pool's own model table, planning every miss from the same snapshot
//! function ([`crate::pool::snapshot`]) with the very planner the live pool uses
//! ([`placement::plan`]), so its numbers describe the rules that run in production. Only
//! the victim order (the [`VictimOrder`] step) changes between policies; replica choice,
//! watermarks and the minimum-age guard are shared, so a comparison isolates the eviction
//! order.
//!
//! [`Policy::Lru`] and [`Policy::Gdsf`] are the live pool's orders (`--eviction`), through
//! the same [`VictimState`] the pool keeps, fed here with one request per trace entry and
//! the trace's load times. [`Policy::Belady`] is the classic
//! furthest-next-use rule, which needs the future and so cannot run live. Belady's rule is
//! optimal only for a single cache of equal-sized items evicting one item at a time; here
//! models differ in size, several replicas compete, and eviction runs from the high down
//! to the low watermark, so it is an upper-bound-style reference for what a smarter victim
//! order could gain inside the same placement framework, not a proof of optimality.
//!
//! Time is logical: the clock is the index of the request in the trace, and the minimum
//! age is counted in requests. The simulated pool has no concurrency (nothing is ever in
//! flight, so a miss that would have to wait for room fails), every replica is healthy,
//! loads are instant, and a model has at most one copy.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use crate::eviction::traces::ZipfCdf;
use crate::eviction::{EvictionPolicy, GdsfConfig, VictimState};
use crate::placement::{self, Decision, Resident, Resources, VictimOrder, Watermarks};
use crate::pool::snapshot::snapshot;
use crate::pool::table::{CopyState, ReplicaIdx, Rules, Table};
use crate::spec::{ModelName, ModelSpec, StorageUri};

/// Why a trace could not be generated or simulated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// A trace spec asked for zero models.
    #[error("a trace needs at least one model")]
    NoModels,
    /// Model ids are `u32` to keep large traces compact.
    #[error("{0} models exceed the simulator's limit of 2^32")]
    TooManyModels(usize),
    /// The Zipf exponent was negative, infinite or NaN.
    #[error("zipf exponent {0} must be a finite number >= 0")]
    ZipfExponent(f64),
    /// The size bounds were zero or inverted.
    #[error("model sizes need 0 < min <= max, got {min}..{max}")]
    SizeRange { min: u64, max: u64 },
    /// A (hand-made) trace requests a model it has no size for.
    #[error("request {request} names model {model}, but the trace has {models} models")]
    UnknownModel {
        request: usize,
        model: u32,
        models: usize,
    },
}

/// What trace to generate. The same spec always yields the same trace (for a given `rand`
/// version, which `Cargo.lock` pins).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSpec {
    /// Number of distinct models.
    pub models: usize,
    /// Number of requests.
    pub requests: usize,
    /// Zipf exponent of model popularity: 0 is uniform, 1 the classic web-like skew.
    pub zipf_s: f64,
    /// Seed of the generator.
    pub seed: u64,
    /// Smallest model size, in bytes.
    pub size_min: u64,
    /// Largest model size, in bytes.
    pub size_max: u64,
}

/// A request trace: model sizes and the sequence of requested models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Size in bytes of model `i`.
    pub sizes: Vec<u64>,
    /// The requests, in order, as indices into `sizes`.
    pub requests: Vec<u32>,
}

/// The simulated pool: identical replicas holding memory only (no GPU dimension).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    pub replicas: usize,
    /// Memory of each replica, in bytes.
    pub replica_capacity: u64,
    pub marks: Watermarks,
    /// A model used or loaded fewer than this many requests ago is not evictable (the live
    /// pool's minimum age, in logical time). 0 and 1 both protect nothing: the requested
    /// model is never resident when eviction is planned for it.
    pub min_age: u64,
}

/// The victim order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Least recently used (or loaded) first: the live pool's default order.
    Lru,
    /// Lowest GreedyDual-Size-Frequency priority first: the pool's `--eviction gdsf`.
    Gdsf,
    /// The model whose next request is furthest in the future first (never-again first).
    Belady,
}

/// Counts from one simulation. `misses == loads + failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimResult {
    pub requests: u64,
    /// Requests for a model resident on some replica.
    pub hits: u64,
    /// Requests for a model resident nowhere.
    pub misses: u64,
    /// Misses that loaded the model.
    pub loads: u64,
    /// Models unloaded to make room.
    pub evictions: u64,
    /// Loads whose plan had victims. In the live pool each of these waits, before its own
    /// load starts, for the table to reach the gateways (`table_propagation`) and for its
    /// victims to be unloaded one by one; the other loads start at once.
    pub evicting_loads: u64,
    /// Plans flagged as mass evictions by the planner (the live pool counts these too).
    pub mass_evictions: u64,
    /// Misses with no room anywhere, even after evicting everything evictable, including
    /// models larger than a replica's high watermark (the live pool refuses those at
    /// registration).
    pub failed: u64,
    /// Bytes of the models requested, summed over requests.
    pub requested_bytes: u128,
    /// Bytes of the models requested by hits.
    pub hit_bytes: u128,
    /// Seconds spent loading (the trace's load time of each request that loaded; 0
    /// without load times).
    pub load_secs: f64,
}

impl SimResult {
    /// Hits over requests; 0 for an empty trace.
    pub fn hit_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.hits as f64 / self.requests as f64
        }
    }

    /// The share of misses that had to evict first; 0 without misses.
    pub fn evicting_share(&self) -> f64 {
        if self.misses == 0 {
            0.0
        } else {
            self.evicting_loads as f64 / self.misses as f64
        }
    }

    /// Victims per load that evicted; 0 when none did.
    pub fn victims_per_evicting_load(&self) -> f64 {
        if self.evicting_loads == 0 {
            0.0
        } else {
            self.evictions as f64 / self.evicting_loads as f64
        }
    }

    /// Hit bytes over requested bytes; 0 for an empty trace.
    pub fn byte_hit_rate(&self) -> f64 {
        if self.requested_bytes == 0 {
            0.0
        } else {
            self.hit_bytes as f64 / self.requested_bytes as f64
        }
    }
}

impl Policy {
    /// Every policy, the live ones first.
    pub const ALL: [Policy; 3] = [Policy::Lru, Policy::Gdsf, Policy::Belady];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lru => "LRU",
            Policy::Gdsf => "GDSF",
            Policy::Belady => "Belady",
        }
    }

    /// The live order this policy is, if it is one.
    fn live(self) -> Option<EvictionPolicy> {
        match self {
            Policy::Lru => Some(EvictionPolicy::Lru),
            Policy::Gdsf => Some(EvictionPolicy::Gdsf),
            Policy::Belady => None,
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown policy {s:?} (lru, gdsf, belady)"))
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl SimConfig {
    /// The largest model a replica can ever hold: its high watermark, rounded down exactly
    /// as the planner rounds it.
    pub fn max_model_size(&self) -> u64 {
        Resources::new(self.replica_capacity, 0)
            .scale(self.marks.high)
            .memory
    }
}

impl TraceSpec {
    /// Lowers `size_max` (and `size_min`, if needed) to what a replica of `config` can
    /// hold, because larger models could never be placed and would only count as
    /// failures. Returns the original `size_max` when it was lowered, so callers can say so.
    pub fn clamp_sizes_to(&mut self, config: &SimConfig) -> Option<u64> {
        let limit = config.max_model_size();
        if self.size_max <= limit {
            return None;
        }
        let original = self.size_max;
        self.size_max = limit;
        self.size_min = self.size_min.min(limit);
        Some(original)
    }

    /// Generates the trace: each model's size drawn log-uniformly in
    /// `[size_min, size_max]`, then each request drawn from a Zipf(`zipf_s`) popularity
    /// whose ranks are shuffled relative to the sizes, so popular models are not
    /// systematically small or large.
    pub fn generate(&self) -> Result<Trace, SimError> {
        if self.models == 0 {
            return Err(SimError::NoModels);
        }
        let model_count =
            u32::try_from(self.models).map_err(|_| SimError::TooManyModels(self.models))?;
        if !(self.zipf_s.is_finite() && self.zipf_s >= 0.0) {
            return Err(SimError::ZipfExponent(self.zipf_s));
        }
        if self.size_min == 0 || self.size_min > self.size_max {
            return Err(SimError::SizeRange {
                min: self.size_min,
                max: self.size_max,
            });
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let (ln_min, ln_max) = ((self.size_min as f64).ln(), (self.size_max as f64).ln());
        let sizes = (0..self.models)
            .map(|_| {
                let u: f64 = rng.random();
                let size = (ln_min + u * (ln_max - ln_min)).exp().round() as u64;
                size.clamp(self.size_min, self.size_max)
            })
            .collect();
        let mut by_rank: Vec<u32> = (0..model_count).collect();
        by_rank.shuffle(&mut rng);
        let zipf = ZipfCdf::new(self.models, self.zipf_s);
        let requests = (0..self.requests)
            .map(|_| by_rank[zipf.sample(&mut rng)])
            .collect();
        Ok(Trace { sizes, requests })
    }
}

impl Trace {
    /// The number of distinct models requested: the compulsory misses.
    pub fn distinct_models(&self) -> usize {
        let mut seen = vec![false; self.sizes.len()];
        let mut distinct = 0;
        for &m in &self.requests {
            if let Some(s) = seen.get_mut(m as usize) {
                distinct += usize::from(!*s);
                *s = true;
            }
        }
        distinct
    }

    fn validate(&self) -> Result<(), SimError> {
        let models = self.sizes.len();
        match self
            .requests
            .iter()
            .enumerate()
            .find(|(_, &m)| m as usize >= models)
        {
            Some((request, &model)) => Err(SimError::UnknownModel {
                request,
                model,
                models,
            }),
            None => Ok(()),
        }
    }

    /// For each request, the index of the next request for the same model, or
    /// [`NEVER`]: one backward pass.
    fn next_uses(&self) -> Vec<u64> {
        let mut upcoming = vec![NEVER; self.sizes.len()];
        let mut next = vec![NEVER; self.requests.len()];
        for (i, &m) in self.requests.iter().enumerate().rev() {
            next[i] = upcoming[m as usize];
            upcoming[m as usize] = i as u64;
        }
        next
    }
}

/// "Never requested again", as a next-use time.
const NEVER: u64 = u64::MAX;

/// One request's outcome in a [`Simulation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The model was resident.
    Hit,
    /// The model was loaded on `replica` after evicting `evicted` (model ids, in order);
    /// `mass_eviction` is the planner's flag.
    Loaded {
        replica: usize,
        evicted: Vec<u32>,
        mass_eviction: bool,
    },
    /// No room, even after evicting everything evictable (or a model too big for any
    /// replica).
    Failed,
}

/// A trace replayed against a simulated pool kept in the live pool's own model table
/// ([`crate::pool::table::Table`]): each miss is planned from [`crate::pool::snapshot`] of
/// it, so the simulator and the pool plan from the same facts by the same rules. Time is
/// logical: request `i` happens at `i` ms after the start, and the minimum age is
/// `min_age` ms.
pub struct Simulation<'a> {
    trace: &'a Trace,
    config: SimConfig,
    policy: Policy,
    table: Table,
    names: Vec<ModelName>,
    ids: HashMap<ModelName, u32>,
    /// For each request, when its model is requested next (Belady only).
    next_uses: Vec<u64>,
    /// For each model, when it is requested next, as of the current request.
    next_use: Vec<u64>,
    /// The live pool's victim order and its state (LRU and GDSF).
    victims: VictimState,
    /// Seconds each request's load takes if it misses (none: loads cost nothing).
    load_secs: Option<&'a [f64]>,
    start: Instant,
    step: usize,
}

/// Belady's victim order: the copy whose model is requested furthest in the future first.
struct Belady<'s> {
    next_use: &'s [u64],
    ids: &'s HashMap<ModelName, u32>,
}

impl VictimOrder<&ModelName> for Belady<'_> {
    fn key(&self, r: &Resident<&ModelName>) -> u64 {
        let next = self
            .ids
            .get(r.key)
            .and_then(|&id| self.next_use.get(id as usize))
            .copied()
            .unwrap_or(NEVER);
        NEVER - next
    }
}

impl<'a> Simulation<'a> {
    /// A pool of `config.replicas` empty, healthy replicas with every model of `trace`
    /// registered (model `i` as `m{i}`). Fails only for a trace that requests a model it
    /// has no size for.
    pub fn new(trace: &'a Trace, config: SimConfig, policy: Policy) -> Result<Self, SimError> {
        trace.validate()?;
        let start = Instant::now();
        let rules = Rules {
            watermarks: config.marks,
            min_age: Duration::from_millis(config.min_age),
        };
        let capacity = Resources::new(config.replica_capacity, 0);
        let mut table = Table::new((0..config.replicas).map(|_| (capacity, None)), rules, start);
        for i in 0..config.replicas {
            table.update_replica(ReplicaIdx::new(i), |r| r.healthy = true);
        }
        let mut names = Vec::with_capacity(trace.sizes.len());
        let mut ids = HashMap::with_capacity(trace.sizes.len());
        for (i, &size) in trace.sizes.iter().enumerate() {
            let name = ModelName::new(&format!("m{i}")).map_err(|_| SimError::TooManyModels(i))?;
            table.insert(name.clone(), spec(size));
            ids.insert(name.clone(), i as u32);
            names.push(name);
        }
        let next_uses = match policy {
            Policy::Lru | Policy::Gdsf => Vec::new(),
            Policy::Belady => trace.next_uses(),
        };
        let victims = VictimState::new(policy.live().unwrap_or_default(), start);
        Ok(Self {
            trace,
            config,
            policy,
            table,
            names,
            ids,
            next_uses,
            next_use: vec![NEVER; trace.sizes.len()],
            victims,
            load_secs: None,
            start,
            step: 0,
        })
    }

    /// GDSF tuned by `config` (half-life in requests) instead of the pool's default; LRU
    /// and Belady ignore it.
    pub fn with_gdsf(mut self, config: GdsfConfig) -> Self {
        self.victims =
            VictimState::with_config(self.policy.live().unwrap_or_default(), config, self.start);
        self
    }

    /// Loads cost `load_secs[i]` seconds when request `i` loads (GDSF's cost, and the
    /// load time [`simulate_loads`] sums); one entry per request.
    pub fn with_load_times(mut self, load_secs: &'a [f64]) -> Self {
        self.load_secs = Some(load_secs);
        self
    }

    fn load_time(&self, request: usize) -> f64 {
        self.load_secs
            .and_then(|l| l.get(request))
            .copied()
            .unwrap_or(0.0)
    }

    /// Replays the next request; `None` at the end of the trace.
    pub fn step(&mut self) -> Option<(u32, Step)> {
        let i = self.step;
        let model = *self.trace.requests.get(i)?;
        self.step += 1;
        let m = model as usize;
        if let Some(&next) = self.next_uses.get(i) {
            self.next_use[m] = next;
        }
        let now = self.start + Duration::from_millis(i as u64);
        let name = &self.names[m];
        self.victims.requested(name, 1, now);
        if self.table.get(name).is_some_and(|e| !e.copies().is_empty()) {
            self.table.touch(name, now);
            return Some((model, Step::Hit));
        }
        if self.trace.sizes[m] > self.config.max_model_size() {
            return Some((model, Step::Failed));
        }
        Some((model, self.place(m, i, now)))
    }

    /// Plans a miss for model `m` and applies the plan.
    fn place(&mut self, m: usize, request: usize, now: Instant) -> Step {
        let name = &self.names[m];
        let Some(s) = snapshot(&self.table, name, now) else {
            return Step::Failed;
        };
        let decision = match self.policy {
            Policy::Lru | Policy::Gdsf => placement::plan(&s, &self.victims),
            Policy::Belady => placement::plan(
                &s,
                &Belady {
                    next_use: &self.next_use,
                    ids: &self.ids,
                },
            ),
        };
        let Decision::Place(plan) = decision else {
            return Step::Failed;
        };
        let needed = placement::needed(&s, &plan);
        let plan = plan.map(|k| k.clone());
        let replica = ReplicaIdx::new(plan.replica);
        let mut evicted = Vec::with_capacity(plan.evict.len());
        for (i, victim) in plan.evict.iter().enumerate() {
            if self.table.remove_copy(victim, replica) {
                self.victims.evicted(victim, now, i < needed);
                evicted.extend(self.ids.get(victim).copied());
            }
        }
        let name = self.names[m].clone();
        self.table.add_copy(&name, replica, CopyState::Loaded, now);
        let size = Resources::new(self.trace.sizes[m], 0);
        let capacity = Resources::new(self.config.replica_capacity, 0);
        let took = Duration::from_secs_f64(self.load_time(request).max(0.0));
        self.victims.loaded(&name, size, capacity, took, now);
        Step::Loaded {
            replica: plan.replica,
            evicted,
            mass_eviction: plan.mass_eviction,
        }
    }
}

/// A model of `size` bytes of host memory, for the simulated table.
fn spec(size: u64) -> ModelSpec {
    ModelSpec {
        storage_uri: Box::new(StorageUri::File {
            uri: String::new(),
            path: std::path::PathBuf::new(),
        }),
        memory: size,
        memory_declared: true,
        gpu_memory: 0,
        min_copies: 0,
        max_copies: 1,
        sha256: None,
        model_format: None,
        pool: None,
    }
}

/// Replays `trace` on the pool described by `config`, evicting in `policy`'s order.
///
/// A request for a model resident on any replica is a hit and refreshes its last use.
/// Otherwise [`placement::plan`] chooses a replica and victims for it from a snapshot of
/// the simulated table; the victims are unloaded and the model loaded there, or, when no
/// plan can be carried out now, the request fails and nothing changes. Fails only for a
/// trace that requests a model it has no size for.
pub fn simulate(trace: &Trace, config: &SimConfig, policy: Policy) -> Result<SimResult, SimError> {
    run_simulation(Simulation::new(trace, *config, policy)?)
}

/// [`simulate`] with a load time per request (`load_secs[i]` is paid if request `i`
/// loads): GDSF weighs misses by it, and the result sums what the loads took.
pub fn simulate_loads(
    trace: &Trace,
    load_secs: &[f64],
    config: &SimConfig,
    policy: Policy,
) -> Result<SimResult, SimError> {
    run_simulation(Simulation::new(trace, *config, policy)?.with_load_times(load_secs))
}

/// [`simulate_loads`] with GDSF tuned by `gdsf` (for experiments and `--eviction-cost`).
pub fn simulate_tuned(
    trace: &Trace,
    load_secs: &[f64],
    config: &SimConfig,
    policy: Policy,
    gdsf: GdsfConfig,
) -> Result<SimResult, SimError> {
    let sim = Simulation::new(trace, *config, policy)?
        .with_load_times(load_secs)
        .with_gdsf(gdsf);
    run_simulation(sim)
}

fn run_simulation(mut sim: Simulation<'_>) -> Result<SimResult, SimError> {
    let trace = sim.trace;
    let mut result = SimResult {
        requests: trace.requests.len() as u64,
        ..SimResult::default()
    };
    while let Some((model, step)) = sim.step() {
        let request = sim.step - 1;
        let bytes = u128::from(trace.sizes.get(model as usize).copied().unwrap_or(0));
        result.requested_bytes += bytes;
        match step {
            Step::Hit => {
                result.hits += 1;
                result.hit_bytes += bytes;
            }
            Step::Loaded {
                evicted,
                mass_eviction,
                ..
            } => {
                result.misses += 1;
                result.loads += 1;
                result.load_secs += sim.load_time(request);
                result.evictions += evicted.len() as u64;
                result.evicting_loads += u64::from(!evicted.is_empty());
                result.mass_evictions += u64::from(mass_eviction);
            }
            Step::Failed => {
                result.misses += 1;
                result.failed += 1;
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One replica evicting exactly one model at a time (both watermarks at 100%): the
    /// classic single cache, where Belady is provably optimal.
    fn single_cache(slots: u64, size: u64) -> SimConfig {
        SimConfig {
            replicas: 1,
            replica_capacity: slots * size,
            marks: Watermarks::new(1.0, 1.0).unwrap(),
            min_age: 0,
        }
    }

    fn run(trace: &Trace, config: &SimConfig, policy: Policy) -> SimResult {
        simulate(trace, config, policy).unwrap()
    }

    #[test]
    fn belady_beats_lru_on_a_cycle_one_larger_than_the_cache() {
        // A B C A B C with room for two: LRU always evicts the model needed next.
        let trace = Trace {
            sizes: vec![10; 3],
            requests: vec![0, 1, 2, 0, 1, 2],
        };
        let config = single_cache(2, 10);
        let lru = run(&trace, &config, Policy::Lru);
        assert_eq!(
            (lru.hits, lru.misses, lru.loads, lru.evictions, lru.failed),
            (0, 6, 6, 4, 0)
        );
        // The first two loads had room; each later one evicted one model.
        assert_eq!(lru.evicting_loads, 4);
        assert_eq!(lru.victims_per_evicting_load(), 1.0);
        // Belady: at C evicts B (next at 4, A's at 3): A hits; at B evicts A (never
        // again): C hits.
        let belady = run(&trace, &config, Policy::Belady);
        assert_eq!(
            (
                belady.hits,
                belady.misses,
                belady.loads,
                belady.evictions,
                belady.failed
            ),
            (2, 4, 4, 2, 0)
        );
    }

    #[test]
    fn belady_is_never_worse_than_lru_with_equal_sizes() {
        for seed in [1, 2, 3, 4, 5] {
            let trace = TraceSpec {
                models: 60,
                requests: 3_000,
                zipf_s: 0.8,
                seed,
                size_min: 10,
                size_max: 10,
            }
            .generate()
            .unwrap();
            let config = single_cache(12, 10);
            let lru = run(&trace, &config, Policy::Lru);
            let belady = run(&trace, &config, Policy::Belady);
            assert!(
                belady.hits >= lru.hits,
                "seed {seed}: belady {belady:?} lru {lru:?}"
            );
            assert!(belady.hits > 0 && lru.failed == 0 && belady.failed == 0);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_trace_and_results() {
        let spec = TraceSpec {
            models: 200,
            requests: 5_000,
            zipf_s: 1.0,
            seed: 7,
            size_min: 1 << 20,
            size_max: 64 << 20,
        };
        let config = SimConfig {
            replicas: 3,
            replica_capacity: 256 << 20,
            marks: Watermarks::default(),
            min_age: 5,
        };
        let (a, b) = (spec.generate().unwrap(), spec.generate().unwrap());
        assert_eq!(a, b);
        for policy in Policy::ALL {
            assert_eq!(run(&a, &config, policy), run(&b, &config, policy));
        }
        let other = TraceSpec { seed: 8, ..spec }.generate().unwrap();
        assert_ne!(a, other);
    }

    #[test]
    fn the_sweep_makes_fewer_loads_evict_but_each_evicts_more() {
        // Eight models of 25 in a replica of 100, each requested once: four fit, then
        // every load needs room.
        let trace = Trace {
            sizes: vec![25; 8],
            requests: (0..8).collect(),
        };
        let mut config = single_cache(4, 25);
        for policy in Policy::ALL {
            // Low = high: each of the last four loads evicts exactly the one model it needs.
            let exact = run(&trace, &config, policy);
            assert_eq!((exact.loads, exact.evictions), (8, 4), "{policy}");
            assert_eq!(exact.evicting_loads, 4, "{policy}");
            assert_eq!(exact.evicting_share(), 0.5, "{policy}");
            assert_eq!(exact.victims_per_evicting_load(), 1.0, "{policy}");
            // Low 0.5: the fifth load sweeps three models (down to 25 + its own 25), the
            // sixth and seventh fit, the eighth sweeps three again.
            config.marks = Watermarks::new(1.0, 0.5).unwrap();
            let swept = run(&trace, &config, policy);
            assert_eq!((swept.loads, swept.evictions), (8, 6), "{policy}");
            assert_eq!(swept.evicting_loads, 2, "{policy}");
            assert_eq!(swept.evicting_share(), 0.25, "{policy}");
            assert_eq!(swept.victims_per_evicting_load(), 3.0, "{policy}");
            config.marks = Watermarks::new(1.0, 1.0).unwrap();
        }
        // Hits and failures never count: nothing evicts when everything fits.
        let fits = run(&trace, &single_cache(8, 25), Policy::Lru);
        assert_eq!((fits.evicting_loads, fits.evicting_share()), (0, 0.0));
        assert_eq!(fits.victims_per_evicting_load(), 0.0);
    }

    #[test]
    fn min_age_blocks_an_eviction() {
        // Room for one model; B arrives one request after A was loaded.
        let trace = Trace {
            sizes: vec![10, 10],
            requests: vec![0, 1],
        };
        let mut config = single_cache(1, 10);
        for policy in Policy::ALL {
            config.min_age = 2;
            let young = run(&trace, &config, policy);
            assert_eq!((young.loads, young.evictions, young.failed), (1, 0, 1));
            config.min_age = 1;
            let old_enough = run(&trace, &config, policy);
            assert_eq!(
                (old_enough.loads, old_enough.evictions, old_enough.failed),
                (2, 1, 0)
            );
        }
    }

    #[test]
    fn when_everything_fits_only_compulsory_misses_remain() {
        let trace = TraceSpec {
            models: 40,
            requests: 2_000,
            zipf_s: 1.2,
            seed: 3,
            size_min: 1,
            size_max: 100,
        }
        .generate()
        .unwrap();
        let config = SimConfig {
            replicas: 2,
            replica_capacity: 10_000,
            marks: Watermarks::default(),
            min_age: 0,
        };
        for policy in Policy::ALL {
            let r = run(&trace, &config, policy);
            assert_eq!(r.misses, trace.distinct_models() as u64);
            assert_eq!((r.loads, r.evictions, r.failed), (r.misses, 0, 0));
            assert_eq!(r.hits + r.misses, r.requests);
        }
    }

    #[test]
    fn models_above_the_high_watermark_fail_without_evicting() {
        let trace = Trace {
            sizes: vec![10, 90],
            requests: vec![0, 1, 0],
        };
        let config = SimConfig {
            replicas: 1,
            replica_capacity: 100,
            marks: Watermarks::default(),
            min_age: 0,
        };
        let r = run(&trace, &config, Policy::Lru);
        assert_eq!((r.hits, r.loads, r.evictions, r.failed), (1, 1, 0, 1));
    }

    #[test]
    fn clamping_keeps_sizes_placeable() {
        let config = SimConfig {
            replicas: 1,
            replica_capacity: 1000,
            marks: Watermarks::default(),
            min_age: 0,
        };
        let mut spec = TraceSpec {
            models: 100,
            requests: 10,
            zipf_s: 1.0,
            seed: 1,
            size_min: 10,
            size_max: 5000,
        };
        assert_eq!(spec.clamp_sizes_to(&config), Some(5000));
        assert_eq!(spec.size_max, 800);
        assert_eq!(spec.clamp_sizes_to(&config), None);
        let trace = spec.generate().unwrap();
        assert!(trace.sizes.iter().all(|&s| (10..=800).contains(&s)));
    }

    #[test]
    fn zipf_popularity_is_skewed_and_shuffled_against_model_ids() {
        let spec = TraceSpec {
            models: 100,
            requests: 20_000,
            zipf_s: 1.0,
            seed: 11,
            size_min: 1,
            size_max: 1000,
        };
        let counts = |trace: &Trace| {
            trace.requests.iter().fold(vec![0usize; 100], |mut c, &m| {
                c[m as usize] += 1;
                c
            })
        };
        let skewed = counts(&spec.generate().unwrap());
        let mut by_popularity: Vec<usize> = (0..100).collect();
        by_popularity.sort_by_key(|&m| std::cmp::Reverse(skewed[m]));
        // Zipf(1) over 100 ranks: the top rank draws 1/H(100) ~ 19% of requests, the
        // second half as many.
        let (first, second) = (skewed[by_popularity[0]], skewed[by_popularity[1]]);
        let share = first as f64 / 20_000.0;
        assert!((0.17..0.22).contains(&share), "top share {share}");
        assert!(
            second * 3 > first && second * 3 < first * 2,
            "{first} then {second}"
        );
        // Popularity ranks are shuffled, not model ids in order.
        assert_ne!(by_popularity[..10], (0..10).collect::<Vec<_>>()[..]);
        let uniform = counts(
            &TraceSpec {
                zipf_s: 0.0,
                ..spec
            }
            .generate()
            .unwrap(),
        );
        assert!(
            uniform.iter().all(|&c| (100..300).contains(&c)),
            "{uniform:?}"
        );
    }

    #[test]
    fn rejects_bad_specs_and_traces() {
        let spec = TraceSpec {
            models: 10,
            requests: 10,
            zipf_s: 1.0,
            seed: 1,
            size_min: 1,
            size_max: 10,
        };
        let bad = |s: TraceSpec| s.generate().unwrap_err();
        assert_eq!(
            bad(TraceSpec {
                models: 0,
                ..spec.clone()
            }),
            SimError::NoModels
        );
        assert!(matches!(
            bad(TraceSpec {
                zipf_s: -1.0,
                ..spec.clone()
            }),
            SimError::ZipfExponent(_)
        ));
        assert!(matches!(
            bad(TraceSpec {
                zipf_s: f64::NAN,
                ..spec.clone()
            }),
            SimError::ZipfExponent(_)
        ));
        assert!(matches!(
            bad(TraceSpec {
                size_min: 0,
                ..spec.clone()
            }),
            SimError::SizeRange { .. }
        ));
        assert!(matches!(
            bad(TraceSpec {
                size_min: 11,
                ..spec
            }),
            SimError::SizeRange { .. }
        ));
        let trace = Trace {
            sizes: vec![1],
            requests: vec![0, 1],
        };
        assert_eq!(
            simulate(&trace, &single_cache(1, 1), Policy::Lru),
            Err(SimError::UnknownModel {
                request: 1,
                model: 1,
                models: 1
            })
        );
    }
}
