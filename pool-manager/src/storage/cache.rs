//! The local model cache: each pulled model version stored once on disk, under
//! `<cache-dir>/<model>@<digest>` where the digest is of the `storageUri` and `sha256`, so a
//! changed spec pulls a new version and an unchanged one never pulls twice.
//!
//! Invariants:
//! - an entry directory is complete: pulls are written under `.partial/`, checked, and
//!   renamed into place; `.partial/` is emptied at start, so nothing half-written is ever
//!   visible, even after a crash;
//! - one pull per entry at a time: a second request for an entry being pulled waits for
//!   that pull and then uses its result;
//! - an entry with a live [`Lease`] (being copied or sent to a replica) is never removed;
//!   above the high watermark, the least recently used entries that are neither leased nor
//!   in use (loaded on some replica, as the pool says) are removed until the cache is under
//!   the low watermark.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::archive::Limits;
use super::fetch::{hex, Fetcher, PullError};
use super::uri::RemoteSource;
use super::StorageMetrics;
use crate::spec::ModelName;

/// Names the cache entry of one version of one model's files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    pub model: ModelName,
    /// First 16 hex digits of SHA-256 over the storage URI and the spec's `sha256`.
    pub digest: String,
}

impl CacheKey {
    pub fn new(model: &ModelName, storage_uri: &str, sha256: Option<&str>) -> Self {
        let mut h = Sha256::new();
        h.update(storage_uri.as_bytes());
        h.update(b"\n");
        h.update(sha256.unwrap_or("").as_bytes());
        let digest = hex(&h.finalize()[..8]);
        Self {
            model: model.clone(),
            digest,
        }
    }

    /// The entry's directory name: `<model>@<digest>` (`@` is never in a model name).
    fn dir_name(&self) -> String {
        format!("{}@{}", self.model, self.digest)
    }

    fn from_dir_name(name: &str) -> Option<Self> {
        let (model, digest) = name.split_once('@')?;
        let valid = digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        Some(Self {
            model: ModelName::new(model).ok()?,
            digest: valid.then(|| digest.to_owned())?,
        })
    }
}

/// Size bounds and watermarks of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// The cache's size in bytes of model files.
    pub size: u64,
    /// Above this fraction of `size`, unused entries are removed...
    pub high: f64,
    /// ...until the cache is under this fraction.
    pub low: f64,
    /// Bounds on one model's files.
    pub model: Limits,
    /// Bound on one whole pull.
    pub pull_timeout: Duration,
}

struct CachedEntry {
    dir: PathBuf,
    bytes: u64,
    last_used: SystemTime,
    leases: usize,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<CacheKey, CachedEntry>,
    total: u64,
}

struct CacheInner {
    root: PathBuf,
    partial: PathBuf,
    limits: CacheLimits,
    fetcher: Arc<Fetcher>,
    metrics: StorageMetrics,
    state: Mutex<CacheState>,
    flights: Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
    nonce: AtomicU64,
}

