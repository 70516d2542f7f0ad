//! The routing table the gateway routes warm requests by: every model with a loaded copy on
//! a healthy replica, and where those copies are. It is rebuilt after every change to the
//! model table and gets a new generation only when what is routable really changed; long
//! polls (`table`) are woken through a `watch` channel. Failure reports from the gateway
//! are checked against the replica before anything changes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mm_wire::{Endpoint, FailureKind, FailureReport, RoutingTable, TableEntry};
use tokio::sync::watch;
use tracing::{info, warn};

use super::table::{Claim, CopyState};
use super::{Pool, PoolError};
use crate::spec::ModelName;

/// Most gateway failure claims checked at once; more are ignored until one ends (the
/// gateway reports again on the next failed request).
pub const MAX_FAILURE_CHECKS: usize = 16;

/// Pause between the probes that check one "unreachable" claim.
const REPORT_PROBE_GAP: Duration = Duration::from_millis(200);

/// The latest published table, serialised once for every poller.
pub(super) struct Published {
    pub generation: u64,
    pub models: Vec<TableEntry>,
    pub json: Arc<String>,
}

/// Publishing state, owned by the pool.
pub(super) struct Routing {
    pub epoch: String,
    pub published: std::sync::Mutex<Arc<Published>>,
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
        let empty = RoutingTable {
            epoch: epoch.clone(),
            generation: 0,
            models: Vec::new(),
        };
        let json = Arc::new(serde_json::to_string(&empty).unwrap_or_default());
        Self {
            epoch,
            published: std::sync::Mutex::new(Arc::new(Published {
                generation: 0,
                models: Vec::new(),
                json,
            })),
            changes: watch::channel(0).0,
            checks: Arc::new(tokio::sync::Semaphore::new(MAX_FAILURE_CHECKS)),
        }
    }

    fn current(&self) -> Arc<Published> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Pool {
    /// Rebuilds the routing table from the model table; publishes a new generation if the
    /// routable set changed.
    pub(super) fn publish(&self) {
        let models: Vec<TableEntry> = {
            let t = self.table();
            t.models
                .iter()
                .filter(|(_, e)| !e.deleting)
                .filter_map(|(name, e)| {
                    let replicas: Vec<Endpoint> = e
                        .routable(&t.healthy)
                        .filter_map(|c| self.endpoint(&t, c.replica))
                        .collect();
                    (!replicas.is_empty()).then(|| TableEntry {
                        model: name.to_string(),
                        replicas,
                        inputs: e.inputs.clone(),
                        watch: false,
                    })
                })
                .collect()
        };
        let routing = &self.inner.routing;
        let mut published = routing
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if published.models == models {
            return;
        }
        let generation = published.generation + 1;
        let table = RoutingTable {
            epoch: routing.epoch.clone(),
            generation,
            models,
        };
        let json = Arc::new(serde_json::to_string(&table).unwrap_or_default());
        *published = Arc::new(Published {
            generation,
            models: table.models,
            json,
        });
        drop(published);
        routing.changes.send_replace(generation);
    }

    /// Where replica `replica` is now; `None` while its name does not resolve.
    pub(super) fn endpoint(&self, t: &super::table::Table, replica: usize) -> Option<Endpoint> {
        let r = &self.inner.replicas[replica];
        let address = (*t.addresses.get(replica)?)?;
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
        let Some(replica) = self
            .inner
            .replicas
            .iter()
            .position(|r| r.id.as_str() == report.replica)
        else {
            metrics.report_ignored("failure", "unknown_replica", 1);
            return Ok(());
        };
        let claim = match report.kind {
            FailureKind::Unreachable => Claim::Unreachable(replica),
            FailureKind::ModelMissing => Claim::ModelMissing(model.clone(), replica),
        };
        {
            let mut t = self.table();
            if !t.models.contains_key(&model) {
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
            metrics.failure_checks.inc();
            let pool = self.clone();
            tokio::spawn(async move {
                pool.verify_failure(&model, replica, report.kind).await;
                pool.table().checking.remove(&claim);
                pool.inner.metrics.failure_checks.dec();
                drop(permit);
            });
        }
        Ok(())
    }

    async fn verify_failure(&self, model: &ModelName, replica: usize, kind: FailureKind) {
        let r = &self.inner.replicas[replica];
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
                        t.models.get_mut(model).is_some_and(|e| {
                            let before = e.copies.len();
                            e.copies.retain(|c| {
                                !(c.replica == replica && c.state == CopyState::Loaded)
                            });
                            e.copies.len() != before
                        })
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
