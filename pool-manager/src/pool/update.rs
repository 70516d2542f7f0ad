//! Updates without downtime: a new spec for a model that has a loaded copy is loaded as
//! another Triton model (its version name, [`mm_wire::version_name`]: `{model}--{8 hex of
//! the spec digest}`) on as many copies as the model has loaded, placed by the usual
//! planner (the incoming version is pinned to that many copies while it loads, so
//! nothing evicts it). Once all are loaded the table switches the client name to it in
//! one step (one routing-table generation: the gateway never sees the model without a
//! copy), and the old version's copies are unloaded once their requests end. A version
//! that fails to load is dropped and the old one keeps serving; the model shows the
//! failed transition until its spec changes again.
//!
//! Durable state: while an update runs, the model's version record holds the version
//! that serves and the one coming ([`VersionRecord`]); the model record keeps the spec
//! that serves until the switch, when both records change in one commit; a failed
//! update's note stays in the record until the spec changes again. After a restart or
//! a failover the version that served before is what serves, and an unfinished update
//! goes on from the copies already loaded (`versions`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{info, warn};

use super::place::Purpose;
use super::table::{CopyState, ReplicaIdx, Role};
use super::{Pool, PoolError};
use crate::events::{EventKind, NewEvent};
use crate::spec::{ModelName, ModelSpec, StoredSpec};

/// Poll interval while the old version's requests end.
const RETIRE_POLL: Duration = Duration::from_millis(100);

/// An update of one model, as the admin API shows it (and a failed one's note, as the
/// version record keeps it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// Digest (8 hex) of the spec that serves.
    pub from: String,
    /// Digest (8 hex) of the spec being loaded (or that failed).
    pub to: String,
    /// The Triton-side name of the new version.
    pub version: String,
    pub state: TransitionState,
    /// Copies the new version needs before the switch.
    pub copies: u32,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where an update is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TransitionState {
    /// The new version is loading alongside the old one, which serves.
    Loading,
    /// The new version could not be loaded; the old one serves.
    Failed,
}

/// The durable version record of a model whose serving entry has another name, or that
/// is being updated (store kind `Version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRecord {
    /// The Triton-side name of the version that serves.
    pub serving: String,
    /// The update under way: the new version's name and spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextVersion>,
    /// The last update that failed (state `Failed`, with its reason), shown until the
    /// spec changes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Transition>,
}

