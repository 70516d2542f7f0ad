//! Offline references for caching with variable sizes, after Berger, Beckmann and
//! Harchol-Balter, "Practical bounds on optimal caching with variable object sizes"
//! (SIGMETRICS'18): what the best possible schedule could achieve on a trace, known in
//! hindsight, to judge how far an online policy is from the optimum.
//!
//! Caching is written as interval packing. Each request `i` whose model is requested again
//! at `next(i)` opens a *reuse interval*: keeping the model from `i` to `next(i)` makes
//! request `next(i)` a hit, saving its cost (1 for the hit rate, the load time of that
//! request for the load time paid), and occupies the model's size over the interval. The
//! cache may hold at most its capacity at every point. `x_i = 1` keeps interval `i`.
//!
//! - **FOO-L**: the linear relaxation (`0 <= x_i <= 1`). Its constraint matrix is an
//!   interval matrix, so it is a min-cost flow (one node per point on a line, a central
//!   arc of the point's capacity, one outer arc per interval whose flow is the part of the
//!   model *not* kept), solved here exactly by successive shortest paths. No schedule does
//!   better; on equal sizes it is exactly Belady. Only feasible for small traces.
//! - **FOO-U**: the intervals the flow keeps whole: a feasible schedule, so it is achieved.
//! - **PFOO-L**: sums the capacity constraints over all points (one budget of
//!   capacity × points, each interval using size × length), a fractional knapsack solved
//!   greedily by cost per resource: no schedule does better, in `O(N log N)`.
//! - **PFOO-U**: intervals taken greedily in the same order, each only if it fits at every
//!   point it spans (a segment tree of free space): a feasible schedule, in `O(N log N)`.
//!   The paper refines this greedy order with min-cost flows over slices of it; here the
//!   greedy alone is the feasible reference.
//!
//! **Admission.** The paper lets the optimum decline to cache a requested object
//! ([`Admission::Optional`]). A replica cannot serve a model it has not loaded, so for the
//! pool the requested model occupies its size at its own request
//! ([`Admission::Demand`]): the points are the requests, an interval covers the requests
//! strictly inside it, and the room at request `j` is the capacity less the size of the
//! model requested at `j`. That is the paper's problem with one more constraint per
//! request, so its bounds are at least as tight, and still bounds for the pool, whose
//! schedules all satisfy it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::replay::next_uses;
use super::traces::Workload;

/// Whether the optimum must load a requested model (the pool) or may bypass it (the
/// paper's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Demand,
    Optional,
}

/// What the optimum minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// Misses: the bound is on the hit rate.
    Misses,
    /// Load time paid.
    LoadTime,
}

/// One request as the bounds see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub model: u32,
    pub size: u64,
    /// Seconds its miss would spend loading.
    pub load_secs: f64,
}

/// A trace turned into interval packing for one cache and one objective.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Room at each point.
    room: Vec<u64>,
    intervals: Vec<Interval>,
    objective: Objective,
    requests: u64,
    /// Hits every schedule gets: intervals that span no point (demand admission).
    free_hits: f64,
    /// Load time paid if nothing but the free hits hit.
    base_load_secs: f64,
}

#[derive(Debug, Clone, Copy)]
struct Interval {
    /// The points `first..end` it spans (never empty).
    first: u32,
    end: u32,
    size: u64,
    /// Load time its hit saves.
    secs: f64,
}

/// What a schedule (or a bound on all schedules) achieves. A bound is a bound on its
/// instance's objective only: hits for [`Objective::Misses`], load time for
/// [`Objective::LoadTime`]; the other figure describes the schedule behind it, or is NaN
/// when there is none ([`dual_bound`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bound {
    /// Hits (fractional for the relaxations).
    pub hits: f64,
    /// Seconds spent loading.
    pub load_secs: f64,
    pub requests: u64,
}

impl Bound {
    pub fn hit_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.hits / self.requests as f64
        }
    }
}

/// FOO's two results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Foo {
    /// FOO-L: no schedule does better.
    pub best: Bound,
    /// FOO-U: the intervals kept whole, a feasible schedule.
    pub feasible: Bound,
}

impl Instance {
    /// The instance of `workload` on a cache of `capacity` bytes (for the pool: the high
    /// watermark of a replica).
    pub fn from_workload(
        workload: &Workload,
        capacity: u64,
        admission: Admission,
        objective: Objective,
    ) -> Self {
        let requests: Vec<Request> = (0..workload.len())
            .map(|i| {
                let model = workload.trace.requests[i];
                Request {
                    model,
                    size: workload.trace.sizes[model as usize],
                    load_secs: workload.load_time(i),
                }
            })
            .collect();
        Self::new(&requests, capacity, admission, objective)
    }

