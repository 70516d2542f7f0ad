//! The model table: every registered model with its copies, every replica's state, the
//! in-flight counts the gateway reports, and the indexes that keep a placement's work
//! independent of how many models are registered. Plain data, no I/O and no clock of its
//! own (callers pass `now`); the pool holds it under one mutex.
//!
//! Invariants, kept by the methods here (the only writers of the indexed fields):
//! - a replica's `used` is the sum of the sizes of the copies on it, in every state (an
//!   unloading copy still holds its memory), and `copies` counts them;
//! - a replica's `by_use` holds one `(recency, model)` key per copy on it, where recency is
//!   the later of the model's last use and the copy's last state change: the victim order
//!   of LRU is a walk of that set, touching no other model;
//! - a replica's `in_flight` is the sum of the requests in flight reported on it;
//! - `loaded` counts loaded copies across the pool; `active` holds every model with a
//!   copy, a pin, or recent traffic (the scaler's work list); `dirty` every model whose
//!   routing-table entry may have changed since the last publish.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::placement::{Resources, Watermarks};
use crate::spec::{ModelName, ModelSpec};

/// A replica's position in configuration order: the index of its [`ReplicaState`] and of
/// its configuration. Only the pool makes them, for replicas that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaIdx(usize);

impl ReplicaIdx {
    pub(crate) fn new(index: usize) -> Self {
        Self(index)
    }

    pub fn index(self) -> usize {
        self.0
    }
}

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
pub(crate) struct Copy {
    pub replica: ReplicaIdx,
    pub state: CopyState,
    /// When the copy entered its state.
    pub since: Instant,
    /// Its key in the replica's `by_use` index.
    rank: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub reason: String,
    pub count: u32,
    pub retry_at: Instant,
}

/// What the rules of placement need from the settings; the table carries them so that a
/// snapshot is made from the table alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub watermarks: Watermarks,
    /// A copy loaded or used more recently than this is not evicted.
    pub min_age: Duration,
}

pub(crate) struct Entry {
    spec: ModelSpec,
    copies: Vec<Copy>,
    /// Last request seen (route call or usage report).
    last_used: Option<Instant>,
    /// What the replica measured after loading, when more than declared.
    measured: Resources,
    /// Waiting placements that need this model's in-flight requests to end.
    watchers: u32,
    /// The last failed load or pull, until the next success (boxed: most models never fail).
    pub failure: Option<Box<Failure>>,
    /// Set while a delete is under way: the model no longer routes.
    pub deleting: bool,
    /// Serialises loads, unloads and spec changes of this model; made on first use (most
    /// registered models are never loaded).
    op_lock: Option<Arc<tokio::sync::Mutex<()>>>,
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
    /// What its replica said of it after a load under its current spec (or an earlier
    /// run's record of that); cleared by a reload.
    pub metadata: Option<Arc<crate::metadata::KeptMetadata>>,
    /// The name clients use, when it is not the entry's own (the Triton-side name of a
    /// version loaded by an update; see `update`).
    pub client: Option<ModelName>,
    /// Whether the entry serves its client name, or is a version on its way in or out.
    pub role: Role,
    /// The update under way or failed, on the entry that serves (boxed: rare).
    pub transition: Option<Box<super::update::Transition>>,
}

/// What an entry is to the clients of its model (see `update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// It serves the model: routed, listed, scaled.
    Current,
    /// A new version loading alongside the current one: neither routed nor listed.
    Incoming,
    /// A replaced version whose copies are unloaded once their requests end.
    Retiring,
}

