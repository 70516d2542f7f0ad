//! The routing table the gateway routes warm requests by: every model with a loaded copy on
//! a healthy replica, where those copies are, and whether the pool is waiting for the
//! model's requests to end (`watch`). It is updated from the models the table marked
//! changed (not rebuilt from the registry) and gets a new generation only when what is
//! routable really changed; long polls (`table`) are woken through a `watch` channel.
//! Failure reports from the gateway are checked against the replica before anything
//! changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mm_wire::{Endpoint, FailureKind, FailureReport, TableEntry};
use tokio::sync::watch;
use tracing::{info, warn};

use super::table::{Claim, CopyState, ReplicaIdx, Role, Table};
use super::{Pool, PoolError};
use crate::spec::ModelName;

/// The latest published table, serialised once for every poller.
pub(super) struct Published {
    pub generation: u64,
    pub json: Arc<String>,
}

/// Most gateway failure claims checked at once; more are ignored until one ends (the
/// gateway reports again on the next failed request).
pub const MAX_FAILURE_CHECKS: usize = 16;

/// Pause between the probes that check one "unreachable" claim.
const REPORT_PROBE_GAP: Duration = Duration::from_millis(200);

/// One routable model: its entry, and that entry as JSON (made once per change, so that a
/// publication is a concatenation, not a serialisation of the whole table).
struct Routed {
    entry: TableEntry,
    json: String,
}

/// The routable entries and the latest publication; one publisher at a time.
struct State {
    entries: BTreeMap<ModelName, Routed>,
    /// The aliases as the table's JSON array (`[]` when none).
    aliases: String,
    published: Arc<Published>,
}

/// Publishing state, owned by the pool.
pub(super) struct Routing {
    pub epoch: String,
    state: std::sync::Mutex<State>,
    pub changes: watch::Sender<u64>,
    /// Bounds the failure claims being checked at once.
    pub checks: Arc<tokio::sync::Semaphore>,
}

impl Routing {
    pub fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let epoch = format!("{:x}-{:x}", nanos, std::process::id());
        let entries = BTreeMap::new();
        let json = Arc::new(serialize(&epoch, 0, &entries, "[]"));
        Self {
            epoch,
            state: std::sync::Mutex::new(State {
                entries,
                aliases: "[]".to_owned(),
                published: Arc::new(Published {
                    generation: 0,
                    json,
                }),
            }),
            changes: watch::channel(0).0,
            checks: Arc::new(tokio::sync::Semaphore::new(MAX_FAILURE_CHECKS)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn current(&self) -> Arc<Published> {
        self.lock().published.clone()
    }
}

/// The table as [`mm_wire::RoutingTable`] JSON, from the entries' own JSON.
fn serialize(
    epoch: &str,
    generation: u64,
    models: &BTreeMap<ModelName, Routed>,
    aliases: &str,
) -> String {
    let head = serde_json::json!({ "epoch": epoch, "generation": generation }).to_string();
    let body: usize = models.values().map(|r| r.json.len() + 1).sum();
    let mut out = String::with_capacity(head.len() + body + 12);
    // `{"epoch":..,"generation":..}` without its closing brace, then the models.
    out.push_str(head.trim_end_matches('}'));
    out.push_str(",\"models\":[");
    for (i, routed) in models.values().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&routed.json);
    }
    out.push(']');
    if aliases != "[]" {
        out.push_str(",\"aliases\":");
        out.push_str(aliases);
    }
    out.push('}');
    out
}

impl Pool {
    /// Brings the routing table in line with the models the table marked changed; publishes
    /// a new generation if what is routable changed.
    pub(super) fn publish(&self) {
        let routing = &self.inner.routing;
        // One publisher at a time, from reading the changes to publishing them, so an older
        // view of a model never overwrites a newer one.
        let mut state = routing.lock();
        let changes: Vec<(ModelName, Option<TableEntry>)> = {
            let mut t = self.table();
            let dirty = t.take_dirty();
            dirty
                .into_iter()
                .map(|name| {
                    let entry = self.table_entry(&t, &name);
                    (name, entry)
                })
                .collect()
        };
        let mut changed = false;
        for (name, entry) in changes {
            changed |= match entry {
                Some(e) if state.entries.get(&name).map(|r| &r.entry) != Some(&e) => {
                    let json = serde_json::to_string(&e).unwrap_or_default();
                    state.entries.insert(name, Routed { entry: e, json });
                    true
                }
                Some(_) => false,
                None => state.entries.remove(&name).is_some(),
            };
        }
        if !changed {
            return;
        }
        Self::publish_new(routing, state);
    }

    /// Publishes the table in `state` as a new generation and wakes the long polls.
    fn publish_new(routing: &Routing, mut state: std::sync::MutexGuard<'_, State>) {
        let generation = state.published.generation + 1;
        let json = Arc::new(serialize(
            &routing.epoch,
            generation,
            &state.entries,
            &state.aliases,
        ));
        state.published = Arc::new(Published { generation, json });
        drop(state);
        routing.changes.send_replace(generation);
    }

    /// Brings the routing table's aliases in line with the pool's; a new generation if
    /// they changed.
    pub(super) fn publish_aliases(&self) {
        let aliases = serde_json::to_string(&self.alias_entries()).unwrap_or_else(|_| "[]".into());
        let routing = &self.inner.routing;
        let mut state = routing.lock();
        if state.aliases == aliases {
            return;
        }
        state.aliases = aliases;
        Self::publish_new(routing, state);
    }

