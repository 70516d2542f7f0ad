//! Synthetic workloads for judging eviction policies: which models are requested, when,
//! and what loading each one costs. One generator per shape an eviction policy must
//! survive (issue 18): Zipf popularity, a hot set that shifts, bursts of interest in cold
//! models, popularity correlated with size either way, one-hit-wonder scans mixed into a
//! Zipf trace, and load times proportional to size or independent of it.
//!
//! Every workload is a pure function of its [`WorkloadSpec`] (for a given `rand` version,
//! which `Cargo.lock` pins). Model ids are `u32`; sizes and requests are a
//! [`Trace`], the simulator's own type, so any workload replays in [`crate::sim`] too. A
//! plain Zipf workload has exactly the requests and sizes of [`crate::sim::TraceSpec`]
//! with the same parameters: its figures stay comparable with earlier runs.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::sim::Trace;

/// Why a workload could not be generated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    /// A spec asked for zero models.
    #[error("a workload needs at least one model")]
    NoModels,
    /// Model ids are `u32`, to keep traces compact.
    #[error("{0} models exceed the limit of 2^32")]
    TooManyModels(usize),
    /// A Zipf exponent that is negative, infinite or NaN.
    #[error("zipf exponent {0} must be a finite number >= 0")]
    ZipfExponent(f64),
    /// Size bounds that are zero or inverted.
    #[error("model sizes need 0 < min <= max, got {min}..{max}")]
    SizeRange { min: u64, max: u64 },
    /// A parameter outside its range; the message names it.
    #[error("{0}")]
    Parameter(String),
}

/// How popularity is spread over the models, and how it moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Popularity {
    /// Zipf(`s`) over the models, ranks shuffled against sizes: 0 is uniform.
    Zipf { s: f64 },
    /// Zipf(`s`), but every `every` requests the ranks are dealt again: the hot set moves.
    Shifting { s: f64, every: usize },
    /// Zipf(`s`) with ranks given in size order (perturbed by a log-normal factor of
    /// spread `noise`): small models popular when `small_popular`, large ones otherwise.
    SizeCorrelated {
        s: f64,
        small_popular: bool,
        noise: f64,
    },
    /// Zipf(`s`) with a share `fraction` of the requests replaced by scans: runs of `run`
    /// requests, each for a model never requested before or after (a one-hit wonder).
    Scan { s: f64, fraction: f64, run: usize },
}

/// When requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// A Poisson stream of `rate` requests per second.
    Poisson { rate: f64 },
    /// The Poisson stream, with a share `fraction` of the requests moved into bursts: a
    /// burst is a model drawn uniformly (so mostly a cold one) requested a geometric
    /// number of times (mean `length`) at `speedup` times the base rate, interleaved with
    /// the rest of the traffic.
    Bursty {
        rate: f64,
        fraction: f64,
        length: f64,
        speedup: f64,
    },
}

/// What loading a model costs, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadCost {
    /// `fixed + secs_per_gib * size`: loading reads and copies the weights.
    ProportionalToSize { fixed: f64, secs_per_gib: f64 },
    /// Log-uniform in `min..max` regardless of size: compilation, warm-up, remote fetch.
    Independent { min: f64, max: f64 },
}

/// Everything a workload is generated from.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    /// Distinct models (scan models come on top).
    pub models: usize,
    /// Requests in the trace.
    pub requests: usize,
    pub seed: u64,
    /// Smallest model, in bytes (sizes are log-uniform between the bounds).
    pub size_min: u64,
    /// Largest model, in bytes.
    pub size_max: u64,
    pub popularity: Popularity,
    pub arrivals: Arrivals,
    pub load: LoadCost,
    /// Spread (log-normal sigma) of one load's time around the model's mean: loads of the
    /// same model do not all take the same time. 0 makes every load take the mean.
    pub jitter: f64,
}

/// A generated workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Model sizes and the requests, as the simulator takes them.
    pub trace: Trace,
    /// Arrival time of each request, in seconds from the start, non-decreasing.
    pub times: Vec<f64>,
    /// Mean load time of each model, in seconds.
    pub load_secs: Vec<f64>,
    jitter: f64,
    noise_seed: u64,
}

