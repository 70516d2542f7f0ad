//! The filter's counters: one name per event, defined by the glue with Proxy-Wasm
//! `define_metric` in every VM (Envoy sums a name over all VMs of the plugin) and shown by
//! Envoy's `/stats` with the `wasmcustom.` prefix, e.g. `wasmcustom.mm_filter_table_hits`.
//! Requests count into the worker's [`Counters`], which the tick adds to the host's
//! counters: no host call per request.

use crate::host::Host;

/// A counter the filter increments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// A model request routed from the worker's table, with no call to the pool-manager.
    TableHits,
    /// A request that made a route call (model not in the table, or a server route).
    RouteCalls,
    /// A table from the pool-manager applied to a worker's table.
    TableRefreshes,
    /// A table long poll that failed (no answer, non-200, invalid table) or could not be
    /// dispatched.
    TablePollFailures,
    /// A usage report acknowledged with 2xx.
    UsageReportsSent,
    /// A usage report that failed (not dispatched, non-2xx, no answer).
    UsageReportsFailed,
    /// A failure report dispatched to the pool-manager.
    FailureReportsSent,
    /// A request refused because of its path (400/404).
    ErrorsBadPath,
    /// A request answered 5xx because the pool-manager could not be reached.
    ErrorsPoolManagerUnreachable,
    /// A routed request whose replica could not be reached.
    ErrorsUpstreamUnreachable,
    /// A routed request whose replica answered that the model is not loaded.
    ErrorsModelMissing,
    /// A KServe V1 `:predict` request translated to V2.
    V1Translations,
    /// A KServe V1 request or response that could not be translated.
    V1TranslationErrors,
    /// A gRPC request of the KServe V2 inference service.
    GrpcRequests,
    /// A usage report sent at once because a watched model's last request ended.
    UsageReportsSoon,
    /// A metadata or readiness request that made the metadata call (model not in the table).
    MetadataCalls,
    /// A metadata or readiness request answered for a model loaded nowhere, without a load.
    StandbyAnswers,
    /// Microseconds route calls took as the filter sees them, from the dispatch to the
    /// answer (summed; over [`Metric::RouteCalls`] it is the mean round trip, which the
    /// pool-manager's own time is compared with in BENCHMARKS.md).
    RouteCallMicros,
}

impl Metric {
    /// Every metric, in a fixed order (the glue keeps their ids in that order).
    pub const ALL: [Metric; 18] = [
        Metric::TableHits,
        Metric::RouteCalls,
        Metric::TableRefreshes,
        Metric::TablePollFailures,
        Metric::UsageReportsSent,
        Metric::UsageReportsFailed,
        Metric::FailureReportsSent,
        Metric::ErrorsBadPath,
        Metric::ErrorsPoolManagerUnreachable,
        Metric::ErrorsUpstreamUnreachable,
        Metric::ErrorsModelMissing,
        Metric::V1Translations,
        Metric::V1TranslationErrors,
        Metric::GrpcRequests,
        Metric::UsageReportsSoon,
        Metric::MetadataCalls,
        Metric::StandbyAnswers,
        Metric::RouteCallMicros,
    ];

    /// The name given to `define_metric` (Envoy shows it as `wasmcustom.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::TableHits => "mm_filter_table_hits",
            Metric::RouteCalls => "mm_filter_route_calls",
            Metric::TableRefreshes => "mm_filter_table_refreshes",
            Metric::TablePollFailures => "mm_filter_table_poll_failures",
            Metric::UsageReportsSent => "mm_filter_usage_reports_sent",
            Metric::UsageReportsFailed => "mm_filter_usage_reports_failed",
            Metric::FailureReportsSent => "mm_filter_failure_reports_sent",
            Metric::ErrorsBadPath => "mm_filter_errors_bad_path",
            Metric::ErrorsPoolManagerUnreachable => "mm_filter_errors_pool_manager_unreachable",
            Metric::ErrorsUpstreamUnreachable => "mm_filter_errors_upstream_unreachable",
            Metric::ErrorsModelMissing => "mm_filter_errors_model_missing",
            Metric::V1Translations => "mm_filter_v1_translations",
            Metric::V1TranslationErrors => "mm_filter_v1_translation_errors",
            Metric::GrpcRequests => "mm_filter_grpc_requests",
            Metric::UsageReportsSoon => "mm_filter_usage_reports_soon",
            Metric::MetadataCalls => "mm_filter_metadata_calls",
            Metric::StandbyAnswers => "mm_filter_standby_answers",
            Metric::RouteCallMicros => "mm_filter_route_call_micros",
        }
    }

    /// Position in [`Metric::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Counts not yet added to the host's counters (at most one tick's worth).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    counts: [u64; Metric::ALL.len()],
}

impl Counters {
    /// Counts one event.
    pub fn add(&mut self, metric: Metric) {
        if let Some(count) = self.counts.get_mut(metric.index()) {
            *count = count.saturating_add(1);
        }
    }

    /// Counts `n` of `metric` (a sum, such as microseconds).
    pub fn add_n(&mut self, metric: Metric, n: u64) {
        if let Some(count) = self.counts.get_mut(metric.index()) {
            *count = count.saturating_add(n);
        }
    }

    /// What is counted for `metric` and not flushed yet.
    pub fn get(&self, metric: Metric) -> u64 {
        self.counts.get(metric.index()).copied().unwrap_or(0)
    }

    /// Adds every non-zero count to the host's counter and starts again from zero.
    pub fn flush(&mut self, host: &mut impl Host) {
        for metric in Metric::ALL {
            if let Some(count) = self.counts.get_mut(metric.index()) {
                if *count > 0 {
                    host.increment(metric, *count);
                    *count = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn counts_are_batched_until_the_flush() {
        use crate::host::fake::{FakeHost, Op};
        let mut counters = Counters::default();
        let mut host = FakeHost::new();
        counters.flush(&mut host);
        assert!(host.ops.is_empty());
        for _ in 0..3 {
            counters.add(Metric::TableHits);
        }
        counters.add(Metric::RouteCalls);
        assert_eq!(counters.get(Metric::TableHits), 3);
        counters.flush(&mut host);
        assert_eq!(
            host.take_ops(),
            vec![
                Op::Increment(Metric::TableHits, 3),
                Op::Increment(Metric::RouteCalls, 1)
            ]
        );
        counters.flush(&mut host);
        assert!(host.ops.is_empty());
    }

    #[test]
    fn names_are_unique_prefixed_and_indexed_in_order() {
        let names: HashSet<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len());
        for (i, metric) in Metric::ALL.iter().enumerate() {
            assert_eq!(metric.index(), i);
            let name = metric.name();
            assert!(name.starts_with("mm_filter_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
    }
}
