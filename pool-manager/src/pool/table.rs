//! The model table's data: entries, their copies, failures and usage, and the in-flight
//! counts the gateway reports. Plain data with derived views; all mutation happens in the
//! pool's operations under the table mutex.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::placement::Resources;
use crate::spec::{ModelName, ModelSpec};

/// A model's lifecycle state, as the admin API reports it (derived from its copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum ModelState {
    /// Registered, loaded nowhere.
    Pending,
    /// A load is under way and no copy is loaded yet.
    Loading,
    /// At least one copy is loaded and routable.
    Loaded,
    /// The last load failed; `lastError` says why. Retried after a backoff.
    Failed,
}

/// One copy's state on one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum CopyState {
    Loading,
    Loaded,
    /// Being unloaded: no longer routed, memory not yet free.
    Unloading,
}

#[derive(Debug, Clone)]
pub(super) struct Copy {
    pub replica: usize,
    pub state: CopyState,
    /// When the copy entered its state.
    pub since: Instant,
}

#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub reason: String,
    pub count: u32,
    pub retry_at: Instant,
}

pub(super) struct Entry {
    pub spec: ModelSpec,
    pub copies: Vec<Copy>,
    pub failure: Option<Failure>,
    /// Set while a delete is under way: the model no longer routes.
    pub deleting: bool,
    /// Serialises loads, unloads and spec changes of this model.
    pub op_lock: Arc<tokio::sync::Mutex<()>>,
    /// Last request seen (route call or usage report): the LRU key.
    pub last_used: Option<Instant>,
    /// What the replica measured after loading, when more than declared.
    pub measured: Resources,
    /// Requests reported since the scaler's last tick.
    pub window_requests: u64,
    /// Smoothed request rate (requests per second), for copy scaling.
    pub rate: f64,
    pub hot_ticks: u32,
    pub cold_ticks: u32,
    /// A copy is being added or removed by the scaler.
    pub scaling: bool,
    /// Round-robin position among equally loaded copies.
    pub next_copy: usize,
    /// The model's inputs from its V2 metadata, fetched after its first load.
    pub inputs: Option<Vec<mm_wire::TensorSpec>>,
}

impl Entry {
    pub fn new(spec: ModelSpec) -> Self {
        Self {
            spec,
            copies: Vec::new(),
            failure: None,
            deleting: false,
            op_lock: Arc::new(tokio::sync::Mutex::new(())),
            last_used: None,
            measured: Resources::ZERO,
            window_requests: 0,
            rate: 0.0,
            hot_ticks: 0,
            cold_ticks: 0,
            scaling: false,
            next_copy: 0,
            inputs: None,
        }
    }

    /// What one copy takes: the declared size, or what the replica measured if larger.
    pub fn size(&self) -> Resources {
        Resources::new(self.spec.memory, self.spec.gpu_memory).max(self.measured)
    }

    pub fn state(&self) -> ModelState {
        if self.copies.iter().any(|c| c.state == CopyState::Loaded) {
            ModelState::Loaded
        } else if self.copies.iter().any(|c| c.state == CopyState::Loading) {
            ModelState::Loading
        } else if self.failure.is_some() {
            ModelState::Failed
        } else {
            ModelState::Pending
        }
    }

    pub fn holds(&self, replica: usize) -> bool {
        self.copies.iter().any(|c| c.replica == replica)
    }

    /// Loaded copies on healthy replicas: the routable ones.
    pub fn routable<'a>(&'a self, healthy: &'a [bool]) -> impl Iterator<Item = &'a Copy> + 'a {
        self.copies
            .iter()
            .filter(move |c| c.state == CopyState::Loaded && healthy[c.replica])
    }

    pub fn loaded_copies(&self) -> usize {
        self.copies
            .iter()
            .filter(|c| c.state == CopyState::Loaded)
            .count()
    }
}

/// One reporter's in-flight counts: (model, replica index, requests in flight).
pub(super) type InFlightEntries = Vec<(ModelName, usize, u64)>;

/// Most reporters (gateway workers with requests in flight) remembered at once: 64 gateway
/// pods of 64 workers. Counts come from another process, so every sum saturates.
pub(super) const MAX_REPORTERS: usize = 4096;

/// Requests in flight by (model, replica), summed over reporters. Each reporter's latest
/// report replaces its previous one; reporters that go quiet expire.
#[derive(Default)]
pub(super) struct InFlight {
    reporters: HashMap<String, (Instant, InFlightEntries)>,
    totals: HashMap<ModelName, HashMap<usize, u64>>,
}

impl InFlight {
    /// Whether a report from `reporter` can be kept: one already known, or room for one
    /// more ([`MAX_REPORTERS`]).
    pub fn has_room_for(&self, reporter: &str) -> bool {
        self.reporters.len() < MAX_REPORTERS || self.reporters.contains_key(reporter)
    }

    pub fn replace(&mut self, reporter: &str, now: Instant, entries: InFlightEntries) {
        if let Some((_, old)) = self.reporters.remove(reporter) {
            self.apply(&old, false);
        }
        self.apply(&entries, true);
        if !entries.is_empty() {
            self.reporters.insert(reporter.to_owned(), (now, entries));
        }
    }