    /// `name`'s routing-table entry: its routable copies, if it has any and serves its
    /// client name (under that name, renamed to `name` when it differs).
    fn table_entry(&self, t: &Table, name: &ModelName) -> Option<TableEntry> {
        let e = t.get(name).filter(|e| e.role == Role::Current)?;
        let replicas: Vec<Endpoint> = t
            .routable(name)
            .into_iter()
            .filter_map(|r| self.endpoint(t, r))
            .collect();
        (!replicas.is_empty()).then(|| TableEntry {
            model: e.client.as_ref().unwrap_or(name).to_string(),
            replicas,
            inputs: e.inputs.clone(),
            watch: e.watched(),
            upstream: e.client.is_some().then(|| name.to_string()),
        })
    }

    /// Where replica `replica` is now; `None` while its name does not resolve.
    pub(super) fn endpoint(&self, t: &Table, replica: ReplicaIdx) -> Option<Endpoint> {
        let r = self.config(replica);
        let address = t.replica(replica)?.address?;
        Some(Endpoint {
            replica: r.id.to_string(),
            address: address.to_string(),
            grpc_address: r
                .grpc_port
                .map(|port| std::net::SocketAddr::new(address.ip(), port).to_string()),
        })
    }

    /// The routing table as JSON. When the caller already has `epoch`/`since`, waits up to
    /// `wait` for a newer generation first (a long poll).
    pub async fn routing_table(
        &self,
        epoch: Option<&str>,
        since: Option<u64>,
        wait: Duration,
    ) -> Arc<String> {
        if let Some(followed) = self.followed_table(epoch, since, wait).await {
            return followed;
        }
        let routing = &self.inner.routing;
        let mut changes = routing.changes.subscribe();
        let current = routing.current();
        let up_to_date = epoch == Some(routing.epoch.as_str()) && since == Some(current.generation);
        if up_to_date && !wait.is_zero() {
            // Either a change or the time limit: both answer the current table.
            let _ =
                tokio::time::timeout(wait, changes.wait_for(|g| *g != current.generation)).await;
        }
        routing.current().json.clone()
    }

    /// The current generation (for tests and the admin view).
    pub fn table_generation(&self) -> u64 {
        self.inner.routing.current().generation
    }

    /// Takes a gateway failure report: checks it against the replica in the background and
    /// fixes the table only if the replica confirms (an unreachable replica fails
    /// `unhealthy_after` probes in a row; a missing model is not ready there). Claims about
    /// unregistered models or unknown replicas, claims already being checked, and claims
    /// past [`MAX_FAILURE_CHECKS`] checks at once are ignored (and counted).
    pub fn report_failure(&self, report: FailureReport) -> Result<(), PoolError> {
        let metrics = &self.inner.metrics;
        let model = ModelName::new(&report.model).map_err(|e| {
            metrics.report_ignored("failure", "invalid", 1);
            PoolError::BadReport(e.to_string())
        })?;
        let Some(replica) = self.replica_index(&report.replica) else {
            metrics.report_ignored("failure", "unknown_replica", 1);
            return Ok(());
        };
        let claim = match report.kind {
            FailureKind::Unreachable => Claim::Unreachable(replica),
            FailureKind::ModelMissing => Claim::ModelMissing(model.clone(), replica),
        };
        let mut t = self.table();
        if !t.contains(&model) {
            drop(t);
            metrics.report_ignored("failure", "unknown_model", 1);
            return Ok(());
        }
        if t.checking.contains(&claim) {
            drop(t);
            metrics.report_ignored("failure", "duplicate", 1);
            return Ok(());
        }
        let Ok(permit) = self.inner.routing.checks.clone().try_acquire_owned() else {
            drop(t);
            metrics.report_ignored("failure", "busy", 1);
            return Ok(());
        };
        t.checking.insert(claim.clone());
        drop(t);
        metrics.failure_checks.inc();
        let pool = self.clone();
        tokio::spawn(async move {
            pool.verify_failure(&model, replica, report.kind).await;
            pool.table().checking.remove(&claim);
            pool.inner.metrics.failure_checks.dec();
            drop(permit);
        });
        Ok(())
    }

    async fn verify_failure(&self, model: &ModelName, replica: ReplicaIdx, kind: FailureKind) {
        let r = self.config(replica);
        match kind {
            FailureKind::Unreachable => {
                let timeout = self.inner.settings.probe_timeout;
                for attempt in 0..self.inner.settings.unhealthy_after.max(1) {
                    if attempt > 0 {
                        tokio::time::sleep(REPORT_PROBE_GAP).await;
                    }
                    let ok = matches!(
                        tokio::time::timeout(timeout, r.client.ready()).await,
                        Ok(Ok(()))
                    );
                    if ok {
                        self.report_probe_succeeded(replica);
                        return;
                    }
                    if self.report_probe_failed(replica) {
                        warn!(replica = %r.id, model = %model, "gateway reported the replica unreachable; probes agree");
                        return;
                    }
                }
            }
            FailureKind::ModelMissing => {
                let ready = r.client.model_ready(model.as_str()).await;
                if matches!(ready, Ok(false)) {
                    let had_copy = {
                        let mut t = self.table();
                        let loaded = t
                            .get(model)
                            .and_then(|e| e.copy_on(replica))
                            .is_some_and(|c| c.state == CopyState::Loaded);
                        loaded && t.remove_copy(model, replica)
                    };
                    if had_copy {
                        warn!(replica = %r.id, model = %model,
                              "gateway reported the model missing; the replica agrees; dropping the copy");
                        info!(model = %model, "the next request places it again");
                        self.update_gauges();
                    }
                }
            }
        }
    }
}
