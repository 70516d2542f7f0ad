//! Model storage: where a model's files come from and how they reach a replica, with no
//! sidecar next to the replicas. Remote files (`s3://`, `gs://`, `http(s)://` archives) are
//! pulled by the pool-manager into a local cache on the model's first load ([`cache`],
//! [`fetch`], [`archive`]), then handed to the replica either through the shared model
//! repository directory or inside Triton's load request ([`transfer`]).
//!
//! Registration never touches the network ([`uri`] checks the URI's shape only); a failed
//! pull marks the model `Failed` with the reason, like a failed load.

pub mod archive;
pub mod cache;
pub mod fetch;
pub mod transfer;
pub mod uri;

use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub use cache::{CacheKey, CacheLimits, Lease, ModelCache};
pub use fetch::{Fetcher, PullError, StoreConfig};
pub use transfer::ModelFiles;

/// How model files reach a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileTransfer {
    /// Copied into `--model-repository`, a directory the replicas also read (a shared
    /// volume, e.g. a ReadWriteMany PVC); Triton loads by name.
    SharedDir,
    /// Sent in Triton's load request (config as JSON, files base64), for replicas that share
    /// no disk with the pool-manager; bounded by `--max-inline-bytes`.
    LoadRequest,
}

/// The storage flags of the pool-manager binary.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Where pulled model files are cached (default: <data-dir>/cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Size of the model cache (bytes of model files; a quantity such as 10Gi).
    #[arg(long, default_value = "10Gi", value_parser = parse_quantity)]
    pub cache_size: u64,
    /// Above this fraction of --cache-size, cached models loaded nowhere are removed...
    #[arg(long, default_value_t = 0.9)]
    pub cache_high_watermark: f64,
    /// ...least recently used first, until the cache is under this fraction.
    #[arg(long, default_value_t = 0.7)]
    pub cache_low_watermark: f64,
    /// Downloads running at once, over all pulls.
    #[arg(long, default_value_t = 4)]
    pub download_concurrency: usize,
    /// Bound on one whole pull (download, checks, unpacking).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub pull_timeout: Duration,
    /// Most bytes of files one pulled model may have (unpacked), to stop archive bombs.
    #[arg(long, default_value = "16Gi", value_parser = parse_quantity)]
    pub max_model_bytes: u64,
    /// Most files one pulled model may have.
    #[arg(long, default_value_t = 10_000)]
    pub max_model_files: usize,
    /// How files reach replicas: through the shared --model-repository directory, or in
    /// Triton's load request (replicas that share no disk with the pool-manager).
    #[arg(long, value_enum, default_value = "shared-dir")]
    pub file_transfer: FileTransfer,
    /// With --file-transfer load-request: most bytes of files one load request carries;
    /// a larger model fails to load with a message saying so.
    #[arg(long, default_value = "256Mi", value_parser = parse_quantity)]
    pub max_inline_bytes: u64,
    /// TOML file with [s3] and [gcs] tables of object_store settings (endpoint, region,
    /// access_key_id, secret_access_key, allow_http, service_account_path, ...), applied
    /// over the AWS_* and GOOGLE_* environment variables.
    #[arg(long, env = "MM_STORAGE_CONFIG")]
    pub storage_config: Option<PathBuf>,
}

fn parse_quantity(text: &str) -> Result<u64, String> {
    crate::quantity::parse_bytes(text).map_err(|e| e.to_string())
}

/// Why model storage could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("--storage-config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("object store settings: {0}")]
    Store(String),
    #[error("cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cache watermarks: need 0 < --cache-low-watermark < --cache-high-watermark <= 1")]
    Watermarks,
    #[error("--cache-size and --max-model-bytes must be greater than zero")]
    ZeroSize,
}

/// Model storage as the pool uses it: the cache, and how files reach replicas.
pub struct Storage {
    cache: ModelCache,
    transfer: FileTransfer,
    max_inline_bytes: u64,
}

