//! Placement and eviction planning. Pure: it decides from a snapshot of the replicas and
//! knows nothing of I/O, clocks or locks, so the live pool and the trace simulator
//! ([`crate::sim`]) run the very same rules, and every rule is unit-tested directly.
//!
//! Rules, in order:
//! 1. Only healthy replicas that do not already hold the model, and whose capacity covers
//!    the model in both dimensions (host and GPU memory), are considered.
//! 2. A replica where the model fits without crossing the high watermark (in every
//!    dimension) is always preferred to one that needs evictions. Among those, the highest
//!    score wins: the fraction of memory still free after placing the model (the tighter
//!    dimension) minus the replica's share of the requests in flight across the pool, so
//!    both full and busy replicas are avoided. Ties go to fewer models, then to the first
//!    replica in configuration order.
//! 3. Otherwise, on each replica the evictable models are taken in the caller's victim
//!    order (least recently used first, in the live pool) until the model fits under the
//!    low watermark, or the victims run out; the plan is feasible if it then fits under the
//!    high watermark. The plan that evicts the fewest models wins, then the one whose
//!    newest victim is oldest, then the score of rule 2. So one big model empties a
//!    replica only when no replica can take it for less.
//! 4. When nothing is feasible the caller fails fast: nothing is evicted.

use std::ops::{Add, Sub};

/// An amount in each accounted dimension, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    pub memory: u64,
    pub gpu_memory: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        memory: 0,
        gpu_memory: 0,
    };

    pub fn new(memory: u64, gpu_memory: u64) -> Self {
        Self { memory, gpu_memory }
    }

    /// Whether `self` fits within `limit` in every dimension.
    pub fn fits_in(self, limit: Resources) -> bool {
        self.memory <= limit.memory && self.gpu_memory <= limit.gpu_memory
    }

    /// Each dimension scaled by `fraction` (rounded down).
    pub fn scale(self, fraction: f64) -> Resources {
        let f = |v: u64| (v as f64 * fraction).floor() as u64;
        Resources::new(f(self.memory), f(self.gpu_memory))
    }

    /// The larger of each dimension.
    pub fn max(self, other: Resources) -> Resources {
        Resources::new(
            self.memory.max(other.memory),
            self.gpu_memory.max(other.gpu_memory),
        )
    }

    /// The free fraction of `capacity` in the tighter dimension that has any capacity.
    fn free_fraction(self, capacity: Resources) -> f64 {
        let dim =
            |used: u64, cap: u64| (cap > 0).then(|| cap.saturating_sub(used) as f64 / cap as f64);
        [
            dim(self.memory, capacity.memory),
            dim(self.gpu_memory, capacity.gpu_memory),
        ]
        .into_iter()
        .flatten()
        .fold(1.0, f64::min)
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Resources::new(
            self.memory.saturating_add(o.memory),
            self.gpu_memory.saturating_add(o.gpu_memory),
        )
    }
}

impl Sub for Resources {
    type Output = Resources;
    fn sub(self, o: Resources) -> Resources {
        Resources::new(
            self.memory.saturating_sub(o.memory),
            self.gpu_memory.saturating_sub(o.gpu_memory),
        )
    }
}

/// The watermarks, as fractions of capacity: crossing `high` triggers eviction, which
/// frees memory down to `low`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watermarks {
    pub high: f64,
    pub low: f64,
}

impl Default for Watermarks {
    fn default() -> Self {
        Self {
            high: 0.8,
            low: 0.6,
        }
    }
}

impl Watermarks {
    /// Checks `0 < low <= high <= 1`.
    pub fn new(high: f64, low: f64) -> Result<Self, String> {
        if !(high > 0.0 && high <= 1.0) {
            return Err(format!("high watermark {high} must be in (0, 1]"));
        }
        if !(low > 0.0 && low <= high) {
            return Err(format!("low watermark {low} must be in (0, high]"));
        }
        Ok(Self { high, low })
    }
}

/// A model resident on a replica, as eviction sees it.
#[derive(Debug, Clone)]
pub struct Resident<K> {
    pub key: K,
    pub size: Resources,
    /// False for models that must stay: pinned copies, requests in flight, loaded or used
    /// more recently than the minimum age, busy with another operation.
    pub evictable: bool,
    /// Victim order: lower goes first (the last-use time, for LRU).
    pub rank: u64,
}

/// One replica as placement sees it.
#[derive(Debug, Clone)]
pub struct ReplicaSnapshot<K> {
    pub healthy: bool,
    /// The replica already holds (or is loading) the model: a copy must go elsewhere.
    pub holds_model: bool,
    pub capacity: Resources,
    pub used: Resources,
    /// Requests in flight on the replica (its load).
    pub in_flight: u64,
    pub residents: Vec<Resident<K>>,
}

/// Where to put a model and what to evict for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K> {
    /// Index into the snapshot slice.
    pub replica: usize,
    /// Models to unload first, in order.
    pub evict: Vec<K>,
    /// The plan evicts at least two models and more than half of the replica's models: a
    /// sweep that operators should see (it is counted in the metrics).
    pub mass_eviction: bool,
}

