//! The victim order the live pool and the simulator plan with (`--eviction lru|gdsf`),
//! and the state it keeps. LRU is the anchors' order; GDSF ([`super::Gdsf`]) is fed with
//! what the pool sees: request counts from the gateway's usage reports, measured load
//! times, and its own evictions. Only the order among evictable copies changes: which
//! copies may go at all (minimum age, requests in flight, pins, other operations) is the
//! snapshot's decision, the same under every policy.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

use super::gdsf::{Aging, Gdsf, GdsfConfig, MissCost};
use crate::placement::{Resident, Resources, VictimOrder};
use crate::spec::ModelName;

/// Which victim order the pool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum EvictionPolicy {
    /// Least recently used (or loaded) first.
    #[default]
    Lru,
    /// Lowest GreedyDual-Size-Frequency priority first.
    Gdsf,
}

impl EvictionPolicy {
    /// The name on the command line and in the `mm_eviction_policy` metric.
    pub fn name(self) -> &'static str {
        match self {
            EvictionPolicy::Lru => "lru",
            EvictionPolicy::Gdsf => "gdsf",
        }
    }
}

impl fmt::Display for EvictionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EvictionPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lru" => Ok(EvictionPolicy::Lru),
            "gdsf" => Ok(EvictionPolicy::Gdsf),
            other => Err(format!("unknown eviction policy {other:?} (lru, gdsf)")),
        }
    }
}

/// What a miss costs in GDSF's priority (`mm-sim --eviction-cost`). The live pool always uses
/// [`EvictionCost::LoadTime`]: `Uniform` pays more load time than LRU on one trace
/// (docs/eviction.md, round 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum EvictionCost {
    /// The model's smoothed load time plus 0.5 s per miss: minimises the time users wait
    /// for loads.
    #[default]
    LoadTime,
    /// Every miss costs the same (`H = L + f / s`): maximises the hit rate.
    Uniform,
}

impl EvictionCost {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EvictionCost::LoadTime => "load-time",
            EvictionCost::Uniform => "uniform",
        }
    }

    /// The GDSF tuning with this cost: [`GdsfConfig::default`] with counts halving every
    /// [`HALF_LIFE_REQUESTS`].
    pub fn config(self) -> GdsfConfig {
        self.tuned(Aging::Inflation, HALF_LIFE_REQUESTS)
    }

    /// The GDSF tuning with this cost, `aging` and counts halving every `half_life`
    /// requests: what the pool-manager's `--gdsf-aging` / `--gdsf-half-life` and mm-sim's
    /// `--aging` / `--half-life` set, built here for both so they stay one code path.
    pub fn tuned(self, aging: Aging, half_life: f64) -> GdsfConfig {
        GdsfConfig {
            cost: match self {
                EvictionCost::LoadTime => GdsfConfig::default().cost,
                EvictionCost::Uniform => MissCost::Unit,
            },
            half_life,
            aging,
            ..GdsfConfig::default()
        }
    }
}

impl fmt::Display for EvictionCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EvictionCost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "load-time" => Ok(EvictionCost::LoadTime),
            "uniform" => Ok(EvictionCost::Uniform),
            other => Err(format!(
                "unknown eviction cost {other:?} (load-time, uniform)"
            )),
        }
    }
}

/// The victim order in force as the info metric, the start log and the status page name
/// it: GDSF's aging and half-life decide its victims as much as the policy's name does,
/// so an operator reading any of them can tell which configuration runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderInForce {
    pub policy: EvictionPolicy,
    /// GDSF's aging and half-life in requests; `None` under LRU, which has neither.
    pub gdsf: Option<(Aging, f64)>,
}

impl OrderInForce {
    pub fn new(policy: EvictionPolicy, gdsf: &GdsfConfig) -> Self {
        Self {
            policy,
            gdsf: (policy == EvictionPolicy::Gdsf).then_some((gdsf.aging, gdsf.half_life)),
        }
    }

    /// The `mm_eviction_policy` labels: `policy`, and under GDSF `aging` and `half_life`.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut labels = vec![("policy", self.policy.name().to_owned())];
        if let Some((aging, half_life)) = self.gdsf {
            labels.push(("aging", aging.name().to_owned()));
            labels.push(("half_life", half_life.to_string()));
        }
        labels
    }
}

impl fmt::Display for OrderInForce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gdsf {
            None => write!(f, "{}", self.policy),
            Some((aging, half_life)) => write!(
                f,
                "{} (aging {}, half-life {half_life} requests)",
                self.policy,
                aging.name()
            ),
        }
    }
}

/// Half-life of GDSF's request counts in the pool, in requests to the whole pool: 300 s
/// at the simulator's 100 requests/s, the eviction lab's choice, but independent of the
/// request rate.
pub const HALF_LIFE_REQUESTS: f64 = 30_000.0;

