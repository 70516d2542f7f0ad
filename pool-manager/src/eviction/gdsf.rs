//! GreedyDual-Size-Frequency (Cao & Irani, USITS'97; Cherkasova, HPL-98-69), adapted to
//! model serving: a resident model's priority is `H = L + f * c / s`, the lowest `H` is
//! evicted first and raises the inflation `L` to its value, so models that stop being
//! requested age out without any periodic sweep.
//!
//! - `f` is the model's request count, decayed exponentially with a half-life, and kept
//!   while the model is not resident, so a model that comes back is recognised.
//! - `c` is what a miss on the model costs: its load time smoothed over loads (an EWMA of
//!   measured times, not the last one, which is noisy), or 1 to optimise the hit rate.
//! - `s` is the model's size as a fraction of a replica: the larger of its memory and GPU
//!   memory shares, so the scarcer dimension counts.
//! - Admission: a model larger than a share of a replica, loaded without a recent second
//!   request, enters at `H = L`: it is served, but it is the next victim unless requested
//!   again, so one request for a big model does not push out the steadily used ones.
//!
//! The state is pure (no clock, no I/O): the caller says what happened and when, in any
//! time unit it likes, as long as the half-life is in the same unit.

use std::collections::HashMap;
use std::hash::Hash;

/// What a miss costs in the priority.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MissCost {
    /// Every miss costs the same: optimises the hit rate.
    Unit,
    /// The model's smoothed load time plus a fixed overhead per miss (the part of a cold
    /// request that does not depend on the model). Optimises the time users wait.
    LoadTime { overhead: f64 },
    /// The last measured load time alone (classic latency-costed GDS): kept only to show,
    /// in experiments, why the smoothed time is used.
    LastLoadTime,
}

/// Tuning of [`Gdsf`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GdsfConfig {
    pub cost: MissCost,
    /// Half-life of a model's request count, in the caller's time unit;
    /// `f64::INFINITY` never forgets.
    pub half_life: f64,
    /// Weight of a new measurement in the smoothed load time, in `(0, 1]`.
    pub smoothing: f64,
    /// Keep the counts of models that are not resident.
    pub history: bool,
    /// Models larger than this fraction of a replica enter at the bottom unless requested
    /// at least twice recently (decayed count >= 2); `None` admits every model normally.
    pub admission: Option<f64>,
    /// How idle models lose priority.
    pub aging: Aging,
    /// `s` enters the priority as `s^size_exponent`: 1 is GDSF; above 1 favours small
    /// models more (more hits per byte), below 1 less.
    pub size_exponent: f64,
    /// Whether victims of the sweep down to the low watermark raise the inflation too
    /// ([`Gdsf::swept`]), as in GDSF on a cache without watermarks; `false` raises it only
    /// to the victims a load needed (for experiments: the sweep's victims would age
    /// everything by the batching, not by pressure).
    pub sweep_inflates: bool,
}

/// How idle models lose priority (`--gdsf-aging`, mm-sim's `--aging`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Aging {
    /// GreedyDual: each victim raises the inflation `L` that newcomers start from.
    #[default]
    Inflation,
    /// No inflation: the order is by the current decayed `f * c / s`, so an idle model
    /// loses half its priority every half-life (computed as the time-invariant key
    /// `log2(f * c / s) + t / half_life`).
    Decay,
    /// Neither: `f * c / s` as of the last request (for experiments only: no flag takes it).
    #[value(skip)]
    None,
}

impl Aging {
    /// The name on the command line and in the `mm_eviction_policy` metric.
    pub fn name(self) -> &'static str {
        match self {
            Aging::Inflation => "inflation",
            Aging::Decay => "decay",
            Aging::None => "none",
        }
    }
}

impl Default for GdsfConfig {
    /// The design the eviction lab chose (`examples/eviction_lab.rs`, docs/eviction.md):
    /// a miss costs the smoothed load time plus half a second, counts halve every 300 s
    /// (so popularity that moves is forgotten even while the inflation rises slowly),
    /// history kept, admission above a quarter of a replica, inflation raised only by the
    /// victims a load needed.
    fn default() -> Self {
        Self {
            cost: MissCost::LoadTime { overhead: 0.5 },
            half_life: 300.0,
            smoothing: 0.3,
            history: true,
            admission: Some(0.25),
            aging: Aging::Inflation,
            size_exponent: 1.0,
            sweep_inflates: false,
        }
    }
}

