//! The Wasm floor of the warm-path benchmark: the least a Proxy-Wasm HTTP filter can do
//! and still look at the request (read `:path`, continue). `make bench` runs plain Envoy
//! with this filter beside the gateway, with the same VM settings, so the gateway's cost
//! over it is our own code, not the V8 runtime's. Built for wasm32-wasip1 only; on the host
//! the crate is empty (proxy-wasm's host imports do not link there).

#![cfg(target_arch = "wasm32")]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}

struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The one host call every routing filter makes, made the way the gateway makes it
        // (a host error is a value, not the SDK's unwrap); the value is deliberately unused.
        let _path = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        Action::Continue
    }
}
