//! Placement and eviction planning. Pure: it decides from a [`Snapshot`] and knows nothing
//! of I/O, clocks or locks. The live pool and the trace simulator ([`crate::sim`]) build
//! their snapshots with the same function (the pool's `snapshot`) and plan with the same
//! [`plan`], so the simulator's figures describe the rules that run in production.
//!
//! A plan is made in three steps, each a function with a written contract (the shape of the
//! scheduler of gateway-api-inference-extension: filter, score, pick):
//! 1. [`filter`]: the replicas that may take a copy at all (healthy, not draining, not
//!    holding the model already, large enough to hold it under their high watermark).
//! 2. [`score`]: for one replica, the cheapest way to fit the model there. If it fits
//!    without crossing the high watermark (in host and GPU memory both), nothing is evicted.
//!    Otherwise copies are taken as victims in the [`VictimOrder`] (least recently used
//!    first for [`Lru`], the live policy) until the model fits under the low watermark, or
//!    the victims run out; the fit exists if the model then fits under the high watermark.
//!    Its score is the fraction of memory left free after placing (the tighter dimension)
//!    minus the replica's share of the requests in flight, so full and busy replicas are
//!    both avoided.
//! 3. [`pick`]: the best fit: fewest victims, then the one whose newest victim is oldest in
//!    the victim order, then the highest score, then fewest models, then configuration
//!    order. So a replica with room always beats one that needs evictions, and one big
//!    model empties a replica only when no replica can take it for less.
//!
//! [`plan`] runs score and pick twice. First only copies that may go now are victims: a
//! fit is a [`Decision::Place`]. Otherwise every copy that is not pinned counts: a fit
//! means room will come once copies that are busy right now (requests in flight, used
//! within the minimum age, another operation under way) are free, a [`Decision::Wait`]
//! naming them; no fit means the model cannot be placed whatever happens to the traffic,
//! a [`Decision::Refuse`].
//!
//! The victim order is the one step an eviction policy changes: a [`VictimOrder`] maps a
//! resident copy to a key, lower keys go first. The simulator's Belady order is another.

use std::ops::{Add, Sub};
use std::time::Duration;

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

/// Why a copy may not be evicted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    /// One of a pinned model's last `minCopies` copies: never evicted, waiting does not help.
    Pinned,
    /// Loading, unloading, being deleted, or another operation on the model is under way:
    /// free again when that ends.
    Busy,
    /// Requests are in flight on the copy: evictable once the gateway reports them done.
    InFlight,
    /// Loaded or used within the minimum age: evictable after `left`.
    Young { left: Duration },
}

impl Blocker {
    /// Whether waiting can never lift it.
    pub fn is_permanent(self) -> bool {
        self == Blocker::Pinned
    }
}

/// A copy on a replica, as eviction sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resident<K> {
    pub key: K,
    pub size: Resources,
    /// When the copy was last used or loaded, in any monotonic unit (the LRU key).
    pub last_use: u64,
    /// What keeps it, if anything: `None` means it may be evicted now.
    pub blocker: Option<Blocker>,
}

/// Whether a replica may take a new copy at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Open,
    /// Failed its probes: takes nothing.
    Unhealthy,
    /// Being emptied for maintenance: takes nothing.
    Draining,
    /// Already holds (or is loading) the model: a copy must go elsewhere.
    HoldsModel,
}

/// One replica as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSnapshot<K> {
    pub standing: Standing,
    pub capacity: Resources,
    /// What its copies take, in every state (an unloading copy still holds its memory).
    pub used: Resources,
    /// Requests in flight on the replica (its load).
    pub in_flight: u64,
    /// How many copies it holds.
    pub models: usize,
    /// Its copies, least recently used first. Only needed, and only filled by the
    /// snapshot, when no open replica can take the model without evicting (see
    /// [`needs_residents`]); the planner reads them for nothing else.
    pub residents: Vec<Resident<K>>,
}

/// Everything a plan is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<K> {
    /// What one copy of the model takes.
    pub need: Resources,
    pub marks: Watermarks,
    /// Every replica, in configuration order.
    pub replicas: Vec<ReplicaSnapshot<K>>,
}

/// The victim order: lower keys are evicted first. The one step an eviction policy changes.
pub trait VictimOrder<K> {
    fn key(&self, resident: &Resident<K>) -> u64;
}

