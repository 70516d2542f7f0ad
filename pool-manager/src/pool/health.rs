//! Replica health: readiness probes (which also follow a replica's address as its name
//! resolves anew), and taking a replica out at once when a gateway report is confirmed.
//! A replica is out after `unhealthy_after` failed probes in a row and back after one
//! success, and is then reconciled (it may have restarted empty).

use std::net::SocketAddr;
use std::time::Duration;

use tracing::info;

use super::table::ReplicaIdx;
use super::Pool;
use crate::events::{EventKind, NewEvent};

impl Pool {
    /// Probes every replica's readiness once, concurrently, and records the results.
    pub async fn probe_replicas(&self) {
        let timeout = self.inner.settings.probe_timeout;
        let resolver = &self.inner.settings.resolver;
        let probes = self.inner.replicas.iter().map(|r| async move {
            // Resolve the name again: a replica's pod may have come back elsewhere, or be
            // gone (a StatefulSet scaled down), or be new.
            let host = r.url.host_str().unwrap_or_default();
            let port = r.url.port_or_known_default().unwrap_or(80);
            let address = resolver.resolve(host, port).await;
            if let Ok(a) = address {
                r.client.set_address(a);
            }
            let ready = address.is_ok()
                && matches!(
                    tokio::time::timeout(timeout, r.client.ready()).await,
                    Ok(Ok(()))
                );
            (address.ok(), ready)
        });
        let outcomes = futures::future::join_all(probes).await;
        self.follow_addresses(outcomes.iter().map(|(a, _)| *a));
        let returned = self.record_probes(outcomes.iter().map(|(_, ready)| *ready));
        self.update_gauges();
        if !returned.is_empty() {
            self.inner.room.changed();
        }
        for idx in returned {
            if let Err(e) = self.reconcile_replica(idx).await {
                tracing::warn!(replica = %self.config(idx).id, error = %e, "reconcile failed");
            }
        }
    }

    /// Records the addresses the replicas' names resolved to (in configuration order).
    fn follow_addresses(&self, addresses: impl Iterator<Item = Option<SocketAddr>>) {
        let mut t = self.table();
        for (i, address) in addresses.enumerate() {
            let idx = ReplicaIdx::new(i);
            let Some(a) = address else { continue };
            let Some(known) = t.replica(idx).map(|r| r.address) else {
                continue;
            };
            if known != Some(a) {
                if known.is_some() {
                    info!(replica = %self.config(idx).id, address = %a, "replica moved to a new address");
                }
                t.update_replica(idx, |r| r.address = Some(a));
            }
        }
    }

    /// Records one probe result per replica; returns the replicas that came back.
    fn record_probes(&self, results: impl Iterator<Item = bool>) -> Vec<ReplicaIdx> {
        let mut t = self.table();
        let threshold = self.inner.settings.unhealthy_after.max(1);
        let mut returned = Vec::new();
        for (i, ok) in results.enumerate() {
            let idx = ReplicaIdx::new(i);
            let id = &self.config(idx).id;
            let Some(r) = t.replica_mut(idx) else {
                continue;
            };
            if ok {
                r.probe_failures = 0;
                if !r.healthy {
                    info!(replica = %id, "replica became healthy");
                    self.events()
                        .record(NewEvent::new(EventKind::ReplicaHealthy).replica(id));
                    t.update_replica(idx, |r| r.healthy = true);
                    returned.push(idx);
                }
                continue;
            }
            r.probe_failures = r.probe_failures.saturating_add(1);
            let failures = r.probe_failures;
            // A replica never seen healthy is out from its first failure.
            if r.healthy && failures >= threshold {
                tracing::warn!(replica = %id, failures, "replica became unhealthy");
                self.events().record(
                    NewEvent::new(EventKind::ReplicaUnhealthy)
                        .replica(id)
                        .reason(format!("{failures} failed probes")),
                );
                t.update_replica(idx, |r| r.healthy = false);
            }
        }
        returned
    }

    /// Counts one failed probe of replica `idx` made to check a gateway report; takes the
    /// replica out of placement and routing once `unhealthy_after` probes in a row have
    /// failed (these and the periodic ones alike), never sooner. Returns whether it is out.
    pub(super) fn report_probe_failed(&self, idx: ReplicaIdx) -> bool {
        let threshold = self.inner.settings.unhealthy_after.max(1);
        let out = {
            let mut t = self.table();
            let Some(r) = t.replica_mut(idx) else {
                return false;
            };
            r.probe_failures = r.probe_failures.saturating_add(1);
            let (failures, healthy) = (r.probe_failures, r.healthy);
            if healthy && failures >= threshold {
                self.events().record(
                    NewEvent::new(EventKind::ReplicaUnhealthy)
                        .replica(&self.config(idx).id)
                        .reason(format!(
                            "unreachable from the gateway; {failures} failed probes"
                        )),
                );
                t.update_replica(idx, |r| r.healthy = false);
                true
            } else {
                !healthy
            }
        };
        self.update_gauges();
        out
    }

    /// A probe made to check a gateway report succeeded: the failures in a row start over.
    /// (Only the periodic probes bring an unhealthy replica back, with a reconciliation.)
    pub(super) fn report_probe_succeeded(&self, idx: ReplicaIdx) {
        let mut t = self.table();
        if let Some(r) = t.replica_mut(idx).filter(|r| r.healthy) {
            r.probe_failures = 0;
        }
    }

    /// Probes replicas forever, every `interval`.
    pub async fn run_probes(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.probe_replicas().await;
        }
    }
}