impl VersionRecord {
    /// `serving` serves, nothing under way, no failure to show.
    pub fn serving(serving: &ModelName) -> Self {
        Self {
            serving: serving.to_string(),
            next: None,
            failed: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NextVersion {
    pub name: String,
    pub spec: StoredSpec,
    /// Copies the new version needs before the switch (0 in records written before this
    /// was kept: the copies the old version has then count).
    #[serde(default)]
    pub copies: u32,
}

/// Hex SHA-256 of what identifies a version of `client`: its name and stored spec.
pub fn spec_digest(client: &ModelName, spec: &ModelSpec) -> String {
    let stored = serde_json::to_vec(&StoredSpec::from(spec)).unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(client.as_str().as_bytes());
    hash.update([0]);
    hash.update(&stored);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn short(digest: &str) -> String {
    digest.chars().take(mm_wire::VERSION_DIGEST_LEN).collect()
}

/// The incoming version's spec while it loads: pinned to `copies`, so nothing evicts it.
pub(super) fn pinned(spec: &ModelSpec, copies: u32) -> ModelSpec {
    let mut pinned = spec.clone();
    pinned.min_copies = pinned.min_copies.max(copies);
    pinned.max_copies = pinned.max_copies.max(pinned.min_copies);
    pinned
}

/// The update of `client` (served with spec `from`) to version `key` (spec `to`), loading.
pub(super) fn loading(
    client: &ModelName,
    from: &ModelSpec,
    key: &ModelName,
    to: &ModelSpec,
    copies: u32,
) -> Transition {
    Transition {
        from: short(&spec_digest(client, from)),
        to: short(&spec_digest(client, to)),
        version: key.to_string(),
        state: TransitionState::Loading,
        copies,
        reason: None,
    }
}

impl Pool {
    /// Whether a new `spec` for `client` (served by entry `current`) is an update that
    /// loads alongside: it needs a reload and a copy of the model is loaded.
    pub(super) fn is_live_update(&self, current: &ModelName, spec: &ModelSpec) -> bool {
        let t = self.table();
        t.get(current)
            .is_some_and(|e| e.spec().needs_reload(spec) && e.loaded_copies() > 0 && !e.deleting)
    }

    /// Starts loading `spec` as a new version of `client` next to entry `current` (the
    /// caller holds the name lock). Refused while another update of the model loads, or
    /// while the version it would load is still being unloaded.
    pub(super) async fn begin_update(
        &self,
        client: &ModelName,
        current: &ModelName,
        spec: ModelSpec,
    ) -> Result<(), PoolError> {
        let digest = spec_digest(client, &spec);
        let key = ModelName::new(&mm_wire::version_name(client.as_str(), &digest))?;
        let copies = {
            let t = self.table();
            let e = t
                .get(current)
                .ok_or_else(|| PoolError::UnknownModel(client.to_string()))?;
            if let Some(tr) = e
                .transition
                .as_ref()
                .filter(|tr| tr.state == TransitionState::Loading)
            {
                return Err(PoolError::UpdateInProgress {
                    name: client.to_string(),
                    version: tr.version.clone(),
                });
            }
            if t.contains(&key) {
                return Err(PoolError::UpdateInProgress {
                    name: client.to_string(),
                    version: key.to_string(),
                });
            }
            u32::try_from(e.loaded_copies()).unwrap_or(u32::MAX).max(1)
        };
        let record = VersionRecord {
            serving: current.to_string(),
            next: Some(NextVersion {
                name: key.to_string(),
                spec: StoredSpec::from(&spec),
                copies,
            }),
            failed: None,
        };
        self.persist_version(client, Some(&record)).await?;
        self.add_incoming(client, current, &key, &spec, copies);
        let pool = self.clone();
        let (client, current) = (client.clone(), current.clone());
        tokio::spawn(async move { pool.run_update(client, current, key, spec, copies).await });
        Ok(())
    }

    /// Puts the incoming version in the table (pinned to `copies` while it loads) and the
    /// transition on the entry that serves.
    fn add_incoming(
        &self,
        client: &ModelName,
        current: &ModelName,
        key: &ModelName,
        spec: &ModelSpec,
        copies: u32,
    ) {
        let mut t = self.table();
        let Some(from) = t.get(current).map(|e| e.spec().clone()) else {
            return;
        };
        t.insert_version(
            key.clone(),
            client.clone(),
            pinned(spec, copies),
            Role::Incoming,
        );
        if let Some(e) = t.get_mut(current) {
            e.transition = Some(Box::new(loading(client, &from, key, spec, copies)));
        }
    }

    /// Loads the new version's missing copies, then switches to it (or gives it up).
    pub(super) async fn run_update(
        &self,
        client: ModelName,
        current: ModelName,
        key: ModelName,
        spec: ModelSpec,
        copies: u32,
    ) {
        info!(model = %client, version = %key, copies, "update: loading the new version");
        let mut failure = None;
        for _ in 0..copies {
            match self.place_background(&key, Purpose::Pin).await {
                Ok(_) => {}
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let loaded = self.table().get(&key).map_or(0, |e| e.loaded_copies());
        if failure.is_none() && loaded < copies as usize {
            failure = Some(format!("{loaded} of {copies} copies loaded"));
        }
        match failure {
            None => self.switch(&client, &current, &key, spec).await,
            Some(reason) => self.give_up(&client, &current, &key, &reason).await,
        }
    }

    /// Makes the loaded new version serve, durably first, then unloads the old one once
    /// its requests end.
    async fn switch(
        &self,
        client: &ModelName,
        current: &ModelName,
        key: &ModelName,
        spec: ModelSpec,
    ) {
        let _name = self.name_lock(client).lock().await;
        if self.table().resolve(client).as_ref() != Some(current) {
            // Deleted (or changed) meanwhile: the new version has no model to serve.
            self.drop_version(key, "update abandoned").await;
            return;
        }
        let record = VersionRecord::serving(key);
        if let Err(e) = self.persist_switch(client, &spec, &record).await {
            drop(_name);
            self.give_up(
                client,
                current,
                key,
                &format!("the switch could not be saved: {e}"),
            )
            .await;
            return;
        }
        let old = self.table().promote(client, key, spec.clone());
        self.update_gauges();
        info!(model = %client, from = %current, to = %key, "update: switched to the new version");
        self.events().record(
            NewEvent::new(EventKind::Updated)
                .model(client)
                .reason(format!("switched from {current} to {key}")),
        );
        drop(_name);
        if let Some(old) = old {
            self.retire(&old).await;
        }
    }

    /// Records the failed update on the model (whose old version keeps serving) and
    /// unloads what the new version loaded.
    async fn give_up(
        &self,
        client: &ModelName,
        current: &ModelName,
        key: &ModelName,
        reason: &str,
    ) {
        warn!(model = %client, version = %key, error = %reason, "update failed; the old version keeps serving");
        {
            let _name = self.name_lock(client).lock().await;
            let Some(failed) = self.note_failed_update(client, current, key, reason) else {
                // Deleted meanwhile: nothing to record.
                drop(_name);
                self.drop_version(key, "update abandoned").await;
                return;
            };
            let record = VersionRecord {
                failed: Some(failed),
                ..VersionRecord::serving(current)
            };
            if let Err(e) = self.persist_version(client, Some(&record)).await {
                warn!(model = %client, error = %e, "the failed update stays in the store; a restart tries it again");
            }
        }
        self.events().record(
            NewEvent::new(EventKind::LoadFailed)
                .model(client)
                .reason(format!("update to {key} failed: {reason}")),
        );
        self.drop_version(key, "update failed").await;
    }

    /// Marks the update to `key` failed on the entry that serves `client`, and returns
    /// the note to keep; `None` if `current` no longer serves it (the model was deleted).
    fn note_failed_update(
        &self,
        client: &ModelName,
        current: &ModelName,
        key: &ModelName,
        reason: &str,
    ) -> Option<Transition> {
        let mut t = self.table();
        if t.resolve(client).as_ref() != Some(current) {
            return None;
        }
        let e = t.get_mut(current)?;
        let mut note = e
            .transition
            .as_deref()
            .filter(|tr| tr.version == key.as_str())
            .cloned()
            .unwrap_or_else(|| Transition {
                from: String::new(),
                to: String::new(),
                version: key.to_string(),
                state: TransitionState::Failed,
                copies: 0,
                reason: None,
            });
        note.state = TransitionState::Failed;
        note.reason = Some(reason.to_owned());
        e.transition = Some(Box::new(note.clone()));
        Some(note)
    }

    /// Unloads the replaced version once it has had no request in flight for the retire
    /// grace (the gateways switch within moments, and a request routed just before the
    /// switch shows in the next usage report), then forgets it.
    async fn retire(&self, old: &ModelName) {
        let grace = self.inner.settings.retire_grace;
        let limit = self.inner.settings.report_ttl.max(grace);
        let started = Instant::now();
        let mut idle_since = None;
        loop {
            let busy = self.table().in_flight().model_total(old.as_str()) > 0;
            let now = Instant::now();
            let since = *idle_since.get_or_insert(now);
            if busy {
                idle_since = None;
            } else if now.saturating_duration_since(since) >= grace {
                break;
            }
            if now.saturating_duration_since(started) >= limit + grace {
                warn!(model = %old, "the old version still has requests in flight; unloading it anyway");
                break;
            }
            tokio::time::sleep(RETIRE_POLL).await;
        }
        self.drop_version(old, "replaced by an update").await;
    }

    /// Unloads every copy of version entry `key` and forgets it with its staged files.
    pub(super) async fn drop_version(&self, key: &ModelName, why: &'static str) {
        let Ok(_op) = self.lock_model(key).await else {
            return;
        };
        let copies: Vec<ReplicaIdx> = {
            let mut t = self.table();
            let copies: Vec<ReplicaIdx> = t
                .get(key)
                .map(|e| e.copies().iter().map(|c| c.replica).collect())
                .unwrap_or_default();
            let now = Instant::now();
            for &r in &copies {
                t.set_copy_state(key, r, CopyState::Unloading, now);
            }
            copies
        };
        for replica in copies {
            let _ = self.unload_copy(key, replica, why, true).await;
        }
        self.remove_staged(key).await;
        {
            let mut t = self.table();
            t.remove(key);
            self.victims().forget(key);
        }
        self.update_gauges();
    }
}