/// Least recently used (or loaded) first: the live pool's policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lru;

impl<K> VictimOrder<K> for Lru {
    fn key(&self, resident: &Resident<K>) -> u64 {
        resident.last_use
    }
}

/// Where to put a model and what to evict for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K> {
    /// Index into the snapshot's replicas.
    pub replica: usize,
    /// Copies to unload first, in order.
    pub evict: Vec<K>,
    /// The plan evicts at least two models and more than half of the replica's models: a
    /// sweep that operators should see (it is counted in the metrics).
    pub mass_eviction: bool,
}

impl<K> Plan<K> {
    /// The same plan with its keys mapped (to owned names, say).
    pub fn map<L>(self, f: impl Fn(K) -> L) -> Plan<L> {
        Plan {
            replica: self.replica,
            evict: self.evict.into_iter().map(f).collect(),
            mass_eviction: self.mass_eviction,
        }
    }
}

/// Room will come once copies that are busy now are free.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait<K> {
    /// The plan that will work then (some of its victims are blocked now).
    pub plan: Plan<K>,
    /// Its victims that are blocked now, and by what.
    pub blocked: Vec<(K, Blocker)>,
}

impl<K> Wait<K> {
    /// The same wait with its keys mapped.
    pub fn map<L>(self, f: impl Fn(K) -> L) -> Wait<L> {
        Wait {
            blocked: self.blocked.into_iter().map(|(k, b)| (f(k), b)).collect(),
            plan: self.plan.map(f),
        }
    }

    /// How long until the plan works if only the minimum age blocks it (the youngest
    /// blocked victim's age-out); `None` when a victim waits for requests or an operation
    /// to end, which can happen at any moment.
    pub fn ready_in(&self) -> Option<Duration> {
        self.blocked
            .iter()
            .map(|(_, b)| match b {
                Blocker::Young { left } => Some(*left),
                _ => None,
            })
            .try_fold(Duration::ZERO, |most, left| left.map(|l| most.max(l)))
    }

    /// The first moment a blocked victim ages out, if any is only too young.
    pub fn next_age_out(&self) -> Option<Duration> {
        self.blocked
            .iter()
            .filter_map(|(_, b)| match b {
                Blocker::Young { left } => Some(*left),
                _ => None,
            })
            .min()
    }

    /// The error to give a caller that cannot wait (or waited long enough).
    pub fn into_error(self, need: Resources) -> PlacementError {
        let count = |f: fn(&Blocker) -> bool| self.blocked.iter().filter(|(_, b)| f(b)).count();
        PlacementError::Busy {
            need_memory: need.memory,
            need_gpu: need.gpu_memory,
            in_flight: count(|b| *b == Blocker::InFlight),
            young: count(|b| matches!(b, Blocker::Young { .. })),
            busy: count(|b| *b == Blocker::Busy),
        }
    }
}

/// What to do with a model that needs a copy.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<K> {
    /// Evict and load now.
    Place(Plan<K>),
    /// No room now; there will be once the named copies are free.
    Wait(Wait<K>),
    /// No room whatever the traffic does, or no replica at all.
    Refuse(PlacementError),
}

/// Why no plan was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Every replica is unhealthy or draining.
    #[error("no healthy replica")]
    NoHealthyReplica,
    /// Every healthy replica already holds a copy.
    #[error("every healthy replica already holds the model")]
    NoOtherReplica,
    /// Even evicting every copy that is not pinned would not make room.
    #[error("no replica has room for {need_memory} bytes of memory and {need_gpu} bytes of GPU memory, even after evicting every model that is not pinned")]
    NoRoom { need_memory: u64, need_gpu: u64 },
    /// Room can only be made from copies that are busy now, and the caller could not wait
    /// for them (or waited as long as it may).
    #[error("no replica has room for {need_memory} bytes of memory and {need_gpu} bytes of GPU memory until busy models free it ({in_flight} with requests in flight, {young} used within the minimum age, {busy} in another operation)")]
    Busy {
        need_memory: u64,
        need_gpu: u64,
        in_flight: usize,
        young: usize,
        busy: usize,
    },
    /// Earlier requests were waiting for room, in arrival order, until this one's route
    /// wait ran out.
    #[error("earlier requests were still waiting for room when this one's route wait ran out")]
    Queued,
}

