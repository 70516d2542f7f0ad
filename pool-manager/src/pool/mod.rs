//! The pool: the model table (which model is in which state on which replicas) and the
//! operations that change it: register, delete, route (load on first use, evicting the
//! least recently used models when a replica is above its high watermark), usage reports
//! from the gateway, copy scaling and pinning, and health probes.
//!
//! Invariants:
//! - at most one load, unload, eviction or spec change runs per model at a time (the
//!   model's `op_lock`), so concurrent first requests for a cold model cause exactly one
//!   load; a placement that evicts holds the victims' locks too (taken with `try_lock`, so
//!   two placements can never wait on each other);
//! - loads run in their own task: a caller that gives up never leaves a model `Loading`;
//! - a model with requests in flight, or loaded or used within the minimum age, or needed
//!   for its `minCopies`, is never chosen for eviction;
//! - the table's mutex is never held across an `.await`.

mod drain;
mod files;
mod place;
mod reconcile;
mod routing;
mod scale;
mod table;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::info;

use crate::events::{EventKind, NewEvent};
use crate::metrics::{Metrics, Outcome, ReplicaLabel, ResourceLabel};
use crate::placement::{PlacementError, Resources, Watermarks};
use crate::replica::ReplicaClient;
use crate::repository::ModelRepository;
use crate::spec::{ModelName, ModelSpec, ReplicaId, SpecError, StoragePolicy};
use crate::store::Store;
use mm_wire::{RouteResponse, UsageReport};

pub use drain::DrainPass;
pub use reconcile::Reconciled;
pub use table::{CopyState, ModelState};
use table::{Entry, Table};

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

/// When a model's copies are scaled up and down.
#[derive(Debug, Clone)]
pub struct ScaleSettings {
    /// How often the scaler looks at traffic (and re-loads pinned models).
    pub tick: Duration,
    /// A copy is added when, per loaded copy, the request rate exceeds this...
    pub up_rate: f64,
    /// ...or the requests in flight exceed this...
    pub up_in_flight: f64,
    /// ...for this many ticks in a row.
    pub up_ticks: u32,
    /// An extra copy is removed when the remaining copies would each see less than half
    /// of both thresholds, for this many ticks in a row.
    pub down_ticks: u32,
}

impl Default for ScaleSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            up_rate: 50.0,
            up_in_flight: 4.0,
            up_ticks: 3,
            down_ticks: 30,
        }
    }
}

/// Tunables of the pool.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a route call waits for a cold model's load before answering "still loading".
    pub route_wait: Duration,
    /// First retry delay after a failed load; doubles per failure up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Bound on one readiness probe.
    pub probe_timeout: Duration,
    pub watermarks: Watermarks,
    /// A model loaded or used more recently than this is not evicted (guards against
    /// churn, and covers the gap before the gateway's next usage report).
    pub min_age: Duration,
    /// Bound on waiting for a replica to finish an unload before loading into the memory it
    /// frees (Triton answers the unload call before the model is gone).
    pub unload_wait: Duration,
    /// A usage reporter (one gateway worker) not heard from for this long is forgotten.
    pub report_ttl: Duration,
    pub scale: ScaleSettings,
    /// Most requests held waiting for a load at once; past it they get 503 at once.
    pub max_waiting: usize,
    /// Consecutive failed probes before a replica is taken out of placement and routing.
    pub unhealthy_after: u32,
    /// Unload models a replica has loaded that the registry does not know.
    pub unload_unknown: bool,
    /// How replica host names are resolved (again on every probe).
    pub resolver: crate::resolve::Resolver,
    /// Events kept for the admin API's event list.
    pub events_capacity: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            route_wait: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(2),
            watermarks: Watermarks::default(),
            min_age: Duration::from_secs(10),
            unload_wait: Duration::from_secs(10),
            report_ttl: Duration::from_secs(10),
            scale: ScaleSettings::default(),
            max_waiting: 1000,
            unhealthy_after: 2,
            unload_unknown: true,
            resolver: crate::resolve::Resolver::default(),
            events_capacity: crate::events::DEFAULT_CAPACITY,
        }
    }
}

