//! The Proxy-Wasm glue, and the only module that talks to the host: the `main!` entry, the
//! [`Host`] implementation over `proxy_wasm::hostcalls`, and the context types that forward
//! each callback to the worker ([`Worker`], one per root context) or to the request's
//! [`Stream`]. No logic lives here. It calls `proxy_wasm::hostcalls` directly so that host
//! errors come back as values instead of the SDK trait methods' unwraps (a panic traps the
//! VM).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::filter_state;
use crate::host::{Action, Buffer, Call, Host, HostError, Level, Map};
use crate::metrics::Metric;
use crate::pairs::HeaderPairs;
use crate::stream::Stream;
use crate::worker::Worker;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root::new(context_id))
    });
}}

/// What every context of one VM shares about the host: the counters' ids and the log level.
#[derive(Debug, Default)]
struct HostState {
    /// The counters' ids, in [`Metric::ALL`] order; `None` where `define_metric` failed.
    metrics: RefCell<[Option<u32>; Metric::ALL.len()]>,
    /// The level of Envoy's `wasm` logger, as last read.
    level: Cell<Option<Level>>,
}

/// [`Host`] over `proxy_wasm::hostcalls`.
#[derive(Debug, Clone, Default)]
struct WasmHost {
    state: Rc<HostState>,
}

impl WasmHost {
    fn define_metrics(&self) {
        let mut ids = self.state.metrics.borrow_mut();
        for metric in Metric::ALL {
            match hostcalls::define_metric(MetricType::Counter, metric.name()) {
                Ok(id) => ids[metric.index()] = Some(id),
                Err(status) => {
                    let _ = hostcalls::log(
                        LogLevel::Warn,
                        &format!("cannot define metric {}: {status:?}", metric.name()),
                    );
                }
            }
        }
    }
}

// The host call behind `hostcalls::get_map_bytes`, declared as the SDK declares it: the
// SDK hands a map over only as one `String` and one `Vec` per header, and those
// allocations were most of the filter's own work on a warm request.
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// Every header of `map`, as the buffer the host serialised them into.
#[allow(unsafe_code)]
fn header_map_pairs(map: MapType) -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: what `proxy_wasm::hostcalls::get_map_bytes` does. The host writes the two
    // out-pointers; on `Ok` with a non-null pointer it has allocated `size` bytes through
    // this module's `proxy_on_memory_allocate` (the SDK's: a `Vec<u8>` of capacity
    // `size` turned into a boxed slice) and hands them over, so they become a `Vec` once.
    unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            Status::Ok if data.is_null() => Ok(Vec::new()),
            Status::Ok => Ok(Vec::from_raw_parts(data, size, size)),
            status => Err(status),
        }
    }
}

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::RequestTrailers => MapType::HttpRequestTrailers,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::ResponseTrailers => MapType::HttpResponseTrailers,
        Map::CallHeaders => MapType::HttpCallResponseHeaders,
    }
}

fn buffer_type(buffer: Buffer) -> BufferType {
    match buffer {
        Buffer::RequestBody => BufferType::HttpRequestBody,
        Buffer::ResponseBody => BufferType::HttpResponseBody,
        Buffer::CallBody => BufferType::HttpCallResponseBody,
        Buffer::Configuration => BufferType::PluginConfiguration,
    }
}

fn host_error(status: Status) -> HostError {
    match status {
        Status::CasMismatch => HostError::CasMismatch,
        Status::NotFound => HostError::NotFound,
        Status::BadArgument => HostError::BadArgument,
        other => HostError::Other(other as u32),
    }
}

fn log_level(level: Level) -> LogLevel {
    match level {
        Level::Trace => LogLevel::Trace,
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    }
}

fn level_of(level: LogLevel) -> Level {
    match level {
        LogLevel::Trace => Level::Trace,
        LogLevel::Debug => Level::Debug,
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warn,
        LogLevel::Error | LogLevel::Critical => Level::Error,
    }
}

