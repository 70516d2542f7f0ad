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

use super::gdsf::{Gdsf, GdsfConfig};
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

/// The pool's victim order and what it remembers. Its clock is the caller's `Instant`s,
/// counted from `epoch`.
#[derive(Debug, Clone)]
pub struct VictimState {
    policy: EvictionPolicy,
    gdsf: Gdsf<ModelName>,
    epoch: Instant,
}

impl VictimState {
    /// The order of `policy`, with GDSF tuned as the eviction lab chose
    /// ([`GdsfConfig::default`]).
    pub fn new(policy: EvictionPolicy, epoch: Instant) -> Self {
        Self::with_config(policy, GdsfConfig::default(), epoch)
    }

    pub fn with_config(policy: EvictionPolicy, config: GdsfConfig, epoch: Instant) -> Self {
        Self {
            policy,
            gdsf: Gdsf::new(config),
            epoch,
        }
    }

    pub fn policy(&self) -> EvictionPolicy {
        self.policy
    }

    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }

    /// `count` requests for `model` (a usage report's count, or one simulated request).
    pub fn requested(&mut self, model: &ModelName, count: u64, now: Instant) {
        if self.policy == EvictionPolicy::Gdsf && count > 0 {
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            let now = self.secs(now);
            self.gdsf.requested(model, count, now);
        }
    }

    /// `model`, of `size`, was loaded on a replica of `capacity` in `took` (the load call's
    /// measured time): its cost and size share feed its priority.
    pub fn loaded(
        &mut self,
        model: &ModelName,
        size: Resources,
        capacity: Resources,
        took: Duration,
        now: Instant,
    ) {
        if self.policy == EvictionPolicy::Gdsf {
            let now = self.secs(now);
            self.gdsf
                .loaded(model, share(size, capacity), took.as_secs_f64(), now);
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