/// What the policy knows of one model.
#[derive(Debug, Clone, Copy)]
struct Stats {
    /// Decayed request count, as of `counted_at`.
    count: f64,
    counted_at: f64,
    /// Smoothed load time; `None` until the first load is measured.
    load_time: Option<f64>,
    last_load_time: f64,
    /// Size as a fraction of a replica, from the last load.
    size: f64,
    /// `H` while resident.
    priority: Option<f64>,
}

/// The policy's state: the inflation value and what it knows of each model.
#[derive(Debug, Clone)]
pub struct Gdsf<K> {
    config: GdsfConfig,
    inflation: f64,
    models: HashMap<K, Stats>,
}

/// Sizes below this fraction count as this fraction, so a zero-sized model cannot make
/// its priority infinite.
const MIN_SIZE: f64 = 1e-9;

impl<K: Hash + Eq + Clone> Gdsf<K> {
    pub fn new(config: GdsfConfig) -> Self {
        Self {
            config,
            inflation: 0.0,
            models: HashMap::new(),
        }
    }

    pub fn config(&self) -> &GdsfConfig {
        &self.config
    }

    /// The inflation value `L`: the priority of the last victim.
    pub fn inflation(&self) -> f64 {
        self.inflation
    }

    /// Counts `count` requests for `key` at `now` (hits and misses alike); a resident
    /// model's priority is recomputed, as for a hit.
    pub fn requested(&mut self, key: &K, count: u32, now: f64) {
        let config = self.config;
        let inflation = self.inflation;
        let stats = match self.models.get_mut(key) {
            Some(stats) => stats,
            None => self.models.entry(key.clone()).or_insert(Stats {
                count: 0.0,
                counted_at: now,
                load_time: None,
                last_load_time: 0.0,
                size: 1.0,
                priority: None,
            }),
        };
        stats.count = decayed(stats.count, stats.counted_at, now, config.half_life) + count as f64;
        stats.counted_at = now;
        if stats.priority.is_some() {
            stats.priority = Some(priority(&config, inflation, stats));
        }
    }

    /// `key` was loaded at `now`, taking `load_secs`, and occupies `size` of a replica
    /// (the larger of its memory and GPU shares). Its priority is set from the current
    /// inflation, so call this after evicting the victims made room for it.
    pub fn loaded(&mut self, key: &K, size: f64, load_secs: f64, now: f64) {
        self.requested(key, 0, now);
        let config = self.config;
        let inflation = self.inflation;
        if let Some(stats) = self.models.get_mut(key) {
            let sample = if load_secs.is_finite() {
                load_secs.max(0.0)
            } else {
                0.0
            };
            stats.load_time = Some(match stats.load_time {
                Some(old) => old + config.smoothing * (sample - old),
                None => sample,
            });
            stats.last_load_time = sample;
            stats.size = if size.is_finite() {
                size.max(MIN_SIZE)
            } else {
                1.0
            };
            let on_probation = config
                .admission
                .is_some_and(|limit| stats.size > limit && stats.count < 2.0);
            stats.priority = Some(if on_probation {
                match config.aging {
                    Aging::Decay => f64::MIN,
                    Aging::Inflation | Aging::None => inflation,
                }
            } else {
                priority(&config, inflation, stats)
            });
        }
    }

    /// `key` was evicted: the inflation rises to its priority.
    pub fn evicted(&mut self, key: &K) {
        let keep = self.config.history;
        if let Some(stats) = self.models.get_mut(key) {
            if let Some(priority) = stats.priority.take() {
                if self.config.aging == Aging::Inflation {
                    self.inflation = self.inflation.max(priority);
                }
            }
            if !keep {
                self.models.remove(key);
            }
        }
    }

    /// `key` was evicted beyond what the load needed (the sweep down to the low
    /// watermark): unlike [`Gdsf::evicted`], the inflation does not rise to its priority.
    pub fn swept(&mut self, key: &K) {
        if self.config.sweep_inflates {
            return self.evicted(key);
        }
        let keep = self.config.history;
        if let Some(stats) = self.models.get_mut(key) {
            stats.priority = None;
            if !keep {
                self.models.remove(key);
            }
        }
    }

