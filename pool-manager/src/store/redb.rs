//! The embedded store: every record in a redb database in the data directory, so
//! registrations survive a restart or a `kill -9` of the single pool-manager.
//!
//! Why redb: it is a well-kept, pure-Rust, crash-safe (copy-on-write B-tree, checksummed
//! commits) embedded store, so a registration is one keyed write instead of rewriting a
//! whole file, which matters at 100,000 models. Why a writer thread with group commit:
//! redb commits one write transaction at a time, each with an fsync; the writer drains
//! every queued commit into one transaction, so concurrent registrations share one fsync.
//! A change is acknowledged only after its transaction committed. Fences do not apply:
//! redb holds the database file locked, so this process is its only writer.
//!
//! Layout: one table per [`Kind`] (name → JSON), and `meta` (name → u64) for the counters
//! and the store's own revision (one per commit, so a snapshot and a watch line up).

use std::path::Path;
use std::sync::{mpsc, Arc};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;
use tracing::{error, info};

use super::journal::Journal;
use super::{Backend, Change, Fence, Key, Kind, Revision, Snapshot, StoreError, Watch, WatchEvent};

/// Counters (and the revision), name → value.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The store's revision, in [`META`] (not a counter: never listed as one).
const REVISION: &str = "store.revision";
/// Most commits written in one transaction.
const MAX_BATCH: usize = 4096;
/// The database's page cache (reads, and the write buffer, at most half of it). The cache
/// fills with the pages written until it is full: 16 MiB was about 170 bytes per registered
/// model up to 100,000 models (tests/memory.rs counts it). A write only needs the pages on
/// its B-tree path, which the operating system's page cache serves anyway.
const CACHE_BYTES: usize = 1 << 20;

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static str> {
    TableDefinition::new(kind.segment())
}

enum Op {
    Commit(Vec<Change>),
    Raise(String, u64),
}

type Ack = oneshot::Sender<Result<Revision, StoreError>>;

/// The embedded backend; its writer thread stops when the last handle is dropped.
pub struct RedbBackend {
    writes: mpsc::Sender<(Op, Ack)>,
    db: Arc<Database>,
    journal: Arc<Journal>,
    path: std::path::PathBuf,
}

impl RedbBackend {
    /// Opens (creating if needed) `dir/registry.redb` and reads every record in it.
    pub fn open(dir: &Path) -> Result<(Self, Snapshot), StoreError> {
        let path = dir.join("registry.redb");
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        // The registry is read once at start and then only written: a small page cache is
        // enough, where redb's default (1 GiB) would keep every page written in memory.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| open_err(e.to_string()))?;
        // Make sure every table exists so reads of an empty registry work.
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        for kind in Kind::ALL {
            txn.open_table(table(kind))
                .map_err(|e| open_err(e.to_string()))?;
        }
        txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
        txn.commit().map_err(|e| open_err(e.to_string()))?;
        let snapshot = read_snapshot(&db).map_err(open_err)?;
        info!(path = %path.display(), records = snapshot.records.len(), "registry opened");

        let db = Arc::new(db);
        let journal = Arc::new(Journal::new(snapshot.revision));
        let (writes, queue) = mpsc::channel::<(Op, Ack)>();
        let (writer_db, writer_journal) = (db.clone(), journal.clone());
        std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || write_loop(&writer_db, &writer_journal, queue))
            .map_err(|e| open_err(e.to_string()))?;
        let backend = Self {
            writes,
            db,
            journal,
            path,
        };
        Ok((backend, snapshot))
    }

    async fn submit(&self, op: Op) -> Result<Revision, StoreError> {
        let (ack, done) = oneshot::channel();
        self.writes
            .send((op, ack))
            .map_err(|_| StoreError::Stopped)?;
        done.await.map_err(|_| StoreError::Stopped)?
    }
}

