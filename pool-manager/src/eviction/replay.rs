//! The simplest model of one replica: a single cache with the pool's watermarks, replaying
//! a [`Workload`] under a victim order. No planner, no replica choice, no minimum age:
//! only the order differs between runs, so policies can be compared with each other and
//! with the offline bounds of [`super::offline`] on exactly the same cache.
//!
//! A request for a resident model is a hit. A miss loads the model, paying the
//! workload's load time for that request; when the model would cross the high watermark,
//! victims go in the policy's order until it fits under the low watermark (as
//! `placement::plan` does on one replica). A model larger than the high watermark fails.

use std::collections::BTreeSet;

use super::gdsf::{Gdsf, GdsfConfig};
use super::traces::Workload;
use crate::placement::{Resources, Watermarks};

/// The victim order of a replay.
#[derive(Debug, Clone, PartialEq)]
pub enum Victims {
    /// Least recently used first.
    Lru,
    /// Lowest GreedyDual-Size-Frequency priority first.
    Gdsf(GdsfConfig),
    /// Furthest next use first: needs the future, a reference only (optimal for equal
    /// sizes and one-at-a-time eviction, not otherwise).
    Belady,
}

/// One cache: its capacity and watermarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cache {
    /// Bytes.
    pub capacity: u64,
    pub marks: Watermarks,
}

impl Cache {
    /// The most the cache holds after a load: its high watermark, rounded as the planner
    /// rounds it.
    pub fn limit(&self) -> u64 {
        Resources::new(self.capacity, 0)
            .scale(self.marks.high)
            .memory
    }

    fn low(&self) -> u64 {
        Resources::new(self.capacity, 0)
            .scale(self.marks.low)
            .memory
    }
}

/// What a replay measured. `requests == hits + loads + failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    pub requests: u64,
    pub hits: u64,
    pub loads: u64,
    pub evictions: u64,
    /// Misses for models larger than the high watermark.
    pub failed: u64,
    /// Bytes of the models requested, summed over requests.
    pub requested_bytes: u128,
    /// Bytes of the models requested by hits.
    pub hit_bytes: u128,
    /// Seconds spent loading, over all loads.
    pub load_secs: f64,
}

