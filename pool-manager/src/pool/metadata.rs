//! The pool's kept metadata: what a replica says of a model after its load (or adoption),
//! kept in the table and durably; dropped by a reload or a delete; and the gateway's
//! metadata call, which answers metadata and readiness for a model loaded nowhere from it,
//! without loading the model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tracing::{debug, warn};

use super::table::ReplicaIdx;
use super::{Pool, PoolError};
use crate::metadata::{grpc, KeptMetadata};
use crate::spec::ModelName;
use mm_wire::{MetadataAnswer, Standby};

/// What a metadata call asks for (`for=` of the call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// The V2 metadata, of one version when `Some`.
    Metadata(Option<String>),
    /// Whether the model is ready.
    Ready,
    /// The model configuration.
    Config,
}

/// How long kept metadata waits for more to be written with it (see
/// [`Pool::keep_durably`]); a record is a cache, refilled by the next load if lost.
pub(super) const METADATA_WRITE_DELAY: Duration = Duration::from_millis(200);

/// Kept metadata not yet written to the store, by model.
pub(super) type MetadataQueue = std::sync::Mutex<BTreeMap<ModelName, Arc<KeptMetadata>>>;

/// What a replica said of a loaded model: V2 metadata and, if it gave it, configuration.
pub(super) type Description = (serde_json::Value, Option<serde_json::Value>);

impl Pool {
    /// Reads what `replica` says of the loaded `name` (metadata and configuration at once);
    /// `None` when it gives no metadata.
    pub(super) async fn describe(&self, name: &str, replica: ReplicaIdx) -> Option<Description> {
        let client = &self.config(replica).client;
        let (metadata, config) = tokio::join!(client.metadata(name), client.config(name));
        match metadata {
            Ok(metadata) => Some((metadata, config.ok())),
            Err(e) => {
                warn!(model = %name, error = %e, "no metadata from the replica after a load");
                None
            }
        }
    }

    /// Keeps `description`, read under `model`'s current spec: in the table at once and
    /// durably in the background when it changed (the record is a cache: a write that
    /// fails is refilled by the next load). Returns the model's inputs from it.
    pub(super) fn keep_description(
        &self,
        t: &mut super::table::Table,
        model: &ModelName,
        description: Description,
    ) -> Option<Vec<mm_wire::TensorSpec>> {
        let (metadata, config) = description;
        let inputs = crate::metadata::inputs_of(&metadata);
        let entry = t.get_mut(model)?;
        let kept = KeptMetadata::new(entry.spec(), metadata, config);
        if entry.metadata.as_deref() == Some(&kept) {
            return inputs;
        }
        let kept = Arc::new(kept);
        entry.metadata = Some(kept.clone());
        self.keep_durably(model, kept);
        inputs
    }

