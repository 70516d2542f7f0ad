//! The pool-manager's Prometheus metrics (prometheus-client, OpenMetrics text). Names follow
//! Prometheus conventions with the `mm_` prefix. Label sets are bounded: replicas come from
//! configuration, outcomes and resources are fixed enums, and the one metric labelled by
//! model admits at most `model_label_limit` distinct models (the rest count as `_other`).

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub replica: String,
}

impl ReplicaLabel {
    pub fn new(replica: &str) -> Self {
        Self {
            replica: replica.to_owned(),
        }
    }
}

/// How a route call ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// The model was loaded: answered from the table (a cache hit).
    Hit,
    /// The model had to be loaded first (a cache miss).
    Miss,
    /// Unknown model.
    NotFound,
    /// Load failed, no room, or the wait ran out.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: Outcome,
}

/// A replica and an accounted resource (`memory` or `gpu_memory`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub replica: String,
    pub resource: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

/// A step of a cold request (see [`Metrics::cold_phase`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

/// Why a copy was added or removed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// A gateway report (`usage` or `failure`) and why it, or one of its entries, was not
/// acted on (`invalid`, `unknown_model`, `unknown_replica`, `duplicate`, `busy`,
/// `too_many_reporters`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabel {
    pub report: &'static str,
    pub reason: &'static str,
}

/// Every metric the pool-manager exports.
#[derive(Debug)]
pub struct Metrics {
    pub loads: Family<ReplicaLabel, Counter>,
    pub load_failures: Family<ReplicaLabel, Counter>,
    pub unloads: Family<ReplicaLabel, Counter>,
    pub evictions: Family<ReplicaLabel, Counter>,
    pub mass_evictions: Family<ReplicaLabel, Counter>,
    pub placement_failures: Counter,
    pub reconciliations: Family<ReplicaLabel, Counter>,
    pub load_duration: Histogram,
    pub cold_wait: Histogram,
    pub cold_phases: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    pub eviction_age: Histogram,
    pub eviction_idle: Histogram,
    pub route_requests: Family<OutcomeLabel, Counter>,
    pub model_requests: Family<ModelLabel, Counter>,
    pub copies_added: Family<ReasonLabel, Counter>,
    pub copies_removed: Family<ReasonLabel, Counter>,
    pub models_registered: Gauge,
    pub copies_loaded: Gauge,
    pub replica_capacity: Family<ResourceLabel, Gauge>,
    pub replica_used: Family<ResourceLabel, Gauge>,
    pub replica_healthy: Family<ReplicaLabel, Gauge>,
    pub reports_ignored: Family<ReportLabel, Counter>,
    pub internal_unauthorized: Counter,
    pub failure_checks: Gauge,
    /// Labels `policy`, and under GDSF `aging` and `half_life` (requests).
    pub eviction_policy: Family<Vec<(&'static str, String)>, Gauge>,
    model_label_limit: usize,
    labelled_models: Mutex<HashSet<String>>,
}

/// Label value for models past the per-model label limit.
pub const OTHER_MODELS: &str = "_other";

/// 0.1 ms .. ~52 s: the steps of a cold request, from a lock taken at once to a big load.
fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 10 ms .. ~160 s: Python models load in ~0.1 s, big GPU models in minutes.
    exponential_buckets(0.01, 2.0, 15)
}

