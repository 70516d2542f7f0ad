//! The Proxy-Wasm glue, and the only module that talks to the host. The root context (one
//! per worker VM, plus one Envoy makes on the main thread) keeps the worker's routing
//! table, usage counters and failure queue, and on its tick: competes for the table lease
//! and, as leader, long-polls the pool-manager's table into shared data; applies a new
//! table from shared data; sends usage and failure reports. A request is routed from the
//! table with no host call beyond setting the upstream; only a model the table does not
//! have makes a route call. It calls `proxy_wasm::hostcalls` directly so that host errors
//! come back as values to log instead of the SDK trait methods' unwraps (a panic traps the
//! VM). All routing state is set before `resume_http_request()`: after it, request header
//! writes fail and kill the VM.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, error, info, warn};
use mm_wire::{ErrorBody, FailureKind, RouteResponse, TensorSpec, FAILURE_PATH, USAGE_PATH};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::Config;
use crate::decision::{self, Decision};
use crate::failure::{self, FailureQueue};
use crate::filter_state;
use crate::grpc;
use crate::metrics::Metric;
use crate::refresh::{self, Lease, PollSchedule, Stamp};
use crate::route::{self, ModelApi, Route};
use crate::table::{Table, Target};
use crate::usage::{self, Pending, UsageTracker};
use crate::v1;

proxy_wasm::main! {{
    // Until the root context reads Envoy's `wasm` log level (which filters again anyway).
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Gateway::new(context_id))
    });
}}

/// Message when the client's routing headers could not be removed.
const CANNOT_SANITIZE: &str = "cannot remove client routing headers";

/// Message when the chosen address could not be handed to Envoy.
const CANNOT_SET_UPSTREAM: &str = "cannot set the upstream address";

/// Message when a KServe V1 request names a model whose inputs are not known yet.
const NO_METADATA: &str = "model metadata not available yet; retry";

/// Message when a KServe V1 `:predict` request has no body.
const V1_BODY_REQUIRED: &str = "a KServe V1 predict request needs a JSON body";

/// Message when the request body of a KServe V1 request could not be read or replaced.
const CANNOT_TRANSLATE: &str = "cannot translate the request body";

/// Most bytes of a gRPC request body read to find the model: the frame prefix, the part of
/// the message [`grpc::model_from_message`] scans, and room for field 1 itself.
const MAX_GRPC_SCAN_BYTES: usize = 5 + grpc::MAX_SCAN + 256;

/// Most bytes of a usage or failure report's error answer read for the log.
const MAX_ERROR_ANSWER_BYTES: usize = 1024;

/// Usage report periods a report may stay unanswered before it counts as failed. The
/// call's timeout is at most one period, so Envoy answers well before; this only guards
/// against an answer that never comes, which would otherwise stop reporting for good.
const MAX_REPORT_PERIODS: u32 = 3;

/// Timeout of a failure report call.
const FAILURE_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared-data key (shared by every VM of this plugin's `vm_id` in one Envoy) holding the
/// last reporter start time claimed, as 8 little-endian bytes.
const REPORTER_CLAIM_KEY: &str = "mm_filter.reporter_start_nanos";

/// The counters' ids in this VM, in [`Metric::ALL`] order; `None` where `define_metric`
/// failed (the counter is then not counted).
#[derive(Debug, Default)]
struct Metrics {
    ids: [Option<u32>; Metric::ALL.len()],
}

impl Metrics {
    fn define() -> Metrics {
        let mut metrics = Metrics::default();
        for metric in Metric::ALL {
            match hostcalls::define_metric(MetricType::Counter, metric.name()) {
                Ok(id) => metrics.ids[metric.index()] = Some(id),
                Err(status) => warn!("cannot define metric {}: {status:?}", metric.name()),
            }
        }
        metrics
    }

    fn inc(&self, metric: Metric) {
        if let Some(Some(id)) = self.ids.get(metric.index()) {
            if let Err(status) = hostcalls::increment_metric(*id, 1) {
                debug!("cannot increment {}: {status:?}", metric.name());
            }
        }
    }
}

/// State of one worker VM that its root context and its requests share.
#[derive(Default)]
struct Worker {
    table: RefCell<Table>,
    usage: RefCell<UsageTracker>,
    failures: RefCell<FailureQueue>,
}

/// Logs only at the level Envoy's `wasm` logger has (checked on every tick, so a change
/// through Envoy's admin API applies within a tick): a disabled `debug!` then costs no host
/// call on the request path.
fn follow_host_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// The current time in ns since the Unix epoch (0 if the host cannot tell).
fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// The `:status` of the HTTP call answer being handled.
fn call_status() -> Option<u16> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|raw| decision::parse_status(&raw))
}

/// Up to `max` bytes of the HTTP call answer's body.
fn call_body(body_size: usize, max: usize) -> Vec<u8> {
    if body_size == 0 {
        return Vec::new();
    }
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(max))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// `status` and the `error` of a JSON error body, for logs.
fn describe_answer(status: Option<u16>, body_size: usize) -> String {
    match status {
        None => "no answer (connect failure, reset or timeout)".to_owned(),
        Some(status) => {
            let body = call_body(body_size, MAX_ERROR_ANSWER_BYTES);
            match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(ErrorBody { error }) => format!("status {status}: {error}"),
                Err(_) => format!("status {status}"),
            }
        }
    }
}

/// Root context: see the module doc.
struct Gateway {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    worker: Rc<Worker>,
    /// `w<root context id>-<start time in ns>`: unique per root context, stable for its life
    /// (see [`claim_start_nanos`]); also its id in the table lease.
    reporter: String,
    /// The usage report on its way, if any.
    report: Option<Outstanding>,
    /// Whether the last usage report failed: warn once per failure streak, not every period.
    failing: bool,
    /// No usage report before this time (ns).
    next_report_at: u64,
    /// Whether this root context held the table lease at its last tick.
    leader: bool,
    /// The table long poll, when leader.
    poll: PollSchedule,
    /// Whether the last table poll failed: warn once per failure streak.
    poll_failing: bool,
    /// The shared-data stamp bytes of the table last applied from shared data.
    applied_stamp: Option<Vec<u8>>,
    /// Failure reports on their way.
    failure_calls: HashSet<u32>,
}

/// A dispatched usage report waiting for its answer.
struct Outstanding {
    token: u32,
    pending: Pending,
    /// Dispatch time (ns).
    sent_at: u64,
}

