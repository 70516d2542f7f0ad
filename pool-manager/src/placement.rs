//! Placement: which replica gets a model. Pure: it decides from a snapshot of the replicas
//! and knows nothing of I/O, clocks or locks, so every rule is unit-tested directly.
//!
//! Rule: among healthy replicas with room for the model's memory, pick the one that keeps
//! the most memory free after placing it (worst fit); ties go to the replica holding fewer
//! models, then to the lower name so the choice is deterministic. Worst fit spreads models,
//! and with them request load and headroom for the next cold load, across the pool.

use crate::spec::ReplicaId;

/// What placement needs to know about one replica.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: &'a ReplicaId,
    pub healthy: bool,
    pub capacity: u64,
    pub used: u64,
    pub models: usize,
}

impl Candidate<'_> {
    fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used)
    }
}

/// Why no replica was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no healthy replica")]
    NoHealthyReplica,
    #[error("no healthy replica has {need} bytes free (most free: {best_free} bytes)")]
    NoRoom { need: u64, best_free: u64 },
}

/// Chooses the replica for a model needing `need` bytes.
pub fn choose<'a>(
    candidates: &[Candidate<'a>],
    need: u64,
) -> Result<&'a ReplicaId, PlacementError> {
    let healthy = candidates.iter().filter(|c| c.healthy);
    let best_free = healthy.clone().map(Candidate::free).max();
    let Some(best_free) = best_free else {
        return Err(PlacementError::NoHealthyReplica);
    };
    healthy
        .filter(|c| c.free() >= need)
        .min_by(|a, b| {
            b.free()
                .cmp(&a.free())
                .then(a.models.cmp(&b.models))
                .then(a.id.cmp(b.id))
        })
        .map(|c| c.id)
        .ok_or(PlacementError::NoRoom { need, best_free })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<ReplicaId> {
        ["r0", "r1", "r2"]
            .iter()
            .map(|n| ReplicaId::new(n).unwrap())
            .collect()
    }

    fn cand(id: &ReplicaId, used: u64, models: usize, healthy: bool) -> Candidate<'_> {
        Candidate {
            id,
            healthy,
            capacity: 100,
            used,
            models,
        }
    }

    #[test]
    fn picks_the_replica_with_most_free_memory() {
        let ids = ids();
        let c = [
            cand(&ids[0], 50, 1, true),
            cand(&ids[1], 10, 5, true),
            cand(&ids[2], 30, 0, true),
        ];
        assert_eq!(choose(&c, 20).unwrap().as_str(), "r1");
    }

    #[test]
    fn breaks_ties_by_model_count_then_name() {
        let ids = ids();
        let c = [
            cand(&ids[0], 10, 3, true),
            cand(&ids[1], 10, 2, true),
            cand(&ids[2], 10, 2, true),
        ];
        assert_eq!(choose(&c, 20).unwrap().as_str(), "r1");
    }

    #[test]
    fn skips_unhealthy_and_full_replicas() {
        let ids = ids();
        let c = [
            cand(&ids[0], 0, 0, false),
            cand(&ids[1], 90, 1, true),
            cand(&ids[2], 70, 1, true),
        ];
        assert_eq!(choose(&c, 30).unwrap().as_str(), "r2");
        assert_eq!(
            choose(&c, 31),
            Err(PlacementError::NoRoom {
                need: 31,
                best_free: 30
            })
        );
    }

    #[test]
    fn reports_when_nothing_is_healthy() {
        let ids = ids();
        let c = [cand(&ids[0], 0, 0, false)];
        assert_eq!(choose(&c, 1), Err(PlacementError::NoHealthyReplica));
        assert_eq!(choose(&[], 1), Err(PlacementError::NoHealthyReplica));
    }

    #[test]
    fn exact_fit_is_allowed() {
        let ids = ids();
        let c = [cand(&ids[0], 60, 1, true)];
        assert_eq!(choose(&c, 40).unwrap().as_str(), "r0");
    }
}
