//! The Proxy-Wasm glue, and the only module that talks to the host: it reads headers, makes
//! the route call and applies the [`Decision`]. It calls `proxy_wasm::hostcalls` directly
//! so that host errors come back as values to log, instead of the SDK trait methods'
//! unwraps (a panic traps the VM). All routing state is set before
//! `resume_http_request()`: after it, request header writes fail and kill the VM.

use std::rc::Rc;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};

use crate::config::Config;
use crate::decision::{self, Decision};
use crate::filter_state;
use crate::route::{self, Route};

proxy_wasm::main! {{
    // Envoy filters these again by its own `wasm` log level.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Gateway {
            config: Rc::new(Config::default()),
        })
    });
}}

/// Message when the client's routing headers could not be removed.
const CANNOT_SANITIZE: &str = "cannot remove client routing headers";

/// Message when the chosen address could not be handed to Envoy.
const CANNOT_SET_UPSTREAM: &str = "cannot set the upstream address";

/// Root context: one per worker VM; holds the configuration shared by its requests.
struct Gateway {
    config: Rc<Config>,
}

impl Context for Gateway {}

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
                    "configured: pool-manager cluster {} authority {} route timeout {} ms",
                    config.pool_manager_cluster,
                    config.pool_manager_authority,
                    config.route_timeout_ms
                );
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
            model: None,
            replica: None,
            replied: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One client request.
struct Request {
    id: u32,
    config: Rc<Config>,
    /// The model the path names (for logs); `None` for server routes.
    model: Option<String>,
    /// The replica the request was sent to, once chosen.
    replica: Option<String>,
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
}