impl Default for WorkloadSpec {
    /// The simulator's reference trace: 10k models of 16Mi..512Mi, 200k Zipf(1.0)
    /// requests at 100/s, loads of 50 ms + 4 s/GiB with 30% jitter.
    fn default() -> Self {
        Self {
            models: 10_000,
            requests: 200_000,
            seed: 42,
            size_min: 16 << 20,
            size_max: 512 << 20,
            popularity: Popularity::Zipf { s: 1.0 },
            arrivals: Arrivals::Poisson { rate: 100.0 },
            load: LoadCost::ProportionalToSize {
                fixed: 0.05,
                secs_per_gib: 4.0,
            },
            jitter: 0.3,
        }
    }
}

/// The shapes an eviction policy is judged on (issue 18), by the names [`shape`] takes;
/// each also exists with `/flat-load` (load times independent of size).
pub const SHAPES: [&str; 8] = [
    "zipf-0.8",
    "zipf-1.0",
    "zipf-1.2",
    "shift",
    "bursty",
    "small-popular",
    "large-popular",
    "scan",
];

/// The workload named `name`, with `base`'s counts, sizes, seed and jitter:
/// - `zipf-S`: Zipf(S) popularity, ranks shuffled against sizes;
/// - `shift`: Zipf(1.0) whose ranks are dealt again every tenth of the trace;
/// - `bursty`: `base`'s popularity with 30% of requests in bursts (mean 40, 20x the rate)
///   for models drawn uniformly;
/// - `small-popular` / `large-popular`: Zipf(1.0) ranked by size (log-normal noise 0.5);
/// - `scan`: Zipf(1.0) with 20% of requests in runs of 100 one-hit wonders;
/// - any of them with `/flat-load`: load times log-uniform in 0.1..20 s whatever the size
///   (otherwise `base`'s load cost, proportional to size by default).
pub fn shape(name: &str, base: &WorkloadSpec) -> Result<WorkloadSpec, TraceError> {
    let (shape, flat) = match name.strip_suffix("/flat-load") {
        Some(shape) => (shape, true),
        None => (name, false),
    };
    let with = |popularity| WorkloadSpec {
        popularity,
        ..base.clone()
    };
    let mut spec = match shape {
        "shift" => with(Popularity::Shifting {
            s: 1.0,
            every: (base.requests / 10).max(1),
        }),
        "bursty" => WorkloadSpec {
            arrivals: Arrivals::Bursty {
                rate: 100.0,
                fraction: 0.3,
                length: 40.0,
                speedup: 20.0,
            },
            ..base.clone()
        },
        "small-popular" | "large-popular" => with(Popularity::SizeCorrelated {
            s: 1.0,
            small_popular: shape == "small-popular",
            noise: 0.5,
        }),
        "scan" => with(Popularity::Scan {
            s: 1.0,
            fraction: 0.2,
            run: 100,
        }),
        other => match other.strip_prefix("zipf-").map(str::parse::<f64>) {
            Some(Ok(s)) => with(Popularity::Zipf { s }),
            _ => {
                return Err(TraceError::Parameter(format!(
                    "unknown trace shape {name:?} (zipf-S, shift, bursty, small-popular, \
                     large-popular, scan; each optionally with /flat-load)"
                )))
            }
        },
    };
    if flat {
        spec.load = LoadCost::Independent {
            min: 0.1,
            max: 20.0,
        };
    }
    Ok(spec)
}

/// Seeds of the independent random streams, so that adding a feature to one stream never
/// changes another (the Zipf stream must match the simulator's).
const TIMES_STREAM: u64 = 0x7469_6d65;
const LOAD_STREAM: u64 = 0x6c6f_6164;
const NOISE_STREAM: u64 = 0x6e6f_6973;
const SCAN_STREAM: u64 = 0x7363_616e;

