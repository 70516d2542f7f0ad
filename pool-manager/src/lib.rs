//! The pool-manager: the control plane of the multi-model gateway. It keeps the registry of
//! models and the model-to-replica table, places models on Triton replicas, drives Triton's
//! load/unload API, and answers the gateway filter's route calls.
//!
//! The binary (`main.rs`) only parses flags and wires these modules together.

pub mod admin;
pub mod config;
pub mod election;
pub mod events;
pub mod eviction;
pub mod metadata;
pub mod metrics;
pub mod placement;
pub mod pool;
pub mod quantity;
pub mod replica;
pub mod repository;
pub mod resolve;
pub mod sim;
pub mod spec;
pub mod storage;
pub mod store;
