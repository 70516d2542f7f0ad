//! What one worker VM keeps across requests, and its root context's work, written against
//! [`Host`]: the routing table, usage counters and failure queue its requests share, and
//! on each tick the table lease and long poll ([`sync`]) and the usage and failure reports
//! ([`reports`]). The glue owns one [`Worker`] per root context and lends it to the
//! streams of that VM.

mod reports;
mod sync;

use crate::config::{Config, ConfigError, TokenSource};
use crate::failure::FailureQueue;
use crate::host::Host;
use crate::metrics::{Counters, Metric};
use crate::refresh;
use crate::shared::{cas_update, decode_u64, Update};
use crate::table::Table;
use crate::usage::{self, UsageTracker};
use crate::{debug, error, info};

use reports::Reports;
use sync::TableSync;

/// Shared-data key (shared by every VM of this plugin's `vm_id` in one Envoy) holding the
/// last reporter start time claimed, as 8 little-endian bytes.
const REPORTER_CLAIM_KEY: &str = "mm_filter.reporter_start_nanos";

/// Tries at claiming a reporter start time before falling back to the clock.
const CLAIM_TRIES: usize = 16;

/// State of one worker VM that its root context and its requests share. See the module
/// doc.
pub struct Worker {
    config: Config,
    /// `w<root context id>-<start time in ns>`: unique per root context, stable for its life
    /// (see [`claim_start_nanos`]); also its id in the table lease.
    reporter: String,
    /// The routing table requests are routed by.
    pub table: Table,
    /// Requests routed and in flight, per (model, replica).
    pub usage: UsageTracker,
    /// Replica failures seen by requests, waiting for the tick.
    pub failures: FailureQueue,
    /// Events counted since the last tick, added to the host's counters then.
    counters: Counters,
    sync: TableSync,
    reports: Reports,
    /// The root context's tick was brought forward to send a report at once.
    ticking_soon: bool,
}

/// How soon the brought-forward tick comes.
const REPORT_SOON: std::time::Duration = std::time::Duration::from_millis(1);

