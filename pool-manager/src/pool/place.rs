//! Placing a copy of a model (for a request, a pin, or a scale-up): plan with
//! [`crate::placement::plan`] from a snapshot of the table, evict the plan's victims, stage
//! the files, load; and unloading copies.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::OwnedMutexGuard;
use tracing::{info, warn};

use super::table::{Copy, CopyState, Failure};
use super::{backoff, Pool, PoolError};
use crate::events::{EventKind, NewEvent};
use crate::metrics::{ReasonLabel, ReplicaLabel};
use crate::placement::{self, PlacementError, ReplicaSnapshot, Resident, Resources};
use crate::spec::ModelName;
use mm_wire::RouteResponse;

/// Why a copy is being placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A request needs the model and no copy is routable.
    Demand,
    /// The model has fewer copies than its `minCopies`.
    Pin,
    /// Traffic on the model's copies is high.
    Scale,
    /// Its copies are on draining replicas only; one is moved elsewhere.
    Drain,
}

impl Purpose {
    fn reason(self) -> &'static str {
        match self {
            Purpose::Demand => "demand",
            Purpose::Pin => "pin",
            Purpose::Scale => "scale",
            Purpose::Drain => "drain",
        }
    }
}

/// A victim chosen by a plan, with its op lock held until it is unloaded.
struct Victim {
    model: ModelName,
    _lock: OwnedMutexGuard<()>,
    loaded_at: Instant,
    last_used: Option<Instant>,
    size: Resources,
}

impl Pool {
    /// Loads `model` unless a copy is routable already; the single-flight slow path of
    /// [`Pool::route`].
    pub(super) async fn place_for_demand(
        &self,
        model: &ModelName,
    ) -> Result<RouteResponse, PoolError> {
        match self.place_copy(model, Purpose::Demand).await? {
            Some(replica) => {
                let t = self.table();
                let inputs = t.models.get(model).and_then(|e| e.inputs.clone());
                self.route_to(&t, Some(model), replica, inputs)
                    .ok_or(PoolError::NoHealthyReplica)
            }
            None => Err(PoolError::Internal(
                "demand placement placed nothing".into(),
            )),
        }
    }

