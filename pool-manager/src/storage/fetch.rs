//! Downloading a remote model into a private work directory: every object under an
//! object-store prefix (in parallel, bounded), or one archive (object or URL) that is
//! checked against its `sha256` and unpacked. Nothing here is visible to anyone else; the
//! cache ([`super::cache`]) renames the result into place only once it is complete.
//!
//! Object stores (S3 and S3-compatible stores, GCS, Azure Blob) are reached through
//! `object_store`, with the environment's and `[s3]`/`[gcs]`/`[azure]` default settings or
//! a named store's ([`super::settings`]). Archives on web servers are fetched with
//! `reqwest` under the egress policy ([`super::egress`]): a URI from a model's spec may
//! not reach link-local, reserved (or, without `--allow-private-storage`, loopback and
//! private) addresses, nor be redirected to another host.
//!
//! Error texts never carry a URL's credentials: reqwest's errors are taken without their
//! URL, and every message is passed through [`mm_wire::scrub_uris`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use super::archive::{self, ArchiveError, Limits};
use super::egress::{self, EgressPolicy};
use super::settings::{HttpAuth, Settings, StoreTarget};
use super::uri::{ArchiveKind, ObjectScheme, RemoteLocation, RemoteSource, StoreKey};
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
    /// The address the URI leads to is not one pulls may reach.
    #[error("refused: {0}")]
    Refused(String),
    /// The spec names a store that the storage settings do not have (any more), or one
    /// of another type.
    #[error("{0}")]
    StoreSettings(String),
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
            PullError::Refused(_) => "refused",
            PullError::StoreSettings(_) => "settings",
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

/// How pulls behave, whatever the settings file says.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Downloads at once, over all pulls.
    pub concurrency: usize,
    /// Which addresses URIs from specs may reach.
    pub egress: EgressPolicy,
    pub connect_timeout: Duration,
}

/// Which store client a location is reached with (clients are cached by this).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    store: Option<StoreKey>,
    scheme: ObjectScheme,
    account: Option<String>,
    bucket: String,
}

/// Where one pull reads from, resolved against the current settings.
enum Target {
    Object {
        store: Arc<dyn ObjectStore>,
        key: String,
        archive: Option<ArchiveKind>,
        label: &'static str,
    },
    Http {
        client: reqwest::Client,
        url: url::Url,
        auth: HttpAuth,
        archive: ArchiveKind,
        label: &'static str,
    },
}

/// Downloads remote models; cheap to share. Its settings can be replaced while it runs
/// (a reloaded `--storage-config`); pulls already under way keep the clients they have.
pub struct Fetcher {
    settings: RwLock<Arc<Settings>>,
    /// Clients for URIs from specs: the egress policy applies.
    guarded: reqwest::Client,
    /// Clients for named `http` stores, whose endpoints the operator configured: private
    /// addresses are allowed, link-local and reserved ones still not.
    trusted: reqwest::Client,
    egress: EgressPolicy,
    stores: Mutex<HashMap<ClientKey, Arc<dyn ObjectStore>>>,
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
    pub fn new(settings: Settings, options: FetchOptions) -> Result<Self, String> {
        let build = |policy| {
            egress::http_client(policy, options.connect_timeout).map_err(|e| e.to_string())
        };
        let concurrency = options.concurrency.max(1);
        Ok(Self {
            settings: RwLock::new(Arc::new(settings)),
            guarded: build(options.egress)?,
            trusted: build(EgressPolicy {
                allow_private: true,
            })?,
            egress: options.egress,
            stores: Mutex::new(HashMap::new()),
            downloads: Arc::new(Semaphore::new(concurrency)),
            concurrency,
        })
    }

