//! A model's files on their way to a replica. Remote files are pulled into the model cache
//! first, before anything is planned or evicted: a failed pull evicts nothing, and an
//! undeclared size is estimated from the pulled files before the model is placed. Then the
//! files are either copied into the shared model repository (Triton loads by name) or read
//! to travel in the load request itself ([`crate::storage::transfer`]).
//!
//! A pull failure is recorded like a load failure: the model is `Failed` with the reason
//! (the admin API's `lastError`), and retried after the same backoff.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;

use tracing::warn;

use super::{Pool, PoolError, Replica};
use crate::spec::{ModelName, StorageUri};
use crate::storage::{CacheKey, FileTransfer, Lease, ModelFiles, PullError, Storage};

/// A model's files ready to hand over; a cached model's files stay on disk while held.
pub(super) struct Files {
    dir: PathBuf,
    _lease: Option<Lease>,
}

impl Pool {
    /// Gives the pool its model storage (the cache for remote URIs and the way files reach
    /// replicas). Call once, before serving; without it only `file://` models load, through
    /// the shared repository. Returns false if storage was attached already.
    pub fn attach_storage(&self, storage: Storage) -> bool {
        self.inner.model_storage.set(Arc::new(storage)).is_ok()
    }

    /// The model's files, pulled into the cache if they are remote and not cached. `None`
    /// while the model is backing off after a failure (the placement reports that).
    pub(super) async fn prepare_files(
        &self,
        model: &ModelName,
    ) -> Result<Option<Files>, PoolError> {
        let (spec, backing_off) = {
            let t = self.table();
            let entry = t
                .get(model)
                .filter(|e| !e.deleting)
                .ok_or_else(|| PoolError::UnknownModel(model.to_string()))?;
            let backing_off = entry
                .failure
                .as_ref()
                .is_some_and(|f| Instant::now() < f.retry_at);
            (entry.spec().clone(), backing_off)
        };
        let source = match &*spec.storage_uri {
            StorageUri::File { path, .. } => {
                return Ok(Some(Files {
                    dir: path.clone(),
                    _lease: None,
                }))
            }
            StorageUri::Remote { .. } if backing_off => return Ok(None),
            StorageUri::Remote(source) => source,
        };
        // `source` shows no credentials.
        let pull_failed = |e: &PullError| format!("pulling {source} failed: {e}");
        let Some(storage) = self.inner.model_storage.get() else {
            return Err(self.files_failed(model, pull_failed(&PullError::NoCache)));
        };
        let key = CacheKey::new(model, &source.identity(), spec.sha256.as_deref());
        let lease = match storage
            .cache()
            .get(&key, source, spec.sha256.as_deref())
            .await
        {
            Ok(lease) => lease,
            Err(e) => return Err(self.files_failed(model, pull_failed(&e))),
        };
        self.table()
            .estimate_from_files(model, &spec.storage_uri, lease.bytes);
        if lease.pulled {
            let in_use = self.cache_keys_in_use();
            storage.cache().evict(&|k| in_use.contains(k)).await;
        }
        // Known before anything is evicted for it: too big to travel in a load request.
        if storage.transfer() == FileTransfer::LoadRequest
            && lease.bytes > storage.max_inline_bytes()
        {
            let e = crate::storage::transfer::TransferError::TooLarge {
                limit: storage.max_inline_bytes(),
            };
            return Err(self.files_failed(model, e.to_string()));
        }
        Ok(Some(Files {
            dir: lease.dir.clone(),
            _lease: Some(lease),
        }))
    }

    /// Cache keys of remote models that have a copy on some replica (loading, loaded or
    /// unloading): their cached files are not evicted.
    fn cache_keys_in_use(&self) -> HashSet<CacheKey> {
        let t = self.table();
        let with_copies: HashSet<&ModelName> = t
            .replica_indexes()
            .filter_map(|idx| t.replica(idx))
            .flat_map(|r| r.by_use().map(|(_, name)| name))
            .collect();
        with_copies
            .into_iter()
            .filter_map(|name| {
                let spec = t.get(name)?.spec();
                match &*spec.storage_uri {
                    StorageUri::Remote(source) => Some(CacheKey::new(
                        name,
                        &source.identity(),
                        spec.sha256.as_deref(),
                    )),
                    StorageUri::File { .. } => None,
                }
            })
            .collect()
    }

    /// Records why the model's files cannot be had on the model, like a failed load, and
    /// returns the error.
    fn files_failed(&self, model: &ModelName, reason: String) -> PoolError {
        self.note_failure(&mut self.table(), model, &reason);
        self.update_gauges();
        warn!(model = %model, error = %reason, "model files could not be pulled");
        PoolError::LoadFailed {
            name: model.to_string(),
            reason,
            retry_in: None,
        }
    }