    /// Places one more copy of `model` if `purpose` still calls for it once the model's op
    /// lock is held. Returns the replica of the new (or, for demand, existing routable)
    /// copy, or `None` when nothing was needed.
    pub(super) async fn place_copy(
        &self,
        model: &ModelName,
        purpose: Purpose,
    ) -> Result<Option<usize>, PoolError> {
        let lock = {
            let t = self.table();
            let entry = t
                .models
                .get(model)
                .filter(|e| !e.deleting)
                .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
            entry.op_lock.clone()
        };
        let _op = lock.lock().await;
        // Remote files are pulled (or found cached) before anything is planned or evicted.
        let files = self.prepare_files(model).await?;
        let settings = &self.inner.settings;
        let deadline = Instant::now() + settings.route_wait;

        // Plan and reserve under the table lock. A demand load that finds no room only
        // because the candidates are younger than the minimum age (or busy with another
        // operation) waits for the first to become evictable, within the route wait, rather
        // than fail: those will be evictable soon, unlike ones with requests in flight or
        // pinned, for which it fails fast.
        let (idx, victims, spec, mass) = loop {
            let now = Instant::now();
            let planned: Result<_, std::time::Duration> = 'plan: {
                let mut guard = self.table();
                let t = &mut *guard;
                let entry = t
                    .models
                    .get(model)
                    .filter(|e| !e.deleting)
                    .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
                let present = entry
                    .copies
                    .iter()
                    .filter(|c| c.state != CopyState::Unloading && t.healthy[c.replica])
                    .count();
                match purpose {
                    Purpose::Demand => {
                        if let Some(c) = entry.routable(&t.healthy).next() {
                            return Ok(Some(c.replica));
                        }
                    }
                    Purpose::Pin if present >= entry.spec.min_copies as usize => return Ok(None),
                    Purpose::Scale if present >= entry.spec.max_copies as usize => return Ok(None),
                    Purpose::Drain
                        if entry.copies.iter().any(|c| {
                            c.state != CopyState::Unloading
                                && t.healthy[c.replica]
                                && !self.is_draining(c.replica)
                        }) =>
                    {
                        return Ok(None)
                    }
                    _ => {}
                }
                if let Some(f) = &entry.failure {
                    if now < f.retry_at {
                        return Err(PoolError::LoadFailed {
                            name: model.to_string(),
                            reason: f.reason.clone(),
                            retry_in: Some(f.retry_at - now),
                        });
                    }
                }
                let need = entry.size();
                let holds: Vec<bool> = (0..self.inner.replicas.len())
                    .map(|i| entry.holds(i))
                    .collect();

                let n = self.inner.replicas.len();
                let in_flight = t.in_flight.replica_totals(n);
                let used = t.used_all(n);
                let mut locks: HashMap<ModelName, OwnedMutexGuard<()>> = HashMap::new();
                // How soon the first model protected only by the minimum age becomes evictable.
                let mut age_out: Option<std::time::Duration> = None;
                // One pass over the models, bucketing each copy under its replica.
                let mut residents: Vec<Vec<Resident<ModelName>>> =
                    (0..n).map(|_| Vec::new()).collect();
                for (name, e) in t.models.iter().filter(|(n, _)| *n != model) {
                    for c in &e.copies {
                        let last = e.last_used.map_or(c.since, |u| u.max(c.since));
                        let age = now.saturating_duration_since(last);
                        let soon = c.state == CopyState::Loaded
                            && !e.deleting
                            && t.in_flight.get(name.as_str(), c.replica) == 0
                            && e.loaded_copies() > e.spec.min_copies as usize;
                        if soon && age < settings.min_age {
                            let left = settings.min_age - age;
                            age_out =
                                Some(age_out.map_or(left, |w: std::time::Duration| w.min(left)));
                        } else if soon && !locks.contains_key(name) && e.op_lock.try_lock().is_err()
                        {
                            // Busy with another placement or unload: free again in a moment.
                            let left = std::time::Duration::from_millis(50);
                            age_out =
                                Some(age_out.map_or(left, |w: std::time::Duration| w.min(left)));
                        }
                        let evictable = c.state == CopyState::Loaded
                            && !e.deleting
                            && t.in_flight.get(name.as_str(), c.replica) == 0
                            && now.saturating_duration_since(last) >= settings.min_age
                            && e.loaded_copies() > e.spec.min_copies as usize
                            && (locks.contains_key(name)
                                || match e.op_lock.clone().try_lock_owned() {
                                    Ok(g) => {
                                        locks.insert(name.clone(), g);
                                        true
                                    }
                                    Err(_) => false,
                                });
                        if let Some(slot) = residents.get_mut(c.replica) {
                            slot.push(Resident {
                                key: name.clone(),
                                size: e.size(),
                                evictable,
                                rank: u64::try_from(
                                    last.saturating_duration_since(self.inner.epoch).as_nanos(),
                                )
                                .unwrap_or(u64::MAX),
                            });
                        }
                    }
                }
                let snapshots: Vec<ReplicaSnapshot<ModelName>> = residents
                    .into_iter()
                    .enumerate()
                    .map(|(i, residents)| ReplicaSnapshot {
                        // A draining replica takes no new copies.
                        healthy: t.healthy[i] && !self.is_draining(i),
                        holds_model: holds[i],
                        capacity: self.inner.replicas[i].capacity,
                        used: used[i],
                        in_flight: in_flight[i],
                        residents,
                    })
                    .collect();
                let plan = match placement::plan(&snapshots, need, settings.watermarks) {
                    Ok(plan) => plan,
                    Err(PlacementError::NoRoom { .. })
                        if purpose == Purpose::Demand
                            && age_out.is_some_and(|w| now + w < deadline) =>
                    {
                        // The churn guard, not a lack of memory: wait for it.
                        break 'plan Err(
                            age_out.unwrap_or_default() + std::time::Duration::from_millis(5)
                        );
                    }
                    Err(source) => {
                        self.inner.metrics.placement_failures.inc();
                        warn!(model = %model, purpose = purpose.reason(), error = %source, "placement failed");
                        return Err(PoolError::NoCapacity {
                            name: model.to_string(),
                            source,
                        });
                    }
                };
                let mut victims = Vec::with_capacity(plan.evict.len());
                for key in &plan.evict {
                    let (Some(lock), Some(e)) = (locks.remove(key), t.models.get_mut(key)) else {
                        return Err(PoolError::Internal("planned victim vanished".into()));
                    };
                    let mut loaded_at = now;
                    for c in e.copies.iter_mut().filter(|c| c.replica == plan.replica) {
                        loaded_at = c.since;
                        c.state = CopyState::Unloading;
                        c.since = now;
                    }
                    victims.push(Victim {
                        model: key.clone(),
                        _lock: lock,
                        loaded_at,
                        last_used: e.last_used,
                        size: e.size(),
                    });
                }
                drop(locks);
                let entry = t
                    .models
                    .get_mut(model)
                    .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
                entry.copies.push(Copy {
                    replica: plan.replica,
                    state: CopyState::Loading,
                    since: now,
                });
                Ok((
                    plan.replica,
                    victims,
                    entry.spec.clone(),
                    plan.mass_eviction,
                ))
            };
            match planned {
                Ok(reserved) => break reserved,
                Err(wait) => {
                    tracing::debug!(model = %model, ?wait, "no room until a recently used model ages out; waiting");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        self.update_gauges();
        let replica = &self.inner.replicas[idx];
        let label = ReplicaLabel::new(replica.id.as_str());
        if mass {
            self.inner
                .metrics
                .mass_evictions
                .get_or_create(&label)
                .inc();
            warn!(model = %model, replica = %replica.id, victims = victims.len(),
                  "placement evicts most of the replica's models");
        }
        info!(model = %model, replica = %replica.id, purpose = purpose.reason(),
              memory = spec.memory, gpu_memory = spec.gpu_memory,
              evict = ?victims.iter().map(|v| v.model.as_str()).collect::<Vec<_>>(),
              "placing model");
        self.events().record(
            NewEvent::new(EventKind::Placed)
                .model(model)
                .replica(&replica.id)
                .size(spec.memory, spec.gpu_memory)
                .reason(purpose.reason()),
        );

        for victim in &victims {
            if let Err(reason) = self.unload_copy(&victim.model, idx, "evicted", false).await {
                self.restore_victims(&victims, idx);
                self.forget_copy(model, idx);
                self.update_gauges();
                return Err(PoolError::EvictionFailed {
                    name: model.to_string(),
                    victim: victim.model.to_string(),
                    replica: replica.id.to_string(),
                    reason,
                });
            }
            self.inner.metrics.evictions.get_or_create(&label).inc();
            self.inner
                .metrics
                .eviction_age
                .observe(victim.loaded_at.elapsed().as_secs_f64());
            if let Some(used) = victim.last_used {
                self.inner
                    .metrics
                    .eviction_idle
                    .observe(used.elapsed().as_secs_f64());
            }
            info!(model = %victim.model, replica = %replica.id, for_model = %model,
                  memory = victim.size.memory, gpu_memory = victim.size.gpu_memory,
                  loaded_seconds = victim.loaded_at.elapsed().as_secs_f64(),
                  idle_seconds = victim.last_used.map(|u| u.elapsed().as_secs_f64()),
                  reason = "room for another model", "model evicted");
            self.events().record(
                NewEvent::new(EventKind::Evicted)
                    .model(&victim.model)
                    .replica(&replica.id)
                    .size(victim.size.memory, victim.size.gpu_memory)
                    .seconds(victim.loaded_at.elapsed().as_secs_f64())
                    .reason(format!("room for {model}")),
            );
        }
        drop(victims);

        // Into the shared repository, or read to travel in the load request (files.rs).
        let staging = self.stage_files(model, files.as_ref()).await;
        let started = Instant::now();
        let outcome = match staging {
            Ok(payload) => self.load_staged(replica, model, payload).await,
            Err(e) => Err(e),
        };
        drop(files);
        let elapsed = started.elapsed();
        let (measured, inputs) = match outcome {
            Ok(()) => (
                replica.client.memory_usage(model.as_str()).await.ok(),
                replica.client.inputs(model.as_str()).await.ok(),
            ),
            Err(_) => (None, None),
        };
        let result = {
            let mut t = self.table();
            let entry = t
                .models
                .get_mut(model)
                .ok_or_else(|| PoolError::Internal("model vanished during its load".into()))?;
            match outcome {
                Ok(()) => {
                    if let Some(c) = entry.copies.iter_mut().find(|c| c.replica == idx) {
                        c.state = CopyState::Loaded;
                        c.since = Instant::now();
                    }
                    entry.failure = None;
                    if inputs.is_some() {
                        entry.inputs = inputs;
                    }
                    if let Some(m) = measured {
                        let declared = Resources::new(entry.spec.memory, entry.spec.gpu_memory);
                        let seen = Resources::new(m.cpu, m.gpu);
                        if !seen.fits_in(declared) {
                            info!(model = %model, declared = ?declared, measured = ?seen,
                                  "replica measured more memory than declared; accounting the larger");
                            entry.measured = seen.max(entry.measured);
                        }
                    }
                    if entry.loaded_copies() > 1 {
                        self.inner
                            .metrics
                            .copies_added
                            .get_or_create(&ReasonLabel {
                                reason: purpose.reason(),
                            })
                            .inc();
                    }
                    self.inner.metrics.loads.get_or_create(&label).inc();
                    self.inner
                        .metrics
                        .load_duration
                        .observe(elapsed.as_secs_f64());
                    let size = entry.size();
                    info!(model = %model, replica = %replica.id, seconds = elapsed.as_secs_f64(),
                          memory = size.memory, gpu_memory = size.gpu_memory,
                          purpose = purpose.reason(), copies = entry.loaded_copies(), "model loaded");
                    self.events().record(
                        NewEvent::new(EventKind::Loaded)
                            .model(model)
                            .replica(&replica.id)
                            .size(size.memory, size.gpu_memory)
                            .seconds(elapsed.as_secs_f64())
                            .reason(purpose.reason()),
                    );
                    if entry.loaded_copies() > 1 {
                        self.events().record(
                            NewEvent::new(EventKind::CopyAdded)
                                .model(model)
                                .replica(&replica.id)
                                .size(size.memory, size.gpu_memory)
                                .reason(purpose.reason()),
                        );
                    }
                    Ok(Some(idx))
                }
                Err(reason) => {
                    entry.copies.retain(|c| c.replica != idx);
                    let count = entry
                        .failure
                        .as_ref()
                        .map_or(0, |f| f.count)
                        .saturating_add(1);
                    let reason = format!("replica {}: {reason}", replica.id);
                    entry.failure = Some(Failure {
                        reason: reason.clone(),
                        count,
                        retry_at: Instant::now() + backoff(settings, count),
                    });
                    self.inner.metrics.load_failures.get_or_create(&label).inc();
                    warn!(model = %model, replica = %replica.id, memory = spec.memory,
                          gpu_memory = spec.gpu_memory, purpose = purpose.reason(),
                          error = %reason, "model load failed");
                    self.events().record(
                        NewEvent::new(EventKind::LoadFailed)
                            .model(model)
                            .replica(&replica.id)
                            .size(spec.memory, spec.gpu_memory)
                            .seconds(elapsed.as_secs_f64())
                            .reason(&reason),
                    );
                    Err(PoolError::LoadFailed {
                        name: model.to_string(),
                        reason,
                        retry_in: None,
                    })
                }
            }
        };
        self.update_gauges();
        result
    }

    /// Puts planned victims back to `Loaded` when an eviction failed half-way.
    fn restore_victims(&self, victims: &[Victim], replica: usize) {
        let mut t = self.table();
        for v in victims {
            if let Some(e) = t.models.get_mut(&v.model) {
                for c in e.copies.iter_mut().filter(|c| c.replica == replica) {
                    if c.state == CopyState::Unloading {
                        c.state = CopyState::Loaded;
                    }
                }
            }
        }
    }

    pub(super) fn forget_copy(&self, model: &ModelName, replica: usize) {
        if let Some(e) = self.table().models.get_mut(model) {
            e.copies.retain(|c| c.replica != replica);
        }
    }

    /// Unloads `model` from `replica` and waits (bounded) until the replica has let it go,
    /// then drops the copy from the table. On failure the copy stays (in `Unloading`)
    /// unless `force`, for callers that forget the copy either way (delete, spec change):
    /// an unreachable replica has lost the model anyway.
    pub(super) async fn unload_copy(
        &self,
        model: &ModelName,
        replica: usize,
        why: &'static str,
        force: bool,
    ) -> Result<(), String> {
        let r = &self.inner.replicas[replica];
        let size = self
            .table()
            .models
            .get(model)
            .map_or(Resources::ZERO, |e| e.size());
        let outcome = r
            .client
            .unload(model.as_str())
            .await
            .map_err(|e| e.to_string());
        match &outcome {
            Ok(()) => {
                // Triton answers before the model is gone. GPU memory must really be free
                // before another model loads into it (or the load can run out of device
                // memory); host memory of a stopping model comes back within a second or
                // two, so host-only models are not waited for.
                let gpu = self
                    .table()
                    .models
                    .get(model)
                    .is_some_and(|e| e.size().gpu_memory > 0);
                if gpu {
                    self.wait_unloaded(model, replica).await;
                }
                self.inner
                    .metrics
                    .unloads
                    .get_or_create(&ReplicaLabel::new(r.id.as_str()))
                    .inc();
                info!(model = %model, replica = %r.id, memory = size.memory,
                      gpu_memory = size.gpu_memory, reason = why, "model unloaded");
                if why != "evicted" {
                    self.events().record(
                        NewEvent::new(EventKind::Unloaded)
                            .model(model)
                            .replica(&r.id)
                            .size(size.memory, size.gpu_memory)
                            .reason(why),
                    );
                }
            }
            Err(e) => warn!(model = %model, replica = %r.id, why, error = %e, "unload failed"),
        }
        if outcome.is_ok() || force {
            self.forget_copy(model, replica);
            self.update_gauges();
        }
        outcome
    }

    /// Triton answers an unload before the model is gone (a Python model's process takes
    /// ~1 s to exit); memory is only free once its index stops listing it as READY or
    /// UNLOADING. Bounded by `unload_wait`; past it we go on and say so. Used for models
    /// holding GPU memory.
    async fn wait_unloaded(&self, model: &ModelName, replica: usize) {
        let r = &self.inner.replicas[replica];
        let deadline = Instant::now() + self.inner.settings.unload_wait;
        loop {
            match r.client.index().await {
                Ok(index) => {
                    let busy = index.iter().any(|m| {
                        m.name == model.as_str()
                            && matches!(m.state.as_str(), "READY" | "UNLOADING" | "LOADING")
                    });
                    if !busy {
                        return;
                    }
                }
                Err(e) => {
                    warn!(model = %model, replica = %r.id, error = %e, "cannot confirm unload");
                    return;
                }
            }
            if Instant::now() >= deadline {
                warn!(model = %model, replica = %r.id, "model still unloading after the unload wait");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