/// Why no plan was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no healthy replica")]
    NoHealthyReplica,
    #[error("every healthy replica already holds the model")]
    NoOtherReplica,
    #[error("no replica has room for {need_memory} bytes of memory and {need_gpu} bytes of GPU memory, even after evicting every model that may be evicted (models in use, pinned, or loaded or used too recently stay)")]
    NoRoom { need_memory: u64, need_gpu: u64 },
}

struct Choice<'a, K> {
    index: usize,
    evict: Vec<&'a Resident<K>>,
    newest_victim: u64,
    score: f64,
    models: usize,
}

/// Plans where a model needing `need` goes. See the module docs for the rules.
pub fn plan<K: Clone>(
    replicas: &[ReplicaSnapshot<K>],
    need: Resources,
    marks: Watermarks,
) -> Result<Plan<K>, PlacementError> {
    if !replicas.iter().any(|r| r.healthy) {
        return Err(PlacementError::NoHealthyReplica);
    }
    let eligible: Vec<(usize, &ReplicaSnapshot<K>)> = replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.healthy && !r.holds_model)
        .collect();
    if eligible.is_empty() {
        return Err(PlacementError::NoOtherReplica);
    }
    let total_in_flight = eligible
        .iter()
        .fold(0u64, |a, (_, r)| a.saturating_add(r.in_flight));
    let score = |r: &ReplicaSnapshot<K>, used_after: Resources| {
        let load_share = if total_in_flight == 0 {
            0.0
        } else {
            r.in_flight as f64 / total_in_flight as f64
        };
        used_after.free_fraction(r.capacity) - load_share
    };

    let mut best: Option<Choice<'_, K>> = None;
    for (index, r) in eligible {
        let high = r.capacity.scale(marks.high);
        let low = r.capacity.scale(marks.low);
        let mut used = r.used;
        let mut evict = Vec::new();
        if !(used + need).fits_in(high) {
            let mut victims: Vec<&Resident<K>> =
                r.residents.iter().filter(|m| m.evictable).collect();
            victims.sort_by_key(|m| m.rank);
            for victim in victims {
                if (used + need).fits_in(low) {
                    break;
                }
                used = used - victim.size;
                evict.push(victim);
            }
            if !(used + need).fits_in(high) {
                continue;
            }
        }
        let candidate = Choice {
            index,
            newest_victim: evict.iter().map(|m| m.rank).max().unwrap_or(0),
            score: score(r, used + need),
            models: r.residents.len() - evict.len(),
            evict,
        };
        let better = match &best {
            None => true,
            Some(b) => {
                let key = |o: &Choice<'_, K>| (o.evict.len(), o.newest_victim);
                match key(&candidate).cmp(&key(b)) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        candidate.score > b.score
                            || (candidate.score == b.score && candidate.models < b.models)
                    }
                }
            }
        };
        if better {
            best = Some(candidate);
        }
    }
    let best = best.ok_or(PlacementError::NoRoom {
        need_memory: need.memory,
        need_gpu: need.gpu_memory,
    })?;
    let residents = replicas[best.index].residents.len();
    let evicted = best.evict.len();
    Ok(Plan {
        replica: best.index,
        evict: best.evict.into_iter().map(|m| m.key.clone()).collect(),
        mass_eviction: evicted >= 2 && evicted * 2 > residents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn mem(n: u64) -> Resources {
        Resources::new(n, 0)
    }

    fn replica(
        capacity: u64,
        residents: &[(&'static str, u64, u64, bool)],
    ) -> ReplicaSnapshot<&'static str> {
        let residents: Vec<_> = residents
            .iter()
            .map(|&(key, size, rank, evictable)| Resident {
                key,
                size: mem(size),
                evictable,
                rank,
            })
            .collect();
        ReplicaSnapshot {
            healthy: true,
            holds_model: false,
            capacity: mem(capacity),
            used: residents.iter().fold(Resources::ZERO, |a, m| a + m.size),
            in_flight: 0,
            residents,
        }
    }

    fn marks(high: f64, low: f64) -> Watermarks {
        Watermarks::new(high, low).unwrap()
    }

    #[test]
    fn prefers_the_replica_with_most_free_memory() {
        let r = [
            replica(100, &[("a", 50, 1, true)]),
            replica(100, &[("b", 10, 1, true)]),
        ];
        let p = plan(&r, mem(20), Watermarks::default()).unwrap();
        assert_eq!((p.replica, p.evict.len()), (1, 0));
    }

    #[test]
    fn load_pushes_placement_away_from_busy_replicas() {
        let mut r = [
            replica(100, &[("a", 20, 1, true)]),
            replica(100, &[("b", 10, 1, true)]),
        ];
        r[1].in_flight = 9;
        r[0].in_flight = 1;
        // r1 is 10% freer but carries 90% of the load.
        assert_eq!(plan(&r, mem(10), Watermarks::default()).unwrap().replica, 0);
    }

    #[test]
    fn evicts_least_recently_used_until_under_the_low_watermark() {
        // 80 used of 100; high 80%, low 50%: a 20 model must bring use to <= 50.
        let r = [replica(
            100,
            &[
                ("new", 20, 30, true),
                ("old", 20, 10, true),
                ("mid", 20, 20, true),
                ("x", 20, 40, true),
            ],
        )];
        let p = plan(&r, mem(20), marks(0.8, 0.5)).unwrap();
        assert_eq!(p.evict, vec!["old", "mid", "new"]);
        assert!(p.mass_eviction, "3 of 4 models");
    }

    #[test]
    fn placing_under_the_high_watermark_evicts_nothing() {
        let r = [replica(100, &[("a", 60, 1, true)])];
        let p = plan(&r, mem(20), marks(0.8, 0.5)).unwrap();
        assert!(p.evict.is_empty());
    }

    #[test]
    fn skips_models_that_may_not_be_evicted() {
        let r = [replica(
            100,
            &[("busy", 40, 1, false), ("idle", 40, 2, true)],
        )];
        let p = plan(&r, mem(40), marks(1.0, 1.0)).unwrap();
        assert_eq!(p.evict, vec!["idle"]);
        assert!(!p.mass_eviction);
    }

    #[test]
    fn fails_fast_when_only_protected_models_could_make_room() {
        let r = [replica(
            100,
            &[("pinned", 50, 1, false), ("young", 40, 2, false)],
        )];
        assert_eq!(
            plan(&r, mem(30), marks(1.0, 1.0)),
            Err(PlacementError::NoRoom {
                need_memory: 30,
                need_gpu: 0
            })
        );
    }

    #[test]
    fn a_big_model_goes_where_it_evicts_least() {
        // r0 would have to evict three small models, r1 one medium one.
        let r = [
            replica(
                100,
                &[
                    ("s1", 30, 1, true),
                    ("s2", 30, 2, true),
                    ("s3", 30, 3, true),
                ],
            ),
            replica(100, &[("m", 40, 9, true), ("keep", 50, 10, false)]),
        ];
        let p = plan(&r, mem(50), marks(1.0, 1.0)).unwrap();
        assert_eq!((p.replica, p.evict), (1, vec!["m"]));
    }

    #[test]
    fn among_equal_evictions_the_colder_victims_go() {
        let r = [
            replica(100, &[("warm", 60, 50, true)]),
            replica(100, &[("cold", 60, 5, true)]),
        ];
        let p = plan(&r, mem(60), marks(1.0, 1.0)).unwrap();
        assert_eq!((p.replica, p.evict), (1, vec!["cold"]));
    }

    #[test]
    fn accounts_gpu_memory_separately() {
        let mut gpu_full = replica(100, &[]);
        gpu_full.capacity = Resources::new(100, 10);
        gpu_full.used = Resources::new(0, 10);
        let mut host_busy = replica(100, &[("a", 70, 1, false)]);
        host_busy.capacity = Resources::new(100, 10);
        let need = Resources::new(20, 5);
        // r0 has host room but no GPU room; r1 has GPU room but 70+20 > 80 host.
        assert!(plan(
            &[gpu_full.clone(), host_busy.clone()],
            need,
            Watermarks::default()
        )
        .is_err());
        host_busy.residents[0].evictable = true;
        let p = plan(&[gpu_full, host_busy], need, Watermarks::default()).unwrap();
        assert_eq!((p.replica, p.evict), (1, vec!["a"]));
    }

    #[test]
    fn a_gpu_model_never_lands_on_a_cpu_only_replica() {
        let cpu_only = replica(100 * MI, &[]);
        let need = Resources::new(MI, MI);
        assert!(matches!(
            plan(&[cpu_only], need, Watermarks::default()),
            Err(PlacementError::NoRoom { .. })
        ));
    }

    #[test]
    fn copies_go_to_replicas_without_the_model() {
        let mut r = [replica(100, &[]), replica(100, &[("x", 10, 1, true)])];
        r[0].holds_model = true;
        assert_eq!(plan(&r, mem(10), Watermarks::default()).unwrap().replica, 1);
        r[1].holds_model = true;
        assert_eq!(
            plan(&r, mem(10), Watermarks::default()),
            Err(PlacementError::NoOtherReplica)
        );
    }

    #[test]
    fn unhealthy_replicas_take_nothing() {
        let mut r = [replica(100, &[])];
        r[0].healthy = false;
        assert_eq!(
            plan(&r, mem(1), Watermarks::default()),
            Err(PlacementError::NoHealthyReplica)
        );
        assert_eq!(
            plan::<&str>(&[], mem(1), Watermarks::default()),
            Err(PlacementError::NoHealthyReplica)
        );
    }

    #[test]
    fn validates_watermarks() {
        assert!(Watermarks::new(0.8, 0.6).is_ok());
        assert!(Watermarks::new(1.0, 1.0).is_ok());
        assert!(Watermarks::new(0.0, 0.0).is_err());
        assert!(Watermarks::new(0.5, 0.6).is_err());
        assert!(Watermarks::new(1.2, 0.6).is_err());
        assert!(Watermarks::new(f64::NAN, 0.5).is_err());
    }
}
