//! The Wasm floor of the warm-path benchmark: the least a Proxy-Wasm HTTP filter can do
//! and still look at the request (read `:path`, continue). `make bench` runs plain Envoy
//! with this filter beside the gateway, with the same VM settings, so the gateway's cost
//! over it is our own code, not the V8 runtime's. Built for wasm32-wasip1 only; on the host
//! the crate is empty (proxy-wasm's host imports do not link there).
//!
//! With the plugin configuration `IP:PORT` it also chooses the upstream through filter
//! state (the `set_envoy_filter_state` foreign function naming the ORIGINAL_DST cluster's
//! address, once per request); with `HEADER=IP:PORT` it replaces the request header
//! `HEADER` with the address instead, for an ORIGINAL_DST cluster with `use_http_header`.
//! Either is the floor of any filter that picks the replica itself, to tell that
//! mechanism's cost from the gateway's own code (and the two mechanisms from each other).

#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot::default()) });
}}

/// Filter-state key the ORIGINAL_DST cluster reads (with `use_http_header: false`).
const ORIGINAL_DST_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// How the no-op filter points the ORIGINAL_DST cluster at the upstream, if it does.
#[derive(Clone)]
enum Upstream {
    /// The encoded `SetEnvoyFilterStateArguments` naming the address.
    FilterState(Rc<[u8]>),
    /// A request header (name, address) the cluster reads.
    Header(Rc<str>, Rc<str>),
}

#[derive(Default)]
struct NoopRoot {
    upstream: Option<Upstream>,
}

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX);
        if let Ok(Some(address)) = config {
            let address = String::from_utf8_lossy(&address).trim().to_owned();
            self.upstream = match address.split_once('=') {
                Some((header, address)) => Some(Upstream::Header(header.into(), address.into())),
                None if !address.is_empty() => Some(Upstream::FilterState(
                    set_filter_state(ORIGINAL_DST_KEY, &address).into(),
                )),
                None => None,
            };
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop {
            upstream: self.upstream.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    upstream: Option<Upstream>,
}

impl Context for Noop {}

impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The one host call every routing filter makes, made the way the gateway makes it
        // (a host error is a value, not the SDK's unwrap); the value is deliberately unused.
        let _path = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        match &self.upstream {
            Some(Upstream::FilterState(argument)) => {
                let _ = hostcalls::call_foreign_function("set_envoy_filter_state", Some(argument));
            }
            Some(Upstream::Header(name, address)) => {
                // Replaces (never adds a second value): proxy_replace_header_map_value.
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    name,
                    Some(address.as_ref()),
                );
            }
            None => {}
        }
        Action::Continue
    }
}

/// `SetEnvoyFilterStateArguments { path = 1; value = 2; span = 3 (DownstreamRequest) }`
/// (both strings are far shorter than 128 bytes: one-byte lengths).
fn set_filter_state(path: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x0A, path.len() as u8];
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&[0x12, value.len() as u8]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&[0x18, 0x01]);
    out
}
