//! The model repository that the Triton replicas read (`--model-repository`): the
//! pool-manager puts a model's files there, under the model's registered name, before it
//! asks a replica to load it. This is the "shared repository directory" way of handing
//! files to replicas (a shared volume in Kubernetes); Triton then loads by name.
//!
//! Invariant: `root/<name>` is either absent or a complete copy; copies are written under a
//! hidden staging name and renamed into place, so a replica never sees half a model.
//!
//! A copy still current is not made again: reloading an evicted model whose source has not
//! changed creates and deletes no file. That matters most on a disk, where every inode
//! created costs far more than the bytes copied (on ext4 without a journal, a new inode even
//! skips every inode freed in the last minutes, so replacing copies slows the next ones).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::spec::ModelName;

/// Limits on what one model directory may hold, so a wrong `storageUri` (say, `/`) cannot
/// fill the repository's disk.
const MAX_FILES: usize = 10_000;
const MAX_BYTES: u64 = 64 << 30;
/// A source file changed less than this long before staging may change again without a new
/// ctime (timestamps advance by the kernel's clock tick), so such a copy is not reused.
const SETTLE: Duration = Duration::from_secs(1);

/// Why staging a model's files failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("cannot prepare model repository {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("copying model files from {from} failed: {source}")]
    Copy { from: PathBuf, source: io::Error },
    #[error("model directory {0} holds a symbolic link or special file; only regular files and directories are copied")]
    NotRegular(PathBuf),
    #[error("model directory {0} is larger than the limit ({MAX_FILES} files, {MAX_BYTES} bytes)")]
    TooLarge(PathBuf),
    #[error("removing model files {path} failed: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// A Triton model repository directory shared with the replicas.
#[derive(Debug, Clone)]
pub struct ModelRepository {
    root: PathBuf,
    /// By model, the [`signature`] of the source its current copy was made from, when that
    /// copy may be reused. Empty at start: the first staging after a restart copies.
    current: Arc<Mutex<HashMap<ModelName, u64>>>,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

impl ModelRepository {
    /// Opens (creating if needed) the repository at `root`, removing the staging and
    /// replaced copies a crash left behind (see [`ModelRepository::stage`]).
    pub fn open(root: &Path) -> Result<Self, RepositoryError> {
        let err = |source| RepositoryError::Root {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root).map_err(err)?;
        let root = root.canonicalize().map_err(err)?;
        remove_leftovers(&root);
        Ok(Self {
            root,
            current: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Copies the model directory `source` to `root/<name>`, replacing what was there,
    /// unless that is a copy of `source` as it is now. Blocking: call it from
    /// `spawn_blocking`.
    pub fn stage(&self, name: &ModelName, source: &Path) -> Result<(), RepositoryError> {
        self.stage_at(name, source, SystemTime::now())
    }

    /// [`ModelRepository::stage`] with the clock read at `now`.
    fn stage_at(
        &self,
        name: &ModelName,
        source: &Path,
        now: SystemTime,
    ) -> Result<(), RepositoryError> {
        let target = self.root.join(name.as_str());
        let copy_err = |e| RepositoryError::Copy {
            from: source.to_path_buf(),
            source: e,
        };
        let source = source.canonicalize().map_err(copy_err)?;
        if source == target {
            // Registered straight from the repository under its own name: nothing to copy.
            return Ok(());
        }
        // Taken before the copy: a change made while copying shows as a new signature.
        let signature = signature(&source, now);
        let known = self.current().get(name).copied();
        if signature.is_some() && signature == known && target.is_dir() {
            return Ok(());
        }
        self.current().remove(name);
        self.copy_in(&source, &target, name)?;
        if let Some(signature) = signature {
            self.current().insert(name.clone(), signature);
        }
        Ok(())
    }

    /// Copies `source` under a staging name and renames it to `target`.
    fn copy_in(
        &self,
        source: &Path,
        target: &Path,
        name: &ModelName,
    ) -> Result<(), RepositoryError> {
        let copy_err = |e| RepositoryError::Copy {
            from: source.to_path_buf(),
            source: e,
        };
        let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
        let staging = self
            .root
            .join(format!(".staging-{}-{}-{nonce}", name, std::process::id()));
        let mut budget = Budget::default();
        let copied = copy_tree(source, &staging, &mut budget);
        if let Err(e) = copied {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        let old = self
            .root
            .join(format!(".old-{}-{}-{nonce}", name, std::process::id()));
        let had_old = match std::fs::rename(target, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(copy_err(e));
            }
        };
        if let Err(e) = std::fs::rename(&staging, target) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(copy_err(e));
        }
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }

    /// Removes `root/<name>` if present. Blocking.
    pub fn remove(&self, name: &ModelName) -> Result<(), RepositoryError> {
        self.current().remove(name);
        let path = self.root.join(name.as_str());
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RepositoryError::Remove { path, source }),
        }
    }
}

impl ModelRepository {
    fn current(&self) -> std::sync::MutexGuard<'_, HashMap<ModelName, u64>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A hash of what changes when the tree under `dir` does: every entry's path, kind, inode,
/// size, mtime and ctime (a file rewritten in place gets a new ctime, which no user can set
/// back; a replaced one a new inode). `None` when an entry cannot be read or changed less
/// than [`SETTLE`] before `now` (its next change could keep the same ctime).
fn signature(dir: &Path, now: SystemTime) -> Option<u64> {
    let settled = now.checked_sub(SETTLE)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let mut pending = vec![dir.to_path_buf()];
    let mut entries = 0usize;
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let ctime = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
            u64::try_from(meta.ctime()).ok()?,
            u32::try_from(meta.ctime_nsec()).ok()?,
        ))?;
        if ctime > settled {
            return None;
        }
        entries = entries.saturating_add(1);
        if entries > MAX_FILES {
            return None;
        }
        (
            &path,
            meta.file_type().is_dir(),
            meta.dev(),
            meta.ino(),
            meta.len(),
        )
            .hash(&mut hasher);
        (
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        )
            .hash(&mut hasher);
        if meta.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&path)
                .ok()?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .ok()?;
            children.sort();
            pending.extend(children);
        }
    }
    Some(hasher.finish())
}