impl WorkloadSpec {
    /// Generates the workload, or says which parameter is out of range.
    pub fn generate(&self) -> Result<Workload, TraceError> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut sizes = self.draw_sizes(&mut rng, self.models);
        let by_rank = self.rank_order(&mut rng, &sizes);
        let (requests, times) = match self.arrivals {
            Arrivals::Poisson { rate } => {
                let requests = self.popular_requests(&mut rng, by_rank, self.requests);
                let times = poisson_times(self.stream(TIMES_STREAM), rate, requests.len());
                (requests, times)
            }
            Arrivals::Bursty {
                rate,
                fraction,
                length,
                speedup,
            } => {
                let bursts = (fraction * self.requests as f64).round() as usize;
                let background = self.popular_requests(&mut rng, by_rank, self.requests - bursts);
                let mut times_rng = self.stream(TIMES_STREAM);
                let background_times = poisson_times(&mut times_rng, rate, background.len());
                let burst = Burst {
                    requests: bursts,
                    models: self.models,
                    length,
                    rate: rate * speedup,
                    span: background_times.last().copied().unwrap_or(0.0),
                };
                merge_by_time(background, background_times, burst.generate(&mut times_rng))
            }
        };
        let requests = match self.popularity {
            Popularity::Scan { fraction, run, .. } => {
                let mut scan_rng = self.stream(SCAN_STREAM);
                let (mixed, scanned) =
                    mix_scans(&mut scan_rng, requests, fraction, run, self.models);
                sizes.extend(self.draw_sizes(&mut scan_rng, scanned));
                mixed
            }
            _ => requests,
        };
        u32::try_from(sizes.len()).map_err(|_| TraceError::TooManyModels(sizes.len()))?;
        let load_secs = self.draw_load_costs(&sizes);
        Ok(Workload {
            trace: Trace { sizes, requests },
            times,
            load_secs,
            jitter: self.jitter,
            noise_seed: self.seed ^ NOISE_STREAM,
        })
    }

    /// Each model's request probability, when popularity is fixed over the trace (Zipf
    /// or size-correlated ranks, Poisson arrivals; `None` for shifts, bursts and scans):
    /// the true distribution the requests are drawn from, for the static reference
    /// ([`super::knapsack`]).
    pub fn probabilities(&self) -> Result<Option<Vec<f64>>, TraceError> {
        self.validate()?;
        let fixed = matches!(
            self.popularity,
            Popularity::Zipf { .. } | Popularity::SizeCorrelated { .. }
        ) && matches!(self.arrivals, Arrivals::Poisson { .. });
        if !fixed {
            return Ok(None);
        }
        // The same draws as `generate`, up to the rank order.
        let mut rng = StdRng::seed_from_u64(self.seed);
        let sizes = self.draw_sizes(&mut rng, self.models);
        let by_rank = self.rank_order(&mut rng, &sizes);
        let s = self.popularity.exponent();
        let weights: Vec<f64> = (1..=by_rank.len()).map(|r| (r as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let mut p = vec![0.0; by_rank.len()];
        for (&model, w) in by_rank.iter().zip(weights) {
            p[model as usize] = w / total;
        }
        Ok(Some(p))
    }

    fn validate(&self) -> Result<(), TraceError> {
        if self.models == 0 {
            return Err(TraceError::NoModels);
        }
        u32::try_from(self.models).map_err(|_| TraceError::TooManyModels(self.models))?;
        if self.size_min == 0 || self.size_min > self.size_max {
            return Err(TraceError::SizeRange {
                min: self.size_min,
                max: self.size_max,
            });
        }
        let s = self.popularity.exponent();
        if !(s.is_finite() && s >= 0.0) {
            return Err(TraceError::ZipfExponent(s));
        }
        let bad = |what: &str| Err(TraceError::Parameter(what.to_owned()));
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let share = |v: f64| (0.0..1.0).contains(&v);
        match self.popularity {
            Popularity::Shifting { every: 0, .. } => return bad("a shift needs every >= 1"),
            Popularity::SizeCorrelated { noise, .. } if !(noise.is_finite() && noise >= 0.0) => {
                return bad("the size-correlation noise must be >= 0")
            }
            Popularity::Scan { fraction, run, .. } if !share(fraction) || run == 0 => {
                return bad("a scan needs 0 <= fraction < 1 and run >= 1")
            }
            _ => {}
        }
        match self.arrivals {
            Arrivals::Poisson { rate } if !positive(rate) => return bad("the rate must be > 0"),
            Arrivals::Bursty {
                rate,
                fraction,
                length,
                speedup,
            } if !(positive(rate) && share(fraction) && length >= 1.0 && positive(speedup)) => {
                return bad("bursts need rate > 0, 0 <= fraction < 1, length >= 1, speedup > 0")
            }
            _ => {}
        }
        match self.load {
            LoadCost::ProportionalToSize {
                fixed,
                secs_per_gib,
            } if !(fixed >= 0.0 && positive(secs_per_gib) && fixed.is_finite()) => {
                return bad("load costs need fixed >= 0 and secs_per_gib > 0")
            }
            LoadCost::Independent { min, max }
                if !(positive(min) && min <= max && positive(max)) =>
            {
                return bad("load costs need 0 < min <= max")
            }
            _ => {}
        }
        if !(self.jitter.is_finite() && self.jitter >= 0.0) {
            return bad("the load-time jitter must be >= 0");
        }
        Ok(())
    }

    fn stream(&self, salt: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ salt)
    }

    /// Log-uniform sizes, drawn exactly as the simulator draws them.
    fn draw_sizes(&self, rng: &mut StdRng, count: usize) -> Vec<u64> {
        let (ln_min, ln_max) = ((self.size_min as f64).ln(), (self.size_max as f64).ln());
        (0..count)
            .map(|_| {
                let u: f64 = rng.random();
                let size = (ln_min + u * (ln_max - ln_min)).exp().round() as u64;
                size.clamp(self.size_min, self.size_max)
            })
            .collect()
    }

    /// The model holding each popularity rank.
    fn rank_order(&self, rng: &mut StdRng, sizes: &[u64]) -> Vec<u32> {
        let mut by_rank: Vec<u32> = (0..sizes.len() as u32).collect();
        match self.popularity {
            Popularity::SizeCorrelated {
                small_popular,
                noise,
                ..
            } => {
                let keys: Vec<f64> = sizes
                    .iter()
                    .map(|&size| (size as f64).ln() + noise * standard_normal(rng))
                    .collect();
                by_rank.sort_by(|&a, &b| keys[a as usize].total_cmp(&keys[b as usize]));
                if !small_popular {
                    by_rank.reverse();
                }
            }
            _ => by_rank.shuffle(rng),
        }
        by_rank
    }

    /// `count` requests drawn from the Zipf popularity over `by_rank`, dealing the ranks
    /// again at every shift.
    fn popular_requests(&self, rng: &mut StdRng, mut by_rank: Vec<u32>, count: usize) -> Vec<u32> {
        let zipf = ZipfCdf::new(by_rank.len(), self.popularity.exponent());
        let every = match self.popularity {
            Popularity::Shifting { every, .. } => every,
            _ => usize::MAX,
        };
        (0..count)
            .map(|i| {
                if i > 0 && i % every == 0 {
                    by_rank.shuffle(rng);
                }
                by_rank[zipf.sample(rng)]
            })
            .collect()
    }

    fn draw_load_costs(&self, sizes: &[u64]) -> Vec<f64> {
        let mut rng = self.stream(LOAD_STREAM);
        sizes
            .iter()
            .map(|&size| match self.load {
                LoadCost::ProportionalToSize {
                    fixed,
                    secs_per_gib,
                } => fixed + secs_per_gib * size as f64 / (1u64 << 30) as f64,
                LoadCost::Independent { min, max } => {
                    let u: f64 = rng.random();
                    (min.ln() + u * (max.ln() - min.ln())).exp()
                }
            })
            .collect()
    }
}