    /// Hands `files` over for a load of `model`: copies them into the shared repository
    /// (returns `None`), or reads them for the load request (returns them).
    pub(super) async fn stage_files(
        &self,
        model: &ModelName,
        files: Option<&Files>,
    ) -> Result<Option<ModelFiles>, String> {
        let dir = files
            .map(|f| f.dir.clone())
            .ok_or_else(|| "model files were not prepared".to_owned())?;
        let mode = self
            .inner
            .model_storage
            .get()
            .map(|s| (s.transfer(), s.max_inline_bytes()));
        let name = model.clone();
        match mode {
            Some((FileTransfer::LoadRequest, limit)) => tokio::task::spawn_blocking(move || {
                crate::storage::transfer::read_model_files(&dir, name.as_str(), limit)
            })
            .await
            .map_err(|e| e.to_string())?
            .map(Some)
            .map_err(|e| e.to_string()),
            _ => {
                let repository = self.inner.repository.clone();
                tokio::task::spawn_blocking(move || repository.stage(&name, &dir))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|()| None)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Loads `model` on `replica`: by name from the shared repository, or from `files`.
    pub(super) async fn load_staged(
        &self,
        replica: &Replica,
        model: &ModelName,
        files: Option<ModelFiles>,
    ) -> Result<(), String> {
        // Checked last thing before the replica is asked: a leader that was paused past
        // its lease must not load anything when it wakes.
        self.check_may_act()?;
        let loaded = match files {
            None => replica.client.load(model.as_str()).await,
            Some(files) => replica.client.load_files(model.as_str(), &files).await,
        };
        loaded.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;
    use crate::replica::fake::FakeReplica;
    use crate::repository::ModelRepository;
    use crate::spec::StoragePolicy;
    use crate::storage::archive::Limits;
    use crate::storage::{CacheLimits, FetchOptions, Fetcher, ModelCache, StorageMetrics};

    struct Fixture {
        pool: Pool,
        fake: Arc<FakeReplica>,
        repo: tempfile::TempDir,
        _cache: tempfile::TempDir,
    }

    fn fixture(transfer: Option<FileTransfer>) -> Fixture {
        let repo = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeReplica::default());
        let replica = fake.as_replica(0, 1 << 30);
        let mut reg = prometheus_client::registry::Registry::default();
        let pool = Pool::new(
            vec![replica],
            ModelRepository::open(repo.path()).unwrap(),
            StoragePolicy::default(),
            Arc::new(Metrics::register(&mut reg, 10)),
            super::super::Settings::default(),
        );
        if let Some(transfer) = transfer {
            let limits = CacheLimits {
                size: 1 << 20,
                high: 0.9,
                low: 0.7,
                model: Limits {
                    max_bytes: 1 << 20,
                    max_files: 100,
                },
                pull_timeout: Duration::from_secs(5),
            };
            let options = FetchOptions {
                concurrency: 2,
                egress: crate::storage::egress::EgressPolicy {
                    allow_private: true,
                },
                connect_timeout: Duration::from_secs(5),
            };
            let fetcher = Arc::new(Fetcher::new(Default::default(), options).unwrap());
            let metrics = StorageMetrics::register(&mut reg);
            let cache = ModelCache::open(cache_dir.path(), limits, fetcher, metrics).unwrap();
            assert!(pool.attach_storage(Storage::new(cache, transfer, 1 << 20)));
        }
        Fixture {
            pool,
            fake,
            repo,
            _cache: cache_dir,
        }
    }

    fn example(name: &str) -> String {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(name)
            .canonicalize()
            .unwrap();
        format!(
            r#"{{"storageUri": "file://{}", "memory": "1Mi"}}"#,
            dir.display()
        )
    }

    #[tokio::test]
    async fn load_request_mode_sends_the_files_and_stages_nothing() {
        let f = fixture(Some(FileTransfer::LoadRequest));
        f.pool.probe_replicas().await;
        f.pool
            .register("m", example("linear").as_bytes())
            .await
            .unwrap();
        f.pool.route("m").await.unwrap();
        let loads = f.fake.file_loads.lock().unwrap().clone();
        assert_eq!(loads.len(), 1);
        let (model, mut paths) = loads[0].clone();
        paths.sort();
        assert_eq!(
            (model.as_str(), paths),
            (
                "m",
                vec!["1/model.py".to_owned(), "1/weights.json".to_owned()]
            )
        );
        assert_eq!(std::fs::read_dir(f.repo.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn shared_dir_mode_stages_into_the_repository() {
        let f = fixture(None);
        f.pool.probe_replicas().await;
        f.pool
            .register("m", example("linear").as_bytes())
            .await
            .unwrap();
        f.pool.route("m").await.unwrap();
        assert!(f.repo.path().join("m/1/model.py").is_file());
        assert!(f.fake.file_loads.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_pull_marks_the_model_failed_and_loads_nothing() {
        let f = fixture(Some(FileTransfer::SharedDir));
        f.pool.probe_replicas().await;
        // Nothing listens on port 1.
        let body = br#"{"storageUri": "http://127.0.0.1:1/m.zip", "memory": "1Mi"}"#;
        f.pool.register("m", body).await.unwrap();
        let err = f.pool.route("m").await.unwrap_err().to_string();
        assert!(
            err.contains("model 'm' failed to load: pulling http://127.0.0.1:1/m.zip failed: download failed"),
            "{err}"
        );
        let view = f.pool.model("m").unwrap();
        assert_eq!(view.state, super::super::ModelState::Failed);
        assert!(view
            .last_error
            .unwrap_or_default()
            .contains("download failed"));
        assert_eq!(f.fake.loads.load(Ordering::SeqCst), 0);
        // Within the backoff, the same reason is given again without a new pull.
        let again = f.pool.route("m").await.unwrap_err().to_string();
        assert!(again.contains("next attempt in"), "{again}");
    }

    #[tokio::test]
    async fn remote_uris_need_the_cache() {
        let f = fixture(None);
        f.pool.probe_replicas().await;
        let body = br#"{"storageUri": "s3://bucket/m", "memory": "1Mi"}"#;
        f.pool.register("m", body).await.unwrap();
        let err = f.pool.route("m").await.unwrap_err().to_string();
        assert!(err.contains("need the model cache"), "{err}");
    }
}
