//! The durable records of a pool, behind one [`Backend`] trait with two implementations:
//! the embedded redb database ([`redb`], the default: one pool-manager) and etcd v3
//! ([`etcd`]: several pool-managers sharing one registry, one of them leading).
//!
//! Records are typed by [`Kind`], each kind a key space of its own (a redb table, an etcd
//! key prefix): new durable state (aliases, model metadata, the copy table) is one more
//! kind, not one more store. Counters (the event-number reservation) are a separate,
//! only-growing map.
//!
//! Invariants: a change is acknowledged only once the backend made it durable (redb's
//! committed transaction, etcd's raft commit). A write made while leading carries the
//! leader's [`Fence`], which the backend checks in the same transaction, so a deposed
//! leader's writes are refused by the store itself, whatever its own (possibly stale) view.

pub mod config;
pub mod etcd;
mod journal;
#[cfg(test)]
pub mod memory;
pub mod redb;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::election::Role;
use crate::metadata::KeptMetadata;
use crate::spec::{ModelName, ModelSpec, StoredSpec};

/// A store's position in its history: every committed change has a larger one.
pub type Revision = u64;

/// The counter that bounds the event sequence numbers in use (see [`crate::events`]).
pub const EVENTS_RESERVED: &str = "events.reserved";

/// Why the store failed. A failed write means the change was not made (nor acknowledged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The embedded database could not be opened (a bad path, a file another process holds).
    #[error("cannot open the registry at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// The embedded database refused the commit.
    #[error("registry write failed: {0}")]
    Write(String),
    /// The embedded store's writer thread is gone (the process is stopping).
    #[error("the registry writer has stopped")]
    Stopped,
    /// This instance does not lead, so it may not change the pool.
    #[error("this instance does not lead the pool (leader: {})", leader.as_deref().unwrap_or("none"))]
    NotLeader { leader: Option<String> },
    /// No instance leads (an election is under way, or the store has no quorum).
    #[error("no pool-manager leads the pool now (an election is under way or the store has no quorum); retry shortly")]
    NoLeader,
    /// The write carried a fence that no longer holds: leadership was lost before it
    /// reached the store (a paused or partitioned leader).
    #[error(
        "write refused by the store: this instance's leadership ended before the write arrived"
    )]
    Fenced,
    /// The store could not be reached or did not answer (no quorum, network, timeout).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version cannot read, or refused the request.
    #[error("the store refused the request: {0}")]
    Rejected(String),
    /// A watch fell behind the store's history (compacted, or too slow to read): the
    /// watcher must read a new snapshot and watch from its revision.
    #[error("the store's change feed was lost; a full reload is needed")]
    WatchLost,
}

impl StoreError {
    /// Whether the same request may succeed later without any change on the caller's side.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::NoLeader | StoreError::Unavailable(_) | StoreError::WatchLost
        )
    }
}

/// A kind of durable record: each is a key space of its own (a redb table, an etcd key
/// segment). Adding durable state means adding a kind here and its redb table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A registered model's spec ([`StoredSpec`] JSON), keyed by model name.
    Model,
    /// What a model's replica said of it after a load ([`KeptMetadata`] JSON), keyed by
    /// the client-facing model name; carries the digest of the spec it was read under.
    Metadata,
    /// The leader's routing table (the gateway's JSON), under the name `routing`: what
    /// followers serve to table polls.
    RoutingTable,
    /// Which version of a model serves, and the update under way, keyed by model name
    /// (absent: the model serves under its own name; see `pool::update`).
    Version,
    /// An alias's targets and weights, keyed by alias name (see `pool::aliases`).
    Alias,
}

impl Kind {
    /// Every kind, in the order a snapshot lists them.
    pub const ALL: [Kind; 5] = [
        Kind::Model,
        Kind::Metadata,
        Kind::RoutingTable,
        Kind::Version,
        Kind::Alias,
    ];

    /// The key space's name: the redb table, the etcd key segment.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Metadata => "metadata",
            Kind::RoutingTable => "table",
            Kind::Version => "versions",
            Kind::Alias => "aliases",
        }
    }

    fn from_segment(segment: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.segment() == segment)
    }
}

/// Where one record lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    pub name: String,
}

