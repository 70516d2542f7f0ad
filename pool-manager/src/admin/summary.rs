//! The pool's counters as one small JSON object for the status page: read back from the
//! same OpenMetrics text `/metrics` serves (so the page and Prometheus never disagree),
//! with histogram quantiles estimated the way PromQL's `histogram_quantile` does.

use serde::Serialize;

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

/// Parses the sample lines of Prometheus/OpenMetrics text; comments and lines it cannot
/// read are skipped. Label values are taken verbatim (ours never contain `"` or `,`).
fn samples(text: &str) -> Vec<Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, rest) = match line.find('{') {
                Some(open) => {
                    let close = line[open..].find('}')? + open;
                    (&line[..close + 1], &line[close + 1..])
                }
                None => line.split_at(line.find(' ')?),
            };
            let value = rest.split_whitespace().next()?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().ok()?,
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .trim_end_matches('}')
                        .split(',')
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            Some((k.trim(), v.trim().trim_matches('"')))
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, Vec::new()),
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

fn sum(samples: &[Sample<'_>], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|l| s.labels.contains(&l)))
        .map(|s| s.value)
        .sum()
}

/// A histogram's count, mean and estimated quantiles (seconds). `None` when empty.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Distribution {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

fn distribution(samples: &[Sample<'_>], name: &str) -> Distribution {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == bucket)
        .filter_map(|s| {
            let le = s.labels.iter().find(|(k, _)| *k == "le")?.1;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, s.value))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = sum(samples, &format!("{name}_count"), None);
    let total = sum(samples, &format!("{name}_sum"), None);
    Distribution {
        count: count as u64,
        mean: (count > 0.0).then(|| total / count),
        p50: quantile(&buckets, 0.5),
        p99: quantile(&buckets, 0.99),
    }
}

/// `histogram_quantile` over cumulative `(upper bound, count)` buckets: linear
/// interpolation inside the bucket holding the rank; the highest finite bound when the
/// rank falls in the `+Inf` bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, cumulative) in buckets {
        if cumulative >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = cumulative - lower.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
        }
        lower = (le, cumulative);
    }
    Some(lower.0)
}

/// Route-call outcomes (`mm_route_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCalls {
    pub hit: u64,
    pub miss: u64,
    pub not_found: u64,
    pub error: u64,
}

/// What the status page shows besides the replicas, models and events.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub route_calls: RouteCalls,
    /// Requests the gateway reported (`mm_model_requests_total`, all models).
    pub requests: u64,
    /// Share of requests that found their model loaded: 1 - misses / requests (`None`
    /// before the first request).
    pub hit_rate: Option<f64>,
    pub loads: u64,
    pub load_failures: u64,
    pub unloads: u64,
    pub evictions: u64,
    pub mass_evictions: u64,
    pub placement_failures: u64,
    pub load_seconds: Distribution,
    pub cold_wait_seconds: Distribution,
    pub models_registered: u64,
    pub copies_loaded: u64,
}

/// Reads the summary out of the pool-manager's own `/metrics` text.
pub fn summarize(text: &str) -> Summary {
    let s = samples(text);
    let count = |name: &str| sum(&s, name, None) as u64;
    let route =
        |outcome: &str| sum(&s, "mm_route_requests_total", Some(("outcome", outcome))) as u64;
    let route_calls = RouteCalls {
        hit: route("hit"),
        miss: route("miss"),
        not_found: route("not_found"),
        error: route("error"),
    };
    // The filter routes warm requests from its own table, so most hits never reach the
    // pool-manager as route calls; the usage reports count every routed request.
    let requests = count("mm_model_requests_total");
    let seen = requests.max(route_calls.hit + route_calls.miss);
    let hit_rate = (seen > 0).then(|| 1.0 - (route_calls.miss.min(seen) as f64) / (seen as f64));
    Summary {
        route_calls,
        requests,
        hit_rate,
        loads: count("mm_model_loads_total"),
        load_failures: count("mm_model_load_failures_total"),
        unloads: count("mm_model_unloads_total"),
        evictions: count("mm_model_evictions_total"),
        mass_evictions: count("mm_mass_evictions_total"),
        placement_failures: count("mm_placement_failures_total"),
        load_seconds: distribution(&s, "mm_model_load_duration_seconds"),
        cold_wait_seconds: distribution(&s, "mm_cold_request_wait_seconds"),
        models_registered: count("mm_models_registered"),
        copies_loaded: count("mm_copies_loaded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP mm_route_requests Route calls.
# TYPE mm_route_requests counter
mm_route_requests_total{outcome="hit"} 3
mm_route_requests_total{outcome="miss"} 2
mm_route_requests_total{outcome="error"} 1
# TYPE mm_model_requests counter
mm_model_requests_total{model="a"} 15
mm_model_requests_total{model="_other"} 5
# TYPE mm_model_loads counter
mm_model_loads_total{replica="r0"} 2
mm_model_loads_total{replica="r1"} 1
# TYPE mm_model_load_duration_seconds histogram
mm_model_load_duration_seconds_sum 1.5
mm_model_load_duration_seconds_count 3
mm_model_load_duration_seconds_bucket{le="0.25"} 1
mm_model_load_duration_seconds_bucket{le="0.5"} 2
mm_model_load_duration_seconds_bucket{le="1.0"} 3
mm_model_load_duration_seconds_bucket{le="+Inf"} 3
# TYPE mm_models_registered gauge
mm_models_registered 4
# EOF
"#;

    #[test]
    fn reads_counters_rates_and_quantiles() {
        let s = summarize(TEXT);
        assert_eq!(
            s.route_calls,
            RouteCalls {
                hit: 3,
                miss: 2,
                not_found: 0,
                error: 1
            }
        );
        assert_eq!(s.requests, 20);
        assert_eq!(s.hit_rate, Some(0.9));
        assert_eq!(s.loads, 3);
        assert_eq!(s.models_registered, 4);
        assert_eq!(s.load_seconds.count, 3);
        assert_eq!(s.load_seconds.mean, Some(0.5));
        // Rank 1.5 of 3 is half-way through the (0.25, 0.5] bucket.
        assert_eq!(s.load_seconds.p50, Some(0.375));
        // Rank 2.97: 97% of the way through (0.5, 1.0].
        let p99 = s.load_seconds.p99.unwrap();
        assert!((p99 - 0.985).abs() < 1e-9, "{p99}");
        assert_eq!(s.cold_wait_seconds.count, 0);
        assert_eq!(s.cold_wait_seconds.p99, None);
    }

    #[test]
    fn no_requests_means_no_hit_rate() {
        assert_eq!(summarize("# EOF\n").hit_rate, None);
    }

    #[test]
    fn a_rank_in_the_inf_bucket_is_the_highest_finite_bound() {
        let buckets = [(1.0, 1.0), (2.0, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&buckets, 0.99), Some(2.0));
    }

    #[test]
    fn reads_the_real_registry() {
        let mut reg = prometheus_client::registry::Registry::with_prefix("mm");
        let m = crate::metrics::Metrics::register(&mut reg, 10);
        m.route(crate::metrics::Outcome::Miss);
        m.model_requests("a", 4);
        m.load_duration.observe(0.3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let s = summarize(&text);
        assert_eq!(s.route_calls.miss, 1);
        assert_eq!(s.requests, 4);
        assert_eq!(s.hit_rate, Some(0.75));
        assert_eq!(s.load_seconds.count, 1);
        assert!(s.load_seconds.p50.is_some_and(|p| p > 0.16 && p <= 0.32));
    }
}
