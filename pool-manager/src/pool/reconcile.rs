//! Reconciliation: the replicas' own repository indexes are the ground truth of what is
//! loaded. At start (before serving), periodically, and whenever a replica comes back, the
//! table is brought in line: a registered model a replica has READY becomes a loaded copy
//! there (so a restarted pool-manager loads nothing twice), a copy the replica no longer
//! has is dropped (it is placed again on demand), and a model loaded there that the
//! registry does not know is unloaded (unless configured not to).
//!
//! Models with an operation in progress (their op lock is held) are left alone: the
//! operation itself will leave the table right.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::table::{CopyState, ReplicaIdx};
use super::Pool;
use crate::events::{EventKind, NewEvent};
use crate::metrics::ReplicaLabel;
use crate::replica::ReplicaError;
use crate::spec::ModelName;

/// What one reconciliation of one replica changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub adopted: Vec<String>,
    pub dropped: Vec<String>,
    pub unloaded_unknown: Vec<String>,
}

impl Pool {
    /// Reconciles every healthy replica; errors are logged per replica.
    pub async fn reconcile(&self) {
        let healthy: Vec<ReplicaIdx> = {
            let t = self.table();
            t.replica_indexes().filter(|&i| t.is_healthy(i)).collect()
        };
        for idx in healthy {
            if let Err(e) = self.reconcile_replica(idx).await {
                warn!(replica = %self.config(idx).id, error = %e, "reconcile failed");
            }
        }
    }

    /// Reconciles forever, every `interval`.
    pub async fn run_reconcile(self, interval: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reconcile().await;
        }
    }

    /// Brings the table in line with replica `idx`'s index.
    pub async fn reconcile_replica(&self, idx: ReplicaIdx) -> Result<Reconciled, ReplicaError> {
        let replica = self.config(idx);
        // The index describes the replica when the call was made; only what the table held
        // then can be compared with it. A copy loaded or unloaded while the call was out is
        // newer than the answer and is left alone.
        let (held_before, loaded_before) = self.copies_on(idx);
        let index = replica.client.index().await?;
        let ready: HashSet<&str> = index
            .iter()
            .filter(|m| m.state == "READY")
            .map(|m| m.name.as_str())
            .collect();
        let mut out = Reconciled::default();
        let adopt = self.to_adopt(idx, &ready, &held_before, &mut out.unloaded_unknown);
        for model in adopt {
            let description = self.describe(model.as_str(), idx).await;
            if self.adopt(&model, idx, description) {
                out.adopted.push(model.to_string());
            }
        }
        out.dropped = self.drop_lost(idx, &ready, &loaded_before);
        self.unload_unknown(idx, &mut out.unloaded_unknown).await;
        self.inner
            .metrics
            .reconciliations
            .get_or_create(&ReplicaLabel::new(replica.id.as_str()))
            .inc();
        if out != Reconciled::default() {
            info!(replica = %replica.id, adopted = ?out.adopted, dropped = ?out.dropped,
                  unloaded_unknown = ?out.unloaded_unknown, "reconciled with the replica's index");
            self.events().record(
                NewEvent::new(EventKind::Reconciled)
                    .replica(&replica.id)
                    .reason(format!(
                        "adopted {:?}, dropped {:?}, unloaded unknown {:?}",
                        out.adopted, out.dropped, out.unloaded_unknown
                    )),
            );
            self.update_gauges();
        }
        Ok(out)
    }

    /// The registered models `ready` on replica `idx` that the table did not hold there when
    /// the index was asked for (and still does not, with no operation under way); the
    /// models nobody registered go to `unknown`.
    fn to_adopt(
        &self,
        idx: ReplicaIdx,
        ready: &HashSet<&str>,
        held_before: &HashSet<ModelName>,
        unknown: &mut Vec<String>,
    ) -> Vec<ModelName> {
        let t = self.table();
        let mut adopt = Vec::new();
        for name in ready {
            let Ok(model) = ModelName::new(name) else {
                continue;
            };
            match t.get(&model) {
                Some(e) if e.deleting => {}
                Some(e) => {
                    if !held_before.contains(&model) && !e.holds(idx) && !e.is_busy() {
                        adopt.push(model);
                    }
                }
                None => unknown.push((*name).to_owned()),
            }
        }
        adopt
    }

    /// Records `model` as loaded on replica `idx` (found READY there); false if that no
    /// longer applies.
    fn adopt(
        &self,
        model: &ModelName,
        idx: ReplicaIdx,
        description: Option<super::metadata::Description>,
    ) -> bool {
        let mut t = self.table();
        let Some(e) = t.get_mut(model).filter(|e| !e.holds(idx) && !e.deleting) else {
            return false;
        };
        e.failure = None;
        let known = e.inputs.is_some();
        t.add_copy(model, idx, CopyState::Loaded, Instant::now());
        let inputs = description.and_then(|d| self.keep_description(&mut t, model, d));
        if !known {
            t.set_inputs(model, inputs);
        }
        true
    }

    /// Drops the copies on replica `idx` that were loaded when its index was asked for and
    /// that it does not list READY (no operation under way on them).
    fn drop_lost(
        &self,
        idx: ReplicaIdx,
        ready: &HashSet<&str>,
        loaded_before: &HashSet<ModelName>,
    ) -> Vec<String> {
        let mut t = self.table();
        let gone: Vec<ModelName> = loaded_before
            .iter()
            .filter(|name| !ready.contains(name.as_str()))
            .filter(|name| {
                t.get(*name).is_some_and(|e| {
                    !e.is_busy() && e.copy_on(idx).is_some_and(|c| c.state == CopyState::Loaded)
                })
            })
            .cloned()
            .collect();
        for name in &gone {
            t.remove_copy(name, idx);
        }
        gone.iter().map(ToString::to_string).collect()
    }

    /// Unloads the models nobody registered from replica `idx` (or, when configured to keep
    /// them, forgets the list).
    async fn unload_unknown(&self, idx: ReplicaIdx, unknown: &mut Vec<String>) {
        if !self.inner.settings.unload_unknown {
            unknown.clear();
            return;
        }
        let replica = self.config(idx);
        for name in unknown.iter() {
            if !self.may_act() {
                return;
            }
            match replica.client.unload(name).await {
                Ok(()) => {
                    self.inner
                        .metrics
                        .unloads
                        .get_or_create(&ReplicaLabel::new(replica.id.as_str()))
                        .inc();
                }
                Err(e) => {
                    warn!(replica = %replica.id, model = %name, error = %e, "unloading an unknown model failed")
                }
            }
        }
    }

    /// The models with a copy on replica `idx` (any state), and those with a loaded one.
    fn copies_on(&self, idx: ReplicaIdx) -> (HashSet<ModelName>, HashSet<ModelName>) {
        let t = self.table();
        let mut held = HashSet::new();
        let mut loaded = HashSet::new();
        for (_, name) in t.replica(idx).into_iter().flat_map(|r| r.by_use()) {
            held.insert(name.clone());
            let is_loaded = t
                .get(name)
                .and_then(|e| e.copy_on(idx))
                .is_some_and(|c| c.state == CopyState::Loaded);
            if is_loaded {
                loaded.insert(name.clone());
            }
        }
        (held, loaded)
    }
}