    /// The instance of `requests` (for the pool: those routed to one replica).
    pub fn new(
        requests: &[Request],
        capacity: u64,
        admission: Admission,
        objective: Objective,
    ) -> Self {
        let models: Vec<u32> = requests.iter().map(|r| r.model).collect();
        let next = next_uses(&models);
        let fits = |r: &Request| r.size <= capacity;
        let room = match admission {
            Admission::Demand => requests
                .iter()
                .map(|r| if fits(r) { capacity - r.size } else { capacity })
                .collect(),
            Admission::Optional => vec![capacity; requests.len().saturating_sub(1)],
        };
        let mut intervals = Vec::new();
        let mut free_hits = 0.0;
        let mut base_load_secs: f64 = requests
            .iter()
            .filter(|r| fits(r))
            .map(|r| r.load_secs)
            .sum();
        for (i, r) in requests.iter().enumerate() {
            let Some(&next) = next.get(i).filter(|&&n| n != u64::MAX) else {
                continue;
            };
            if !fits(r) {
                continue;
            }
            let secs = requests[next as usize].load_secs;
            let (first, end) = match admission {
                Admission::Demand => (i as u32 + 1, next as u32),
                Admission::Optional => (i as u32, next as u32),
            };
            if first == end {
                free_hits += 1.0;
                base_load_secs -= secs;
                continue;
            }
            intervals.push(Interval {
                first,
                end,
                size: r.size,
                secs,
            });
        }
        Self {
            room,
            intervals,
            objective,
            requests: requests.len() as u64,
            free_hits,
            base_load_secs,
        }
    }

    /// Reuse intervals that compete for room.
    pub fn intervals(&self) -> usize {
        self.intervals.len()
    }

    fn weight(&self, interval: &Interval) -> f64 {
        match self.objective {
            Objective::Misses => 1.0,
            Objective::LoadTime => interval.secs,
        }
    }

    /// The bound of keeping `kept[i]` of each interval.
    fn bound(&self, kept: impl Iterator<Item = f64>) -> Bound {
        let (hits, saved) = kept
            .zip(&self.intervals)
            .fold((0.0, 0.0), |(h, s), (x, iv)| (h + x, s + x * iv.secs));
        Bound {
            hits: self.free_hits + hits,
            load_secs: (self.base_load_secs - saved).max(0.0),
            requests: self.requests,
        }
    }

    /// Intervals in order of decreasing value per byte-point: the order of both PFOO
    /// bounds.
    fn by_utility(&self) -> Vec<usize> {
        let utility = |iv: &Interval| {
            self.weight(iv) / (iv.size as f64 * f64::from(iv.end - iv.first)).max(f64::MIN_POSITIVE)
        };
        let mut order: Vec<usize> = (0..self.intervals.len()).collect();
        order.sort_by(|&a, &b| utility(&self.intervals[b]).total_cmp(&utility(&self.intervals[a])));
        order
    }
}

/// PFOO-L: no schedule has more hits (or pays less load time, for
/// [`Objective::LoadTime`]) on this instance.
pub fn pfoo_l(instance: &Instance) -> Bound {
    let mut budget: f64 = instance.room.iter().map(|&r| r as f64).sum();
    let mut kept = vec![0.0; instance.intervals.len()];
    for i in instance.by_utility() {
        let iv = &instance.intervals[i];
        let need = iv.size as f64 * f64::from(iv.end - iv.first);
        if budget <= 0.0 {
            break;
        }
        kept[i] = (budget / need).min(1.0);
        budget -= need;
    }
    instance.bound(kept.into_iter())
}

/// PFOO-U (greedy): a feasible schedule, so the optimum does at least as well.
pub fn pfoo_u(instance: &Instance) -> Bound {
    let mut free = MinTree::new(&instance.room);
    let mut kept = vec![0.0; instance.intervals.len()];
    for i in instance.by_utility() {
        let iv = &instance.intervals[i];
        let (first, end) = (iv.first as usize, iv.end as usize);
        if free.min(first, end) >= iv.size as i64 {
            free.add(first, end, -(iv.size as i64));
            kept[i] = 1.0;
        }
    }
    instance.bound(kept.into_iter())
}

