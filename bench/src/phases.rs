//! The pool-manager's per-phase timings of cold requests, read from its `/metrics`: the
//! histogram [`METRIC`] with one series per `phase` label (route call, placement, staging,
//! load call, table update, ...). The bench reports whatever phases exist, as the mean of
//! the observations made between two scrapes, and says "not exposed" when there are none.

use std::collections::BTreeMap;

use serde::Serialize;

/// The histogram the pool-manager is expected to expose, in seconds.
pub const METRIC: &str = "mm_cold_phase_seconds";

/// The phases in the order a cold request goes through them; others follow by name.
const ORDER: [&str; 7] = [
    "route",
    "wait",
    "placement",
    "staging",
    "load",
    "table",
    "forward",
];

/// Sum and count of each phase's observations at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals(BTreeMap<String, (f64, f64)>);

/// One phase's mean over a window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Phase {
    pub phase: String,
    pub count: f64,
    pub mean_ms: f64,
}

/// The `phase` label's value in a series' label set (`phase="x",le="1"` -> `x`).
fn phase_label(labels: &str) -> Option<&str> {
    let start = labels.find("phase=\"")? + "phase=\"".len();
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// Reads `METRIC_sum` and `METRIC_count` per phase from Prometheus/OpenMetrics text,
/// summing series that differ in other labels.
pub fn totals(text: &str) -> Totals {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let (is_sum, rest) = match (rest.strip_prefix("_sum{"), rest.strip_prefix("_count{")) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => continue,
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let (Some(phase), Some(Ok(v))) = (
            phase_label(labels),
            value.split_whitespace().next().map(str::parse::<f64>),
        ) else {
            continue;
        };
        let entry = out.entry(phase.to_owned()).or_default();
        if is_sum {
            entry.0 += v;
        } else {
            entry.1 += v;
        }
    }
    Totals(out)
}

/// Each phase's mean (ms) over the observations made between `before` and `after`, in
/// request order; phases with no new observation are left out.
pub fn means(before: &Totals, after: &Totals) -> Vec<Phase> {
    let mut phases: Vec<Phase> = after
        .0
        .iter()
        .filter_map(|(name, (sum, count))| {
            let (sum0, count0) = before.0.get(name).copied().unwrap_or_default();
            let n = count - count0;
            (n > 0.0).then(|| Phase {
                phase: name.clone(),
                count: n,
                mean_ms: (sum - sum0) * 1000.0 / n,
            })
        })
        .collect();
    let rank = |p: &Phase| {
        ORDER
            .iter()
            .position(|o| *o == p.phase)
            .unwrap_or(ORDER.len())
    };
    phases.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.phase.cmp(&b.phase)));
    phases
}

/// A markdown line or table for the phases, "not exposed" when there are none.
pub fn markdown(phases: &[Phase]) -> String {
    if phases.is_empty() {
        return format!("Per-phase timings of a cold request: **not exposed** (the pool-manager has no `{METRIC}{{phase=...}}` histogram).\n");
    }
    let mut md = format!(
        "Per-phase timings of a cold request (the pool-manager's `{METRIC}` histogram, mean over this run's observations):\n\n\
         | phase | observations | mean ms |\n|---|---:|---:|\n"
    );
    for p in phases {
        md += &format!("| {} | {:.0} | {:.2} |\n", p.phase, p.count, p.mean_ms);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP mm_cold_phase_seconds Time per cold-request phase.\n# TYPE mm_cold_phase_seconds histogram\n\
mm_cold_phase_seconds_sum{phase=\"placement\"} 0.010\nmm_cold_phase_seconds_count{phase=\"placement\"} 2\n\
mm_cold_phase_seconds_bucket{le=\"0.005\",phase=\"placement\"} 2\n";
    const AFTER: &str = "# TYPE mm_cold_phase_seconds histogram\n\
mm_cold_phase_seconds_sum{phase=\"placement\"} 0.016\nmm_cold_phase_seconds_count{phase=\"placement\"} 5\n\
mm_cold_phase_seconds_bucket{le=\"0.005\",phase=\"placement\"} 5\n\
mm_cold_phase_seconds_sum{replica=\"r0\",phase=\"load\"} 0.2\nmm_cold_phase_seconds_count{replica=\"r0\",phase=\"load\"} 2\n\
mm_cold_phase_seconds_sum{replica=\"r1\",phase=\"load\"} 0.1\nmm_cold_phase_seconds_count{replica=\"r1\",phase=\"load\"} 1\n\
mm_cold_phase_seconds_sum{phase=\"zeta\"} 1\nmm_cold_phase_seconds_count{phase=\"zeta\"} 0\n\
mm_cold_phase_seconds_sum{phase=\"route\"} 0.9 1700000000\nmm_cold_phase_seconds_count{phase=\"route\"} 3 1700000000\n\
mm_cold_phase_seconds_total_other{phase=\"x\"} 7\nmm_route_requests_total{outcome=\"hit\"} 4\n";

    #[test]
    fn means_per_phase_between_scrapes_in_request_order() {
        let phases = means(&totals(BEFORE), &totals(AFTER));
        let names: Vec<&str> = phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(names, ["route", "placement", "load"]);
        assert!((phases[0].mean_ms - 300.0).abs() < 1e-9);
        // (0.016 - 0.010) s over 3 new observations.
        assert!((phases[1].mean_ms - 2.0).abs() < 1e-9 && phases[1].count == 3.0);
        // Series of one phase that differ in other labels are summed.
        assert!((phases[2].mean_ms - 100.0).abs() < 1e-9 && phases[2].count == 3.0);
    }

    #[test]
    fn absent_histogram_is_not_exposed() {
        let none = means(&totals(""), &totals("mm_route_requests_total 3\n"));
        assert!(none.is_empty());
        assert!(markdown(&none).contains("not exposed"));
        assert!(
            markdown(&means(&totals(BEFORE), &totals(AFTER))).contains("| placement | 3 | 2.00 |")
        );
    }
}