    /// `key` is gone for good (unregistered): its history is dropped.
    pub fn forget(&mut self, key: &K) {
        self.models.remove(key);
    }

    /// The priority `H` of a resident model. A model the policy never saw loaded (for
    /// example one resident before a restart) counts as just loaded with no history:
    /// the inflation value.
    pub fn priority(&self, key: &K) -> f64 {
        self.models
            .get(key)
            .and_then(|s| s.priority)
            .unwrap_or(self.inflation)
    }

    /// The priority as a `u64` with the same order, for victim orders keyed by integers.
    pub fn rank(&self, key: &K) -> u64 {
        ordered_bits(self.priority(key))
    }

    /// Sorts eviction candidates, first victim first. The sort is stable: candidates of
    /// equal priority keep the caller's order (least recently used first, in the pool).
    pub fn order<T>(&self, candidates: &mut [T], key: impl Fn(&T) -> &K) {
        candidates.sort_by(|a, b| self.priority(key(a)).total_cmp(&self.priority(key(b))));
    }

    /// Models the policy keeps state for (resident or not).
    pub fn tracked(&self) -> usize {
        self.models.len()
    }
}

/// The priority of a resident model as of its last request or load.
fn priority(config: &GdsfConfig, inflation: f64, stats: &Stats) -> f64 {
    match config.aging {
        Aging::Inflation => inflation + value(config, stats),
        Aging::None => value(config, stats),
        Aging::Decay => {
            let age = if config.half_life.is_finite() {
                stats.counted_at / config.half_life
            } else {
                0.0
            };
            value(config, stats).max(f64::MIN_POSITIVE).log2() + age
        }
    }
}

/// `f * c / s` of a model.
fn value(config: &GdsfConfig, stats: &Stats) -> f64 {
    let cost = match config.cost {
        MissCost::Unit => 1.0,
        MissCost::LoadTime { overhead } => overhead + stats.load_time.unwrap_or(0.0),
        MissCost::LastLoadTime => stats.last_load_time,
    };
    let size = stats.size.max(MIN_SIZE);
    let size = if config.size_exponent == 1.0 {
        size
    } else {
        size.powf(config.size_exponent)
    };
    stats.count * cost / size
}