impl Host for WasmHost {
    fn header(&mut self, map: Map, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(map_type(map), name)
            .ok()
            .flatten()
    }

    fn headers(&mut self, map: Map) -> Result<HeaderPairs, HostError> {
        let raw = header_map_pairs(map_type(map)).map_err(host_error)?;
        HeaderPairs::from_raw(raw).map_err(|err| {
            let _ = hostcalls::log(LogLevel::Error, &format!("{err}"));
            HostError::BadArgument
        })
    }

    fn set_header(&mut self, map: Map, name: &str, value: &str) -> Result<(), HostError> {
        hostcalls::set_map_value(map_type(map), name, Some(value)).map_err(host_error)
    }

    fn remove_header(&mut self, map: Map, name: &str) -> Result<(), HostError> {
        hostcalls::remove_map_value(map_type(map), name).map_err(host_error)
    }

    fn body(&mut self, buffer: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
        hostcalls::get_buffer(buffer_type(buffer), start, max)
            .map(Option::unwrap_or_default)
            .map_err(host_error)
    }

    fn set_body(
        &mut self,
        buffer: Buffer,
        start: usize,
        size: usize,
        bytes: &[u8],
    ) -> Result<(), HostError> {
        hostcalls::set_buffer(buffer_type(buffer), start, size, bytes).map_err(host_error)
    }

    fn dispatch(&mut self, call: &Call<'_>) -> Result<u32, HostError> {
        hostcalls::dispatch_http_call(
            call.cluster,
            call.headers.to_vec(),
            call.body,
            vec![],
            call.timeout,
        )
        .map_err(host_error)
    }

    fn shared(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        hostcalls::get_shared_data(key).map_err(host_error)
    }

    fn set_shared(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(host_error)
    }

    fn set_upstream(&mut self, address: &str) -> Result<(), HostError> {
        let argument = filter_state::original_dst_address(address);
        hostcalls::call_foreign_function(filter_state::SET_FILTER_STATE_FUNCTION, Some(&argument))
            .map(|_| ())
            .map_err(host_error)
    }

    fn resume_request(&mut self) -> Result<(), HostError> {
        hostcalls::resume_http_request().map_err(host_error)
    }

