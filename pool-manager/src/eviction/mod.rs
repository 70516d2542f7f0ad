//! Eviction beyond LRU (issue 18): a cost-aware victim order, the workloads it is judged
//! on, and the offline references it is judged against.
//!
//! - [`gdsf`]: GreedyDual-Size-Frequency, the policy: pure state plus an ordering of
//!   eviction candidates, so any planner can use it as its victim order.
//! - [`policy`]: the victim order the live pool and the simulator plan with, and its
//!   feeding (`--eviction lru|gdsf`).
//! - [`flags`]: the pool-manager's eviction flags, turned into that order and its tuning.
//! - [`traces`]: seeded synthetic workloads (sizes, requests, arrival times, load costs).
//! - [`replay`]: a single cache with the pool's watermarks, to compare victim orders.
//! - [`knapsack`]: the best static set of models under fixed popularity, a reference for
//!   what an online policy can reach at all.
//! - [`offline`]: Belady's idea lives in [`replay::Victims::Belady`]; FOO, PFOO-L and
//!   PFOO-U bound what any schedule could do.

pub mod flags;
pub mod gdsf;
pub mod knapsack;
pub mod offline;
pub mod policy;
pub mod replay;
pub mod traces;

pub use flags::EvictionArgs;
pub use gdsf::{Aging, Gdsf, GdsfConfig, MissCost};
pub use policy::{EvictionCost, EvictionPolicy, OrderInForce, VictimState};