/// A dual bound on FOO-L for traces too long for [`foo`]: no schedule does better.
///
/// Any non-negative price `y_k` on the room at each point bounds the relaxation from
/// above (weak duality): `sum_k room_k * y_k + sum_i max(0, w_i - size_i * sum_{k in i} y_k)`.
/// One uniform price is PFOO-L. Here every point has its own price, started at PFOO-L's
/// and improved by `rounds` projected subgradient steps (Polyak step sizes towards the
/// PFOO-U value), keeping the best bound seen: never looser than PFOO-L, and on traces
/// small enough for [`foo`], 100 rounds land within about 1% of FOO-L. `O(rounds * N)`.
pub fn dual_bound(instance: &Instance, rounds: usize) -> Bound {
    let points = instance.room.len();
    let room: Vec<f64> = instance.room.iter().map(|&r| r as f64).collect();
    let floor = value_of(instance, &pfoo_u(instance));
    let mut prices = vec![pfoo_price(instance); points];
    let mut best = f64::INFINITY;
    let mut step = 1.0;
    let mut prefix = vec![0.0; points + 1];
    let mut used = vec![0.0; points + 1];
    for _ in 0..rounds.max(1) {
        for k in 0..points {
            prefix[k + 1] = prefix[k] + prices[k];
        }
        used.fill(0.0);
        let mut bound: f64 = room.iter().zip(&prices).map(|(r, y)| r * y).sum();
        for iv in &instance.intervals {
            let (first, end) = (iv.first as usize, iv.end as usize);
            let profit = instance.weight(iv) - iv.size as f64 * (prefix[end] - prefix[first]);
            if profit > 0.0 {
                bound += profit;
                used[first] += iv.size as f64;
                used[end] -= iv.size as f64;
            }
        }
        if bound < best {
            best = bound;
        } else {
            step *= 0.95;
        }
        // The subgradient: room left at each point by the intervals worth their rent.
        let mut load = 0.0;
        let slack: Vec<f64> = room
            .iter()
            .zip(&used)
            .map(|(r, u)| {
                load += u;
                r - load
            })
            .collect();
        let norm: f64 = slack.iter().map(|g| g * g).sum();
        if norm == 0.0 || bound <= floor {
            break;
        }
        let t = step * (bound - floor) / norm;
        for (y, g) in prices.iter_mut().zip(&slack) {
            *y = (*y - t * g).max(0.0);
        }
    }
    let mut out = Bound {
        hits: f64::NAN,
        load_secs: f64::NAN,
        requests: instance.requests,
    };
    match instance.objective {
        Objective::Misses => out.hits = instance.free_hits + best,
        Objective::LoadTime => out.load_secs = (instance.base_load_secs - best).max(0.0),
    }
    out
}

/// The objective value of a bound: hits that need room, or load time saved by them.
fn value_of(instance: &Instance, b: &Bound) -> f64 {
    match instance.objective {
        Objective::Misses => b.hits - instance.free_hits,
        Objective::LoadTime => instance.base_load_secs - b.load_secs,
    }
}

/// PFOO-L's price of room: the utility of the interval where the knapsack runs out.
fn pfoo_price(instance: &Instance) -> f64 {
    let mut budget: f64 = instance.room.iter().map(|&r| r as f64).sum();
    for i in instance.by_utility() {
        let iv = &instance.intervals[i];
        let need = iv.size as f64 * f64::from(iv.end - iv.first);
        budget -= need;
        if budget < 0.0 {
            return instance.weight(iv) / need;
        }
    }
    0.0
}

/// FOO-L and FOO-U by an exact min-cost flow. Successive shortest paths: fine for a few
/// thousand requests, far too slow for full traces (use the PFOO bounds there).
pub fn foo(instance: &Instance) -> Foo {
    let points = instance.room.len();
    // Nodes 0..=points are the boundaries between points; then a source and a sink.
    let (source, sink) = (points + 1, points + 2);
    let mut g = FlowGraph::new(points + 3);
    for (k, &room) in instance.room.iter().enumerate() {
        g.add(k, k + 1, room as i64, 0.0);
    }
    let outer: Vec<usize> = instance
        .intervals
        .iter()
        .map(|iv| {
            let (from, to, size) = (iv.first as usize, iv.end as usize, iv.size as i64);
            g.add(source, from, size, 0.0);
            g.add(to, sink, size, 0.0);
            g.add(from, to, size, instance.weight(iv) / iv.size as f64)
        })
        .collect();
    g.route_all(source, sink);
    let kept: Vec<f64> = outer
        .iter()
        .zip(&instance.intervals)
        .map(|(&arc, iv)| 1.0 - g.flow(arc) as f64 / iv.size as f64)
        .collect();
    Foo {
        best: instance.bound(kept.iter().copied()),
        feasible: instance.bound(kept.iter().map(|&x| if x >= 1.0 { 1.0 } else { 0.0 })),
    }
}

/// A residual graph for min-cost flow; arc `2k` and its reverse `2k + 1`.
struct FlowGraph {
    adjacency: Vec<Vec<usize>>,
    to: Vec<usize>,
    residual: Vec<i64>,
    cost: Vec<f64>,
}

impl FlowGraph {
    fn new(nodes: usize) -> Self {
        Self {
            adjacency: vec![Vec::new(); nodes],
            to: Vec::new(),
            residual: Vec::new(),
            cost: Vec::new(),
        }
    }

    /// Adds an arc and returns its id.
    fn add(&mut self, from: usize, to: usize, capacity: i64, cost: f64) -> usize {
        let id = self.to.len();
        self.adjacency[from].push(id);
        self.adjacency[to].push(id + 1);
        self.to.extend([to, from]);
        self.residual.extend([capacity, 0]);
        self.cost.extend([cost, -cost]);
        id
    }

