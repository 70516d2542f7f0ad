//! The pool: the model table (which model is in which state on which replicas) and the
//! operations that change it, one module per concern:
//! - `registry`: register, update, delete and restore models (durably);
//! - `route`: the gateway's route calls, usage reports and any-replica answers;
//! - `place`: placing a copy (reserve, evict, load, record) and unloading one, with `room`
//!   for waiting, in arrival order, until busy models free the memory a load needs;
//! - `health`: replica probes; `reconcile`: the replicas' own indexes as ground truth;
//! - `scale` and `drain`: copies that follow traffic, pins, maintenance;
//! - `views`: what the admin API and the metrics show; `routing`: the table the gateway
//!   routes warm requests by, and its failure reports;
//! - `update`: a new spec for a loaded model, loaded alongside and switched to at once;
//!   `versions`: the version records in the table (restart, follower, new leader);
//!   `aliases`: names that stand for models, by weight.
//!
//! Table entries are named as Triton knows them. A model serves under its own name until
//! an update switches it to a version named `{model}--{digest}`; `Table::resolve` maps
//! the name clients use to the entry that serves it (and every entry point takes client
//! names through it).
//!
//! The state is a `table::Table` behind one mutex, with indexes that keep a placement's
//! work proportional to the replicas and their copies, not to the registry; placement
//! plans from `snapshot::snapshot` of it with [`crate::placement::plan`], exactly as the
//! simulator ([`crate::sim`]) does.
//!
//! Invariants:
//! - at most one load, unload, eviction or spec change runs per model at a time (the
//!   model's op lock), so concurrent first requests for a cold model cause exactly one
//!   load; a placement locks its victims after planning (with `try_lock`, so two
//!   placements can never wait on each other) and plans again if one became busy;
//! - loads run in their own task: a caller that gives up never leaves a model `Loading`;
//! - a model with requests in flight, or loaded or used within the minimum age, or needed
//!   for its `minCopies`, or busy with another operation, is never chosen for eviction;
//! - the table's mutex is never held across an `.await`; the pool's clock is
//!   `tokio::time`, so its tests run on paused time;
//! - the victim order's state (`--eviction`, [`crate::eviction::VictimState`]) has its own
//!   mutex, taken only while the table's is held (never the other way round).

mod aliases;
mod drain;
mod error;
mod files;
mod follow;
mod health;
mod leading;
mod metadata;
mod place;
mod reconcile;
mod registry;
mod room;
mod route;
mod routing;
mod scale;
mod settings;
pub(crate) mod snapshot;
pub(crate) mod table;
mod update;
mod versions;
mod views;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::{Metrics, ReplicaLabel, ResourceLabel};
use crate::placement::Resources;
use crate::replica::ReplicaClient;
use crate::repository::ModelRepository;
use crate::spec::{ReplicaId, StoragePolicy};
use crate::store::Store;

pub use aliases::{AliasRequest, AliasView};
pub use drain::DrainPass;
pub use error::PoolError;
pub use leading::{Followed, Intervals};
pub use metadata::Asked;
pub use reconcile::Reconciled;
pub use registry::Registered;
pub use settings::{
    check_retire_grace, ScaleSettings, Settings, SettingsError, RETIRE_GRACE_RANGE,
};
pub use table::{CopyState, ModelState, ReplicaIdx};
pub use update::{Transition, TransitionState};
pub use views::{CopyView, ModelView, ReplicaView};

use table::Table;

/// A configured replica: where it is and what it offers.
pub struct Replica {
    pub id: ReplicaId,
    pub url: url::Url,
    /// The replica's HTTP endpoint as an IP literal (for Envoy's ORIGINAL_DST cluster), if
    /// its name resolved at start; the probes resolve it again and follow changes.
    pub address: Option<SocketAddr>,
    /// Port of its gRPC endpoint on the same address, if it serves gRPC.
    pub grpc_port: Option<u16>,
    pub capacity: Resources,
    pub client: Arc<dyn ReplicaClient>,
}