/// One way to fit the model on one replica (step 2's answer).
#[derive(Debug, Clone)]
pub struct Fit<'a, K> {
    pub replica: usize,
    /// Copies to evict, in victim order.
    pub evict: Vec<&'a Resident<K>>,
    /// The largest victim-order key among the victims (0 when none).
    pub newest_victim: u64,
    /// Free fraction after placing minus the replica's share of the requests in flight.
    pub score: f64,
    /// Copies left on the replica after the evictions.
    pub models_after: usize,
}

/// Whether a replica's copies matter to the plan: only when no open replica can take the
/// model under its high watermark without evicting. The snapshot lists residents only then.
pub fn needs_residents<K>(s: &Snapshot<K>) -> bool {
    !s.replicas.iter().any(|r| {
        r.standing == Standing::Open && (r.used + s.need).fits_in(r.capacity.scale(s.marks.high))
    })
}

/// Step 1: the indexes of the replicas that may take a copy: open, and whose capacity under
/// the high watermark covers the model. Errs, in this order of precedence, when no replica
/// is healthy and undrained, when every such replica holds the model, or when none of them
/// is large enough.
pub fn filter<K>(s: &Snapshot<K>) -> Result<Vec<usize>, PlacementError> {
    let up = |r: &&ReplicaSnapshot<K>| matches!(r.standing, Standing::Open | Standing::HoldsModel);
    if !s.replicas.iter().any(|r| up(&r)) {
        return Err(PlacementError::NoHealthyReplica);
    }
    if !s.replicas.iter().any(|r| r.standing == Standing::Open) {
        return Err(PlacementError::NoOtherReplica);
    }
    let open: Vec<usize> = s
        .replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.standing == Standing::Open)
        .filter(|(_, r)| s.need.fits_in(r.capacity.scale(s.marks.high)))
        .map(|(i, _)| i)
        .collect();
    if open.is_empty() {
        return Err(no_room(s.need));
    }
    Ok(open)
}

fn no_room(need: Resources) -> PlacementError {
    PlacementError::NoRoom {
        need_memory: need.memory,
        need_gpu: need.gpu_memory,
    }
}

/// Step 2: how replica `index` could take the model, evicting only residents that `admit`
/// lets go, taken in `order` until the model fits under the low watermark. `None` when it
/// cannot fit under the high watermark even then. A replica where the model fits under the
/// high watermark as it is evicts nothing. `total_in_flight` is the sum over the candidates,
/// for the load share in the score.
pub fn score<'a, K>(
    s: &'a Snapshot<K>,
    index: usize,
    order: &impl VictimOrder<K>,
    admit: impl Fn(&Resident<K>) -> bool,
    total_in_flight: u64,
) -> Option<Fit<'a, K>> {
    let r = s.replicas.get(index)?;
    let high = r.capacity.scale(s.marks.high);
    let low = r.capacity.scale(s.marks.low);
    let mut used = r.used;
    let mut evict = Vec::new();
    if !(used + s.need).fits_in(high) {
        let mut victims: Vec<&Resident<K>> = r.residents.iter().filter(|m| admit(m)).collect();
        victims.sort_by_key(|m| order.key(m));
        for victim in victims {
            if (used + s.need).fits_in(low) {
                break;
            }
            used = used - victim.size;
            evict.push(victim);
        }
        if !(used + s.need).fits_in(high) {
            return None;
        }
    }
    let load_share = if total_in_flight == 0 {
        0.0
    } else {
        r.in_flight as f64 / total_in_flight as f64
    };
    Some(Fit {
        replica: index,
        newest_victim: evict.iter().map(|m| order.key(m)).max().unwrap_or(0),
        score: (used + s.need).free_fraction(r.capacity) - load_share,
        models_after: r.models.saturating_sub(evict.len()),
        evict,
    })
}

