//! Placing a copy of a model (for a request, a pin, a scale-up or a drain), in four steps
//! each on one screen: [`Pool::reserve`] plans from a snapshot of the table and claims the
//! replica and the victims (waiting for room when the purpose allows), `evict` unloads the
//! victims, `load` stages the files and loads, `record` writes the outcome. Also unloading
//! a copy. A cold request's time in each step is observed in
//! `mm_cold_phase_seconds{phase}`.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::room::{OpGuard, Waiter};
use super::snapshot::snapshot;
use super::table::{CopyState, ReplicaIdx, Table};
use super::{Pool, PoolError};
use crate::events::{EventKind, NewEvent};
use crate::metrics::{ReasonLabel, ReplicaLabel};
use crate::placement::{self, Decision, PlacementError, Resources, Wait};
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

/// A victim chosen by a plan, its op lock held until it is unloaded.
struct Victim {
    model: ModelName,
    _lock: OpGuard,
    loaded_at: Instant,
    last_used: Option<Instant>,
    size: Resources,
    /// Its priority in the victim order when it was chosen (GDSF's `H`; LRU: seconds from
    /// the pool's start to its last use).
    priority: f64,
}

/// A replica claimed for a new copy: the copy is in the table as `Loading`, the victims as
/// `Unloading`.
struct Reservation {
    replica: ReplicaIdx,
    victims: Vec<Victim>,
    /// The model's declared size (host and GPU memory).
    declared: Resources,
    mass_eviction: bool,
}

/// What one planning attempt under the table lock came to.
enum Attempt {
    /// Nothing to place: the replica of the copy that serves already, if any.
    Needless(Option<ReplicaIdx>),
    Reserved(Reservation),
    /// A planned victim became busy between the plan and its lock: plan again.
    Raced,
    Wait(Wait<ModelName>, Resources),
    Refused(PlacementError),
}

/// What a load came to, with the model's metadata when it worked.
struct Loaded {
    outcome: Result<(), String>,
    elapsed: Duration,
    measured: Option<crate::replica::MemoryUsage>,
    description: Option<super::metadata::Description>,
}

/// Times the steps of a cold request into `mm_cold_phase_seconds` (demand loads only).
pub(super) struct Phases<'p> {
    pool: &'p Pool,
    on: bool,
    last: Instant,
}

impl<'p> Phases<'p> {
    pub fn new(pool: &'p Pool, purpose: Purpose, since: Instant) -> Self {
        Self {
            pool,
            on: purpose == Purpose::Demand,
            last: since,
        }
    }

    /// Ends phase `phase` now.
    pub fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        if self.on {
            self.pool
                .inner
                .metrics
                .cold_phase(phase, now.saturating_duration_since(self.last));
        }
        self.last = now;
    }
}

/// Planning attempts that found a victim taken between plan and lock before giving up.
const MAX_RACES: u32 = 16;

impl Pool {
    /// Loads `model` unless a copy is routable already; the single-flight slow path of
    /// [`Pool::route`], giving up waiting for room at `deadline`.
    pub(super) async fn place_for_demand(
        &self,
        model: &ModelName,
        started: Instant,
        deadline: Instant,
    ) -> Result<RouteResponse, PoolError> {
        let replica = self
            .place_copy(model, Purpose::Demand, started, deadline)
            .await?
            .ok_or_else(|| PoolError::Internal("demand placement placed nothing".into()))?;
        let t = self.table();
        let inputs = t.get(model).and_then(|e| e.inputs.clone());
        self.route_to(&t, Some(model), replica, inputs)
            .ok_or(PoolError::NoHealthyReplica)
    }

    /// Places one more copy of `model` if `purpose` still calls for it once the model's op
    /// lock is held: reserve, evict, load, record. Returns the replica of the new (or, for
    /// demand, existing routable) copy, or `None` when nothing was needed.
    pub(super) async fn place_copy(
        &self,
        model: &ModelName,
        purpose: Purpose,
        started: Instant,
        deadline: Instant,
    ) -> Result<Option<ReplicaIdx>, PoolError> {
        let mut phases = Phases::new(self, purpose, started);
        let _op = self.lock_model(model).await?;
        phases.mark("queue");
        // Remote files are pulled (or found cached) before anything is planned or evicted.
        let files = self.prepare_files(model).await?;
        phases.mark("files");
        let reservation = match self.reserve(model, purpose, deadline).await? {
            Ok(r) => r,
            Err(existing) => return Ok(existing),
        };
        phases.mark("placement");
        self.evict(model, purpose, &reservation).await?;
        phases.mark("eviction");
        let loaded = self
            .load(model, reservation.replica, files, &mut phases)
            .await;
        let result = self.record(model, purpose, &reservation, loaded);
        phases.mark("table_update");
        result
    }

