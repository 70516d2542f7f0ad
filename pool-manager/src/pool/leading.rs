//! Leadership of the pool: of the pool-managers sharing one store, only the leader acts on
//! the replicas (places, loads, unloads, evicts, reconciles, scales, probes, checks
//! failure reports) and only while it leads; the others keep the registry and the leader's
//! routing table from the store ([`super::follow`]) and forward what would act.
//!
//! Two predicates, both `true` for a single instance on the embedded store:
//! - [`Pool::may_act`]: the lease is valid now. Every call that changes a replica (a load,
//!   an unload) checks it right before it is sent, so a leader that was paused past its
//!   lease and wakes up changes nothing, even from a task it started while leading;
//! - [`Pool::acting`]: leading *and* the view rebuilt ([`Pool::take_lead`]: the registry
//!   re-read from the store, the replicas probed and their indexes adopted). Route calls
//!   are served only then, so a new leader never places a model it has not yet found.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{Pool, PoolError};
use crate::election::Role;
use crate::store::{Change, Key, Kind, Store, StoreError};

/// How often a leader re-checks its lease's deadline while nothing changes (a lease runs
/// out without a message: the campaign publishes the change only when it notices).
const LEASE_CHECK: Duration = Duration::from_millis(100);
/// Pause after a failed attempt to take the lead or write the routing table.
const RETRY: Duration = Duration::from_millis(200);
/// Routing-table changes closer together than this are written to the store as one.
const TABLE_WRITE_GAP: Duration = Duration::from_millis(20);
/// Longest a new leader waits for loads the previous one left running on the replicas.
const SETTLE_LOADS: Duration = Duration::from_secs(30);
/// How often it asks the replicas whether those loads have ended.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// Longest an eviction waits for the routing table without its victims to be in the store.
const TABLE_STORED_WAIT: Duration = Duration::from_secs(2);

/// The leader's routing table as a follower last read it from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    pub epoch: String,
    pub generation: u64,
    pub json: Arc<String>,
}

/// Leadership state, owned by the pool.
pub(super) struct Leading {
    /// This instance's role; unset: the only instance (embedded store), always leading.
    role: OnceLock<watch::Receiver<Role>>,
    /// Leading with the view rebuilt.
    acting: watch::Sender<bool>,
    /// The leader's routing table read from the store (followers serve it).
    pub followed: watch::Sender<Option<Arc<Followed>>>,
    /// Whether the store's change feed is open (a follower's copy is current).
    pub store_ok: watch::Sender<bool>,
    /// The generation of the routing table last written to the store (as leader).
    stored: watch::Sender<u64>,
}

impl Leading {
    pub fn new() -> Self {
        Self {
            role: OnceLock::new(),
            acting: watch::channel(false).0,
            followed: watch::channel(None).0,
            store_ok: watch::channel(true).0,
            stored: watch::channel(0).0,
        }
    }
}

/// How often the leader's background loops run.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    pub probe: Duration,
    pub reconcile: Duration,
}

impl Pool {
    /// Shares the pool with other instances: it acts only while `role` says this instance
    /// leads (call once, before serving; without it the pool always leads).
    pub fn attach_role(&self, role: watch::Receiver<Role>) {
        let _ = self.inner.leading.store_ok.send_replace(false);
        if self.inner.leading.role.set(role).is_err() {
            warn!("the pool's role was already attached");
        }
    }

    /// Whether this instance's leadership is valid now (always, alone).
    pub fn may_act(&self) -> bool {
        self.inner
            .leading
            .role
            .get()
            .is_none_or(|role| role.borrow().leads())
    }

    /// Whether this instance leads and has rebuilt its view: it serves route calls.
    /// Always, alone (the caller rebuilds the view before serving).
    pub fn acting(&self) -> bool {
        !self.shared() || (*self.inner.leading.acting.borrow() && self.may_act())
    }

    /// Changes of [`Pool::acting`] (as set; the lease's deadline is checked by the caller).
    pub fn acting_changes(&self) -> watch::Receiver<bool> {
        self.inner.leading.acting.subscribe()
    }

    /// Whether the pool is shared (an election decides who leads).
    pub fn shared(&self) -> bool {
        self.inner.leading.role.get().is_some()
    }

    /// Whether the store's change feed is open (always, alone).
    pub fn store_current(&self) -> bool {
        *self.inner.leading.store_ok.borrow()
    }

    /// An error unless this instance may change the replicas now.
    pub(super) fn check_may_act(&self) -> Result<(), String> {
        if self.may_act() {
            Ok(())
        } else {
            Err("this instance no longer leads the pool".into())
        }
    }

    /// An error unless this instance serves route calls now.
    pub(super) fn check_acting(&self) -> Result<(), PoolError> {
        if self.acting() {
            Ok(())
        } else {
            Err(PoolError::NotLeader)
        }
    }