impl Key {
    /// The leader's routing table.
    pub fn routing_table() -> Self {
        Self {
            kind: Kind::RoutingTable,
            name: "routing".into(),
        }
    }

    pub fn model(name: &ModelName) -> Self {
        Self {
            kind: Kind::Model,
            name: name.to_string(),
        }
    }

    pub fn metadata(name: &ModelName) -> Self {
        Self {
            kind: Kind::Metadata,
            name: name.to_string(),
        }
    }

    pub fn version(name: &ModelName) -> Self {
        Self {
            kind: Kind::Version,
            name: name.to_string(),
        }
    }

    pub fn alias(name: &ModelName) -> Self {
        Self {
            kind: Kind::Alias,
            name: name.to_string(),
        }
    }
}

/// One change of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { key: Key, value: Vec<u8> },
    Delete { key: Key },
}

/// Every record and counter, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub records: BTreeMap<Key, Vec<u8>>,
    pub counters: BTreeMap<String, u64>,
    pub revision: Revision,
}

/// One committed change of a record, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub revision: Revision,
    pub key: Key,
    /// The new value; `None`: the record was deleted.
    pub value: Option<Vec<u8>>,
}

/// Proof of leadership carried by a write: the leader key and the revision at which this
/// instance created it. The backend applies the write only if the key still has that
/// creation revision, so a write sent by an instance that has since lost its lease (and
/// whose key was deleted, or re-created by another leader) changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub revision: Revision,
}

/// The changes committed after a revision, in commit order; ends with an error when the
/// feed is lost (then: snapshot again and watch from the snapshot's revision).
pub struct Watch {
    events: mpsc::Receiver<Result<WatchEvent, StoreError>>,
}

impl Watch {
    pub(crate) fn new(events: mpsc::Receiver<Result<WatchEvent, StoreError>>) -> Self {
        Self { events }
    }

    /// The next change; `Err(WatchLost)` when the feed ended without being asked to.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        self.events
            .recv()
            .await
            .unwrap_or(Err(StoreError::WatchLost))
    }
}

/// A durable key-value store of typed records. Implementations are cheap to call
/// concurrently.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Every record and counter, read at one revision.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;
    /// Applies `changes` all or none, only while `fence` (when given) still holds;
    /// returns the commit's revision once it is durable.
    async fn commit(
        &self,
        fence: Option<&Fence>,
        changes: Vec<Change>,
    ) -> Result<Revision, StoreError>;
    /// Raises counter `name` to at least `to` (never lowers it); returns once durable.
    async fn raise_counter(&self, name: &str, to: u64) -> Result<(), StoreError>;
    /// The record changes committed after revision `after`, in order.
    async fn watch(&self, after: Revision) -> Result<Watch, StoreError>;
    /// Where the records are, for logs and the cluster view (no credentials).
    fn describe(&self) -> String;
}

/// What [`Store::open`] and [`Store::open_with`] found.
pub struct Opened {
    pub store: Store,
    /// Every model read back.
    pub models: Vec<(ModelName, ModelSpec)>,
    /// Models that no longer parse, never silently dropped.
    pub unreadable: Vec<Unreadable>,
    /// Kept metadata of registered models (records that no longer parse, or of a model no
    /// longer registered, are left out: they are a cache, refilled by the next load).
    pub metadata: Vec<(ModelName, KeptMetadata)>,
    /// Every version record (model name, JSON), for the pool to read back.
    pub versions: Vec<(String, Vec<u8>)>,
    /// Every alias record (alias name, JSON), for the pool to read back.
    pub aliases: Vec<(String, Vec<u8>)>,
    /// Every event sequence number an earlier run may have used is at most this (0: none).
    pub events_reserved: u64,
    /// The revision all of this was read at (watch from here).
    pub revision: Revision,
}

/// A stored model that could not be read back (kept out of the registry, logged).
#[derive(Debug)]
pub struct Unreadable {
    pub name: String,
    pub reason: String,
}

/// A handle on the store; cheap to clone. Writes are fenced by this instance's current
/// [`Role`]: refused at once when it does not lead, and carrying its fence when it does.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    role: watch::Receiver<Role>,
}