    /// Plans and claims room for `model` (see [`Attempt`]); demand placements wait for
    /// busy copies to free room, in arrival order, until `deadline`. `Ok(Err(_))` means
    /// nothing needs placing.
    async fn reserve(
        &self,
        model: &ModelName,
        purpose: Purpose,
        deadline: Instant,
    ) -> Result<Result<Reservation, Option<ReplicaIdx>>, PoolError> {
        let waits = purpose == Purpose::Demand;
        let mut waiter = Waiter::new(self);
        if waits && self.inner.room.is_busy() {
            waiter
                .take_turn(deadline, || {
                    self.refused(model, purpose, PlacementError::Queued)
                })
                .await?;
        }
        let mut races = 0;
        loop {
            let mut changes = self.inner.room.subscribe();
            let now = Instant::now();
            match self.try_reserve(model, purpose, now)? {
                Attempt::Needless(existing) => return Ok(Err(existing)),
                Attempt::Reserved(r) => return Ok(Ok(r)),
                Attempt::Raced if races < MAX_RACES => races += 1,
                Attempt::Raced => {
                    return Err(PoolError::Internal(format!(
                        "placement raced with other operations {MAX_RACES} times"
                    )))
                }
                Attempt::Refused(source) => return Err(self.refused(model, purpose, source)),
                Attempt::Wait(wait, need) => {
                    let in_time = wait.ready_in().is_none_or(|d| now + d < deadline);
                    if !waits || !in_time || now >= deadline {
                        return Err(self.refused(model, purpose, wait.into_error(need)));
                    }
                    if !waiter.has_turn() {
                        waiter
                            .take_turn(deadline, || {
                                self.refused(model, purpose, wait.into_error(need))
                            })
                            .await?;
                        continue;
                    }
                    waiter.watch(in_flight_victims(&wait));
                    let until = wait.next_age_out().map_or(deadline, |d| {
                        deadline.min(now + d + Duration::from_millis(1))
                    });
                    tracing::debug!(model = %model, blocked = wait.blocked.len(), "waiting for room");
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
            }
        }
    }

    /// One planning attempt under the table lock: snapshot, plan, lock the victims, claim.
    fn try_reserve(
        &self,
        model: &ModelName,
        purpose: Purpose,
        now: Instant,
    ) -> Result<Attempt, PoolError> {
        let mut guard = self.table();
        let t = &mut *guard;
        if let Some(existing) = self.needless(t, model, purpose, now)? {
            return Ok(Attempt::Needless(existing));
        }
        let s =
            snapshot(t, model, now).ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
        let (needed, plan) = match placement::plan(&s, &*self.victims()) {
            Decision::Place(plan) => (placement::needed(&s, &plan), plan.map(|k| k.clone())),
            Decision::Wait(wait) => return Ok(Attempt::Wait(wait.map(|k| k.clone()), s.need)),
            Decision::Refuse(e) => return Ok(Attempt::Refused(e)),
        };
        let replica = ReplicaIdx::new(plan.replica);
        let mut victims = Vec::with_capacity(plan.evict.len());
        for key in plan.evict {
            let Some(e) = t.get_mut(&key) else {
                return Ok(Attempt::Raced);
            };
            let Some(lock) = self.try_lock_entry(e) else {
                return Ok(Attempt::Raced);
            };
            let loaded_at = e.copy_on(replica).map_or(now, |c| c.since);
            let (last_used, size) = (e.last_used(), e.size());
            victims.push(Victim {
                model: key,
                _lock: lock,
                loaded_at,
                last_used,
                size,
                priority: 0.0,
            });
        }
        let mut order = self.victims();
        for (i, v) in victims.iter_mut().enumerate() {
            t.set_copy_state(&v.model, replica, CopyState::Unloading, now);
            let last_use = v.last_used.unwrap_or(v.loaded_at);
            v.priority = order.evicted(&v.model, last_use, i < needed);
        }
        drop(order);
        t.add_copy(model, replica, CopyState::Loading, now);
        let declared = t
            .get(model)
            .map(|e| Resources::new(e.spec().memory, e.spec().gpu_memory))
            .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
        Ok(Attempt::Reserved(Reservation {
            replica,
            victims,
            declared,
            mass_eviction: plan.mass_eviction,
        }))
    }

    /// `Some` when `purpose` no longer calls for a copy (with the serving replica, for
    /// demand); an error while the model backs off after a failed load.
    fn needless(
        &self,
        t: &Table,
        model: &ModelName,
        purpose: Purpose,
        now: Instant,
    ) -> Result<Option<Option<ReplicaIdx>>, PoolError> {
        let entry = t
            .get(model)
            .filter(|e| !e.deleting)
            .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
        let live =
            |c: &&super::table::Copy| c.state != CopyState::Unloading && t.is_healthy(c.replica);
        let present = entry.copies().iter().filter(live).count();
        let spec = entry.spec();
        let needless = match purpose {
            Purpose::Demand => t.routable(model).first().map(|r| Some(*r)),
            Purpose::Pin => (present >= spec.min_copies as usize).then_some(None),
            Purpose::Scale => (present >= spec.max_copies as usize).then_some(None),
            Purpose::Drain => entry
                .copies()
                .iter()
                .filter(live)
                .any(|c| !t.is_draining(c.replica))
                .then_some(None),
        };
        if needless.is_some() {
            return Ok(needless);
        }
        match &entry.failure {
            Some(f) if now < f.retry_at => Err(PoolError::LoadFailed {
                name: model.to_string(),
                reason: f.reason.clone(),
                retry_in: Some(f.retry_at - now),
            }),
            _ => Ok(None),
        }
    }

    fn refused(&self, model: &ModelName, purpose: Purpose, source: PlacementError) -> PoolError {
        self.inner.metrics.placement_failures.inc();
        warn!(model = %model, purpose = purpose.reason(), error = %source, "placement failed");
        PoolError::NoCapacity {
            name: model.to_string(),
            source,
        }
    }

    /// Unloads the reservation's victims; if one fails, gives the others back and drops
    /// the reserved copy.
    async fn evict(
        &self,
        model: &ModelName,
        purpose: Purpose,
        r: &Reservation,
    ) -> Result<(), PoolError> {
        let replica = self.config(r.replica);
        let label = ReplicaLabel::new(replica.id.as_str());
        if r.mass_eviction {
            self.inner
                .metrics
                .mass_evictions
                .get_or_create(&label)
                .inc();
            warn!(model = %model, replica = %replica.id, victims = r.victims.len(),
                  "placement evicts most of the replica's models");
        }
        info!(model = %model, replica = %replica.id, purpose = purpose.reason(),
              memory = r.declared.memory, gpu_memory = r.declared.gpu_memory,
              evict = ?r.victims.iter().map(|v| v.model.as_str()).collect::<Vec<_>>(), "placing model");
        self.events().record(
            NewEvent::new(EventKind::Placed)
                .model(model)
                .replica(&replica.id)
                .size(r.declared.memory, r.declared.gpu_memory)
                .reason(purpose.reason()),
        );
        self.update_gauges();
        if !r.victims.is_empty() {
            // The victims left the routing table just now; a worker that has not applied the
            // new table yet could still send them a request. Gateways that poll a follower
            // get the table through the store: it must be there first.
            self.until_table_stored().await;
            tokio::time::sleep(self.inner.settings.table_propagation).await;
        }
        for victim in &r.victims {
            if let Err(reason) = self
                .unload_copy(&victim.model, r.replica, "evicted", false)
                .await
            {
                self.restore_victims(&r.victims, r.replica);
                self.forget_copy(model, r.replica);
                self.update_gauges();
                return Err(PoolError::EvictionFailed {
                    name: model.to_string(),
                    victim: victim.model.to_string(),
                    replica: replica.id.to_string(),
                    reason,
                });
            }
            self.evicted(model, victim, r.replica);
        }
        Ok(())
    }

    /// Metrics, log line and event of one eviction.
    fn evicted(&self, model: &ModelName, victim: &Victim, replica: ReplicaIdx) {
        let r = self.config(replica);
        let m = &self.inner.metrics;
        let loaded = victim.loaded_at.elapsed().as_secs_f64();
        let idle = victim.last_used.map(|u| u.elapsed().as_secs_f64());
        m.evictions
            .get_or_create(&ReplicaLabel::new(r.id.as_str()))
            .inc();
        m.eviction_age.observe(loaded);
        if let Some(idle) = idle {
            m.eviction_idle.observe(idle);
        }
        let policy = self.inner.settings.eviction;
        info!(model = %victim.model, replica = %r.id, for_model = %model,
              memory = victim.size.memory, gpu_memory = victim.size.gpu_memory,
              loaded_seconds = loaded, idle_seconds = idle,
              policy = policy.name(), priority = victim.priority,
              reason = "room for another model", "model evicted");
        self.events().record(
            NewEvent::new(EventKind::Evicted)
                .model(&victim.model)
                .replica(&r.id)
                .size(victim.size.memory, victim.size.gpu_memory)
                .seconds(loaded)
                .priority(policy.name(), victim.priority)
                .reason(format!("room for {model}")),
        );
    }

    /// Stages the files and loads the model on `replica`; then reads what the replica says
    /// of it (measured memory and inputs, both at once).
    async fn load(
        &self,
        model: &ModelName,
        replica: ReplicaIdx,
        files: Option<super::files::Files>,
        phases: &mut Phases<'_>,
    ) -> Loaded {
        let r = self.config(replica);
        // Into the shared repository, or read to travel in the load request (files.rs).
        let staging = self.stage_files(model, files.as_ref()).await;
        phases.mark("staging");
        // Loading a model the replica may still be unloading would race with that unload.
        let unconfirmed = self.table().take_unconfirmed_unload(model, replica);
        if unconfirmed {
            self.wait_unloaded(model, replica).await;
        }
        let started = Instant::now();
        let outcome = match staging {
            Ok(payload) => self.load_staged(r, model, payload).await,
            Err(e) => Err(e),
        };
        drop(files);
        let elapsed = started.elapsed();
        phases.mark("load_call");
        let (measured, description) = match outcome {
            Ok(()) => {
                let (m, d) = tokio::join!(
                    r.client.memory_usage(model.as_str()),
                    self.describe(model.as_str(), replica)
                );
                (m.ok(), d)
            }
            Err(_) => (None, None),
        };
        phases.mark("metadata");
        Loaded {
            outcome,
            elapsed,
            measured,
            description,
        }
    }

    /// Writes a load's outcome into the table: the copy loaded, or gone with the failure
    /// recorded for the backoff.
    fn record(
        &self,
        model: &ModelName,
        purpose: Purpose,
        r: &Reservation,
        loaded: Loaded,
    ) -> Result<Option<ReplicaIdx>, PoolError> {
        let result = match loaded.outcome {
            Ok(()) => self
                .record_loaded(
                    model,
                    r,
                    loaded.description,
                    loaded.measured,
                    loaded.elapsed,
                )
                .map(|()| {
                    self.loaded(model, purpose, r, loaded.elapsed);
                    Some(r.replica)
                }),
            Err(reason) => {
                let reason = format!("replica {}: {reason}", self.config(r.replica).id);
                {
                    let mut t = self.table();
                    t.remove_copy(model, r.replica);
                    self.note_failure(&mut t, model, &reason);
                }
                self.load_failed(model, purpose, r, &reason, loaded.elapsed);
                Err(PoolError::LoadFailed {
                    name: model.to_string(),
                    reason,
                    retry_in: None,
                })
            }
        };
        self.update_gauges();
        result
    }

    /// The copy is loaded: its state, the model's inputs, and what the replica measured
    /// when it is more than declared.
    fn record_loaded(
        &self,
        model: &ModelName,
        r: &Reservation,
        description: Option<super::metadata::Description>,
        measured: Option<crate::replica::MemoryUsage>,
        elapsed: Duration,
    ) -> Result<(), PoolError> {
        let mut t = self.table();
        let Some(e) = t.get_mut(model) else {
            return Err(PoolError::Internal("model vanished during its load".into()));
        };
        e.failure = None;
        t.set_copy_state(model, r.replica, CopyState::Loaded, Instant::now());
        let inputs = description.and_then(|d| self.keep_description(&mut t, model, d));
        if inputs.is_some() {
            t.set_inputs(model, inputs);
        }
        let seen = measured.map(|m| Resources::new(m.cpu, m.gpu));
        if let Some(seen) = seen.filter(|s| !s.fits_in(r.declared)) {
            info!(model = %model, measured = ?seen,
                  "replica measured more memory than declared; accounting the larger");
            t.set_measured(model, seen);
        }
        let size = t.get(model).map_or(r.declared, |e| e.size());
        let capacity = self.config(r.replica).capacity;
        self.victims()
            .loaded(model, size, capacity, elapsed, Instant::now());
        Ok(())
    }

    /// Metrics, log line and events of a successful load.
    fn loaded(&self, model: &ModelName, purpose: Purpose, r: &Reservation, elapsed: Duration) {
        let replica = self.config(r.replica);
        let (size, copies) = self
            .table()
            .get(model)
            .map_or((Resources::ZERO, 0), |e| (e.size(), e.loaded_copies()));
        let m = &self.inner.metrics;
        m.loads
            .get_or_create(&ReplicaLabel::new(replica.id.as_str()))
            .inc();
        m.load_duration.observe(elapsed.as_secs_f64());
        info!(model = %model, replica = %replica.id, seconds = elapsed.as_secs_f64(),
              memory = size.memory, gpu_memory = size.gpu_memory,
              purpose = purpose.reason(), copies, "model loaded");
        let event = |kind| {
            NewEvent::new(kind)
                .model(model)
                .replica(&replica.id)
                .size(size.memory, size.gpu_memory)
                .reason(purpose.reason())
        };
        self.events()
            .record(event(EventKind::Loaded).seconds(elapsed.as_secs_f64()));
        if copies > 1 {
            m.copies_added
                .get_or_create(&ReasonLabel {
                    reason: purpose.reason(),
                })
                .inc();
            self.events().record(event(EventKind::CopyAdded));
        }
    }

    /// Metrics, log line and event of a failed load.
    fn load_failed(
        &self,
        model: &ModelName,
        purpose: Purpose,
        r: &Reservation,
        reason: &str,
        elapsed: Duration,
    ) {
        let replica = self.config(r.replica);
        self.inner
            .metrics
            .load_failures
            .get_or_create(&ReplicaLabel::new(replica.id.as_str()))
            .inc();
        warn!(model = %model, replica = %replica.id, memory = r.declared.memory,
              gpu_memory = r.declared.gpu_memory, purpose = purpose.reason(),
              error = %reason, "model load failed");
        self.events().record(
            NewEvent::new(EventKind::LoadFailed)
                .model(model)
                .replica(&replica.id)
                .size(r.declared.memory, r.declared.gpu_memory)
                .seconds(elapsed.as_secs_f64())
                .reason(reason),
        );
    }

    /// Puts planned victims back to `Loaded` when an eviction failed half-way.
    fn restore_victims(&self, victims: &[Victim], replica: ReplicaIdx) {
        let mut t = self.table();
        let now = Instant::now();
        for v in victims {
            let unloading = t
                .get(&v.model)
                .and_then(|e| e.copy_on(replica))
                .is_some_and(|c| c.state == CopyState::Unloading);
            if unloading {
                t.set_copy_state(&v.model, replica, CopyState::Loaded, now);
            }
        }
    }

    pub(super) fn forget_copy(&self, model: &ModelName, replica: ReplicaIdx) {
        self.table().remove_copy(model, replica);
        self.inner.room.changed();
    }

    /// Unloads `model` from `replica` and waits (bounded) until the replica has let it go,
    /// then drops the copy from the table. On failure the copy stays (in `Unloading`)
    /// unless `force`, for callers that forget the copy either way (delete, spec change):
    /// an unreachable replica has lost the model anyway.
    pub(super) async fn unload_copy(
        &self,
        model: &ModelName,
        replica: ReplicaIdx,
        why: &'static str,
        force: bool,
    ) -> Result<(), String> {
        let r = self.config(replica);
        let size = self
            .table()
            .get(model)
            .map_or(Resources::ZERO, |e| e.size());
        let outcome = match self.check_may_act() {
            Ok(()) => r
                .client
                .unload(model.as_str())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match &outcome {
            Ok(()) => {
                // Triton answers before the model is gone. GPU memory must really be free
                // before another model loads into it (or the load can run out of device
                // memory); host memory of a stopping model comes back within a second or
                // two, so host-only models are not waited for.
                if size.gpu_memory > 0 {
                    self.wait_unloaded(model, replica).await;
                } else {
                    self.table()
                        .note_unconfirmed_unload(model, replica, Instant::now());
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
    async fn wait_unloaded(&self, model: &ModelName, replica: ReplicaIdx) {
        let r = self.config(replica);
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The victims of a wait's plan that wait for requests to end: the gateway is asked to
/// report those promptly.
fn in_flight_victims(wait: &Wait<ModelName>) -> Vec<ModelName> {
    wait.blocked
        .iter()
        .filter(|(_, b)| *b == placement::Blocker::InFlight)
        .map(|(k, _)| k.clone())
        .collect()
}

impl Pool {
    /// Places a copy for a background purpose (pin, scale, drain): it never waits for room.
    pub(super) async fn place_background(
        &self,
        model: &ModelName,
        purpose: Purpose,
    ) -> Result<Option<ReplicaIdx>, PoolError> {
        let now = Instant::now();
        self.place_copy(model, purpose, now, now + self.inner.settings.route_wait)
            .await
    }
}