    /// Flow on arc `id`: what its reverse holds.
    fn flow(&self, id: usize) -> i64 {
        self.residual[id ^ 1]
    }

    /// Sends as much flow as possible from `source` to `sink` at least cost: successive
    /// shortest paths, Dijkstra on reduced costs (all arc costs start non-negative, so zero
    /// potentials are valid). Each search stops when the sink is settled; raising every
    /// potential by `min(distance, sink distance)` keeps reduced costs non-negative.
    fn route_all(&mut self, source: usize, sink: usize) {
        let n = self.adjacency.len();
        let mut potential = vec![0.0; n];
        let mut dist = vec![f64::INFINITY; n];
        let mut via = vec![usize::MAX; n];
        let mut touched = Vec::new();
        loop {
            for &v in &touched {
                dist[v] = f64::INFINITY;
                via[v] = usize::MAX;
            }
            touched.clear();
            dist[source] = 0.0;
            touched.push(source);
            let mut heap = BinaryHeap::from([Visit(0.0, source)]);
            while let Some(Visit(d, u)) = heap.pop() {
                if d > dist[u] {
                    continue;
                }
                if u == sink {
                    break;
                }
                for &arc in &self.adjacency[u] {
                    let v = self.to[arc];
                    if self.residual[arc] <= 0 {
                        continue;
                    }
                    // Rounding can leave a reduced cost a hair below zero.
                    let reduced = (self.cost[arc] + potential[u] - potential[v]).max(0.0);
                    if d + reduced < dist[v] {
                        if dist[v].is_infinite() {
                            touched.push(v);
                        }
                        dist[v] = d + reduced;
                        via[v] = arc;
                        heap.push(Visit(dist[v], v));
                    }
                }
            }
            let reach = dist[sink];
            if reach.is_infinite() {
                return;
            }
            // Nodes not reached rise by the sink's distance, the others by their own.
            for p in potential.iter_mut() {
                *p += reach;
            }
            for &v in &touched {
                potential[v] -= reach - dist[v].min(reach);
            }
            self.augment(source, sink, &via);
        }
    }

    /// Pushes the bottleneck along the path `via` leads back from `sink` to `source`.
    fn augment(&mut self, source: usize, sink: usize, via: &[usize]) {
        let mut push = i64::MAX;
        let mut v = sink;
        while v != source {
            let arc = via[v];
            push = push.min(self.residual[arc]);
            v = self.to[arc ^ 1];
        }
        let mut v = sink;
        while v != source {
            let arc = via[v];
            self.residual[arc] -= push;
            self.residual[arc ^ 1] += push;
            v = self.to[arc ^ 1];
        }
    }
}

/// A heap entry ordered by smallest distance first.
#[derive(PartialEq)]
struct Visit(f64, usize);

impl Eq for Visit {}

impl Ord for Visit {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.total_cmp(&self.0).then(other.1.cmp(&self.1))
    }
}

impl PartialOrd for Visit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Range add and range minimum over `i64`s, both in `O(log n)`.
struct MinTree {
    n: usize,
    min: Vec<i64>,
    pending: Vec<i64>,
}

impl MinTree {
    fn new(values: &[u64]) -> Self {
        let n = values.len().max(1);
        let mut tree = Self {
            n,
            min: vec![0; 4 * n],
            pending: vec![0; 4 * n],
        };
        tree.build(1, 0, n, values);
        tree
    }

    fn build(&mut self, node: usize, lo: usize, hi: usize, values: &[u64]) {
        if hi - lo == 1 {
            self.min[node] = values.get(lo).map_or(0, |&v| v as i64);
            return;
        }
        let mid = (lo + hi) / 2;
        self.build(2 * node, lo, mid, values);
        self.build(2 * node + 1, mid, hi, values);
        self.min[node] = self.min[2 * node].min(self.min[2 * node + 1]);
    }

    /// The minimum over `first..end` (`i64::MAX` for an empty range).
    fn min(&self, first: usize, end: usize) -> i64 {
        self.query(1, 0, self.n, first, end)
    }

    fn query(&self, node: usize, lo: usize, hi: usize, first: usize, end: usize) -> i64 {
        if end <= lo || hi <= first {
            return i64::MAX;
        }
        if first <= lo && hi <= end {
            return self.min[node];
        }
        let mid = (lo + hi) / 2;
        let below = self.query(2 * node, lo, mid, first, end).min(self.query(
            2 * node + 1,
            mid,
            hi,
            first,
            end,
        ));
        below.saturating_add(self.pending[node])
    }

    /// Adds `delta` to every value in `first..end`.
    fn add(&mut self, first: usize, end: usize, delta: i64) {
        self.update(1, 0, self.n, first, end, delta);
    }

