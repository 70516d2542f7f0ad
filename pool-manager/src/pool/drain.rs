//! Draining a replica for maintenance: a draining replica takes no new copies (placement
//! treats it as full), and its copies leave as soon as nothing is in flight on them. A
//! copy that is still wanted (a pinned model, or one used within [`WARM`]) is first placed
//! on another replica, then unloaded; an idle one is simply unloaded (the next request
//! places it elsewhere). Undraining makes the replica eligible again; the draining flag is
//! not persisted (a restarted pool-manager starts with every replica undrained).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::place::Purpose;
use super::table::{CopyState, ReplicaIdx};
use super::{Pool, PoolError, ReplicaView};
use crate::events::{EventKind, NewEvent};
use crate::spec::ModelName;

/// A copy used within this long is moved to another replica before it is unloaded.
pub const WARM: Duration = Duration::from_secs(60);

/// Per-replica drain passes (the draining flag itself is in the table, where placement
/// reads it).
pub(super) struct Drains {
    /// One pass at a time per replica.
    passes: Vec<tokio::sync::Mutex<()>>,
    /// Whether the replica's drain loop has been started (it runs for the process's life).
    started: Vec<AtomicBool>,
}

impl Drains {
    pub fn new(replicas: usize) -> Self {
        Self {
            passes: (0..replicas).map(|_| tokio::sync::Mutex::new(())).collect(),
            started: (0..replicas).map(|_| AtomicBool::new(false)).collect(),
        }
    }
}

/// What a drain pass still leaves on the replica, and what it did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainPass {
    pub moved: Vec<String>,
    pub unloaded: Vec<String>,
    /// Copies still on the replica (busy, or could not be moved yet).
    pub remaining: usize,
}

/// A copy on the draining replica, as the pass sees it.
struct Candidate {
    model: ModelName,
    /// Pinned or recently used: place it elsewhere before unloading.
    wanted: bool,
    /// Another healthy, undrained replica has (or is loading) a copy.
    elsewhere: bool,
}

impl Pool {
    fn replica_named(&self, name: &str) -> Result<ReplicaIdx, PoolError> {
        self.replica_index(name)
            .ok_or_else(|| PoolError::UnknownReplica(name.to_owned()))
    }

    /// Marks replica `name` draining (idempotent) and starts moving its copies away.
    pub fn drain(&self, name: &str) -> Result<ReplicaView, PoolError> {
        let idx = self.replica_named(name)?;
        if self.set_draining(idx, true) {
            info!(replica = %name, "replica draining: no new copies; its copies move or unload when idle");
            self.events()
                .record(NewEvent::new(EventKind::Drained).replica(name));
        }
        if !self.inner.drains.started[idx.index()].swap(true, Ordering::Relaxed) {
            tokio::spawn(self.clone().run_drain(idx));
        }
        self.replica_view(idx)
    }

    /// Makes replica `name` take new copies again (idempotent).
    pub fn undrain(&self, name: &str) -> Result<ReplicaView, PoolError> {
        let idx = self.replica_named(name)?;
        if self.set_draining(idx, false) {
            info!(replica = %name, "replica undrained: takes new copies again");
            self.events()
                .record(NewEvent::new(EventKind::Undrained).replica(name));
            self.inner.room.changed();
        }
        self.replica_view(idx)
    }

    /// Sets the draining flag; whether it changed.
    fn set_draining(&self, idx: ReplicaIdx, on: bool) -> bool {
        let mut t = self.table();
        if t.is_draining(idx) == on {
            return false;
        }
        t.update_replica(idx, |r| r.draining = on);
        true
    }

    pub(super) fn is_draining(&self, idx: ReplicaIdx) -> bool {
        self.table().is_draining(idx)
    }

    /// Runs a drain pass on replica `idx` every scaler tick while it is draining.
    async fn run_drain(self, idx: ReplicaIdx) {
        let mut tick = tokio::time::interval(self.inner.settings.scale.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_draining(idx) {
                self.drain_pass(idx).await;
            }
        }
    }

    /// One pass over the copies on draining replica `idx`: moves the wanted ones, unloads
    /// the idle ones; busy copies (requests in flight, another operation under way) wait
    /// for the next pass.
    pub async fn drain_pass(&self, idx: ReplicaIdx) -> DrainPass {
        let mut out = DrainPass::default();
        let Ok(_pass) = self.inner.drains.passes[idx.index()].try_lock() else {
            return out;
        };
        for c in self.drain_candidates(idx, Instant::now()) {
            if !self.is_draining(idx) {
                break;
            }
            if c.wanted && !c.elsewhere {
                match self.place_background(&c.model, Purpose::Drain).await {
                    Ok(_) => out.moved.push(c.model.to_string()),
                    Err(e) => {
                        warn!(model = %c.model, replica = %self.config(idx).id, error = %e,
                              "moving a copy off a draining replica failed; it stays for now");
                        continue;
                    }
                }
            }
            if self.unload_drained(&c.model, idx).await {
                out.unloaded.push(c.model.to_string());
            }
        }
        out.remaining = self.table().replica(idx).map_or(0, |r| r.copies());
        out
    }

    /// The loaded copies on replica `idx` with nothing in flight.
    fn drain_candidates(&self, idx: ReplicaIdx, now: Instant) -> Vec<Candidate> {
        let t = self.table();
        let Some(state) = t.replica(idx) else {
            return Vec::new();
        };
        state
            .by_use()
            .filter_map(|(_, name)| Some((name, t.get(name)?)))
            .filter(|(_, e)| !e.deleting)
            .filter(|(_, e)| e.copy_on(idx).is_some_and(|c| c.state == CopyState::Loaded))
            .filter(|(name, _)| t.in_flight().get(name.as_str(), idx) == 0)
            .map(|(name, e)| Candidate {
                model: name.clone(),
                // A version on its way out is not worth moving.
                wanted: e.role != super::table::Role::Retiring
                    && (e.spec().min_copies > 0
                        || e.last_used()
                            .is_some_and(|u| now.saturating_duration_since(u) < WARM)),
                elsewhere: e.copies().iter().any(|c| {
                    c.replica != idx
                        && c.state != CopyState::Unloading
                        && t.is_healthy(c.replica)
                        && !t.is_draining(c.replica)
                }),
            })
            .collect()
    }

    /// Unloads `model`'s copy from draining replica `idx` if it is still loaded there with
    /// nothing in flight; true if it went.
    async fn unload_drained(&self, model: &ModelName, idx: ReplicaIdx) -> bool {
        let Ok(_op) = self.lock_model(model).await else {
            return false;
        };
        {
            let mut t = self.table();
            let busy = t.in_flight().get(model.as_str(), idx) > 0;
            let loaded = t
                .get(model)
                .filter(|e| !e.deleting)
                .and_then(|e| e.copy_on(idx))
                .is_some_and(|c| c.state == CopyState::Loaded);
            if busy || !loaded {
                return false;
            }
            t.set_copy_state(model, idx, CopyState::Unloading, Instant::now());
        }
        self.update_gauges();
        match self.unload_copy(model, idx, "drained", false).await {
            Ok(()) => true,
            Err(_) => {
                self.table()
                    .set_copy_state(model, idx, CopyState::Loaded, Instant::now());
                self.update_gauges();
                false
            }
        }
    }
}
