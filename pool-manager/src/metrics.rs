//! The pool-manager's Prometheus metrics (prometheus-client, OpenMetrics text). Names follow
//! Prometheus conventions with the `mm_` prefix; label sets are bounded: replicas come from
//! configuration and route outcomes are a fixed enum, so no label takes a model name.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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
    /// The model was loaded: answered from the table.
    Hit,
    /// The model had to be loaded first.
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

/// Every metric the pool-manager exports.
#[derive(Debug)]
pub struct Metrics {
    pub loads: Family<ReplicaLabel, Counter>,
    pub load_failures: Family<ReplicaLabel, Counter>,
    pub unloads: Family<ReplicaLabel, Counter>,
    pub load_duration: Histogram,
    pub route_requests: Family<OutcomeLabel, Counter>,
    pub models_registered: Gauge,
    pub replica_capacity: Family<ReplicaLabel, Gauge>,
    pub replica_used: Family<ReplicaLabel, Gauge>,
    pub replica_healthy: Family<ReplicaLabel, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them in `reg` (which should carry the `mm` prefix).
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            loads: Family::default(),
            load_failures: Family::default(),
            unloads: Family::default(),
            // 10 ms .. ~160 s: Python models load in ~0.1 s, big GPU models in minutes.
            load_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 15),
            ),
            route_requests: Family::default(),
            models_registered: Gauge::default(),
            replica_capacity: Family::default(),
            replica_used: Family::default(),
            replica_healthy: Family::default(),
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
            "Model unloads, by replica",
            m.unloads.clone(),
        );
        reg.register_with_unit(
            "model_load_duration",
            "Time a replica took to load a model",
            Unit::Seconds,
            m.load_duration.clone(),
        );
        reg.register(
            "route_requests",
            "Route calls from the gateway, by outcome",
            m.route_requests.clone(),
        );
        reg.register(
            "models_registered",
            "Models in the registry",
            m.models_registered.clone(),
        );
        reg.register_with_unit(
            "replica_memory_capacity",
            "Host memory a replica offers to models",
            Unit::Bytes,
            m.replica_capacity.clone(),
        );
        reg.register_with_unit(
            "replica_memory_used",
            "Host memory taken by models placed on a replica",
            Unit::Bytes,
            m.replica_used.clone(),
        );
        reg.register(
            "replica_healthy",
            "1 when the replica's last readiness probe succeeded",
            m.replica_healthy.clone(),
        );
        m
    }

    pub fn route(&self, outcome: Outcome) {
        self.route_requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_prometheus_names() {
        let mut reg = Registry::with_prefix("mm");
        let m = Metrics::register(&mut reg);
        m.loads.get_or_create(&ReplicaLabel::new("r0")).inc();
        m.route(Outcome::Hit);
        m.replica_used
            .get_or_create(&ReplicaLabel::new("r0"))
            .set(42);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "mm_model_loads_total{replica=\"r0\"} 1",
            "mm_route_requests_total{outcome=\"hit\"} 1",
            "mm_replica_memory_used_bytes{replica=\"r0\"} 42",
            "# TYPE mm_model_load_duration_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
