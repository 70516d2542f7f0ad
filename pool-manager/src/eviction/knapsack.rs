//! The best *static* choice of resident models, a reference for what any online policy can
//! reach on a workload with fixed popularity (the independent reference model: each
//! request picks model `i` with probability `p_i`, whatever came before). There the
//! policy that knows the `p_i` and keeps a fixed set maximises the expected hit rate:
//! each request hits with probability `sum of p_i over the kept set`, so the best set is a
//! 0/1 knapsack of value `p_i` and weight `size_i` packed into the replicas.
//!
//! - [`fractional`]: the knapsack's linear relaxation over the summed capacity (models by
//!   `p / size`, the last one cut): no static set does better.
//! - [`greedy`]: models by `p / size`, each into the first replica with room: a feasible
//!   static set, so the optimum static hit rate lies between the two.
//!
//! An online policy only estimates the `p_i` from the requests so far, so on such a
//! workload it is not expected to beat the static optimum by more than the noise of one
//! finite trace.

/// A static set of resident models and what it earns.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticSet {
    /// Whether model `i` is kept.
    pub kept: Vec<bool>,
    /// Expected hit rate, the kept models' summed probability, in `0..=1`.
    pub expected: f64,
    /// Bytes the kept models take.
    pub bytes: u64,
}

impl StaticSet {
    /// Hits of this set on `requests`, starting empty: every request for a kept model
    /// hits except its first (the load that brings it in).
    pub fn hits(&self, requests: &[u32]) -> u64 {
        let mut seen = vec![false; self.kept.len()];
        let mut hits = 0u64;
        for &m in requests {
            let m = m as usize;
            if self.kept.get(m).copied().unwrap_or(false) {
                if seen[m] {
                    hits += 1;
                }
                seen[m] = true;
            }
        }
        hits
    }
}

/// Models in decreasing `p / size` order (ties by id, for determinism).
fn by_density(sizes: &[u64], probabilities: &[f64]) -> Vec<usize> {
    let density = |i: usize| probabilities[i] / sizes[i].max(1) as f64;
    let mut order: Vec<usize> = (0..sizes.len().min(probabilities.len())).collect();
    order.sort_by(|&a, &b| density(b).total_cmp(&density(a)).then(a.cmp(&b)));
    order
}

/// The linear relaxation of the knapsack over `capacity` bytes: an upper bound on the
/// expected hit rate of any static set of that total size.
pub fn fractional(sizes: &[u64], probabilities: &[f64], capacity: u64) -> f64 {
    let mut room = capacity;
    let mut value = 0.0;
    for i in by_density(sizes, probabilities) {
        if sizes[i] <= room {
            room -= sizes[i];
            value += probabilities[i];
        } else {
            value += probabilities[i] * room as f64 / sizes[i] as f64;
            break;
        }
    }
    value
}

/// Models by decreasing `p / size`, each into the first bin (replica) it fits: a feasible
/// static set for bins of these capacities.
pub fn greedy(sizes: &[u64], probabilities: &[f64], bins: &[u64]) -> StaticSet {
    let mut room = bins.to_vec();
    let mut set = StaticSet {
        kept: vec![false; sizes.len()],
        expected: 0.0,
        bytes: 0,
    };
    for i in by_density(sizes, probabilities) {
        if let Some(bin) = room.iter_mut().find(|r| **r >= sizes[i]) {
            *bin -= sizes[i];
            set.kept[i] = true;
            set.expected += probabilities[i];
            set.bytes += sizes[i];
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_models_first_and_the_relaxation_bounds_the_packing() {
        // Densities: a 0.05, b 0.04, c 0.03, d 0.01 per byte.
        let sizes = [10, 10, 5, 20];
        let p = [0.5, 0.4, 0.15, 0.2];
        let set = greedy(&sizes, &p, &[15, 10]);
        // a into bin 0 (5 left), b into bin 1 (0 left), c into bin 0, d nowhere.
        assert_eq!(set.kept, [true, true, true, false]);
        assert!((set.expected - 1.05).abs() < 1e-12, "{}", set.expected);
        assert_eq!(set.bytes, 25);
        // One bin of 25 packs the same; with 30 the relaxation takes a quarter of d.
        assert!((fractional(&sizes, &p, 25) - 1.05).abs() < 1e-12);
        assert!((fractional(&sizes, &p, 30) - 1.1).abs() < 1e-12);
        // Bins can cost: two bins of 12 fit a and b but not c beside them.
        let split = greedy(&sizes, &p, &[12, 12]);
        assert_eq!(split.kept, [true, true, false, false]);
        assert!(split.expected <= fractional(&sizes, &p, 24));
    }

    #[test]
    fn hits_count_all_but_the_first_request_of_kept_models() {
        let set = StaticSet {
            kept: vec![true, false],
            expected: 0.5,
            bytes: 1,
        };
        assert_eq!(set.hits(&[0, 1, 0, 1, 0, 7]), 2);
    }
}
