//! Downloading a remote model into a private work directory: every object under an
//! object-store prefix (in parallel, bounded), or one archive (object or URL) that is
//! checked against its `sha256` and unpacked. Nothing here is visible to anyone else; the
//! cache ([`super::cache`]) renames the result into place only once it is complete.
//!
//! Object stores are reached through `object_store` (S3 and S3-compatible stores, GCS),
//! configured from the environment (`AWS_*`, `GOOGLE_*`, as their own SDKs do) and then
//! from the `--storage-config` file. Archives on web servers are fetched with `reqwest`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::archive::{self, ArchiveError, Limits};
use super::uri::{ObjectScheme, RemoteLocation};
use super::StorageMetrics;

/// Why a pull failed. Each message is shown as the model's `lastError`.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The object store refused or failed (not found, access denied, unreachable...).
    #[error("object store: {0}")]
    Store(String),
    /// The prefix holds no objects.
    #[error("no objects under the prefix")]
    Empty,
    /// The download is larger than one model may be.
    #[error("the download is larger than {0} bytes")]
    DownloadTooLarge(u64),
    /// The web server answered with an error status.
    #[error("the server answered HTTP {0}")]
    HttpStatus(u16),
    /// The download broke off or never started.
    #[error("download failed: {0}")]
    Download(String),
    /// The archive is not the one the spec's `sha256` names.
    #[error("sha256 mismatch: the spec says {expected}, the download is {actual}")]
    Checksum { expected: String, actual: String },
    /// An unsafe, oversized or malformed archive, or no Triton layout.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The pull took longer than `--pull-timeout`.
    #[error("pull did not finish within {0:?}")]
    Timeout(Duration),
    /// The model's files are larger than the whole cache.
    #[error("model files are larger than the whole cache (--cache-size {0} bytes)")]
    LargerThanCache(u64),
    /// No model storage was configured (a pool built without one).
    #[error("remote storage URIs need the model cache, which is not configured")]
    NoCache,
    #[error("local cache: {0}")]
    Io(#[from] std::io::Error),
}

impl PullError {
    /// A bounded label for `mm_storage_pull_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::Store(_)
            | PullError::Empty
            | PullError::HttpStatus(_)
            | PullError::Download(_) => "download",
            PullError::Checksum { .. } => "checksum",
            PullError::Archive(ArchiveError::TooLarge(_) | ArchiveError::TooManyFiles(_))
            | PullError::LargerThanCache(_)
            | PullError::DownloadTooLarge(_) => "too_large",
            PullError::Archive(ArchiveError::Layout(_)) => "layout",
            PullError::Archive(ArchiveError::Corrupt { .. }) => "corrupt",
            PullError::Archive(ArchiveError::Io(_)) | PullError::Io(_) | PullError::NoCache => "io",
            PullError::Archive(_) => "unsafe_archive",
            PullError::Timeout(_) => "timeout",
        }
    }
}

/// Object-store settings from the `--storage-config` TOML file: `[s3]` and `[gcs]` tables
/// of `object_store` configuration keys (`endpoint`, `region`, `access_key_id`,
/// `allow_http`, `service_account_path`, ...), applied over the environment.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub s3: HashMap<String, toml::Value>,
    #[serde(default)]
    pub gcs: HashMap<String, toml::Value>,
}

fn value_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Downloads remote models; cheap to share.
pub struct Fetcher {
    http: reqwest::Client,
    s3: Vec<(AmazonS3ConfigKey, String)>,
    gcs: Vec<(GoogleConfigKey, String)>,
    stores: Mutex<HashMap<(ObjectScheme, String), Arc<dyn ObjectStore>>>,
    /// Bounds the downloads running at once, over all pulls.
    downloads: Arc<Semaphore>,
    concurrency: usize,
}

/// A fetched model: its Triton model directory inside the work directory.
#[derive(Debug)]
pub struct Fetched {
    pub root: PathBuf,
    /// Bytes of model files.
    pub bytes: u64,
}