impl Popularity {
    /// The Zipf exponent every shape is built on.
    pub fn exponent(&self) -> f64 {
        match *self {
            Popularity::Zipf { s }
            | Popularity::Shifting { s, .. }
            | Popularity::SizeCorrelated { s, .. }
            | Popularity::Scan { s, .. } => s,
        }
    }
}

impl Workload {
    /// Seconds that loading the model of request `request` takes if that request misses:
    /// the model's mean times a log-normal factor of mean 1, fixed per request so that
    /// every policy that misses on the same request pays the same.
    pub fn load_time(&self, request: usize) -> f64 {
        let Some(&model) = self.trace.requests.get(request) else {
            return 0.0;
        };
        let mean = self.load_secs.get(model as usize).copied().unwrap_or(0.0);
        if self.jitter == 0.0 {
            return mean;
        }
        let z = hashed_normal(self.noise_seed, request as u64);
        mean * (self.jitter * z - self.jitter * self.jitter / 2.0).exp()
    }

    /// Requests in the trace.
    pub fn len(&self) -> usize {
        self.trace.requests.len()
    }

    /// Whether the trace has no request.
    pub fn is_empty(&self) -> bool {
        self.trace.requests.is_empty()
    }
}

/// Zipf sampling by inverting a precomputed CDF: O(models) once, O(log models) per draw.
pub(crate) struct ZipfCdf {
    /// Cumulative (unnormalised) weights of popularity ranks 0, 1, ...
    cumulative: Vec<f64>,
}

impl ZipfCdf {
    pub(crate) fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += (rank as f64).powf(-s);
                total
            })
            .collect();
        Self { cumulative }
    }

    /// A popularity rank in `0..n` (`n >= 1`).
    pub(crate) fn sample(&self, rng: &mut StdRng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        let rank = self.cumulative.partition_point(|&c| c <= u);
        // Rounding can put `u` at the very top; the last rank takes it.
        rank.min(self.cumulative.len().saturating_sub(1))
    }
}