    /// Forgets reporters not heard from within `ttl`.
    pub fn expire(&mut self, now: Instant, ttl: Duration) {
        let stale: Vec<String> = self
            .reporters
            .iter()
            .filter(|(_, (at, _))| now.saturating_duration_since(*at) > ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for reporter in stale {
            if let Some((_, old)) = self.reporters.remove(&reporter) {
                self.apply(&old, false);
            }
        }
    }

    fn apply(&mut self, entries: &[(ModelName, usize, u64)], add: bool) {
        for (model, replica, n) in entries {
            let per_replica = self.totals.entry(model.clone()).or_default();
            let slot = per_replica.entry(*replica).or_default();
            *slot = if add {
                slot.saturating_add(*n)
            } else {
                slot.saturating_sub(*n)
            };
            if *slot == 0 {
                per_replica.remove(replica);
            }
            if per_replica.is_empty() {
                self.totals.remove(model.as_str());
            }
        }
    }

    pub fn get(&self, model: &str, replica: usize) -> u64 {
        self.totals
            .get(model)
            .and_then(|m| m.get(&replica))
            .copied()
            .unwrap_or(0)
    }

    pub fn model_total(&self, model: &str) -> u64 {
        self.totals
            .get(model)
            .map(|m| m.values().fold(0u64, |a, &n| a.saturating_add(n)))
            .unwrap_or(0)
    }

    pub fn replica_totals(&self, replicas: usize) -> Vec<u64> {
        let mut out = vec![0u64; replicas];
        for per_replica in self.totals.values() {
            for (&r, &n) in per_replica {
                if let Some(slot) = out.get_mut(r) {
                    *slot = slot.saturating_add(n);
                }
            }
        }
        out
    }
}

/// What a gateway failure report claims: a replica unreachable (whatever the model), or a
/// model missing on a replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Claim {
    Unreachable(usize),
    ModelMissing(ModelName, usize),
}

pub(super) struct Table {
    pub models: BTreeMap<ModelName, Entry>,
    pub healthy: Vec<bool>,
    /// Consecutive failed probes per replica.
    pub probe_failures: Vec<u32>,
    /// Each replica's current IP address (`None` while its name does not resolve).
    pub addresses: Vec<Option<std::net::SocketAddr>>,
    pub in_flight: InFlight,
    /// Gateway failure claims being checked, so a burst of them costs one check.
    pub checking: std::collections::HashSet<Claim>,
}

impl Table {
    pub fn new(replicas: usize) -> Self {
        Self {
            models: BTreeMap::new(),
            healthy: vec![false; replicas],
            probe_failures: vec![0; replicas],
            addresses: vec![None; replicas],
            in_flight: InFlight::default(),
            checking: std::collections::HashSet::new(),
        }
    }

    /// What the copies on `replica` take, whatever their state (an unloading copy still
    /// holds its memory).
    pub fn used(&self, replica: usize) -> Resources {
        self.models
            .values()
            .flat_map(|e| {
                let size = e.size();
                e.copies
                    .iter()
                    .filter(move |c| c.replica == replica)
                    .map(move |_| size)
            })
            .fold(Resources::ZERO, |a, b| a + b)
    }

    /// What the copies on each replica take, for `replicas` replicas, in one pass over the
    /// models (a per-replica scan would be replicas x models, too slow at scale).
    pub fn used_all(&self, replicas: usize) -> Vec<Resources> {
        let mut used = vec![Resources::ZERO; replicas];
        for e in self.models.values() {
            let size = e.size();
            for c in &e.copies {
                if let Some(slot) = used.get_mut(c.replica) {
                    *slot = *slot + size;
                }
            }
        }
        used
    }

    /// The models holding a copy on each replica, in one pass.
    pub fn models_by_replica(&self, replicas: usize) -> Vec<Vec<String>> {
        let mut out = vec![Vec::new(); replicas];
        for (name, e) in &self.models {
            for c in &e.copies {
                if let Some(slot) = out.get_mut(c.replica) {
                    slot.push(name.to_string());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> ModelName {
        ModelName::new(n).unwrap()
    }

    #[test]
    fn in_flight_replaces_per_reporter_and_expires() {
        let mut f = InFlight::default();
        let t0 = Instant::now();
        f.replace("w1", t0, vec![(name("a"), 0, 2), (name("b"), 1, 1)]);
        f.replace("w2", t0, vec![(name("a"), 0, 3)]);
        assert_eq!(f.get("a", 0), 5);
        assert_eq!(f.model_total("b"), 1);
        assert_eq!(f.replica_totals(2), vec![5, 1]);
        // w1's next report: "a" finished, "b" still running.
        f.replace("w1", t0, vec![(name("b"), 1, 1)]);
        assert_eq!(f.get("a", 0), 3);
        // w2 goes quiet.
        f.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(f.get("a", 0), 0);
        assert_eq!(f.get("b", 1), 0, "w1 was not refreshed either");
        assert_eq!(f.replica_totals(2), vec![0, 0]);
        assert!(f.totals.is_empty() && f.reporters.is_empty());
    }

    #[test]
    fn in_flight_sums_saturate_instead_of_overflowing() {
        let mut f = InFlight::default();
        let t0 = Instant::now();
        f.replace("w1", t0, vec![(name("a"), 0, u64::MAX), (name("a"), 1, 1)]);
        f.replace("w2", t0, vec![(name("a"), 0, 5)]);
        assert_eq!(f.get("a", 0), u64::MAX);
        assert_eq!(f.model_total("a"), u64::MAX);
        assert_eq!(f.replica_totals(2), vec![u64::MAX, 1]);
        f.replace("w2", t0, vec![]);
        assert_eq!(f.get("a", 1), 1);
    }
}
