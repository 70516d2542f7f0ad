//! Integration harness: starts real Triton replicas, the real pool-manager binary and real
//! Envoy (with the real Wasm filter) on free loopback ports, and stops them by process
//! group when dropped. Scenarios live in `tests/*.rs`, one file per behaviour.
//!
//! The binaries are built by `make test` before the scenarios run; `paths` finds them.

pub mod etcd;
pub mod ha;
pub mod models;
pub mod paths;
pub mod process;
pub mod servers;
pub mod stack;

pub use stack::{Envoy, PoolManager, Stack, StackOptions, Triton};
