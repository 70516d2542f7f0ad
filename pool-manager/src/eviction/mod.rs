//! Eviction beyond LRU (issue 18): a cost-aware victim order, the workloads it is judged
//! on, and the offline references it is judged against.
//!
//! - [`traces`]: seeded synthetic workloads (sizes, requests, arrival times, load costs).

pub mod traces;
