//! The Proxy-Wasm glue, and the only module that talks to the host: it reads headers, makes
//! the route call and applies the [`Decision`]; it also counts routed requests in the root
//! context's [`UsageTracker`] and sends the usage report from the root context's tick. It
//! calls `proxy_wasm::hostcalls` directly so that host errors come back as values to log,
//! instead of the SDK trait methods' unwraps (a panic traps the VM). All routing state is
//! set before `resume_http_request()`: after it, request header writes fail and kill the VM.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{debug, error, info, warn};
use mm_wire::{ErrorBody, USAGE_PATH};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};

use crate::config::Config;
use crate::decision::{self, Decision};
use crate::filter_state;
use crate::route::{self, Route};
use crate::usage::{self, Pending, UsageTracker};

proxy_wasm::main! {{
    // Envoy filters these again by its own `wasm` log level.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Gateway::new(context_id))
    });
}}

/// Message when the client's routing headers could not be removed.
const CANNOT_SANITIZE: &str = "cannot remove client routing headers";

/// Message when the chosen address could not be handed to Envoy.
const CANNOT_SET_UPSTREAM: &str = "cannot set the upstream address";

/// Most bytes of a usage report's error answer read for the log.
const MAX_USAGE_ERROR_BYTES: usize = 1024;

/// Ticks a usage report may stay unanswered before it counts as failed. The call's timeout
/// is at most one period, so Envoy answers well before; this only guards against an answer
/// that never comes, which would otherwise stop reporting for good.
const MAX_REPORT_TICKS: u32 = 3;

/// Shared-data key (shared by every VM of this plugin's `vm_id` in one Envoy) holding the
/// last reporter start time claimed, as 8 little-endian bytes.
const REPORTER_CLAIM_KEY: &str = "mm_filter.reporter_start_nanos";

/// Root context: one per worker VM (Envoy also makes one on the main thread, which routes
/// nothing and so never reports); holds the configuration and the usage counters shared by
/// its requests, and sends the usage reports.
struct Gateway {
    config: Rc<Config>,
    usage: Rc<RefCell<UsageTracker>>,
    /// `w<root context id>-<start time in ns>`: unique per root context, stable for its life
    /// (see [`claim_start_nanos`]).
    reporter: String,
    /// The usage report on its way, if any.
    report: Option<Outstanding>,
    /// Whether the last usage report failed: warn once per failure streak, not every period.
    failing: bool,
}

/// A dispatched usage report waiting for its answer.
struct Outstanding {
    token: u32,
    pending: Pending,
    /// Ticks since dispatch.
    ticks: u32,
}

impl Gateway {
    fn new(id: u32) -> Gateway {
        let now = hostcalls::get_current_time()
            .ok()
            .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        Gateway {
            config: Rc::new(Config::default()),
            usage: Rc::new(RefCell::new(UsageTracker::new())),
            reporter: usage::reporter_id(id, claim_start_nanos(now)),
            report: None,
            failing: false,
        }
    }