impl Fetcher {
    /// A fetcher with `concurrency` downloads at once; `request_timeout` bounds one object
    /// download. Fails on a configuration key `object_store` does not know.
    pub fn new(
        config: &StoreConfig,
        concurrency: usize,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        let timeouts = [
            ("timeout", format!("{}s", request_timeout.as_secs().max(1))),
            ("connect_timeout", "10s".to_owned()),
        ];
        let mut s3 = Vec::new();
        let mut gcs = Vec::new();
        for (key, value) in &timeouts {
            s3.push((parse_key::<AmazonS3ConfigKey>(key, "s3")?, value.clone()));
            gcs.push((parse_key::<GoogleConfigKey>(key, "gcs")?, value.clone()));
        }
        // The environment, as AmazonS3Builder::from_env and its GCS twin read it, then the
        // file: later keys win.
        for (key, value) in std::env::vars() {
            let lower = key.to_ascii_lowercase();
            if key.starts_with("AWS_") {
                if let Ok(k) = lower.parse() {
                    s3.push((k, value));
                }
            } else if key.starts_with("GOOGLE_") {
                if let Ok(k) = lower.parse() {
                    gcs.push((k, value));
                }
            }
        }
        for (key, value) in &config.s3 {
            s3.push((parse_key(key, "s3")?, value_text(value)));
        }
        for (key, value) in &config.gcs {
            gcs.push((parse_key(key, "gcs")?, value_text(value)));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let concurrency = concurrency.max(1);
        Ok(Self {
            http,
            s3,
            gcs,
            stores: Mutex::new(HashMap::new()),
            downloads: Arc::new(Semaphore::new(concurrency)),
            concurrency,
        })
    }

    fn store(&self, scheme: ObjectScheme, bucket: &str) -> Result<Arc<dyn ObjectStore>, PullError> {
        let mut stores = self
            .stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(store) = stores.get(&(scheme, bucket.to_owned())) {
            return Ok(store.clone());
        }
        let built: Arc<dyn ObjectStore> = match scheme {
            ObjectScheme::S3 => {
                let mut b = AmazonS3Builder::new();
                for (k, v) in &self.s3 {
                    b = b.with_config(*k, v);
                }
                Arc::new(b.with_bucket_name(bucket).build().map_err(store_error)?)
            }
            ObjectScheme::Gcs => {
                let mut b = GoogleCloudStorageBuilder::new();
                for (k, v) in &self.gcs {
                    b = b.with_config(*k, v);
                }
                Arc::new(b.with_bucket_name(bucket).build().map_err(store_error)?)
            }
        };
        stores.insert((scheme, bucket.to_owned()), built.clone());
        Ok(built)
    }

    /// Downloads `location` into the empty directory `work`, checks `sha256` (archives) and
    /// the limits, and finds the Triton model directory.
    pub async fn fetch(
        &self,
        location: &RemoteLocation,
        sha256: Option<&str>,
        work: &Path,
        limits: Limits,
        metrics: &StorageMetrics,
    ) -> Result<Fetched, PullError> {
        let label = location.scheme_label();
        let model_dir = work.join("model");
        tokio::fs::create_dir(&model_dir).await?;
        let bytes = match location {
            RemoteLocation::Object {
                scheme,
                bucket,
                key,
                archive: None,
            } => {
                let store = self.store(*scheme, bucket)?;
                self.fetch_prefix(store, key, &model_dir, limits, metrics, label)
                    .await?
            }
            RemoteLocation::Object {
                scheme,
                bucket,
                key,
                archive: Some(kind),
            } => {
                let store = self.store(*scheme, bucket)?;
                let file = work.join("archive");
                let path = object_store::path::Path::from(key.as_str());
                let _permit = self.permit().await?;
                let got = store.get(&path).await.map_err(store_error)?;
                let stream = got
                    .into_stream()
                    .map_err(|e| PullError::Store(e.to_string()));
                download(stream, &file, limits.max_bytes, sha256, metrics, label).await?;
                unpack(file, *kind, model_dir.clone(), limits).await?
            }
            RemoteLocation::Http { url, archive } => {
                let file = work.join("archive");
                let _permit = self.permit().await?;
                let response = self
                    .http
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| PullError::Download(error_chain(&e)))?;
                if !response.status().is_success() {
                    return Err(PullError::HttpStatus(response.status().as_u16()));
                }
                if response
                    .content_length()
                    .is_some_and(|n| n > limits.max_bytes)
                {
                    return Err(PullError::DownloadTooLarge(limits.max_bytes));
                }
                let stream = response
                    .bytes_stream()
                    .map_err(|e| PullError::Download(error_chain(&e)));
                download(stream, &file, limits.max_bytes, sha256, metrics, label).await?;
                unpack(file, *archive, model_dir.clone(), limits).await?
            }
        };
        let root = tokio::task::spawn_blocking(move || archive::model_root(&model_dir))
            .await
            .map_err(|e| PullError::Io(std::io::Error::other(e.to_string())))??;
        Ok(Fetched { root, bytes })
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PullError> {
        self.downloads
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PullError::Io(std::io::Error::other(e.to_string())))
    }

