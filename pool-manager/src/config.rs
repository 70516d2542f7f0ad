//! Replica configuration: which Triton servers form the pool and how much memory each
//! offers to models, from `--replica` flags and/or a TOML file. Addresses are resolved once
//! at start-up to IP literals, because Envoy's ORIGINAL_DST cluster connects to an IP:port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::quantity::{parse_bytes, Bytes};
use crate::spec::ReplicaId;

/// Why the replica configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("replica {0:?}: expected name=NAME,url=http://HOST:PORT,memory=QUANTITY")]
    Shape(String),
    #[error("replica {spec:?}: {reason}")]
    Field { spec: String, reason: String },
    #[error("reading config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("replica name {0:?} is configured twice")]
    Duplicate(String),
    #[error("no replicas configured: pass --replica or --config")]
    Empty,
    #[error("replica {name}: cannot resolve {url}: {reason}")]
    Resolve {
        name: String,
        url: String,
        reason: String,
    },
}

/// One replica as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub name: ReplicaId,
    /// HTTP root of the Triton server.
    pub url: url::Url,
    /// Host memory the replica offers to models, in bytes.
    pub memory: u64,
    /// GPU memory the replica offers to models, in bytes (0: no GPU).
    pub gpu_memory: u64,
    /// Port of the replica's gRPC endpoint on the same host, if it serves gRPC.
    pub grpc_port: Option<u16>,
}

impl ReplicaConfig {
    fn build(
        spec: &str,
        name: &str,
        url: &str,
        memory: u64,
        gpu_memory: u64,
        grpc_port: Option<u16>,
    ) -> Result<Self, ConfigError> {
        let field = |reason: String| ConfigError::Field {
            spec: spec.to_owned(),
            reason,
        };
        let name = ReplicaId::new(name).map_err(|e| field(e.to_string()))?;
        let url = url::Url::parse(url).map_err(|e| field(format!("url: {e}")))?;
        if url.scheme() != "http" || url.host_str().is_none() {
            return Err(field("url must be http://HOST[:PORT]".into()));
        }
        if memory == 0 {
            return Err(field("memory must be greater than zero".into()));
        }
        if grpc_port == Some(0) {
            return Err(field("grpcPort must be 1..65535".into()));
        }
        Ok(Self {
            name,
            url,
            memory,
            gpu_memory,
            grpc_port,
        })
    }

    /// Resolves the URL's host to a socket address (IPv4 preferred).
    pub async fn resolve(&self) -> Result<SocketAddr, ConfigError> {
        let err = |reason: String| ConfigError::Resolve {
            name: self.name.to_string(),
            url: self.url.to_string(),
            reason,
        };
        let host = self.url.host_str().ok_or_else(|| err("no host".into()))?;
        let port = self
            .url
            .port_or_known_default()
            .ok_or_else(|| err("no port".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| err(e.to_string()))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| err("no address".into()))
    }
}

impl FromStr for ReplicaConfig {
    type Err = ConfigError;

    /// `name=r0,url=http://127.0.0.1:8000,memory=2Gi[,gpuMemory=16Gi][,grpcPort=8001]`
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (mut name, mut url, mut memory, mut gpu, mut grpc) = (None, None, None, None, None);
        for part in spec.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::Shape(spec.to_owned()))?;
            let slot = match key.trim() {
                "name" => &mut name,
                "url" => &mut url,
                "memory" => &mut memory,
                "gpuMemory" => &mut gpu,
                "grpcPort" => &mut grpc,
                _ => return Err(ConfigError::Shape(spec.to_owned())),
            };
            if slot.replace(value.trim()).is_some() {
                return Err(ConfigError::Shape(spec.to_owned()));
            }
        }
        let (Some(name), Some(url), Some(memory)) = (name, url, memory) else {
            return Err(ConfigError::Shape(spec.to_owned()));
        };
        let quantity = |field: &str, text: &str| {
            parse_bytes(text).map_err(|e| ConfigError::Field {
                spec: spec.to_owned(),
                reason: format!("{field}: {e}"),
            })
        };
        let memory = quantity("memory", memory)?;
        let gpu = gpu
            .map(|g| quantity("gpuMemory", g))
            .transpose()?
            .unwrap_or(0);
        let grpc = grpc
            .map(|p| {
                p.parse::<u16>().map_err(|e| ConfigError::Field {
                    spec: spec.to_owned(),
                    reason: format!("grpcPort: {e}"),
                })
            })
            .transpose()?;
        Self::build(spec, name, url, memory, gpu, grpc)
    }
}

