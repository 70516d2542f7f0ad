//! The planner's input, made from the table: [`snapshot`] is the one function that turns
//! the model table into a [`placement::Snapshot`], for the live pool and the trace
//! simulator alike, so both plan from the same facts by the same rules.
//!
//! Its cost is in the replicas, not the models: each replica's sums come from the table's
//! incremental counts, and copies are listed (from each replica's use-ordered index) only
//! when no replica can take the model without evicting, and then only the copies on the
//! replicas that may take it.

use tokio::time::Instant;

use super::table::{Copy, CopyState, Entry, ReplicaIdx, ReplicaState, Table};
use crate::placement::{self, Blocker, ReplicaSnapshot, Resident, Snapshot, Standing};
use crate::spec::ModelName;

/// The planner's view of the pool for one more copy of `model` at `now`; `None` if the
/// model is not registered.
pub(crate) fn snapshot<'t>(
    t: &'t Table,
    model: &ModelName,
    now: Instant,
) -> Option<Snapshot<&'t ModelName>> {
    let entry = t.get(model)?;
    let mut s = Snapshot {
        need: entry.size(),
        marks: t.rules().watermarks,
        replicas: t
            .replica_indexes()
            .filter_map(|idx| Some(summary(t.replica(idx)?, entry.holds(idx))))
            .collect(),
    };
    if placement::needs_residents(&s) {
        for (i, r) in s.replicas.iter_mut().enumerate() {
            if r.standing == Standing::Open {
                r.residents = residents(t, ReplicaIdx::new(i), now);
            }
        }
    }
    Some(s)
}

fn summary<K>(r: &ReplicaState, holds_model: bool) -> ReplicaSnapshot<K> {
    let standing = if !r.healthy {
        Standing::Unhealthy
    } else if r.draining {
        Standing::Draining
    } else if holds_model {
        Standing::HoldsModel
    } else {
        Standing::Open
    };
    ReplicaSnapshot {
        standing,
        capacity: r.capacity,
        used: r.used(),
        in_flight: r.in_flight(),
        models: r.copies(),
        residents: Vec::new(),
    }
}

/// The copies on replica `idx`, least recently used first, each with what keeps it.
fn residents(t: &Table, idx: ReplicaIdx, now: Instant) -> Vec<Resident<&ModelName>> {
    let Some(r) = t.replica(idx) else {
        return Vec::new();
    };
    r.by_use()
        .filter_map(|(last_use, name)| {
            let e = t.get(name)?;
            let copy = e.copy_on(idx)?;
            Some(Resident {
                key: name,
                size: e.size(),
                last_use,
                blocker: blocker(t, name, e, copy, now),
            })
        })
        .collect()
}

