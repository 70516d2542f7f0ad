//! How a worker's table follows the pool-manager's: the root context holding the lease
//! long-polls the table and shares it through shared data; every root context applies
//! the shared table when its stamp changes (see [`crate::refresh`] for the rules).

use mm_wire::RoutingTable;

use crate::config::Config;
use crate::control;
use crate::host::Host;
use crate::metrics::Metric;
use crate::refresh::{self, Lease, PollSchedule, Stamp};
use crate::shared::{cas_update, Update};
use crate::table::Table;
use crate::{debug, error, info, warn};

/// Tries at a compare-and-swap of the lease or the stamp before giving up until the next
/// tick.
const CAS_TRIES: usize = 4;

/// The lease, the long poll and the last table applied. See the module doc.
#[derive(Debug, Default)]
pub struct TableSync {
    /// Whether this root context held the table lease at its last tick.
    leader: bool,
    /// The table long poll, when leader.
    poll: PollSchedule,
    /// Whether the last table poll failed: warn once per failure streak.
    poll_failing: bool,
    /// The shared-data stamp bytes of the table last applied from shared data.
    applied_stamp: Option<Vec<u8>>,
}

impl TableSync {
    /// Takes or renews the lease, applies what the last leader shared, and polls as leader.
    pub fn tick(
        &mut self,
        host: &mut impl Host,
        config: &Config,
        reporter: &str,
        table: &mut Table,
        now: u64,
    ) {
        let leader = renew_lease(host, config, reporter, now);
        if leader != self.leader {
            info!(
                host,
                "{reporter}: {} the table lease",
                if leader { "took" } else { "lost" }
            );
            self.leader = leader;
        }
        // Apply what the last leader shared before polling, so the poll asks "since" the
        // newest table known.
        self.refresh_from_shared(host, reporter, table);
        if self.leader {
            self.poll(host, config, reporter, table, now);
        }
    }

    /// Whether `token` is this worker's table poll.
    pub fn owns(&self, token: u32) -> bool {
        self.poll.is_outstanding(token)
    }

    /// Handles the answer to table poll `token`.
    pub fn on_answer(
        &mut self,
        host: &mut impl Host,
        config: &Config,
        reporter: &str,
        table: &mut Table,
        token: u32,
        body_size: usize,
    ) {
        let now = host.now();
        let status = control::answer_status(host);
        let checked = refresh::check_answer(status, body_size, || {
            control::answer_body(host, body_size, refresh::MAX_TABLE_BYTES)
        });
        let (wire, raw) = match checked {
            Ok(answer) => answer,
            Err(err) => {
                self.poll.finished(token, false, now);
                host.increment(Metric::TablePollFailures, 1);
                self.poll_failed(host, reporter, &err.to_string());
                return;
            }
        };
        self.poll.finished(token, true, now);
        if self.poll_failing {
            info!(host, "{reporter}: table polls answer again");
            self.poll_failing = false;
        }
        if !holds_lease(host, reporter, now) {
            debug!(
                host,
                "{reporter}: table poll {token} answered after the lease moved on; not shared"
            );
            self.leader = false;
            return;
        }
        let stamp = Stamp {
            epoch: wire.epoch.clone(),
            generation: wire.generation,
        };
        let unchanged = local_stamp(table).as_ref() == Some(&stamp);
        publish(host, reporter, &stamp, &raw);
        self.apply(host, reporter, table, wire, stamp.encode());
        // A changed table: ask again at once. An unchanged one (the hold ran out, or a
        // pool-manager that does not hold): from the next tick, so polls never spin.
        if !unchanged {
            self.poll(host, config, reporter, table, now);
        }
    }

    /// Dispatches the table long poll if one is due.
    fn poll(
        &mut self,
        host: &mut impl Host,
        config: &Config,
        reporter: &str,
        table: &Table,
        now: u64,
    ) {
        let timeout = refresh::poll_timeout(config.table_wait_ms);
        if !self.poll.is_due(now, timeout) {
            return;
        }
        let path = refresh::poll_path(local_stamp(table).as_ref(), config.table_wait_ms);
        match control::get(host, config, &path, timeout) {
            Ok(token) => {
                debug!(host, "{reporter}: table poll {token}: GET {path}");
                self.poll.dispatched(token, now);
            }
            Err(status) => {
                self.poll.dispatch_failed(now);
                host.increment(Metric::TablePollFailures, 1);
                let why = format!(
                    "cannot call cluster {}: {status}",
                    config.pool_manager_cluster
                );
                self.poll_failed(host, reporter, &why);
            }
        }
    }

