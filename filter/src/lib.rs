//! `mm-filter`: the Envoy (Proxy-Wasm) HTTP filter of the multi-model gateway. For each
//! inference request it works out which model the path names, asks the pool-manager which
//! Triton replica serves that model, and routes the request there through Envoy's
//! ORIGINAL_DST cluster; it also counts routed and in-flight requests per (model, replica)
//! and reports them to the pool-manager. Everything but the `glue` module is plain Rust
//! written against the [`host::Host`] trait and tested natively with a recording fake;
//! only that `wasm32`-only module talks to Envoy.

pub mod host;

pub mod config;
pub mod control;
pub mod decision;
pub mod failure;
pub mod filter_state;
pub mod grpc;
pub mod metadata;
pub mod metrics;
pub mod pairs;
pub mod refresh;
pub mod reply;
pub mod route;
pub mod shared;
pub mod stream;
pub mod table;
pub mod target;
pub mod usage;
pub mod v1;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod glue;
