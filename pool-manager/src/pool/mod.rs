//! The pool: the model table (which model is in which state on which replica) and the
//! operations that change it: register, delete, route (load on first use) and health
//! probes. It owns the only writer of the table; readers get copies (views).
//!
//! Invariants:
//! - at most one load, unload or spec change runs per model at a time (the model's
//!   `op_lock`), so concurrent first requests for a cold model cause exactly one load;
//! - loads run in their own task: a caller that gives up (its wait bound ran out, its client
//!   went away) never leaves a model stuck in `Loading`;
//! - the table's mutex is never held across an `.await`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use crate::metrics::{Metrics, Outcome, ReplicaLabel};
use crate::placement::{self, Candidate, PlacementError};
use crate::replica::ReplicaClient;
use crate::repository::ModelRepository;
use crate::spec::{ModelName, ModelSpec, ReplicaId, SpecError, StoragePolicy};
use mm_wire::RouteResponse;

/// A model's lifecycle state, as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ModelState {
    /// Registered, loaded nowhere.
    Pending,
    /// A load is under way.
    Loading,
    /// Loaded and routable.
    Loaded,
    /// The last load failed; `lastError` says why. Retried on a later request after a
    /// backoff.
    Failed,
}

/// A configured replica: where it is and what it offers.
pub struct Replica {
    pub id: ReplicaId,
    pub url: url::Url,
    /// The replica's HTTP endpoint as an IP literal, for Envoy's ORIGINAL_DST cluster.
    pub address: SocketAddr,
    pub memory: u64,
    pub client: Arc<dyn ReplicaClient>,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            route_wait: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(2),
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
    /// The model can never fit: bigger than every replica (400).
    #[error(
        "model '{name}' needs {need} bytes of memory but the largest replica offers {largest}"
    )]
    TooBig {
        name: String,
        need: u64,
        largest: u64,
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
    /// The load did not finish within the route wait (503).
    #[error("model '{name}' is still loading after {waited:?}; retry later")]
    StillLoading { name: String, waited: Duration },
    /// Server-level request and no replica is healthy (503).
    #[error("no healthy replica")]
    NoHealthyReplica,
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

/// A model as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    pub name: String,
    pub storage_uri: String,
    pub memory: u64,
    pub memory_declared: bool,
    pub state: ModelState,
    pub replicas: Vec<String>,
    pub last_error: Option<String>,
}

/// A replica as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub name: String,
    pub url: String,
    pub address: String,
    pub healthy: bool,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub models: Vec<String>,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Updated,
    Unchanged,
}