/// The TOML configuration file:
///
/// ```toml
/// [[replica]]
/// name = "r0"
/// url = "http://127.0.0.1:8000"
/// memory = "2Gi"
/// gpu_memory = "16Gi"   # optional
/// grpc_port = 8001       # optional
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default, rename = "replica")]
    replicas: Vec<FileReplica>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReplica {
    name: String,
    url: String,
    memory: Bytes,
    #[serde(default)]
    gpu_memory: Option<Bytes>,
    #[serde(default)]
    grpc_port: Option<u16>,
}

/// Reads replicas from a TOML file.
pub fn replicas_from_file(path: &Path) -> Result<Vec<ReplicaConfig>, ConfigError> {
    let file_err = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let config: FileConfig = toml::from_str(&text).map_err(|e| file_err(e.to_string()))?;
    config
        .replicas
        .iter()
        .map(|r| {
            let gpu = r.gpu_memory.map(|b| b.0).unwrap_or(0);
            ReplicaConfig::build(&r.name, &r.name, &r.url, r.memory.0, gpu, r.grpc_port)
        })
        .collect()
}

/// Joins replicas from all sources and checks the set.
pub fn check_replicas(replicas: Vec<ReplicaConfig>) -> Result<Vec<ReplicaConfig>, ConfigError> {
    if replicas.is_empty() {
        return Err(ConfigError::Empty);
    }
    let mut names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(ConfigError::Duplicate(w[0].to_owned()));
    }
    Ok(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flag_form() {
        let r: ReplicaConfig = "name=r0,url=http://127.0.0.1:8000,memory=2Gi"
            .parse()
            .unwrap();
        assert_eq!(r.name.as_str(), "r0");
        assert_eq!(r.url.as_str(), "http://127.0.0.1:8000/");
        assert_eq!(r.memory, 2 << 30);
        assert_eq!(r.gpu_memory, 0);
        let r: ReplicaConfig = "name=g,url=http://h:1,memory=1Gi,gpuMemory=16Gi"
            .parse()
            .unwrap();
        assert_eq!(r.gpu_memory, 16 << 30);
    }

    #[test]
    fn refuses_bad_flags() {
        for bad in [
            "",
            "name=r0",
            "name=r0,url=http://h:1,memory=1Gi,extra=1",
            "name=r0,name=r1,url=http://h:1,memory=1Gi",
            "name=../x,url=http://h:1,memory=1Gi",
            "name=r0,url=https://h:1,memory=1Gi",
            "name=r0,url=nonsense,memory=1Gi",
            "name=r0,url=http://h:1,memory=lots",
            "name=r0,url=http://h:1,memory=0",
            "name=r0,url=http://h:1,memory=1,grpcPort=0",
            "name=r0,url=http://h:1,memory=1,grpcPort=x",
        ] {
            assert!(bad.parse::<ReplicaConfig>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_toml_and_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.toml");
        std::fs::write(
            &path,
            "[[replica]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nmemory = \"1Gi\"\n\
             [[replica]]\nname = \"a\"\nurl = \"http://127.0.0.1:2\"\nmemory = 1024\n",
        )
        .unwrap();
        let replicas = replicas_from_file(&path).unwrap();
        assert_eq!(replicas.len(), 2);
        assert!(matches!(
            check_replicas(replicas),
            Err(ConfigError::Duplicate(_))
        ));
        std::fs::write(&path, "[[replica]]\nname = \"a\"\nbogus = 1\n").unwrap();
        assert!(replicas_from_file(&path).is_err());
        assert!(matches!(check_replicas(vec![]), Err(ConfigError::Empty)));
    }

    #[tokio::test]
    async fn resolves_to_an_ip_literal() {
        let r: ReplicaConfig = "name=r0,url=http://localhost:8000,memory=1Gi"
            .parse()
            .unwrap();
        let addr = r.resolve().await.unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 8000);
    }
}