impl Store {
    /// Opens (creating if needed) the embedded store `dir/registry.redb`, the only writer
    /// of which is this process, and reads every record in it.
    pub fn open(dir: &std::path::Path) -> Result<Opened, StoreError> {
        let (backend, snapshot) = redb::RedbBackend::open(dir)?;
        let (_, role) = watch::channel(Role::Sole);
        let store = Self {
            backend: Arc::new(backend),
            role,
        };
        Ok(store.opened(snapshot))
    }

    /// A store over `backend`, writing under the leadership `role` reports, and every
    /// record read back from it.
    pub async fn open_with(
        backend: Arc<dyn Backend>,
        role: watch::Receiver<Role>,
    ) -> Result<Opened, StoreError> {
        let snapshot = backend.snapshot().await?;
        Ok(Self { backend, role }.opened(snapshot))
    }

    fn opened(self, snapshot: Snapshot) -> Opened {
        let (models, unreadable) = decode_models(&snapshot);
        let metadata = decode_metadata(&snapshot, &models);
        let (versions, aliases) = (
            records_of(&snapshot, Kind::Version),
            records_of(&snapshot, Kind::Alias),
        );
        Opened {
            versions,
            aliases,
            events_reserved: snapshot.counters.get(EVENTS_RESERVED).copied().unwrap_or(0),
            revision: snapshot.revision,
            store: self,
            models,
            unreadable,
            metadata,
        }
    }

    /// The backend, for watching and the cluster view.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Stores `name`'s spec; returns once it is durable.
    pub async fn put(&self, name: &ModelName, spec: &ModelSpec) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&StoredSpec::from(spec))
            .map_err(|e| StoreError::Rejected(e.to_string()))?;
        self.commit(vec![Change::Put {
            key: Key::model(name),
            value,
        }])
        .await
        .map(drop)
    }

    /// Stores `name`'s changed spec whose files may differ, and forgets its kept metadata
    /// in the same commit; returns once both are durable.
    pub async fn put_reloaded(&self, name: &ModelName, spec: &ModelSpec) -> Result<(), StoreError> {
        let value = serde_json::to_vec(&StoredSpec::from(spec))
            .map_err(|e| StoreError::Rejected(e.to_string()))?;
        self.commit(vec![
            Change::Put {
                key: Key::model(name),
                value,
            },
            Change::Delete {
                key: Key::metadata(name),
            },
        ])
        .await
        .map(drop)
    }

    /// Forgets `name`, its kept metadata and its version record; returns once durable.
    pub async fn delete(&self, name: &ModelName) -> Result<(), StoreError> {
        self.commit(vec![
            Change::Delete {
                key: Key::model(name),
            },
            Change::Delete {
                key: Key::metadata(name),
            },
            Change::Delete {
                key: Key::version(name),
            },
        ])
        .await
        .map(drop)
    }

    /// Keeps `name`'s metadata; returns once it is durable.
    pub async fn put_metadata(
        &self,
        name: &ModelName,
        kept: &KeptMetadata,
    ) -> Result<(), StoreError> {
        self.commit(vec![Change::Put {
            key: Key::metadata(name),
            value: kept.encode(),
        }])
        .await
        .map(drop)
    }

    /// Writes alias `name`'s record (`None`: deletes it); returns once durable.
    pub async fn put_alias(
        &self,
        name: &ModelName,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let key = Key::alias(name);
        let change = match value {
            Some(value) => Change::Put { key, value },
            None => Change::Delete { key },
        };
        self.commit(vec![change]).await.map(drop)
    }

    /// Writes `name`'s version record (`None`: deletes it) and, with `spec`, its spec, in
    /// one commit; returns once durable.
    pub async fn put_version(
        &self,
        name: &ModelName,
        spec: Option<&ModelSpec>,
        version: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut changes = Vec::with_capacity(2);
        if let Some(spec) = spec {
            let value = serde_json::to_vec(&StoredSpec::from(spec))
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            changes.push(Change::Put {
                key: Key::model(name),
                value,
            });
            // The kept metadata was read under the spec this one replaces.
            changes.push(Change::Delete {
                key: Key::metadata(name),
            });
        }
        changes.push(match version {
            Some(value) => Change::Put {
                key: Key::version(name),
                value,
            },
            None => Change::Delete {
                key: Key::version(name),
            },
        });
        self.commit(changes).await.map(drop)
    }

    /// Commits `changes` under this instance's leadership (all or none).
    pub async fn commit(&self, changes: Vec<Change>) -> Result<Revision, StoreError> {
        let fence = self.write_fence()?;
        self.backend.commit(fence.as_ref(), changes).await
    }

    /// Records durably that event numbers up to `upto` may be in use; returns once it is.
    /// Not fenced: every instance numbers its own events.
    pub async fn reserve_events(&self, upto: u64) -> Result<(), StoreError> {
        self.backend.raise_counter(EVENTS_RESERVED, upto).await
    }

    /// Like [`Store::reserve_events`] without waiting for the commit (for a caller that
    /// cannot wait and keeps enough headroom; a failure is logged).
    pub fn reserve_events_later(&self, upto: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(upto, "event numbers not reserved: no runtime");
            return;
        };
        let backend = self.backend.clone();
        runtime.spawn(async move {
            if let Err(e) = backend.raise_counter(EVENTS_RESERVED, upto).await {
                warn!(error = %e, upto, "event numbers not reserved");
            }
        });
    }

    /// The fence a write must carry now, or why this instance may not write.
    fn write_fence(&self) -> Result<Option<Fence>, StoreError> {
        match &*self.role.borrow() {
            Role::Sole => Ok(None),
            Role::Leader { fence, until } if tokio::time::Instant::now() < *until => {
                Ok(Some(fence.clone()))
            }
            Role::Leader { .. } | Role::Follower { leader: None } => Err(StoreError::NoLeader),
            Role::Follower {
                leader: Some(leader),
            } => Err(StoreError::NotLeader {
                leader: Some(leader.id.clone()),
            }),
        }
    }
}

