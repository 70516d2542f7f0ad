//! An in-memory stand-in for etcd in unit tests: records, counters, leases that expire on
//! the tokio clock (so tests run with a paused clock), the leader key with its creation
//! revision and fenced commits, as [`super::etcd`] does them. Each instance under test
//! gets its own [`MemoryClient`] on one shared [`MemoryServer`], and a client can be cut
//! off (a partition, or a store without quorum) while the server's clock runs on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use super::journal::Journal;
use super::{Backend, Change, Fence, Revision, Snapshot, StoreError, Watch, WatchEvent};
use crate::election::{Acquired, Coordinator, LeaderKey, LeaseId, Member};

const LEADER_KEY: &str = "leader";

/// The shared state all clients see.
pub struct MemoryServer {
    state: Mutex<State>,
    journal: Journal,
    leader: watch::Sender<Option<LeaderKey>>,
}

#[derive(Default)]
struct State {
    revision: Revision,
    snapshot: Snapshot,
    /// Each lease's expiry and TTL.
    leases: HashMap<LeaseId, (Instant, Duration)>,
    next_lease: LeaseId,
    leader: Option<LeaderKey>,
    members: BTreeMap<String, (Member, LeaseId)>,
}

impl MemoryServer {
    /// A new server; its lease reaper runs on the current runtime until the server is
    /// dropped.
    pub fn start() -> Arc<Self> {
        let server = Arc::new(Self {
            state: Mutex::new(State::default()),
            journal: Journal::new(0),
            leader: watch::channel(None).0,
        });
        let weak = Arc::downgrade(&server);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                match weak.upgrade() {
                    Some(server) => server.expire(),
                    None => break,
                }
            }
        });
        server
    }

    /// A client of this server (one per instance under test).
    pub fn client(self: &Arc<Self>) -> Arc<MemoryClient> {
        Arc::new(MemoryClient {
            server: self.clone(),
            reachable: AtomicBool::new(true),
        })
    }

    /// Ends `lease` as the server would when its TTL passes.
    pub fn expire_lease(&self, lease: LeaseId) {
        let mut state = self.lock();
        state.leases.remove(&lease);
        self.drop_keys(&mut state);
    }

    /// Sends watchers of the leader key `key`, whatever the key is: a lagging watch.
    pub fn hint(&self, key: Option<LeaderKey>) {
        self.leader.send_replace(key);
    }

    /// The leader key now.
    pub fn leader(&self) -> Option<LeaderKey> {
        self.lock().leader.clone()
    }

    fn expire(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let before = state.leases.len();
        state.leases.retain(|_, (expiry, _)| *expiry > now);
        if state.leases.len() != before {
            self.drop_keys(&mut state);
        }
    }

    /// Deletes the keys whose lease is gone.
    fn drop_keys(&self, state: &mut State) {
        let leases = state.leases.clone();
        state.members.retain(|_, (_, l)| leases.contains_key(l));
        if let Some(key) = &state.leader {
            if !leases.contains_key(&key.lease) {
                state.leader = None;
                state.revision += 1;
                self.leader.send_replace(None);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One instance's connection to the [`MemoryServer`].
pub struct MemoryClient {
    server: Arc<MemoryServer>,
    reachable: AtomicBool,
}

impl MemoryClient {
    /// Cuts this client off the server (`false`) or reconnects it.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::SeqCst);
    }

    fn server(&self) -> Result<&MemoryServer, StoreError> {
        if self.reachable.load(Ordering::SeqCst) {
            Ok(&self.server)
        } else {
            Err(StoreError::Unavailable("cut off (test)".into()))
        }
    }
}

#[async_trait]
impl Backend for MemoryClient {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let server = self.server()?;
        let state = server.lock();
        Ok(Snapshot {
            revision: state.revision,
            ..state.snapshot.clone()
        })
    }

    async fn commit(
        &self,
        fence: Option<&Fence>,
        changes: Vec<Change>,
    ) -> Result<Revision, StoreError> {
        let server = self.server()?;
        let mut state = server.lock();
        if let Some(fence) = fence {
            let holds = state.leader.as_ref().map(|k| k.created) == Some(fence.revision);
            if fence.key != LEADER_KEY || !holds {
                return Err(StoreError::Fenced);
            }
        }
        state.revision += 1;
        let revision = state.revision;
        let mut events = Vec::new();
        for change in changes {
            let (key, value) = match change {
                Change::Put { key, value } => (key, Some(value)),
                Change::Delete { key } => (key, None),
            };
            match &value {
                Some(v) => state.snapshot.records.insert(key.clone(), v.clone()),
                None => state.snapshot.records.remove(&key),
            };
            events.push(WatchEvent {
                revision,
                key,
                value,
            });
        }
        server.journal.publish(revision, events);
        Ok(revision)
    }

    async fn raise_counter(&self, name: &str, to: u64) -> Result<(), StoreError> {
        let server = self.server()?;
        let mut state = server.lock();
        let counter = state.snapshot.counters.entry(name.to_owned()).or_default();
        *counter = (*counter).max(to);
        state.revision += 1;
        Ok(())
    }

    async fn watch(&self, after: Revision) -> Result<Watch, StoreError> {
        self.server()?.journal.watch(after)
    }

    fn describe(&self) -> String {
        "memory (test)".into()
    }
}

#[async_trait]
impl Coordinator for MemoryClient {
    async fn grant(&self, ttl: Duration) -> Result<(LeaseId, Duration), StoreError> {
        let server = self.server()?;
        let mut state = server.lock();
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(id, (Instant::now() + ttl, ttl));
        Ok((id, ttl))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let server = self.server()?;
        let mut state = server.lock();
        Ok(state.leases.get_mut(&lease).map(|(expiry, ttl)| {
            *expiry = Instant::now() + *ttl;
            *ttl
        }))
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.server()?.expire_lease(lease);
        Ok(())
    }

    async fn join(&self, me: &Member, lease: LeaseId) -> Result<(), StoreError> {
        let server = self.server()?;
        let mut state = server.lock();
        if !state.leases.contains_key(&lease) {
            return Err(StoreError::Rejected("lease not found".into()));
        }
        state.members.insert(me.id.clone(), (me.clone(), lease));
        Ok(())
    }

    async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let server = self.server()?;
        let state = server.lock();
        Ok(state.members.values().map(|(m, _)| m.clone()).collect())
    }

    async fn acquire(&self, me: &Member, lease: LeaseId) -> Result<Acquired, StoreError> {
        let server = self.server()?;
        let mut state = server.lock();
        if !state.leases.contains_key(&lease) {
            return Err(StoreError::Rejected("lease not found".into()));
        }
        if let Some(key) = &state.leader {
            if key.lease != lease {
                return Ok(Acquired::Held(key.clone()));
            }
            return Ok(Acquired::Won(fence(key.created)));
        }
        state.revision += 1;
        let key = LeaderKey {
            holder: me.clone(),
            lease,
            created: state.revision,
        };
        state.leader = Some(key.clone());
        server.leader.send_replace(Some(key.clone()));
        Ok(Acquired::Won(fence(key.created)))
    }

    fn observe(&self) -> watch::Receiver<Option<LeaderKey>> {
        self.server.leader.subscribe()
    }
}

fn fence(revision: Revision) -> Fence {
    Fence {
        key: LEADER_KEY.into(),
        revision,
    }
}