    /// Takes the next usage report, if there is one to send, and dispatches it.
    fn send_usage_report(&mut self) {
        let taken = match self.usage.try_borrow_mut() {
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
        let headers = vec![
            (":method", "POST"),
            (":path", USAGE_PATH),
            (":authority", self.config.pool_manager_authority.as_str()),
            ("content-type", "application/json"),
        ];
        match hostcalls::dispatch_http_call(
            &self.config.pool_manager_cluster,
            headers,
            Some(&body),
            vec![],
            self.config.usage_report_timeout(),
        ) {
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
                    ticks: 0,
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
        match self.usage.try_borrow_mut() {
            Ok(mut usage) if delivered => usage.acknowledge(pending),
            Ok(mut usage) => usage.reject(pending),
            Err(_) => error!("usage counters busy: report outcome lost"),
        }
    }

    /// Logs a failed usage report: a warning for the first of a streak, debug after that.
    fn report_failed(&mut self, why: &str) {
        if self.failing {
            debug!("usage report failed again: {why}");
        } else {
            warn!("usage report failed (warning once until one succeeds): {why}");
            self.failing = true;
        }
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
        let Some(Outstanding { pending, .. }) = self.report.take_if(|r| r.token == token_id) else {
            debug!("usage report {token_id}: late answer ignored");
            return;
        };
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|raw| decision::parse_status(&raw));
        if let Some(200..=299) = status {
            self.settle(pending, true);
            debug!("usage report {token_id} acknowledged: {status:?}");
            if self.failing {
                info!("usage reports are delivered again");
                self.failing = false;
            }
            return;
        }
        self.settle(pending, false);
        let why = match status {
            None => "no answer (connect failure, reset or timeout)".to_owned(),
            Some(status) => {
                let body = hostcalls::get_buffer(
                    BufferType::HttpCallResponseBody,
                    0,
                    body_size.min(MAX_USAGE_ERROR_BYTES),
                )
                .ok()
                .flatten()
                .unwrap_or_default();
                match serde_json::from_slice::<ErrorBody>(&body) {
                    Ok(ErrorBody { error }) => format!("status {status}: {error}"),
                    Err(_) => format!("status {status}"),
                }
            }
        };
        self.report_failed(&why);
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
                    "configured: pool-manager cluster {} authority {} route timeout {} ms, usage report every {} ms as {}",
                    config.pool_manager_cluster,
                    config.pool_manager_authority,
                    config.route_timeout_ms,
                    config.usage_report_ms,
                    self.reporter
                );
                if let Err(status) = hostcalls::set_tick_period(config.usage_report_period()) {
                    error!("cannot set the usage report period: {status:?}");
                    return false;
                }
                self.config = Rc::new(config);
                true
            }
            Err(err) => {
                error!("{err}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            id: context_id,
            config: Rc::clone(&self.config),
            usage: Rc::clone(&self.usage),
            model: None,
            replica: None,
            counted: None,
            replied: false,
        }))
    }

    fn on_tick(&mut self) {
        if let Some(outstanding) = &mut self.report {
            outstanding.ticks += 1;
            if outstanding.ticks <= MAX_REPORT_TICKS {
                return;
            }
            let token = outstanding.token;
            if let Some(Outstanding { pending, .. }) = self.report.take() {
                self.settle(pending, false);
            }
            self.report_failed(&format!(
                "report {token} unanswered after {MAX_REPORT_TICKS} periods"
            ));
        }
        self.send_usage_report();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One client request.
struct Request {
    id: u32,
    config: Rc<Config>,
    /// The worker's usage counters (the root context's).
    usage: Rc<RefCell<UsageTracker>>,
    /// The model the path names (for logs); `None` for server routes.
    model: Option<String>,
    /// The replica the request was sent to, once chosen.
    replica: Option<String>,
    /// (model, replica) this request was counted under by `UsageTracker::start`, until it
    /// is finished: taken by `on_log` (or, should Envoy never call it, by `drop`), so the
    /// request is finished exactly once.
    counted: Option<(String, String)>,
    /// Whether a local reply was sent: Envoy accepts only one per request.
    replied: bool,
}

impl Request {
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

    /// Asks the pool-manager where `route` must go; the answer arrives in
    /// `on_http_call_response`.
    fn dispatch_route_call(&self, route: &Route) -> Result<u32, Status> {
        let path = route.pool_manager_path();
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
        hostcalls::dispatch_http_call(
            &self.config.pool_manager_cluster,
            headers,
            None,
            vec![],
            self.config.route_timeout(),
        )
    }

    /// Answers the client with `{"error": message}`, at most once per request.
    fn reply(&mut self, status: u16, message: &str) {
        if self.replied {
            warn!(
                "[{}] second local reply dropped: {status} {message}",
                self.id
            );
            return;
        }
        self.replied = true;
        let body = decision::render_error_body(message);
        let headers = vec![("content-type", "application/json")];
        if let Err(err) = hostcalls::send_http_response(u32::from(status), headers, Some(&body)) {
            error!("[{}] cannot send the {status} reply: {err:?}", self.id);
        }
    }

    /// Counts this request as routed to `replica` (model routes only: a server route names
    /// no model, and nothing can be unloaded under it).
    fn count_start(&mut self, replica: &str) {
        let Some(model) = &self.model else {
            return;
        };
        match self.usage.try_borrow_mut() {
            Ok(mut usage) => {
                usage.start(model, replica);
                self.counted = Some((model.clone(), replica.to_owned()));
            }
            Err(_) => error!("[{}] usage counters busy: request not counted", self.id),
        }
    }

    /// Counts the end of this request, if it was counted; a second call does nothing.
    fn count_finish(&mut self) {
        let Some((model, replica)) = self.counted.take() else {
            return;
        };
        match self.usage.try_borrow_mut() {
            Ok(mut usage) => usage.finish(&model, &replica),
            Err(_) => error!(
                "[{}] usage counters busy: end of request not counted",
                self.id
            ),
        }
    }

    fn model_for_log(&self) -> &str {
        self.model.as_deref().unwrap_or("-")
    }

    /// Points the ORIGINAL_DST cluster at `address`, then lets the request go on.
    fn forward(&mut self, address: &str, replica: String) {
        let argument = filter_state::original_dst_address(address);
        if let Err(status) = hostcalls::call_foreign_function(
            filter_state::SET_FILTER_STATE_FUNCTION,
            Some(&argument),
        ) {
            error!(
                "[{}] model {} replica {replica}: set_envoy_filter_state({address}) failed: {status:?}",
                self.id,
                self.model_for_log()
            );
            self.reply(500, CANNOT_SET_UPSTREAM);
            return;
        }
        info!(
            "[{}] model {} -> replica {replica} at {address}",
            self.id,
            self.model_for_log()
        );
        self.count_start(&replica);
        self.replica = Some(replica);
        if let Err(status) = hostcalls::resume_http_request() {
            error!("[{}] cannot resume the request: {status:?}", self.id);
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
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|raw| decision::parse_status(&raw));
        let body = if body_size == 0 {
            Vec::new()
        } else {
            let max = body_size.min(decision::MAX_ROUTE_BODY_BYTES);
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, max)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        debug!(
            "[{}] route call {token_id} answered: status {status:?}, {num_headers} headers, {body_size} body bytes",
            self.id
        );
        match decision::decide(status, &body) {
            Decision::Forward { address, replica } => self.forward(&address, replica),
            Decision::Reply { status, message } => {
                info!(
                    "[{}] model {}: replying {status}: {message}",
                    self.id,
                    self.model_for_log()
                );
                self.reply(status, &message);
            }
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Err(status) = self.strip_reserved_headers() {
            error!(
                "[{}] cannot remove client routing headers: {status:?}",
                self.id
            );
            self.reply(500, CANNOT_SANITIZE);
            return Action::Pause;
        }
        let path = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path")
            .ok()
            .flatten()
            .unwrap_or_default();
        let route = match route::parse(&path) {
            Ok(route) => route,
            Err(err) => {
                debug!("[{}] refused with {}: {err}", self.id, err.status());
                self.reply(err.status(), &err.to_string());
                return Action::Pause;
            }
        };
        self.model = route.model().map(str::to_owned);
        match self.dispatch_route_call(&route) {
            Ok(token) => debug!("[{}] route call {token} dispatched", self.id),
            Err(status) => {
                error!(
                    "[{}] model {}: cannot call cluster {}: {status:?}",
                    self.id,
                    self.model_for_log(),
                    self.config.pool_manager_cluster
                );
                self.reply(503, decision::UNREACHABLE);
            }
        }
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(replica) = &self.replica {
            if let Err(status) = hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                route::REPLICA_HEADER,
                Some(replica),
            ) {
                warn!(
                    "[{}] cannot add {}: {status:?}",
                    self.id,
                    route::REPLICA_HEADER
                );
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.count_finish();
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