    /// Downloads every object under `prefix` (a "directory") into `dir`, in parallel.
    async fn fetch_prefix(
        &self,
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        dir: &Path,
        limits: Limits,
        metrics: &StorageMetrics,
        label: &'static str,
    ) -> Result<u64, PullError> {
        let prefix_path = (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix));
        let mut listing = store.list(prefix_path.as_ref());
        let mut objects = Vec::new();
        let mut total = 0u64;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(store_error)?;
            let key = meta.location.as_ref();
            let relative = if prefix.is_empty() {
                key
            } else {
                match key.strip_prefix(prefix).and_then(|k| k.strip_prefix('/')) {
                    Some(r) => r,
                    None => continue,
                }
            };
            // "Directory marker" objects some tools create.
            if relative.is_empty() || relative.ends_with('/') {
                continue;
            }
            let Some(relative) = archive::safe_relative(relative)? else {
                continue;
            };
            if objects.len() >= limits.max_files {
                return Err(ArchiveError::TooManyFiles(limits.max_files).into());
            }
            total = total.saturating_add(meta.size);
            if total > limits.max_bytes {
                return Err(ArchiveError::TooLarge(limits.max_bytes).into());
            }
            objects.push((meta.location, relative, meta.size));
        }
        if objects.is_empty() {
            return Err(PullError::Empty);
        }
        let written = AtomicU64::new(0);
        futures::stream::iter(objects)
            .map(|(location, relative, size)| {
                let store = store.clone();
                let written = &written;
                async move {
                    let dest = dir.join(&relative);
                    if let Some(parent) = dest.parent() {
                        tokio::fs::create_dir_all(parent).await?;
                    }
                    let _permit = self.permit().await?;
                    let got = store.get(&location).await.map_err(store_error)?;
                    let stream = got
                        .into_stream()
                        .map_err(|e| PullError::Store(e.to_string()));
                    // Listed sizes were checked; a larger object than listed is refused.
                    let n = download(stream, &dest, size, None, metrics, label).await?;
                    written.fetch_add(n, Ordering::Relaxed);
                    Ok::<(), PullError>(())
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(written.load(Ordering::Relaxed))
    }
}

/// Streams `body` into a new file `dest`, at most `max_bytes`, counting the bytes in the
/// metrics as they arrive, and checks `sha256` when given. Returns the bytes written.
async fn download<S>(
    mut body: S,
    dest: &Path,
    max_bytes: u64,
    sha256: Option<&str>,
    metrics: &StorageMetrics,
    label: &'static str,
) -> Result<u64, PullError>
where
    S: futures::Stream<Item = Result<bytes::Bytes, PullError>> + Unpin,
{
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await?;
    let mut hasher = sha256.map(|_| Sha256::new());
    let mut written = 0u64;
    let counter = metrics.download_bytes(label);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        written = written.saturating_add(chunk.len() as u64);
        counter.inc_by(chunk.len() as u64);
        if written > max_bytes {
            return Err(PullError::DownloadTooLarge(max_bytes));
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    if let (Some(expected), Some(h)) = (sha256, hasher) {
        let actual = hex(&h.finalize());
        if actual != expected {
            return Err(PullError::Checksum {
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    Ok(written)
}

async fn unpack(
    file: PathBuf,
    kind: super::uri::ArchiveKind,
    target: PathBuf,
    limits: Limits,
) -> Result<u64, PullError> {
    let bytes = tokio::task::spawn_blocking(move || {
        let unpacked = archive::unpack(&file, kind, &target, limits);
        // The archive itself is not kept: only the model directory goes to the cache.
        let _ = std::fs::remove_file(&file);
        unpacked
    })
    .await
    .map_err(|e| PullError::Io(std::io::Error::other(e.to_string())))??;
    Ok(bytes)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn parse_key<K: std::str::FromStr>(key: &str, table: &str) -> Result<K, String> {
    key.to_ascii_lowercase()
        .parse()
        .map_err(|_| format!("[{table}] key {key:?} is not an object_store setting"))
}

fn store_error(e: object_store::Error) -> PullError {
    PullError::Store(match e {
        object_store::Error::NotFound { path, .. } => format!("{path} not found"),
        other => error_chain(&other),
    })
}

/// An error with its causes, which is what an operator needs ("error sending request" alone
/// says nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_are_checked() {
        let mut config = StoreConfig::default();
        config.s3.insert(
            "endpoint".into(),
            toml::Value::String("http://127.0.0.1:9000".into()),
        );
        config
            .s3
            .insert("allow_http".into(), toml::Value::Boolean(true));
        assert!(Fetcher::new(&config, 4, Duration::from_secs(60)).is_ok());
        config
            .s3
            .insert("no_such_key".into(), toml::Value::Integer(1));
        let err = Fetcher::new(&config, 4, Duration::from_secs(60))
            .err()
            .unwrap();
        assert!(err.contains("no_such_key"), "{err}");
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }
}
