//! The registry: registering, updating, deleting and restoring models. Every change is
//! written to the durable store before it is applied and acknowledged; one change per name
//! at a time (a name lock), so the store and the table agree on which spec won.

use tokio::time::Instant;
use tracing::info;

use super::table::{CopyState, ReplicaIdx};
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
        Ok(match self.table().get(&name) {
            None => Registered::Created,
            Some(e) if e.spec().is_unchanged_by(&spec) => Registered::Unchanged,
            Some(_) => Registered::Updated,
        })
    }

    /// Registers `name` with the JSON spec `body`, or updates it. A new `storageUri` unloads
    /// the old version everywhere (the next request loads the new one); other changes apply
    /// in place. A pinned model (`minCopies >= 1`) starts loading at once.
    pub async fn register(
        &self,
        name: &str,
        body: &[u8],
    ) -> Result<(Registered, super::ModelView), PoolError> {
        let (name, spec) = self.checked_spec(name, body).await?;
        // One registration or delete per name at a time, from the durable write to the
        // table, so the store and the table agree on which spec won.
        let _name = self.name_lock(&name).lock().await;
        let existing = self.table().get(&name).map(|e| e.spec().clone());
        let outcome = match existing {
            Some(old) if old.is_unchanged_by(&spec) => Registered::Unchanged,
            None => {
                self.persist_put(&name, &spec).await?;
                self.table().insert(name.clone(), spec.clone());
                // Loaded nowhere: only the registry size moves (a full gauge pass per
                // registration would cost a bulk registration of many models dearly).
                let n = self.table().len() as u64;
                self.inner.metrics.models_registered.set(clamp(n));
                Registered::Created
            }
            Some(old) => {
                if old.needs_reload(&spec) {
                    self.persist_reloaded(&name, &spec).await?;
                } else {
                    self.persist_put(&name, &spec).await?;
                }
                self.update_spec(&name, spec.clone()).await?;
                self.update_gauges();
                Registered::Updated
            }
        };
        if outcome != Registered::Unchanged {
            self.registered(&name, &spec, outcome);
        }
        Ok((outcome, self.view(&name)?))
    }

    /// Applies a changed spec under the model's op lock; a reload unloads every copy.
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
            let pinned = name.clone();
            tokio::spawn(async move { pool.ensure_pinned(&pinned).await });
        }
    }

    fn name_lock(&self, name: &ModelName) -> &tokio::sync::Mutex<()> {
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
        match &self.inner.store {
            Some(store) => store
                .put_reloaded(name, spec)
                .await
                .map_err(|e| PoolError::Store(e.to_string())),
            None => Ok(()),
        }
    }

    async fn persist_delete(&self, name: &ModelName) -> Result<(), PoolError> {
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
        let mut t = self.table();
        for (name, spec) in models {
            t.insert(name, spec);
        }
        drop(t);
        self.update_gauges();
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
        let name = ModelName::new(name)?;
        let _name = self.name_lock(&name).lock().await;
        if !self.table().contains(&name) {
            return Err(PoolError::UnknownModel(name.to_string()));
        }
        self.persist_delete(&name).await?;
        self.table().set_deleting(&name);
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
        let repository = self.inner.repository.clone();
        let staged = name.clone();
        match tokio::task::spawn_blocking(move || repository.remove(&staged)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(model = %name, error = %e, "removing staged files failed"),
            Err(e) => tracing::warn!(model = %name, error = %e, "removing staged files panicked"),
        }
        {
            let mut t = self.table();
            t.remove(&name);
            self.victims().forget(&name);
        }
        self.update_gauges();
        info!(model = %name, "model deleted");
        self.events()
            .record(NewEvent::new(EventKind::Deleted).model(&name));
        Ok(())
    }
}