struct Inner {
    replicas: Vec<Replica>,
    /// Replica names to indexes, for reports that name them.
    replica_names: HashMap<String, ReplicaIdx>,
    table: Mutex<Table>,
    /// The victim order and what it remembers (GDSF's counts, load times, inflation).
    victims: Mutex<crate::eviction::VictimState>,
    repository: ModelRepository,
    storage: StoragePolicy,
    metrics: Arc<Metrics>,
    gauges: views::Gauges,
    settings: Settings,
    next_any: AtomicUsize,
    routing: routing::Routing,
    /// Whether this instance leads, and what it follows when it does not.
    leading: leading::Leading,
    store: Option<Store>,
    /// Kept metadata waiting to be written to `store` in one commit (metadata.rs).
    metadata_queue: metadata::MetadataQueue,
    name_locks: Vec<tokio::sync::Mutex<()>>,
    /// Bounds the requests held waiting for a load.
    waiting: Arc<tokio::sync::Semaphore>,
    room: room::Room,
    events: crate::events::Events,
    drains: drain::Drains,
    /// The model cache and how files reach replicas ([`Pool::attach_storage`]).
    model_storage: std::sync::OnceLock<Arc<crate::storage::Storage>>,
}

/// The pool; cheap to clone (all clones share one table).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    pub fn new(
        replicas: Vec<Replica>,
        repository: ModelRepository,
        storage: StoragePolicy,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        Self::with_store(replicas, repository, storage, metrics, settings, None)
    }

    /// Like [`Pool::new`], recording registrations in `store` before acknowledging them.
    pub fn with_store(
        replicas: Vec<Replica>,
        repository: ModelRepository,
        storage: StoragePolicy,
        metrics: Arc<Metrics>,
        settings: Settings,
        store: Option<Store>,
    ) -> Self {
        let gauges = views::Gauges::new(&metrics, &replicas);
        let epoch = tokio::time::Instant::now();
        let table = Table::new(
            replicas.iter().map(|r| (r.capacity, r.address)),
            settings.rules(),
            epoch,
        );
        let victims =
            crate::eviction::VictimState::with_config(settings.eviction, settings.gdsf, epoch);
        metrics.set_eviction_policy(&settings.order_in_force());
        let max_waiting = settings.max_waiting.max(1);
        let events = crate::events::Events::new(settings.events_capacity);
        let drains = drain::Drains::new(replicas.len());
        let replica_names = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.to_string(), ReplicaIdx::new(i)))
            .collect();
        Self {
            inner: Arc::new(Inner {
                replicas,
                replica_names,
                table: Mutex::new(table),
                victims: Mutex::new(victims),
                repository,
                storage,
                metrics,
                gauges,
                settings,
                next_any: AtomicUsize::new(0),
                routing: routing::Routing::new(),
                leading: leading::Leading::new(),
                store,
                metadata_queue: std::sync::Mutex::default(),
                name_locks: (0..1024).map(|_| tokio::sync::Mutex::new(())).collect(),
                waiting: Arc::new(tokio::sync::Semaphore::new(max_waiting)),
                room: room::Room::new(),
                events,
                drains,
                model_storage: std::sync::OnceLock::new(),
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock means a panic while holding it; the table itself is consistent at
        // every unlock point, so keep serving.
        self.inner
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The victim order's state. Take it only while holding the table's lock (or without
    /// it), never the other way round.
    fn victims(&self) -> MutexGuard<'_, crate::eviction::VictimState> {
        self.inner
            .victims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration of replica `idx` (indexes come from the table, which has one
    /// state per configured replica).
    fn config(&self, idx: ReplicaIdx) -> &Replica {
        &self.inner.replicas[idx.index()]
    }

    /// The index of the replica named `name`, if one is configured.
    fn replica_index(&self, name: &str) -> Option<ReplicaIdx> {
        self.inner.replica_names.get(name).copied()
    }

    /// The pool's recent events.
    pub fn events(&self) -> &crate::events::Events {
        &self.inner.events
    }

    /// The pool's counters, for the admin API's own (refused calls).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }
}

impl Pool {
    /// Records a failed load or pull of `model`: its reason, and when it is tried again
    /// (the backoff doubles with each failure in a row).
    fn note_failure(&self, t: &mut Table, model: &crate::spec::ModelName, reason: &str) {
        if let Some(e) = t.get_mut(model) {
            let count = e.failure.as_ref().map_or(0, |f| f.count).saturating_add(1);
            e.failure = Some(Box::new(table::Failure {
                reason: reason.to_owned(),
                count,
                retry_at: tokio::time::Instant::now() + backoff(&self.inner.settings, count),
            }));
        }
    }
}

fn backoff(settings: &Settings, failures: u32) -> std::time::Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    settings
        .retry_base
        .saturating_mul(factor)
        .min(settings.retry_max)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Labels of one replica's gauges.
fn resource_label(r: &Replica, resource: &'static str) -> ResourceLabel {
    ResourceLabel {
        replica: r.id.to_string(),
        resource,
    }
}

fn replica_label(r: &Replica) -> ReplicaLabel {
    ReplicaLabel::new(r.id.as_str())
}

#[cfg(test)]
mod tests;
