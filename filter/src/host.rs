//! Every call the filter makes to its host, as one small trait. The stream and the worker
//! are written against [`Host`] and never touch Proxy-Wasm: the glue implements it with
//! `proxy_wasm::hostcalls`, and the unit tests with a recording fake
//! ([`fake::FakeHost`]) that plays Envoy's part and keeps the calls for the assertions.

use std::fmt;
use std::time::Duration;

use crate::metrics::Metric;
use crate::pairs::HeaderPairs;

#[cfg(test)]
pub mod fake;

/// A header map of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    /// The headers of the answer to a call out (in `on_http_call_response`).
    CallHeaders,
}

/// A byte buffer of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buffer {
    /// The request body buffered since the filter last let it go on.
    RequestBody,
    /// The response body buffered since the filter last let it go on.
    ResponseBody,
    /// The body of the answer to a call out.
    CallBody,
    /// The plugin configuration (in `on_configure`).
    Configuration,
}

/// What a callback tells the host to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// Log levels, lowest first (Proxy-Wasm's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Why a host call failed (the Proxy-Wasm status, for logs and for compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Shared data changed since it was read (`set_shared` with a stale `cas`).
    #[error("compare-and-swap mismatch")]
    CasMismatch,
    /// The key, header map or buffer does not exist here.
    #[error("not found")]
    NotFound,
    /// The host refused an argument (often: the call is not allowed in this phase).
    #[error("bad argument")]
    BadArgument,
    /// Any other failure; holds the host's status code.
    #[error("host status {0}")]
    Other(u32),
}

/// A call out to another cluster (`dispatch_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub cluster: &'a str,
    /// Pseudo-headers first (`:method`, `:path`, `:authority`), then the others.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// The host, as the filter's logic sees it. Methods that only read return `None` or an
/// empty value when the host cannot answer; the logic never panics on a host failure.
pub trait Host {
    /// One header's value (the first, if repeated).
    fn header(&mut self, map: Map, name: &str) -> Option<Vec<u8>>;
    /// Every header of `map`, in order (one host call, whatever their number), as the one
    /// buffer the host serialised them into.
    fn headers(&mut self, map: Map) -> Result<HeaderPairs, HostError>;
    /// Sets (replaces) a header.
    fn set_header(&mut self, map: Map, name: &str, value: &str) -> Result<(), HostError>;
    /// Removes a header (every value of it).
    fn remove_header(&mut self, map: Map, name: &str) -> Result<(), HostError>;

    /// Up to `max` bytes of `buffer` from `start`.
    fn body(&mut self, buffer: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError>;
    /// Replaces `size` bytes of `buffer` from `start` with `bytes`.
    fn set_body(
        &mut self,
        buffer: Buffer,
        start: usize,
        size: usize,
        bytes: &[u8],
    ) -> Result<(), HostError>;

    /// Sends a call out; its answer comes to the calling context under the returned token.
    fn dispatch(&mut self, call: &Call<'_>) -> Result<u32, HostError>;

    /// Shared data (one store per Envoy, shared by every VM of the plugin): the value and
    /// its compare-and-swap token.
    fn shared(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError>;
    /// Writes shared data; with `cas`, only if nobody wrote it since that token was read.
    fn set_shared(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;

    /// Tells the ORIGINAL_DST cluster where this request goes (`IP:PORT`), through filter
    /// state a client cannot forge.
    fn set_upstream(&mut self, address: &str) -> Result<(), HostError>;
    /// Lets a request the filter paused go on.
    fn resume_request(&mut self) -> Result<(), HostError>;
    /// Answers the client directly (at most once per request).
    fn reply(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError>;
    /// A stream property (e.g. `["response", "flags"]`).
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>>;

    /// Adds `count` to a counter.
    fn increment(&mut self, metric: Metric, count: u64);
    /// Sets the root context's tick period, the next tick one period from now. Called from
    /// a request's context it sets that of the request's root context (Envoy re-arms the
    /// root context's timer), which is how a request brings the next tick forward.
    fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError>;
    /// The host's clock, in ns since the Unix epoch (0 if it cannot tell).
    fn now(&mut self) -> u64;

    /// Whether a message at `level` would be logged: cached, no host call.
    fn log_enabled(&self, level: Level) -> bool;
    /// Logs a message (call only when [`Host::log_enabled`]).
    fn log(&mut self, level: Level, message: fmt::Arguments<'_>);
    /// Reads the host's log level again (on the tick, so that a change through Envoy's
    /// admin API applies within one tick).
    fn follow_log_level(&mut self);
}

/// Logs through a [`Host`] only when the level is enabled: below it, the message is not
/// even formatted.
#[macro_export]
macro_rules! log_at {
    ($host:expr, $level:expr, $($arg:tt)+) => {{
        let level = $level;
        if $crate::host::Host::log_enabled(&*$host, level) {
            $crate::host::Host::log(&mut *$host, level, format_args!($($arg)+));
        }
    }};
}

#[macro_export]
macro_rules! debug {
    ($host:expr, $($arg:tt)+) => { $crate::log_at!($host, $crate::host::Level::Debug, $($arg)+) };
}

#[macro_export]
macro_rules! info {
    ($host:expr, $($arg:tt)+) => { $crate::log_at!($host, $crate::host::Level::Info, $($arg)+) };
}

#[macro_export]
macro_rules! warn {
    ($host:expr, $($arg:tt)+) => { $crate::log_at!($host, $crate::host::Level::Warn, $($arg)+) };
}

#[macro_export]
macro_rules! error {
    ($host:expr, $($arg:tt)+) => { $crate::log_at!($host, $crate::host::Level::Error, $($arg)+) };
}