    /// Queues `kept` for the store. Records queued within [`METADATA_WRITE_DELAY`] of the
    /// first go in one commit: a burst of cold loads makes one durable write, not one
    /// each, and its sync does not land on the next loads' staging on the same disk.
    fn keep_durably(&self, model: &ModelName, kept: Arc<KeptMetadata>) {
        let Some(store) = self.inner.store.clone() else {
            return;
        };
        let first = {
            let mut queued = self.metadata_queue();
            queued.insert(model.clone(), kept);
            queued.len() == 1
        };
        if first {
            let pool = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(METADATA_WRITE_DELAY).await;
                pool.write_metadata(&store).await;
            });
        }
    }

    /// Writes every queued metadata record in one commit.
    async fn write_metadata(&self, store: &crate::store::Store) {
        let queued = std::mem::take(&mut *self.metadata_queue());
        let changes = queued
            .iter()
            .map(|(name, kept)| crate::store::Change::Put {
                key: crate::store::Key::metadata(name),
                value: kept.encode(),
            })
            .collect();
        if let Err(e) = store.commit(changes).await {
            warn!(models = queued.len(), error = %e, "metadata not kept durably");
        }
    }

    /// Drops `name`'s queued metadata: the commit deleting its record is coming, and a
    /// later write must not bring the record back.
    pub(super) fn forget_queued_metadata(&self, name: &ModelName) {
        self.metadata_queue().remove(name);
    }

    fn metadata_queue(&self) -> std::sync::MutexGuard<'_, BTreeMap<ModelName, Arc<KeptMetadata>>> {
        self.inner
            .metadata_queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts metadata read back from the durable store into the table (the store checked
    /// that it describes each model's current spec).
    pub fn restore_metadata(&self, kept: Vec<(ModelName, KeptMetadata)>) {
        let mut t = self.table();
        for (name, kept) in kept {
            let key = t.resolve(&name).unwrap_or(name);
            if let Some(e) = t.get_mut(&key) {
                if kept.matches(e.spec()) {
                    e.metadata = Some(Arc::new(kept));
                }
            }
        }
    }

    /// The gateway's metadata call for `name`: where its loaded copy is, or (loaded
    /// nowhere) the answer from what was kept. `ready` never loads; `metadata` and
    /// `config` load the model (as a route call does) only when nothing was kept. A model
    /// loaded nowhere is ready unless its last load failed or no replica is healthy.
    pub async fn metadata_answer(
        &self,
        name: &str,
        asked: Asked,
        grpc: bool,
    ) -> Result<MetadataAnswer, PoolError> {
        let model = ModelName::new(name)?;
        if let Some(route) = self.routable(&model)? {
            return Ok(MetadataAnswer {
                route: Some(route),
                standby: None,
            });
        }
        let (ready, reason, kept) = {
            let t = self.table();
            let entry = t
                .get(&model)
                .filter(|e| !e.deleting)
                .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
            let kept = entry.metadata.clone().filter(|k| k.matches(entry.spec()));
            let reason = entry.failure.as_ref().map(|f| f.reason.clone());
            (reason.is_none(), reason, kept)
        };
        // Nowhere to load it: a request would not be served either.
        let (ready, reason) = match self.any_replica() {
            Err(e) if ready => (false, Some(e.to_string())),
            _ => (ready, reason),
        };
        let body = match (&asked, kept) {
            (Asked::Ready, _) => None,
            (Asked::Metadata(version), Some(kept)) => Some(
                kept.for_client(model.as_str(), version.as_deref())
                    .ok_or_else(|| PoolError::UnknownVersion {
                        name: model.to_string(),
                        version: version.clone().unwrap_or_default(),
                    })?,
            ),
            (Asked::Config, Some(kept)) if kept.config.is_some() => kept.config.clone(),
            // Never loaded under this spec: loading once is the only way to know.
            (Asked::Metadata(_) | Asked::Config, _) => {
                debug!(model = %model, ?asked, "no kept metadata: loading for it");
                let route = self.route(model.as_str()).await?;
                return Ok(MetadataAnswer {
                    route: Some(route),
                    standby: None,
                });
            }
        };
        let mut standby = Standby {
            ready,
            reason,
            body,
            grpc_message: None,
            carrier: None,
        };
        if grpc {
            self.add_grpc_answer(&mut standby, &asked)?;
        }
        Ok(MetadataAnswer {
            route: None,
            standby: Some(standby),
        })
    }

    /// The gRPC message of a standby answer, and a replica to carry it.
    fn add_grpc_answer(&self, standby: &mut Standby, asked: &Asked) -> Result<(), PoolError> {
        let message = match (asked, &standby.body) {
            (Asked::Ready, _) => grpc::ready_response(standby.ready),
            (Asked::Metadata(_), Some(body)) => grpc::metadata_response(body),
            (Asked::Config, Some(body)) => grpc::config_response(body),
            _ => return Err(PoolError::Internal("no gRPC answer for this call".into())),
        }
        .map_err(|e| PoolError::Internal(e.to_string()))?;
        standby.grpc_message = Some(base64::engine::general_purpose::STANDARD.encode(message));
        standby.carrier = Some(self.any_replica()?);
        Ok(())
    }
}
