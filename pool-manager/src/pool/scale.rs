//! The scaler: once per tick it turns reported traffic into request rates, adds a copy to
//! models whose copies stay busy, removes extra copies once traffic falls, and re-places
//! pinned models that lost copies. Decisions are made under the table lock; the loads and
//! unloads they call for run in their own tasks.

use std::time::Instant;

use tracing::{info, warn};

use super::place::Purpose;
use super::table::CopyState;
use super::Pool;
use crate::events::{EventKind, NewEvent};
use crate::metrics::ReasonLabel;
use crate::spec::ModelName;

/// What one tick decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Decisions {
    pub pin: Vec<ModelName>,
    pub add: Vec<ModelName>,
    pub remove: Vec<ModelName>,
}

impl Pool {
    /// Runs the scaler forever, every `settings.scale.tick`.
    pub async fn run_scaler(self) {
        let mut tick = tokio::time::interval(self.inner.settings.scale.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let decisions = self.scale_tick();
            self.carry_out(decisions);
        }
    }

    /// One scaler tick now, for tests outside the pool.
    #[cfg(test)]
    pub(crate) fn scale_once(&self) {
        let decisions = self.scale_tick();
        self.carry_out(decisions);
    }

    /// Looks at every model once and decides; see the module docs.
    pub(super) fn scale_tick(&self) -> Decisions {
        let s = &self.inner.settings.scale;
        let dt = s.tick.as_secs_f64().max(1e-3);
        let now = Instant::now();
        let mut d = Decisions::default();
        let mut guard = self.table();
        let t = &mut *guard;
        t.in_flight.expire(now, self.inner.settings.report_ttl);
        for (name, e) in t.models.iter_mut() {
            let instant = e.window_requests as f64 / dt;
            e.window_requests = 0;
            e.rate = 0.5 * instant + 0.5 * e.rate;
            if e.deleting || e.scaling {
                continue;
            }
            // Copies on unhealthy replicas do not count: a pinned model whose replica died is
            // placed again elsewhere now, not when the replica returns.
            let present = e
                .copies
                .iter()
                .filter(|c| c.state != CopyState::Unloading && t.healthy[c.replica])
                .count();
            let backing_off = e.failure.as_ref().is_some_and(|f| now < f.retry_at);
            if present < e.spec.min_copies as usize {
                if !backing_off {
                    e.scaling = true;
                    d.pin.push(name.clone());
                }
                continue;
            }
            let loaded = e.loaded_copies();
            if loaded == 0 {
                continue;
            }
            let in_flight = t.in_flight.model_total(name.as_str()) as f64;
            let per_copy = |k: usize| (e.rate / k as f64, in_flight / k as f64);
            let (rate, busy) = per_copy(loaded);
            if rate > s.up_rate || busy > s.up_in_flight {
                e.hot_ticks += 1;
            } else {
                e.hot_ticks = 0;
            }
            let floor = (e.spec.min_copies as usize).max(1);
            let quiet = loaded > floor && {
                let (rate, busy) = per_copy(loaded - 1);
                rate < s.up_rate / 2.0 && busy < s.up_in_flight / 2.0
            };
            e.cold_ticks = if quiet { e.cold_ticks + 1 } else { 0 };
            if loaded > e.spec.max_copies as usize {
                e.scaling = true;
                d.remove.push(name.clone());
            } else if e.hot_ticks >= s.up_ticks
                && present < e.spec.max_copies as usize
                && !backing_off
            {
                e.hot_ticks = 0;
                e.scaling = true;
                d.add.push(name.clone());
            } else if e.cold_ticks >= s.down_ticks {
                e.cold_ticks = 0;
                e.scaling = true;
                d.remove.push(name.clone());
            }
        }
        d
    }

    pub(super) fn carry_out(&self, d: Decisions) {
        for (models, purpose) in [(d.pin, Purpose::Pin), (d.add, Purpose::Scale)] {
            for model in models {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = pool.place_copy(&model, purpose).await {
                        warn!(model = %model, error = %e, "adding a copy failed");
                    }
                    pool.done_scaling(&model);
                });
            }
        }
        for model in d.remove {
            let pool = self.clone();
            tokio::spawn(async move {
                pool.remove_copy(&model).await;
                pool.done_scaling(&model);
            });
        }
    }

    fn done_scaling(&self, model: &ModelName) {
        if let Some(e) = self.table().models.get_mut(model) {
            e.scaling = false;
        }
    }

    /// Loads a pinned model's missing copies now (at registration), rather than on the
    /// scaler's next tick.
    pub(super) async fn ensure_pinned(&self, model: &ModelName) {
        loop {
            match self.place_copy(model, Purpose::Pin).await {
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(e) => {
                    warn!(model = %model, error = %e, "pinning failed; the scaler retries");
                    return;
                }
            }
        }
    }

    /// Removes one extra copy: a loaded one with nothing in flight, from the fullest
    /// replica. Does nothing when every candidate is busy (the next tick tries again).
    pub(super) async fn remove_copy(&self, model: &ModelName) {
        let Some(lock) = self.table().models.get(model).map(|e| e.op_lock.clone()) else {
            return;
        };
        let _op = lock.lock().await;
        let replica = {
            let mut guard = self.table();
            let t = &mut *guard;
            let Some(e) = t.models.get(model).filter(|e| !e.deleting) else {
                return;
            };
            let floor = (e.spec.min_copies as usize).max(1);
            if e.loaded_copies() <= floor {
                return;
            }
            let fullest = e
                .copies
                .iter()
                .filter(|c| {
                    c.state == CopyState::Loaded && t.in_flight.get(model.as_str(), c.replica) == 0
                })
                .map(|c| c.replica)
                .max_by_key(|&r| {
                    let used = t.used(r).memory as f64;
                    let cap = self.inner.replicas[r].capacity.memory.max(1) as f64;
                    // A copy on a draining replica goes first.
                    (self.is_draining(r), (used / cap * 1e6) as u64)
                });
            let Some(replica) = fullest else {
                return;
            };
            if let Some(e) = t.models.get_mut(model) {
                for c in e.copies.iter_mut().filter(|c| c.replica == replica) {
                    c.state = CopyState::Unloading;
                    c.since = Instant::now();
                }
            }
            replica
        };
        match self.unload_copy(model, replica, "scaled down", false).await {
            Ok(()) => {
                self.inner
                    .metrics
                    .copies_removed
                    .get_or_create(&ReasonLabel { reason: "scale" })
                    .inc();
                info!(model = %model, replica = %self.inner.replicas[replica].id, reason = "scale", "extra copy removed");
                self.events().record(
                    NewEvent::new(EventKind::CopyRemoved)
                        .model(model)
                        .replica(&self.inner.replicas[replica].id)
                        .reason("scaled down"),
                );
            }
            Err(_) => {
                if let Some(e) = self.table().models.get_mut(model) {
                    for c in e.copies.iter_mut().filter(|c| c.replica == replica) {
                        c.state = CopyState::Loaded;
                    }
                }
            }
        }
    }
}