    /// Replaces the settings; the next pull builds its clients from them.
    pub fn replace_settings(&self, settings: Settings) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
        self.stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Where `source` is, under the current settings.
    fn resolve(&self, source: &RemoteSource) -> Result<Target, PullError> {
        let settings = self.settings();
        let named = |key: &StoreKey| {
            settings.stores.get(key).ok_or_else(|| {
                PullError::StoreSettings(format!(
                    "storage.key {key:?} is not a store in the storage settings (--storage-config)"
                ))
            })
        };
        match source {
            RemoteSource::Uri {
                location: RemoteLocation::Http { url, archive },
                store,
                ..
            } => {
                if let Some(key) = store {
                    let kind = named(key)?.kind;
                    return Err(PullError::StoreSettings(format!(
                        "storage.key {key:?} is a {} store: an http(s) storageUri takes no storage.key",
                        kind.as_str()
                    )));
                }
                // IP literals are connected to without the resolver: checked here.
                self.egress
                    .check_url(url)
                    .map_err(|e| PullError::Refused(e.to_string()))?;
                Ok(Target::Http {
                    client: self.guarded.clone(),
                    url: url.clone(),
                    auth: HttpAuth::None,
                    archive: *archive,
                    label: if url.scheme() == "https" {
                        "https"
                    } else {
                        "http"
                    },
                })
            }
            RemoteSource::Uri {
                location:
                    RemoteLocation::Object {
                        scheme,
                        account,
                        bucket,
                        key,
                        archive,
                    },
                store,
                ..
            } => {
                let target = match store {
                    Some(k) => Some((k, named(k)?)),
                    None => None,
                };
                let client = ClientKey {
                    store: store.clone(),
                    scheme: *scheme,
                    account: account.clone(),
                    bucket: bucket.clone(),
                };
                Ok(Target::Object {
                    store: self.object_store(&settings, client, target.map(|(_, s)| &s.target))?,
                    key: key.clone(),
                    archive: *archive,
                    label: scheme.as_str(),
                })
            }
            RemoteSource::Path {
                store: key,
                path,
                bucket,
            } => self.resolve_path(&settings, named(key)?, key, path, bucket.as_ref()),
        }
    }

    /// A path in a named store: under an http store's base URL, or in a bucket of an
    /// object store (the spec's, else the store's default).
    fn resolve_path(
        &self,
        settings: &Settings,
        store: &super::settings::NamedStore,
        key: &StoreKey,
        path: &str,
        bucket: Option<&String>,
    ) -> Result<Target, PullError> {
        let archive = path.rsplit('/').next().and_then(super::uri::archive_kind);
        if let StoreTarget::Http { base, auth } = &store.target {
            let mut url = base.clone();
            url.path_segments_mut()
                .map_err(|()| PullError::StoreSettings("bad http store endpoint".into()))?
                .pop_if_empty()
                .extend(path.split('/'));
            let archive = archive.ok_or_else(|| {
                PullError::StoreSettings(format!(
                    "store {key} is an http store: storage.path must name a .tar.gz, .tgz or .zip archive"
                ))
            })?;
            // The operator's endpoint: private addresses allowed, not link-local.
            EgressPolicy {
                allow_private: true,
            }
            .check_url(&url)
            .map_err(|e| PullError::Refused(e.to_string()))?;
            return Ok(Target::Http {
                client: self.trusted.clone(),
                label: if url.scheme() == "https" {
                    "https"
                } else {
                    "http"
                },
                url,
                auth: auth.clone(),
                archive,
            });
        }
        let scheme = match store.kind {
            super::settings::StoreType::S3 => ObjectScheme::S3,
            super::settings::StoreType::Gcs => ObjectScheme::Gcs,
            _ => ObjectScheme::Azure,
        };
        let bucket = bucket
            .cloned()
            .or_else(|| store.bucket.clone())
            .ok_or_else(|| {
                PullError::StoreSettings(format!(
                    "store {key} has no default bucket: the spec must give storage.bucket"
                ))
            })?;
        let client = ClientKey {
            store: Some(key.clone()),
            scheme,
            account: None,
            bucket,
        };
        Ok(Target::Object {
            store: self.object_store(settings, client, Some(&store.target))?,
            key: path.to_owned(),
            archive,
            label: scheme.as_str(),
        })
    }