impl Gateway {
    /// POSTs a JSON body to `path` on the pool-manager cluster; the answer comes to
    /// `on_http_call_response` under the returned token.
    fn post_json(&self, path: &str, body: &[u8], timeout: Duration) -> Result<u32, Status> {
        let headers = vec![
            (":method", "POST"),
            (":path", path),
            (":authority", self.config.pool_manager_authority.as_str()),
            ("content-type", "application/json"),
        ];
        hostcalls::dispatch_http_call(
            &self.config.pool_manager_cluster,
            headers,
            Some(body),
            vec![],
            timeout,
        )
    }

    fn new(id: u32) -> Gateway {
        let now = now_nanos();
        // The main-thread VM starts first and creates the lease key, so the workers'
        // first claims are all compare-and-swap on an existing key: exactly one wins.
        if let Ok((None, _)) = hostcalls::get_shared_data(refresh::LEASE_KEY) {
            let _ = hostcalls::set_shared_data(refresh::LEASE_KEY, Some(b""), None);
        }
        Gateway {
            config: Rc::new(Config::default()),
            metrics: Rc::new(Metrics::default()),
            worker: Rc::new(Worker::default()),
            reporter: usage::reporter_id(id, claim_start_nanos(now)),
            report: None,
            failing: false,
            next_report_at: 0,
            leader: false,
            poll: PollSchedule::new(),
            poll_failing: false,
            applied_stamp: None,
            failure_calls: HashSet::new(),
        }
    }

    // ---- table lease, long poll and sharing ----