    fn update(&mut self, node: usize, lo: usize, hi: usize, first: usize, end: usize, delta: i64) {
        if end <= lo || hi <= first {
            return;
        }
        if first <= lo && hi <= end {
            self.min[node] += delta;
            self.pending[node] += delta;
            return;
        }
        let mid = (lo + hi) / 2;
        self.update(2 * node, lo, mid, first, end, delta);
        self.update(2 * node + 1, mid, hi, first, end, delta);
        self.min[node] = self.min[2 * node].min(self.min[2 * node + 1]) + self.pending[node];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eviction::replay::{replay, Cache, Victims};
    use crate::eviction::traces::WorkloadSpec;
    use crate::placement::Watermarks;
    use crate::sim::Trace;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Requests for `models` (with `sizes` and `secs` per model).
    fn requests(models: &[u32], sizes: &[u64], secs: &[f64]) -> Vec<Request> {
        models
            .iter()
            .map(|&m| Request {
                model: m,
                size: sizes[m as usize],
                load_secs: secs[m as usize],
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    /// The optimum by brute force: every subset of intervals that fits at every point.
    fn brute_force(instance: &Instance) -> f64 {
        let n = instance.intervals.len();
        assert!(n <= 16, "{n} intervals is too many to enumerate");
        let mut best = f64::NEG_INFINITY;
        for mask in 0u32..1 << n {
            let mut used = vec![0u64; instance.room.len()];
            let mut value = 0.0;
            for (i, iv) in instance.intervals.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    value += instance.weight(iv);
                    for u in &mut used[iv.first as usize..iv.end as usize] {
                        *u += iv.size;
                    }
                }
            }
            if used.iter().zip(&instance.room).all(|(u, r)| u <= r) {
                best = best.max(value);
            }
        }
        best
    }

    #[test]
    fn a_cycle_one_larger_than_the_cache() {
        // A B C A B C, room for two: the optimum keeps A and C (Belady's two hits).
        let r = requests(&[0, 1, 2, 0, 1, 2], &[10; 3], &[1.0; 3]);
        for admission in [Admission::Demand, Admission::Optional] {
            let inst = Instance::new(&r, 20, admission, Objective::Misses);
            let f = foo(&inst);
            assert!(close(f.best.hits, 2.0) && close(f.feasible.hits, 2.0));
            assert_eq!(pfoo_u(&inst).hits, 2.0);
            // The aggregate budget fits all three intervals: PFOO-L is loose here.
            assert!(close(pfoo_l(&inst).hits, 3.0), "{admission:?}");
            assert!(close(f.best.load_secs, 4.0), "6 loads less 2 hits");
        }
    }

    #[test]
    fn sizes_make_the_relaxation_fractional() {
        // Room for 3; A (size 2) at 0 and 2, B (size 2) at 1 and 3, with bypass: both
        // intervals span gap 1, where only one fits, but the relaxation keeps 1.5.
        let r = requests(&[0, 1, 0, 1], &[2, 2], &[10.0, 1.0]);
        let inst = Instance::new(&r, 3, Admission::Optional, Objective::Misses);
        let f = foo(&inst);
        assert!(close(f.best.hits, 1.5), "{f:?}");
        assert!(f.feasible.hits <= 1.0);
        assert_eq!(pfoo_u(&inst).hits, 1.0);
        assert!(close(pfoo_l(&inst).hits, 2.0));
        assert_eq!(brute_force(&inst), 1.0);
        // By load time, A's hit is worth 10 s and B's 1 s: keep all of A, half of B.
        let inst = Instance::new(&r, 3, Admission::Optional, Objective::LoadTime);
        let f = foo(&inst);
        assert!(close(f.best.load_secs, 22.0 - 10.5), "{f:?}");
        assert!(close(f.feasible.load_secs, 12.0));
        assert!(close(pfoo_u(&inst).load_secs, 12.0));
        // Demand admission: at request 1, B occupies 2 of 3, so A (2) cannot stay, nor B
        // at request 2; the relaxation still keeps half of each.
        let inst = Instance::new(&r, 3, Admission::Demand, Objective::Misses);
        let f = foo(&inst);
        assert!(close(f.best.hits, 1.0) && f.feasible.hits == 0.0, "{f:?}");
        assert_eq!(brute_force(&inst), 0.0);
    }

    #[test]
    fn back_to_back_requests_hit_for_free_under_demand_admission() {
        let r = requests(&[0, 0, 1, 1, 0], &[5, 5], &[2.0, 3.0]);
        let inst = Instance::new(&r, 5, Admission::Demand, Objective::Misses);
        assert_eq!((inst.intervals(), inst.free_hits), (1, 2.0));
        for b in [
            foo(&inst).best,
            foo(&inst).feasible,
            pfoo_l(&inst),
            pfoo_u(&inst),
        ] {
            assert_eq!((b.hits, b.load_secs, b.requests), (2.0, 7.0, 5));
        }
    }

    #[test]
    fn oversized_models_never_hit_and_pay_nothing() {
        let r = requests(&[0, 0, 1], &[50, 5], &[2.0, 3.0]);
        let inst = Instance::new(&r, 10, Admission::Demand, Objective::Misses);
        assert_eq!(inst.intervals(), 0);
        assert_eq!(
            pfoo_l(&inst),
            Bound {
                hits: 0.0,
                load_secs: 3.0,
                requests: 3
            }
        );
    }

    /// A random instance of `n` requests over `models` models.
    fn random_requests(rng: &mut StdRng, n: usize, models: u32) -> Vec<Request> {
        let sizes: Vec<u64> = (0..models).map(|_| rng.random_range(1..=6)).collect();
        let secs: Vec<f64> = (0..models).map(|_| rng.random_range(0.1..5.0)).collect();
        let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..models)).collect();
        requests(&ids, &sizes, &secs)
    }

