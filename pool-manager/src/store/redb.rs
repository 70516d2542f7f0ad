//! The durable registry: every registered model's spec, kept in an embedded redb database
//! in the data directory, so registrations survive a restart or a `kill -9`.
//!
//! Why redb: it is a well-kept, pure-Rust, crash-safe (copy-on-write B-tree, checksummed
//! commits) embedded store, so a registration is one keyed write instead of rewriting a
//! whole file, which matters at 100,000 models. Why a writer thread with group commit:
//! redb commits one write transaction at a time, each with an fsync; the writer drains
//! every queued change into one transaction, so concurrent registrations share one fsync.
//! A change is acknowledged (and the caller answers 2xx) only after its commit returned.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;
use tracing::{error, info};

use crate::spec::{ModelName, ModelSpec, StoredSpec};

const MODELS: TableDefinition<&str, &str> = TableDefinition::new("models");
/// Counters that must survive restarts (`events.reserved`).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS_RESERVED: &str = "events.reserved";
/// Most changes committed in one transaction.
const MAX_BATCH: usize = 4096;
/// The database's page cache.
const CACHE_BYTES: usize = 16 << 20;

/// Why the store failed. A failed write means the change was not made (nor acknowledged).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the registry at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("registry write failed: {0}")]
    Write(String),
    #[error("the registry writer has stopped")]
    Stopped,
}

enum Change {
    Put(String, String),
    Delete(String),
    /// Event sequence numbers up to this one may be in use.
    EventsReserved(u64),
}

type Ack = oneshot::Sender<Result<(), StoreError>>;

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writes: mpsc::Sender<(Change, Ack)>,
}

/// What [`Store::open`] found.
pub struct Opened {
    pub store: Store,
    /// Every model read back.
    pub models: Vec<(ModelName, ModelSpec)>,
    /// Models that no longer parse, never silently dropped.
    pub unreadable: Vec<Unreadable>,
    /// Every event sequence number an earlier run may have used is at most this (0: none).
    pub events_reserved: u64,
}

/// A stored model that could not be read back (kept out of the registry, logged).
#[derive(Debug)]
pub struct Unreadable {
    pub name: String,
    pub reason: String,
}

impl Store {
    /// Opens (creating if needed) `dir/registry.redb` and returns the store and every model
    /// in it. Models that no longer parse are returned apart, never silently dropped.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        let path = dir.join("registry.redb");
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        // The registry is read once at start and then only written: a small page cache is
        // enough, where redb's default (1 GiB) would keep every page written in memory, some
        // hundred bytes per registered model.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| open_err(e.to_string()))?;
        // Make sure the table exists so reads of an empty registry work.
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        txn.open_table(MODELS)
            .map_err(|e| open_err(e.to_string()))?;
        txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
        txn.commit().map_err(|e| open_err(e.to_string()))?;

        let mut models = Vec::new();
        let mut unreadable = Vec::new();
        let events_reserved;
        {
            let read = db.begin_read().map_err(|e| open_err(e.to_string()))?;
            let meta = read.open_table(META).map_err(|e| open_err(e.to_string()))?;
            events_reserved = meta
                .get(EVENTS_RESERVED)
                .map_err(|e| open_err(e.to_string()))?
                .map_or(0, |v| v.value());
            let table = read
                .open_table(MODELS)
                .map_err(|e| open_err(e.to_string()))?;
            for row in table.iter().map_err(|e| open_err(e.to_string()))? {
                let (k, v) = row.map_err(|e| open_err(e.to_string()))?;
                let (name, json) = (k.value().to_owned(), v.value().to_owned());
                let parsed = ModelName::new(&name)
                    .map_err(|e| e.to_string())
                    .and_then(|n| {
                        let stored: StoredSpec =
                            serde_json::from_str(&json).map_err(|e| e.to_string())?;
                        let spec = ModelSpec::try_from(stored).map_err(|e| e.to_string())?;
                        Ok((n, spec))
                    });
                match parsed {
                    Ok(model) => models.push(model),
                    Err(reason) => unreadable.push(Unreadable { name, reason }),
                }
            }
        }
        info!(path = %path.display(), models = models.len(), "registry opened");
        let (writes, queue) = mpsc::channel::<(Change, Ack)>();
        std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || write_loop(db, queue))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Opened {
            store: Self { writes },
            models,
            unreadable,
            events_reserved,
        })
    }

    /// Records durably that event numbers up to `upto` may be in use; returns once it is.
    pub async fn reserve_events(&self, upto: u64) -> Result<(), StoreError> {
        self.submit(Change::EventsReserved(upto)).await
    }

    /// Like [`Store::reserve_events`] without waiting for the commit (for a caller that
    /// cannot wait and keeps enough headroom; a failed commit is logged by the writer).
    pub fn reserve_events_later(&self, upto: u64) {
        let (ack, _) = oneshot::channel();
        let _ = self.writes.send((Change::EventsReserved(upto), ack));
    }

    /// Stores `name`'s spec; returns once it is durable.
    pub async fn put(&self, name: &ModelName, spec: &ModelSpec) -> Result<(), StoreError> {
        let json = serde_json::to_string(&StoredSpec::from(spec))
            .map_err(|e| StoreError::Write(e.to_string()))?;
        self.submit(Change::Put(name.to_string(), json)).await
    }

    /// Forgets `name`; returns once that is durable.
    pub async fn delete(&self, name: &ModelName) -> Result<(), StoreError> {
        self.submit(Change::Delete(name.to_string())).await
    }

    async fn submit(&self, change: Change) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.writes
            .send((change, ack))
            .map_err(|_| StoreError::Stopped)?;
        done.await.map_err(|_| StoreError::Stopped)?
    }
}