impl Entry {
    fn new(spec: ModelSpec) -> Self {
        Self {
            spec,
            copies: Vec::new(),
            last_used: None,
            measured: Resources::ZERO,
            watchers: 0,
            failure: None,
            deleting: false,
            op_lock: None,
            window_requests: 0,
            rate: 0.0,
            hot_ticks: 0,
            cold_ticks: 0,
            scaling: false,
            next_copy: 0,
            inputs: None,
            metadata: None,
            client: None,
            role: Role::Current,
            transition: None,
        }
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn copies(&self) -> &[Copy] {
        &self.copies
    }

    pub fn last_used(&self) -> Option<Instant> {
        self.last_used
    }

    pub fn measured(&self) -> Resources {
        self.measured
    }

    /// Whether a waiting placement asks the gateway to report this model's idle moment.
    pub fn watched(&self) -> bool {
        self.watchers > 0
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

    pub fn copy_on(&self, replica: ReplicaIdx) -> Option<&Copy> {
        self.copies.iter().find(|c| c.replica == replica)
    }

    pub fn holds(&self, replica: ReplicaIdx) -> bool {
        self.copy_on(replica).is_some()
    }

    pub fn loaded_copies(&self) -> usize {
        self.copies
            .iter()
            .filter(|c| c.state == CopyState::Loaded)
            .count()
    }

    /// Whether the op lock is held now (another load, unload or spec change).
    pub fn is_busy(&self) -> bool {
        self.op_lock.as_ref().is_some_and(|l| l.try_lock().is_err())
    }

    /// The model's op lock (made on first use).
    pub fn op_lock(&mut self) -> Arc<tokio::sync::Mutex<()>> {
        self.op_lock
            .get_or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// The copy's key in the replica's `by_use` index: the later of the last use and the
    /// copy's last state change, in nanoseconds since `epoch`.
    fn rank(&self, since: Instant, epoch: Instant) -> u64 {
        let last = self.last_used.map_or(since, |u| u.max(since));
        u64::try_from(last.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One replica's state, as the table knows it.
#[derive(Debug)]
pub(crate) struct ReplicaState {
    pub capacity: Resources,
    pub healthy: bool,
    /// Takes no new copies; its copies move away.
    pub draining: bool,
    /// Consecutive failed probes.
    pub probe_failures: u32,
    /// Its current IP address (`None` while its name does not resolve).
    pub address: Option<std::net::SocketAddr>,
    used: Resources,
    copies: usize,
    in_flight: u64,
    by_use: BTreeSet<(u64, ModelName)>,
}

impl ReplicaState {
    fn new(capacity: Resources, address: Option<std::net::SocketAddr>) -> Self {
        Self {
            capacity,
            healthy: false,
            draining: false,
            probe_failures: 0,
            address,
            used: Resources::ZERO,
            copies: 0,
            in_flight: 0,
            by_use: BTreeSet::new(),
        }
    }

    /// What the copies on it take, in every state.
    pub fn used(&self) -> Resources {
        self.used
    }

    /// How many copies it holds, in every state.
    pub fn copies(&self) -> usize {
        self.copies
    }

    /// Requests in flight on it, as reported.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// The models holding a copy on it, least recently used first.
    pub fn by_use(&self) -> impl DoubleEndedIterator<Item = (u64, &ModelName)> + '_ {
        self.by_use.iter().map(|(rank, name)| (*rank, name))
    }
}

/// One reporter's in-flight counts: (model, replica, requests in flight).
pub(crate) type InFlightEntries = Vec<(ModelName, ReplicaIdx, u64)>;

/// Most reporters (gateway workers with requests in flight) remembered at once: 64 gateway
/// pods of 64 workers. Counts come from another process, so every sum saturates.
pub(crate) const MAX_REPORTERS: usize = 4096;

/// Requests in flight by (model, replica), summed over reporters. Each reporter's latest
/// report replaces its previous one; reporters that go quiet expire.
#[derive(Default)]
pub(crate) struct InFlight {
    reporters: HashMap<String, (Instant, InFlightEntries)>,
    totals: HashMap<ModelName, Vec<(ReplicaIdx, u64)>>,
}

impl InFlight {
    /// Whether a report from `reporter` can be kept: one already known, or room for one
    /// more ([`MAX_REPORTERS`]).
    pub fn has_room_for(&self, reporter: &str) -> bool {
        self.reporters.len() < MAX_REPORTERS || self.reporters.contains_key(reporter)
    }

    pub fn get(&self, model: &str, replica: ReplicaIdx) -> u64 {
        self.totals
            .get(model)
            .and_then(|v| v.iter().find(|(r, _)| *r == replica))
            .map_or(0, |(_, n)| *n)
    }

    pub fn model_total(&self, model: &str) -> u64 {
        self.totals
            .get(model)
            .map_or(0, |v| v.iter().fold(0, |a, (_, n)| a.saturating_add(*n)))
    }

    /// Adds (or takes away) `entries`, and moves each replica's sum in `replicas` with them.
    fn apply(
        &mut self,
        entries: &[(ModelName, ReplicaIdx, u64)],
        add: bool,
        replicas: &mut [ReplicaState],
    ) {
        for (model, replica, n) in entries {
            let slots = self.totals.entry(model.clone()).or_default();
            let pos = match slots.iter().position(|(r, _)| r == replica) {
                Some(p) => p,
                None => {
                    slots.push((*replica, 0));
                    slots.len() - 1
                }
            };
            let slot = &mut slots[pos].1;
            let before = *slot;
            *slot = if add {
                slot.saturating_add(*n)
            } else {
                slot.saturating_sub(*n)
            };
            if let Some(state) = replicas.get_mut(replica.0) {
                let moved = before.abs_diff(*slot);
                state.in_flight = if add {
                    state.in_flight.saturating_add(moved)
                } else {
                    state.in_flight.saturating_sub(moved)
                };
            }
            if *slot == 0 {
                slots.swap_remove(pos);
            }
            if slots.is_empty() {
                self.totals.remove(model.as_str());
            }
        }
    }
}

/// What a gateway failure report claims: a replica unreachable (whatever the model), or a
/// model missing on a replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Claim {
    Unreachable(ReplicaIdx),
    ModelMissing(ModelName, ReplicaIdx),
}

pub(crate) struct Table {
    /// Boxed: B-tree nodes are often half full, and a name and a pointer waste less there
    /// than a whole entry (memory per registered model is a target).
    models: BTreeMap<ModelName, Box<Entry>>,
    replicas: Vec<ReplicaState>,
    in_flight: InFlight,
    loaded: usize,
    active: BTreeSet<ModelName>,
    dirty: BTreeSet<ModelName>,
    rules: Rules,
    /// Instants become `by_use` ranks relative to this.
    epoch: Instant,
    /// Host-only copies unloaded without waiting for the replica to let them go (Triton
    /// answers first): loading the same model there again waits for it.
    unconfirmed_unloads: HashMap<(ModelName, ReplicaIdx), Instant>,
    /// Gateway failure claims being checked, so a burst of them costs one check.
    pub checking: std::collections::HashSet<Claim>,
    /// Client names whose serving entry has another name (after an update), to it.
    versions: HashMap<ModelName, ModelName>,
    /// Aliases: their targets (client names) and weights. One namespace with models.
    pub aliases: BTreeMap<ModelName, Vec<(ModelName, u32)>>,
    /// Entries looked up, for tests that count what an operation touches.
    #[cfg(test)]
    lookups: std::cell::Cell<u64>,
}

impl Table {
    /// A table for replicas of these capacities and addresses, in configuration order.
    pub fn new(
        replicas: impl IntoIterator<Item = (Resources, Option<std::net::SocketAddr>)>,
        rules: Rules,
        epoch: Instant,
    ) -> Self {
        Self {
            models: BTreeMap::new(),
            replicas: replicas
                .into_iter()
                .map(|(capacity, address)| ReplicaState::new(capacity, address))
                .collect(),
            in_flight: InFlight::default(),
            loaded: 0,
            active: BTreeSet::new(),
            dirty: BTreeSet::new(),
            rules,
            epoch,
            unconfirmed_unloads: HashMap::new(),
            checking: std::collections::HashSet::new(),
            versions: HashMap::new(),
            aliases: BTreeMap::new(),
            #[cfg(test)]
            lookups: std::cell::Cell::new(0),
        }
    }

    /// How many entries were looked up so far (tests only).
    #[cfg(test)]
    pub fn lookups(&self) -> u64 {
        self.lookups.get()
    }

    fn looked_up(&self, _n: u64) {
        #[cfg(test)]
        self.lookups.set(self.lookups.get() + _n);
    }

    pub fn rules(&self) -> Rules {
        self.rules
    }

    // ---- models ----

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn get<Q: Ord + ?Sized>(&self, name: &Q) -> Option<&Entry>
    where
        ModelName: std::borrow::Borrow<Q>,
    {
        self.looked_up(1);
        self.models.get(name).map(|e| &**e)
    }

    /// The entry, for its fields that no index depends on.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, name: &Q) -> Option<&mut Entry>
    where
        ModelName: std::borrow::Borrow<Q>,
    {
        self.looked_up(1);
        self.models.get_mut(name).map(|e| &mut **e)
    }

    pub fn contains<Q: Ord + ?Sized>(&self, name: &Q) -> bool
    where
        ModelName: std::borrow::Borrow<Q>,
    {
        self.looked_up(1);
        self.models.contains_key(name)
    }

    /// Models in name order from `lower` (a page of the admin list).
    pub fn range(
        &self,
        lower: std::ops::Bound<&str>,
    ) -> impl Iterator<Item = (&ModelName, &Entry)> + '_ {
        self.models
            .range::<str, _>((lower, std::ops::Bound::Unbounded))
            .inspect(|_| self.looked_up(1))
            .map(|(n, e)| (n, &**e))
    }

    /// Registers a model (replacing nothing: the caller checked it is new).
    pub fn insert(&mut self, name: ModelName, spec: ModelSpec) {
        if spec.min_copies > 0 {
            self.active.insert(name.clone());
        }
        self.models.insert(name, Box::new(Entry::new(spec)));
    }

    /// The entry that serves the client name `client`: the one its last update switched
    /// to, or the entry of that name if it serves itself. `None` for unknown names and for
    /// the names of versions (never a client name).
    pub fn resolve(&self, client: &ModelName) -> Option<ModelName> {
        if let Some(key) = self.versions.get(client) {
            return Some(key.clone());
        }
        self.get(client)
            .filter(|e| e.client.is_none() && e.role == Role::Current)
            .map(|_| client.clone())
    }

    /// The name clients use for entry `key`.
    pub fn client_of<'a>(&'a self, key: &'a ModelName) -> &'a ModelName {
        self.get(key).and_then(|e| e.client.as_ref()).unwrap_or(key)
    }

    /// Adds version `key` of client model `client` (an update's new version, or one read
    /// back from the store), in `role`.
    pub fn insert_version(
        &mut self,
        key: ModelName,
        client: ModelName,
        spec: ModelSpec,
        role: Role,
    ) {
        if role == Role::Current && key != client {
            self.versions.insert(client.clone(), key.clone());
        }
        self.insert(key.clone(), spec);
        if let Some(e) = self.get_mut(&key) {
            e.client = (key != client).then_some(client);
            e.role = role;
        }
    }

    /// Makes `key` (an incoming version, now with `spec`) the entry that serves `client`,
    /// in one step under the table lock; the entry that served it becomes `Retiring` and
    /// is returned. Both are marked for the routing table, so the gateway sees the switch
    /// in one generation.
    pub fn promote(
        &mut self,
        client: &ModelName,
        key: &ModelName,
        spec: ModelSpec,
    ) -> Option<ModelName> {
        let old = self.resolve(client)?;
        let e = self.get_mut(key).filter(|e| e.role == Role::Incoming)?;
        e.role = Role::Current;
        e.failure = None;
        if spec.min_copies == 0 {
            self.active.remove(key);
        }
        self.resize(key, |e| e.spec = spec);
        if let Some(o) = self.get_mut(&old) {
            o.role = Role::Retiring;
            o.transition = None;
            if o.client.is_none() {
                o.client = Some(client.clone());
            }
        }
        if key == client {
            self.versions.remove(client);
        } else {
            self.versions.insert(client.clone(), key.clone());
        }
        self.dirty.insert(old.clone());
        self.dirty.insert(key.clone());
        Some(old)
    }

    /// Forgets that `client` is served by another entry (it is being deleted).
    pub fn forget_version(&mut self, client: &ModelName) {
        self.versions.remove(client);
    }

    /// Forgets a model and any copy it still has in the indexes.
    pub fn remove(&mut self, name: &ModelName) -> Option<Entry> {
        let replicas: Vec<ReplicaIdx> = self.get(name)?.copies.iter().map(|c| c.replica).collect();
        for r in replicas {
            self.remove_copy(name, r);
        }
        self.active.remove(name);
        self.dirty.insert(name.clone());
        self.models.remove(name).map(|e| *e)
    }

    /// Replaces a model's spec (its size may change with it).
    pub fn set_spec(&mut self, name: &ModelName, spec: ModelSpec) {
        if spec.min_copies > 0 {
            self.active.insert(name.clone());
        }
        self.resize(name, |e| {
            e.spec = spec;
            e.measured = Resources::ZERO;
        });
    }

    /// Sets the size estimated from the model's files (an undeclared size).
    pub fn estimate_from_files(
        &mut self,
        name: &ModelName,
        uri: &crate::spec::StorageUri,
        bytes: u64,
    ) {
        self.resize(name, |e| {
            if *e.spec.storage_uri == *uri {
                e.spec.estimate_from_files(bytes);
            }
        });
    }

    /// Raises the accounted size to what the replica measured, if more than declared.
    pub fn set_measured(&mut self, name: &ModelName, seen: Resources) {
        self.resize(name, |e| e.measured = seen.max(e.measured));
    }

    /// Applies `change` to the entry and moves the replicas' sums by the size difference.
    fn resize(&mut self, name: &ModelName, change: impl FnOnce(&mut Entry)) {
        self.looked_up(1);
        let Some(e) = self.models.get_mut(name) else {
            return;
        };
        let before = e.size();
        change(e);
        let after = e.size();
        if before == after {
            return;
        }
        for c in &e.copies {
            if let Some(r) = self.replicas.get_mut(c.replica.0) {
                r.used = r.used - before + after;
            }
        }
    }

    /// Records a request for the model at `now` (the LRU key of its copies).
    pub fn touch(&mut self, name: &ModelName, now: Instant) {
        let epoch = self.epoch;
        self.looked_up(1);
        let Some(e) = self.models.get_mut(name) else {
            return;
        };
        e.last_used = Some(now);
        for i in 0..e.copies.len() {
            let rank = e.rank(e.copies[i].since, epoch);
            let old = std::mem::replace(&mut e.copies[i].rank, rank);
            if old != rank {
                if let Some(r) = self.replicas.get_mut(e.copies[i].replica.0) {
                    r.by_use.remove(&(old, name.clone()));
                    r.by_use.insert((rank, name.clone()));
                }
            }
        }
    }

    /// Counts requests toward the scaler's next rate.
    pub fn add_requests(&mut self, name: &ModelName, requests: u64) {
        self.looked_up(1);
        if let Some(e) = self.models.get_mut(name) {
            e.window_requests = e.window_requests.saturating_add(requests);
            if requests > 0 {
                self.active.insert(name.clone());
            }
        }
    }

    /// One more (or one fewer) waiting placement needs the model's requests to end.
    pub fn watch(&mut self, name: &ModelName, on: bool) {
        self.looked_up(1);
        if let Some(e) = self.models.get_mut(name) {
            let before = e.watchers > 0;
            e.watchers = if on {
                e.watchers.saturating_add(1)
            } else {
                e.watchers.saturating_sub(1)
            };
            if before != (e.watchers > 0) {
                self.dirty.insert(name.clone());
            }
        }
    }

    /// Marks a model as deleting (it stops routing at once).
    pub fn set_deleting(&mut self, name: &ModelName) {
        self.looked_up(1);
        if let Some(e) = self.models.get_mut(name) {
            e.deleting = true;
            self.dirty.insert(name.clone());
        }
    }

    /// Sets the model's inputs (from its metadata).
    pub fn set_inputs(&mut self, name: &ModelName, inputs: Option<Vec<mm_wire::TensorSpec>>) {
        self.looked_up(1);
        if let Some(e) = self.models.get_mut(name) {
            e.inputs = inputs;
            self.dirty.insert(name.clone());
        }
    }

    // ---- copies ----

    /// Adds a copy of `name` on `replica` in `state` (none must be there).
    pub fn add_copy(
        &mut self,
        name: &ModelName,
        replica: ReplicaIdx,
        state: CopyState,
        now: Instant,
    ) {
        let epoch = self.epoch;
        self.looked_up(1);
        let Some(e) = self.models.get_mut(name) else {
            return;
        };
        let Some(r) = self.replicas.get_mut(replica.0) else {
            return;
        };
        if e.holds(replica) {
            return;
        }
        let rank = e.rank(now, epoch);
        e.copies.push(Copy {
            replica,
            state,
            since: now,
            rank,
        });
        r.used = r.used + e.size();
        r.copies += 1;
        r.by_use.insert((rank, name.clone()));
        self.loaded += usize::from(state == CopyState::Loaded);
        self.active.insert(name.clone());
        self.dirty.insert(name.clone());
    }

    /// Moves the copy of `name` on `replica` to `state` as of `now`; returns its previous
    /// state and since when it was in it, or `None` if there is no such copy.
    pub fn set_copy_state(
        &mut self,
        name: &ModelName,
        replica: ReplicaIdx,
        state: CopyState,
        now: Instant,
    ) -> Option<(CopyState, Instant)> {
        let epoch = self.epoch;
        self.looked_up(1);
        let e = self.models.get_mut(name)?;
        let pos = e.copies.iter().position(|c| c.replica == replica)?;
        let rank = e.rank(now, epoch);
        let c = &mut e.copies[pos];
        let previous = (c.state, c.since);
        self.loaded = self.loaded + usize::from(state == CopyState::Loaded)
            - usize::from(c.state == CopyState::Loaded);
        c.state = state;
        c.since = now;
        let old = std::mem::replace(&mut c.rank, rank);
        if let Some(r) = self.replicas.get_mut(replica.0) {
            r.by_use.remove(&(old, name.clone()));
            r.by_use.insert((rank, name.clone()));
        }
        self.dirty.insert(name.clone());
        Some(previous)
    }

    /// Drops the copy of `name` on `replica`; whether there was one.
    pub fn remove_copy(&mut self, name: &ModelName, replica: ReplicaIdx) -> bool {
        self.looked_up(1);
        let Some(e) = self.models.get_mut(name) else {
            return false;
        };
        let Some(pos) = e.copies.iter().position(|c| c.replica == replica) else {
            return false;
        };
        let c = e.copies.swap_remove(pos);
        self.loaded -= usize::from(c.state == CopyState::Loaded);
        if let Some(r) = self.replicas.get_mut(replica.0) {
            r.used = r.used - e.size();
            r.copies = r.copies.saturating_sub(1);
            r.by_use.remove(&(c.rank, name.clone()));
        }
        self.dirty.insert(name.clone());
        true
    }

    /// Loaded copies across the pool.
    pub fn loaded_copies(&self) -> usize {
        self.loaded
    }

    /// The replicas of `name`'s loaded copies on healthy replicas: the routable ones.
    pub fn routable<Q: Ord + ?Sized>(&self, name: &Q) -> Vec<ReplicaIdx>
    where
        ModelName: std::borrow::Borrow<Q>,
    {
        self.get(name)
            .filter(|e| !e.deleting)
            .map(|e| {
                e.copies
                    .iter()
                    .filter(|c| c.state == CopyState::Loaded && self.is_healthy(c.replica))
                    .map(|c| c.replica)
                    .collect()
            })
            .unwrap_or_default()
    }

    // ---- replicas ----

    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    pub fn replica_indexes(&self) -> impl Iterator<Item = ReplicaIdx> {
        (0..self.replicas.len()).map(ReplicaIdx)
    }

    pub fn replica(&self, idx: ReplicaIdx) -> Option<&ReplicaState> {
        self.replicas.get(idx.0)
    }

    pub fn is_healthy(&self, idx: ReplicaIdx) -> bool {
        self.replica(idx).is_some_and(|r| r.healthy)
    }

    pub fn is_draining(&self, idx: ReplicaIdx) -> bool {
        self.replica(idx).is_some_and(|r| r.draining)
    }

    /// Changes what routing or placement sees of a replica (health, draining, address);
    /// every model with a copy there may route differently afterwards.
    pub fn update_replica(&mut self, idx: ReplicaIdx, change: impl FnOnce(&mut ReplicaState)) {
        let Some(r) = self.replicas.get_mut(idx.0) else {
            return;
        };
        change(r);
        self.dirty.extend(r.by_use.iter().map(|(_, n)| n.clone()));
    }

    /// Probe bookkeeping that changes nothing routed.
    pub fn replica_mut(&mut self, idx: ReplicaIdx) -> Option<&mut ReplicaState> {
        self.replicas.get_mut(idx.0)
    }

    // ---- in flight ----

    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// Replaces `reporter`'s in-flight counts with `entries`; returns whether a count went
    /// down (a copy may have become evictable).
    pub fn replace_in_flight(
        &mut self,
        reporter: &str,
        now: Instant,
        entries: InFlightEntries,
    ) -> bool {
        let old = self
            .in_flight
            .reporters
            .remove(reporter)
            .map(|(_, old)| old)
            .unwrap_or_default();
        let before: Vec<u64> = old
            .iter()
            .map(|(m, r, _)| self.in_flight.get(m.as_str(), *r))
            .collect();
        self.in_flight.apply(&old, false, &mut self.replicas);
        self.in_flight.apply(&entries, true, &mut self.replicas);
        let fell = old
            .iter()
            .zip(before)
            .any(|((m, r, _), was)| self.in_flight.get(m.as_str(), *r) < was);
        if !entries.is_empty() {
            self.in_flight
                .reporters
                .insert(reporter.to_owned(), (now, entries));
        }
        fell
    }

    /// Forgets reporters not heard from within `ttl`; whether any count went down.
    pub fn expire_in_flight(&mut self, now: Instant, ttl: Duration) -> bool {
        let stale: Vec<String> = self
            .in_flight
            .reporters
            .iter()
            .filter(|(_, (at, _))| now.saturating_duration_since(*at) > ttl)
            .map(|(k, _)| k.clone())
            .collect();
        let mut fell = false;
        for reporter in stale {
            fell |= self.replace_in_flight(&reporter, now, Vec::new());
        }
        fell
    }

    // ---- unloads the replica has not confirmed ----

    /// Notes that `name` was unloaded from `replica` at `now` without waiting for the
    /// replica to let it go; notes older than a minute are dropped (long gone).
    pub fn note_unconfirmed_unload(&mut self, name: &ModelName, replica: ReplicaIdx, now: Instant) {
        self.unconfirmed_unloads
            .retain(|_, at| now.saturating_duration_since(*at) < Duration::from_secs(60));
        self.unconfirmed_unloads
            .insert((name.clone(), replica), now);
    }

    /// Whether `name` was unloaded from `replica` without confirmation (and forgets it).
    pub fn take_unconfirmed_unload(&mut self, name: &ModelName, replica: ReplicaIdx) -> bool {
        self.unconfirmed_unloads
            .remove(&(name.clone(), replica))
            .is_some()
    }

    // ---- scaler and publishing ----

    /// The models the scaler looks at: with a copy, pinned, or with recent traffic.
    pub fn active(&self) -> Vec<ModelName> {
        self.active.iter().cloned().collect()
    }

    /// Drops `name` from the scaler's work list if it has nothing left to scale.
    pub fn settle_active(&mut self, name: &ModelName) {
        let idle = self.get(name).is_none_or(|e| {
            e.copies.is_empty() && e.spec.min_copies == 0 && e.window_requests == 0 && e.rate < 1e-3
        });
        if idle {
            self.looked_up(1);
            if let Some(e) = self.models.get_mut(name) {
                e.rate = 0.0;
            }
            self.active.remove(name);
        }
    }

    /// The models whose routing-table entry may have changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<ModelName> {
        std::mem::take(&mut self.dirty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered model has an entry, loaded or not, so its inline size is most of
    /// the memory per registered model (issue 14: at most 1 KiB, measured by `make bench`
    /// at 940-1,150 bytes with 100,000 models when an entry was 448 bytes; 312 since the
    /// spec's storage URI is boxed). A field most models never use goes in a `Box` or an
    /// `Option<Box<_>>`, as `failure` and `transition` do.
    #[test]
    fn an_entry_stays_small() {
        assert!(
            std::mem::size_of::<Entry>() <= 312,
            "Entry grew to {} bytes",
            std::mem::size_of::<Entry>()
        );
    }
    use crate::spec::StorageUri;

    fn name(n: &str) -> ModelName {
        ModelName::new(n).unwrap()
    }

    fn spec(memory: u64) -> ModelSpec {
        ModelSpec {
            storage_uri: Box::new(StorageUri::File {
                uri: String::new(),
                path: std::path::PathBuf::new(),
            }),
            memory,
            memory_declared: true,
            gpu_memory: 0,
            min_copies: 0,
            max_copies: 1,
            sha256: None,
            model_format: None,
            pool: None,
        }
    }

    fn table(replicas: usize) -> Table {
        let rules = Rules {
            watermarks: Watermarks::default(),
            min_age: Duration::ZERO,
        };
        Table::new(
            (0..replicas).map(|_| (Resources::new(1000, 0), None)),
            rules,
            Instant::now(),
        )
    }

    fn by_use(t: &Table, r: usize) -> Vec<String> {
        t.replica(ReplicaIdx(r))
            .unwrap()
            .by_use()
            .map(|(_, n)| n.to_string())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn sums_and_the_use_order_follow_every_change() {
        let mut t = table(2);
        let now = Instant::now();
        let (r0, r1) = (ReplicaIdx(0), ReplicaIdx(1));
        for (i, m) in ["a", "b", "c"].into_iter().enumerate() {
            t.insert(name(m), spec(100));
            t.add_copy(
                &name(m),
                r0,
                CopyState::Loaded,
                now + Duration::from_secs(i as u64),
            );
        }
        t.add_copy(&name("a"), r1, CopyState::Loading, now);
        assert_eq!(t.replica(r0).unwrap().used(), Resources::new(300, 0));
        assert_eq!((t.replica(r1).unwrap().copies(), t.loaded_copies()), (1, 3));
        assert_eq!(by_use(&t, 0), ["a", "b", "c"]);
        // A request for "a" makes it the most recently used on both replicas.
        t.touch(&name("a"), now + Duration::from_secs(10));
        assert_eq!(by_use(&t, 0), ["b", "c", "a"]);
        // A measured size above the declared one moves both replicas' sums.
        t.set_measured(&name("a"), Resources::new(150, 0));
        assert_eq!(t.replica(r0).unwrap().used(), Resources::new(350, 0));
        assert_eq!(t.replica(r1).unwrap().used(), Resources::new(150, 0));
        t.set_copy_state(&name("a"), r1, CopyState::Loaded, now);
        assert_eq!(t.loaded_copies(), 4);
        t.set_copy_state(
            &name("b"),
            r0,
            CopyState::Unloading,
            now + Duration::from_secs(20),
        );
        assert_eq!(
            by_use(&t, 0),
            ["c", "a", "b"],
            "a state change counts as use"
        );
        assert!(t.remove_copy(&name("b"), r0));
        assert_eq!(t.replica(r0).unwrap().used(), Resources::new(250, 0));
        assert_eq!(t.loaded_copies(), 3);
        // Deleting a model takes its copies out of every index.
        t.remove(&name("a"));
        assert_eq!(by_use(&t, 0), ["c"]);
        assert_eq!(
            (
                t.replica(r1).unwrap().used(),
                t.replica(r1).unwrap().copies()
            ),
            (Resources::ZERO, 0)
        );
        assert_eq!(t.loaded_copies(), 1);
        let dirty = t.take_dirty();
        assert!(dirty.contains("a") && dirty.contains("b") && dirty.contains("c"));
        assert!(t.take_dirty().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_replaces_per_reporter_and_expires() {
        let mut t = table(2);
        let t0 = Instant::now();
        let (r0, r1) = (ReplicaIdx(0), ReplicaIdx(1));
        assert!(!t.replace_in_flight("w1", t0, vec![(name("a"), r0, 2), (name("b"), r1, 1)]));
        t.replace_in_flight("w2", t0, vec![(name("a"), r0, 3)]);
        assert_eq!(t.in_flight().get("a", r0), 5);
        assert_eq!(t.in_flight().model_total("b"), 1);
        assert_eq!(
            (
                t.replica(r0).unwrap().in_flight(),
                t.replica(r1).unwrap().in_flight()
            ),
            (5, 1)
        );
        // w1's next report: "a" finished, "b" still running.
        assert!(t.replace_in_flight("w1", t0, vec![(name("b"), r1, 1)]));
        assert_eq!(t.in_flight().get("a", r0), 3);
        // w2 goes quiet.
        assert!(t.expire_in_flight(t0 + Duration::from_secs(11), Duration::from_secs(10)));
        assert_eq!(t.in_flight().get("a", r0), 0);
        assert_eq!(t.in_flight().get("b", r1), 0, "w1 was not refreshed either");
        assert_eq!(
            (
                t.replica(r0).unwrap().in_flight(),
                t.replica(r1).unwrap().in_flight()
            ),
            (0, 0)
        );
        assert!(t.in_flight.totals.is_empty() && t.in_flight.reporters.is_empty());
        // Saturating: absurd counts neither wrap nor panic.
        t.replace_in_flight(
            "w3",
            t0,
            vec![(name("a"), r0, u64::MAX), (name("a"), r0, 5)],
        );
        assert_eq!(t.in_flight().get("a", r0), u64::MAX);
    }
}