    /// Reads the table from shared data if its stamp changed since the last one applied.
    fn refresh_from_shared(&mut self, host: &mut impl Host, reporter: &str, table: &mut Table) {
        let Ok((Some(stamp), _)) = host.shared(refresh::STAMP_KEY) else {
            return;
        };
        if self.applied_stamp.as_deref() == Some(stamp.as_slice()) {
            return;
        }
        let Ok((Some(raw), _)) = host.shared(refresh::TABLE_KEY) else {
            return;
        };
        match serde_json::from_slice::<RoutingTable>(&raw) {
            Ok(wire) => self.apply(host, reporter, table, wire, stamp),
            Err(err) => {
                error!(host, "shared routing table is not valid: {err}");
                self.applied_stamp = Some(stamp);
            }
        }
    }

    /// Replaces the worker's table with `wire` if it is newer; remembers `stamp` as seen.
    fn apply(
        &mut self,
        host: &mut impl Host,
        reporter: &str,
        table: &mut Table,
        wire: RoutingTable,
        stamp: Vec<u8>,
    ) {
        self.applied_stamp = Some(stamp);
        let (epoch, generation) = (wire.epoch.clone(), wire.generation);
        let (newer, skipped) = Table::from_wire(wire);
        let models = newer.len();
        if !table.replace(newer) {
            return;
        }
        host.increment(Metric::TableRefreshes, 1);
        info!(
            host,
            "{reporter}: routing table epoch {epoch} generation {generation}: {models} models"
        );
        if skipped.models + skipped.endpoints > 0 {
            warn!(
                host,
                "routing table epoch {epoch} generation {generation}: left out {} models and {} endpoints that cannot be routed",
                skipped.models,
                skipped.endpoints
            );
        }
    }

    /// Logs a failed table poll: a warning for the first of a streak, debug after that.
    fn poll_failed(&mut self, host: &mut impl Host, reporter: &str, why: &str) {
        if self.poll_failing {
            debug!(host, "{reporter}: table poll failed again: {why}");
        } else {
            warn!(
                host,
                "{reporter}: table poll failed (warning once until one succeeds; routing goes on with the last table): {why}"
            );
            self.poll_failing = true;
        }
    }
}

/// The stamp of this worker's table, once it has one from the pool-manager.
fn local_stamp(table: &Table) -> Option<Stamp> {
    Some(Stamp {
        epoch: table.epoch()?.to_owned(),
        generation: table.generation(),
    })
}

/// Takes or renews the table lease if it is free, expired or ours; returns whether this
/// root context holds it now.
fn renew_lease(host: &mut impl Host, config: &Config, reporter: &str, now: u64) -> bool {
    let ttl = refresh::lease_ttl(config.tick_period());
    let renewed = cas_update(host, refresh::LEASE_KEY, CAS_TRIES, |_, current| {
        let current = current.and_then(Lease::decode);
        match refresh::next_lease(current.as_ref(), reporter, now, ttl) {
            Some(lease) => Update::Write(lease.encode(), true),
            None => Update::Keep(false),
        }
    });
    match renewed {
        Ok(leader) => leader,
        Err(crate::shared::CasError::Contended(_)) => false,
        Err(err) => {
            warn!(host, "cannot write the table lease: {err}");
            false
        }
    }
}

/// Whether the lease in shared data is still `reporter`'s at `now`.
fn holds_lease(host: &mut impl Host, reporter: &str, now: u64) -> bool {
    host.shared(refresh::LEASE_KEY)
        .ok()
        .and_then(|(value, _)| value)
        .and_then(|bytes| Lease::decode(&bytes))
        .is_some_and(|lease| lease.is_held_by(reporter, now))
}

/// Stores a table in shared data for every worker, unless shared data already holds this
/// table or one that replaces it. The table is written before its stamp, so a worker that
/// sees the new stamp finds the new table.
fn publish(host: &mut impl Host, reporter: &str, stamp: &Stamp, raw: &[u8]) {
    let published = cas_update(host, refresh::STAMP_KEY, CAS_TRIES, |host, current| {
        let current = current.and_then(Stamp::decode);
        if !stamp.replaces(current.as_ref()) {
            return Update::Keep(Ok(false));
        }
        match host.set_shared(refresh::TABLE_KEY, raw, None) {
            Ok(()) => Update::Write(stamp.encode(), Ok(true)),
            Err(err) => Update::Keep(Err(err)),
        }
    });
    match published {
        Ok(Ok(true)) => debug!(
            host,
            "{reporter}: shared table epoch {} generation {} ({} bytes)",
            stamp.epoch,
            stamp.generation,
            raw.len()
        ),
        Ok(Ok(false)) | Err(crate::shared::CasError::Contended(_)) => {}
        Ok(Err(err)) => warn!(host, "cannot share the routing table: {err}"),
        Err(err) => warn!(host, "cannot share the routing table stamp: {err}"),
    }
}