fn write_loop(db: Database, queue: mpsc::Receiver<(Change, Ack)>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let outcome = commit(&db, &batch).map_err(|e| {
            error!(error = %e, changes = batch.len(), "registry commit failed");
            StoreError::Write(e)
        });
        for (_, ack) in batch {
            let _ = ack.send(outcome.clone());
        }
    }
}

fn commit(db: &Database, batch: &[(Change, Ack)]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(MODELS).map_err(|e| e.to_string())?;
        for (change, _) in batch {
            match change {
                Change::Put(name, json) => {
                    table
                        .insert(name.as_str(), json.as_str())
                        .map_err(|e| e.to_string())?;
                }
                Change::Delete(name) => {
                    table.remove(name.as_str()).map_err(|e| e.to_string())?;
                }
                Change::EventsReserved(_) => {}
            }
        }
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        for (change, _) in batch {
            if let Change::EventsReserved(upto) = change {
                let current = meta
                    .get(EVENTS_RESERVED)
                    .map_err(|e| e.to_string())?
                    .map_or(0, |v| v.value());
                // Never lower: reservations only grow.
                meta.insert(EVENTS_RESERVED, current.max(*upto))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StoragePolicy;

    fn spec(dir: &Path, memory: u64) -> ModelSpec {
        let body = format!(
            r#"{{"storageUri": "file://{}", "memory": {memory}, "maxCopies": 2}}"#,
            dir.display()
        );
        ModelSpec::from_json(body.as_bytes(), &StoragePolicy::default()).unwrap()
    }

    #[tokio::test]
    async fn registrations_survive_reopening() {
        let data = tempfile::tempdir().unwrap();
        let model = tempfile::tempdir().unwrap();
        std::fs::create_dir(model.path().join("1")).unwrap();
        {
            let Opened { store, models, .. } = Store::open(data.path()).unwrap();
            assert!(models.is_empty());
            let writes = (0..50).map(|i| {
                let store = store.clone();
                let s = spec(model.path(), 100 + i);
                async move {
                    store
                        .put(&ModelName::new(&format!("m{i}")).unwrap(), &s)
                        .await
                }
            });
            for r in futures::future::join_all(writes).await {
                r.unwrap();
            }
            store.delete(&ModelName::new("m7").unwrap()).await.unwrap();
            store.reserve_events(20_000).await.unwrap();
            store.reserve_events_later(10_000);
            store.reserve_events(30_000).await.unwrap();
        }
        // The writer thread of the first handle has exited with its channel; reopen.
        let Opened {
            models,
            unreadable,
            events_reserved,
            ..
        } = loop {
            match Store::open(data.path()) {
                Ok(opened) => break opened,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        assert!(unreadable.is_empty());
        assert_eq!(events_reserved, 30_000);
        assert_eq!(models.len(), 49);
        let m3 = models.iter().find(|(n, _)| n.as_str() == "m3").unwrap();
        assert_eq!(m3.1, spec(model.path(), 103));
        assert!(!models.iter().any(|(n, _)| n.as_str() == "m7"));
    }
}