/// The pool's victim order and what it remembers. GDSF's clock is the number of requests
/// counted so far (every model's), not wall time: a count then decays by how much other
/// traffic came since, which means the same at 1 request/s and at 10,000, and the same in
/// the simulator (whose wall clock is logical) as in the pool. The caller's `Instant`s,
/// counted from `epoch`, serve only LRU's reported priority.
#[derive(Debug, Clone)]
pub struct VictimState {
    policy: EvictionPolicy,
    gdsf: Gdsf<ModelName>,
    epoch: Instant,
    /// Requests counted so far: GDSF's clock.
    requests: f64,
}

impl VictimState {
    /// The order of `policy`, with GDSF tuned as the eviction lab chose
    /// ([`GdsfConfig::default`]) and counts halving every [`HALF_LIFE_REQUESTS`].
    pub fn new(policy: EvictionPolicy, epoch: Instant) -> Self {
        Self::with_cost(policy, EvictionCost::default(), epoch)
    }

    /// [`VictimState::new`] with what a miss costs in GDSF's priority.
    pub fn with_cost(policy: EvictionPolicy, cost: EvictionCost, epoch: Instant) -> Self {
        Self::with_config(policy, cost.config(), epoch)
    }

    /// Any GDSF tuning; its half-life is in requests (see the type's docs).
    pub fn with_config(policy: EvictionPolicy, config: GdsfConfig, epoch: Instant) -> Self {
        Self {
            policy,
            gdsf: Gdsf::new(config),
            epoch,
            requests: 0.0,
        }
    }

    pub fn policy(&self) -> EvictionPolicy {
        self.policy
    }

    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }

    /// `count` requests for `model` (a usage report's count, or one simulated request).
    /// The time is not used: GDSF's clock is the requests themselves.
    pub fn requested(&mut self, model: &ModelName, count: u64, _now: Instant) {
        if self.policy == EvictionPolicy::Gdsf && count > 0 {
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            self.requests += f64::from(count);
            self.gdsf.requested(model, count, self.requests);
        }
    }

    /// `model`, of `size`, was loaded on a replica of `capacity` in `took` (the load call's
    /// measured time): its cost and size share feed its priority. The time is not used.
    pub fn loaded(
        &mut self,
        model: &ModelName,
        size: Resources,
        capacity: Resources,
        took: Duration,
        _now: Instant,
    ) {
        if self.policy == EvictionPolicy::Gdsf {
            self.gdsf.loaded(
                model,
                share(size, capacity),
                took.as_secs_f64(),
                self.requests,
            );
        }
    }

    /// `model` was chosen as a victim; returns its priority at that moment (GDSF's `H`,
    /// or for LRU the seconds from the epoch to its last use), for the event and the log.
    /// `needed`: the load needed it gone to fit under the high watermark
    /// ([`crate::placement::needed`]); GDSF's inflation rises only to such victims, not
    /// to those of the sweep down to the low watermark.
    pub fn evicted(&mut self, model: &ModelName, last_use: Instant, needed: bool) -> f64 {
        match self.policy {
            EvictionPolicy::Lru => self.secs(last_use),
            EvictionPolicy::Gdsf => {
                let priority = self.gdsf.priority(model);
                if needed {
                    self.gdsf.evicted(model);
                } else {
                    self.gdsf.swept(model);
                }
                priority
            }
        }
    }

    /// `model` is unregistered: what the policy knew of it goes.
    pub fn forget(&mut self, model: &ModelName) {
        self.gdsf.forget(model);
    }

    /// GDSF's priority of a resident model (0 under LRU, which keeps no state).
    pub fn priority(&self, model: &ModelName) -> f64 {
        match self.policy {
            EvictionPolicy::Lru => 0.0,
            EvictionPolicy::Gdsf => self.gdsf.priority(model),
        }
    }
}

impl VictimOrder<&ModelName> for VictimState {
    fn key(&self, r: &Resident<&ModelName>) -> u64 {
        match self.policy {
            EvictionPolicy::Lru => r.last_use,
            EvictionPolicy::Gdsf => self.gdsf.rank(r.key),
        }
    }
}

