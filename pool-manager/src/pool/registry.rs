//! The registry: registering, updating, deleting and restoring models. Every change is
//! written to the durable store before it is applied and acknowledged; one change per name
//! at a time (a name lock), so the store and the table agree on which spec won.

use tokio::time::Instant;
use tracing::info;

use super::table::{CopyState, ReplicaIdx};
use super::update::VersionRecord;
use super::{clamp, Pool, PoolError};
use crate::events::{EventKind, NewEvent};
use crate::placement::Resources;
use crate::spec::{ModelName, ModelSpec};

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Updated,
    Unchanged,
}

impl Pool {
    /// Parses and checks a registration (spec, storage, fits), changing nothing.
    async fn checked_spec(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<(ModelName, ModelSpec), PoolError> {
        let name = ModelName::new(name)?;
        if mm_wire::is_version_name(name.as_str()) {
            return Err(PoolError::ReservedName(name.to_string()));
        }
        let body = body.to_vec();
        let storage = self.inner.storage.clone();
        let spec = tokio::task::spawn_blocking(move || ModelSpec::from_json(&body, &storage))
            .await
            .map_err(|e| PoolError::Internal(e.to_string()))??;
        self.check_fits(&name, &spec)?;
        Ok((name, spec))
    }

    /// What [`Pool::register`] would do with this spec (a dry run): the same checks and
    /// the same errors, and nothing changed.
    pub async fn check_registration(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<Registered, PoolError> {
        let (name, spec) = self.checked_spec(name, body).await?;
        let t = self.table();
        let current = t.resolve(&name);
        Ok(match current.as_ref().and_then(|k| t.get(k)) {
            None => Registered::Created,
            Some(e) if e.spec().is_unchanged_by(&spec) => Registered::Unchanged,
            Some(_) => Registered::Updated,
        })
    }

    /// Registers `name` with the JSON spec `body`, or updates it. A new version of a model
    /// with a loaded copy loads alongside the old one, which serves until the switch
    /// (`update`); of a model loaded nowhere, it simply replaces the spec. Other changes
    /// apply in place. A pinned model (`minCopies >= 1`) starts loading at once.
    pub async fn register(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<(Registered, super::ModelView), PoolError> {
        let (name, spec) = self.checked_spec(name, body).await?;
        // One registration or delete per name at a time, from the durable write to the
        // table, so the store and the table agree on which spec won.
        let _name = self.name_lock(&name).lock().await;
        let existing = {
            let t = self.table();
            t.resolve(&name)
                .and_then(|k| t.get(&k).map(|e| (k, e.spec().clone())))
        };
        let outcome = match existing {
            Some((key, old)) if old.is_unchanged_by(&spec) => {
                if self.has_failed_update(&key) {
                    self.persist_version(&name, Some(&VersionRecord::serving(&key)))
                        .await?;
                    self.clear_failed_update(&key);
                }
                Registered::Unchanged
            }
            Some((key, _)) if self.is_live_update(&key, &spec) => {
                self.begin_update(&name, &key, spec.clone()).await?;
                Registered::Updated
            }
            None => {
                if self.table().aliases.contains_key(&name) {
                    return Err(PoolError::NameTaken {
                        name: name.to_string(),
                        taken_by: "an alias",
                    });
                }
                self.persist_put(&name, &spec).await?;
                self.table().insert(name.clone(), spec.clone());
                // Loaded nowhere: only the registry size moves (a full gauge pass per
                // registration would cost a bulk registration of many models dearly).
                let n = self.table().len() as u64;
                self.inner.metrics.models_registered.set(clamp(n));
                Registered::Created
            }
            Some((key, old)) => {
                if self.has_failed_update(&key) {
                    // The failed update's note goes with the spec it was shown for.
                    self.persist_switch(&name, &spec, &VersionRecord::serving(&key))
                        .await?;
                } else if old.needs_reload(&spec) {
                    self.persist_reloaded(&name, &spec).await?;
                } else {
                    self.persist_put(&name, &spec).await?;
                }
                self.update_spec(&key, spec.clone()).await?;
                self.update_gauges();
                Registered::Updated
            }
        };
        if outcome != Registered::Unchanged {
            self.registered(&name, &spec, outcome);
        }
        Ok((outcome, self.view(&name)?))
    }

    /// Whether the model served by `key` shows a failed update.
    fn has_failed_update(&self, key: &ModelName) -> bool {
        self.table().get(key).is_some_and(|e| {
            e.transition
                .as_ref()
                .is_some_and(|t| t.state == super::update::TransitionState::Failed)
        })
    }

    /// Forgets a failed update of the model served by `key` (its spec changed again).
    fn clear_failed_update(&self, key: &ModelName) {
        if let Some(e) = self.table().get_mut(key) {
            if e.transition
                .as_ref()
                .is_some_and(|t| t.state == super::update::TransitionState::Failed)
            {
                e.transition = None;
            }
        }
    }

    /// Applies a changed spec to entry `name` under the model's op lock; a reload unloads
    /// every copy (none is loaded: a model with one is updated alongside, `update`).
    async fn update_spec(&self, name: &ModelName, spec: ModelSpec) -> Result<(), PoolError> {
        let _op = self.lock_model(name).await?;
        let old: Vec<ReplicaIdx> = {
            let mut t = self.table();
            let reload = t
                .get(name)
                .ok_or_else(|| PoolError::Internal("model vanished under its name lock".into()))?
                .spec()
                .needs_reload(&spec);
            t.set_spec(name, spec);
            let Some(e) = t.get_mut(name) else {
                return Ok(());
            };
            e.failure = None;
            e.transition = None;
            if !reload {
                return Ok(());
            }
            let copies: Vec<ReplicaIdx> = e.copies().iter().map(|c| c.replica).collect();
            t.set_inputs(name, None);
            if let Some(e) = t.get_mut(name) {
                e.metadata = None;
            }
            let now = Instant::now();
            for &r in &copies {
                t.set_copy_state(name, r, CopyState::Unloading, now);
            }
            copies
        };
        for replica in old {
            let _ = self.unload_copy(name, replica, "spec changed", true).await;
        }
        Ok(())
    }

    /// Log line, event and pin of a new or changed registration.
    fn registered(&self, name: &ModelName, spec: &ModelSpec, outcome: Registered) {
        info!(model = %name, storage = %spec.storage_uri, memory = spec.memory,
              gpu_memory = spec.gpu_memory, min_copies = spec.min_copies,
              max_copies = spec.max_copies, ?outcome, "model registered");
        let kind = if outcome == Registered::Created {
            EventKind::Registered
        } else {
            EventKind::Updated
        };
        self.events().record(
            NewEvent::new(kind)
                .model(name)
                .size(spec.memory, spec.gpu_memory),
        );
        if spec.min_copies > 0 {
            let pool = self.clone();
            let Some(pinned) = self.table().resolve(name) else {
                return;
            };
            tokio::spawn(async move { pool.ensure_pinned(&pinned).await });
        }
    }

    pub(super) fn name_lock(&self, name: &ModelName) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name.as_str());
        let locks = &self.inner.name_locks;
        &locks[(hash as usize) % locks.len()]
    }

    async fn persist_put(&self, name: &ModelName, spec: &ModelSpec) -> Result<(), PoolError> {
        match &self.inner.store {
            Some(store) => store
                .put(name, spec)
                .await
                .map_err(|e| PoolError::Store(e.to_string())),
            None => Ok(()),
        }
    }

    /// Like `persist_put`, for a spec whose files may differ: the kept metadata goes too.
    async fn persist_reloaded(&self, name: &ModelName, spec: &ModelSpec) -> Result<(), PoolError> {
        self.forget_queued_metadata(name);
        match &self.inner.store {
            Some(store) => store
                .put_reloaded(name, spec)
                .await
                .map_err(|e| PoolError::Store(e.to_string())),
            None => Ok(()),
        }
    }

    /// Writes `client`'s version record (`None`: it serves under its own name, nothing
    /// under way).
    pub(super) async fn persist_version(
        &self,
        client: &ModelName,
        record: Option<&VersionRecord>,
    ) -> Result<(), PoolError> {
        self.persist_versioned(client, None, record).await
    }

    /// Writes `client`'s spec and version record in one commit (an update's switch).
    pub(super) async fn persist_switch(
        &self,
        client: &ModelName,
        spec: &ModelSpec,
        record: &VersionRecord,
    ) -> Result<(), PoolError> {
        self.persist_versioned(client, Some(spec), Some(record))
            .await
    }

    async fn persist_versioned(
        &self,
        client: &ModelName,
        spec: Option<&ModelSpec>,
        record: Option<&VersionRecord>,
    ) -> Result<(), PoolError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        if spec.is_some() {
            self.forget_queued_metadata(client);
        }
        // A model served under its own name with nothing under way or failed needs no
        // record.
        let record = record
            .filter(|r| r.next.is_some() || r.failed.is_some() || r.serving != client.as_str());
        let value = record
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| PoolError::Internal(e.to_string()))?;
        store
            .put_version(client, spec, value)
            .await
            .map_err(|e| PoolError::Store(e.to_string()))
    }

    async fn persist_delete(&self, name: &ModelName) -> Result<(), PoolError> {
        self.forget_queued_metadata(name);
        match &self.inner.store {
            Some(store) => store
                .delete(name)
                .await
                .map_err(|e| PoolError::Store(e.to_string())),
            None => Ok(()),
        }
    }

    /// Puts models read back from the durable store into the table (as `Pending`: the
    /// replicas' own indexes say what is loaded, see [`Pool::reconcile`]).
    pub fn restore(&self, models: Vec<(ModelName, ModelSpec)>) {
        self.replace_registry(models, &[]);
    }

    /// Like [`Pool::restore`], with the models' version records (model name, JSON): each
    /// model comes back under the Triton-side name of the version that served, with the
    /// update under way (resumed once the replicas' indexes are read:
    /// [`Pool::take_lead`]) or the last failed one. Returns how many updates are under way.
    pub fn restore_with_versions(
        &self,
        models: Vec<(ModelName, ModelSpec)>,
        versions: &[(String, Vec<u8>)],
    ) -> usize {
        self.replace_registry(models, versions)
    }

    /// Refuses specs no replica could ever hold under its high watermark.
    fn check_fits(&self, name: &ModelName, spec: &ModelSpec) -> Result<(), PoolError> {
        let need = Resources::new(spec.memory, spec.gpu_memory);
        let high = self.inner.settings.watermarks.high;
        let fit = self
            .inner
            .replicas
            .iter()
            .filter(|r| need.fits_in(r.capacity.scale(high)))
            .count();
        if fit == 0 {
            return Err(PoolError::TooBig {
                name: name.to_string(),
                need_memory: need.memory,
                need_gpu: need.gpu_memory,
                high: high * 100.0,
            });
        }
        if spec.min_copies as usize > fit {
            return Err(PoolError::TooManyCopies {
                name: name.to_string(),
                min_copies: spec.min_copies,
                fit,
            });
        }
        Ok(())
    }

    /// Deletes `name`: forgets it durably, then unloads it from every replica and removes
    /// its staged files.
    pub async fn delete(&self, name: &str) -> Result<(), PoolError> {
        let client = ModelName::new(name)?;
        let _name = self.name_lock(&client).lock().await;
        let (name, incoming) = {
            let t = self.table();
            let Some(key) = t.resolve(&client) else {
                return Err(PoolError::UnknownModel(client.to_string()));
            };
            let incoming = t
                .get(&key)
                .and_then(|e| e.transition.as_ref())
                .filter(|tr| tr.state == super::update::TransitionState::Loading)
                .and_then(|tr| ModelName::new(&tr.version).ok());
            (key, incoming)
        };
        if let Some(alias) = self.alias_targeting(&client) {
            return Err(PoolError::AliasTarget {
                model: client.to_string(),
                alias: alias.to_string(),
            });
        }
        self.persist_delete(&client).await?;
        {
            let mut t = self.table();
            t.set_deleting(&name);
            t.forget_version(&client);
            if let Some(incoming) = &incoming {
                t.set_deleting(incoming);
            }
        }
        self.update_gauges();
        let _op = self.lock_model(&name).await?;
        let replicas: Vec<ReplicaIdx> = {
            let mut t = self.table();
            let copies: Vec<ReplicaIdx> = t
                .get(&name)
                .map(|e| e.copies().iter().map(|c| c.replica).collect())
                .unwrap_or_default();
            let now = Instant::now();
            for &r in &copies {
                t.set_copy_state(&name, r, CopyState::Unloading, now);
            }
            copies
        };
        for replica in replicas {
            let _ = self.unload_copy(&name, replica, "deleted", true).await;
        }
        self.remove_staged(&name).await;
        {
            let mut t = self.table();
            t.remove(&name);
            self.victims().forget(&name);
        }
        if let Some(incoming) = incoming {
            // The update's own task finds it gone; its copies go now.
            self.drop_version(&incoming, "deleted").await;
        }
        self.update_gauges();
        info!(model = %client, "model deleted");
        self.events()
            .record(NewEvent::new(EventKind::Deleted).model(&client));
        Ok(())
    }

    /// Removes the staged files of entry `name` (logged on failure).
    pub(super) async fn remove_staged(&self, name: &ModelName) {
        let repository = self.inner.repository.clone();
        let staged = name.clone();
        match tokio::task::spawn_blocking(move || repository.remove(&staged)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(model = %name, error = %e, "removing staged files failed"),
            Err(e) => tracing::warn!(model = %name, error = %e, "removing staged files panicked"),
        }
    }
}
