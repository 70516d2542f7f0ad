//! Draining a replica for maintenance: a draining replica takes no new copies (placement
//! treats it as full), and its copies leave as soon as nothing is in flight on them. A
//! copy that is still wanted (a pinned model, or one used within [`WARM`]) is first placed
//! on another replica, then unloaded; an idle one is simply unloaded (the next request
//! places it elsewhere). Undraining makes the replica eligible again; the draining flag is
//! not persisted (a restarted pool-manager starts with every replica undrained).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::place::Purpose;
use super::table::CopyState;
use super::{Pool, PoolError, ReplicaView};
use crate::events::{EventKind, NewEvent};
use crate::spec::ModelName;

/// A copy used within this long is moved to another replica before it is unloaded.
pub const WARM: Duration = Duration::from_secs(60);

/// Per-replica drain state, readable without the table lock.
pub(super) struct Drains {
    draining: Vec<AtomicBool>,
    /// One pass at a time per replica.
    passes: Vec<tokio::sync::Mutex<()>>,
    /// Whether the replica's drain loop has been started (it runs for the process's life).
    started: Vec<AtomicBool>,
}

impl Drains {
    pub fn new(replicas: usize) -> Self {
        Self {
            draining: (0..replicas).map(|_| AtomicBool::new(false)).collect(),
            passes: (0..replicas).map(|_| tokio::sync::Mutex::new(())).collect(),
            started: (0..replicas).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Whether replica `idx` is draining (an unknown index is not).
    pub fn is_draining(&self, idx: usize) -> bool {
        self.draining
            .get(idx)
            .is_some_and(|d| d.load(Ordering::Relaxed))
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
    fn replica_index(&self, name: &str) -> Result<usize, PoolError> {
        self.inner
            .replicas
            .iter()
            .position(|r| r.id.as_str() == name)
            .ok_or_else(|| PoolError::UnknownReplica(name.to_owned()))
    }

    fn replica_view(&self, idx: usize) -> Result<ReplicaView, PoolError> {
        self.replicas()
            .into_iter()
            .nth(idx)
            .ok_or_else(|| PoolError::Internal("replica vanished".into()))
    }

    /// Marks replica `name` draining (idempotent) and starts moving its copies away.
    pub fn drain(&self, name: &str) -> Result<ReplicaView, PoolError> {
        let idx = self.replica_index(name)?;
        let drains = &self.inner.drains;
        if !drains.draining[idx].swap(true, Ordering::Relaxed) {
            info!(replica = %name, "replica draining: no new copies; its copies move or unload when idle");
            self.events()
                .record(NewEvent::new(EventKind::Drained).replica(name));
        }
        if !drains.started[idx].swap(true, Ordering::Relaxed) {
            tokio::spawn(self.clone().run_drain(idx));
        }
        self.replica_view(idx)
    }

    /// Makes replica `name` take new copies again (idempotent).
    pub fn undrain(&self, name: &str) -> Result<ReplicaView, PoolError> {
        let idx = self.replica_index(name)?;
        if self.inner.drains.draining[idx].swap(false, Ordering::Relaxed) {
            info!(replica = %name, "replica undrained: takes new copies again");
            self.events()
                .record(NewEvent::new(EventKind::Undrained).replica(name));
        }
        self.replica_view(idx)
    }

    pub(super) fn is_draining(&self, idx: usize) -> bool {
        self.inner.drains.is_draining(idx)
    }

    /// Runs a drain pass on replica `idx` every scaler tick while it is draining.
    async fn run_drain(self, idx: usize) {
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
    pub async fn drain_pass(&self, idx: usize) -> DrainPass {
        let mut out = DrainPass::default();
        let Ok(_pass) = self.inner.drains.passes[idx].try_lock() else {
            return out;
        };
        let now = Instant::now();
        let candidates: Vec<Candidate> = {
            let t = self.table();
            t.models
                .iter()
                .filter(|(_, e)| !e.deleting)
                .filter(|(_, e)| {
                    e.copies
                        .iter()
                        .any(|c| c.replica == idx && c.state == CopyState::Loaded)
                })
                .filter(|(name, _)| t.in_flight.get(name.as_str(), idx) == 0)
                .map(|(name, e)| Candidate {
                    model: name.clone(),
                    wanted: e.spec.min_copies > 0
                        || e.last_used
                            .is_some_and(|u| now.saturating_duration_since(u) < WARM),
                    elsewhere: e.copies.iter().any(|c| {
                        c.replica != idx
                            && c.state != CopyState::Unloading
                            && t.healthy[c.replica]
                            && !self.is_draining(c.replica)
                    }),
                })
                .collect()
        };
        for c in candidates {
            if !self.is_draining(idx) {
                break;
            }
            if c.wanted && !c.elsewhere {
                match self.place_copy(&c.model, Purpose::Drain).await {
                    Ok(_) => out.moved.push(c.model.to_string()),
                    Err(e) => {
                        warn!(model = %c.model, replica = %self.inner.replicas[idx].id, error = %e,
                              "moving a copy off a draining replica failed; it stays for now");
                        continue;
                    }
                }
            }
            if self.unload_drained(&c.model, idx).await {
                out.unloaded.push(c.model.to_string());
            }
        }
        out.remaining = self
            .table()
            .models
            .values()
            .filter(|e| e.holds(idx))
            .count();
        out
    }

    /// Unloads `model`'s copy from draining replica `idx` if it is still loaded there with
    /// nothing in flight; true if it went.
    async fn unload_drained(&self, model: &ModelName, idx: usize) -> bool {
        let Some(lock) = self.table().models.get(model).map(|e| e.op_lock.clone()) else {
            return false;
        };
        let _op = lock.lock().await;
        {
            let mut guard = self.table();
            let t = &mut *guard;
            let busy = t.in_flight.get(model.as_str(), idx) > 0;
            let Some(e) = t.models.get_mut(model).filter(|e| !e.deleting) else {
                return false;
            };
            let Some(copy) = e
                .copies
                .iter_mut()
                .find(|c| c.replica == idx && c.state == CopyState::Loaded)
            else {
                return false;
            };
            if busy {
                return false;
            }
            copy.state = CopyState::Unloading;
            copy.since = Instant::now();
        }
        self.update_gauges();
        match self.unload_copy(model, idx, "drained", false).await {
            Ok(()) => true,
            Err(_) => {
                if let Some(e) = self.table().models.get_mut(model) {
                    for c in e.copies.iter_mut().filter(|c| c.replica == idx) {
                        c.state = CopyState::Loaded;
                    }
                }
                self.update_gauges();
                false
            }
        }
    }
}
