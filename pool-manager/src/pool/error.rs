//! What can go wrong in a pool operation; [`crate::admin`] maps each variant to an HTTP
//! status (the number in each variant's doc).

use std::time::Duration;

use crate::placement::PlacementError;
use crate::spec::SpecError;

/// Why a pool operation failed; [`crate::admin`] maps each to an HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// No model of that name is registered (404).
    #[error("model '{0}' is not registered")]
    UnknownModel(String),
    /// The name has the shape of a Triton-side version name (`...--` and 8 hex digits),
    /// which the gateway keeps for updates (400).
    #[error("model name '{0}' is reserved: names ending in '--' and 8 hex digits name versions loaded by updates")]
    ReservedName(String),
    /// No alias of that name (404).
    #[error("alias '{0}' does not exist")]
    UnknownAlias(String),
    /// The alias request is wrong: no target, a bad weight, a target that is no model (400).
    #[error("invalid alias: {0}")]
    BadAlias(String),
    /// The name is taken by a model (for an alias) or by an alias (for a model) (409).
    #[error(
        "the name '{name}' is already used by {taken_by}; models and aliases share one namespace"
    )]
    NameTaken {
        name: String,
        taken_by: &'static str,
    },
    /// The model is the target of an alias, so it cannot be deleted (409).
    #[error("model '{model}' is a target of alias '{alias}'; move or delete the alias first")]
    AliasTarget { model: String, alias: String },
    /// An alias was not moved: its new target could not be loaded on as many copies as
    /// the old targets have (503).
    #[error("alias '{alias}' not moved: model '{model}' has {loaded} of the {needed} copies it needs: {reason}")]
    AliasNotReady {
        alias: String,
        model: String,
        loaded: usize,
        needed: usize,
        reason: String,
    },
    /// Another update of the model is loading, or the version it would load is still
    /// being unloaded (409).
    #[error("model '{name}' is being updated (version {version}); retry once that is done")]
    UpdateInProgress { name: String, version: String },
    /// The registration itself is wrong (400).
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The model can never fit: more than any replica allows under its high watermark (400).
    #[error("model '{name}' needs {need_memory} bytes of memory and {need_gpu} of GPU memory; no replica allows that much under its high watermark ({high:.0}% of capacity)")]
    TooBig {
        name: String,
        need_memory: u64,
        need_gpu: u64,
        high: f64,
    },
    /// More pinned copies than replicas that could hold them (400).
    #[error(
        "model '{name}' asks for {min_copies} pinned copies but only {fit} replicas can hold it"
    )]
    TooManyCopies {
        name: String,
        min_copies: u32,
        fit: usize,
    },
    /// The load was tried and failed; `reason` is the replica's own (503).
    #[error("model '{name}' failed to load: {reason}{}", retry_text(*.retry_in))]
    LoadFailed {
        name: String,
        reason: String,
        retry_in: Option<Duration>,
    },
    /// The model has no version of that number, as far as its kept metadata says (404).
    #[error("model '{name}' has no version {version}")]
    UnknownVersion { name: String, version: String },
    /// No replica can take the model now (503).
    #[error("no replica can take model '{name}': {source}")]
    NoCapacity {
        name: String,
        source: PlacementError,
    },
    /// Room was planned but freeing it failed (503).
    #[error(
        "model '{name}' could not be placed: unloading '{victim}' from {replica} failed: {reason}"
    )]
    EvictionFailed {
        name: String,
        victim: String,
        replica: String,
        reason: String,
    },
    /// The load did not finish within the route wait (503).
    #[error("model '{name}' is still loading after {waited:?}; retry later")]
    StillLoading { name: String, waited: Duration },
    /// Server-level request and no replica is healthy (503).
    #[error("no healthy replica")]
    NoHealthyReplica,
    /// The durable registry could not record the change; nothing changed (503).
    #[error("the registry could not be saved: {0}")]
    Store(String),
    /// Too many requests are already waiting for model loads (503).
    #[error("too many requests are waiting for models to load ({0}); retry later")]
    Overloaded(usize),
    /// A usage report that does not follow the contract (400).
    #[error("invalid usage report: {0}")]
    BadReport(String),
    /// More gateway workers report requests in flight than the pool-manager keeps (429).
    #[error("more than {0} reporters have requests in flight; retry later")]
    TooManyReporters(usize),
    /// No replica of that name is configured (404).
    #[error("replica '{0}' is not configured")]
    UnknownReplica(String),
    /// This instance does not lead the pool (or has not rebuilt its view yet), so it may
    /// not place or load (503; the admin layer forwards such calls to the leader).
    #[error("this instance does not lead the pool; retry")]
    NotLeader,
    /// A bug or a panicked task (500).
    #[error("internal error: {0}")]
    Internal(String),
}

fn retry_text(retry_in: Option<Duration>) -> String {
    match retry_in {
        Some(d) => format!(" (next attempt in {:.1}s)", d.as_secs_f64()),
        None => String::new(),
    }
}
