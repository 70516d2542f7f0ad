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
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::table::{Copy, CopyState};
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
        let healthy: Vec<usize> = {
            let t = self.table();
            (0..self.inner.replicas.len())
                .filter(|&i| t.healthy[i])
                .collect()
        };
        for idx in healthy {
            if let Err(e) = self.reconcile_replica(idx).await {
                warn!(replica = %self.inner.replicas[idx].id, error = %e, "reconcile failed");
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
    pub async fn reconcile_replica(&self, idx: usize) -> Result<Reconciled, ReplicaError> {
        let replica = &self.inner.replicas[idx];
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
        let mut adopt = Vec::new();
        {
            let t = self.table();
            for name in &ready {
                let Ok(model) = ModelName::new(name) else {
                    continue;
                };
                match t.models.get(&model) {
                    Some(e) if e.deleting => {}
                    Some(e) => {
                        if !held_before.contains(&model)
                            && !e.holds(idx)
                            && e.op_lock.try_lock().is_ok()
                        {
                            adopt.push(model);
                        }
                    }
                    None => out.unloaded_unknown.push((*name).to_owned()),
                }
            }
        }
        for model in adopt {
            let inputs = replica.client.inputs(model.as_str()).await.ok();
            let mut t = self.table();
            if let Some(e) = t.models.get_mut(&model) {
                if !e.holds(idx) && !e.deleting {
                    e.copies.push(Copy {
                        replica: idx,
                        state: CopyState::Loaded,
                        since: Instant::now(),
                    });
                    if e.inputs.is_none() {
                        e.inputs = inputs;
                    }
                    e.failure = None;
                    out.adopted.push(model.to_string());
                }
            }
        }
        {
            let mut t = self.table();
            for (name, e) in t.models.iter_mut() {
                let gone = loaded_before.contains(name)
                    && !ready.contains(name.as_str())
                    && e.copies
                        .iter()
                        .any(|c| c.replica == idx && c.state == CopyState::Loaded);
                if gone && e.op_lock.try_lock().is_ok() {
                    e.copies
                        .retain(|c| !(c.replica == idx && c.state == CopyState::Loaded));
                    out.dropped.push(name.to_string());
                }
            }
        }
        if self.inner.settings.unload_unknown {
            for name in &out.unloaded_unknown {
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
        } else {
            out.unloaded_unknown.clear();
        }
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

    /// The models with a copy on replica `idx` (any state), and those with a loaded one.
    fn copies_on(&self, idx: usize) -> (HashSet<ModelName>, HashSet<ModelName>) {
        let t = self.table();
        let mut held = HashSet::new();
        let mut loaded = HashSet::new();
        for (name, e) in &t.models {
            for c in e.copies.iter().filter(|c| c.replica == idx) {
                held.insert(name.clone());
                if c.state == CopyState::Loaded {
                    loaded.insert(name.clone());
                }
            }
        }
        (held, loaded)
    }
}