/// Why `copy` of model `name` may not be evicted at `now`, if anything keeps it. A pinned
/// model's copies are kept for good; the other reasons pass.
pub(crate) fn blocker(
    t: &Table,
    name: &ModelName,
    e: &Entry,
    copy: &Copy,
    now: Instant,
) -> Option<Blocker> {
    if copy.state != CopyState::Loaded || e.deleting {
        return Some(Blocker::Busy);
    }
    if e.spec().min_copies > 0 && e.loaded_copies() <= e.spec().min_copies as usize {
        return Some(Blocker::Pinned);
    }
    if e.is_busy() {
        return Some(Blocker::Busy);
    }
    if t.in_flight().get(name.as_str(), copy.replica) > 0 {
        return Some(Blocker::InFlight);
    }
    let last = e.last_used().map_or(copy.since, |u| u.max(copy.since));
    let age = now.saturating_duration_since(last);
    let min_age = t.rules().min_age;
    (age < min_age).then(|| Blocker::Young {
        left: min_age - age,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::placement::{Resources, Watermarks};
    use crate::pool::table::Rules;
    use crate::spec::{ModelSpec, StorageUri};

    fn name(n: &str) -> ModelName {
        ModelName::new(n).unwrap()
    }

    fn spec(memory: u64, min_copies: u32) -> ModelSpec {
        ModelSpec {
            storage_uri: Box::new(StorageUri::File {
                uri: String::new(),
                path: std::path::PathBuf::new(),
            }),
            memory,
            memory_declared: true,
            gpu_memory: 0,
            min_copies,
            max_copies: min_copies.max(1),
            sha256: None,
            model_format: None,
            pool: None,
        }
    }

    /// `replicas` replicas of 100 bytes, high 80%, min age 10 s, every one healthy.
    fn table(replicas: usize, now: Instant) -> Table {
        let rules = Rules {
            watermarks: Watermarks::new(0.8, 0.6).unwrap(),
            min_age: Duration::from_secs(10),
        };
        let mut t = Table::new(
            (0..replicas).map(|_| (Resources::new(100, 0), None)),
            rules,
            now,
        );
        for i in 0..replicas {
            t.update_replica(ReplicaIdx::new(i), |r| r.healthy = true);
        }
        t
    }

    #[tokio::test(start_paused = true)]
    async fn lists_copies_only_when_some_replica_must_evict() {
        let start = Instant::now();
        let mut t = table(2, start);
        for (m, size) in [("a", 40), ("b", 30), ("new", 20)] {
            t.insert(name(m), spec(size, 0));
        }
        t.add_copy(&name("a"), ReplicaIdx::new(0), CopyState::Loaded, start);
        let s = snapshot(&t, &name("new"), start).unwrap();
        assert_eq!(s.need, Resources::new(20, 0));
        assert_eq!(s.replicas[0].used, Resources::new(40, 0));
        assert!(
            s.replicas.iter().all(|r| r.residents.is_empty()),
            "r1 has room"
        );
        t.add_copy(&name("b"), ReplicaIdx::new(1), CopyState::Loaded, start);
        t.set_measured(&name("b"), Resources::new(70, 0));
        t.set_spec(&name("new"), spec(50, 0));
        let s = snapshot(&t, &name("new"), start).unwrap();
        assert_eq!(s.replicas[0].residents.len(), 1);
        assert_eq!(s.replicas[1].residents[0].key.as_str(), "b");
        assert_eq!(s.replicas[1].residents[0].size, Resources::new(70, 0));
        assert!(snapshot(&t, &name("ghost"), start).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn says_what_keeps_each_copy() {
        let start = Instant::now();
        let mut t = table(1, start);
        let r0 = ReplicaIdx::new(0);
        for (m, min_copies) in [
            ("pinned", 1),
            ("loading", 0),
            ("young", 0),
            ("busy", 0),
            ("op", 0),
            ("free", 0),
        ] {
            t.insert(name(m), spec(10, min_copies));
            let state = if m == "loading" {
                CopyState::Loading
            } else {
                CopyState::Loaded
            };
            t.add_copy(&name(m), r0, state, start);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        t.touch(&name("young"), now - Duration::from_secs(4));
        t.replace_in_flight("w1", now, vec![(name("busy"), r0, 2)]);
        let op = t.get_mut("op").unwrap().op_lock();
        let _held = op.try_lock().unwrap();
        t.insert(name("new"), spec(60, 0));
        let s = snapshot(&t, &name("new"), now).unwrap();
        let got: Vec<(&str, Option<Blocker>)> = s.replicas[0]
            .residents
            .iter()
            .map(|r| (r.key.as_str(), r.blocker))
            .collect();
        let young = Some(Blocker::Young {
            left: Duration::from_secs(6),
        });
        for want in [
            ("pinned", Some(Blocker::Pinned)),
            ("loading", Some(Blocker::Busy)),
            ("op", Some(Blocker::Busy)),
            ("busy", Some(Blocker::InFlight)),
            ("free", None),
            ("young", young),
        ] {
            assert!(got.contains(&want), "{want:?} not in {got:?}");
        }
        assert_eq!(
            got.last().map(|g| g.0),
            Some("young"),
            "least recently used first"
        );
    }
}