    /// The cached client for `key`, built from `named` (a store's settings) or the
    /// defaults for its scheme.
    fn object_store(
        &self,
        settings: &Settings,
        key: ClientKey,
        named: Option<&StoreTarget>,
    ) -> Result<Arc<dyn ObjectStore>, PullError> {
        let mut stores = self
            .stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(store) = stores.get(&key) {
            return Ok(store.clone());
        }
        let mismatch = |kind: &str| {
            PullError::StoreSettings(format!(
                "storage.key {:?} is a {kind} store, not one for {}:// URIs",
                key.store.as_ref().map_or("", StoreKey::as_str),
                key.scheme.as_str()
            ))
        };
        let built: Arc<dyn ObjectStore> = match (key.scheme, named) {
            (ObjectScheme::S3, None | Some(StoreTarget::S3(_))) => {
                let options = match named {
                    Some(StoreTarget::S3(o)) => o,
                    _ => &settings.s3,
                };
                let mut b = AmazonS3Builder::new();
                for (k, v) in options {
                    b = b.with_config(*k, v);
                }
                Arc::new(
                    b.with_bucket_name(&key.bucket)
                        .build()
                        .map_err(store_error)?,
                )
            }
            (ObjectScheme::Gcs, None | Some(StoreTarget::Gcs(_))) => {
                let options = match named {
                    Some(StoreTarget::Gcs(o)) => o,
                    _ => &settings.gcs,
                };
                let mut b = GoogleCloudStorageBuilder::new();
                for (k, v) in options {
                    b = b.with_config(*k, v);
                }
                Arc::new(
                    b.with_bucket_name(&key.bucket)
                        .build()
                        .map_err(store_error)?,
                )
            }
            (ObjectScheme::Azure, None | Some(StoreTarget::Azure(_))) => {
                let options = match named {
                    Some(StoreTarget::Azure(o)) => o,
                    _ => &settings.azure,
                };
                let mut b = MicrosoftAzureBuilder::new();
                for (k, v) in options {
                    b = b.with_config(*k, v);
                }
                if let Some(account) = &key.account {
                    b = b.with_config(AzureConfigKey::AccountName, account);
                }
                Arc::new(
                    b.with_container_name(&key.bucket)
                        .build()
                        .map_err(store_error)?,
                )
            }
            (_, Some(StoreTarget::S3(_))) => return Err(mismatch("s3")),
            (_, Some(StoreTarget::Gcs(_))) => return Err(mismatch("gcs")),
            (_, Some(StoreTarget::Azure(_))) => return Err(mismatch("azure")),
            (_, Some(StoreTarget::Http { .. })) => return Err(mismatch("http")),
        };
        stores.insert(key, built.clone());
        Ok(built)
    }