    /// Takes or renews the table lease if it is free, expired or ours; returns whether this
    /// root context holds it now.
    fn renew_lease(&mut self, now: u64) -> bool {
        let ttl = refresh::lease_ttl(self.config.tick_period());
        for _ in 0..4 {
            let Ok((value, cas)) = hostcalls::get_shared_data(refresh::LEASE_KEY) else {
                return false;
            };
            let current = value.as_deref().and_then(Lease::decode);
            let Some(lease) = refresh::next_lease(current.as_ref(), &self.reporter, now, ttl)
            else {
                return false;
            };
            match hostcalls::set_shared_data(refresh::LEASE_KEY, Some(&lease.encode()), cas) {
                Ok(()) => return true,
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    warn!("cannot write the table lease: {status:?}");
                    return false;
                }
            }
        }
        false
    }

    /// Whether the lease in shared data is still ours at `now`.
    fn holds_lease(&self, now: u64) -> bool {
        hostcalls::get_shared_data(refresh::LEASE_KEY)
            .ok()
            .and_then(|(value, _)| value)
            .and_then(|bytes| Lease::decode(&bytes))
            .is_some_and(|lease| lease.is_held_by(&self.reporter, now))
    }

    /// The stamp of this worker's table, once it has one from the pool-manager.
    fn local_stamp(&self) -> Option<Stamp> {
        let table = self.worker.table.try_borrow().ok()?;
        Some(Stamp {
            epoch: table.epoch()?.to_owned(),
            generation: table.generation(),
        })
    }

    /// Dispatches the table long poll if one is due.
    fn poll_table(&mut self, now: u64) {
        let wait_ms = self.config.table_wait_ms;
        let timeout = refresh::poll_timeout(wait_ms);
        if !self.poll.is_due(now, timeout) {
            return;
        }
        let path = refresh::poll_path(self.local_stamp().as_ref(), wait_ms);
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.pool_manager_authority.as_str()),
            ("accept", "application/json"),
        ];
        match hostcalls::dispatch_http_call(
            &self.config.pool_manager_cluster,
            headers,
            None,
            vec![],
            timeout,
        ) {
            Ok(token) => {
                debug!("{}: table poll {token}: GET {path}", self.reporter);
                self.poll.dispatched(token, now);
            }
            Err(status) => {
                self.poll.dispatch_failed(now);
                self.metrics.inc(Metric::TablePollFailures);
                self.poll_failed(&format!(
                    "cannot call cluster {}: {status:?}",
                    self.config.pool_manager_cluster
                ));
            }
        }
    }

    /// Handles the answer to table poll `token`.
    fn on_table_answer(&mut self, token: u32, body_size: usize) {
        let now = now_nanos();
        let status = call_status();
        let checked = refresh::check_answer(status, body_size, || {
            call_body(body_size, refresh::MAX_TABLE_BYTES)
        });
        let (wire, raw) = match checked {
            Ok(answer) => answer,
            Err(err) => {
                self.poll.finished(token, false, now);
                self.metrics.inc(Metric::TablePollFailures);
                self.poll_failed(&err.to_string());
                return;
            }
        };
        self.poll.finished(token, true, now);
        if self.poll_failing {
            info!("{}: table polls answer again", self.reporter);
            self.poll_failing = false;
        }
        if !self.holds_lease(now) {
            debug!(
                "{}: table poll {token} answered after the lease moved on; not shared",
                self.reporter
            );
            self.leader = false;
            return;
        }
        let stamp = Stamp {
            epoch: wire.epoch.clone(),
            generation: wire.generation,
        };
        let unchanged = self.local_stamp().as_ref() == Some(&stamp);
        self.publish(&stamp, &raw);
        self.apply(wire, stamp.encode());
        // A changed table: ask again at once. An unchanged one (the hold ran out, or a
        // pool-manager that does not hold): from the next tick, so polls never spin.
        if !unchanged {
            self.poll_table(now);
        }
    }

    /// Stores a table in shared data for every worker, unless shared data already holds
    /// this table or one that replaces it.
    fn publish(&self, stamp: &Stamp, raw: &[u8]) {
        for _ in 0..4 {
            let Ok((current, cas)) = hostcalls::get_shared_data(refresh::STAMP_KEY) else {
                return;
            };
            let current = current.as_deref().and_then(Stamp::decode);
            if !stamp.replaces(current.as_ref()) {
                return;
            }
            if let Err(status) = hostcalls::set_shared_data(refresh::TABLE_KEY, Some(raw), None) {
                warn!("cannot share the routing table: {status:?}");
                return;
            }
            match hostcalls::set_shared_data(refresh::STAMP_KEY, Some(&stamp.encode()), cas) {
                Ok(()) => {
                    debug!(
                        "{}: shared table epoch {} generation {} ({} bytes)",
                        self.reporter,
                        stamp.epoch,
                        stamp.generation,
                        raw.len()
                    );
                    return;
                }
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    warn!("cannot share the routing table stamp: {status:?}");
                    return;
                }
            }
        }
    }

    /// Reads the table from shared data if its stamp changed since the last one applied.
    fn refresh_from_shared(&mut self) {
        let Ok((Some(stamp), _)) = hostcalls::get_shared_data(refresh::STAMP_KEY) else {
            return;
        };
        if self.applied_stamp.as_deref() == Some(stamp.as_slice()) {
            return;
        }
        let Ok((Some(raw), _)) = hostcalls::get_shared_data(refresh::TABLE_KEY) else {
            return;
        };
        match serde_json::from_slice::<mm_wire::RoutingTable>(&raw) {
            Ok(wire) => self.apply(wire, stamp),
            Err(err) => {
                error!("shared routing table is not valid: {err}");
                self.applied_stamp = Some(stamp);
            }
        }
    }

    /// Replaces the worker's table with `wire` if it is newer; remembers `stamp` as seen.
    fn apply(&mut self, wire: mm_wire::RoutingTable, stamp: Vec<u8>) {
        self.applied_stamp = Some(stamp);
        let (epoch, generation) = (wire.epoch.clone(), wire.generation);
        let (newer, skipped) = Table::from_wire(wire);
        let models = newer.len();
        let Ok(mut table) = self.worker.table.try_borrow_mut() else {
            return;
        };
        if table.replace(newer) {
            drop(table);
            self.metrics.inc(Metric::TableRefreshes);
            info!(
                "{}: routing table epoch {epoch} generation {generation}: {models} models",
                self.reporter
            );
            if skipped.models + skipped.endpoints > 0 {
                warn!(
                    "routing table epoch {epoch} generation {generation}: left out {} models and {} endpoints that cannot be routed",
                    skipped.models, skipped.endpoints
                );
            }
        }
    }

    /// Logs a failed table poll: a warning for the first of a streak, debug after that.
    fn poll_failed(&mut self, why: &str) {
        if self.poll_failing {
            debug!("{}: table poll failed again: {why}", self.reporter);
        } else {
            warn!(
                "{}: table poll failed (warning once until one succeeds; routing goes on with the last table): {why}",
                self.reporter
            );
            self.poll_failing = true;
        }
    }

    // ---- failure reports ----

    /// Sends the failure reports that are due.
    fn send_failure_reports(&mut self, now: u64) {
        let due = match self.worker.failures.try_borrow_mut() {
            Ok(mut failures) if !failures.is_empty() => failures.take_due(now),
            _ => return,
        };
        for report in due {
            if !claim_failure_report(&report, now) {
                debug!(
                    "failure of model {} on replica {} reported by another worker within the interval",
                    report.model, report.replica
                );
                continue;
            }
            let Ok(body) = serde_json::to_vec(&report) else {
                continue;
            };
            match self.post_json(FAILURE_PATH, &body, FAILURE_REPORT_TIMEOUT) {
                Ok(token) => {
                    info!(
                        "failure report {token}: model {} replica {} {:?}",
                        report.model, report.replica, report.kind
                    );
                    self.metrics.inc(Metric::FailureReportsSent);
                    self.failure_calls.insert(token);
                }
                Err(status) => warn!(
                    "cannot send the failure report for model {} replica {}: {status:?}",
                    report.model, report.replica
                ),
            }
        }
    }

    // ---- usage reports ----

    /// Sends the usage report if one is due (and fails one left unanswered too long).
    fn usage_tick(&mut self, now: u64) {
        let period = refresh::nanos(self.config.usage_report_period());
        if let Some(outstanding) = &self.report {
            if now.saturating_sub(outstanding.sent_at)
                <= period.saturating_mul(u64::from(MAX_REPORT_PERIODS))
            {
                return;
            }
            let token = outstanding.token;
            if let Some(Outstanding { pending, .. }) = self.report.take() {
                self.settle(pending, false);
            }
            self.report_failed(&format!(
                "report {token} unanswered after {MAX_REPORT_PERIODS} periods"
            ));
        }
        if now < self.next_report_at {
            return;
        }
        self.next_report_at = now.saturating_add(period);
        self.send_usage_report(now);
    }

    /// Takes the next usage report, if there is one to send, and dispatches it.
    fn send_usage_report(&mut self, now: u64) {
        let taken = match self.worker.usage.try_borrow_mut() {
            Ok(mut usage) => usage.take_report(&self.reporter),
            // Unreachable (no borrow outlives a callback); try again next tick.
            Err(_) => return,
        };
        let Some((report, pending)) = taken else {
            return;
        };
        if pending.in_flight_left_out() > 0 {
            warn!(
                "usage report: {} pairs with requests in flight left out (limit {} entries)",
                pending.in_flight_left_out(),
                report.entries.len()
            );
        }
        let body = match serde_json::to_vec(&report) {
            Ok(body) => body,
            Err(err) => {
                self.settle(pending, false);
                self.report_failed(&format!("cannot encode the usage report: {err}"));
                return;
            }
        };
        match self.post_json(USAGE_PATH, &body, self.config.usage_report_timeout()) {
            Ok(token) => {
                debug!(
                    "usage report {token} sent: reporter {}, {} entries, {} in flight, {} pairs kept for later",
                    self.reporter,
                    report.entries.len(),
                    report.entries.iter().map(|e| e.in_flight).sum::<u64>(),
                    pending.requests_left_out()
                );
                self.report = Some(Outstanding {
                    token,
                    pending,
                    sent_at: now,
                });
            }
            Err(status) => {
                self.settle(pending, false);
                self.report_failed(&format!(
                    "cannot call cluster {}: {status:?}",
                    self.config.pool_manager_cluster
                ));
            }
        }
    }

    /// Hands `pending` back to the tracker: acknowledged when `delivered`, else rejected.
    fn settle(&self, pending: Pending, delivered: bool) {
        match self.worker.usage.try_borrow_mut() {
            Ok(mut usage) if delivered => usage.acknowledge(pending),
            Ok(mut usage) => usage.reject(pending),
            Err(_) => error!("usage counters busy: report outcome lost"),
        }
    }

    /// Logs a failed usage report: a warning for the first of a streak, debug after that.
    fn report_failed(&mut self, why: &str) {
        self.metrics.inc(Metric::UsageReportsFailed);
        if self.failing {
            debug!("usage report failed again: {why}");
        } else {
            warn!("usage report failed (warning once until one succeeds): {why}");
            self.failing = true;
        }
    }

    /// Handles the answer to usage report `token` (the outstanding one).
    fn on_usage_answer(&mut self, pending: Pending, token: u32, body_size: usize) {
        let status = call_status();
        if let Some(200..=299) = status {
            self.settle(pending, true);
            self.metrics.inc(Metric::UsageReportsSent);
            debug!("usage report {token} acknowledged: {status:?}");
            if self.failing {
                info!("usage reports are delivered again");
                self.failing = false;
            }
            return;
        }
        self.settle(pending, false);
        let why = describe_answer(status, body_size);
        self.report_failed(&why);
    }
}

