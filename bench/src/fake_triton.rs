//! Fake Triton replicas for the control-plane scale benchmark: one process serving the
//! few endpoints the pool-manager calls (ready, index, load, unload, stats, metadata) on
//! any number of loopback ports, loading instantly. It measures the pool-manager, not
//! Triton; the real Triton is used everywhere else.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

type Loaded = Arc<Mutex<HashSet<String>>>;

fn app(loaded: Loaded) -> Router {
    Router::new()
        .route("/v2/health/ready", get(|| async { "" }))
        .route(
            "/v2/repository/index",
            post(|State(l): State<Loaded>| async move {
                let names: Vec<Value> = l
                    .lock()
                    .map(|s| s.iter().map(|n| json!({"name": n, "state": "READY"})).collect())
                    .unwrap_or_default();
                Json(Value::Array(names))
            }),
        )
        .route(
            "/v2/repository/models/{name}/load",
            post(|State(l): State<Loaded>, Path(n): Path<String>| async move {
                if let Ok(mut s) = l.lock() {
                    s.insert(n);
                }
                ""
            }),
        )
        .route(
            "/v2/repository/models/{name}/unload",
            post(|State(l): State<Loaded>, Path(n): Path<String>| async move {
                if let Ok(mut s) = l.lock() {
                    s.remove(&n);
                }
                ""
            }),
        )
        .route("/v2/models/{name}/stats", get(|| async { Json(json!({"model_stats": []})) }))
        .route(
            "/v2/models/{name}",
            get(|Path(n): Path<String>| async move {
                Json(json!({"name": n, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}))
            }),
        )
        .route("/v2/models/{name}/ready", get(|| async { "" }))
        .with_state(loaded)
}

/// Running fake replicas; they stop when this is dropped.
pub struct FakeReplicas {
    pub ports: Vec<u16>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeReplicas {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts `n` fake replicas on free loopback ports.
pub async fn start(n: usize) -> anyhow::Result<FakeReplicas> {
    let mut replicas = FakeReplicas {
        ports: Vec::with_capacity(n),
        tasks: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        replicas.ports.push(listener.local_addr()?.port());
        let router = app(Loaded::default());
        replicas.tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
    }
    Ok(replicas)
}