struct Entry {
    spec: ModelSpec,
    state: ModelState,
    /// Indices into `Inner::replicas` of the replicas holding (or loading) the model.
    replicas: Vec<usize>,
    last_error: Option<String>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Set while a delete is under way: the model no longer routes.
    deleting: bool,
    op_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    fn new(spec: ModelSpec) -> Self {
        Self {
            spec,
            state: ModelState::Pending,
            replicas: Vec::new(),
            last_error: None,
            failures: 0,
            retry_at: None,
            deleting: false,
            op_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

struct Table {
    models: BTreeMap<ModelName, Entry>,
    healthy: Vec<bool>,
}

impl Table {
    fn used(&self, replica: usize) -> (u64, usize) {
        self.models
            .values()
            .filter(|e| e.replicas.contains(&replica))
            .fold((0, 0), |(bytes, n), e| (bytes + e.spec.memory, n + 1))
    }
}

struct Inner {
    replicas: Vec<Replica>,
    table: Mutex<Table>,
    repository: ModelRepository,
    storage: StoragePolicy,
    metrics: Arc<Metrics>,
    settings: Settings,
    next_any: AtomicUsize,
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
        for r in &replicas {
            let label = ReplicaLabel::new(r.id.as_str());
            metrics
                .replica_capacity
                .get_or_create(&label)
                .set(clamp(r.memory));
            metrics.replica_used.get_or_create(&label).set(0);
            metrics.replica_healthy.get_or_create(&label).set(0);
        }
        let healthy = vec![false; replicas.len()];
        Self {
            inner: Arc::new(Inner {
                replicas,
                table: Mutex::new(Table {
                    models: BTreeMap::new(),
                    healthy,
                }),
                repository,
                storage,
                metrics,
                settings,
                next_any: AtomicUsize::new(0),
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock means a panic while holding it; the table itself is still
        // consistent at every unlock point, so keep serving.
        self.inner
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `name` with the JSON spec `body`, or updates it. An update that changes
    /// the spec unloads the old version everywhere; the next request loads the new one.
    pub async fn register(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<(Registered, ModelView), PoolError> {
        let name = ModelName::new(name)?;
        let body = body.to_vec();
        let storage = self.inner.storage.clone();
        let spec = tokio::task::spawn_blocking(move || ModelSpec::from_json(&body, &storage))
            .await
            .map_err(|e| PoolError::Internal(e.to_string()))??;
        let largest = self
            .inner
            .replicas
            .iter()
            .map(|r| r.memory)
            .max()
            .unwrap_or(0);
        if spec.memory > largest {
            return Err(PoolError::TooBig {
                name: name.to_string(),
                need: spec.memory,
                largest,
            });
        }
        loop {
            let lock = {
                let mut t = self.table();
                match t.models.get(&name) {
                    None => {
                        t.models.insert(name.clone(), Entry::new(spec.clone()));
                        drop(t);
                        self.update_gauges();
                        info!(model = %name, uri = spec.storage_uri.as_str(), memory = spec.memory, "model registered");
                        return Ok((Registered::Created, self.view(&name)?));
                    }
                    Some(e) => e.op_lock.clone(),
                }
            };
            let _op = lock.lock().await;
            let old_replicas = {
                let mut t = self.table();
                let Some(entry) = t.models.get_mut(&name) else {
                    continue; // deleted while we waited: register afresh
                };
                if !Arc::ptr_eq(&entry.op_lock, &lock) {
                    continue;
                }
                if entry.spec == spec {
                    drop(t);
                    return Ok((Registered::Unchanged, self.view(&name)?));
                }
                entry.spec = spec.clone();
                entry.state = ModelState::Pending;
                entry.last_error = None;
                entry.failures = 0;
                entry.retry_at = None;
                std::mem::take(&mut entry.replicas)
            };
            self.update_gauges();
            for idx in old_replicas {
                self.unload_from(&name, idx).await;
            }
            info!(model = %name, uri = spec.storage_uri.as_str(), memory = spec.memory, "model spec updated");
            return Ok((Registered::Updated, self.view(&name)?));
        }
    }

    /// Deletes `name`: unloads it from every replica and removes its staged files.
    pub async fn delete(&self, name: &str) -> Result<(), PoolError> {
        let name = ModelName::new(name)?;
        let lock = {
            let mut t = self.table();
            let entry = t
                .models
                .get_mut(&name)
                .filter(|e| !e.deleting)
                .ok_or_else(|| PoolError::UnknownModel(name.to_string()))?;
            entry.deleting = true;
            entry.op_lock.clone()
        };
        let _op = lock.lock().await;
        let replicas = {
            let t = self.table();
            t.models
                .get(&name)
                .map(|e| e.replicas.clone())
                .unwrap_or_default()
        };
        for idx in replicas {
            self.unload_from(&name, idx).await;
        }
        let repository = self.inner.repository.clone();
        let staged = name.clone();
        match tokio::task::spawn_blocking(move || repository.remove(&staged)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(model = %name, error = %e, "removing staged files failed"),
            Err(e) => warn!(model = %name, error = %e, "removing staged files panicked"),
        }
        self.table().models.remove(&name);
        self.update_gauges();
        info!(model = %name, "model deleted");
        Ok(())
    }

    /// Where to send a request for `name`: loads the model first if it is loaded nowhere,
    /// waiting at most the configured route wait.
    pub async fn route(&self, name: &str) -> Result<RouteResponse, PoolError> {
        let model = ModelName::new(name)?;
        if let Some(route) = self.routable(&model)? {
            self.inner.metrics.route(Outcome::Hit);
            return Ok(route);
        }
        // The load runs in its own task so that it finishes even if this caller stops
        // waiting; concurrent callers queue on the model's op lock and find it loaded.
        let pool = self.clone();
        let task_model = model.clone();
        let load = tokio::spawn(async move { pool.load(&task_model).await });
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
        result
    }

    /// The fast path: a route if the model is loaded on a healthy replica.
    fn routable(&self, model: &ModelName) -> Result<Option<RouteResponse>, PoolError> {
        let t = self.table();
        let entry = t
            .models
            .get(model)
            .filter(|e| !e.deleting)
            .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
        if entry.state != ModelState::Loaded {
            return Ok(None);
        }
        Ok(entry
            .replicas
            .iter()
            .find(|&&i| t.healthy[i])
            .map(|&i| self.route_to(Some(model), i)))
    }

    fn route_to(&self, model: Option<&ModelName>, idx: usize) -> RouteResponse {
        let r = &self.inner.replicas[idx];
        RouteResponse {
            model: model.map(ToString::to_string),
            replica: r.id.to_string(),
            address: r.address.to_string(),
        }
    }

    /// Loads `model` unless it is loaded already; the single-flight slow path.
    async fn load(&self, model: &ModelName) -> Result<RouteResponse, PoolError> {
        let lock = {
            let t = self.table();
            let entry = t
                .models
                .get(model)
                .filter(|e| !e.deleting)
                .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
            entry.op_lock.clone()
        };
        let _op = lock.lock().await;
        let (spec, idx) = {
            let mut t = self.table();
            let healthy = t.healthy.clone();
            let entry = t
                .models
                .get_mut(model)
                .filter(|e| !e.deleting)
                .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
            if entry.state == ModelState::Loaded {
                if let Some(&i) = entry.replicas.iter().find(|&&i| healthy[i]) {
                    return Ok(self.route_to(Some(model), i));
                }
                // Loaded only on replicas that have since failed: place it again.
                warn!(model = %model, "model's replicas are unhealthy; placing it again");
                entry.replicas.clear();
                entry.state = ModelState::Pending;
            }
            if entry.state == ModelState::Failed {
                if let Some(at) = entry.retry_at {
                    let now = Instant::now();
                    if now < at {
                        return Err(PoolError::LoadFailed {
                            name: model.to_string(),
                            reason: entry.last_error.clone().unwrap_or_default(),
                            retry_in: Some(at - now),
                        });
                    }
                }
            }
            let need = entry.spec.memory;
            let spec = entry.spec.clone();
            let usage: Vec<(u64, usize)> =
                (0..self.inner.replicas.len()).map(|i| t.used(i)).collect();
            let candidates: Vec<Candidate<'_>> = self
                .inner
                .replicas
                .iter()
                .enumerate()
                .map(|(i, r)| Candidate {
                    id: &r.id,
                    healthy: t.healthy[i],
                    capacity: r.memory,
                    used: usage[i].0,
                    models: usage[i].1,
                })
                .collect();
            let chosen =
                placement::choose(&candidates, need).map_err(|source| PoolError::NoCapacity {
                    name: model.to_string(),
                    source,
                });
            let chosen = match chosen {
                Ok(id) => id.clone(),
                Err(e) => {
                    warn!(model = %model, error = %e, "placement failed");
                    return Err(e);
                }
            };
            let idx = self
                .inner
                .replicas
                .iter()
                .position(|r| r.id == chosen)
                .ok_or_else(|| PoolError::Internal("placement chose an unknown replica".into()))?;
            let entry = t
                .models
                .get_mut(model)
                .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
            entry.state = ModelState::Loading;
            entry.replicas = vec![idx];
            (spec, idx)
        };
        self.update_gauges();
        let replica = &self.inner.replicas[idx];
        info!(model = %model, replica = %replica.id, memory = spec.memory, "placing and loading model");

        let repository = self.inner.repository.clone();
        let staged = model.clone();
        let source = spec.local_dir().to_path_buf();
        let staging = tokio::task::spawn_blocking(move || repository.stage(&staged, &source))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let started = Instant::now();
        let outcome = match staging {
            Ok(()) => replica
                .client
                .load(model.as_str())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let elapsed = started.elapsed();
        let label = ReplicaLabel::new(replica.id.as_str());
        let result = {
            let mut t = self.table();
            let entry = t
                .models
                .get_mut(model)
                .ok_or_else(|| PoolError::Internal("model vanished during its load".into()))?;
            match outcome {
                Ok(()) => {
                    entry.state = ModelState::Loaded;
                    entry.last_error = None;
                    entry.failures = 0;
                    entry.retry_at = None;
                    self.inner.metrics.loads.get_or_create(&label).inc();
                    self.inner
                        .metrics
                        .load_duration
                        .observe(elapsed.as_secs_f64());
                    info!(model = %model, replica = %replica.id, seconds = elapsed.as_secs_f64(), "model loaded");
                    Ok(self.route_to(Some(model), idx))
                }
                Err(reason) => {
                    entry.failures = entry.failures.saturating_add(1);
                    let backoff = backoff(&self.inner.settings, entry.failures);
                    entry.state = ModelState::Failed;
                    entry.replicas.clear();
                    entry.retry_at = Some(Instant::now() + backoff);
                    let reason = format!("replica {}: {reason}", replica.id);
                    entry.last_error = Some(reason.clone());
                    self.inner.metrics.load_failures.get_or_create(&label).inc();
                    warn!(model = %model, replica = %replica.id, error = %reason, "model load failed");
                    Err(PoolError::LoadFailed {
                        name: model.to_string(),
                        reason,
                        retry_in: None,
                    })
                }
            }
        };
        self.update_gauges();
        result
    }

    /// Unloads `model` from replica `idx`, logging (not failing) on error: the callers are
    /// removing the model from the table either way, and a replica that is unreachable has
    /// lost the model anyway.
    async fn unload_from(&self, model: &ModelName, idx: usize) {
        let replica = &self.inner.replicas[idx];
        match replica.client.unload(model.as_str()).await {
            Ok(()) => {
                self.inner
                    .metrics
                    .unloads
                    .get_or_create(&ReplicaLabel::new(replica.id.as_str()))
                    .inc();
                info!(model = %model, replica = %replica.id, "model unloaded");
            }
            Err(e) => warn!(model = %model, replica = %replica.id, error = %e, "unload failed"),
        }
    }

    /// Any healthy replica, round-robin: for requests that name no model.
    pub fn any_replica(&self) -> Result<RouteResponse, PoolError> {
        let t = self.table();
        let n = self.inner.replicas.len();
        let start = self.inner.next_any.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| t.healthy[i])
            .map(|i| self.route_to(None, i))
            .ok_or(PoolError::NoHealthyReplica)
    }

    /// Probes every replica's readiness once, concurrently, and records the results.
    pub async fn probe_replicas(&self) {
        let timeout = self.inner.settings.probe_timeout;
        let probes = self.inner.replicas.iter().map(|r| async move {
            matches!(
                tokio::time::timeout(timeout, r.client.ready()).await,
                Ok(Ok(()))
            )
        });
        let results = futures::future::join_all(probes).await;
        {
            let mut t = self.table();
            for (i, ok) in results.iter().enumerate() {
                if t.healthy[i] != *ok {
                    let r = &self.inner.replicas[i];
                    if *ok {
                        info!(replica = %r.id, "replica became healthy");
                    } else {
                        warn!(replica = %r.id, "replica became unhealthy");
                    }
                }
                t.healthy[i] = *ok;
            }
        }
        self.update_gauges();
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
        for (i, r) in self.inner.replicas.iter().enumerate() {
            let label = ReplicaLabel::new(r.id.as_str());
            m.replica_used.get_or_create(&label).set(clamp(t.used(i).0));
            m.replica_healthy
                .get_or_create(&label)
                .set(i64::from(t.healthy[i]));
        }
    }

    /// One model's view.
    pub fn view(&self, name: &ModelName) -> Result<ModelView, PoolError> {
        let t = self.table();
        t.models
            .get(name)
            .map(|e| self.view_of(name, e))
            .ok_or_else(|| PoolError::UnknownModel(name.to_string()))
    }

    /// Looks a model up by its raw name (validated here).
    pub fn model(&self, name: &str) -> Result<ModelView, PoolError> {
        self.view(&ModelName::new(name)?)
    }

    fn view_of(&self, name: &ModelName, e: &Entry) -> ModelView {
        ModelView {
            name: name.to_string(),
            storage_uri: e.spec.storage_uri.as_str().to_owned(),
            memory: e.spec.memory,
            memory_declared: e.spec.memory_declared,
            state: e.state,
            replicas: e
                .replicas
                .iter()
                .map(|&i| self.inner.replicas[i].id.to_string())
                .collect(),
            last_error: e.last_error.clone(),
        }
    }

    /// Up to `limit` models in name order, starting after `after`; the second value is
    /// whether more follow.
    pub fn models(&self, after: Option<&str>, limit: usize) -> (Vec<ModelView>, bool) {
        use std::ops::Bound;
        let t = self.table();
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_owned()),
            None => Bound::Unbounded,
        };
        let mut iter = t
            .models
            .iter()
            .filter(|(n, _)| match &lower {
                Bound::Excluded(a) => n.as_str() > a.as_str(),
                _ => true,
            })
            .map(|(n, e)| self.view_of(n, e));
        let page: Vec<ModelView> = iter.by_ref().take(limit).collect();
        let more = iter.next().is_some();
        (page, more)
    }

    /// Every replica's view.
    pub fn replicas(&self) -> Vec<ReplicaView> {
        let t = self.table();
        self.inner
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| ReplicaView {
                name: r.id.to_string(),
                url: r.url.to_string(),
                address: r.address.to_string(),
                healthy: t.healthy[i],
                capacity_bytes: r.memory,
                used_bytes: t.used(i).0,
                models: t
                    .models
                    .iter()
                    .filter(|(_, e)| e.replicas.contains(&i))
                    .map(|(n, _)| n.to_string())
                    .collect(),
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