/// Claims the right to send `report` at `now` for every worker of this Envoy: at most one
/// report of a (model, replica, kind) per [`failure::REPORT_INTERVAL`] (compare-and-swap on
/// [`failure::shared_key`]). If shared data does not cooperate, the report is sent.
fn claim_failure_report(report: &mm_wire::FailureReport, now: u64) -> bool {
    let key = failure::shared_key(report);
    let Ok((value, cas)) = hostcalls::get_shared_data(&key) else {
        return true;
    };
    let last = value
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .map(u64::from_le_bytes);
    if !failure::is_due(last, now) {
        return false;
    }
    match hostcalls::set_shared_data(&key, Some(&now.to_le_bytes()), cas) {
        Ok(()) => true,
        // Another worker claimed it in between.
        Err(Status::CasMismatch) => false,
        Err(_) => true,
    }
}

/// Claims a reporter start time no other VM of this Envoy has claimed (compare-and-swap on
/// [`REPORTER_CLAIM_KEY`]); falls back to `now` if shared data does not cooperate. The
/// main-thread VMs start first and create the key, so workers never race on creating it.
fn claim_start_nanos(now: u64) -> u64 {
    for _ in 0..16 {
        let Ok((value, cas)) = hostcalls::get_shared_data(REPORTER_CLAIM_KEY) else {
            break;
        };
        let last = value
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(u64::from_le_bytes);
        let claimed = usage::claim_start_nanos(now, last);
        match hostcalls::set_shared_data(REPORTER_CLAIM_KEY, Some(&claimed.to_le_bytes()), cas) {
            Ok(()) => return claimed,
            Err(Status::CasMismatch) => continue,
            Err(_) => break,
        }
    }
    now
}

impl Context for Gateway {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if self.poll.is_outstanding(token_id) {
            self.on_table_answer(token_id, body_size);
            return;
        }
        if let Some(Outstanding { pending, .. }) = self.report.take_if(|r| r.token == token_id) {
            self.on_usage_answer(pending, token_id, body_size);
            return;
        }
        if self.failure_calls.remove(&token_id) {
            match call_status() {
                Some(200..=299) => debug!("failure report {token_id} accepted"),
                status => warn!(
                    "failure report {token_id} failed: {}",
                    describe_answer(status, body_size)
                ),
            }
            return;
        }
        debug!("call {token_id}: late answer ignored");
    }
}

impl RootContext for Gateway {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes,
            Err(status) => {
                error!("cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        match Config::from_bytes(bytes.as_deref()) {
            Ok(config) => {
                info!(
                    "configured: pool-manager cluster {} authority {} route timeout {} ms, usage report every {} ms, table refresh every {} ms, table wait {} ms, as {}",
                    config.pool_manager_cluster,
                    config.pool_manager_authority,
                    config.route_timeout_ms,
                    config.usage_report_ms,
                    config.table_refresh_ms,
                    config.table_wait_ms,
                    self.reporter
                );
                if let Err(status) = hostcalls::set_tick_period(config.tick_period()) {
                    error!("cannot set the tick period: {status:?}");
                    return false;
                }
                self.config = Rc::new(config);
                self.metrics = Rc::new(Metrics::define());
                follow_host_log_level();
                true
            }
            Err(err) => {
                error!("{err}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request::new(context_id, self)))
    }

    fn on_tick(&mut self) {
        follow_host_log_level();
        let now = now_nanos();
        let leader = self.renew_lease(now);
        if leader != self.leader {
            info!(
                "{}: {} the table lease",
                self.reporter,
                if leader { "took" } else { "lost" }
            );
            self.leader = leader;
        }
        // Apply what the last leader shared before polling, so the poll asks "since" the
        // newest table known.
        self.refresh_from_shared();
        if self.leader {
            self.poll_table(now);
        }
        self.usage_tick(now);
        self.send_failure_reports(now);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the filter does with the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ResponseBody {
    /// Nothing: it streams through.
    Pass,
    /// Read it (it is small) to see whether the replica says the model is missing.
    Inspect { status: u16, kind: ModelApi },
    /// Envoy's own connect-failure reply: replace its text with this JSON.
    Replace(Vec<u8>),
    /// A V2 infer response to a KServe V1 request: translate it to V1.
    V1Translate,
}

/// What a request is, as far as routing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Api {
    /// Not classified yet.
    Unknown,
    /// An HTTP (KServe V2 or V1) request: what its path asks for.
    Http(Route),
    /// A call of the KServe V2 gRPC service.
    Grpc {
        /// Whether it needs a replica with the model (else any replica will do).
        per_model: bool,
        /// Whether the model is still to be read from the request message.
        awaiting_model: bool,
    },
}

/// Progress of a KServe V1 `:predict` request, which must be translated to V2 once both
/// its body and its model's inputs are known.
#[derive(Debug, Default)]
struct V1Request {
    /// The model's inputs, once the table or the route call gave them.
    inputs: Option<Vec<TensorSpec>>,
    /// The body's size once it has all arrived (Envoy buffers it).
    body_complete: Option<usize>,
}

/// One client request.
struct Request {
    id: u32,
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    /// The worker's table, usage counters and failure queue (the root context's).
    worker: Rc<Worker>,
    api: Api,
    /// The model the request names, once known.
    model: Option<String>,
    /// The replica the request was sent to, once chosen.
    replica: Option<String>,
    /// (model, replica) this request was counted under by `UsageTracker::start`, until it
    /// is finished: taken by `on_log` (or, should Envoy never call it, by `drop`), so the
    /// request is finished exactly once.
    counted: Option<(String, String)>,
    /// Whether a local reply was sent: Envoy accepts only one per request.
    replied: bool,
    /// Whether the request is paused for a route call.
    waiting_for_route: bool,
    /// Set for a KServe V1 `:predict` request.
    v1: Option<V1Request>,
    /// What to do with the response body.
    response: ResponseBody,
    /// Request body bytes already passed on upstream (Envoy hands the filter only what it
    /// buffered since the last `Continue`).
    body_passed: u64,
}

impl Request {
    fn new(id: u32, gateway: &Gateway) -> Request {
        Request {
            id,
            config: Rc::clone(&gateway.config),
            metrics: Rc::clone(&gateway.metrics),
            worker: Rc::clone(&gateway.worker),
            api: Api::Unknown,
            model: None,
            replica: None,
            counted: None,
            replied: false,
            waiting_for_route: false,
            v1: None,
            response: ResponseBody::Pass,
            body_passed: 0,
        }
    }

    /// Refuses a request whose body is over `max_request_bytes`, with 413.
    fn body_too_large(&mut self, bytes: u64) -> bool {
        let limit = self.config.max_request_bytes;
        if bytes <= limit {
            return false;
        }
        info!(
            "[{}] request body of {bytes} bytes refused (limit {limit})",
            self.id
        );
        self.reply(
            413,
            &format!("request body is larger than the gateway's limit of {limit} bytes"),
        );
        true
    }

    fn is_grpc(&self) -> bool {
        matches!(self.api, Api::Grpc { .. })
    }

    fn model_for_log(&self) -> &str {
        self.model.as_deref().unwrap_or("-")
    }

    /// Removes every header a client may not set (see [`route::is_reserved_header`]).
    fn strip_reserved_headers(&self) -> Result<(), Status> {
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)?;
        for (name, _) in headers {
            if route::is_reserved_header(&name) {
                debug!("[{}] removing client header {name}", self.id);
                hostcalls::remove_map_value(MapType::HttpRequestHeaders, &name)?;
            }
        }
        Ok(())
    }

    /// A request header's value, if present and UTF-8.
    fn request_header(name: &str) -> Option<String> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
            .and_then(|raw| String::from_utf8(raw).ok())
    }

    /// Answers the client, at most once per request: `{"error": message}` with `status`
    /// for HTTP, or for gRPC a trailers-only answer (HTTP 200, `content-type:
    /// application/grpc`) whose `grpc-status` is [`grpc::grpc_status_for_http`] of `status`
    /// and whose `grpc-message` is `message`, percent-encoded.
    fn reply(&mut self, status: u16, message: &str) {
        if self.replied {
            warn!(
                "[{}] second local reply dropped: {status} {message}",
                self.id
            );
            return;
        }
        self.replied = true;
        let sent = if self.is_grpc() {
            let grpc_status = grpc::grpc_status_for_http(status).to_string();
            let grpc_message = grpc::percent_encode_grpc_message(message);
            let headers = vec![
                ("content-type", "application/grpc"),
                ("grpc-status", grpc_status.as_str()),
                ("grpc-message", grpc_message.as_str()),
            ];
            hostcalls::send_http_response(200, headers, None)
        } else {
            let body = decision::render_error_body(message);
            let headers = vec![("content-type", "application/json")];
            hostcalls::send_http_response(u32::from(status), headers, Some(&body))
        };
        if let Err(err) = sent {
            error!("[{}] cannot send the {status} reply: {err:?}", self.id);
        }
    }

    /// Makes the route call for the request's model (or for any replica); answers 503 if
    /// it cannot be dispatched. The request stays paused until the answer.
    fn route_call(&mut self) -> Action {
        self.metrics.inc(Metric::RouteCalls);
        let path = route::pool_manager_path_for(self.model.as_deref());
        debug!(
            "[{}] model {}: route call to {path}",
            self.id,
            self.model_for_log()
        );
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.pool_manager_authority.as_str()),
            ("accept", "application/json"),
        ];
        match hostcalls::dispatch_http_call(
            &self.config.pool_manager_cluster,
            headers,
            None,
            vec![],
            self.config.route_timeout(),
        ) {
            Ok(token) => {
                debug!("[{}] route call {token} dispatched", self.id);
                self.waiting_for_route = true;
            }
            Err(status) => {
                error!(
                    "[{}] model {}: cannot call cluster {}: {status:?}",
                    self.id,
                    self.model_for_log(),
                    self.config.pool_manager_cluster
                );
                self.metrics.inc(Metric::ErrorsPoolManagerUnreachable);
                self.reply(503, decision::UNREACHABLE);
            }
        }
        Action::Pause
    }