/// A `u64` that sorts as the float does: flip every bit of negatives, only the sign bit
/// of the others (NaN sorts above everything).
fn ordered_bits(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

/// `count` as of `then`, decayed to `now`.
fn decayed(count: f64, then: f64, now: f64, half_life: f64) -> f64 {
    let elapsed = (now - then).max(0.0);
    if elapsed == 0.0 || half_life.is_infinite() {
        count
    } else {
        count * (-elapsed / half_life).exp2()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts that never decay, so the figures below are exact.
    fn policy(cost: MissCost) -> Gdsf<&'static str> {
        Gdsf::new(GdsfConfig {
            cost,
            admission: None,
            half_life: f64::INFINITY,
            ..GdsfConfig::default()
        })
    }

    fn order(p: &Gdsf<&'static str>, keys: &[&'static str]) -> Vec<&'static str> {
        let mut keys = keys.to_vec();
        p.order(&mut keys, |k| k);
        keys
    }

    #[test]
    fn frequent_small_models_outrank_rare_large_ones() {
        let mut p = policy(MissCost::Unit);
        p.requested(&"small", 5, 0.0);
        p.loaded(&"small", 0.1, 1.0, 0.0);
        p.requested(&"large", 5, 0.0);
        p.loaded(&"large", 0.4, 1.0, 0.0);
        p.requested(&"rare", 1, 0.0);
        p.loaded(&"rare", 0.1, 1.0, 0.0);
        assert_eq!(p.priority(&"small"), 50.0);
        assert_eq!(p.priority(&"large"), 12.5);
        assert_eq!(p.priority(&"rare"), 10.0);
        assert_eq!(
            order(&p, &["small", "large", "rare"]),
            ["rare", "large", "small"]
        );
    }

    #[test]
    fn eviction_raises_the_inflation_so_idle_models_age_out() {
        let mut p = policy(MissCost::Unit);
        p.requested(&"old", 3, 0.0);
        p.loaded(&"old", 0.5, 1.0, 0.0); // H = 6
        p.requested(&"a", 1, 1.0);
        p.loaded(&"a", 0.5, 1.0, 1.0); // H = 2
        p.evicted(&"a");
        assert_eq!(p.inflation(), 2.0);
        // Each newcomer enters above the inflation, which every eviction raises: after a
        // few newcomers, the idle "old" model is the lowest and goes.
        let mut victims = Vec::new();
        for (i, key) in ["b", "c", "d", "e"].into_iter().enumerate() {
            p.requested(&key, 1, 2.0 + i as f64);
            p.loaded(&key, 0.5, 1.0, 2.0 + i as f64);
            let victim = order(&p, &["old", key])[0];
            p.evicted(&victim);
            victims.push(victim);
            if victim == "old" {
                break;
            }
        }
        assert_eq!(victims, ["b", "old"]);
        assert_eq!(p.inflation(), 6.0);
    }

    #[test]
    fn a_hit_recomputes_the_priority_from_the_current_inflation() {
        let mut p = policy(MissCost::Unit);
        p.requested(&"x", 1, 0.0);
        p.loaded(&"x", 0.5, 1.0, 0.0); // 2
        p.requested(&"v", 1, 0.0);
        p.loaded(&"v", 0.25, 1.0, 0.0); // 4
        p.evicted(&"v");
        p.requested(&"x", 1, 1.0);
        assert_eq!(p.priority(&"x"), 4.0 + 2.0 / 0.5);
    }

    #[test]
    fn only_needed_victims_raise_the_inflation() {
        let mut p = policy(MissCost::Unit);
        for (k, size) in [("a", 0.5), ("b", 0.25)] {
            p.requested(&k, 1, 0.0);
            p.loaded(&k, size, 1.0, 0.0);
        }
        p.evicted(&"a"); // 2
        p.swept(&"b"); // 4: the sweep's, not the load's
        assert_eq!(p.inflation(), 2.0);
        assert_eq!(p.priority(&"b"), 2.0, "no longer resident: the inflation");
        let mut old = Gdsf::new(GdsfConfig {
            sweep_inflates: true,
            ..*p.config()
        });
        old.requested(&"b", 1, 0.0);
        old.loaded(&"b", 0.25, 1.0, 0.0);
        old.swept(&"b");
        assert_eq!(old.inflation(), 4.0);
    }

    #[test]
    fn the_load_cost_is_smoothed_not_the_last_sample() {
        let mut p = policy(MissCost::LoadTime { overhead: 0.0 });
        p.requested(&"m", 1, 0.0);
        p.loaded(&"m", 1.0, 10.0, 0.0);
        p.evicted(&"m");
        let l = p.inflation();
        p.loaded(&"m", 1.0, 0.0, 1.0);
        // EWMA 0.3: 10 + 0.3 * (0 - 10) = 7, times one request.
        assert!((p.priority(&"m") - l - 7.0).abs() < 1e-9);
        let mut last = policy(MissCost::LastLoadTime);
        last.requested(&"m", 1, 0.0);
        last.loaded(&"m", 1.0, 10.0, 0.0);
        last.loaded(&"m", 1.0, 0.0, 1.0);
        assert_eq!(last.priority(&"m"), 0.0);
    }

    #[test]
    fn counts_decay_with_the_half_life_and_survive_eviction() {
        let mut p = Gdsf::new(GdsfConfig {
            cost: MissCost::Unit,
            half_life: 10.0,
            admission: None,
            ..GdsfConfig::default()
        });
        p.requested(&"m", 8, 0.0);
        p.loaded(&"m", 1.0, 1.0, 0.0);
        p.evicted(&"m");
        p.requested(&"m", 1, 20.0); // 8 / 4 + 1
        p.loaded(&"m", 1.0, 1.0, 20.0);
        assert!((p.priority(&"m") - p.inflation() - 3.0).abs() < 1e-9);
        let mut forgetful = Gdsf::new(GdsfConfig {
            cost: MissCost::Unit,
            history: false,
            admission: None,
            ..GdsfConfig::default()
        });
        forgetful.requested(&"m", 8, 0.0);
        forgetful.loaded(&"m", 1.0, 1.0, 0.0);
        forgetful.evicted(&"m");
        assert_eq!(forgetful.tracked(), 0);
        forgetful.requested(&"m", 1, 1.0);
        forgetful.loaded(&"m", 1.0, 1.0, 1.0);
        assert_eq!(forgetful.priority(&"m") - forgetful.inflation(), 1.0);
    }

    #[test]
    fn a_big_model_requested_once_enters_at_the_bottom() {
        let mut p = Gdsf::new(GdsfConfig {
            cost: MissCost::Unit,
            half_life: f64::INFINITY,
            ..GdsfConfig::default()
        });
        p.requested(&"small", 1, 0.0);
        p.loaded(&"small", 0.1, 1.0, 0.0);
        p.requested(&"big", 1, 0.0);
        p.loaded(&"big", 0.3, 1.0, 0.0);
        assert_eq!(p.priority(&"big"), p.inflation());
        assert_eq!(order(&p, &["small", "big"]), ["big", "small"]);
        // Requested again, it is valued normally.
        p.requested(&"big", 1, 1.0);
        assert_eq!(p.priority(&"big"), 2.0 / 0.3);
        p.evicted(&"big");
        p.loaded(&"big", 0.3, 1.0, 2.0);
        assert!(
            p.priority(&"big") > p.inflation(),
            "a second request admits it"
        );
    }

    #[test]
    fn unknown_models_and_ties_keep_the_callers_order() {
        let mut p = policy(MissCost::Unit);
        p.requested(&"known", 1, 0.0);
        p.loaded(&"known", 0.5, 1.0, 0.0);
        assert_eq!(p.priority(&"stranger"), 0.0);
        assert_eq!(order(&p, &["known", "b", "a"]), ["b", "a", "known"]);
        assert!(p.rank(&"b") < p.rank(&"known"));
        p.forget(&"known");
        assert_eq!(p.tracked(), 0);
    }

    #[test]
    fn with_decay_an_idle_model_halves_its_priority_every_half_life() {
        let mut p = Gdsf::new(GdsfConfig {
            cost: MissCost::Unit,
            aging: Aging::Decay,
            half_life: 10.0,
            admission: None,
            ..GdsfConfig::default()
        });
        p.requested(&"old", 8, 0.0);
        p.loaded(&"old", 0.5, 1.0, 0.0); // value 16 at t = 0
        p.requested(&"new", 1, 25.0);
        p.loaded(&"new", 0.5, 1.0, 25.0); // value 2 at t = 25; old is worth 16 / 2^2.5 ~ 2.8
        assert_eq!(order(&p, &["old", "new"]), ["new", "old"]);
        p.requested(&"new2", 1, 35.0);
        p.loaded(&"new2", 0.5, 1.0, 35.0); // 2 at t = 35; old is worth 16 / 2^3.5 ~ 1.4
        assert_eq!(order(&p, &["old", "new2"]), ["old", "new2"]);
        p.evicted(&"old");
        assert_eq!(p.inflation(), 0.0, "decay needs no inflation");
    }

    #[test]
    fn a_size_exponent_favours_small_models_more() {
        let mut p = Gdsf::new(GdsfConfig {
            cost: MissCost::Unit,
            admission: None,
            size_exponent: 2.0,
            ..GdsfConfig::default()
        });
        p.requested(&"m", 1, 0.0);
        p.loaded(&"m", 0.5, 1.0, 0.0);
        assert_eq!(p.priority(&"m"), 4.0, "1 / 0.5^2");
    }

    #[test]
    fn ranks_sort_like_priorities_of_any_sign() {
        let values = [f64::MIN, -3.5, -0.0, 0.0, 1e-300, 2.0, 1e300];
        for pair in values.windows(2) {
            assert!(ordered_bits(pair[0]) <= ordered_bits(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn nonsense_measurements_do_not_poison_priorities() {
        let mut p = policy(MissCost::LoadTime { overhead: 1.0 });
        p.requested(&"m", 1, 0.0);
        p.loaded(&"m", 0.0, f64::NAN, 0.0);
        assert!(p.priority(&"m").is_finite());
        p.loaded(&"m", f64::INFINITY, -3.0, 0.0);
        assert!(p.priority(&"m").is_finite() && p.priority(&"m") >= 0.0);
    }
}
