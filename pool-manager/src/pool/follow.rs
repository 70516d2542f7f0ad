//! A follower's copy of the shared store: the registry with its version records (so admin
//! reads answer on every instance, even while no instance leads, and a follower that comes
//! to lead holds each model under the name Triton has it by), the aliases, and the
//! leader's routing table (so the gateway's table polls get the same table from every
//! instance). Kept current by the
//! store's change feed; when the feed is lost the copy is read again from a snapshot.
//!
//! While this instance acts as the leader it made those changes itself: model records
//! are then left alone, and the table it serves is its own.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tracing::{debug, warn};

use super::leading::Followed;
use super::Pool;
use crate::store::{decode_model, Backend, Kind, Revision, Snapshot, WatchEvent};

/// Pause before reading a snapshot again after the feed was lost.
const RESYNC: Duration = Duration::from_millis(300);

/// The routing table's head, all a follower needs to answer long polls.
#[derive(Deserialize)]
struct Head {
    epoch: String,
    generation: u64,
}

impl Pool {
    /// Keeps this instance's copy of the store current from revision `after` on, for as
    /// long as the process runs.
    pub async fn follow_store(self, backend: Arc<dyn Backend>, mut after: Revision) {
        loop {
            match backend.watch(after).await {
                Ok(mut feed) => {
                    self.inner.leading.store_ok.send_replace(true);
                    loop {
                        match feed.next().await {
                            Ok(event) => {
                                after = after.max(event.revision);
                                self.apply_change(event);
                            }
                            Err(e) => {
                                warn!(error = %e, "the store's change feed ended; reading it again");
                                break;
                            }
                        }
                    }
                }
                Err(e) => debug!(error = %e, "cannot watch the store"),
            }
            self.inner.leading.store_ok.send_replace(false);
            tokio::time::sleep(RESYNC).await;
            match backend.snapshot().await {
                Ok(snapshot) => {
                    after = snapshot.revision;
                    self.resync(&snapshot);
                }
                Err(e) => debug!(error = %e, "cannot read the store"),
            }
        }
    }

    /// Takes every record of `snapshot` as the current state.
    pub(super) fn resync(&self, snapshot: &Snapshot) {
        if !self.acting() {
            let (models, _) = crate::store::decode_models(snapshot);
            self.replace_registry(models, &crate::store::records_of(snapshot, Kind::Version));
            self.replace_aliases(&crate::store::records_of(snapshot, Kind::Alias));
        }
        let table = snapshot
            .records
            .iter()
            .find(|(k, _)| k.kind == Kind::RoutingTable)
            .map(|(_, v)| v.as_slice());
        if let Some(value) = table {
            self.follow_table(value);
        }
    }

    pub(super) fn apply_change(&self, event: WatchEvent) {
        match event.key.kind {
            Kind::RoutingTable => {
                if let Some(value) = &event.value {
                    self.follow_table(value);
                }
            }
            Kind::Model if self.acting() => {}
            Kind::Model => self.follow_model(&event.key.name, event.value.as_deref()),
            // Read when this instance takes the lead (the metadata call is forwarded).
            Kind::Metadata => {}
            // The gateways get aliases from the leader's table, which a follower serves;
            // its own copy answers the admin reads (and is the one it starts from if it
            // comes to lead, when it is read again from the store anyway).
            Kind::Alias if self.acting() => {}
            Kind::Alias => self.follow_alias(&event.key.name, event.value.as_deref()),
            // The gateways get the serving versions from the leader's table; the follower's
            // own copy answers admin reads and is what it adopts by if it comes to lead.
            Kind::Version if self.acting() => {}
            Kind::Version => self.follow_version(&event.key.name, event.value.as_deref()),
        }
    }

    /// Applies a registration, update or deletion the leader made.
    fn follow_model(&self, name: &str, value: Option<&[u8]>) {
        let mut t = self.table();
        match value {
            // On the entry that serves the model (a version's, after an update).
            Some(value) => match decode_model(name, value) {
                Ok((name, spec)) => match t.resolve(&name) {
                    Some(key) if t.get(&key).is_some_and(|e| e.spec().is_unchanged_by(&spec)) => {}
                    Some(key) => t.set_spec(&key, spec),
                    None if t.contains(&name) => {}
                    None => t.insert(name, spec),
                },
                Err(reason) => {
                    warn!(model = %name, reason = %reason, "a stored model could not be read; it is not served");
                }
            },
            None => {
                if let Ok(name) = crate::spec::ModelName::new(name) {
                    super::versions::forget_model(&mut t, &name);
                }
            }
        }
        let n = t.len() as u64;
        drop(t);
        self.inner.metrics.models_registered.set(super::clamp(n));
    }

    /// Takes the leader's routing table as the one to serve.
    fn follow_table(&self, value: &[u8]) {
        let head: Head = match serde_json::from_slice(value) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "the stored routing table cannot be read; keeping the previous one");
                return;
            }
        };
        let json = Arc::new(String::from_utf8_lossy(value).into_owned());
        let followed = Followed {
            epoch: head.epoch,
            generation: head.generation,
            json,
        };
        self.inner.leading.followed.send_if_modified(|current| {
            let changed = current.as_deref() != Some(&followed);
            if changed {
                *current = Some(Arc::new(followed));
            }
            changed
        });
    }

    /// The leader's table as a follower serves it, waiting up to `wait` for a newer one
    /// when the caller has the current one; `None` while this instance serves its own.
    pub(super) async fn followed_table(
        &self,
        epoch: Option<&str>,
        since: Option<u64>,
        wait: Duration,
    ) -> Option<Arc<String>> {
        if !self.shared() || self.acting() {
            return None;
        }
        let mut changes = self.inner.leading.followed.subscribe();
        let current = changes.borrow_and_update().clone()?;
        let up_to_date = epoch == Some(current.epoch.as_str()) && since == Some(current.generation);
        if !up_to_date || wait.is_zero() {
            return Some(current.json.clone());
        }
        let mut acting = self.acting_changes();
        tokio::select! {
            _ = tokio::time::timeout(wait, changes.changed()) => {}
            _ = tokio::time::timeout(wait, acting.wait_for(|a| *a)) => {}
        }
        if self.acting() {
            return None;
        }
        let latest = changes.borrow().clone();
        Some(latest.map_or(current.json.clone(), |f| f.json.clone()))
    }
}
