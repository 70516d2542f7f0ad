//! Waiting for room. A request whose load is blocked only by copies that are busy right now
//! (requests in flight, used within the minimum age, another operation under way) waits
//! for them instead of failing, within its route wait, in arrival order: the first such
//! request takes the room queue's turn (a fair lock) and later ones queue behind it, so
//! memory freed goes to the oldest waiter. Background placements (pins, scaling, drains)
//! never wait: they fail and are retried on their next tick.
//!
//! Waiters are woken by [`Room::changed`], which every event that may free memory or lift a
//! blocker calls: an op lock released ([`OpGuard`]), requests in flight falling, a replica
//! coming back or undrained. A waiter blocked by requests in flight also *watches* those
//! models: they are marked in the routing table, and the gateway reports the end of their
//! last request at once instead of at its next usage report, so an idle model is
//! evictable within milliseconds.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{watch, OwnedMutexGuard};
use tokio::time::Instant;

use super::table::Entry;
use super::{Pool, PoolError};
use crate::spec::ModelName;

/// The room signal and the queue of waiting placements.
pub(super) struct Room {
    changes: watch::Sender<u64>,
    turn: tokio::sync::Mutex<()>,
    queued: AtomicUsize,
}

impl Room {
    pub fn new() -> Self {
        Self {
            changes: watch::channel(0).0,
            turn: tokio::sync::Mutex::new(()),
            queued: AtomicUsize::new(0),
        }
    }

    /// Something that may free memory or lift a blocker happened: waiters plan again.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees every change after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether placements are queued or waiting: a newcomer goes behind them.
    pub fn is_busy(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > 0
    }
}

/// A model's op lock, held. Letting it go may unblock a waiting placement, so dropping it
/// signals [`Room::changed`].
pub(super) struct OpGuard {
    guard: Option<OwnedMutexGuard<()>>,
    pool: Pool,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.pool.inner.room.changed();
    }
}

impl Pool {
    /// Waits for `model`'s op lock (deleted or not: callers check what they need).
    pub(super) async fn lock_model(&self, model: &ModelName) -> Result<OpGuard, PoolError> {
        let lock = self
            .table()
            .get_mut(model)
            .map(Entry::op_lock)
            .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
        Ok(OpGuard {
            guard: Some(lock.lock_owned().await),
            pool: self.clone(),
        })
    }

    /// `e`'s op lock if it is free now (never waits).
    pub(super) fn try_lock_entry(&self, e: &mut Entry) -> Option<OpGuard> {
        let guard = e.op_lock().try_lock_owned().ok()?;
        Some(OpGuard {
            guard: Some(guard),
            pool: self.clone(),
        })
    }
}

/// One placement's stay in the room queue: its turn once it has it, and the models it
/// watches. Both are given back when it is dropped, however the placement ends.
pub(super) struct Waiter<'p> {
    pool: &'p Pool,
    turn: Option<tokio::sync::MutexGuard<'p, ()>>,
    queued: bool,
    watching: Vec<ModelName>,
}

impl<'p> Waiter<'p> {
    pub fn new(pool: &'p Pool) -> Self {
        Self {
            pool,
            turn: None,
            queued: false,
            watching: Vec::new(),
        }
    }

    pub fn has_turn(&self) -> bool {
        self.turn.is_some()
    }

    /// Queues for the turn, in arrival order; errs with `timeout` if `deadline` passes first.
    pub async fn take_turn(
        &mut self,
        deadline: Instant,
        timeout: impl FnOnce() -> PoolError,
    ) -> Result<(), PoolError> {
        let room = &self.pool.inner.room;
        if !self.queued {
            room.queued.fetch_add(1, Ordering::SeqCst);
            self.queued = true;
        }
        match tokio::time::timeout_at(deadline, room.turn.lock()).await {
            Ok(turn) => {
                self.turn = Some(turn);
                Ok(())
            }
            Err(_) => Err(timeout()),
        }
    }

    /// Watches exactly `models` (those whose requests in flight block the planned room).
    pub fn watch(&mut self, mut models: Vec<ModelName>) {
        models.sort();
        models.dedup();
        if models == self.watching {
            return;
        }
        {
            let mut t = self.pool.table();
            for m in &self.watching {
                t.watch(m, false);
            }
            for m in &models {
                t.watch(m, true);
            }
        }
        self.watching = models;
        self.pool.publish();
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.watch(Vec::new());
        if self.queued {
            self.pool.inner.room.queued.fetch_sub(1, Ordering::SeqCst);
        }
        // The next in line plans at once: this one may have left room, or given up.
        drop(self.turn.take());
        self.pool.inner.room.changed();
    }
}
