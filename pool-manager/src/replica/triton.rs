//! [`ReplicaClient`] over Triton's HTTP V2 model-repository extension
//! (`/v2/repository/index`, `/v2/repository/models/{name}/load|unload`) and its health API.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{IndexEntry, MemoryUsage, ReplicaClient, ReplicaError};

/// Timeouts for calls to one Triton server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// A load is synchronous on Triton's side and holds one of its HTTP threads for the
    /// whole load, so it gets its own, generous bound.
    pub load: Duration,
    /// Everything else: unload, index, ready.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            load: Duration::from_secs(120),
            call: Duration::from_secs(10),
        }
    }
}

/// A client for one Triton server.
#[derive(Debug, Clone)]
pub struct TritonClient {
    /// `http://IP:PORT` of the replica; replaced when its name resolves elsewhere.
    base: std::sync::Arc<std::sync::RwLock<String>>,
    http: reqwest::Client,
    timeouts: Timeouts,
    /// Models loaded from request files are missing from Triton's repository index; when
    /// set, `index` adds the ones `/v2/models/stats` lists as loaded.
    lists_file_loads: bool,
}

impl TritonClient {
    /// `base` is the server's HTTP root, e.g. `http://127.0.0.1:8000`.
    pub fn new(base: &url::Url, timeouts: Timeouts) -> Result<Self, ReplicaError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ReplicaError::Unreachable(e.to_string()))?;
        Ok(Self {
            base: std::sync::Arc::new(std::sync::RwLock::new(
                base.as_str().trim_end_matches('/').to_owned(),
            )),
            http,
            timeouts,
            lists_file_loads: false,
        })
    }

    /// For `--file-transfer load-request`: models are loaded from request files, which
    /// Triton 2.51's repository index does not list, so `index` adds them from
    /// `/v2/models/stats` (which lists every loaded model) as `READY`.
    pub fn with_file_loads(mut self, yes: bool) -> Self {
        self.lists_file_loads = yes;
        self
    }

    /// Names of the models `/v2/models/stats` reports (every loaded model).
    async fn loaded_by_stats(&self) -> Result<Vec<String>, ReplicaError> {
        #[derive(Deserialize)]
        struct Stats {
            #[serde(default)]
            model_stats: Vec<Named>,
        }
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        let request = self
            .http
            .get(format!("{}/v2/models/stats", self.base()))
            .timeout(self.timeouts.call);
        let text = finish(request.send().await, self.timeouts.call).await?;
        let stats: Stats =
            serde_json::from_str(&text).map_err(|e| ReplicaError::BadResponse(e.to_string()))?;
        Ok(stats.model_stats.into_iter().map(|s| s.name).collect())
    }

    fn base(&self) -> String {
        self.base
            .read()
            .map(|b| b.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// `GET path`, answered with a JSON object.
    async fn get_object(&self, path: &str) -> Result<serde_json::Value, ReplicaError> {
        let request = self
            .http
            .get(format!("{}{path}", self.base()))
            .timeout(self.timeouts.call);
        let text = finish(request.send().await, self.timeouts.call).await?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ReplicaError::BadResponse(e.to_string()))?;
        if !value.is_object() {
            return Err(ReplicaError::BadResponse(format!(
                "{path} did not answer a JSON object"
            )));
        }
        Ok(value)
    }

    async fn post(
        &self,
        path: &str,
        body: &'static str,
        timeout: Duration,
    ) -> Result<String, ReplicaError> {
        let request = self
            .http
            .post(format!("{}{path}", self.base()))
            .header("content-type", "application/json")
            .body(body)
            .timeout(timeout);
        finish(request.send().await, timeout).await
    }
}

async fn finish(
    sent: Result<reqwest::Response, reqwest::Error>,
    timeout: Duration,
) -> Result<String, ReplicaError> {
    let response = sent.map_err(|e| classify(e, timeout))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| classify(e, timeout))?;
    if status.is_success() {
        return Ok(text);
    }
    #[derive(Deserialize)]
    struct TritonError {
        error: String,
    }
    let message = serde_json::from_str::<TritonError>(&text)
        .map(|e| e.error)
        .unwrap_or_else(|_| {
            format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )
        });
    Err(ReplicaError::Rejected {
        status: status.as_u16(),
        message,
    })
}

fn classify(e: reqwest::Error, timeout: Duration) -> ReplicaError {
    if e.is_timeout() {
        ReplicaError::Timeout(timeout)
    } else {
        // The error's Display omits the cause chain; the cause is what an operator needs.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        ReplicaError::Unreachable(text)
    }
}

#[async_trait]
impl ReplicaClient for TritonClient {
    async fn load(&self, model: &str) -> Result<(), ReplicaError> {
        self.post(
            &format!("/v2/repository/models/{model}/load"),
            "{}",
            self.timeouts.load,
        )
        .await
        .map(drop)
    }