impl CacheInner {
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The model cache; cheap to clone.
#[derive(Clone)]
pub struct ModelCache {
    inner: Arc<CacheInner>,
}

/// A cache entry in use: its files stay on disk until every lease is dropped.
pub struct Lease {
    cache: Arc<CacheInner>,
    key: CacheKey,
    /// The model's Triton directory (config.pbtxt and version folders).
    pub dir: PathBuf,
    /// Bytes of model files.
    pub bytes: u64,
    /// Whether this call pulled the files (false: they were cached).
    pub pulled: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(e) = self.cache.state().entries.get_mut(&self.key) {
            e.leases = e.leases.saturating_sub(1);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("dir", &self.dir)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl ModelCache {
    /// Opens the cache at `root` (created if missing): forgets partial pulls and indexes
    /// the complete entries, oldest modification time first in line for eviction. Blocking.
    pub fn open(
        root: &Path,
        limits: CacheLimits,
        fetcher: Arc<Fetcher>,
        metrics: StorageMetrics,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let partial = root.join(".partial");
        match std::fs::remove_dir_all(&partial) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir(&partial)?;
        let mut state = CacheState::default();
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(CacheKey::from_dir_name) else {
                continue;
            };
            let meta = std::fs::symlink_metadata(entry.path())?;
            if !meta.is_dir() {
                continue;
            }
            let bytes = tree_size(&entry.path())?;
            state.total = state.total.saturating_add(bytes);
            state.entries.insert(
                key,
                CachedEntry {
                    dir: entry.path(),
                    bytes,
                    last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    leases: 0,
                },
            );
        }
        metrics.cache_bytes.set(clamp(state.total));
        tracing::info!(dir = %root.display(), entries = state.entries.len(), bytes = state.total,
                       limit = limits.size, "model cache opened");
        Ok(Self {
            inner: Arc::new(CacheInner {
                root,
                partial,
                limits,
                fetcher,
                metrics,
                state: Mutex::new(state),
                flights: Mutex::new(HashMap::new()),
                nonce: AtomicU64::new(0),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Bytes of model files in the cache.
    pub fn total_bytes(&self) -> u64 {
        self.inner.state().total
    }

    /// The keys cached now, in no order.
    pub fn keys(&self) -> Vec<CacheKey> {
        self.inner.state().entries.keys().cloned().collect()
    }

    fn lease(&self, key: &CacheKey, pulled: bool) -> Option<Lease> {
        let mut state = self.inner.state();
        let e = state.entries.get_mut(key)?;
        e.leases += 1;
        e.last_used = SystemTime::now();
        Some(Lease {
            cache: self.inner.clone(),
            key: key.clone(),
            dir: e.dir.clone(),
            bytes: e.bytes,
            pulled,
        })
    }

    /// The entry `key`, pulled from `location` first if it is not cached (one pull per key
    /// at a time; later callers wait for it). Bounded by the pull timeout.
    pub async fn get(
        &self,
        key: &CacheKey,
        location: &RemoteSource,
        sha256: Option<&str>,
    ) -> Result<Lease, PullError> {
        let metrics = &self.inner.metrics;
        if let Some(lease) = self.lease(key, false) {
            metrics.cache_request("hit");
            return Ok(lease);
        }
        let flight = self
            .inner
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let _flight = flight.lock().await;
        if let Some(lease) = self.lease(key, false) {
            metrics.cache_request("hit");
            return Ok(lease);
        }
        metrics.cache_request("miss");
        let started = Instant::now();
        let timeout = self.inner.limits.pull_timeout;
        let nonce = self.inner.nonce.fetch_add(1, Ordering::Relaxed);
        let work = WorkDir(self.inner.partial.join(format!(
            "{}-{}-{nonce}",
            key.dir_name(),
            std::process::id()
        )));
        let result =
            match tokio::time::timeout(timeout, self.pull(key, location, sha256, &work.0)).await {
                Ok(result) => result,
                Err(_) => Err(PullError::Timeout(timeout)),
            };
        work.remove().await;
        self.inner
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
        match &result {
            Ok(lease) => {
                metrics
                    .download_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(model = %key.model, digest = %key.digest, bytes = lease.bytes,
                               seconds = started.elapsed().as_secs_f64(), "model files pulled");
            }
            Err(e) => {
                metrics.pull_failure(e.reason());
                tracing::warn!(model = %key.model, digest = %key.digest, error = %e, "model pull failed");
            }
        }
        result
    }

    async fn pull(
        &self,
        key: &CacheKey,
        location: &RemoteSource,
        sha256: Option<&str>,
        work: &Path,
    ) -> Result<Lease, PullError> {
        tokio::fs::create_dir(work).await?;
        let limits = Limits {
            max_bytes: self
                .inner
                .limits
                .model
                .max_bytes
                .min(self.inner.limits.size),
            max_files: self.inner.limits.model.max_files,
        };
        let fetched = self
            .inner
            .fetcher
            .fetch(location, sha256, work, limits, &self.inner.metrics)
            .await
            .map_err(|e| match e {
                // Past the cache's own size, say so rather than quoting the smaller limit.
                PullError::Archive(super::archive::ArchiveError::TooLarge(n))
                | PullError::DownloadTooLarge(n)
                    if n == self.inner.limits.size && n < self.inner.limits.model.max_bytes =>
                {
                    PullError::LargerThanCache(n)
                }
                other => other,
            })?;
        let target = self.inner.root.join(key.dir_name());
        {
            // Checked and renamed under the state lock so the index and the disk agree.
            let mut state = self.inner.state();
            if !state.entries.contains_key(key) {
                std::fs::rename(&fetched.root, &target)?;
                state.total = state.total.saturating_add(fetched.bytes);
                state.entries.insert(
                    key.clone(),
                    CachedEntry {
                        dir: target,
                        bytes: fetched.bytes,
                        last_used: SystemTime::now(),
                        leases: 0,
                    },
                );
                self.inner.metrics.cache_bytes.set(clamp(state.total));
            }
        }
        self.lease(key, true).ok_or_else(|| {
            PullError::Io(std::io::Error::other("cache entry vanished after its pull"))
        })
    }

    /// Above the high watermark, removes the least recently used entries that are neither
    /// leased nor `in_use`, until under the low watermark (or nothing else may go).
    /// Returns the removed keys.
    pub async fn evict(&self, in_use: &(dyn Fn(&CacheKey) -> bool + Sync)) -> Vec<CacheKey> {
        let limits = self.inner.limits;
        let (removed, doomed) = {
            let mut state = self.inner.state();
            let high = (limits.size as f64 * limits.high) as u64;
            let low = (limits.size as f64 * limits.low) as u64;
            if state.total <= high {
                return Vec::new();
            }
            let mut candidates: Vec<(SystemTime, CacheKey)> = state
                .entries
                .iter()
                .filter(|(k, e)| e.leases == 0 && !in_use(k))
                .map(|(k, e)| (e.last_used, k.clone()))
                .collect();
            candidates.sort();
            let mut removed = Vec::new();
            let mut doomed = Vec::new();
            for (_, key) in candidates {
                if state.total <= low {
                    break;
                }
                let Some(e) = state.entries.remove(&key) else {
                    continue;
                };
                state.total = state.total.saturating_sub(e.bytes);
                // Renamed away at once (a quick, atomic step); deleted below, unlocked.
                let nonce = self.inner.nonce.fetch_add(1, Ordering::Relaxed);
                let away = self.inner.partial.join(format!("evicted-{nonce}"));
                match std::fs::rename(&e.dir, &away) {
                    Ok(()) => doomed.push(away),
                    Err(err) => {
                        tracing::warn!(dir = %e.dir.display(), error = %err, "cannot remove a cached model");
                        doomed.push(e.dir.clone());
                    }
                }
                removed.push(key);
            }
            self.inner.metrics.cache_bytes.set(clamp(state.total));
            if state.total > high {
                tracing::warn!(
                    bytes = state.total,
                    limit = limits.size,
                    "model cache stays above its high watermark: every other entry is in use"
                );
            }
            (removed, doomed)
        };
        if removed.is_empty() {
            return removed;
        }
        self.inner
            .metrics
            .cache_evictions
            .inc_by(removed.len() as u64);
        for key in &removed {
            tracing::info!(model = %key.model, digest = %key.digest, "cached model files evicted");
        }
        let _ = tokio::task::spawn_blocking(move || {
            for dir in doomed {
                let _ = std::fs::remove_dir_all(dir);
            }
        })
        .await;
        removed
    }
}

/// A pull's private directory, removed when the pull ends however it ends.
struct WorkDir(PathBuf);

impl WorkDir {
    async fn remove(&self) {
        let dir = self.0.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Normally gone already; this covers a pull future dropped half-way.
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Bytes of the regular files below `dir` (links are not followed).
fn tree_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                total = total.saturating_add(entry.metadata()?.len());
            }
        }
    }
    Ok(total)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::egress::EgressPolicy;
    use crate::storage::fetch::FetchOptions;
    use crate::storage::uri::{parse_remote, ArchiveKind};
    use std::io::Write;

    /// A tiny HTTP server answering every GET with `body`, counting requests; optionally
    /// slow so that concurrent callers overlap.
    async fn serve(body: Vec<u8>, delay: Duration) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let body = body.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        (format!("http://{addr}"), hits)
    }

    fn model_zip(payload: usize) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("config.pbtxt", opts).unwrap();
        w.write_all(b"backend: \"python\"").unwrap();
        w.start_file("1/model.py", opts).unwrap();
        w.write_all(&vec![b'x'; payload]).unwrap();
        w.finish().unwrap().into_inner()
    }

    fn cache(root: &Path, size: u64) -> (ModelCache, prometheus_client::registry::Registry) {
        let mut reg = prometheus_client::registry::Registry::with_prefix("mm");
        let metrics = StorageMetrics::register(&mut reg);
        // The test servers are on loopback.
        let options = FetchOptions {
            concurrency: 2,
            egress: EgressPolicy {
                allow_private: true,
            },
            connect_timeout: Duration::from_secs(5),
        };
        let fetcher = Arc::new(Fetcher::new(Default::default(), options).unwrap());
        let limits = CacheLimits {
            size,
            high: 0.9,
            low: 0.5,
            model: Limits {
                max_bytes: 1 << 20,
                max_files: 100,
            },
            pull_timeout: Duration::from_secs(10),
        };
        (
            ModelCache::open(root, limits, fetcher, metrics).unwrap(),
            reg,
        )
    }

    fn location(url: &str) -> RemoteSource {
        RemoteSource::Uri {
            uri: url.to_owned(),
            location: parse_remote(url, &url::Url::parse(url).unwrap()).unwrap(),
            store: None,
        }
    }

    fn key(model: &str, uri: &str) -> CacheKey {
        CacheKey::new(&ModelName::new(model).unwrap(), uri, None)
    }

    #[tokio::test]
    async fn concurrent_gets_share_one_pull_and_later_ones_hit() {
        let (base, hits) = serve(model_zip(1000), Duration::from_millis(200)).await;
        let dir = tempfile::tempdir().unwrap();
        let (cache, _reg) = cache(dir.path(), 1 << 20);
        let uri = format!("{base}/m.zip");
        let (loc, k) = (location(&uri), key("m", &uri));
        assert_eq!(loc.archive(), Some(ArchiveKind::Zip));
        let (a, b) = tokio::join!(cache.get(&k, &loc, None), cache.get(&k, &loc, None));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert!(a.pulled != b.pulled, "one pulled, one waited");
        assert_eq!(a.dir, b.dir);
        assert!(a.dir.join("1/model.py").is_file());
        assert_eq!(cache.total_bytes(), 1000 + 17);
        drop((a, b));
        let again = cache.get(&k, &loc, None).await.unwrap();
        assert!(!again.pulled);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Nothing is left in the partial area.
        assert_eq!(
            std::fs::read_dir(dir.path().join(".partial"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn failed_pulls_leave_nothing_and_wrong_checksums_are_refused() {
        let (base, _) = serve(model_zip(10), Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let (cache, _reg) = cache(dir.path(), 1 << 20);
        let uri = format!("{base}/m.zip");
        let err = cache
            .get(&key("m", &uri), &location(&uri), Some(&"0".repeat(64)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
        assert_eq!(cache.total_bytes(), 0);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(".partial")]);
        assert_eq!(
            std::fs::read_dir(dir.path().join(".partial"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn evicts_least_recently_used_unused_entries_above_the_watermark() {
        let (base, _) = serve(model_zip(3000), Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        // Each entry is ~3 KB: three exceed the high watermark (90% of 10 KB).
        let (cache, reg) = cache(dir.path(), 10_000);
        let mut keys = Vec::new();
        for name in ["a", "b", "c"] {
            let uri = format!("{base}/{name}.zip");
            let k = key(name, &uri);
            drop(cache.get(&k, &location(&uri), None).await.unwrap());
            keys.push(k);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // "a" is in use (loaded somewhere) though least recently used: "b" goes, then "c"
        // (two entries, ~6 KB, are still above the low watermark of 5 KB).
        let in_use_a = |k: &CacheKey| k.model.as_str() == "a";
        let removed = cache.evict(&in_use_a).await;
        assert_eq!(removed, vec![keys[1].clone(), keys[2].clone()]);
        assert!(!dir.path().join(keys[1].dir_name()).exists());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("mm_storage_cache_evictions_total 2"),
            "{text}"
        );
        // Under the high watermark now: nothing more goes.
        assert!(cache.evict(&|_| false).await.is_empty());

        // A reopened cache finds the complete entries.
        drop(cache);
        let (reopened, _reg) = super::tests::cache(dir.path(), 10_000);
        let mut found = reopened.keys();
        found.sort();
        assert_eq!(found, vec![keys[0].clone()]);
    }

    #[tokio::test]
    async fn a_leased_entry_is_never_evicted() {
        let (base, _) = serve(model_zip(3000), Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let (cache, _reg) = cache(dir.path(), 6000);
        let uri_a = format!("{base}/a.zip");
        let lease = cache
            .get(&key("a", &uri_a), &location(&uri_a), None)
            .await
            .unwrap();
        let uri_b = format!("{base}/b.zip");
        drop(
            cache
                .get(&key("b", &uri_b), &location(&uri_b), None)
                .await
                .unwrap(),
        );
        let removed = cache.evict(&|_| false).await;
        assert_eq!(removed, vec![key("b", &uri_b)]);
        assert!(lease.dir.join("1/model.py").exists());
    }

    #[tokio::test]
    async fn a_model_larger_than_the_cache_is_refused() {
        let (base, _) = serve(model_zip(5000), Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let (cache, _reg) = cache(dir.path(), 4000);
        let uri = format!("{base}/big.zip");
        let err = cache
            .get(&key("big", &uri), &location(&uri), None)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("larger than the whole cache"),
            "{err}"
        );
    }

    #[test]
    fn keys_differ_by_uri_and_checksum() {
        let m = ModelName::new("m").unwrap();
        let a = CacheKey::new(&m, "s3://b/m", None);
        assert_eq!(a, CacheKey::new(&m, "s3://b/m", None));
        assert_ne!(a, CacheKey::new(&m, "s3://b/m2", None));
        assert_ne!(a, CacheKey::new(&m, "s3://b/m", Some("ab")));
        assert_eq!(CacheKey::from_dir_name(&a.dir_name()), Some(a));
        assert_eq!(CacheKey::from_dir_name(".partial"), None);
    }
}