    #[test]
    fn on_tiny_traces_the_bounds_bracket_the_brute_force_optimum() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut checked = 0;
        while checked < 150 {
            let (n, models) = (rng.random_range(4..12), rng.random_range(2..5));
            let r = random_requests(&mut rng, n, models);
            let capacity = rng.random_range(4..12);
            for admission in [Admission::Demand, Admission::Optional] {
                for objective in [Objective::Misses, Objective::LoadTime] {
                    let inst = Instance::new(&r, capacity, admission, objective);
                    if inst.intervals() > 14 {
                        continue;
                    }
                    let opt = brute_force(&inst);
                    let f = foo(&inst);
                    let (best, feasible) = (value_of(&inst, &f.best), value_of(&inst, &f.feasible));
                    let (upper, lower) = (
                        value_of(&inst, &pfoo_l(&inst)),
                        value_of(&inst, &pfoo_u(&inst)),
                    );
                    let ctx = format!("{r:?} {capacity} {admission:?} {objective:?}");
                    assert!(feasible <= opt + 1e-6 && opt <= best + 1e-6, "{ctx}");
                    assert!(lower <= opt + 1e-6 && best <= upper + 1e-6, "{ctx}");
                    checked += 1;
                }
            }
        }
    }

    #[test]
    fn on_small_traces_foo_lies_between_the_pfoo_bounds() {
        let mut rng = StdRng::seed_from_u64(17);
        for _ in 0..6 {
            let r = random_requests(&mut rng, 150, 25);
            let capacity = rng.random_range(8..40);
            for admission in [Admission::Demand, Admission::Optional] {
                for objective in [Objective::Misses, Objective::LoadTime] {
                    let inst = Instance::new(&r, capacity, admission, objective);
                    let f = foo(&inst);
                    let v = |b: &Bound| value_of(&inst, b);
                    let ctx = format!("{capacity} {admission:?} {objective:?}");
                    assert!(v(&f.feasible) <= v(&f.best) + 1e-6, "{ctx}");
                    assert!(v(&pfoo_u(&inst)) <= v(&f.best) + 1e-6, "{ctx}");
                    let dual = v(&dual_bound(&inst, 50));
                    assert!(v(&f.best) <= dual + 1e-6, "{ctx}");
                    assert!(dual <= v(&pfoo_l(&inst)) + 1e-6, "{ctx}");
                }
            }
        }
    }

    /// A workload of the given trace, loads of 1 s per byte, no jitter.
    fn workload(sizes: Vec<u64>, requests: Vec<u32>) -> Workload {
        let mut w = WorkloadSpec {
            models: sizes.len(),
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

    #[test]
    fn the_dual_bound_is_close_to_foo_and_far_tighter_than_pfoo_l() {
        let w = WorkloadSpec {
            models: 50,
            requests: 500,
            ..WorkloadSpec::default()
        }
        .generate()
        .unwrap();
        for objective in [Objective::Misses, Objective::LoadTime] {
            let inst = Instance::from_workload(&w, 1 << 30, Admission::Demand, objective);
            let v = |b: &Bound| value_of(&inst, b);
            let (exact, dual, loose) = (
                v(&foo(&inst).best),
                v(&dual_bound(&inst, 100)),
                v(&pfoo_l(&inst)),
            );
            assert!(exact <= dual + 1e-6, "{objective:?}");
            assert!(
                dual <= exact * 1.03,
                "{objective:?}: {dual} vs FOO-L {exact}"
            );
            assert!(
                loose > exact * 1.05,
                "{objective:?}: PFOO-L {loose} vs FOO-L {exact}"
            );
        }
    }

    #[test]
    fn with_equal_sizes_foo_is_belady() {
        let mut rng = StdRng::seed_from_u64(3);
        for slots in [2u64, 5, 9] {
            let ids: Vec<u32> = (0..600).map(|_| rng.random_range(0..20)).collect();
            let w = workload(vec![7; 20], ids);
            let cache = Cache {
                capacity: 7 * slots,
                marks: Watermarks::new(1.0, 1.0).unwrap(),
            };
            let belady = replay(&w, &cache, &Victims::Belady);
            let inst = Instance::from_workload(&w, 7 * slots, Admission::Demand, Objective::Misses);
            let f = foo(&inst);
            assert!(
                close(f.best.hits, belady.hits as f64),
                "{slots}: {f:?} {belady:?}"
            );
            assert!(close(f.feasible.hits, belady.hits as f64));
            assert!(pfoo_u(&inst).hits <= belady.hits as f64);
            assert!(pfoo_l(&inst).hits >= belady.hits as f64);
        }
    }

    #[test]
    fn no_online_policy_beats_the_upper_bounds() {
        let spec = WorkloadSpec {
            models: 40,
            requests: 600,
            size_min: 1 << 20,
            size_max: 64 << 20,
            ..WorkloadSpec::default()
        };
        let w = spec.generate().unwrap();
        let capacity = 256 << 20;
        let cache = Cache {
            capacity,
            marks: Watermarks::new(1.0, 1.0).unwrap(),
        };
        let hits = Instance::from_workload(&w, capacity, Admission::Demand, Objective::Misses);
        let time = Instance::from_workload(&w, capacity, Admission::Demand, Objective::LoadTime);
        let (foo_hits, foo_time) = (foo(&hits), foo(&time));
        for victims in [
            Victims::Lru,
            Victims::Belady,
            Victims::Gdsf(crate::eviction::GdsfConfig::default()),
        ] {
            let r = replay(&w, &cache, &victims);
            assert!(r.hits as f64 <= foo_hits.best.hits + 1e-6, "{victims:?}");
            assert!(r.load_secs >= foo_time.best.load_secs - 1e-6, "{victims:?}");
            assert!(r.hits as f64 <= pfoo_l(&hits).hits + 1e-6);
        }
    }
}

/// The bounds against the exact optimum of the pool's own problem, found by exhaustive
/// search over every schedule on tiny traces: the check that the bounds' formulation
/// (demand admission, the summed high watermarks) bounds what the pool can do, made
/// without that formulation.
#[cfg(test)]
mod against_the_pool {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::placement::{Resources, Watermarks};
    use crate::sim::{simulate_loads, Policy, SimConfig, Trace};

    /// The pool's rules as the search applies them.
    #[derive(Debug, Clone, Copy)]
    struct Rules {
        replicas: usize,
        /// Bytes a replica may hold after a load (its high watermark).
        high: u64,
        /// With the sweep: a load that does not fit under `high` evicts down to this.
        low: Option<u64>,
    }

    /// The best total value of any schedule from request `i` on, with model `m` on
    /// replica `at[m] - 1` (0: nowhere). Every request is served from a loaded copy: a
    /// miss loads the model on a replica where it fits after evicting copies there.
    struct Search<'a> {
        requests: &'a [Request],
        sizes: Vec<u64>,
        rules: Rules,
        objective: Objective,
        memo: HashMap<(usize, Vec<u8>), f64>,
    }

    impl Search<'_> {
        fn best(&mut self, i: usize, at: Vec<u8>) -> f64 {
            let Some(r) = self.requests.get(i) else {
                return 0.0;
            };
            if let Some(&v) = self.memo.get(&(i, at.clone())) {
                return v;
            }
            let m = r.model as usize;
            let value = if at[m] != 0 {
                let hit = match self.objective {
                    Objective::Misses => 1.0,
                    Objective::LoadTime => r.load_secs,
                };
                hit + self.best(i + 1, at.clone())
            } else {
                let mut best = f64::NEG_INFINITY;
                for replica in 1..=self.rules.replicas as u8 {
                    for next in self.loads(&at, m, replica) {
                        best = best.max(self.best(i + 1, next));
                    }
                }
                // No replica can take it: the request fails (the sizes here always fit).
                if best == f64::NEG_INFINITY {
                    self.best(i + 1, at.clone())
                } else {
                    best
                }
            };
            self.memo.insert((i, at), value);
            value
        }

        /// Every state after loading `m` on `replica` under the rules.
        fn loads(&self, at: &[u8], m: usize, replica: u8) -> Vec<Vec<u8>> {
            let on: Vec<usize> = (0..at.len()).filter(|&k| at[k] == replica).collect();
            let used: u64 = on.iter().map(|&k| self.sizes[k]).sum();
            let need = self.sizes[m];
            let mut out = Vec::new();
            for mask in 0u32..1 << on.len() {
                let gone: Vec<usize> = (0..on.len()).filter(|b| mask & (1 << b) != 0).collect();
                let freed: u64 = gone.iter().map(|&b| self.sizes[on[b]]).sum();
                let after = used - freed + need;
                let allowed = match self.rules.low {
                    _ if after > self.rules.high => false,
                    // Without the sweep any victims that make room will do.
                    None => true,
                    // With it: nothing when the model fits, else the victims taken in
                    // some order until the low watermark is reached, or all of them.
                    Some(low) => {
                        if used + need <= self.rules.high {
                            gone.is_empty()
                        } else {
                            let last_needed = gone.iter().any(|&b| after + self.sizes[on[b]] > low);
                            (after <= low && last_needed) || gone.len() == on.len()
                        }
                    }
                };
                if allowed {
                    let mut next = at.to_vec();
                    for &b in &gone {
                        next[on[b]] = 0;
                    }
                    next[m] = replica;
                    out.push(next);
                }
            }
            out
        }
    }

    /// The pool optimum: hits, or the load time paid.
    fn optimum(requests: &[Request], sizes: &[u64], rules: Rules, objective: Objective) -> f64 {
        let mut search = Search {
            requests,
            sizes: sizes.to_vec(),
            rules,
            objective,
            memo: HashMap::new(),
        };
        let value = search.best(0, vec![0; sizes.len()]);
        match objective {
            Objective::Misses => value,
            Objective::LoadTime => requests.iter().map(|r| r.load_secs).sum::<f64>() - value,
        }
    }

    /// A tiny pool and trace: (capacity, high, low, replicas, sizes, secs, requests).
    fn tiny() -> impl Strategy<Value = (u64, f64, f64, usize, Vec<u64>, Vec<f64>, Vec<u32>)> {
        (
            5u64..16,
            prop_oneof![Just(1.0), Just(0.8)],
            1usize..=2,
            2usize..=5,
        )
            .prop_flat_map(|(capacity, high, replicas, models)| {
                let limit = Resources::new(capacity, 0).scale(high).memory.max(1);
                (
                    Just(capacity),
                    Just(high),
                    prop_oneof![Just(high), Just(0.5)],
                    Just(replicas),
                    proptest::collection::vec(1..=limit, models),
                    proptest::collection::vec(0.1f64..5.0, models),
                    proptest::collection::vec(0..models as u32, 3..11),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// simulated pool (any order) <= optimum with the sweep <= optimum without it
        /// <= FOO-L <= the dual bound <= PFOO-L, for hits; the reverse for load time.
        #[test]
        fn no_pool_schedule_beats_the_bounds(
            (capacity, high, low, replicas, sizes, secs, ids) in tiny()
        ) {
            let marks = Watermarks::new(high, low.min(high)).unwrap();
            let cap = Resources::new(capacity, 0);
            let high_bytes = cap.scale(marks.high).memory;
            let rules = Rules { replicas, high: high_bytes, low: Some(cap.scale(marks.low).memory) };
            let free = Rules { low: None, ..rules };
            let reqs: Vec<Request> = ids.iter().map(|&m| Request {
                model: m,
                size: sizes[m as usize],
                load_secs: secs[m as usize],
            }).collect();
            let total = high_bytes * replicas as u64;
            let trace = Trace { sizes: sizes.clone(), requests: ids.clone() };
            let per_request: Vec<f64> = reqs.iter().map(|r| r.load_secs).collect();
            let config = SimConfig { replicas, replica_capacity: capacity, marks, min_age: 0 };
            for objective in [Objective::Misses, Objective::LoadTime] {
                let inst = Instance::new(&reqs, total, Admission::Demand, objective);
                let (swept, unswept) = (
                    optimum(&reqs, &sizes, rules, objective),
                    optimum(&reqs, &sizes, free, objective),
                );
                let f = foo(&inst);
                let ctx = format!("{objective:?} swept {swept} free {unswept} foo {f:?}");
                match objective {
                    Objective::Misses => {
                        prop_assert!(swept <= unswept + 1e-9, "{}", ctx);
                        prop_assert!(unswept <= f.best.hits + 1e-6, "{}", ctx);
                        prop_assert!(f.best.hits <= dual_bound(&inst, 30).hits + 1e-6, "{}", ctx);
                        prop_assert!(f.best.hits <= pfoo_l(&inst).hits + 1e-6, "{}", ctx);
                        for policy in Policy::ALL {
                            let sim = simulate_loads(&trace, &per_request, &config, policy).unwrap();
                            prop_assert!(sim.hits as f64 <= swept + 1e-9, "{:?} {:?} {}", policy, sim, ctx);
                        }
                    }
                    Objective::LoadTime => {
                        prop_assert!(swept + 1e-9 >= unswept, "{}", ctx);
                        prop_assert!(unswept + 1e-6 >= f.best.load_secs, "{}", ctx);
                        prop_assert!(f.best.load_secs + 1e-6 >= dual_bound(&inst, 30).load_secs, "{}", ctx);
                        prop_assert!(f.best.load_secs + 1e-6 >= pfoo_l(&inst).load_secs, "{}", ctx);
                        for policy in Policy::ALL {
                            let sim = simulate_loads(&trace, &per_request, &config, policy).unwrap();
                            prop_assert!(sim.load_secs + 1e-9 >= swept, "{:?} {:?} {}", policy, sim, ctx);
                        }
                    }
                }
            }
        }
    }
}