    async fn load_files(
        &self,
        model: &str,
        files: &crate::storage::ModelFiles,
    ) -> Result<(), ReplicaError> {
        use base64::Engine;
        let mut parameters = serde_json::Map::new();
        parameters.insert("config".into(), files.config.clone().into());
        for (path, data) in &files.files {
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            parameters.insert(format!("file:{path}"), encoded.into());
        }
        let body = serde_json::json!({ "parameters": parameters }).to_string();
        let timeout = self.timeouts.load;
        let request = self
            .http
            .post(format!("{}/v2/repository/models/{model}/load", self.base()))
            .header("content-type", "application/json")
            .body(body)
            .timeout(timeout);
        finish(request.send().await, timeout).await.map(drop)
    }

    async fn unload(&self, model: &str) -> Result<(), ReplicaError> {
        match self
            .post(
                &format!("/v2/repository/models/{model}/unload"),
                "{}",
                self.timeouts.call,
            )
            .await
        {
            Ok(_) => Ok(()),
            // Not in the repository at all: nothing to unload.
            Err(ReplicaError::Rejected {
                status: 400 | 404, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn ready(&self) -> Result<(), ReplicaError> {
        let request = self
            .http
            .get(format!("{}/v2/health/ready", self.base()))
            .timeout(self.timeouts.call);
        finish(request.send().await, self.timeouts.call)
            .await
            .map(drop)
    }

    async fn memory_usage(&self, model: &str) -> Result<MemoryUsage, ReplicaError> {
        let request = self
            .http
            .get(format!("{}/v2/models/{model}/stats", self.base()))
            .timeout(self.timeouts.call);
        let text = finish(request.send().await, self.timeouts.call).await?;
        parse_memory_usage(&text)
    }

    async fn metadata(&self, model: &str) -> Result<serde_json::Value, ReplicaError> {
        self.get_object(&format!("/v2/models/{model}")).await
    }

    async fn config(&self, model: &str) -> Result<serde_json::Value, ReplicaError> {
        self.get_object(&format!("/v2/models/{model}/config")).await
    }

    async fn model_ready(&self, model: &str) -> Result<bool, ReplicaError> {
        let request = self
            .http
            .get(format!("{}/v2/models/{model}/ready", self.base()))
            .timeout(self.timeouts.call);
        match finish(request.send().await, self.timeouts.call).await {
            Ok(_) => Ok(true),
            // 400: not in the repository; 404: nothing loaded; 503: version not ready.
            Err(ReplicaError::Rejected {
                status: 400 | 404 | 503,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn set_address(&self, address: std::net::SocketAddr) {
        let mut base = self.base.write().unwrap_or_else(|p| p.into_inner());
        *base = format!("http://{address}");
    }

    async fn index(&self) -> Result<Vec<IndexEntry>, ReplicaError> {
        #[derive(Deserialize)]
        struct Raw {
            name: String,
            #[serde(default)]
            state: String,
            #[serde(default)]
            reason: String,
        }
        let text = self
            .post("/v2/repository/index", "{}", self.timeouts.call)
            .await?;
        let raw: Vec<Raw> =
            serde_json::from_str(&text).map_err(|e| ReplicaError::BadResponse(e.to_string()))?;
        let mut index: Vec<IndexEntry> = raw
            .into_iter()
            .map(|r| IndexEntry {
                name: r.name,
                state: r.state,
                reason: r.reason,
            })
            .collect();
        if self.lists_file_loads {
            for name in self.loaded_by_stats().await? {
                if !index.iter().any(|e| e.name == name) {
                    index.push(IndexEntry {
                        name,
                        state: "READY".into(),
                        reason: String::new(),
                    });
                }
            }
        }
        Ok(index)
    }
}

/// Sums the `memory_usage` entries of every version in a `/v2/models/{m}/stats` answer.
fn parse_memory_usage(text: &str) -> Result<MemoryUsage, ReplicaError> {
    #[derive(Deserialize)]
    struct Stats {
        #[serde(default)]
        model_stats: Vec<ModelStats>,
    }
    #[derive(Deserialize)]
    struct ModelStats {
        #[serde(default)]
        memory_usage: Vec<Usage>,
    }
    #[derive(Deserialize)]
    struct Usage {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        byte_size: u64,
    }
    let stats: Stats =
        serde_json::from_str(text).map_err(|e| ReplicaError::BadResponse(e.to_string()))?;
    let mut usage = MemoryUsage::default();
    for entry in stats.model_stats.iter().flat_map(|s| &s.memory_usage) {
        match entry.kind.as_str() {
            "GPU" => usage.gpu = usage.gpu.saturating_add(entry.byte_size),
            _ => usage.cpu = usage.cpu.saturating_add(entry.byte_size),
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_memory_usage_by_kind() {
        let text = r#"{"model_stats":[{"name":"m","version":"1","memory_usage":[
            {"type":"CPU","id":0,"byte_size":100},{"type":"CPU_PINNED","id":0,"byte_size":20},
            {"type":"GPU","id":0,"byte_size":3000},{"type":"GPU","id":1,"byte_size":4000}]},
            {"name":"m","version":"2","memory_usage":[]}]}"#;
        assert_eq!(
            parse_memory_usage(text).unwrap(),
            MemoryUsage {
                cpu: 120,
                gpu: 7000
            }
        );
        let python = r#"{"model_stats":[{"name":"m","version":"1","memory_usage":[]}]}"#;
        assert_eq!(parse_memory_usage(python).unwrap(), MemoryUsage::default());
        assert!(parse_memory_usage("nope").is_err());
    }
}