    /// Downloads `source` into the empty directory `work`, checks `sha256` (archives) and
    /// the limits, and finds the Triton model directory.
    pub async fn fetch(
        &self,
        source: &RemoteSource,
        sha256: Option<&str>,
        work: &Path,
        limits: Limits,
        metrics: &StorageMetrics,
    ) -> Result<Fetched, PullError> {
        let target = self.resolve(source)?;
        let model_dir = work.join("model");
        tokio::fs::create_dir(&model_dir).await?;
        let bytes = match target {
            Target::Object {
                store,
                key,
                archive: None,
                label,
            } => {
                self.fetch_prefix(store, &key, &model_dir, limits, metrics, label)
                    .await?
            }
            Target::Object {
                store,
                key,
                archive: Some(kind),
                label,
            } => {
                let file = work.join("archive");
                let path = object_store::path::Path::from(key.as_str());
                let _permit = self.permit().await?;
                let got = store.get(&path).await.map_err(store_error)?;
                let stream = got.into_stream().map_err(store_error);
                download(stream, &file, limits.max_bytes, sha256, metrics, label).await?;
                unpack(file, kind, model_dir.clone(), limits).await?
            }
            Target::Http {
                client,
                url,
                auth,
                archive,
                label,
            } => {
                let file = work.join("archive");
                let _permit = self.permit().await?;
                let mut request = client.get(url);
                request = match auth {
                    HttpAuth::None => request,
                    HttpAuth::Basic { username, password } => {
                        request.basic_auth(username, password)
                    }
                    HttpAuth::Bearer(token) => request.bearer_auth(token),
                };
                let response = request.send().await.map_err(http_error)?;
                if !response.status().is_success() {
                    return Err(PullError::HttpStatus(response.status().as_u16()));
                }
                if response
                    .content_length()
                    .is_some_and(|n| n > limits.max_bytes)
                {
                    return Err(PullError::DownloadTooLarge(limits.max_bytes));
                }
                let stream = response.bytes_stream().map_err(http_error);
                download(stream, &file, limits.max_bytes, sha256, metrics, label).await?;
                unpack(file, archive, model_dir.clone(), limits).await?
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
                    let stream = got.into_stream().map_err(store_error);
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

fn store_error(e: object_store::Error) -> PullError {
    PullError::Store(match e {
        object_store::Error::NotFound { path, .. } => format!("{path} not found"),
        other => mm_wire::scrub_uris(&error_chain(&other)),
    })
}

/// A reqwest error without its URL (which may hold credentials), with its causes: a
/// refused address or redirect says so.
fn http_error(e: reqwest::Error) -> PullError {
    let e = e.without_url();
    let text = mm_wire::scrub_uris(&error_chain(&e));
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if s.is::<egress::Refused>() || s.is::<egress::CrossHostRedirect>() {
            return PullError::Refused(mm_wire::scrub_uris(&s.to_string()));
        }
        source = s.source();
    }
    PullError::Download(text)
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

    fn fetcher(allow_private: bool) -> Fetcher {
        Fetcher::new(
            Settings::default(),
            FetchOptions {
                concurrency: 2,
                egress: EgressPolicy { allow_private },
                connect_timeout: Duration::from_secs(5),
            },
        )
        .unwrap()
    }

    fn http_source(url: &str) -> RemoteSource {
        RemoteSource::Uri {
            uri: url.to_owned(),
            location: super::super::uri::parse_remote(url, &url::Url::parse(url).unwrap()).unwrap(),
            store: None,
        }
    }

    /// A server that answers every request with a redirect to `to`.
    async fn redirector(to: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let to = to.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    async fn pull_error(fetcher: &Fetcher, url: &str) -> PullError {
        let work = tempfile::tempdir().unwrap();
        let mut reg = prometheus_client::registry::Registry::default();
        let metrics = StorageMetrics::register(&mut reg);
        let limits = Limits {
            max_bytes: 1 << 20,
            max_files: 10,
        };
        fetcher
            .fetch(&http_source(url), None, work.path(), limits, &metrics)
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn loopback_and_metadata_addresses_are_refused_by_address_and_by_name() {
        let strict = fetcher(false);
        for url in [
            "http://127.0.0.1:9/m.zip",
            "http://localhost:9/m.zip",
            "http://[::1]:9/m.zip",
            "http://user:pw@127.0.0.1:9/m.zip?sig=secret",
        ] {
            let e = pull_error(&strict, url).await;
            assert!(matches!(e, PullError::Refused(_)), "{url}: {e:?}");
            let text = e.to_string();
            assert!(
                text.contains("loopback") && text.contains("--allow-private-storage"),
                "{url}: {text}"
            );
            assert!(
                !text.contains("secret") && !text.contains("pw"),
                "{url}: {text}"
            );
        }
        let open = fetcher(true);
        // (Link-local is refused by the same check, see egress::tests; no test sends to it.)
        for url in ["http://0.0.0.0:9/m.zip", "http://[::]:9/m.zip"] {
            let e = pull_error(&open, url).await;
            assert!(matches!(e, PullError::Refused(_)), "{url}: {e:?}");
        }
    }

    #[tokio::test]
    async fn redirects_to_another_host_are_refused_and_errors_carry_no_secrets() {
        let open = fetcher(true);
        // 127.0.0.2 is another host than 127.0.0.1 (and nothing listens there).
        let base = redirector("http://127.0.0.2:9/m.zip".into()).await;
        let e = pull_error(&open, &format!("{base}/m.zip?X-Amz-Signature=secret")).await;
        assert!(matches!(e, PullError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("redirected to 127.0.0.2"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        // A connection failure names no URL either.
        let e = pull_error(&open, "http://u:pw@127.0.0.1:9/m.zip?sig=secret").await;
        let text = e.to_string();
        assert!(matches!(e, PullError::Download(_)), "{e:?}");
        assert!(!text.contains("secret") && !text.contains("pw"), "{text}");
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }
}