/// Arrival times of a Poisson stream: exponential gaps of mean `1 / rate`.
fn poisson_times(mut rng: impl rand::Rng, rate: f64, count: usize) -> Vec<f64> {
    let mut now = 0.0;
    (0..count)
        .map(|_| {
            now += exponential(&mut rng, rate);
            now
        })
        .collect()
}

fn exponential(rng: &mut impl rand::Rng, rate: f64) -> f64 {
    let u: f64 = rng.random();
    -(1.0 - u).ln() / rate
}

/// The bursts of a bursty workload.
struct Burst {
    /// Requests in all bursts together.
    requests: usize,
    models: usize,
    /// Mean requests per burst.
    length: f64,
    /// Requests per second within a burst.
    rate: f64,
    /// Bursts start uniformly within `0..span` seconds.
    span: f64,
}

impl Burst {
    /// (time, model) of every burst request.
    fn generate(&self, rng: &mut StdRng) -> Vec<(f64, u32)> {
        let mut out = Vec::with_capacity(self.requests);
        // Geometric lengths of mean `length`: continue with probability 1 - 1/length.
        let go_on = 1.0 - 1.0 / self.length;
        while out.len() < self.requests {
            let model = rng.random_range(0..self.models) as u32;
            let mut at = rng.random::<f64>() * self.span;
            loop {
                out.push((at, model));
                at += exponential(rng, self.rate);
                if out.len() == self.requests || !rng.random_bool(go_on) {
                    break;
                }
            }
        }
        out
    }
}

/// Merges two request streams by arrival time (stable: the background first on ties).
fn merge_by_time(
    background: Vec<u32>,
    times: Vec<f64>,
    bursts: Vec<(f64, u32)>,
) -> (Vec<u32>, Vec<f64>) {
    let mut all: Vec<(f64, u32)> = times.into_iter().zip(background).chain(bursts).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().map(|(t, m)| (m, t)).unzip()
}

/// Replaces about `fraction` of `requests` by scan runs of `run` fresh models numbered
/// from `first_id`, at positions drawn uniformly; returns the mixed requests and the
/// number of scan models. The length of the trace is unchanged.
fn mix_scans(
    rng: &mut StdRng,
    requests: Vec<u32>,
    fraction: f64,
    run: usize,
    first_id: usize,
) -> (Vec<u32>, usize) {
    let total = requests.len();
    let scanned = ((fraction * total as f64).round() as usize).min(total);
    let runs = scanned.div_ceil(run);
    let kept = total - scanned;
    // Each run goes before one of the kept requests (or at the end): draw the slots.
    let mut slots: Vec<usize> = (0..runs).map(|_| rng.random_range(0..=kept)).collect();
    slots.sort_unstable();
    let mut out = Vec::with_capacity(total);
    let mut next_id = first_id as u32;
    let mut slot = slots.iter().peekable();
    let mut left = scanned;
    for (i, model) in requests.into_iter().take(kept).enumerate() {
        while slot.next_if(|&&s| s == i).is_some() {
            push_run(&mut out, &mut next_id, &mut left, run);
        }
        out.push(model);
    }
    while slot.next().is_some() {
        push_run(&mut out, &mut next_id, &mut left, run);
    }
    (out, scanned)
}

fn push_run(out: &mut Vec<u32>, next_id: &mut u32, left: &mut usize, run: usize) {
    let n = run.min(*left);
    out.extend(*next_id..*next_id + n as u32);
    *next_id += n as u32;
    *left -= n;
}

/// A standard normal draw (Box-Muller).
fn standard_normal(rng: &mut StdRng) -> f64 {
    let (u1, u2): (f64, f64) = (rng.random(), rng.random());
    box_muller(u1, u2)
}