/// Step 3: the best of `fits`: fewest victims, then the lowest newest-victim key, then the
/// highest score, then fewest models after, then the lowest replica index. `None` when
/// `fits` is empty.
pub fn pick<'a, K>(fits: impl IntoIterator<Item = Fit<'a, K>>) -> Option<Fit<'a, K>> {
    fits.into_iter().reduce(|best, f| {
        let order = (f.evict.len(), f.newest_victim)
            .cmp(&(best.evict.len(), best.newest_victim))
            .then_with(|| best.score.total_cmp(&f.score))
            .then_with(|| f.models_after.cmp(&best.models_after))
            .then_with(|| f.replica.cmp(&best.replica));
        if order.is_lt() {
            f
        } else {
            best
        }
    })
}

/// Plans where a model goes; see the module docs for the rules.
pub fn plan<K: Clone>(s: &Snapshot<K>, order: &impl VictimOrder<K>) -> Decision<K> {
    let candidates = match filter(s) {
        Ok(c) => c,
        Err(e) => return Decision::Refuse(e),
    };
    let total: u64 = candidates
        .iter()
        .map(|&i| s.replicas[i].in_flight)
        .fold(0, u64::saturating_add);
    let best_with = |admit: &dyn Fn(&Resident<K>) -> bool| {
        pick(
            candidates
                .iter()
                .filter_map(|&i| score(s, i, order, admit, total)),
        )
    };
    if let Some(now) = best_with(&|r| r.blocker.is_none()) {
        return Decision::Place(into_plan(s, &now));
    }
    match best_with(&|r| !r.blocker.is_some_and(Blocker::is_permanent)) {
        Some(later) => Decision::Wait(Wait {
            blocked: later
                .evict
                .iter()
                .filter_map(|m| m.blocker.map(|b| (m.key.clone(), b)))
                .collect(),
            plan: into_plan(s, &later),
        }),
        None => Decision::Refuse(no_room(s.need)),
    }
}

/// How many of `plan`'s first victims the model needs gone to fit under the high
/// watermark of its replica; the others are the sweep down to the low watermark. An order
/// that ages by eviction pressure (GDSF's inflation) counts only these: the sweep batches
/// evictions, it is no sign that the cache is short of room.
pub fn needed<K: PartialEq>(s: &Snapshot<K>, plan: &Plan<K>) -> usize {
    let Some(r) = s.replicas.get(plan.replica) else {
        return 0;
    };
    let high = r.capacity.scale(s.marks.high);
    let mut used = r.used;
    let mut needed = 0;
    for key in &plan.evict {
        if (used + s.need).fits_in(high) {
            break;
        }
        let size = r.residents.iter().find(|m| m.key == *key).map(|m| m.size);
        used = used - size.unwrap_or(Resources::ZERO);
        needed += 1;
    }
    needed
}