    fn reply(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError> {
        hostcalls::send_http_response(u32::from(status), headers.to_vec(), body).map_err(host_error)
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn increment(&mut self, metric: Metric, count: u64) {
        let id = self
            .state
            .metrics
            .borrow()
            .get(metric.index())
            .copied()
            .flatten();
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    fn set_tick_period(&mut self, period: std::time::Duration) -> Result<(), HostError> {
        hostcalls::set_tick_period(period).map_err(host_error)
    }

    fn now(&mut self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            })
    }

    fn log_enabled(&self, level: Level) -> bool {
        // Until the first tick reads Envoy's level: everything (Envoy filters again).
        self.state
            .level
            .get()
            .is_none_or(|current| level >= current)
    }

    fn log(&mut self, level: Level, message: fmt::Arguments<'_>) {
        let _ = hostcalls::log(log_level(level), &message.to_string());
    }

    fn follow_log_level(&mut self) {
        if let Ok(level) = hostcalls::get_log_level() {
            self.state.level.set(Some(level_of(level)));
        }
    }
}

fn action(action: Action) -> proxy_wasm::types::Action {
    match action {
        Action::Continue => proxy_wasm::types::Action::Continue,
        Action::Pause => proxy_wasm::types::Action::Pause,
    }
}

/// Runs `f` with the worker borrowed; `None` (logged) if it is borrowed already, which
/// Envoy's deferred callbacks never cause.
fn with_worker<R>(
    host: &mut WasmHost,
    worker: &RefCell<Worker>,
    f: impl FnOnce(&mut WasmHost, &mut Worker) -> R,
) -> Option<R> {
    match worker.try_borrow_mut() {
        Ok(mut worker) => Some(f(host, &mut worker)),
        Err(_) => {
            let _ = hostcalls::log(LogLevel::Error, "worker state busy: callback skipped");
            None
        }
    }
}

/// Root context: one per worker VM (plus one on Envoy's main thread).
struct Root {
    host: WasmHost,
    worker: Rc<RefCell<Worker>>,
}

impl Root {
    fn new(context_id: u32) -> Root {
        let mut host = WasmHost::default();
        let worker = Worker::new(&mut host, context_id);
        Root {
            host,
            worker: Rc::new(RefCell::new(worker)),
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        with_worker(&mut self.host, &self.worker, |host, worker| {
            worker.on_call_answer(host, token, body_size);
        });
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.host.follow_log_level();
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes,
            Err(status) => {
                let message = format!("cannot read the plugin configuration: {status:?}");
                let _ = hostcalls::log(LogLevel::Error, &message);
                return false;
            }
        };
        let configured = with_worker(&mut self.host, &self.worker, |host, worker| {
            worker
                .configure(host, bytes.as_deref(), |name| std::env::var(name).ok())
                .map(|()| worker.config().tick_period())
        });
        let tick = match configured {
            Some(Ok(tick)) => tick,
            Some(Err(err)) => {
                let _ = hostcalls::log(LogLevel::Error, &err.to_string());
                return false;
            }
            None => return false,
        };
        if let Err(status) = hostcalls::set_tick_period(tick) {
            let message = format!("cannot set the tick period: {status:?}");
            let _ = hostcalls::log(LogLevel::Error, &message);
            return false;
        }
        self.host.define_metrics();
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            stream: Stream::new(context_id),
            host: self.host.clone(),
            worker: Rc::clone(&self.worker),
        }))
    }

    fn on_tick(&mut self) {
        with_worker(&mut self.host, &self.worker, |host, worker| {
            worker.on_tick(host)
        });
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One client request: forwards every callback to its [`Stream`].
struct Request {
    stream: Stream,
    host: WasmHost,
    worker: Rc<RefCell<Worker>>,
}

impl Request {
    /// Runs a stream callback; if the worker is busy (never, see [`with_worker`]), the
    /// request goes on unrouted and Envoy answers it.
    fn call(
        &mut self,
        f: impl FnOnce(&mut Stream, &mut WasmHost, &mut Worker) -> Action,
    ) -> proxy_wasm::types::Action {
        let stream = &mut self.stream;
        let done = with_worker(&mut self.host, &self.worker, |host, worker| {
            f(stream, host, worker)
        });
        action(done.unwrap_or(Action::Continue))
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _: usize) {
        let stream = &mut self.stream;
        with_worker(&mut self.host, &self.worker, |host, worker| {
            stream.on_route_answer(host, worker, body_size);
        });
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(
        &mut self,
        _headers: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        self.call(|s, h, w| s.on_request_headers(h, w, end_of_stream))
    }

    fn on_http_request_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        self.call(|s, h, w| s.on_request_body(h, w, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> proxy_wasm::types::Action {
        self.call(|s, h, w| s.on_request_trailers(h, w))
    }

    fn on_http_response_headers(
        &mut self,
        _headers: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        self.call(|s, h, w| s.on_response_headers(h, w, end_of_stream))
    }

    fn on_http_response_body(
        &mut self,
        body_size: usize,
        end_of_stream: bool,
    ) -> proxy_wasm::types::Action {
        self.call(|s, h, w| s.on_response_body(h, w, body_size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> proxy_wasm::types::Action {
        self.call(|s, h, w| s.on_response_trailers(h, w))
    }

    fn on_log(&mut self) {
        let stream = &mut self.stream;
        with_worker(&mut self.host, &self.worker, |host, worker| {
            stream.on_log(host, worker)
        });
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // Envoy calls on_log once at the end of every stream; this only covers a context
        // deleted without it, so that no request stays in flight for ever.
        if self.stream.is_counted() {
            let _ = hostcalls::log(LogLevel::Warn, "request ended without on_log");
            let stream = &mut self.stream;
            with_worker(&mut self.host, &self.worker, |host, worker| {
                stream.on_log(host, worker)
            });
        }
    }
}