    /// Counts this request as routed to `replica` (requests with a model only: a server
    /// request names none, and nothing can be unloaded under it).
    fn count_start(&mut self, replica: &str) {
        let Some(model) = self.model.clone() else {
            return;
        };
        match self.worker.usage.try_borrow_mut() {
            Ok(mut usage) => {
                usage.start(&model, replica);
                self.counted = Some((model, replica.to_owned()));
            }
            Err(_) => error!("[{}] usage counters busy: request not counted", self.id),
        }
    }

    /// Counts the end of this request, if it was counted; a second call does nothing.
    fn count_finish(&mut self) {
        let Some((model, replica)) = self.counted.take() else {
            return;
        };
        match self.worker.usage.try_borrow_mut() {
            Ok(mut usage) => usage.finish(&model, &replica),
            Err(_) => error!(
                "[{}] usage counters busy: end of request not counted",
                self.id
            ),
        }
    }

    /// Points the ORIGINAL_DST cluster at `target` (its gRPC address for a gRPC call) and
    /// counts the request. Returns false, after answering, if that is not possible.
    fn set_upstream(&mut self, target: &Target) -> bool {
        let address = if self.is_grpc() {
            match &target.grpc_address {
                Some(address) => address.as_str(),
                None => {
                    warn!(
                        "[{}] model {}: replica {} has no gRPC endpoint",
                        self.id,
                        self.model_for_log(),
                        target.replica
                    );
                    let message = format!("replica {} has no gRPC endpoint", target.replica);
                    self.reply(503, &message);
                    return false;
                }
            }
        } else {
            target.address.as_str()
        };
        let argument = filter_state::original_dst_address(address);
        if let Err(status) = hostcalls::call_foreign_function(
            filter_state::SET_FILTER_STATE_FUNCTION,
            Some(&argument),
        ) {
            error!(
                "[{}] model {} replica {}: set_envoy_filter_state({address}) failed: {status:?}",
                self.id,
                self.model_for_log(),
                target.replica
            );
            self.reply(500, CANNOT_SET_UPSTREAM);
            return false;
        }
        debug!(
            "[{}] model {} -> replica {} at {address}",
            self.id,
            self.model_for_log(),
            target.replica
        );
        self.count_start(&target.replica);
        self.replica = Some(target.replica.clone());
        true
    }

    /// Resumes the paused request.
    fn resume(&self) {
        if let Err(status) = hostcalls::resume_http_request() {
            error!("[{}] cannot resume the request: {status:?}", self.id);
        }
    }