impl Storage {
    /// Sets storage up from the flags: reads the settings file, opens (and indexes) the
    /// cache, registers the storage metrics in `registry`. Blocking.
    pub fn open(
        args: &StorageArgs,
        data_dir: &Path,
        registry: &mut Registry,
    ) -> Result<Self, StorageError> {
        let high = args.cache_high_watermark;
        let low = args.cache_low_watermark;
        if !(low > 0.0 && low < high && high <= 1.0) {
            return Err(StorageError::Watermarks);
        }
        if args.cache_size == 0 || args.max_model_bytes == 0 {
            return Err(StorageError::ZeroSize);
        }
        let config = match &args.storage_config {
            Some(path) => {
                let bad = |reason: String| StorageError::Config {
                    path: path.clone(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
                toml::from_str::<StoreConfig>(&text).map_err(|e| bad(e.to_string()))?
            }
            None => StoreConfig::default(),
        };
        let fetcher = Fetcher::new(&config, args.download_concurrency, args.pull_timeout)
            .map_err(StorageError::Store)?;
        let metrics = StorageMetrics::register(registry);
        let dir = args
            .cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("cache"));
        let limits = CacheLimits {
            size: args.cache_size,
            high,
            low,
            model: archive::Limits {
                max_bytes: args.max_model_bytes,
                max_files: args.max_model_files.max(1),
            },
            pull_timeout: args.pull_timeout,
        };
        let cache = ModelCache::open(&dir, limits, fetcher, metrics).map_err(|source| {
            StorageError::CacheDir {
                path: dir.clone(),
                source,
            }
        })?;
        Ok(Self::new(cache, args.file_transfer, args.max_inline_bytes))
    }

    pub fn new(cache: ModelCache, transfer: FileTransfer, max_inline_bytes: u64) -> Self {
        Self {
            cache,
            transfer,
            max_inline_bytes,
        }
    }

    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    pub fn transfer(&self) -> FileTransfer {
        self.transfer
    }

    pub fn max_inline_bytes(&self) -> u64 {
        self.max_inline_bytes
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchemeLabel {
    scheme: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The storage metrics (`mm_storage_*`); label values come from fixed sets.
#[derive(Debug, Clone)]
pub struct StorageMetrics {
    download_bytes: Family<SchemeLabel, Counter>,
    pub download_seconds: Histogram,
    pub cache_bytes: Gauge,
    pub cache_evictions: Counter,
    pull_failures: Family<ReasonLabel, Counter>,
    cache_requests: Family<OutcomeLabel, Counter>,
}

impl StorageMetrics {
    /// Creates the metrics and registers them in `reg` (which carries the `mm` prefix).
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            download_bytes: Family::default(),
            // 10 ms .. ~5.5 min.
            download_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            cache_bytes: Gauge::default(),
            cache_evictions: Counter::default(),
            pull_failures: Family::default(),
            cache_requests: Family::default(),
        };
        reg.register(
            "storage_download_bytes",
            "Bytes downloaded from model storage, by scheme (s3, gs, http, https)",
            m.download_bytes.clone(),
        );
        reg.register_with_unit(
            "storage_download",
            "Time one model pull took (download, checks, unpacking)",
            Unit::Seconds,
            m.download_seconds.clone(),
        );
        reg.register_with_unit(
            "storage_cache",
            "Bytes of model files in the local model cache",
            Unit::Bytes,
            m.cache_bytes.clone(),
        );
        reg.register(
            "storage_cache_evictions",
            "Cached models removed from disk to stay under the cache's watermark",
            m.cache_evictions.clone(),
        );
        reg.register(
            "storage_pull_failures",
            "Model pulls that failed, by reason (download, checksum, unsafe_archive, too_large, layout, corrupt, timeout, io)",
            m.pull_failures.clone(),
        );
        reg.register(
            "storage_cache_requests",
            "Model file requests to the cache, by outcome (hit: cached; miss: pulled)",
            m.cache_requests.clone(),
        );
        m
    }

    /// The download byte counter of `scheme`.
    pub fn download_bytes(&self, scheme: &'static str) -> Counter {
        self.download_bytes
            .get_or_create(&SchemeLabel { scheme })
            .clone()
    }

    pub fn pull_failure(&self, reason: &'static str) {
        self.pull_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn cache_request(&self, outcome: &'static str) {
        self.cache_requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_storage_metric_names() {
        let mut reg = Registry::with_prefix("mm");
        let m = StorageMetrics::register(&mut reg);
        m.download_bytes("s3").inc_by(10);
        m.cache_bytes.set(5);
        m.cache_evictions.inc();
        m.pull_failure("checksum");
        m.download_seconds.observe(0.5);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "mm_storage_download_bytes_total{scheme=\"s3\"} 10",
            "mm_storage_cache_bytes 5",
            "mm_storage_cache_evictions_total 1",
            "mm_storage_pull_failures_total{reason=\"checksum\"} 1",
            "# TYPE mm_storage_download_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
