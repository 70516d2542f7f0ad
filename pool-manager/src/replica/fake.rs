//! An in-memory [`ReplicaClient`] for unit tests: counts calls, can be slowed down, made to
//! fail loads, or marked not ready.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{IndexEntry, MemoryUsage, ReplicaClient, ReplicaError};

#[derive(Debug, Default)]
pub struct FakeReplica {
    pub loads: AtomicUsize,
    pub unloads: AtomicUsize,
    pub load_delay_ms: AtomicUsize,
    pub down: AtomicBool,
    /// Readiness probes (`ready`) answered so far.
    pub ready_calls: AtomicUsize,
    /// The next this many probes fail, whatever `down` says (a blip).
    pub failing_probes: AtomicUsize,
    /// How long `ready` and `model_ready` take.
    pub ready_delay_ms: AtomicUsize,
    /// Index calls made so far.
    pub index_calls: AtomicUsize,
    /// Held by a test to keep an index call from answering: the answer is what was loaded
    /// when the call came in, as with a real server whose answer is on its way.
    pub index_hold: tokio::sync::Mutex<()>,
    pub fail_loads_with: Mutex<Option<String>>,
    pub loaded: Mutex<BTreeSet<String>>,
    /// What `memory_usage` reports for every model.
    pub reported_usage: Mutex<MemoryUsage>,
    /// Loads that carried the model's files, with the files' paths.
    pub file_loads: Mutex<Vec<(String, Vec<String>)>>,
}

impl FakeReplica {
    /// A configured replica `r{i}` of `memory` bytes on 127.0.0.1:{8000 + i}, served by this
    /// fake: the one shape every pool and admin fixture needs.
    pub fn as_replica(self: &Arc<Self>, i: usize, memory: u64) -> crate::pool::Replica {
        let port = 8000 + i;
        crate::pool::Replica {
            id: crate::spec::ReplicaId::new(&format!("r{i}")).unwrap(),
            url: url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port as u16))),
            grpc_port: None,
            capacity: crate::placement::Resources::new(memory, 0),
            client: self.clone() as Arc<dyn ReplicaClient>,
        }
    }

    pub fn loaded(&self) -> BTreeSet<String> {
        self.loaded.lock().unwrap().clone()
    }

    async fn ready_delay(&self) {
        let delay = self.ready_delay_ms.load(Ordering::SeqCst) as u64;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
}

#[async_trait]
impl ReplicaClient for FakeReplica {
    async fn load(&self, model: &str) -> Result<(), ReplicaError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let delay = self.load_delay_ms.load(Ordering::SeqCst) as u64;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(ReplicaError::Unreachable("connection refused".into()));
        }
        if let Some(reason) = self.fail_loads_with.lock().unwrap().clone() {
            return Err(ReplicaError::Rejected {
                status: 400,
                message: reason,
            });
        }
        self.loaded.lock().unwrap().insert(model.to_owned());
        Ok(())
    }

    async fn load_files(
        &self,
        model: &str,
        files: &crate::storage::ModelFiles,
    ) -> Result<(), ReplicaError> {
        let paths = files.files.iter().map(|(p, _)| p.clone()).collect();
        self.file_loads
            .lock()
            .unwrap()
            .push((model.to_owned(), paths));
        self.load(model).await
    }

    async fn unload(&self, model: &str) -> Result<(), ReplicaError> {
        self.unloads.fetch_add(1, Ordering::SeqCst);
        self.loaded.lock().unwrap().remove(model);
        Ok(())
    }

    async fn ready(&self) -> Result<(), ReplicaError> {
        self.ready_calls.fetch_add(1, Ordering::SeqCst);
        self.ready_delay().await;
        let blip = self
            .failing_probes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if blip || self.down.load(Ordering::SeqCst) {
            Err(ReplicaError::Unreachable("connection refused".into()))
        } else {
            Ok(())
        }
    }

    async fn memory_usage(&self, _model: &str) -> Result<MemoryUsage, ReplicaError> {
        Ok(*self.reported_usage.lock().unwrap())
    }

    async fn metadata(&self, model: &str) -> Result<serde_json::Value, ReplicaError> {
        Ok(serde_json::json!({
            "name": model, "versions": ["1"], "platform": "python",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        }))
    }

    async fn config(&self, model: &str) -> Result<serde_json::Value, ReplicaError> {
        Ok(serde_json::json!({"name": model, "max_batch_size": 8}))
    }

    async fn model_ready(&self, model: &str) -> Result<bool, ReplicaError> {
        self.ready_delay().await;
        if self.down.load(Ordering::SeqCst) {
            return Err(ReplicaError::Unreachable("connection refused".into()));
        }
        Ok(self.loaded.lock().unwrap().contains(model))
    }

    async fn index(&self) -> Result<Vec<IndexEntry>, ReplicaError> {
        let answer = self
            .loaded()
            .into_iter()
            .map(|name| IndexEntry {
                name,
                state: "READY".into(),
                reason: String::new(),
            })
            .collect();
        self.index_calls.fetch_add(1, Ordering::SeqCst);
        let _answered = self.index_hold.lock().await;
        Ok(answer)
    }
}