/// Reads every model record; those that no longer parse are returned apart.
/// The records of one kind in `snapshot`: (name, value).
pub fn records_of(snapshot: &Snapshot, kind: Kind) -> Vec<(String, Vec<u8>)> {
    snapshot
        .records
        .iter()
        .filter(|(k, _)| k.kind == kind)
        .map(|(k, v)| (k.name.clone(), v.clone()))
        .collect()
}

pub fn decode_models(snapshot: &Snapshot) -> (Vec<(ModelName, ModelSpec)>, Vec<Unreadable>) {
    let mut models = Vec::new();
    let mut unreadable = Vec::new();
    let records = snapshot
        .records
        .iter()
        .filter(|(k, _)| k.kind == Kind::Model);
    for (key, value) in records {
        match decode_model(&key.name, value) {
            Ok(model) => models.push(model),
            Err(reason) => unreadable.push(Unreadable {
                name: key.name.clone(),
                reason,
            }),
        }
    }
    (models, unreadable)
}

/// Reads the kept metadata of the registered `models` whose spec it still describes.
pub fn decode_metadata(
    snapshot: &Snapshot,
    models: &[(ModelName, ModelSpec)],
) -> Vec<(ModelName, KeptMetadata)> {
    let specs: std::collections::HashMap<&str, &ModelSpec> =
        models.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut kept = Vec::new();
    let records = snapshot
        .records
        .iter()
        .filter(|(k, _)| k.kind == Kind::Metadata);
    for (key, value) in records {
        let Some(spec) = specs.get(key.name.as_str()) else {
            continue;
        };
        match KeptMetadata::decode(value) {
            Ok(m) if m.matches(spec) => {
                if let Ok(name) = ModelName::new(&key.name) {
                    kept.push((name, m));
                }
            }
            Ok(_) => {}
            Err(e) => warn!(model = %key.name, error = %e, "kept metadata not read back"),
        }
    }
    kept
}

/// One model record back to its name and spec.
pub fn decode_model(name: &str, value: &[u8]) -> Result<(ModelName, ModelSpec), String> {
    let name = ModelName::new(name).map_err(|e| e.to_string())?;
    let stored: StoredSpec = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let spec = ModelSpec::try_from(stored).map_err(|e| e.to_string())?;
    Ok((name, spec))
}

#[cfg(test)]
mod tests;
