//! Talking to model servers. The [`ReplicaClient`] trait is the only thing the pool knows
//! about a replica, so unit tests run the pool against an in-memory fake and production
//! against Triton's V2 model-repository API ([`triton::TritonClient`]).

#[cfg(test)]
pub mod fake;
pub mod triton;

use async_trait::async_trait;

/// Why a call to a replica failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// No connection could be made or it broke before an answer.
    #[error("replica unreachable: {0}")]
    Unreachable(String),
    /// The replica did not answer within the call's timeout.
    #[error("replica did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The replica answered with an error; `message` is its own reason (Triton's
    /// `{"error": ...}` text where it gave one).
    #[error("{message}")]
    Rejected { status: u16, message: String },
    /// The replica answered something we could not read.
    #[error("unexpected answer from replica: {0}")]
    BadResponse(String),
}

/// One entry of a replica's repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// Triton's state, e.g. `READY`, `UNAVAILABLE`, `LOADING`, `UNLOADING`.
    pub state: String,
    pub reason: String,
}

/// Memory a loaded model uses, as the server reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Host memory (Triton's CPU and CPU_PINNED entries).
    pub cpu: u64,
    pub gpu: u64,
}

/// The model-server operations the pool drives. Implementations must be cheap to call
/// concurrently; each call is bounded by its own timeout.
#[async_trait]
pub trait ReplicaClient: Send + Sync + 'static {
    /// Loads `model` from the replica's model repository and returns once it is ready.
    async fn load(&self, model: &str) -> Result<(), ReplicaError>;
    /// Loads `model` from `files` sent in the request itself (Triton's file override), for
    /// replicas that share no disk with the pool-manager. Clients that cannot refuse.
    async fn load_files(
        &self,
        model: &str,
        files: &crate::storage::ModelFiles,
    ) -> Result<(), ReplicaError> {
        let _ = (model, files);
        Err(ReplicaError::Rejected {
            status: 501,
            message: "this replica client cannot load models from request files".into(),
        })
    }
    /// Unloads `model`; unloading a model that is not loaded is not an error.
    async fn unload(&self, model: &str) -> Result<(), ReplicaError>;
    /// Succeeds when the server is ready to take requests.
    async fn ready(&self) -> Result<(), ReplicaError>;
    /// What the server's repository holds, loaded or not.
    async fn index(&self) -> Result<Vec<IndexEntry>, ReplicaError>;
    /// Memory the loaded `model` uses by the server's own estimate, where it has one
    /// (Triton measures it at load time for some backends; Python models report none).
    async fn memory_usage(&self, model: &str) -> Result<MemoryUsage, ReplicaError>;
    /// The loaded `model`'s V2 metadata (`GET /v2/models/{m}`), a JSON object.
    async fn metadata(&self, model: &str) -> Result<serde_json::Value, ReplicaError>;
    /// The loaded `model`'s configuration (`GET /v2/models/{m}/config`), a JSON object.
    async fn config(&self, model: &str) -> Result<serde_json::Value, ReplicaError>;
    /// Whether the replica has `model` loaded and ready (`GET /v2/models/{m}/ready`).
    async fn model_ready(&self, model: &str) -> Result<bool, ReplicaError>;
    /// Sends later calls to `address` (the replica's host name now resolves there).
    fn set_address(&self, _address: std::net::SocketAddr) {}
}