/// Why a pool operation failed; [`crate::admin`] maps each to an HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// No model of that name is registered (404).
    #[error("model '{0}' is not registered")]
    UnknownModel(String),
    /// The registration itself is wrong (400).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The model can never fit: more than any replica allows under its high watermark (400).
    #[error("model '{name}' needs {need_memory} bytes of memory and {need_gpu} of GPU memory; no replica allows that much under its high watermark ({high:.0}% of capacity)")]
    TooBig {
        name: String,
        need_memory: u64,
        need_gpu: u64,
        high: f64,
    },
    /// More pinned copies than replicas that could hold them (400).
    #[error(
        "model '{name}' asks for {min_copies} pinned copies but only {fit} replicas can hold it"
    )]
    TooManyCopies {
        name: String,
        min_copies: u32,
        fit: usize,
    },
    /// The load was tried and failed; `reason` is the replica's own (503).
    #[error("model '{name}' failed to load: {reason}{}", retry_text(*.retry_in))]
    LoadFailed {
        name: String,
        reason: String,
        retry_in: Option<Duration>,
    },
    /// No replica can take the model now (503).
    #[error("no replica can take model '{name}': {source}")]
    NoCapacity {
        name: String,
        source: PlacementError,
    },
    /// Room was planned but freeing it failed (503).
    #[error(
        "model '{name}' could not be placed: unloading '{victim}' from {replica} failed: {reason}"
    )]
    EvictionFailed {
        name: String,
        victim: String,
        replica: String,
        reason: String,
    },
    /// The load did not finish within the route wait (503).
    #[error("model '{name}' is still loading after {waited:?}; retry later")]
    StillLoading { name: String, waited: Duration },
    /// Server-level request and no replica is healthy (503).
    #[error("no healthy replica")]
    NoHealthyReplica,
    /// The durable registry could not record the change; nothing changed (503).
    #[error("the registry could not be saved: {0}")]
    Store(String),
    /// Too many requests are already waiting for model loads (503).
    #[error("too many requests are waiting for models to load ({0}); retry later")]
    Overloaded(usize),
    /// A usage report that does not follow the contract (400).
    #[error("invalid usage report: {0}")]
    BadReport(String),
    /// More gateway workers report requests in flight than the pool-manager keeps (429).
    #[error("more than {0} reporters have requests in flight; retry later")]
    TooManyReporters(usize),
    /// No replica of that name is configured (404).
    #[error("replica '{0}' is not configured")]
    UnknownReplica(String),
    /// A bug or a panicked task (500).
    #[error("internal error: {0}")]
    Internal(String),
}

fn retry_text(retry_in: Option<Duration>) -> String {
    match retry_in {
        Some(d) => format!(" (next attempt in {:.1}s)", d.as_secs_f64()),
        None => String::new(),
    }
}

/// One copy as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CopyView {
    pub replica: String,
    pub state: CopyState,
}

/// A model as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    pub name: String,
    /// Redacted: no user info, no query string (only the durable store keeps them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_uri: Option<String>,
    /// The named store (and path) the files come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::spec::StoreRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_format: Option<crate::spec::ModelFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The archive's checksum, when the spec gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub memory: u64,
    pub memory_declared: bool,
    pub gpu_memory: u64,
    /// What the replica measured, when more than declared (0 otherwise).
    pub measured_memory: u64,
    pub measured_gpu_memory: u64,
    pub min_copies: u32,
    pub max_copies: u32,
    pub state: ModelState,
    /// Replicas holding a loaded copy.
    pub replicas: Vec<String>,
    pub copies: Vec<CopyView>,
    pub last_error: Option<String>,
    /// Seconds since the last request, if any.
    pub idle_seconds: Option<f64>,
    pub in_flight: u64,
    /// Smoothed requests per second.
    pub request_rate: f64,
}

/// A replica as the admin API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub name: String,
    pub url: String,
    pub address: String,
    pub healthy: bool,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub gpu_capacity_bytes: u64,
    pub gpu_used_bytes: u64,
    pub in_flight: u64,
    pub models: Vec<String>,
    /// Takes no new copies; its copies are moving away (see `POST .../drain`).
    pub draining: bool,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Updated,
    Unchanged,
}