impl Metrics {
    /// Creates the metrics and registers them in `reg` (which should carry the `mm` prefix).
    /// At most `model_label_limit` models get their own `model` label value.
    pub fn register(reg: &mut Registry, model_label_limit: usize) -> Self {
        let m = Self {
            loads: Family::default(),
            load_failures: Family::default(),
            unloads: Family::default(),
            evictions: Family::default(),
            mass_evictions: Family::default(),
            placement_failures: Counter::default(),
            reconciliations: Family::default(),
            load_duration: Histogram::new(seconds_buckets()),
            cold_wait: Histogram::new(seconds_buckets()),
            cold_phases: Family::new_with_constructor(phase_histogram),
            // 1 s .. ~9 h.
            eviction_age: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            eviction_idle: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            route_requests: Family::default(),
            model_requests: Family::default(),
            copies_added: Family::default(),
            copies_removed: Family::default(),
            models_registered: Gauge::default(),
            copies_loaded: Gauge::default(),
            replica_capacity: Family::default(),
            replica_used: Family::default(),
            replica_healthy: Family::default(),
            reports_ignored: Family::default(),
            internal_unauthorized: Counter::default(),
            failure_checks: Gauge::default(),
            eviction_policy: Family::default(),
            model_label_limit,
            labelled_models: Mutex::new(HashSet::new()),
        };
        reg.register(
            "model_loads",
            "Successful model loads, by replica",
            m.loads.clone(),
        );
        reg.register(
            "model_load_failures",
            "Model loads that failed, by replica",
            m.load_failures.clone(),
        );
        reg.register(
            "model_unloads",
            "Model unloads (any cause), by replica",
            m.unloads.clone(),
        );
        reg.register(
            "model_evictions",
            "Models unloaded to make room for another, by replica",
            m.evictions.clone(),
        );
        reg.register(
            "mass_evictions",
            "Placements that evicted at least two models and more than half of a replica's models",
            m.mass_evictions.clone(),
        );
        reg.register(
            "placement_failures",
            "Loads refused because no replica could make room",
            m.placement_failures.clone(),
        );
        reg.register(
            "reconciliations",
            "Passes that brought the table in line with a replica's own index, by replica",
            m.reconciliations.clone(),
        );
        reg.register_with_unit(
            "model_load_duration",
            "Time a replica took to load a model",
            Unit::Seconds,
            m.load_duration.clone(),
        );
        reg.register_with_unit(
            "cold_request_wait",
            "Time a request for a model loaded nowhere waited for its route",
            Unit::Seconds,
            m.cold_wait.clone(),
        );
        reg.register_with_unit(
            "cold_phase",
            "Time a cold request's load spent in each step (queue: waiting for the model's \
             lock; files: pulling remote files; placement: planning and waiting for room; \
             eviction; staging: files into the repository; load_call: the replica's load; \
             metadata: its memory and inputs; table_update)",
            Unit::Seconds,
            m.cold_phases.clone(),
        );
        reg.register_with_unit(
            "model_eviction_age",
            "Time an evicted model had been loaded",
            Unit::Seconds,
            m.eviction_age.clone(),
        );
        reg.register_with_unit(
            "model_eviction_idle",
            "Time since an evicted model's last request",
            Unit::Seconds,
            m.eviction_idle.clone(),
        );
        reg.register(
            "route_requests",
            "Route calls from the gateway, by outcome (hit: loaded; miss: loaded first)",
            m.route_requests.clone(),
        );
        reg.register(
            "model_requests",
            "Requests reported by the gateway, by model (bounded label set; the rest are _other)",
            m.model_requests.clone(),
        );
        reg.register(
            "model_copies_added",
            "Copies added beyond a model's first, by reason",
            m.copies_added.clone(),
        );
        reg.register(
            "model_copies_removed",
            "Extra copies removed, by reason",
            m.copies_removed.clone(),
        );
        reg.register(
            "models_registered",
            "Models in the registry",
            m.models_registered.clone(),
        );
        reg.register(
            "copies_loaded",
            "Loaded model copies across the pool",
            m.copies_loaded.clone(),
        );
        reg.register_with_unit(
            "replica_capacity",
            "What a replica offers to models, by resource (memory, gpu_memory)",
            Unit::Bytes,
            m.replica_capacity.clone(),
        );
        reg.register_with_unit(
            "replica_used",
            "What the models placed on a replica take, by resource",
            Unit::Bytes,
            m.replica_used.clone(),
        );
        reg.register(
            "replica_healthy",
            "1 when the replica's last readiness probe succeeded",
            m.replica_healthy.clone(),
        );
        reg.register(
            "gateway_reports_ignored",
            "Gateway usage and failure reports, or entries of them, not acted on, by report and reason",
            m.reports_ignored.clone(),
        );
        reg.register(
            "internal_unauthorized",
            "Calls to /internal/v1/* refused for a missing or wrong gateway token",
            m.internal_unauthorized.clone(),
        );
        reg.register(
            "failure_checks",
            "Gateway failure claims being checked against their replica now",
            m.failure_checks.clone(),
        );
        reg.register(
            "eviction_policy",
            "The victim order among evictable copies (--eviction; under gdsf also \
             --gdsf-aging and --gdsf-half-life in requests): 1 for the one in force",
            m.eviction_policy.clone(),
        );
        m
    }