impl Worker {
    /// The worker of root context `context_id`, with the default configuration until
    /// [`Worker::configure`]. Claims a reporter id no other VM of this Envoy has.
    pub fn new(host: &mut impl Host, context_id: u32) -> Worker {
        let now = host.now();
        // The main-thread VM starts first and creates the lease key, so the workers'
        // first claims are all compare-and-swap on an existing key: exactly one wins.
        if let Ok((None, _)) = host.shared(refresh::LEASE_KEY) {
            let _ = host.set_shared(refresh::LEASE_KEY, b"", None);
        }
        Worker {
            config: Config::default(),
            reporter: usage::reporter_id(context_id, claim_start_nanos(host, now)),
            table: Table::new(),
            usage: UsageTracker::new(),
            failures: FailureQueue::new(),
            counters: Counters::default(),
            sync: TableSync::default(),
            reports: Reports::default(),
            ticking_soon: false,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This root context's reporter id.
    pub fn reporter(&self) -> &str {
        &self.reporter
    }

    /// Applies the plugin configuration (`bytes`, with `env` to look the gateway token's
    /// variable up) and logs it.
    ///
    /// Errors: the configuration or the token is invalid; the worker keeps its previous
    /// configuration.
    pub fn configure(
        &mut self,
        host: &mut impl Host,
        bytes: Option<&[u8]>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let mut config = Config::from_bytes(bytes)?;
        let source = config.resolve_token(env)?;
        let token = match source {
            TokenSource::Configuration => "from the configuration".to_owned(),
            TokenSource::Environment(name) => format!("from ${name}"),
            TokenSource::None => "none".to_owned(),
        };
        info!(
            host,
            "configured: pool-manager cluster {} authority {} route timeout {} ms, usage report every {} ms, table refresh every {} ms, table wait {} ms, max request {} bytes, bodies while paused {}, gateway token {token}, as {}",
            config.pool_manager_cluster,
            config.pool_manager_authority,
            config.route_timeout_ms,
            config.usage_report_ms,
            config.table_refresh_ms,
            config.table_wait_ms,
            config.max_request_bytes,
            config.bodies_while_paused,
            self.reporter
        );
        self.config = config;
        Ok(())
    }

    /// The root context's tick: follows the host's log level, takes or renews the table
    /// lease, applies a table another worker shared, polls the pool-manager as leader, and
    /// sends the reports that are due.
    pub fn on_tick(&mut self, host: &mut impl Host) {
        host.follow_log_level();
        self.counters.flush(host);
        let now = host.now();
        let stamp = self.stamp();
        self.sync
            .tick(host, &self.config, &self.reporter, &mut self.table, now);
        if self.stamp() != stamp {
            self.check_watched(host);
        }
        self.reports.tick(
            host,
            &self.config,
            &self.reporter,
            &mut self.usage,
            &mut self.failures,
            now,
        );
        if std::mem::take(&mut self.ticking_soon) {
            if let Err(err) = host.set_tick_period(self.config.tick_period()) {
                error!(host, "cannot set the tick period: {err}");
            }
        }
    }

    /// The answer to a call the root context made (table poll, usage or failure report).
    pub fn on_call_answer(&mut self, host: &mut impl Host, token: u32, body_size: usize) {
        if self.sync.owns(token) {
            let stamp = self.stamp();
            self.sync.on_answer(
                host,
                &self.config,
                &self.reporter,
                &mut self.table,
                token,
                body_size,
            );
            if self.stamp() != stamp {
                self.check_watched(host);
            }
            return;
        }
        if self.reports.on_answer(
            host,
            &self.config,
            &self.reporter,
            &mut self.usage,
            token,
            body_size,
        ) {
            return;
        }
        debug!(host, "call {token}: late answer ignored");
    }

    // ---- watched models (issue 14; the contract is on `mm_wire::TableEntry`) ----
    //
    // The pool-manager marks in the routing table the models whose requests it waits for
    // (to evict them for a load). When a request's end leaves such a model with nothing in
    // flight on this worker, and the pool-manager may still count it in flight, the usage
    // report goes at once: the request brings the root context's tick forward (a tick
    // period set from a request's context re-arms its root context's timer) and that tick
    // sends it. Ordinary warm requests never get here.

    /// After a request for `model` (sent to its Triton-side name `served`) ended as the
    /// last in flight of a pair the pool-manager may count ([`UsageTracker::finish`] said
    /// so): reports soon if the model is watched, or if the table no longer sends `model`
    /// to `served` (an update switched it: the old version waits for this to unload).
    pub fn ended_last_request(&mut self, host: &mut impl Host, model: &str, served: &str) {
        if self.table.is_watched(model) || !self.table.serves_as(model, served) {
            self.report_soon(host);
        }
    }

    /// After a new table: reports soon if it watches a model whose last request ended
    /// before the table said so.
    fn check_watched(&mut self, host: &mut impl Host) {
        if self.table.watched().any(|m| self.usage.owes_idle(m)) {
            self.report_soon(host);
        }
    }

    /// Sends the usage report at the next tick, and brings that tick forward.
    fn report_soon(&mut self, host: &mut impl Host) {
        self.reports.report_soon();
        if !std::mem::replace(&mut self.ticking_soon, true) {
            if let Err(err) = host.set_tick_period(REPORT_SOON) {
                debug!(host, "cannot bring the tick forward: {err}");
            }
        }
    }

    /// The table's stamp, to tell a new table from the same one.
    fn stamp(&self) -> (Option<String>, u64) {
        (
            self.table.epoch().map(str::to_owned),
            self.table.generation(),
        )
    }

    /// Counts an event of a request: in worker memory, added to the host's counter on the
    /// next tick (no host call per request).
    pub fn count(&mut self, metric: Metric) {
        self.counters.add(metric);
    }

    /// Counts `n` of `metric` (a sum).
    pub fn count_n(&mut self, metric: Metric, n: u64) {
        self.counters.add_n(metric, n);
    }

    /// What is counted for `metric` and not yet added to the host's counter.
    pub fn counted(&self, metric: Metric) -> u64 {
        self.counters.get(metric)
    }
}

/// Claims a reporter start time no other VM of this Envoy has claimed (compare-and-swap on
/// [`REPORTER_CLAIM_KEY`]); falls back to `now` if shared data does not cooperate. The
/// main-thread VMs start first and create the key, so workers never race on creating it.
fn claim_start_nanos(host: &mut impl Host, now: u64) -> u64 {
    cas_update(host, REPORTER_CLAIM_KEY, CLAIM_TRIES, |_, last| {
        let claimed = usage::claim_start_nanos(now, last.and_then(decode_u64));
        Update::Write(claimed.to_le_bytes().to_vec(), claimed)
    })
    .unwrap_or(now)
}

#[cfg(test)]
mod tests;