    /// Routes the request's model from the worker's table: `Some(Continue)` when it is
    /// routed, `Some(Pause)` when it was answered, `None` on a miss.
    fn route_from_table(&mut self) -> Option<Action> {
        let model = self.model.clone()?;
        let grpc = self.is_grpc();
        let (target, inputs) = {
            let mut table = self.worker.table.try_borrow_mut().ok()?;
            if !table.contains(&model) {
                return None;
            }
            let target = if grpc {
                table.pick_grpc(&model)
            } else {
                table.pick(&model)
            };
            let inputs = table.inputs(&model).map(<[_]>::to_vec);
            (target, inputs)
        };
        self.metrics.inc(Metric::TableHits);
        let Some(target) = target else {
            // Only for gRPC: the model's copies have no gRPC endpoint.
            self.reply(503, &format!("no gRPC endpoint serves model {model}"));
            return Some(Action::Pause);
        };
        if let Some(v1) = &mut self.v1 {
            let Some(inputs) = inputs else {
                self.reply(503, NO_METADATA);
                return Some(Action::Pause);
            };
            v1.inputs = Some(inputs);
        }
        if !self.set_upstream(&target) {
            return Some(Action::Pause);
        }
        Some(Action::Continue)
    }

    /// Routes a request whose model is known: from the table, else with a route call.
    fn route_model(&mut self) -> Action {
        match self.route_from_table() {
            Some(action) => action,
            None => self.route_call(),
        }
    }

    /// Applies the route call's forward decision and resumes the request (a V1 request
    /// whose body is still coming resumes when `on_http_request_body` has translated it).
    fn forward(&mut self, target: Target, inputs: Option<Vec<TensorSpec>>) {
        if let Some(v1) = &mut self.v1 {
            let Some(inputs) = inputs else {
                self.reply(503, NO_METADATA);
                return;
            };
            v1.inputs = Some(inputs);
        }
        if !self.set_upstream(&target) {
            return;
        }
        match &self.v1 {
            // The body is all here (buffered by Envoy): translate it now, then go.
            Some(V1Request {
                body_complete: Some(size),
                ..
            }) => {
                if self.translate_v1_request(*size) {
                    self.resume();
                }
            }
            // The body is still coming: on_http_request_body translates it at its end and
            // continues the request then.
            Some(_) => {}
            None => self.resume(),
        }
    }

    /// The route call gave no route: answer, except that a request for any replica falls
    /// back to an endpoint of the table when the pool-manager cannot be reached.
    fn route_call_failed(&mut self, status: u16, message: &str) {
        if message == decision::UNREACHABLE {
            self.metrics.inc(Metric::ErrorsPoolManagerUnreachable);
            if self.model.is_none() {
                let grpc = self.is_grpc();
                let any = self
                    .worker
                    .table
                    .try_borrow()
                    .ok()
                    .and_then(|t| t.any(grpc).cloned());
                if let Some(target) = any {
                    info!(
                        "[{}] pool-manager unreachable: server request to replica {} from the table",
                        self.id, target.replica
                    );
                    self.forward(target, None);
                    return;
                }
            }
        }
        info!(
            "[{}] model {}: replying {status}: {message}",
            self.id,
            self.model_for_log()
        );
        self.reply(status, message);
    }

