//! What the outside sees of the pool: the admin API's model and replica views, and the
//! gauges. Reads only; a page of models costs the page, not the registry.

use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use super::table::{CopyState, Entry, ModelState, ReplicaIdx, Table};
use super::{clamp, replica_label, resource_label, Pool, PoolError, Replica};
use crate::metrics::Metrics;
use crate::spec::ModelName;

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
    /// The Triton-side name the model serves under, when not its own (after an update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The update under way, or the last one that failed (until the spec changes again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition: Option<super::update::Transition>,
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

/// One replica's gauges, made once so that an update is three stores.
struct ReplicaGauges {
    memory: Gauge,
    gpu_memory: Gauge,
    healthy: Gauge,
}

/// The pool's gauges: handles into the metric families, by replica.
pub(super) struct Gauges {
    replicas: Vec<ReplicaGauges>,
}

impl Gauges {
    /// Creates every replica's series (capacity set, used and healthy at 0).
    pub fn new(metrics: &Metrics, replicas: &[Replica]) -> Self {
        let replicas = replicas
            .iter()
            .map(|r| {
                for (resource, value) in [
                    ("memory", r.capacity.memory),
                    ("gpu_memory", r.capacity.gpu_memory),
                ] {
                    metrics
                        .replica_capacity
                        .get_or_create(&resource_label(r, resource))
                        .set(clamp(value));
                }
                let used = |resource| {
                    metrics
                        .replica_used
                        .get_or_create(&resource_label(r, resource))
                        .clone()
                };
                ReplicaGauges {
                    memory: used("memory"),
                    gpu_memory: used("gpu_memory"),
                    healthy: metrics
                        .replica_healthy
                        .get_or_create(&replica_label(r))
                        .clone(),
                }
            })
            .collect();
        Self { replicas }
    }
}

impl Pool {
    /// Brings the gauges in line with the table and publishes the routing table: call after
    /// any change. Its cost is in the replicas and the changed models.
    pub(super) fn update_gauges(&self) {
        {
            let t = self.table();
            let m = &self.inner.metrics;
            m.models_registered.set(clamp(t.len() as u64));
            m.copies_loaded.set(clamp(t.loaded_copies() as u64));
            for (idx, g) in t.replica_indexes().zip(&self.inner.gauges.replicas) {
                if let Some(r) = t.replica(idx) {
                    g.memory.set(clamp(r.used().memory));
                    g.gpu_memory.set(clamp(r.used().gpu_memory));
                    g.healthy.set(i64::from(r.healthy));
                }
            }
        }
        self.publish();
    }

    /// One model's view, by the name clients use.
    pub fn view(&self, name: &ModelName) -> Result<ModelView, PoolError> {
        let t = self.table();
        t.resolve(name)
            .and_then(|key| t.get(&key).map(|e| self.view_of(&t, &key, e)))
            .ok_or_else(|| PoolError::UnknownModel(name.to_string()))
    }

    /// Looks a model up by its raw name (validated here).
    pub fn model(&self, name: &str) -> Result<ModelView, PoolError> {
        self.view(&ModelName::new(name)?)
    }

    fn view_of(&self, t: &Table, name: &ModelName, e: &Entry) -> ModelView {
        let replica_name = |i: ReplicaIdx| self.config(i).id.to_string();
        let spec = e.spec();
        ModelView {
            name: e.client.as_ref().unwrap_or(name).to_string(),
            version: e.client.is_some().then(|| name.to_string()),
            transition: e.transition.as_deref().cloned(),
            storage_uri: spec.storage_uri.redacted_uri(),
            storage: spec.storage_uri.store_ref(),
            model_format: spec.model_format.clone(),
            pool: spec.pool.clone(),
            sha256: spec.sha256.clone(),
            memory: spec.memory,
            memory_declared: spec.memory_declared,
            gpu_memory: spec.gpu_memory,
            measured_memory: e.measured().memory,
            measured_gpu_memory: e.measured().gpu_memory,
            min_copies: spec.min_copies,
            max_copies: spec.max_copies,
            state: e.state(),
            replicas: e
                .copies()
                .iter()
                .filter(|c| c.state == CopyState::Loaded)
                .map(|c| replica_name(c.replica))
                .collect(),
            copies: e
                .copies()
                .iter()
                .map(|c| CopyView {
                    replica: replica_name(c.replica),
                    state: c.state,
                })
                .collect(),
            last_error: e.failure.as_ref().map(|f| f.reason.clone()),
            idle_seconds: e.last_used().map(|t| t.elapsed().as_secs_f64()),
            in_flight: t.in_flight().model_total(name.as_str()),
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
        // Versions on their way in or out are not models of their own.
        let mut iter = t
            .range(lower)
            .filter(|(_, e)| e.role == super::table::Role::Current)
            .map(|(n, e)| self.view_of(&t, n, e));
        let page: Vec<ModelView> = iter.by_ref().take(limit).collect();
        let more = iter.next().is_some();
        (page, more)
    }

    /// Every replica's view.
    pub fn replicas(&self) -> Vec<ReplicaView> {
        let t = self.table();
        t.replica_indexes()
            .filter_map(|idx| self.replica_view_of(&t, idx))
            .collect()
    }

    /// Replica `idx`'s view.
    pub(super) fn replica_view(&self, idx: ReplicaIdx) -> Result<ReplicaView, PoolError> {
        self.replica_view_of(&self.table(), idx)
            .ok_or_else(|| PoolError::Internal("replica vanished".into()))
    }

    fn replica_view_of(&self, t: &Table, idx: ReplicaIdx) -> Option<ReplicaView> {
        let state = t.replica(idx)?;
        let r = self.config(idx);
        let mut models: Vec<String> = state.by_use().map(|(_, n)| n.to_string()).collect();
        models.sort();
        Some(ReplicaView {
            name: r.id.to_string(),
            url: r.url.to_string(),
            address: state.address.map(|a| a.to_string()).unwrap_or_default(),
            healthy: state.healthy,
            capacity_bytes: r.capacity.memory,
            used_bytes: state.used().memory,
            gpu_capacity_bytes: r.capacity.gpu_memory,
            gpu_used_bytes: state.used().gpu_memory,
            in_flight: state.in_flight(),
            draining: state.draining,
            models,
        })
    }
}
