//! Model storage: where a model's files come from and how they reach a replica, with no
//! sidecar next to the replicas. Remote files (`s3://`, `gs://`, `az://`, `http(s)://`
//! archives, paths in named stores) are pulled by the pool-manager into a local cache on
//! the model's first load ([`cache`], [`fetch`], [`archive`]) under an egress policy
//! ([`egress`]), then handed to the replica either through the shared model repository
//! directory or inside Triton's load request ([`transfer`]). The object-store settings and
//! named stores come from `--storage-config` ([`settings`]), reloaded when it changes
//! ([`StorageWatcher`]).
//!
//! Registration never touches the network ([`uri`] checks the URI's shape only); a failed
//! pull marks the model `Failed` with the reason, like a failed load.

pub mod archive;
pub mod cache;
pub mod egress;
pub mod fetch;
pub mod settings;
pub mod transfer;
pub mod uri;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub use cache::{CacheKey, CacheLimits, Lease, ModelCache};
pub use fetch::{FetchOptions, Fetcher, PullError};
pub use settings::{StoreCatalog, StoreType};
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
    /// TOML file with [s3], [gcs] and [azure] tables of object_store settings (applied
    /// over the AWS_*, GOOGLE_* and AZURE_* environment variables) and named stores
    /// ([stores.<key>]: type, endpoint, region, bucket, credentials or credentials_file)
    /// that specs choose with storage.key. Re-read when it (or a credentials file) changes.
    #[arg(long, env = "MM_STORAGE_CONFIG")]
    pub storage_config: Option<PathBuf>,
    /// How often --storage-config and its credentials files are checked for changes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub storage_config_poll: Duration,
    /// Let model URIs reach loopback and private addresses (RFC 1918, unique local...);
    /// link-local addresses (cloud metadata) are refused whatever this says. Named stores'
    /// endpoints, set by the operator, are not subject to it.
    #[arg(long)]
    pub allow_private_storage: bool,
}

fn parse_quantity(text: &str) -> Result<u64, String> {
    crate::quantity::parse_bytes(text).map_err(|e| e.to_string())
}

/// Why model storage could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("--storage-config {0}")]
    Config(#[from] settings::SettingsError),
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
    catalog: StoreCatalog,
    watcher: Option<StorageWatcher>,
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
        let bounds = settings::ClientBounds {
            request_timeout: args.pull_timeout,
            connect_timeout: CONNECT_TIMEOUT,
        };
        let loaded = settings::load(args.storage_config.as_deref(), bounds)?;
        if let Some(path) = &args.storage_config {
            if !path.exists() {
                tracing::warn!(path = %path.display(),
                               "--storage-config does not exist (yet): no named stores until it appears");
            }
        }
        let catalog = StoreCatalog::default();
        catalog.set(loaded.settings.catalog());
        tracing::info!(stores = ?catalog.keys(), allow_private = args.allow_private_storage,
                       "storage settings read");
        let options = FetchOptions {
            concurrency: args.download_concurrency,
            egress: egress::EgressPolicy {
                allow_private: args.allow_private_storage,
            },
            connect_timeout: CONNECT_TIMEOUT,
        };
        let fetcher =
            Arc::new(Fetcher::new(loaded.settings, options).map_err(StorageError::Store)?);
        let watcher = args.storage_config.clone().map(|path| StorageWatcher {
            path,
            bounds,
            files: loaded.files,
            fingerprint: loaded.fingerprint,
            fetcher: fetcher.clone(),
            catalog: catalog.clone(),
            interval: args.storage_config_poll.max(Duration::from_millis(50)),
        });
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
        let mut storage = Self::new(cache, args.file_transfer, args.max_inline_bytes);
        storage.catalog = catalog;
        storage.watcher = watcher;
        Ok(storage)
    }

    pub fn new(cache: ModelCache, transfer: FileTransfer, max_inline_bytes: u64) -> Self {
        Self {
            cache,
            transfer,
            max_inline_bytes,
            catalog: StoreCatalog::default(),
            watcher: None,
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

    /// The named stores, kept current by the watcher; registration checks keys against it.
    pub fn catalog(&self) -> &StoreCatalog {
        &self.catalog
    }

    /// The task that reloads `--storage-config` when it changes (None without one); take
    /// it once and spawn [`StorageWatcher::run`].
    pub fn take_watcher(&mut self) -> Option<StorageWatcher> {
        self.watcher.take()
    }
}

/// Bound on connecting to a store or web server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Re-reads `--storage-config` (and the credentials files it names) when their contents
/// change, as a Kubernetes Secret volume does when the Secret is updated: the next pulls
/// use the new settings, and registration knows the new store keys. A file that fails to
/// parse leaves the previous settings in force (logged, without values).
pub struct StorageWatcher {
    path: PathBuf,
    bounds: settings::ClientBounds,
    files: Vec<PathBuf>,
    fingerprint: [u8; 32],
    fetcher: Arc<Fetcher>,
    catalog: StoreCatalog,
    interval: Duration,
}

impl StorageWatcher {
    /// Checks for changes every poll interval, forever.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let files = self.files.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || settings::fingerprint(&files)).await
            else {
                continue;
            };
            if now != self.fingerprint {
                self.reload().await;
            }
        }
    }

    /// Reads the files again and applies them if they parse.
    async fn reload(&mut self) {
        let (path, bounds) = (self.path.clone(), self.bounds);
        let loaded = tokio::task::spawn_blocking(move || settings::load(Some(&path), bounds)).await;
        match loaded {
            Ok(Ok(loaded)) => {
                self.catalog.set(loaded.settings.catalog());
                self.fetcher.replace_settings(loaded.settings);
                self.files = loaded.files;
                self.fingerprint = loaded.fingerprint;
                tracing::info!(stores = ?self.catalog.keys(), "storage settings reloaded");
            }
            Ok(Err(e)) => {
                // Not retried until the files change again.
                self.fingerprint = settings::fingerprint(&self.files);
                tracing::error!(error = %e, "storage settings not reloaded: the previous ones stay in force");
            }
            Err(e) => tracing::error!(error = %e, "storage settings reload panicked"),
        }
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
            "Model pulls that failed, by reason (download, refused, settings, checksum, unsafe_archive, too_large, layout, corrupt, timeout, io)",
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