    /// Rebuilds the pool's view as a new leader: the registry from `store` (when shared),
    /// then the replicas' readiness and their own indexes (every loaded copy adopted, none
    /// loaded again); then serves route calls, and resumes the updates left under way
    /// (by a predecessor, or by this process before a restart). Fails if leadership ended
    /// meanwhile.
    pub async fn take_lead(&self, store: Option<&Store>) -> Result<(), StoreError> {
        if let Some(store) = store {
            let snapshot = store.backend().snapshot().await?;
            let (models, unreadable) = crate::store::decode_models(&snapshot);
            for bad in unreadable {
                warn!(model = %bad.name, reason = %bad.reason, "a stored model could not be read; it is not served");
            }
            let metadata = crate::store::decode_metadata(&snapshot, &models);
            // Each model under the name Triton has it by (the reconcile adopts those
            // copies), with the update its predecessor left under way.
            self.replace_registry(models, &crate::store::records_of(&snapshot, Kind::Version));
            self.restore_metadata(metadata);
            // Moves and deletes made by the previous leader since this process started.
            self.replace_aliases(&crate::store::records_of(&snapshot, Kind::Alias));
        }
        self.probe_replicas().await;
        self.reconcile().await;
        if store.is_some() && self.settle_loads().await {
            self.reconcile().await;
        }
        if !self.may_act() {
            return Err(StoreError::NoLeader);
        }
        self.inner.leading.acting.send_replace(true);
        self.publish();
        self.resume_updates().await;
        Ok(())
    }

    /// Waits (bounded) until no replica is still loading a registered model, as a previous
    /// leader that died mid-load leaves it: such a load finishes on its own, and placing
    /// the model meanwhile would load it a second time elsewhere. Returns whether any was
    /// found (then the replicas' indexes are read again to adopt what finished).
    async fn settle_loads(&self) -> bool {
        let deadline = tokio::time::Instant::now() + SETTLE_LOADS;
        let mut found = false;
        loop {
            let loading = self.loading_on_replicas().await;
            if loading.is_empty() {
                return found;
            }
            if !found {
                info!(models = ?loading, "waiting for loads the previous leader left running");
            }
            found = true;
            if tokio::time::Instant::now() >= deadline || !self.may_act() {
                warn!(models = ?loading, "loads still running on the replicas; going on");
                return found;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Registered models some healthy replica lists as `LOADING`.
    async fn loading_on_replicas(&self) -> Vec<String> {
        let healthy: Vec<super::ReplicaIdx> = {
            let t = self.table();
            t.replica_indexes().filter(|&i| t.is_healthy(i)).collect()
        };
        let mut loading = Vec::new();
        for idx in healthy {
            let Ok(index) = self.config(idx).client.index().await else {
                continue;
            };
            let t = self.table();
            loading.extend(
                index
                    .into_iter()
                    .filter(|m| m.state == "LOADING" && t.contains(m.name.as_str()))
                    .map(|m| m.name),
            );
        }
        loading
    }

    /// Shared: waits (bounded) until the routing table as it is now is in the store, so
    /// that gateways polling a follower see a change (an eviction's victims gone) before
    /// the table-propagation delay starts. Alone: returns at once.
    pub(super) async fn until_table_stored(&self) {
        if !self.shared() || !self.acting() {
            return;
        }
        let generation = self.inner.routing.current().generation;
        let mut stored = self.inner.leading.stored.subscribe();
        let waited =
            tokio::time::timeout(TABLE_STORED_WAIT, stored.wait_for(|g| *g >= generation)).await;
        if waited.is_err() {
            warn!(
                generation,
                "the routing table is not in the store yet; evicting anyway"
            );
        }
    }

    /// Starts the leader's background loops (probes, scaler, reconciliation) in `set`.
    pub fn start_loops(&self, every: Intervals, set: &mut JoinSet<()>) {
        set.spawn(self.clone().run_probes(every.probe));
        set.spawn(self.clone().run_scaler());
        set.spawn(self.clone().run_reconcile(every.reconcile));
    }

    /// Follows this instance's role for as long as the process runs: each time it comes to
    /// lead, rebuilds the view, starts the loops and writes the routing table to `store`;
    /// the moment it stops leading, stops them all and no longer serves route calls.
    pub async fn run_leadership(self, store: Store, every: Intervals) {
        let Some(mut role) = self.inner.leading.role.get().cloned() else {
            return;
        };
        loop {
            while !role.borrow_and_update().leads() {
                if role.changed().await.is_err() {
                    return;
                }
            }
            info!("leading: rebuilding the pool's view from the store and the replicas");
            if let Err(e) = self.take_lead(Some(&store)).await {
                warn!(error = %e, "could not take the lead; trying again");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            info!(
                models = self.table().len(),
                "acting on the pool as its leader"
            );
            let mut set = JoinSet::new();
            self.start_loops(every, &mut set);
            set.spawn(self.clone().write_table(store.clone()));
            while role.borrow().leads() {
                tokio::select! {
                    changed = role.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(LEASE_CHECK) => {}
                }
            }
            self.inner.leading.acting.send_replace(false);
            set.abort_all();
            info!("no longer leading: stopped acting on the pool");
        }
    }

    /// Writes the routing table to the store whenever it changes (fenced: a deposed
    /// leader's write is refused), so followers serve the same table.
    async fn write_table(self, store: Store) {
        let mut changes = self.inner.routing.changes.subscribe();
        loop {
            changes.borrow_and_update();
            let current = self.inner.routing.current();
            let put = Change::Put {
                key: Key::routing_table(),
                value: current.json.as_bytes().to_vec(),
            };
            if let Err(e) = store.commit(vec![put]).await {
                warn!(error = %e, "writing the routing table to the store failed");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            self.inner.leading.stored.send_replace(current.generation);
            if changes.changed().await.is_err() {
                return;
            }
            tokio::time::sleep(TABLE_WRITE_GAP).await;
        }
    }
}
