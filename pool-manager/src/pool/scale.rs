//! The scaler: once per tick it turns reported traffic into request rates, adds a copy to
//! models whose copies stay busy, removes extra copies once traffic falls, and re-places
//! pinned models that lost copies. Decisions are made under the table lock; the loads and
//! unloads they call for run in their own tasks.

use tokio::time::Instant;
use tracing::{info, warn};

use super::place::Purpose;
use super::table::{CopyState, ReplicaIdx, Role, Table};
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

    /// Looks at every active model (with a copy, a pin or recent traffic) once and
    /// decides; see the module docs.
    pub(super) fn scale_tick(&self) -> Decisions {
        let now = Instant::now();
        let mut d = Decisions::default();
        let mut t = self.table();
        if t.expire_in_flight(now, self.inner.settings.report_ttl) {
            self.inner.room.changed();
        }
        for name in t.active() {
            self.scale_model(&mut t, &name, now, &mut d);
            t.settle_active(&name);
        }
        d
    }

    /// One model's share of a tick: its rate, then at most one decision.
    fn scale_model(&self, t: &mut Table, name: &ModelName, now: Instant, d: &mut Decisions) {
        let s = &self.inner.settings.scale;
        let dt = s.tick.as_secs_f64().max(1e-3);
        // Copies on unhealthy replicas do not count: a pinned model whose replica died is
        // placed again elsewhere now, not when the replica returns.
        let present = t.get(name).map_or(0, |e| {
            e.copies()
                .iter()
                .filter(|c| c.state != CopyState::Unloading && t.is_healthy(c.replica))
                .count()
        });
        let in_flight = t.in_flight().model_total(name.as_str()) as f64;
        let Some(e) = t.get_mut(name) else {
            return;
        };
        let instant = e.window_requests as f64 / dt;
        e.window_requests = 0;
        e.rate = 0.5 * instant + 0.5 * e.rate;
        // A version on its way out is never re-placed or scaled; one on its way in is
        // only pinned (its `minCopies` is the copies it needs).
        if e.deleting || e.scaling || e.role == Role::Retiring {
            return;
        }
        let backing_off = e.failure.as_ref().is_some_and(|f| now < f.retry_at);
        let (min_copies, max_copies) = (e.spec().min_copies as usize, e.spec().max_copies as usize);
        if present < min_copies {
            if !backing_off {
                e.scaling = true;
                d.pin.push(name.clone());
            }
            return;
        }
        let loaded = e.loaded_copies();
        if loaded == 0 {
            return;
        }
        let per_copy = |k: usize| (e.rate / k as f64, in_flight / k as f64);
        let (rate, busy) = per_copy(loaded);
        if rate > s.up_rate || busy > s.up_in_flight {
            e.hot_ticks += 1;
        } else {
            e.hot_ticks = 0;
        }
        let floor = min_copies.max(1);
        let quiet = loaded > floor && {
            let (rate, busy) = per_copy(loaded - 1);
            rate < s.up_rate / 2.0 && busy < s.up_in_flight / 2.0
        };
        e.cold_ticks = if quiet { e.cold_ticks + 1 } else { 0 };
        if loaded > max_copies {
            e.scaling = true;
            d.remove.push(name.clone());
        } else if e.hot_ticks >= s.up_ticks && present < max_copies && !backing_off {
            e.hot_ticks = 0;
            e.scaling = true;
            d.add.push(name.clone());
        } else if e.cold_ticks >= s.down_ticks {
            e.cold_ticks = 0;
            e.scaling = true;
            d.remove.push(name.clone());
        }
    }

    pub(super) fn carry_out(&self, d: Decisions) {
        for (models, purpose) in [(d.pin, Purpose::Pin), (d.add, Purpose::Scale)] {
            for model in models {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = pool.place_background(&model, purpose).await {
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
        if let Some(e) = self.table().get_mut(model) {
            e.scaling = false;
        }
    }

    /// Loads a pinned model's missing copies now (at registration), rather than on the
    /// scaler's next tick.
    pub(super) async fn ensure_pinned(&self, model: &ModelName) {
        loop {
            match self.place_background(model, Purpose::Pin).await {
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
        let Ok(_op) = self.lock_model(model).await else {
            return;
        };
        let Some(replica) = self.claim_extra_copy(model) else {
            return;
        };
        let id = &self.config(replica).id;
        match self.unload_copy(model, replica, "scaled down", false).await {
            Ok(()) => {
                self.inner
                    .metrics
                    .copies_removed
                    .get_or_create(&ReasonLabel { reason: "scale" })
                    .inc();
                info!(model = %model, replica = %id, reason = "scale", "extra copy removed");
                self.events().record(
                    NewEvent::new(EventKind::CopyRemoved)
                        .model(model)
                        .replica(id)
                        .reason("scaled down"),
                );
            }
            Err(_) => {
                self.table()
                    .set_copy_state(model, replica, CopyState::Loaded, Instant::now());
            }
        }
    }

    /// Marks the copy to remove `Unloading` and returns its replica: a loaded one with
    /// nothing in flight, on a draining replica first, then the fullest.
    fn claim_extra_copy(&self, model: &ModelName) -> Option<ReplicaIdx> {
        let mut t = self.table();
        let e = t.get(model).filter(|e| !e.deleting)?;
        let floor = (e.spec().min_copies as usize).max(1);
        if e.loaded_copies() <= floor {
            return None;
        }
        let replica = e
            .copies()
            .iter()
            .filter(|c| {
                c.state == CopyState::Loaded && t.in_flight().get(model.as_str(), c.replica) == 0
            })
            .map(|c| c.replica)
            .max_by_key(|&r| {
                let used = t.replica(r).map_or(0, |s| s.used().memory) as f64;
                let cap = self.config(r).capacity.memory.max(1) as f64;
                (t.is_draining(r), (used / cap * 1e6) as u64)
            })?;
        t.set_copy_state(model, replica, CopyState::Unloading, Instant::now());
        Some(replica)
    }
}