/// The larger of a model's shares of a replica's memory and GPU memory (dimensions the
/// replica does not have count for nothing).
pub fn share(size: Resources, capacity: Resources) -> f64 {
    let dim = |used: u64, cap: u64| {
        if cap == 0 {
            0.0
        } else {
            used as f64 / cap as f64
        }
    };
    dim(size.memory, capacity.memory).max(dim(size.gpu_memory, capacity.gpu_memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> ModelName {
        ModelName::new(n).unwrap()
    }

    fn resident(key: &ModelName, last_use: u64) -> Resident<&ModelName> {
        Resident {
            key,
            size: Resources::new(1, 0),
            last_use,
            blocker: None,
        }
    }

    #[test]
    fn policies_parse_by_name() {
        for p in [EvictionPolicy::Lru, EvictionPolicy::Gdsf] {
            assert_eq!(p.name().parse::<EvictionPolicy>(), Ok(p));
        }
        assert_eq!(EvictionPolicy::default(), EvictionPolicy::Lru);
        let err = "LRU2".parse::<EvictionPolicy>().unwrap_err();
        assert!(err.contains("lru, gdsf"), "{err}");
    }

    #[test]
    fn lru_orders_by_last_use_and_gdsf_by_priority() {
        let epoch = Instant::now();
        let (a, b) = (name("a"), name("b"));
        let cap = Resources::new(100, 0);
        for policy in [EvictionPolicy::Lru, EvictionPolicy::Gdsf] {
            let mut v = VictimState::new(policy, epoch);
            v.requested(&a, 9, epoch);
            v.loaded(
                &a,
                Resources::new(20, 0),
                cap,
                Duration::from_secs(1),
                epoch,
            );
            v.requested(&b, 1, epoch);
            v.loaded(
                &b,
                Resources::new(20, 0),
                cap,
                Duration::from_secs(1),
                epoch,
            );
            // "a" is the least recently used but requested nine times as often.
            let (ka, kb) = (v.key(&resident(&a, 1)), v.key(&resident(&b, 2)));
            match policy {
                EvictionPolicy::Lru => assert!(ka < kb),
                EvictionPolicy::Gdsf => {
                    assert!(ka > kb);
                    // f * (load + 0.5 s) / share: 1 * 1.5 / 0.2.
                    assert_eq!(v.priority(&b), 7.5);
                    assert_eq!(v.evicted(&b, epoch, true), 7.5);
                }
            }
        }
    }

    #[test]
    fn the_order_in_force_names_gdsf_tuning_only_under_gdsf() {
        let decay = EvictionCost::LoadTime.tuned(Aging::Decay, 8000.0);
        let lru = OrderInForce::new(EvictionPolicy::Lru, &decay);
        assert_eq!(lru.labels(), [("policy", "lru".to_owned())]);
        assert_eq!(lru.to_string(), "lru");
        let gdsf = OrderInForce::new(EvictionPolicy::Gdsf, &decay);
        assert_eq!(
            gdsf.labels(),
            [
                ("policy", "gdsf".to_owned()),
                ("aging", "decay".to_owned()),
                ("half_life", "8000".to_owned())
            ]
        );
        assert_eq!(
            gdsf.to_string(),
            "gdsf (aging decay, half-life 8000 requests)"
        );
        let default = OrderInForce::new(EvictionPolicy::Gdsf, &EvictionCost::default().config());
        assert_eq!(default.gdsf, Some((Aging::Inflation, 30_000.0)));
    }

    #[test]
    fn costs_parse_by_name_and_uniform_tunes_for_hits() {
        for c in [EvictionCost::LoadTime, EvictionCost::Uniform] {
            assert_eq!(c.name().parse::<EvictionCost>(), Ok(c));
            assert_eq!(c.config().half_life, HALF_LIFE_REQUESTS);
        }
        assert_eq!(EvictionCost::Uniform.config().cost, MissCost::Unit);
        assert_eq!(
            EvictionCost::default().config().cost,
            GdsfConfig::default().cost
        );
        let err = "free".parse::<EvictionCost>().unwrap_err();
        assert!(err.contains("load-time, uniform"), "{err}");
    }

    #[test]
    fn counts_decay_with_other_requests_not_with_time() {
        let epoch = Instant::now();
        let config = GdsfConfig {
            cost: MissCost::Unit,
            half_life: 10.0,
            admission: None,
            ..GdsfConfig::default()
        };
        let mut v = VictimState::with_config(EvictionPolicy::Gdsf, config, epoch);
        let (a, b) = (name("a"), name("b"));
        let whole = Resources::new(100, 0);
        v.requested(&a, 8, epoch);
        v.loaded(&a, whole, whole, Duration::ZERO, epoch);
        // An hour without other requests: only the new request itself ages the count.
        let later = epoch + Duration::from_secs(3600);
        v.requested(&a, 1, later);
        let first = 8.0 * 2f64.powf(-1.0 / 10.0) + 1.0;
        assert!((v.priority(&a) - first).abs() < 1e-9, "{}", v.priority(&a));
        // Twenty requests for another model at the same instant, then one for `a`: 21
        // requests, 2.1 half-lives.
        v.requested(&b, 20, later);
        v.requested(&a, 1, later);
        let expected = first * 2f64.powf(-21.0 / 10.0) + 1.0;
        assert!(
            (v.priority(&a) - expected).abs() < 1e-9,
            "{}",
            v.priority(&a)
        );
    }

    #[test]
    fn lru_priority_is_the_last_use_and_keeps_no_state() {
        let epoch = Instant::now();
        let mut v = VictimState::new(EvictionPolicy::Lru, epoch);
        let a = name("a");
        v.requested(&a, 5, epoch);
        assert_eq!(v.priority(&a), 0.0);
        assert_eq!(v.evicted(&a, epoch + Duration::from_secs(3), true), 3.0);
    }

    #[test]
    fn the_share_is_the_scarcer_dimension() {
        let cap = Resources::new(100, 1000);
        assert_eq!(share(Resources::new(50, 100), cap), 0.5);
        assert_eq!(share(Resources::new(10, 900), cap), 0.9);
        assert_eq!(share(Resources::new(10, 900), Resources::new(100, 0)), 0.1);
        assert_eq!(share(Resources::ZERO, Resources::ZERO), 0.0);
    }
}