impl Outcome {
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits as f64, self.requests as f64)
    }

    pub fn byte_hit_rate(&self) -> f64 {
        ratio(self.hit_bytes as f64, self.requested_bytes as f64)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// "Never requested again", as a next-use index.
const NEVER: u64 = u64::MAX;

/// The victim order's state during a replay; keys sort first-victim-first.
enum Order {
    Lru,
    Gdsf(Gdsf<u32>),
    Belady { next_use: Vec<u64> },
}

impl Order {
    fn new(victims: &Victims, workload: &Workload) -> Self {
        match victims {
            Victims::Lru => Order::Lru,
            Victims::Gdsf(config) => Order::Gdsf(Gdsf::new(*config)),
            Victims::Belady => Order::Belady {
                next_use: next_uses(&workload.trace.requests),
            },
        }
    }

    /// Records request `i` for `model`; returns its key if it is resident.
    fn requested(&mut self, model: u32, i: usize, now: f64) -> u64 {
        match self {
            Order::Lru => i as u64,
            Order::Gdsf(g) => {
                g.requested(&model, 1, now);
                g.rank(&model)
            }
            Order::Belady { next_use } => NEVER - next_use[i],
        }
    }

    fn loaded(&mut self, model: u32, i: usize, now: f64, size: f64, secs: f64) -> u64 {
        match self {
            Order::Gdsf(g) => {
                g.loaded(&model, size, secs, now);
                g.rank(&model)
            }
            Order::Lru | Order::Belady { .. } => self.requested(model, i, now),
        }
    }

    /// `needed`: the load needed it gone to fit under the high watermark (otherwise it
    /// is the sweep's, which does not raise GDSF's inflation).
    fn evicted(&mut self, model: u32, needed: bool) {
        match self {
            Order::Gdsf(g) if needed => g.evicted(&model),
            Order::Gdsf(g) => g.swept(&model),
            Order::Lru | Order::Belady { .. } => {}
        }
    }
}

/// For each request, the index of the next request for the same model, or [`NEVER`].
pub fn next_uses(requests: &[u32]) -> Vec<u64> {
    let models = requests.iter().map(|&m| m as usize + 1).max().unwrap_or(0);
    let mut upcoming = vec![NEVER; models];
    let mut next = vec![NEVER; requests.len()];
    for (i, &m) in requests.iter().enumerate().rev() {
        next[i] = upcoming[m as usize];
        upcoming[m as usize] = i as u64;
    }
    next
}

/// Replays `workload` on `cache`, evicting in the order of `victims`.
pub fn replay(workload: &Workload, cache: &Cache, victims: &Victims) -> Outcome {
    let sizes = &workload.trace.sizes;
    let (limit, low) = (cache.limit(), cache.low());
    let mut order = Order::new(victims, workload);
    let mut key: Vec<Option<u64>> = vec![None; sizes.len()];
    let mut resident: BTreeSet<(u64, u32)> = BTreeSet::new();
    let mut used = 0u64;
    let mut out = Outcome::default();
    for (i, &model) in workload.trace.requests.iter().enumerate() {
        let m = model as usize;
        let (size, now) = (sizes[m], workload.times.get(i).copied().unwrap_or(i as f64));
        out.requests += 1;
        out.requested_bytes += size as u128;
        let new_key = order.requested(model, i, now);
        if let Some(old) = key[m] {
            out.hits += 1;
            out.hit_bytes += size as u128;
            resident.remove(&(old, model));
            resident.insert((new_key, model));
            key[m] = Some(new_key);
            continue;
        }
        if size > limit {
            out.failed += 1;
            continue;
        }
        if used + size > limit {
            while used + size > low {
                let Some((_, victim)) = resident.pop_first() else {
                    break;
                };
                key[victim as usize] = None;
                let needed = used + size > limit;
                used -= sizes[victim as usize];
                order.evicted(victim, needed);
                out.evictions += 1;
            }
        }
        let secs = workload.load_time(i);
        let fraction = size as f64 / cache.capacity.max(1) as f64;
        let k = order.loaded(model, i, now, fraction, secs);
        resident.insert((k, model));
        key[m] = Some(k);
        used += size;
        out.loads += 1;
        out.load_secs += secs;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::traces::{Popularity, WorkloadSpec};
    use crate::sim::{simulate, Policy, SimConfig, Trace};

    fn workload(sizes: Vec<u64>, requests: Vec<u32>) -> Workload {
        let models = sizes.len();
        let mut w = WorkloadSpec {
            models,
            requests: requests.len(),
            jitter: 0.0,
            ..WorkloadSpec::default()
        }
        .generate()
        .unwrap();
        w.load_secs = sizes.iter().map(|&s| s as f64).collect();
        w.trace = Trace { sizes, requests };
        w
    }

    fn slots(n: u64, size: u64) -> Cache {
        Cache {
            capacity: n * size,
            marks: Watermarks::new(1.0, 1.0).unwrap(),
        }
    }

    #[test]
    fn lru_and_belady_on_a_cycle_one_larger_than_the_cache() {
        let w = workload(vec![10; 3], vec![0, 1, 2, 0, 1, 2]);
        let lru = replay(&w, &slots(2, 10), &Victims::Lru);
        assert_eq!((lru.hits, lru.loads, lru.evictions), (0, 6, 4));
        assert_eq!(lru.load_secs, 60.0);
        let belady = replay(&w, &slots(2, 10), &Victims::Belady);
        assert_eq!((belady.hits, belady.loads, belady.evictions), (2, 4, 2));
        assert_eq!(belady.byte_hit_rate(), 1.0 / 3.0);
    }

    #[test]
    fn gdsf_keeps_the_frequent_model_through_a_scan() {
        // Model 0 is requested between one-off models 1..=6; room for two models.
        let requests = vec![0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0];
        let w = workload(vec![10; 7], requests);
        let lru = replay(&w, &slots(2, 10), &Victims::Lru);
        let gdsf = replay(&w, &slots(2, 10), &Victims::Gdsf(GdsfConfig::default()));
        assert_eq!(lru.hits, 7);
        assert_eq!(gdsf.hits, 7, "with room for two, LRU keeps it too");
        let w = workload(vec![10; 7], vec![0, 0, 1, 2, 0, 3, 4, 0, 5, 6, 0]);
        let lru = replay(&w, &slots(2, 10), &Victims::Lru);
        let gdsf = replay(&w, &slots(2, 10), &Victims::Gdsf(GdsfConfig::default()));
        // Two one-offs in a row push model 0 out of LRU every time.
        assert_eq!((lru.hits, gdsf.hits), (1, 4));
    }

    #[test]
    fn watermarks_evict_down_to_the_low_mark_and_refuse_oversized_models() {
        // 100 bytes, high 80, low 50: four models of 20 fill to 80; the fifth evicts down
        // to 50 - 20 = 30 used, i.e. three victims.
        let w = workload(vec![20, 20, 20, 20, 20, 90], vec![0, 1, 2, 3, 4, 5]);
        let cache = Cache {
            capacity: 100,
            marks: Watermarks::new(0.8, 0.5).unwrap(),
        };
        let r = replay(&w, &cache, &Victims::Lru);
        assert_eq!((r.loads, r.evictions, r.failed), (5, 3, 1));
        assert_eq!(r.requests, r.hits + r.loads + r.failed);
    }

    #[test]
    fn lru_and_belady_match_the_simulator_on_one_replica() {
        let spec = WorkloadSpec {
            models: 300,
            requests: 20_000,
            size_min: 1 << 20,
            size_max: 64 << 20,
            popularity: Popularity::Zipf { s: 0.9 },
            ..WorkloadSpec::default()
        };
        let w = spec.generate().unwrap();
        let config = SimConfig {
            replicas: 1,
            replica_capacity: 1 << 30,
            marks: Watermarks::default(),
            min_age: 0,
        };
        let cache = Cache {
            capacity: 1 << 30,
            marks: Watermarks::default(),
        };
        let ours = replay(&w, &cache, &Victims::Lru);
        let sim = simulate(&w.trace, &config, Policy::Lru).unwrap();
        assert_eq!(
            (ours.hits, ours.loads, ours.evictions, ours.failed),
            (sim.hits, sim.loads, sim.evictions, sim.failed),
        );
        // Belady's ties (models never requested again) may break differently, which
        // changes how many go at once but not which requests hit.
        let ours = replay(&w, &cache, &Victims::Belady);
        let sim = simulate(&w.trace, &config, Policy::Belady).unwrap();
        assert_eq!((ours.hits, ours.loads), (sim.hits, sim.loads));
    }

    #[test]
    fn next_uses_point_at_the_next_request_of_the_same_model() {
        assert_eq!(next_uses(&[0, 1, 0, 2, 1]), [2, 4, NEVER, NEVER, NEVER]);
        assert!(next_uses(&[]).is_empty());
    }
}