fn box_muller(u1: f64, u2: f64) -> f64 {
    (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A standard normal value that depends only on `(seed, index)`: per-request noise that
/// needs no stored state and no shared generator.
fn hashed_normal(seed: u64, index: u64) -> f64 {
    let a = splitmix64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let b = splitmix64(a);
    let unit = |x: u64| (x >> 11) as f64 / (1u64 << 53) as f64;
    box_muller(unit(a), unit(b))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::TraceSpec;

    fn spec(popularity: Popularity) -> WorkloadSpec {
        WorkloadSpec {
            models: 500,
            requests: 40_000,
            seed: 9,
            size_min: 1 << 20,
            size_max: 256 << 20,
            popularity,
            ..WorkloadSpec::default()
        }
    }

    fn counts(w: &Workload) -> Vec<usize> {
        w.trace
            .requests
            .iter()
            .fold(vec![0; w.trace.sizes.len()], |mut c, &m| {
                c[m as usize] += 1;
                c
            })
    }

    /// The `n` most requested models among `requests`, most requested first.
    fn top(requests: &[u32], models: usize, n: usize) -> Vec<u32> {
        let mut c = vec![0usize; models];
        for &m in requests {
            c[m as usize] += 1;
        }
        let mut ids: Vec<u32> = (0..models as u32).collect();
        ids.sort_by_key(|&m| std::cmp::Reverse(c[m as usize]));
        ids.truncate(n);
        ids
    }

    /// Spearman's rank correlation between two samples (no tie correction: fine for the
    /// many distinct values here).
    fn spearman(x: &[f64], y: &[f64]) -> f64 {
        let ranks = |v: &[f64]| {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
            let mut r = vec![0.0; v.len()];
            for (rank, i) in idx.into_iter().enumerate() {
                r[i] = rank as f64;
            }
            r
        };
        let (rx, ry) = (ranks(x), ranks(y));
        let n = x.len() as f64;
        let d2: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - b) * (a - b)).sum();
        1.0 - 6.0 * d2 / (n * (n * n - 1.0))
    }

    #[test]
    fn plain_zipf_is_the_simulators_trace() {
        let w = spec(Popularity::Zipf { s: 1.0 }).generate().unwrap();
        let sim = TraceSpec {
            models: 500,
            requests: 40_000,
            zipf_s: 1.0,
            seed: 9,
            size_min: 1 << 20,
            size_max: 256 << 20,
        }
        .generate()
        .unwrap();
        assert_eq!(w.trace, sim);
        assert_eq!((w.times.len(), w.load_secs.len()), (40_000, 500));
    }

    #[test]
    fn the_same_spec_gives_the_same_workload() {
        for popularity in [
            Popularity::Shifting {
                s: 1.0,
                every: 1000,
            },
            Popularity::Scan {
                s: 1.0,
                fraction: 0.2,
                run: 50,
            },
        ] {
            let s = spec(popularity);
            assert_eq!(s.generate().unwrap(), s.generate().unwrap());
            let other = WorkloadSpec { seed: 10, ..s }.generate().unwrap();
            assert_ne!(other.trace, spec(popularity).generate().unwrap().trace);
        }
    }

    #[test]
    fn higher_exponents_concentrate_requests() {
        let share_of_top_10 = |s: f64| {
            let w = spec(Popularity::Zipf { s }).generate().unwrap();
            let mut c = counts(&w);
            c.sort_unstable_by(|a, b| b.cmp(a));
            c[..10].iter().sum::<usize>() as f64 / w.len() as f64
        };
        let (a, b, c) = (
            share_of_top_10(0.8),
            share_of_top_10(1.0),
            share_of_top_10(1.2),
        );
        // Zipf over 500 ranks: the top 10 draw 27.6%, 43.1% and 59.5%.
        assert!((0.25..0.30).contains(&a), "{a}");
        assert!((0.40..0.46).contains(&b), "{b}");
        assert!((0.56..0.63).contains(&c), "{c}");
    }

    #[test]
    fn a_shift_moves_the_hot_set() {
        let w = spec(Popularity::Shifting {
            s: 1.0,
            every: 20_000,
        })
        .generate()
        .unwrap();
        let r = &w.trace.requests;
        let (first, second) = (top(&r[..20_000], 500, 20), top(&r[20_000..], 500, 20));
        let shared = first.iter().filter(|m| second.contains(m)).count();
        // Two independent deals of 500 ranks share about 20 * 20 / 500 < 1 of the top 20.
        assert!(shared <= 4, "{shared} of the top 20 stayed hot");
        // Within one period the hot set is stable: the halves agree.
        let (a, b) = (top(&r[..10_000], 500, 10), top(&r[10_000..20_000], 500, 10));
        assert!(
            a.iter().filter(|m| b.contains(m)).count() >= 7,
            "{a:?} {b:?}"
        );
        // Without a shift inside the trace, the same spec is plain Zipf.
        let none = spec(Popularity::Shifting {
            s: 1.0,
            every: 40_000,
        })
        .generate()
        .unwrap();
        assert_eq!(
            none.trace,
            spec(Popularity::Zipf { s: 1.0 }).generate().unwrap().trace
        );
    }

    #[test]
    fn size_correlation_goes_both_ways() {
        let correlation = |small_popular: bool| {
            let w = spec(Popularity::SizeCorrelated {
                s: 1.0,
                small_popular,
                noise: 0.5,
            })
            .generate()
            .unwrap();
            let c: Vec<f64> = counts(&w).iter().map(|&c| c as f64).collect();
            let s: Vec<f64> = w.trace.sizes.iter().map(|&s| s as f64).collect();
            spearman(&s, &c)
        };
        let (small, large) = (correlation(true), correlation(false));
        assert!(small < -0.6, "small popular: {small}");
        assert!(large > 0.6, "large popular: {large}");
        let shuffled = spec(Popularity::Zipf { s: 1.0 }).generate().unwrap();
        let c: Vec<f64> = counts(&shuffled).iter().map(|&c| c as f64).collect();
        let s: Vec<f64> = shuffled.trace.sizes.iter().map(|&s| s as f64).collect();
        assert!(spearman(&s, &c).abs() < 0.15);
    }

    #[test]
    fn scan_models_are_each_requested_once() {
        let w = spec(Popularity::Scan {
            s: 1.0,
            fraction: 0.25,
            run: 100,
        })
        .generate()
        .unwrap();
        assert_eq!(w.len(), 40_000);
        assert_eq!(w.trace.sizes.len(), 500 + 10_000);
        assert_eq!(w.load_secs.len(), w.trace.sizes.len());
        let c = counts(&w);
        assert!(c[500..].iter().all(|&n| n == 1));
        // They come in runs of 100 consecutive requests.
        let first = w.trace.requests.iter().position(|&m| m >= 500).unwrap();
        assert!(w.trace.requests[first..first + 100]
            .iter()
            .all(|&m| m >= 500));
        // The rest is still Zipf over the first 500 models.
        assert!(c[..500].iter().sum::<usize>() == 30_000);
        assert!(w.trace.sizes[500..]
            .iter()
            .all(|&s| (1 << 20..=256 << 20).contains(&s)));
    }

    #[test]
    fn bursts_cluster_requests_in_time_and_in_models() {
        let bursty = WorkloadSpec {
            arrivals: Arrivals::Bursty {
                rate: 100.0,
                fraction: 0.3,
                length: 40.0,
                speedup: 20.0,
            },
            ..spec(Popularity::Zipf { s: 1.0 })
        }
        .generate()
        .unwrap();
        let poisson = spec(Popularity::Zipf { s: 1.0 }).generate().unwrap();
        assert_eq!(bursty.len(), 40_000);
        assert!(bursty.times.windows(2).all(|w| w[0] <= w[1]));
        let cv = |t: &[f64]| {
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean) * (g - mean)).sum::<f64>() / gaps.len() as f64;
            var.sqrt() / mean
        };
        // Poisson gaps have a coefficient of variation of 1; bursts raise it.
        assert!(
            (0.95..1.05).contains(&cv(&poisson.times)),
            "{}",
            cv(&poisson.times)
        );
        assert!(cv(&bursty.times) > 1.2, "{}", cv(&bursty.times));
        // A burst model's requests come close together: the same model reappears within
        // a few requests far more often than in the Poisson trace.
        let near_repeats = |w: &Workload| {
            let r = &w.trace.requests;
            (3..r.len())
                .filter(|&i| r[i - 3..i].contains(&r[i]))
                .count()
        };
        assert!(
            near_repeats(&bursty) > 2 * near_repeats(&poisson),
            "{} vs {}",
            near_repeats(&bursty),
            near_repeats(&poisson)
        );
    }

    #[test]
    fn load_costs_follow_size_or_not() {
        let proportional = spec(Popularity::Zipf { s: 1.0 }).generate().unwrap();
        for (&size, &secs) in proportional.trace.sizes.iter().zip(&proportional.load_secs) {
            let expected = 0.05 + 4.0 * size as f64 / (1u64 << 30) as f64;
            assert!((secs - expected).abs() < 1e-9);
        }
        let independent = WorkloadSpec {
            load: LoadCost::Independent {
                min: 0.1,
                max: 20.0,
            },
            ..spec(Popularity::Zipf { s: 1.0 })
        }
        .generate()
        .unwrap();
        assert!(independent
            .load_secs
            .iter()
            .all(|&s| (0.1..=20.0).contains(&s)));
        let sizes: Vec<f64> = independent.trace.sizes.iter().map(|&s| s as f64).collect();
        assert!(spearman(&sizes, &independent.load_secs).abs() < 0.15);
    }

    #[test]
    fn one_load_varies_around_the_models_mean() {
        let w = spec(Popularity::Zipf { s: 1.0 }).generate().unwrap();
        let ratios: Vec<f64> = (0..w.len())
            .map(|i| w.load_time(i) / w.load_secs[w.trace.requests[i] as usize])
            .collect();
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        assert!((0.98..1.02).contains(&mean), "mean factor {mean}");
        let spread = ratios
            .iter()
            .filter(|&&r| !(0.8..1.25).contains(&r))
            .count();
        assert!(
            spread > ratios.len() / 5,
            "only {spread} loads far from the mean"
        );
        assert_eq!(w.load_time(7), w.load_time(7));
        let steady = WorkloadSpec {
            jitter: 0.0,
            ..spec(Popularity::Zipf { s: 1.0 })
        }
        .generate()
        .unwrap();
        assert_eq!(
            steady.load_time(3),
            steady.load_secs[steady.trace.requests[3] as usize]
        );
        assert_eq!(steady.load_time(usize::MAX), 0.0);
    }

    #[test]
    fn rejects_bad_specs() {
        let base = spec(Popularity::Zipf { s: 1.0 });
        let bad = |s: WorkloadSpec| s.generate().unwrap_err();
        assert_eq!(
            bad(WorkloadSpec {
                models: 0,
                ..base.clone()
            }),
            TraceError::NoModels
        );
        assert!(matches!(
            bad(spec(Popularity::Zipf { s: f64::NAN })),
            TraceError::ZipfExponent(_)
        ));
        assert!(matches!(
            bad(WorkloadSpec {
                size_min: 0,
                ..base.clone()
            }),
            TraceError::SizeRange { .. }
        ));
        for broken in [
            spec(Popularity::Shifting { s: 1.0, every: 0 }),
            spec(Popularity::Scan {
                s: 1.0,
                fraction: 1.0,
                run: 10,
            }),
            WorkloadSpec {
                arrivals: Arrivals::Poisson { rate: 0.0 },
                ..base.clone()
            },
            WorkloadSpec {
                load: LoadCost::Independent { min: 2.0, max: 1.0 },
                ..base.clone()
            },
            WorkloadSpec {
                jitter: -1.0,
                ..base.clone()
            },
        ] {
            assert!(matches!(bad(broken), TraceError::Parameter(_)));
        }
    }

    #[test]
    fn shapes_by_name() {
        let base = WorkloadSpec::default();
        for name in SHAPES {
            assert!(shape(name, &base).is_ok(), "{name}");
            let flat = shape(&format!("{name}/flat-load"), &base).unwrap();
            assert!(matches!(flat.load, LoadCost::Independent { .. }), "{name}");
        }
        assert_eq!(
            shape("zipf-0.7", &base).unwrap().popularity,
            Popularity::Zipf { s: 0.7 }
        );
        assert_eq!(shape("zipf-1.0", &base).unwrap(), base);
        for bad in ["zipf", "zipf-x", "lru", "shift/flat", ""] {
            assert!(
                matches!(shape(bad, &base), Err(TraceError::Parameter(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn probabilities_are_the_distribution_requests_are_drawn_from() {
        let spec = WorkloadSpec {
            models: 50,
            requests: 40_000,
            ..WorkloadSpec::default()
        };
        let p = spec.probabilities().unwrap().unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let w = spec.generate().unwrap();
        let mut counts = vec![0usize; 50];
        for &m in &w.trace.requests {
            counts[m as usize] += 1;
        }
        for (m, (&c, &p)) in counts.iter().zip(&p).enumerate() {
            let expected = p * 40_000.0;
            // Five standard deviations of a binomial count.
            let slack = 5.0 * (expected * (1.0 - p)).sqrt() + 1.0;
            assert!(
                (c as f64 - expected).abs() < slack,
                "model {m}: {c} vs {expected}"
            );
        }
        for moving in ["shift", "bursty", "scan"] {
            let spec = shape(moving, &spec).unwrap();
            assert_eq!(spec.probabilities().unwrap(), None, "{moving}");
        }
        let ranked = shape("small-popular", &spec).unwrap();
        assert!(ranked.probabilities().unwrap().is_some());
    }
}