fn into_plan<K: Clone>(s: &Snapshot<K>, fit: &Fit<'_, K>) -> Plan<K> {
    let models = s.replicas.get(fit.replica).map_or(0, |r| r.models);
    let evicted = fit.evict.len();
    Plan {
        replica: fit.replica,
        evict: fit.evict.iter().map(|m| m.key.clone()).collect(),
        mass_eviction: evicted >= 2 && evicted * 2 > models,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;
    const YOUNG: Blocker = Blocker::Young {
        left: Duration::from_secs(3),
    };

    fn mem(n: u64) -> Resources {
        Resources::new(n, 0)
    }

    /// A resident: (key, size, last use, blocker).
    type Row = (&'static str, u64, u64, Option<Blocker>);

    fn replica(capacity: u64, residents: &[Row]) -> ReplicaSnapshot<&'static str> {
        let residents: Vec<_> = residents
            .iter()
            .map(|&(key, size, last_use, blocker)| Resident {
                key,
                size: mem(size),
                last_use,
                blocker,
            })
            .collect();
        ReplicaSnapshot {
            standing: Standing::Open,
            capacity: mem(capacity),
            used: residents.iter().fold(Resources::ZERO, |a, m| a + m.size),
            in_flight: 0,
            models: residents.len(),
            residents,
        }
    }

    fn snap(
        replicas: Vec<ReplicaSnapshot<&'static str>>,
        need: u64,
        marks: Watermarks,
    ) -> Snapshot<&'static str> {
        Snapshot {
            need: mem(need),
            marks,
            replicas,
        }
    }

    fn marks(high: f64, low: f64) -> Watermarks {
        Watermarks::new(high, low).unwrap()
    }

    fn place(replica: usize, evict: &[&'static str]) -> Decision<&'static str> {
        Decision::Place(Plan {
            replica,
            evict: evict.to_vec(),
            mass_eviction: false,
        })
    }

    #[test]
    fn filter_keeps_open_replicas_large_enough() {
        let standing = |s: Standing, capacity: u64| ReplicaSnapshot {
            standing: s,
            ..replica(capacity, &[])
        };
        use Standing::*;
        type Row<'a> = (
            &'a str,
            Vec<ReplicaSnapshot<&'a str>>,
            Result<Vec<usize>, PlacementError>,
        );
        let rows: Vec<Row> = vec![
            (
                "no replica at all",
                vec![],
                Err(PlacementError::NoHealthyReplica),
            ),
            (
                "unhealthy and draining ones take nothing",
                vec![standing(Unhealthy, 100), standing(Draining, 100)],
                Err(PlacementError::NoHealthyReplica),
            ),
            (
                "the healthy one holds the model",
                vec![standing(HoldsModel, 100), standing(Unhealthy, 100)],
                Err(PlacementError::NoOtherReplica),
            ),
            (
                "too small under the high watermark (80 of 100)",
                vec![standing(Open, 100)],
                Err(PlacementError::NoRoom {
                    need_memory: 90,
                    need_gpu: 0,
                }),
            ),
            (
                "open and large enough, in configuration order",
                vec![
                    standing(Open, 200),
                    standing(HoldsModel, 200),
                    standing(Open, 100),
                    standing(Open, 200),
                ],
                Ok(vec![0, 3]),
            ),
        ];
        for (what, replicas, want) in rows {
            assert_eq!(
                filter(&snap(replicas, 90, Watermarks::default())),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn score_evicts_in_victim_order_down_to_the_low_watermark() {
        /// (what, capacity, residents, need, admit blocked ones, victims or None)
        type Case<'a> = (&'a str, u64, Vec<Row>, u64, bool, Option<Vec<&'a str>>);
        let rows: Vec<Case> = vec![
            (
                "fits under high: no victim",
                100,
                vec![("a", 60, 1, None)],
                20,
                false,
                Some(vec![]),
            ),
            (
                "LRU until under low",
                100,
                vec![
                    ("new", 20, 30, None),
                    ("old", 20, 10, None),
                    ("mid", 20, 20, None),
                    ("x", 20, 40, None),
                ],
                20,
                false,
                Some(vec!["old", "mid", "new"]),
            ),
            (
                "blocked copies are skipped",
                100,
                vec![
                    ("busy", 40, 1, Some(Blocker::InFlight)),
                    ("idle", 40, 2, None),
                ],
                40,
                false,
                Some(vec!["idle"]),
            ),
            (
                "not enough without the blocked ones",
                100,
                vec![
                    ("busy", 50, 1, Some(Blocker::InFlight)),
                    ("young", 40, 2, Some(YOUNG)),
                ],
                30,
                false,
                None,
            ),
            (
                "with them admitted, they are victims",
                100,
                vec![
                    ("busy", 50, 1, Some(Blocker::InFlight)),
                    ("young", 40, 2, Some(YOUNG)),
                ],
                30,
                true,
                Some(vec!["busy", "young"]),
            ),
        ];
        for (what, capacity, residents, need, admit_blocked, want) in rows {
            let s = snap(vec![replica(capacity, &residents)], need, marks(0.8, 0.5));
            let fit = score(&s, 0, &Lru, |r| admit_blocked || r.blocker.is_none(), 0);
            let got = fit.map(|f| f.evict.iter().map(|m| m.key).collect::<Vec<_>>());
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn score_is_free_memory_minus_load_share() {
        let mut s = snap(
            vec![replica(100, &[("a", 20, 1, None)])],
            10,
            Watermarks::default(),
        );
        s.replicas[0].in_flight = 3;
        let f = score(&s, 0, &Lru, |_| true, 4).unwrap();
        assert!((f.score - (0.7 - 0.75)).abs() < 1e-9, "{}", f.score);
        assert_eq!((f.models_after, f.newest_victim), (1, 0));
    }

    #[test]
    fn pick_prefers_fewer_then_colder_victims_then_score() {
        let r = Resident {
            key: "v",
            size: mem(1),
            last_use: 0,
            blocker: None,
        };
        let (cold, warm) = (
            Resident {
                last_use: 5,
                ..r.clone()
            },
            Resident {
                last_use: 50,
                ..r.clone()
            },
        );
        let fit = |replica, evict: Vec<&'static Resident<&'static str>>, score, models_after| Fit {
            replica,
            newest_victim: evict.iter().map(|m| m.last_use).max().unwrap_or(0),
            evict,
            score,
            models_after,
        };
        let (cold, warm): (&'static _, &'static _) =
            (Box::leak(Box::new(cold)), Box::leak(Box::new(warm)));
        let rows = vec![
            (
                "no victim beats a better score with one",
                vec![fit(0, vec![cold], 0.9, 1), fit(1, vec![], 0.1, 5)],
                1,
            ),
            (
                "colder victims win",
                vec![fit(0, vec![warm], 0.9, 1), fit(1, vec![cold], 0.1, 1)],
                1,
            ),
            (
                "then the score",
                vec![fit(0, vec![], 0.2, 1), fit(1, vec![], 0.3, 9)],
                1,
            ),
            (
                "then fewer models",
                vec![fit(0, vec![], 0.3, 2), fit(1, vec![], 0.3, 1)],
                1,
            ),
            (
                "then configuration order",
                vec![fit(0, vec![], 0.3, 1), fit(1, vec![], 0.3, 1)],
                0,
            ),
        ];
        for (what, fits, want) in rows {
            assert_eq!(pick(fits).map(|f| f.replica), Some(want), "{what}");
        }
        assert!(pick(Vec::<Fit<'_, &str>>::new()).is_none());
    }

    #[test]
    fn plan_places_waits_or_refuses() {
        let pinned = Some(Blocker::Pinned);
        type Case<'a> = (
            &'a str,
            Vec<ReplicaSnapshot<&'a str>>,
            u64,
            Decision<&'a str>,
        );
        let rows: Vec<Case> = vec![
            (
                "room under the high watermark wins over evicting",
                vec![
                    replica(100, &[("a", 70, 1, None)]),
                    replica(100, &[("b", 50, 9, None)]),
                ],
                20,
                place(1, &[]),
            ),
            (
                "the replica where it evicts least",
                vec![
                    replica(
                        100,
                        &[
                            ("s1", 30, 1, None),
                            ("s2", 30, 2, None),
                            ("s3", 30, 3, None),
                        ],
                    ),
                    replica(100, &[("m", 40, 9, None), ("keep", 50, 10, pinned)]),
                ],
                50,
                place(1, &["m"]),
            ),
            (
                "among equal evictions, the colder victims",
                vec![
                    replica(100, &[("warm", 60, 50, None)]),
                    replica(100, &[("cold", 60, 5, None)]),
                ],
                60,
                place(1, &["cold"]),
            ),
            (
                "only busy copies could make room: wait for them",
                vec![replica(
                    100,
                    &[
                        ("busy", 50, 1, Some(Blocker::InFlight)),
                        ("young", 40, 2, Some(YOUNG)),
                    ],
                )],
                30,
                Decision::Wait(Wait {
                    plan: Plan {
                        replica: 0,
                        evict: vec!["busy"],
                        mass_eviction: false,
                    },
                    blocked: vec![("busy", Blocker::InFlight)],
                }),
            ),
            (
                "pinned copies never make room: refuse at once",
                vec![replica(
                    100,
                    &[
                        ("p", 50, 1, pinned),
                        ("busy", 40, 2, Some(Blocker::InFlight)),
                    ],
                )],
                60,
                Decision::Refuse(PlacementError::NoRoom {
                    need_memory: 60,
                    need_gpu: 0,
                }),
            ),
        ];
        for (what, replicas, need, want) in rows {
            assert_eq!(
                plan(&snap(replicas, need, marks(1.0, 1.0)), &Lru),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn mass_evictions_are_flagged() {
        let r = replica(
            100,
            &[
                ("new", 20, 30, None),
                ("old", 20, 10, None),
                ("mid", 20, 20, None),
                ("x", 20, 40, None),
            ],
        );
        let Decision::Place(p) = plan(&snap(vec![r], 20, marks(0.8, 0.5)), &Lru) else {
            panic!("no plan");
        };
        assert_eq!(p.evict, vec!["old", "mid", "new"]);
        assert!(p.mass_eviction, "3 of 4 models");
    }

    #[test]
    fn the_victim_order_is_swappable() {
        /// Most recently used first: the opposite of LRU.
        struct Mru;
        impl VictimOrder<&'static str> for Mru {
            fn key(&self, r: &Resident<&'static str>) -> u64 {
                u64::MAX - r.last_use
            }
        }
        let s = snap(
            vec![replica(100, &[("old", 50, 1, None), ("new", 50, 2, None)])],
            50,
            marks(1.0, 1.0),
        );
        assert_eq!(plan(&s, &Lru), place(0, &["old"]));
        assert_eq!(plan(&s, &Mru), place(0, &["new"]));
    }

    #[test]
    fn load_pushes_placement_away_from_busy_replicas() {
        let mut r = vec![
            replica(100, &[("a", 20, 1, None)]),
            replica(100, &[("b", 10, 1, None)]),
        ];
        r[1].in_flight = 9;
        r[0].in_flight = 1;
        // r1 is 10% freer but carries 90% of the load.
        assert_eq!(
            plan(&snap(r, 10, Watermarks::default()), &Lru),
            place(0, &[])
        );
    }

    #[test]
    fn accounts_gpu_memory_separately() {
        let mut gpu_full = replica(100, &[]);
        gpu_full.capacity = Resources::new(100, 10);
        gpu_full.used = Resources::new(0, 10);
        let mut host_busy = replica(100, &[("a", 70, 1, Some(Blocker::InFlight))]);
        host_busy.capacity = Resources::new(100, 10);
        let mut s = Snapshot {
            need: Resources::new(20, 5),
            marks: Watermarks::default(),
            replicas: vec![gpu_full, host_busy],
        };
        // r0 has host room but no GPU room; r1 has GPU room but 70+20 > 80 host.
        assert!(matches!(plan(&s, &Lru), Decision::Wait(_)));
        s.replicas[1].residents[0].blocker = None;
        assert_eq!(plan(&s, &Lru), place(1, &["a"]));
        // A GPU model never lands on a CPU-only replica.
        let cpu_only = snap(vec![replica(100 * MI, &[])], 0, Watermarks::default());
        let gpu_model = Snapshot {
            need: Resources::new(MI, MI),
            ..cpu_only
        };
        assert!(matches!(
            plan(&gpu_model, &Lru),
            Decision::Refuse(PlacementError::NoRoom { .. })
        ));
    }

    #[test]
    fn residents_matter_only_when_no_open_replica_has_room() {
        let mut s = snap(
            vec![replica(100, &[("a", 70, 1, None)]), replica(100, &[])],
            20,
            Watermarks::default(),
        );
        assert!(!needs_residents(&s));
        s.replicas[1].standing = Standing::Draining;
        assert!(needs_residents(&s));
    }

    #[test]
    fn only_the_victims_under_the_high_watermark_are_needed() {
        // 100 bytes, high 80, low 60: 75 used; a 20-byte model needs 15 bytes gone (the
        // first victim, 10, is not enough; the second is), the sweep to 60 takes a third.
        let s = snap(
            vec![replica(
                100,
                &[
                    ("a", 10, 1, None),
                    ("b", 10, 2, None),
                    ("c", 20, 3, None),
                    ("d", 35, 4, None),
                ],
            )],
            20,
            marks(0.8, 0.6),
        );
        let Decision::Place(plan) = plan(&s, &Lru) else {
            panic!("expected a placement");
        };
        assert_eq!(plan.evict, ["a", "b", "c"]);
        assert_eq!(needed(&s, &plan), 2);
        // With room under the high watermark nothing is needed, whatever the plan says.
        let roomy = snap(
            vec![replica(100, &[("a", 10, 1, None)])],
            20,
            marks(0.8, 0.4),
        );
        let empty = Plan {
            replica: 0,
            evict: vec!["a"],
            mass_eviction: false,
        };
        assert_eq!(needed(&roomy, &empty), 0);
        assert_eq!(
            needed(
                &roomy,
                &Plan {
                    replica: 7,
                    ..empty
                }
            ),
            0
        );
    }

    #[test]
    fn a_wait_says_when_and_why() {
        let young = |s| Blocker::Young {
            left: Duration::from_secs(s),
        };
        let wait = |blocked: Vec<(&'static str, Blocker)>| Wait {
            plan: Plan {
                replica: 0,
                evict: vec![],
                mass_eviction: false,
            },
            blocked,
        };
        let only_young = wait(vec![("a", young(3)), ("b", young(1))]);
        assert_eq!(only_young.ready_in(), Some(Duration::from_secs(3)));
        assert_eq!(only_young.next_age_out(), Some(Duration::from_secs(1)));
        let in_flight = wait(vec![
            ("a", young(3)),
            ("b", Blocker::InFlight),
            ("c", Blocker::Busy),
        ]);
        assert_eq!(in_flight.ready_in(), None);
        assert_eq!(in_flight.next_age_out(), Some(Duration::from_secs(3)));
        assert_eq!(
            in_flight.into_error(mem(7)),
            PlacementError::Busy {
                need_memory: 7,
                need_gpu: 0,
                in_flight: 1,
                young: 1,
                busy: 1
            }
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn blocker() -> impl Strategy<Value = Option<Blocker>> {
            prop_oneof![
                3 => Just(None),
                1 => Just(Some(Blocker::Pinned)),
                1 => Just(Some(Blocker::Busy)),
                1 => Just(Some(Blocker::InFlight)),
                1 => (1u64..10).prop_map(|s| Some(Blocker::Young { left: Duration::from_secs(s) })),
            ]
        }

        fn replicas() -> impl Strategy<Value = Vec<ReplicaSnapshot<usize>>> {
            prop::collection::vec(
                (
                    50u64..200,
                    prop::collection::vec((1u64..60, 0u64..100, blocker()), 0..8),
                    0u64..5,
                ),
                1..5,
            )
            .prop_map(|rs| {
                let mut key = 0;
                rs.into_iter()
                    .map(|(capacity, residents, in_flight)| {
                        let residents: Vec<Resident<usize>> = residents
                            .into_iter()
                            .map(|(size, last_use, blocker)| {
                                key += 1;
                                Resident {
                                    key,
                                    size: mem(size),
                                    last_use,
                                    blocker,
                                }
                            })
                            .collect();
                        ReplicaSnapshot {
                            standing: Standing::Open,
                            capacity: mem(capacity),
                            used: residents.iter().fold(Resources::ZERO, |a, m| a + m.size),
                            in_flight,
                            models: residents.len(),
                            residents,
                        }
                    })
                    .collect()
            })
        }

        proptest! {
            #[test]
            fn plans_respect_the_watermark_and_the_blockers(replicas in replicas(), need in 1u64..80) {
                let s = Snapshot { need: mem(need), marks: marks(0.9, 0.7), replicas };
                let victims = |replica: usize, evict: &[usize]| {
                    let r = &s.replicas[replica];
                    let freed = r.residents.iter().filter(|m| evict.contains(&m.key)).fold(Resources::ZERO, |a, m| a + m.size);
                    (r, (r.used - freed + s.need).fits_in(r.capacity.scale(0.9)))
                };
                match plan(&s, &Lru) {
                    Decision::Place(p) => {
                        let (r, fits) = victims(p.replica, &p.evict);
                        prop_assert!(fits);
                        prop_assert!(r.residents.iter().filter(|m| p.evict.contains(&m.key)).all(|m| m.blocker.is_none()));
                    }
                    Decision::Wait(w) => {
                        let (r, fits) = victims(w.plan.replica, &w.plan.evict);
                        prop_assert!(fits);
                        prop_assert!(!w.blocked.is_empty());
                        prop_assert!(r.residents.iter().filter(|m| w.plan.evict.contains(&m.key)).all(|m| m.blocker != Some(Blocker::Pinned)));
                    }
                    Decision::Refuse(_) => {
                        // Not even evicting everything unpinned anywhere would do.
                        for r in &s.replicas {
                            let keep = r.residents.iter().filter(|m| m.blocker == Some(Blocker::Pinned)).fold(Resources::ZERO, |a, m| a + m.size);
                            let used = r.used - r.residents.iter().fold(Resources::ZERO, |a, m| a + m.size) + keep;
                            prop_assert!(!(used + s.need).fits_in(r.capacity.scale(0.9)));
                        }
                    }
                }
            }
        }
    }
}
