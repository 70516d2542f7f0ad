//! Replica configuration: which Triton servers form the pool and how much memory each
//! offers to models, from `--replica` flags and/or a TOML file. Addresses are resolved once
//! at start-up to IP literals, because Envoy's ORIGINAL_DST cluster connects to an IP:port.

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

/// Replicas discovered by DNS: one name per StatefulSet pod behind a headless Service,
/// `{prefix}-{i}.{service}` for `i` in `0..count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsReplicas {
    pub prefix: String,
    pub service: String,
    pub port: u16,
    pub grpc_port: Option<u16>,
    pub memory: u64,
    pub gpu_memory: u64,
    pub count: usize,
}

/// Most replicas one `--replica-dns` may name.
const MAX_DNS_REPLICAS: usize = 1024;

impl FromStr for DnsReplicas {
    type Err = ConfigError;

    /// `prefix=triton,service=triton.mm.svc,port=8000,memory=16Gi,count=8[,grpcPort=8001][,gpuMemory=24Gi]`
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let field = |reason: String| ConfigError::Field {
            spec: spec.to_owned(),
            reason,
        };
        let mut fields = std::collections::HashMap::new();
        for part in spec.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| field("expected key=value pairs".into()))?;
            if !matches!(
                key,
                "prefix" | "service" | "port" | "grpcPort" | "memory" | "gpuMemory" | "count"
            ) {
                return Err(field(format!("unknown key {key:?}")));
            }
            if fields.insert(key, value.trim()).is_some() {
                return Err(field(format!("{key} given twice")));
            }
        }
        let need = |key: &str| {
            fields
                .get(key)
                .copied()
                .ok_or_else(|| field(format!("{key} is required")))
        };
        let number = |key: &str, text: &str| {
            text.parse::<u64>()
                .map_err(|e| field(format!("{key}: {e}")))
        };
        let port = |key: &str, text: &str| {
            number(key, text).and_then(|n| {
                u16::try_from(n)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| field(format!("{key} must be 1..65535")))
            })
        };
        let prefix = need("prefix")?.to_owned();
        crate::spec::ReplicaId::new(&format!("{prefix}-0")).map_err(|e| field(e.to_string()))?;
        let service = need("service")?.to_owned();
        if service.is_empty()
            || !service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(field("service must be a DNS name".into()));
        }
        let count = usize::try_from(number("count", need("count")?)?).unwrap_or(usize::MAX);
        if count == 0 || count > MAX_DNS_REPLICAS {
            return Err(field(format!("count must be 1..{MAX_DNS_REPLICAS}")));
        }
        Ok(Self {
            prefix,
            service,
            port: port("port", need("port")?)?,
            grpc_port: fields
                .get("grpcPort")
                .map(|p| port("grpcPort", p))
                .transpose()?,
            memory: parse_bytes(need("memory")?).map_err(|e| field(format!("memory: {e}")))?,
            gpu_memory: fields
                .get("gpuMemory")
                .map(|g| parse_bytes(g).map_err(|e| field(format!("gpuMemory: {e}"))))
                .transpose()?
                .unwrap_or(0),
            count,
        })
    }
}

impl DnsReplicas {
    /// The replicas this stands for, named `{prefix}-{i}`.
    pub fn expand(&self) -> Result<Vec<ReplicaConfig>, ConfigError> {
        (0..self.count)
            .map(|i| {
                let name = format!("{}-{i}", self.prefix);
                let url = format!("http://{name}.{}:{}", self.service, self.port);
                ReplicaConfig::build(
                    &name,
                    &name,
                    &url,
                    self.memory,
                    self.gpu_memory,
                    self.grpc_port,
                )
            })
            .collect()
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

    #[test]
    fn expands_dns_replicas() {
        let d: DnsReplicas =
            "prefix=triton,service=triton.mm.svc,port=8000,memory=1Gi,count=3,grpcPort=8001"
                .parse()
                .unwrap();
        let r = d.expand().unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].name.as_str(), "triton-2");
        assert_eq!(r[2].url.as_str(), "http://triton-2.triton.mm.svc:8000/");
        assert_eq!((r[0].memory, r[0].grpc_port), (1 << 30, Some(8001)));
        for bad in [
            "prefix=t,service=s,port=1,memory=1,count=0",
            "prefix=t,service=s,port=0,memory=1,count=1",
            "prefix=t,service=s/x,port=1,memory=1,count=1",
            "prefix=../t,service=s,port=1,memory=1,count=1",
            "prefix=t,service=s,port=1,memory=1",
            "prefix=t,service=s,port=1,memory=1,count=1,bogus=2",
            "prefix=t,service=s,port=1,memory=1,count=99999",
        ] {
            assert!(bad.parse::<DnsReplicas>().is_err(), "{bad}");
        }
    }
}