#[async_trait]
impl Backend for RedbBackend {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || read_snapshot(&db))
            .await
            .map_err(|e| StoreError::Write(e.to_string()))?
            .map_err(StoreError::Write)
    }

    async fn commit(
        &self,
        _fence: Option<&Fence>,
        changes: Vec<Change>,
    ) -> Result<Revision, StoreError> {
        self.submit(Op::Commit(changes)).await
    }

    async fn raise_counter(&self, name: &str, to: u64) -> Result<(), StoreError> {
        if name == REVISION {
            return Err(StoreError::Rejected(format!("'{name}' is not a counter")));
        }
        self.submit(Op::Raise(name.to_owned(), to)).await.map(drop)
    }

    async fn watch(&self, after: Revision) -> Result<Watch, StoreError> {
        self.journal.watch(after)
    }

    fn describe(&self) -> String {
        format!("embedded ({})", self.path.display())
    }
}

fn read_snapshot(db: &Database) -> Result<Snapshot, String> {
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let mut snapshot = Snapshot::default();
    let meta = read.open_table(META).map_err(|e| e.to_string())?;
    for row in meta.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        if k.value() == REVISION {
            snapshot.revision = v.value();
        } else {
            snapshot.counters.insert(k.value().to_owned(), v.value());
        }
    }
    for kind in Kind::ALL {
        let t = read.open_table(table(kind)).map_err(|e| e.to_string())?;
        for row in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            let key = Key {
                kind,
                name: k.value().to_owned(),
            };
            snapshot.records.insert(key, v.value().as_bytes().to_vec());
        }
    }
    Ok(snapshot)
}

fn write_loop(db: &Database, journal: &Journal, queue: mpsc::Receiver<(Op, Ack)>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let outcome = match write(db, &batch) {
            Ok((revision, events)) => {
                journal.publish(revision, events);
                Ok(revision)
            }
            Err(e) => {
                error!(error = %e, commits = batch.len(), "registry commit failed");
                Err(StoreError::Write(e))
            }
        };
        for (_, ack) in batch {
            let _ = ack.send(outcome.clone());
        }
    }
}

/// Writes a batch of commits in one transaction; returns its revision and its changes.
fn write(db: &Database, batch: &[(Op, Ack)]) -> Result<(Revision, Vec<WatchEvent>), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let revision;
    let mut events = Vec::new();
    {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let read = |meta: &redb::Table<&str, u64>, name: &str| -> Result<u64, String> {
            Ok(meta
                .get(name)
                .map_err(|e| e.to_string())?
                .map_or(0, |v| v.value()))
        };
        revision = read(&meta, REVISION)?.saturating_add(1);
        meta.insert(REVISION, revision).map_err(|e| e.to_string())?;
        for (op, _) in batch {
            match op {
                Op::Raise(name, to) => {
                    // Never lower: reservations only grow.
                    let current = read(&meta, name)?;
                    meta.insert(name.as_str(), current.max(*to))
                        .map_err(|e| e.to_string())?;
                }
                Op::Commit(changes) => {
                    for change in changes {
                        events.push(apply(&txn, change, revision)?);
                    }
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok((revision, events))
}

fn apply(
    txn: &redb::WriteTransaction,
    change: &Change,
    revision: Revision,
) -> Result<WatchEvent, String> {
    let (key, value) = match change {
        Change::Put { key, value } => (key, Some(value)),
        Change::Delete { key } => (key, None),
    };
    let mut t = txn.open_table(table(key.kind)).map_err(|e| e.to_string())?;
    match value {
        Some(value) => {
            let text = std::str::from_utf8(value).map_err(|e| e.to_string())?;
            t.insert(key.name.as_str(), text)
                .map_err(|e| e.to_string())?;
        }
        None => {
            t.remove(key.name.as_str()).map_err(|e| e.to_string())?;
        }
    }
    Ok(WatchEvent {
        revision,
        key: key.clone(),
        value: value.cloned(),
    })
}