struct Inner {
    replicas: Vec<Replica>,
    table: Mutex<Table>,
    repository: ModelRepository,
    storage: StoragePolicy,
    metrics: Arc<Metrics>,
    settings: Settings,
    next_any: AtomicUsize,
    /// Instants are turned into eviction ranks relative to this.
    epoch: Instant,
    routing: routing::Routing,
    store: Option<Store>,
    name_locks: Vec<tokio::sync::Mutex<()>>,
    /// Bounds the requests held waiting for a load.
    waiting: Arc<tokio::sync::Semaphore>,
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
        for r in &replicas {
            for (resource, value) in [
                ("memory", r.capacity.memory),
                ("gpu_memory", r.capacity.gpu_memory),
            ] {
                let label = ResourceLabel {
                    replica: r.id.to_string(),
                    resource,
                };
                metrics
                    .replica_capacity
                    .get_or_create(&label)
                    .set(clamp(value));
                metrics.replica_used.get_or_create(&label).set(0);
            }
            metrics
                .replica_healthy
                .get_or_create(&ReplicaLabel::new(r.id.as_str()))
                .set(0);
        }
        let mut table = Table::new(replicas.len());
        table.addresses = replicas.iter().map(|r| r.address).collect();
        let settings_max_waiting = settings.max_waiting.max(1);
        let settings_events_capacity = settings.events_capacity;
        let replica_count = replicas.len();
        Self {
            inner: Arc::new(Inner {
                replicas,
                table: Mutex::new(table),
                repository,
                storage,
                metrics,
                settings,
                next_any: AtomicUsize::new(0),
                epoch: Instant::now(),
                routing: routing::Routing::new(),
                store,
                name_locks: (0..1024).map(|_| tokio::sync::Mutex::new(())).collect(),
                waiting: Arc::new(tokio::sync::Semaphore::new(settings_max_waiting)),
                events: crate::events::Events::new(settings_events_capacity),
                drains: drain::Drains::new(replica_count),
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

    /// Parses and checks a registration (spec, storage, fits), changing nothing.
    async fn checked_spec(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<(ModelName, ModelSpec), PoolError> {
        let name = ModelName::new(name)?;
        let body = body.to_vec();
        let storage = self.inner.storage.clone();
        let spec = tokio::task::spawn_blocking(move || ModelSpec::from_json(&body, &storage))
            .await
            .map_err(|e| PoolError::Internal(e.to_string()))??;
        self.check_fits(&name, &spec)?;
        Ok((name, spec))
    }

    /// What [`Pool::register`] would do with this spec (a dry run): the same checks and
    /// the same errors, and nothing changed.
    pub async fn check_registration(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<Registered, PoolError> {
        let (name, spec) = self.checked_spec(name, body).await?;
        Ok(match self.table().models.get(&name) {
            None => Registered::Created,
            Some(e) if e.spec.is_unchanged_by(&spec) => Registered::Unchanged,
            Some(_) => Registered::Updated,
        })
    }

    /// Registers `name` with the JSON spec `body`, or updates it. A new `storageUri` unloads
    /// the old version everywhere (the next request loads the new one); other changes apply
    /// in place. A pinned model (`minCopies >= 1`) starts loading at once.
    pub async fn register(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<(Registered, ModelView), PoolError> {
        let (name, spec) = self.checked_spec(name, body).await?;
        // One registration or delete per name at a time, from the durable write to the
        // table, so the store and the table agree on which spec won.
        let _name = self.name_lock(&name).lock().await;
        let existing = {
            let t = self.table();
            t.models
                .get(&name)
                .map(|e| (e.spec.clone(), e.op_lock.clone()))
        };
        let outcome = match existing {
            Some((old, _)) if old.is_unchanged_by(&spec) => Registered::Unchanged,
            None => {
                self.persist_put(&name, &spec).await?;
                self.table()
                    .models
                    .insert(name.clone(), Entry::new(spec.clone()));
                Registered::Created
            }
            Some((_, lock)) => {
                self.persist_put(&name, &spec).await?;
                let _op = lock.lock().await;
                let old = {
                    let mut t = self.table();
                    let entry = t.models.get_mut(&name).ok_or_else(|| {
                        PoolError::Internal("model vanished under its name lock".into())
                    })?;
                    let reload = entry.spec.needs_reload(&spec);
                    entry.spec = spec.clone();
                    entry.failure = None;
                    entry.measured = Resources::ZERO;
                    if reload {
                        entry.inputs = None;
                        for copy in &mut entry.copies {
                            copy.state = CopyState::Unloading;
                        }
                        entry.copies.iter().map(|c| c.replica).collect()
                    } else {
                        Vec::new()
                    }
                };
                for replica in old {
                    let _ = self.unload_copy(&name, replica, "spec changed", true).await;
                }
                Registered::Updated
            }
        };
        match outcome {
            // A new model is loaded nowhere: nothing routable or placed changed, so only the
            // registry size moves (a full gauge and table pass per registration would be
            // quadratic over a bulk registration of many models).
            Registered::Created => {
                let n = self.table().models.len() as u64;
                self.inner.metrics.models_registered.set(clamp(n));
            }
            Registered::Updated => self.update_gauges(),
            Registered::Unchanged => {}
        }
        if outcome != Registered::Unchanged {
            info!(model = %name, storage = %spec.storage_uri, memory = spec.memory,
                  gpu_memory = spec.gpu_memory, min_copies = spec.min_copies,
                  max_copies = spec.max_copies, ?outcome, "model registered");
            let kind = if outcome == Registered::Created {
                EventKind::Registered
            } else {
                EventKind::Updated
            };
            self.events().record(
                NewEvent::new(kind)
                    .model(&name)
                    .size(spec.memory, spec.gpu_memory),
            );
        }
        if spec.min_copies > 0 && outcome != Registered::Unchanged {
            let pool = self.clone();
            let pinned = name.clone();
            tokio::spawn(async move { pool.ensure_pinned(&pinned).await });
        }
        Ok((outcome, self.view(&name)?))
    }

    fn name_lock(&self, name: &ModelName) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name.as_str());
        let locks = &self.inner.name_locks;
        &locks[(hash as usize) % locks.len()]
    }

    async fn persist_put(&self, name: &ModelName, spec: &ModelSpec) -> Result<(), PoolError> {
        match &self.inner.store {
            Some(store) => store
                .put(name, spec)
                .await
                .map_err(|e| PoolError::Store(e.to_string())),
            None => Ok(()),
        }
    }

    async fn persist_delete(&self, name: &ModelName) -> Result<(), PoolError> {
        match &self.inner.store {
            Some(store) => store
                .delete(name)
                .await
                .map_err(|e| PoolError::Store(e.to_string())),
            None => Ok(()),
        }
    }

    /// Puts models read back from the durable store into the table (as `Pending`: the
    /// replicas' own indexes say what is loaded, see [`Pool::reconcile`]).
    pub fn restore(&self, models: Vec<(ModelName, ModelSpec)>) {
        let mut t = self.table();
        for (name, spec) in models {
            t.models.insert(name, Entry::new(spec));
        }
        drop(t);
        self.update_gauges();
    }

    /// Refuses specs no replica could ever hold under its high watermark.
    fn check_fits(&self, name: &ModelName, spec: &ModelSpec) -> Result<(), PoolError> {
        let need = Resources::new(spec.memory, spec.gpu_memory);
        let high = self.inner.settings.watermarks.high;
        let fit = self
            .inner
            .replicas
            .iter()
            .filter(|r| need.fits_in(r.capacity.scale(high)))
            .count();
        if fit == 0 {
            return Err(PoolError::TooBig {
                name: name.to_string(),
                need_memory: need.memory,
                need_gpu: need.gpu_memory,
                high: high * 100.0,
            });
        }
        if spec.min_copies as usize > fit {
            return Err(PoolError::TooManyCopies {
                name: name.to_string(),
                min_copies: spec.min_copies,
                fit,
            });
        }
        Ok(())
    }

    /// Deletes `name`: forgets it durably, then unloads it from every replica and removes
    /// its staged files.
    pub async fn delete(&self, name: &str) -> Result<(), PoolError> {
        let name = ModelName::new(name)?;
        let _name = self.name_lock(&name).lock().await;
        if !self.table().models.contains_key(&name) {
            return Err(PoolError::UnknownModel(name.to_string()));
        }
        self.persist_delete(&name).await?;
        let lock = {
            let mut t = self.table();
            let entry = t
                .models
                .get_mut(&name)
                .ok_or_else(|| PoolError::UnknownModel(name.to_string()))?;
            entry.deleting = true;
            entry.op_lock.clone()
        };
        self.update_gauges();
        let _op = lock.lock().await;
        let replicas: Vec<usize> = {
            let mut t = self.table();
            match t.models.get_mut(&name) {
                Some(e) => {
                    for copy in &mut e.copies {
                        copy.state = CopyState::Unloading;
                    }
                    e.copies.iter().map(|c| c.replica).collect()
                }
                None => Vec::new(),
            }
        };
        for replica in replicas {
            let _ = self.unload_copy(&name, replica, "deleted", true).await;
        }
        let repository = self.inner.repository.clone();
        let staged = name.clone();
        match tokio::task::spawn_blocking(move || repository.remove(&staged)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(model = %name, error = %e, "removing staged files failed"),
            Err(e) => tracing::warn!(model = %name, error = %e, "removing staged files panicked"),
        }
        self.table().models.remove(&name);
        self.update_gauges();
        info!(model = %name, "model deleted");
        self.events()
            .record(NewEvent::new(EventKind::Deleted).model(&name));
        Ok(())
    }

    /// Where to send a request for `name`: loads the model first if it is loaded nowhere
    /// (evicting if needed), waiting at most the configured route wait. Counts as use.
    pub async fn route(&self, name: &str) -> Result<RouteResponse, PoolError> {
        let model = ModelName::new(name)?;
        if let Some(route) = self.routable(&model)? {
            self.inner.metrics.route(Outcome::Hit);
            return Ok(route);
        }
        let started = Instant::now();
        let Ok(_waiting) = self.inner.waiting.clone().try_acquire_owned() else {
            self.inner.metrics.route(Outcome::Error);
            return Err(PoolError::Overloaded(self.inner.settings.max_waiting));
        };
        // The load runs in its own task so that it finishes even if this caller stops
        // waiting; concurrent callers queue on the model's op lock and find it loaded.
        let pool = self.clone();
        let task_model = model.clone();
        let load = tokio::spawn(async move { pool.place_for_demand(&task_model).await });
        let waited = self.inner.settings.route_wait;
        let result = match tokio::time::timeout(waited, load).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(PoolError::Internal(join.to_string())),
            Err(_) => Err(PoolError::StillLoading {
                name: model.to_string(),
                waited,
            }),
        };
        self.inner.metrics.route(match &result {
            Ok(_) => Outcome::Miss,
            Err(PoolError::UnknownModel(_)) => Outcome::NotFound,
            Err(_) => Outcome::Error,
        });
        if result.is_ok() {
            self.inner
                .metrics
                .cold_wait
                .observe(started.elapsed().as_secs_f64());
            self.touch(&model);
        }
        result
    }

    fn touch(&self, model: &ModelName) {
        if let Some(e) = self.table().models.get_mut(model) {
            e.last_used = Some(Instant::now());
        }
    }

    /// The fast path: a route if the model is loaded on a healthy replica. Among copies,
    /// the one with the fewest requests in flight, round-robin among equals.
    fn routable(&self, model: &ModelName) -> Result<Option<RouteResponse>, PoolError> {
        let mut guard = self.table();
        let t = &mut *guard;
        let entry = t
            .models
            .get_mut(model)
            .filter(|e| !e.deleting)
            .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
        let candidates: Vec<(u64, usize)> = entry
            .routable(&t.healthy)
            .map(|c| (t.in_flight.get(model.as_str(), c.replica), c.replica))
            .collect();
        let Some(least) = candidates.iter().map(|(n, _)| *n).min() else {
            return Ok(None);
        };
        let tied: Vec<usize> = candidates
            .iter()
            .filter(|(n, _)| *n == least)
            .map(|(_, r)| *r)
            .collect();
        entry.next_copy = entry.next_copy.wrapping_add(1);
        let replica = tied[entry.next_copy % tied.len()];
        entry.last_used = Some(Instant::now());
        let inputs = entry.inputs.clone();
        Ok(self.route_to(t, Some(model), replica, inputs))
    }

    /// Where to send a request for `model` on replica `idx`; `None` if the replica's name
    /// does not resolve now.
    fn route_to(
        &self,
        t: &Table,
        model: Option<&ModelName>,
        idx: usize,
        inputs: Option<Vec<mm_wire::TensorSpec>>,
    ) -> Option<RouteResponse> {
        let endpoint = self.endpoint(t, idx)?;
        Some(RouteResponse {
            model: model.map(ToString::to_string),
            replica: endpoint.replica,
            address: endpoint.address,
            grpc_address: endpoint.grpc_address,
            inputs,
        })
    }

    /// Any healthy replica, round-robin: for requests that name no model.
    pub fn any_replica(&self) -> Result<RouteResponse, PoolError> {
        let t = self.table();
        let n = self.inner.replicas.len();
        let start = self.inner.next_any.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| t.healthy[i])
            .find_map(|i| self.route_to(&t, None, i, None))
            .ok_or(PoolError::NoHealthyReplica)
    }

    /// Takes a gateway worker's usage report: request counts feed recency and request
    /// rates; in-flight counts protect models from eviction. Entries naming an unknown
    /// model or replica are skipped (the model may just have been deleted). Returns how
    /// many entries were applied.
    pub fn report_usage(&self, report: UsageReport) -> Result<usize, PoolError> {
        let metrics = &self.inner.metrics;
        if let Err(e) = report.validate() {
            metrics.report_ignored("usage", "invalid", 1);
            return Err(PoolError::BadReport(e.to_string()));
        }
        let now = Instant::now();
        let mut in_flight = Vec::new();
        let (mut applied, mut unknown_model, mut unknown_replica) = (0, 0, 0);
        let mut t = self.table();
        if !t.in_flight.has_room_for(&report.reporter) {
            drop(t);
            metrics.report_ignored("usage", "too_many_reporters", 1);
            return Err(PoolError::TooManyReporters(table::MAX_REPORTERS));
        }
        for entry in &report.entries {
            let Some(replica) = self
                .inner
                .replicas
                .iter()
                .position(|r| r.id.as_str() == entry.replica)
            else {
                unknown_replica += 1;
                continue;
            };
            let Some(model) = ModelName::new(&entry.model)
                .ok()
                .and_then(|name| t.models.get_mut(&name).map(|m| (name, m)))
            else {
                unknown_model += 1;
                continue;
            };
            let (name, model) = model;
            if entry.requests > 0 || entry.in_flight > 0 {
                model.last_used = Some(now);
            }
            model.window_requests = model.window_requests.saturating_add(entry.requests);
            if entry.requests > 0 {
                self.inner
                    .metrics
                    .model_requests(name.as_str(), entry.requests);
            }
            if entry.in_flight > 0 {
                in_flight.push((name.clone(), replica, entry.in_flight));
            }
            applied += 1;
        }
        t.in_flight.replace(&report.reporter, now, in_flight);
        drop(t);
        metrics.report_ignored("usage", "unknown_model", unknown_model);
        metrics.report_ignored("usage", "unknown_replica", unknown_replica);
        Ok(applied)
    }

    /// Probes every replica's readiness once, concurrently, and records the results. A
    /// replica is taken out after `unhealthy_after` failures in a row and back in after one
    /// success, and is then reconciled (it may have restarted empty).
    pub async fn probe_replicas(&self) {
        let timeout = self.inner.settings.probe_timeout;
        let resolver = &self.inner.settings.resolver;
        let probes = self.inner.replicas.iter().map(|r| async move {
            // Resolve the name again: a replica's pod may have come back elsewhere, or be
            // gone (a StatefulSet scaled down), or be new.
            let host = r.url.host_str().unwrap_or_default();
            let port = r.url.port_or_known_default().unwrap_or(80);
            let address = resolver.resolve(host, port).await;
            if let Ok(a) = address {
                r.client.set_address(a);
            }
            let ready = address.is_ok()
                && matches!(
                    tokio::time::timeout(timeout, r.client.ready()).await,
                    Ok(Ok(()))
                );
            (address.ok(), ready)
        });
        let outcomes = futures::future::join_all(probes).await;
        let mut moved = false;
        {
            let mut t = self.table();
            for (i, (address, _)) in outcomes.iter().enumerate() {
                if let Some(a) = address {
                    if t.addresses[i] != Some(*a) {
                        if t.addresses[i].is_some() {
                            info!(replica = %self.inner.replicas[i].id, address = %a,
                                  "replica moved to a new address");
                        }
                        t.addresses[i] = Some(*a);
                        moved = true;
                    }
                }
            }
        }
        if moved {
            self.publish();
        }
        let results: Vec<bool> = outcomes.iter().map(|(_, ready)| *ready).collect();
        let mut returned = Vec::new();
        {
            let mut t = self.table();
            let threshold = self.inner.settings.unhealthy_after.max(1);
            for (i, ok) in results.iter().enumerate() {
                let r = &self.inner.replicas[i];
                if *ok {
                    t.probe_failures[i] = 0;
                    if !t.healthy[i] {
                        info!(replica = %r.id, "replica became healthy");
                        self.events()
                            .record(NewEvent::new(EventKind::ReplicaHealthy).replica(&r.id));
                        t.healthy[i] = true;
                        returned.push(i);
                    }
                } else {
                    t.probe_failures[i] = t.probe_failures[i].saturating_add(1);
                    // A replica never seen healthy is out from its first failure.
                    if t.healthy[i] && t.probe_failures[i] >= threshold {
                        tracing::warn!(replica = %r.id, failures = t.probe_failures[i],
                                       "replica became unhealthy");
                        self.events().record(
                            NewEvent::new(EventKind::ReplicaUnhealthy)
                                .replica(&r.id)
                                .reason(format!("{} failed probes", t.probe_failures[i])),
                        );
                        t.healthy[i] = false;
                    }
                }
            }
        }
        self.update_gauges();
        for i in returned {
            if let Err(e) = self.reconcile_replica(i).await {
                tracing::warn!(replica = %self.inner.replicas[i].id, error = %e, "reconcile failed");
            }
        }
    }

    /// Counts one failed probe of replica `idx` made to check a gateway report; takes the
    /// replica out of placement and routing once `unhealthy_after` probes in a row have
    /// failed (these and the periodic ones alike), never sooner. Returns whether it is out.
    pub(super) fn report_probe_failed(&self, idx: usize) -> bool {
        let out = {
            let mut t = self.table();
            t.probe_failures[idx] = t.probe_failures[idx].saturating_add(1);
            let failures = t.probe_failures[idx];
            if t.healthy[idx] && failures >= self.inner.settings.unhealthy_after.max(1) {
                self.events().record(
                    NewEvent::new(EventKind::ReplicaUnhealthy)
                        .replica(&self.inner.replicas[idx].id)
                        .reason(format!(
                            "unreachable from the gateway; {failures} failed probes"
                        )),
                );
                t.healthy[idx] = false;
                true
            } else {
                !t.healthy[idx]
            }
        };
        self.update_gauges();
        out
    }

    /// A probe made to check a gateway report succeeded: the failures in a row start over.
    /// (Only the periodic probes bring an unhealthy replica back, with a reconciliation.)
    pub(super) fn report_probe_succeeded(&self, idx: usize) {
        let mut t = self.table();
        if t.healthy[idx] {
            t.probe_failures[idx] = 0;
        }
    }

    /// Probes replicas forever, every `interval`.
    pub async fn run_probes(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.probe_replicas().await;
        }
    }

    fn update_gauges(&self) {
        let t = self.table();
        let m = &self.inner.metrics;
        m.models_registered.set(clamp(t.models.len() as u64));
        m.copies_loaded.set(clamp(
            t.models.values().map(|e| e.loaded_copies() as u64).sum(),
        ));
        let used_all = t.used_all(self.inner.replicas.len());
        for (i, r) in self.inner.replicas.iter().enumerate() {
            let used = used_all[i];
            for (resource, value) in [("memory", used.memory), ("gpu_memory", used.gpu_memory)] {
                let label = ResourceLabel {
                    replica: r.id.to_string(),
                    resource,
                };
                m.replica_used.get_or_create(&label).set(clamp(value));
            }
            m.replica_healthy
                .get_or_create(&ReplicaLabel::new(r.id.as_str()))
                .set(i64::from(t.healthy[i]));
        }
        drop(t);
        self.publish();
    }

    /// One model's view.
    pub fn view(&self, name: &ModelName) -> Result<ModelView, PoolError> {
        let t = self.table();
        t.models
            .get(name)
            .map(|e| self.view_of(&t, name, e))
            .ok_or_else(|| PoolError::UnknownModel(name.to_string()))
    }

    /// Looks a model up by its raw name (validated here).
    pub fn model(&self, name: &str) -> Result<ModelView, PoolError> {
        self.view(&ModelName::new(name)?)
    }

    fn view_of(&self, t: &Table, name: &ModelName, e: &Entry) -> ModelView {
        let replica_name = |i: usize| self.inner.replicas[i].id.to_string();
        ModelView {
            name: name.to_string(),
            storage_uri: e.spec.storage_uri.redacted_uri(),
            storage: e.spec.storage_uri.store_ref(),
            model_format: e.spec.model_format.clone(),
            pool: e.spec.pool.clone(),
            sha256: e.spec.sha256.clone(),
            memory: e.spec.memory,
            memory_declared: e.spec.memory_declared,
            gpu_memory: e.spec.gpu_memory,
            measured_memory: e.measured.memory,
            measured_gpu_memory: e.measured.gpu_memory,
            min_copies: e.spec.min_copies,
            max_copies: e.spec.max_copies,
            state: e.state(),
            replicas: e
                .copies
                .iter()
                .filter(|c| c.state == CopyState::Loaded)
                .map(|c| replica_name(c.replica))
                .collect(),
            copies: e
                .copies
                .iter()
                .map(|c| CopyView {
                    replica: replica_name(c.replica),
                    state: c.state,
                })
                .collect(),
            last_error: e.failure.as_ref().map(|f| f.reason.clone()),
            idle_seconds: e.last_used.map(|t| t.elapsed().as_secs_f64()),
            in_flight: t.in_flight.model_total(name.as_str()),
            request_rate: e.rate,
        }
    }

    /// Up to `limit` models in name order, starting after `after`; the second value is
    /// whether more follow.
    pub fn models(&self, after: Option<&str>, limit: usize) -> (Vec<ModelView>, bool) {
        use std::ops::Bound;
        let t = self.table();
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut iter = t
            .models
            .range::<str, _>((lower, Bound::Unbounded))
            .map(|(n, e)| self.view_of(&t, n, e));
        let page: Vec<ModelView> = iter.by_ref().take(limit).collect();
        let more = iter.next().is_some();
        (page, more)
    }

    /// Every replica's view.
    pub fn replicas(&self) -> Vec<ReplicaView> {
        let t = self.table();
        let n = self.inner.replicas.len();
        let in_flight = t.in_flight.replica_totals(n);
        let used_all = t.used_all(n);
        let mut models = t.models_by_replica(n);
        self.inner
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let used = used_all[i];
                ReplicaView {
                    name: r.id.to_string(),
                    url: r.url.to_string(),
                    address: t.addresses[i].map(|a| a.to_string()).unwrap_or_default(),
                    healthy: t.healthy[i],
                    capacity_bytes: r.capacity.memory,
                    used_bytes: used.memory,
                    gpu_capacity_bytes: r.capacity.gpu_memory,
                    gpu_used_bytes: used.gpu_memory,
                    in_flight: in_flight[i],
                    draining: self.is_draining(i),
                    models: std::mem::take(&mut models[i]),
                }
            })
            .collect()
    }
}

fn backoff(settings: &Settings, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    settings
        .retry_base
        .saturating_mul(factor)
        .min(settings.retry_max)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