    /// Rewrites a KServe V1 `:predict` request's headers for its V2 translation: `:path`
    /// becomes the model's V2 infer path and `content-length` goes (the body changes).
    fn prepare_v1(&mut self, model: &str) -> Result<(), Status> {
        let path = format!("/v2/models/{model}/infer");
        hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(&path))?;
        hostcalls::remove_map_value(MapType::HttpRequestHeaders, "content-length")?;
        hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            "content-type",
            Some("application/json"),
        )?;
        self.v1 = Some(V1Request::default());
        Ok(())
    }

    /// Translates the buffered V1 request body (`body_size` bytes) to V2 in place. Answers
    /// 400 (the client's body), 503 (no inputs) or 500 and returns false if it could not.
    fn translate_v1_request(&mut self, body_size: usize) -> bool {
        let Some(inputs) = self.v1.as_ref().and_then(|v1| v1.inputs.clone()) else {
            self.reply(503, NO_METADATA);
            return false;
        };
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(body) => body.unwrap_or_default(),
            Err(status) => {
                error!("[{}] cannot read the V1 request body: {status:?}", self.id);
                self.reply(500, CANNOT_TRANSLATE);
                return false;
            }
        };
        let translated = match v1::v1_request_to_v2(&body, &inputs) {
            Ok(translated) => translated,
            Err(err) => {
                debug!("[{}] V1 request refused: {err}", self.id);
                self.metrics.inc(Metric::V1TranslationErrors);
                self.reply(400, &err.to_string());
                return false;
            }
        };
        if let Err(status) =
            hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &translated)
        {
            error!(
                "[{}] cannot replace the V1 request body: {status:?}",
                self.id
            );
            self.reply(500, CANNOT_TRANSLATE);
            return false;
        }
        self.metrics.inc(Metric::V1Translations);
        debug!(
            "[{}] V1 request translated: {} -> {} bytes",
            self.id,
            body.len(),
            translated.len()
        );
        true
    }

    /// Routes an HTTP request by its path.
    fn http_request_headers(&mut self, path: &[u8], end_of_stream: bool) -> Action {
        let route = match route::parse(path) {
            Ok(route) => route,
            Err(err) => {
                debug!("[{}] refused with {}: {err}", self.id, err.status());
                self.metrics.inc(Metric::ErrorsBadPath);
                self.reply(err.status(), &err.to_string());
                return Action::Pause;
            }
        };
        self.model = route.model().map(str::to_owned);
        let v1_model = match &route {
            Route::Model {
                name,
                kind: ModelApi::V1Predict,
                ..
            } => Some(name.clone()),
            _ => None,
        };
        self.api = Api::Http(route);
        let Some(name) = v1_model else {
            return if self.model.is_some() {
                self.route_model()
            } else {
                self.route_call()
            };
        };
        if end_of_stream {
            self.metrics.inc(Metric::V1TranslationErrors);
            self.reply(400, V1_BODY_REQUIRED);
            return Action::Pause;
        }
        if let Err(status) = self.prepare_v1(&name) {
            error!("[{}] cannot rewrite the V1 request: {status:?}", self.id);
            self.reply(500, CANNOT_TRANSLATE);
            return Action::Pause;
        }
        self.route_model()
    }

    /// Routes a call of the KServe V2 gRPC service: any replica for server methods; for
    /// per-model methods the model from a header, else from the request message (the
    /// request stays paused until enough of the body has arrived).
    fn grpc_request_headers(&mut self, route: grpc::GrpcRoute) -> Action {
        self.metrics.inc(Metric::GrpcRequests);
        let per_model = match route {
            grpc::GrpcRoute::Refused(method) => {
                self.api = Api::Grpc {
                    per_model: false,
                    awaiting_model: false,
                };
                debug!("[{}] gRPC method {method} refused", self.id);
                self.metrics.inc(Metric::ErrorsBadPath);
                self.reply(
                    403,
                    &format!("method {method} is not served by this gateway"),
                );
                return Action::Pause;
            }
            grpc::GrpcRoute::AnyReplica(_) => false,
            grpc::GrpcRoute::Model(_) => true,
        };
        self.api = Api::Grpc {
            per_model,
            awaiting_model: false,
        };
        if !per_model {
            return self.route_call();
        }
        match grpc::model_from_headers(Request::request_header) {
            Ok(Some(model)) => {
                self.model = Some(model);
                self.route_model()
            }
            Ok(None) => {
                self.api = Api::Grpc {
                    per_model,
                    awaiting_model: true,
                };
                Action::Pause
            }
            Err(err) => {
                self.metrics.inc(Metric::ErrorsBadPath);
                self.reply(err.status(), &err.to_string());
                Action::Pause
            }
        }
    }

    /// Reads the model from the start of a gRPC request body (`body_size` bytes buffered so
    /// far) and routes the call once it is known.
    fn grpc_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let max = body_size.min(MAX_GRPC_SCAN_BYTES);
        let buf = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, max)
            .ok()
            .flatten()
            .unwrap_or_default();
        let model = match grpc::model_from_message(&buf) {
            Ok(Some(model)) => model,
            Ok(None) if !end_of_stream && buf.len() < MAX_GRPC_SCAN_BYTES => {
                return Action::Pause;
            }
            Ok(None) => {
                self.metrics.inc(Metric::ErrorsBadPath);
                self.reply(400, &grpc::GrpcError::MissingModel.to_string());
                return Action::Pause;
            }
            Err(err) => {
                self.metrics.inc(Metric::ErrorsBadPath);
                self.reply(err.status(), &err.to_string());
                return Action::Pause;
            }
        };
        debug!("[{}] gRPC model {model} from the request message", self.id);
        self.api = Api::Grpc {
            per_model: true,
            awaiting_model: false,
        };
        self.model = Some(model);
        // Routed from the table: Continue releases the paused headers and the body.
        self.route_model()
    }

    /// Checks a routed request's response for a replica failure and decides what to do
    /// with its body.
    fn watch_response(&mut self, replica: &str, end_of_stream: bool) {
        let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|raw| decision::parse_status(&raw));
        let Some(status) = status else {
            return;
        };
        let grpc_status = if self.is_grpc() {
            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "grpc-status")
                .ok()
                .flatten()
        } else {
            None
        };
        // Envoy answers itself when it cannot connect: 503, or for gRPC 200 with a
        // grpc-status in the headers. Only then are the properties worth reading.
        if status == 503 || grpc_status.is_some() {
            let details = hostcalls::get_property(vec!["response", "code_details"])
                .ok()
                .flatten();
            let flags = hostcalls::get_property(vec!["response", "flags"])
                .ok()
                .flatten()
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(u64::from_le_bytes);
            if failure::is_connect_failure(details.as_deref(), flags) {
                self.replica_unreachable(replica, details.as_deref(), flags, end_of_stream);
                return;
            }
        }
        if let Some(grpc_status) = grpc_status {
            // A trailers-only gRPC answer: its status is in the headers.
            let message =
                hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "grpc-message")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
            if failure::is_grpc_model_missing(&grpc_status, &message) {
                self.model_missing();
            }
            return;
        }
        if let Api::Http(Route::Model { kind, version, .. }) = &self.api {
            if failure::may_be_model_missing(status, *kind, version.is_some()) && !end_of_stream {
                self.response = ResponseBody::Inspect {
                    status,
                    kind: *kind,
                };
                return;
            }
        }
        if self.v1.is_some() && status == 200 && !end_of_stream {
            if let Err(status) =
                hostcalls::remove_map_value(MapType::HttpResponseHeaders, "content-length")
            {
                warn!("[{}] cannot remove content-length: {status:?}", self.id);
                return;
            }
            self.response = ResponseBody::V1Translate;
        }
    }

    /// The replica could not be reached: drop it from the worker's table, queue a failure
    /// report, and turn Envoy's answer into the gateway's (JSON body, or gRPC message).
    fn replica_unreachable(
        &mut self,
        replica: &str,
        details: Option<&[u8]>,
        flags: Option<u64>,
        end_of_stream: bool,
    ) {
        self.metrics.inc(Metric::ErrorsUpstreamUnreachable);
        let removed = self
            .worker
            .table
            .try_borrow_mut()
            .map_or(0, |mut t| t.remove_replica(replica));
        warn!(
            "[{}] model {}: replica {replica} unreachable (code details {}, flags {flags:?}); {removed} table entries dropped",
            self.id,
            self.model_for_log(),
            String::from_utf8_lossy(details.unwrap_or_default())
        );
        if let Some(model) = &self.model {
            if let Ok(mut failures) = self.worker.failures.try_borrow_mut() {
                failures.push(model, replica, FailureKind::Unreachable);
            }
        }
        let message = failure::unreachable_message(replica);
        if self.is_grpc() {
            let encoded = grpc::percent_encode_grpc_message(&message);
            if let Err(status) = hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                "grpc-message",
                Some(&encoded),
            ) {
                warn!("[{}] cannot rewrite grpc-message: {status:?}", self.id);
            }
            return;
        }
        if end_of_stream {
            return;
        }
        let body = decision::render_error_body(&message);
        let length = body.len().to_string();
        let rewritten = hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            "content-type",
            Some("application/json"),
        )
        .and_then(|()| {
            hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                "content-length",
                Some(&length),
            )
        });
        match rewritten {
            Ok(()) => self.response = ResponseBody::Replace(body),
            Err(status) => warn!("[{}] cannot rewrite the 503: {status:?}", self.id),
        }
    }

    /// The replica said it does not have the model: drop that copy and queue a report.
    fn model_missing(&mut self) {
        let (Some(model), Some(replica)) = (self.model.clone(), self.replica.clone()) else {
            return;
        };
        self.metrics.inc(Metric::ErrorsModelMissing);
        let removed = self
            .worker
            .table
            .try_borrow_mut()
            .is_ok_and(|mut t| t.remove(&model, &replica));
        warn!(
            "[{}] model {model} missing on replica {replica}; dropped from the table: {removed}",
            self.id
        );
        if let Ok(mut failures) = self.worker.failures.try_borrow_mut() {
            failures.push(&model, &replica, FailureKind::ModelMissing);
        }
    }

    /// Translates a buffered V2 response to V1 in place; on failure the answer becomes a
    /// 502 with the gateway's JSON (the headers are still held).
    fn translate_v1_response(&mut self, body_size: usize) {
        let body = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let (status, new_body) = match v1::v2_response_to_v1(&body) {
            Ok(translated) => (None, translated),
            Err(err) => {
                warn!(
                    "[{}] model {}: V2 response not translatable to V1: {err}",
                    self.id,
                    self.model_for_log()
                );
                self.metrics.inc(Metric::V1TranslationErrors);
                let message = format!("model server answered an untranslatable response: {err}");
                (Some("502"), decision::render_error_body(&message))
            }
        };
        if let Some(status) = status {
            if let Err(err) =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, ":status", Some(status))
            {
                warn!("[{}] cannot set the 502 status: {err:?}", self.id);
            }
        }
        if let Err(err) =
            hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &new_body)
        {
            error!("[{}] cannot replace the response body: {err:?}", self.id);
        }
    }
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.waiting_for_route = false;
        let status = call_status();
        let body = call_body(body_size, decision::MAX_ROUTE_BODY_BYTES);
        debug!(
            "[{}] route call {token_id} answered: status {status:?}, {num_headers} headers, {body_size} body bytes",
            self.id
        );
        match decision::decide(status, &body) {
            Decision::Forward {
                address,
                replica,
                grpc_address,
                inputs,
            } => {
                let mut inputs = inputs;
                if let Some(model) = self.model.clone() {
                    let route = RouteResponse {
                        model: Some(model.clone()),
                        replica: replica.clone(),
                        address: address.clone(),
                        grpc_address: grpc_address.clone(),
                        inputs: inputs.clone(),
                    };
                    if let Ok(mut table) = self.worker.table.try_borrow_mut() {
                        if let Err(err) = table.insert_route(&model, &route) {
                            debug!("[{}] route not kept in the table: {err}", self.id);
                        }
                        if inputs.is_none() {
                            inputs = table.inputs(&model).map(<[_]>::to_vec);
                        }
                    }
                }
                let target = Target {
                    replica,
                    address,
                    grpc_address,
                };
                self.forward(target, inputs);
            }
            Decision::Reply { status, message } => self.route_call_failed(status, &message),
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Err(status) = self.strip_reserved_headers() {
            error!(
                "[{}] cannot remove client routing headers: {status:?}",
                self.id
            );
            self.reply(500, CANNOT_SANITIZE);
            return Action::Pause;
        }
        let declared = Request::request_header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if self.body_too_large(declared) {
            return Action::Pause;
        }
        let path = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path")
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Some(route) = grpc::parse_path(&path) {
            // Only a gRPC request is one (Envoy's gRPC route needs the content type too).
            let is_grpc = Request::request_header("content-type")
                .is_some_and(|ct| ct.starts_with("application/grpc"));
            if is_grpc {
                if end_of_stream && matches!(route, grpc::GrpcRoute::Model(_)) {
                    // No message: the model can only come from a header.
                    if let Ok(None) = grpc::model_from_headers(Request::request_header) {
                        self.api = Api::Grpc {
                            per_model: true,
                            awaiting_model: false,
                        };
                        self.reply(400, &grpc::GrpcError::MissingModel.to_string());
                        return Action::Pause;
                    }
                }
                return self.grpc_request_headers(route);
            }
        }
        self.http_request_headers(&path, end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Pause;
        }
        // Bodies without a content-length are counted as they stream.
        let total = self.body_passed.saturating_add(body_size as u64);
        if self.body_too_large(total) {
            return Action::Pause;
        }
        let action = self.request_body(body_size, end_of_stream);
        if action == Action::Continue {
            self.body_passed = total;
        }
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(replica) = self.replica.clone() else {
            return Action::Continue;
        };
        if let Err(status) = hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            route::REPLICA_HEADER,
            Some(&replica),
        ) {
            warn!(
                "[{}] cannot add {}: {status:?}",
                self.id,
                route::REPLICA_HEADER
            );
        }
        self.watch_response(&replica, end_of_stream);
        // A V1 translation may turn the answer into a 502: hold the headers until then
        // (Envoy hands the body over while they are held only with
        // `allow_on_headers_stop_iteration`).
        if self.response == ResponseBody::V1Translate {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match &self.response {
            ResponseBody::Pass => Action::Continue,
            ResponseBody::Inspect { status, kind } => {
                if body_size > failure::MAX_ERROR_BODY_BYTES {
                    self.response = ResponseBody::Pass;
                    return Action::Continue;
                }
                if !end_of_stream {
                    return Action::Pause;
                }
                let (status, kind) = (*status, *kind);
                self.response = ResponseBody::Pass;
                let body = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                if failure::is_model_missing(status, kind, &body) {
                    self.model_missing();
                }
                Action::Continue
            }
            ResponseBody::Replace(body) => {
                if !end_of_stream {
                    return Action::Pause;
                }
                if let Err(status) =
                    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, body)
                {
                    warn!("[{}] cannot replace the 503 body: {status:?}", self.id);
                }
                self.response = ResponseBody::Pass;
                Action::Continue
            }
            ResponseBody::V1Translate => {
                if !end_of_stream {
                    return Action::Pause;
                }
                self.response = ResponseBody::Pass;
                self.translate_v1_response(body_size);
                Action::Continue
            }
        }
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if !self.is_grpc() || self.replica.is_none() || self.model.is_none() {
            return Action::Continue;
        }
        let trailer = |name| {
            hostcalls::get_map_value_bytes(MapType::HttpResponseTrailers, name)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        if failure::is_grpc_model_missing(&trailer("grpc-status"), &trailer("grpc-message")) {
            self.model_missing();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.count_finish();
    }
}

impl Request {
    fn request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // With `allow_on_headers_stop_iteration`, Envoy hands the body over while the
        // headers are paused; it must stay buffered until the request is routed.
        if self.replied {
            return Action::Pause;
        }
        if let Api::Grpc {
            awaiting_model: true,
            ..
        } = self.api
        {
            return self.grpc_request_body(body_size, end_of_stream);
        }
        let Some(v1) = &mut self.v1 else {
            return if self.waiting_for_route {
                Action::Pause
            } else {
                Action::Continue
            };
        };
        if !end_of_stream {
            // Envoy buffers the body until the end (up to its buffer limit).
            return Action::Pause;
        }
        v1.body_complete = Some(body_size);
        if self.waiting_for_route {
            // The route call's answer translates the buffered body.
            return Action::Pause;
        }
        if self.translate_v1_request(body_size) {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // Envoy calls on_log once at the end of every stream; this only covers a context
        // deleted without it, so that no request stays in flight for ever.
        if self.counted.is_some() {
            warn!("[{}] request ended without on_log", self.id);
            self.count_finish();
        }
    }
}
