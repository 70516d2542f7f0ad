//! The gateway's calls on the pool: where to send a request (loading the model first on a
//! miss), any replica for requests that name no model, and the usage reports that carry
//! recency and requests in flight.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::table::{ReplicaIdx, Table};
use super::{Pool, PoolError};
use crate::metrics::Outcome;
use crate::spec::ModelName;
use mm_wire::{RouteResponse, UsageReport};

/// How much longer than the route wait a caller waits for its load task, so that a task
/// that gave up waiting for room at the deadline answers with its own reason.
const ANSWER_GRACE: Duration = Duration::from_millis(50);

impl Pool {
    /// Where to send a request for `name`: loads the model first if it is loaded nowhere
    /// (evicting if needed, waiting for busy models to free room), waiting at most the
    /// configured route wait. Counts as use.
    pub async fn route(&self, name: &str) -> Result<RouteResponse, PoolError> {
        let asked = ModelName::new(name)?;
        self.check_acting()?;
        // An alias is answered for a target picked by weight (the gateway's table had
        // not got the alias yet): the answer names that model.
        let resolved = self.table().resolve(&asked);
        let (client, model) = match resolved {
            Some(key) => (asked, key),
            None => {
                let target = self
                    .pick_alias(&asked)
                    .ok_or_else(|| PoolError::UnknownModel(asked.to_string()))?;
                let key = self
                    .table()
                    .resolve(&target)
                    .ok_or_else(|| PoolError::UnknownModel(target.to_string()))?;
                (target, key)
            }
        };
        let named = |mut route: RouteResponse| {
            if model != client {
                route.model = Some(client.to_string());
                route.upstream = Some(model.to_string());
            }
            route
        };
        if let Some(route) = self.routable(&model)? {
            self.inner.metrics.route(Outcome::Hit);
            return Ok(named(route));
        }
        let started = Instant::now();
        let Ok(_waiting) = self.inner.waiting.clone().try_acquire_owned() else {
            self.inner.metrics.route(Outcome::Error);
            return Err(PoolError::Overloaded(self.inner.settings.max_waiting));
        };
        // The load runs in its own task so that it finishes even if this caller stops
        // waiting; concurrent callers queue on the model's op lock and find it loaded.
        let waited = self.inner.settings.route_wait;
        let deadline = started + waited;
        let pool = self.clone();
        let task_model = model.clone();
        let load =
            tokio::spawn(
                async move { pool.place_for_demand(&task_model, started, deadline).await },
            );
        let result = match tokio::time::timeout_at(deadline + ANSWER_GRACE, load).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(PoolError::Internal(join.to_string())),
            Err(_) => Err(PoolError::StillLoading {
                name: model.to_string(),
                waited,
            }),
        };
        // Leadership ended while the model was being placed (the load was refused, or its
        // outcome is another leader's to decide): the caller asks the next leader.
        let result = match result {
            Err(_) if !self.acting() => Err(PoolError::NotLeader),
            other => other,
        };
        self.inner.metrics.route(match &result {
            Ok(_) => Outcome::Miss,
            Err(PoolError::UnknownModel(_)) => Outcome::NotFound,
            Err(_) => Outcome::Error,
        });
        if result.is_ok() {
            self.inner
                .metrics
                .cold_wait
                .observe(started.elapsed().as_secs_f64());
            self.table().touch(&model, Instant::now());
        }
        result.map(named)
    }

    /// The fast path: a route if the model is loaded on a healthy replica. Among copies,
    /// the one with the fewest requests in flight, round-robin among equals.
    pub(super) fn routable(&self, model: &ModelName) -> Result<Option<RouteResponse>, PoolError> {
        let mut t = self.table();
        if t.get(model).is_none_or(|e| e.deleting) {
            return Err(PoolError::UnknownModel(model.to_string()));
        }
        let candidates: Vec<(u64, ReplicaIdx)> = t
            .routable(model)
            .into_iter()
            .map(|r| (t.in_flight().get(model.as_str(), r), r))
            .collect();
        let Some(least) = candidates.iter().map(|(n, _)| *n).min() else {
            return Ok(None);
        };
        let tied: Vec<ReplicaIdx> = candidates
            .iter()
            .filter(|(n, _)| *n == least)
            .map(|(_, r)| *r)
            .collect();
        let (replica, inputs) = {
            let Some(entry) = t.get_mut(model) else {
                return Ok(None);
            };
            entry.next_copy = entry.next_copy.wrapping_add(1);
            (tied[entry.next_copy % tied.len()], entry.inputs.clone())
        };
        t.touch(model, Instant::now());
        Ok(self.route_to(&t, Some(model), replica, inputs))
    }

    /// Where to send a request for `model` on replica `idx`; `None` if the replica's name
    /// does not resolve now.
    pub(super) fn route_to(
        &self,
        t: &Table,
        model: Option<&ModelName>,
        idx: ReplicaIdx,
        inputs: Option<Vec<mm_wire::TensorSpec>>,
    ) -> Option<RouteResponse> {
        let endpoint = self.endpoint(t, idx)?;
        Some(RouteResponse {
            model: model.map(ToString::to_string),
            replica: endpoint.replica,
            address: endpoint.address,
            grpc_address: endpoint.grpc_address,
            inputs,
            upstream: None,
        })
    }

    /// Where a follower that reaches no leader (none elected, the store without quorum,
    /// the leader just died) sends a route call for `name` (`None`: any replica): a copy
    /// in the leader's routing table as this instance last read it from the store, the
    /// table every gateway routes warm requests by anyway, round-robin over the copies.
    /// `None` while this instance acts (it routes from its own view) or when the table has
    /// no such copy: that call needs a leader (a load), and waits for one.
    pub fn route_from_followed(&self, name: Option<&str>) -> Option<RouteResponse> {
        if self.acting() {
            return None;
        }
        let followed = self.inner.leading.followed.borrow().clone()?;
        let table: mm_wire::RoutingTable = serde_json::from_str(&followed.json).ok()?;
        let (model, inputs, upstream, copies) = match name {
            Some(name) => {
                let entry = table.models.into_iter().find(|e| e.model == name)?;
                (
                    Some(entry.model),
                    entry.inputs,
                    entry.upstream,
                    entry.replicas,
                )
            }
            None => {
                // Any replica with a copy: the table lists copies on healthy ones only.
                let mut all: Vec<_> = table.models.into_iter().flat_map(|e| e.replicas).collect();
                all.sort_by(|a, b| a.replica.cmp(&b.replica));
                all.dedup_by(|a, b| a.replica == b.replica);
                (None, None, None, all)
            }
        };
        let pick = self.inner.next_any.fetch_add(1, Ordering::Relaxed);
        let endpoint = copies.get(pick % copies.len().max(1))?.clone();
        Some(RouteResponse {
            model,
            replica: endpoint.replica,
            address: endpoint.address,
            grpc_address: endpoint.grpc_address,
            inputs,
            upstream,
        })
    }

    /// Any healthy replica, round-robin: for requests that name no model.
    pub fn any_replica(&self) -> Result<RouteResponse, PoolError> {
        let t = self.table();
        let n = t.replica_count();
        let start = self.inner.next_any.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| ReplicaIdx::new((start + k) % n))
            .filter(|&i| t.is_healthy(i))
            .find_map(|i| self.route_to(&t, None, i, None))
            .ok_or(PoolError::NoHealthyReplica)
    }

    /// Takes a gateway worker's usage report: request counts feed recency and request
    /// rates; in-flight counts protect models from eviction, and a fall in them wakes
    /// placements waiting for room. Entries naming an unknown model or replica are skipped
    /// (the model may just have been deleted). Returns how many entries were applied.
    pub fn report_usage(&self, report: UsageReport) -> Result<usize, PoolError> {
        let metrics = &self.inner.metrics;
        if let Err(e) = report.validate() {
            metrics.report_ignored("usage", "invalid", 1);
            return Err(PoolError::BadReport(e.to_string()));
        }
        let now = Instant::now();
        let mut in_flight = Vec::new();
        let (mut applied, mut unknown_model, mut unknown_replica) = (0, 0, 0);
        let mut t = self.table();
        let mut victims = self.victims();
        if !t.in_flight().has_room_for(&report.reporter) {
            drop(victims);
            drop(t);
            metrics.report_ignored("usage", "too_many_reporters", 1);
            return Err(PoolError::TooManyReporters(super::table::MAX_REPORTERS));
        }
        for entry in &report.entries {
            let Some(replica) = self.replica_index(&entry.replica) else {
                unknown_replica += 1;
                continue;
            };
            let Some(name) = ModelName::new(&entry.model)
                .ok()
                .filter(|name| t.contains(name))
            else {
                unknown_model += 1;
                continue;
            };
            if entry.requests > 0 || entry.in_flight > 0 {
                t.touch(&name, now);
            }
            t.add_requests(&name, entry.requests);
            victims.requested(&name, entry.requests, now);
            if entry.requests > 0 {
                metrics.model_requests(t.client_of(&name).as_str(), entry.requests);
            }
            if entry.in_flight > 0 {
                in_flight.push((name, replica, entry.in_flight));
            }
            applied += 1;
        }
        let fell = t.replace_in_flight(&report.reporter, now, in_flight);
        drop(victims);
        drop(t);
        metrics.report_ignored("usage", "unknown_model", unknown_model);
        metrics.report_ignored("usage", "unknown_replica", unknown_replica);
        if fell {
            self.inner.room.changed();
        }
        Ok(applied)
    }
}