    /// Marks `order` as the victim order in force (the pool is made once per process).
    pub fn set_eviction_policy(&self, order: &crate::eviction::OrderInForce) {
        self.eviction_policy.get_or_create(&order.labels()).set(1);
    }

    /// Counts `n` reports or entries of `report` ignored for `reason`.
    pub fn report_ignored(&self, report: &'static str, reason: &'static str, n: u64) {
        if n > 0 {
            self.reports_ignored
                .get_or_create(&ReportLabel { report, reason })
                .inc_by(n);
        }
    }

    pub fn route(&self, outcome: Outcome) {
        self.route_requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Observes how long a cold request's load spent in step `phase`.
    pub fn cold_phase(&self, phase: &'static str, took: std::time::Duration) {
        self.cold_phases
            .get_or_create(&PhaseLabel { phase })
            .observe(took.as_secs_f64());
    }

    /// Counts `n` requests for `model`, under its own label while the label budget lasts.
    pub fn model_requests(&self, model: &str, n: u64) {
        let label = {
            let mut seen = self
                .labelled_models
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.contains(model) || seen.len() < self.model_label_limit {
                seen.insert(model.to_owned());
                model.to_owned()
            } else {
                OTHER_MODELS.to_owned()
            }
        };
        self.model_requests
            .get_or_create(&ModelLabel { model: label })
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_prometheus_names() {
        let mut reg = Registry::with_prefix("mm");
        let m = Metrics::register(&mut reg, 10);
        m.loads.get_or_create(&ReplicaLabel::new("r0")).inc();
        m.route(Outcome::Hit);
        m.replica_used
            .get_or_create(&ResourceLabel {
                replica: "r0".into(),
                resource: "memory",
            })
            .set(42);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "mm_model_loads_total{replica=\"r0\"} 1",
            "mm_route_requests_total{outcome=\"hit\"} 1",
            "mm_replica_used_bytes{replica=\"r0\",resource=\"memory\"} 42",
            "# TYPE mm_model_load_duration_seconds histogram",
            "# TYPE mm_model_eviction_idle_seconds histogram",
            "# TYPE mm_cold_phase_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn the_eviction_policy_metric_names_gdsf_tuning() {
        use crate::eviction::{Aging, EvictionCost, EvictionPolicy, OrderInForce};
        let decay = EvictionCost::LoadTime.tuned(Aging::Decay, 8000.0);
        for (policy, line) in [
            (
                EvictionPolicy::Gdsf,
                "mm_eviction_policy{policy=\"gdsf\",aging=\"decay\",half_life=\"8000\"} 1",
            ),
            (EvictionPolicy::Lru, "mm_eviction_policy{policy=\"lru\"} 1"),
        ] {
            let mut reg = Registry::with_prefix("mm");
            let m = Metrics::register(&mut reg, 10);
            m.set_eviction_policy(&OrderInForce::new(policy, &decay));
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
            assert!(text.lines().any(|l| l == line), "{text}");
        }
    }

    #[test]
    fn bounds_the_model_label_set() {
        let mut reg = Registry::with_prefix("mm");
        let m = Metrics::register(&mut reg, 2);
        for (model, n) in [("a", 1), ("b", 2), ("c", 3), ("a", 4), ("d", 5)] {
            m.model_requests(model, n);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("mm_model_requests_total{model=\"a\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("mm_model_requests_total{model=\"b\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mm_model_requests_total{model=\"_other\"} 8"),
            "{text}"
        );
        assert!(!text.contains("model=\"c\""), "{text}");
    }
}