/// Removes `.staging-*` and `.old-*` entries of `root`: a copy a crash interrupted, or a
/// replaced copy not yet deleted. Only this process writes those names, and it is starting.
fn remove_leftovers(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".staging-") || name.starts_with(".old-")) {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        match removed {
            Ok(()) => tracing::info!(path = %path.display(), "removed a copy left by a crash"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a copy left by a crash")
            }
        }
    }
}

#[derive(Default)]
struct Budget {
    files: usize,
    bytes: u64,
}

fn copy_tree(from: &Path, to: &Path, budget: &mut Budget) -> Result<(), RepositoryError> {
    let copy_err = |source| RepositoryError::Copy {
        from: from.to_path_buf(),
        source,
    };
    std::fs::create_dir(to).map_err(copy_err)?;
    for entry in std::fs::read_dir(from).map_err(copy_err)? {
        let entry = entry.map_err(copy_err)?;
        let kind = entry.file_type().map_err(copy_err)?;
        let dest = to.join(entry.file_name());
        budget.files += 1;
        if budget.files > MAX_FILES {
            return Err(RepositoryError::TooLarge(from.to_path_buf()));
        }
        if kind.is_dir() {
            copy_tree(&entry.path(), &dest, budget)?;
        } else if kind.is_file() {
            budget.bytes += entry.metadata().map_err(copy_err)?.len();
            if budget.bytes > MAX_BYTES {
                return Err(RepositoryError::TooLarge(from.to_path_buf()));
            }
            std::fs::copy(entry.path(), &dest).map_err(copy_err)?;
        } else {
            return Err(RepositoryError::NotRegular(entry.path()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1")).unwrap();
        std::fs::write(dir.path().join("1/model.py"), "print(1)").unwrap();
        std::fs::write(dir.path().join("config.pbtxt"), "backend: \"python\"").unwrap();
        dir
    }

    #[test]
    fn stages_replaces_and_removes() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = ModelRepository::open(repo_dir.path()).unwrap();
        let name = ModelName::new("m").unwrap();
        let src = source();
        repo.stage(&name, src.path()).unwrap();
        let staged = repo.root().join("m/1/model.py");
        assert_eq!(std::fs::read_to_string(&staged).unwrap(), "print(1)");

        std::fs::write(src.path().join("1/model.py"), "print(2)").unwrap();
        repo.stage(&name, src.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&staged).unwrap(), "print(2)");
        // Nothing hidden is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(repo.root())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());

        repo.remove(&name).unwrap();
        assert!(!repo.root().join("m").exists());
        repo.remove(&name).unwrap();
    }

    /// The inode of `root/m`: a new one means the model was copied again.
    fn staged_inode(repo: &ModelRepository) -> u64 {
        std::fs::metadata(repo.root().join("m")).unwrap().ino()
    }

    #[test]
    fn a_current_copy_is_not_made_again() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = ModelRepository::open(repo_dir.path()).unwrap();
        let name = ModelName::new("m").unwrap();
        let src = source();
        let later = || SystemTime::now() + Duration::from_secs(2);
        // Files changed just now may change again unseen: copied each time.
        repo.stage(&name, src.path()).unwrap();
        let first = staged_inode(&repo);
        repo.stage(&name, src.path()).unwrap();
        assert_ne!(staged_inode(&repo), first);
        // Settled and unchanged: the copy stays.
        repo.stage_at(&name, src.path(), later()).unwrap();
        let settled = staged_inode(&repo);
        repo.stage_at(&name, src.path(), later()).unwrap();
        assert_eq!(staged_inode(&repo), settled);
        // A file replaced by one of the same size and mtime (a new inode): copied again.
        let file = src.path().join("1/model.py");
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::fs::write(src.path().join("1/new"), "print(3)").unwrap();
        std::fs::rename(src.path().join("1/new"), &file).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        repo.stage_at(&name, src.path(), later()).unwrap();
        assert_ne!(staged_inode(&repo), settled);
        let staged = repo.root().join("m/1/model.py");
        assert_eq!(std::fs::read_to_string(&staged).unwrap(), "print(3)");
        // Removed: staged again, even unchanged.
        repo.remove(&name).unwrap();
        repo.stage_at(&name, src.path(), later()).unwrap();
        assert!(staged.is_file());
        // Deleted behind the repository's back: copied again.
        std::fs::remove_dir_all(repo.root().join("m")).unwrap();
        repo.stage_at(&name, src.path(), later()).unwrap();
        assert!(staged.is_file());
    }

    #[test]
    fn refuses_links_and_leaves_nothing_behind() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = ModelRepository::open(repo_dir.path()).unwrap();
        let src = source();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("1/leak")).unwrap();
        let err = repo
            .stage(&ModelName::new("m").unwrap(), src.path())
            .unwrap_err();
        assert!(matches!(err, RepositoryError::NotRegular(_)), "{err}");
        assert_eq!(std::fs::read_dir(repo.root()).unwrap().count(), 0);
    }

    #[test]
    fn opening_removes_what_a_crash_left_behind() {
        let repo_dir = tempfile::tempdir().unwrap();
        let root = repo_dir.path();
        for leftover in [".staging-m-41-0/1", ".old-m-41-3/1", ".staging-x-7-2"] {
            std::fs::create_dir_all(root.join(leftover)).unwrap();
        }
        std::fs::write(root.join(".old-m-41-3/1/model.py"), "x").unwrap();
        std::fs::write(root.join(".staging-file"), "x").unwrap();
        std::fs::create_dir_all(root.join("m/1")).unwrap();
        std::fs::create_dir_all(root.join(".cache")).unwrap();
        let repo = ModelRepository::open(root).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(repo.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".cache", "m"], "models and other names are kept");
    }

    #[test]
    fn staging_from_the_repository_itself_is_a_no_op() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = ModelRepository::open(repo_dir.path()).unwrap();
        let name = ModelName::new("m").unwrap();
        let src = source();
        repo.stage(&name, src.path()).unwrap();
        repo.stage(&name, &repo.root().join("m")).unwrap();
        assert!(repo.root().join("m/1/model.py").exists());
    }
}
