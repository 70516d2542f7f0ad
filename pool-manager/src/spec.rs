//! What a user registers: a model's name and spec (where its files are, how much memory it
//! needs), validated once at the door so the rest of the pool-manager works with values
//! that are known to be safe as directory names, URLs and Triton model names.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::quantity::{self, Bytes};
use crate::storage::uri::{RemoteLocation, RemoteSource, StoreKey};
use crate::storage::{StoreCatalog, StoreType};

/// A model name that passed [`mm_wire::validate_model_name`]: safe as a path segment and as a
/// Triton model-repository directory name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ModelName(String);

impl ModelName {
    /// Validates `name`; see [`mm_wire::validate_model_name`] for the rules.
    pub fn new(name: &str) -> Result<Self, SpecError> {
        mm_wire::validate_model_name(name).map_err(|e| SpecError::Name(e.to_string()))?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ModelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A replica's name, from configuration. Same character rules as model names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ReplicaId(String);

impl ReplicaId {
    pub fn new(name: &str) -> Result<Self, SpecError> {
        mm_wire::validate_model_name(name)
            .map_err(|e| SpecError::Name(e.to_string().replace("model", "replica")))?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a registration was refused. Every variant is the client's fault (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Name(String),
    #[error("invalid model spec: {0}")]
    Json(String),
    #[error("storageUri is longer than {MAX_URI_LEN} bytes")]
    UriTooLong,
    #[error("storageUri {:?} is not a valid URI", mm_wire::redact_uri(.0))]
    UriMalformed(String),
    #[error("storageUri scheme {0:?} is not supported (supported: file, s3, gs, az, http, https)")]
    UnsupportedScheme(String),
    #[error("storageUri must be {0}://bucket/path (no user, port, query or fragment; no empty segments)")]
    ObjectUriShape(&'static str),
    #[error(
        "storageUri bucket {0:?} is not a valid bucket name (3-63 of a-z, 0-9, '.', '-', '_')"
    )]
    BucketName(String),
    #[error(
        "container {0:?} is not a valid Azure container name (3-63 of a-z, 0-9 and single '-')"
    )]
    ContainerName(String),
    #[error("Azure storage account {0:?} is not valid (3-24 of a-z, 0-9)")]
    AzureAccount(String),
    #[error("an http(s) storageUri must name a .tar.gz, .tgz or .zip archive on a host, with no fragment")]
    ArchiveUriShape,
    #[error("storage.key {0:?} is not a valid store key (1-63 of A-Z, a-z, 0-9, '_', '-', '.')")]
    StoreKey(String),
    #[error(
        "storage.key {0:?} is not a store in the pool-manager's storage settings (known: {1})"
    )]
    UnknownStore(String, String),
    #[error("storage.key {key:?} is a {kind} store: {reason}")]
    StoreMismatch {
        key: String,
        kind: &'static str,
        reason: &'static str,
    },
    #[error(
        "give storageUri, or storage.key with storage.path (not both storageUri and storage.path)"
    )]
    NoSource,
    #[error("storage.path must be a path of ordinary names inside the store (no empty, '.' or '..' segments)")]
    StorePath,
    #[error("storage.bucket applies only with storage.path")]
    BucketWithoutPath,
    #[error("modelFormat {name:?} is not one a Triton replica loads: {reason}")]
    ModelFormat { name: String, reason: String },
    #[error("pool must be 1-253 characters of a-z, 0-9, '-' and '.'")]
    PoolName,
    #[error("sha256 must be 64 hexadecimal characters")]
    Sha256Format,
    #[error("sha256 applies only to archive storage URIs (.tar.gz, .tgz, .zip)")]
    Sha256NotArchive,
    #[error("storageUri must be file:///absolute/path (no host, query or fragment)")]
    FileUriShape,
    #[error("storageUri must not contain '.' or '..' path segments, encoded or not")]
    Traversal,
    #[error("storageUri {} is outside the allowed storage roots", mm_wire::redact_uri(.0))]
    OutsideRoots(String),
    #[error(
        "storageUri {} is not a readable directory: {reason}",
        mm_wire::redact_uri(uri)
    )]
    NotADirectory { uri: String, reason: String },
    #[error("storageUri {} is not a Triton model directory: it has no numeric version subdirectory (e.g. 1/)", mm_wire::redact_uri(.0))]
    NotTritonLayout(String),
    #[error("memory must be greater than zero")]
    ZeroMemory,
    #[error("copies: need 0 <= minCopies <= maxCopies, 1 <= maxCopies <= {MAX_COPIES}")]
    Copies,
}

const MAX_URI_LEN: usize = 4096;

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUri {
    /// A Triton model directory on the pool-manager's disk (`file:///...`).
    File { uri: String, path: PathBuf },
    /// Files in an object store, behind a URL, or in a named store, pulled into the local
    /// cache before a load ([`crate::storage`]).
    Remote(RemoteSource),
}

impl StorageUri {
    /// Parses and checks a URI without touching the disk.
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        Self::parse_with_store(raw, None)
    }

    /// Parses a URI reached with the settings of the named store `store` (if any).
    pub fn parse_with_store(raw: &str, store: Option<StoreKey>) -> Result<Self, SpecError> {
        if raw.len() > MAX_URI_LEN {
            return Err(SpecError::UriTooLong);
        }
        let url = url::Url::parse(raw).map_err(|_| SpecError::UriMalformed(raw.to_owned()))?;
        if url.scheme() != "file" {
            let location = crate::storage::uri::parse_remote(raw, &url)?;
            return Ok(StorageUri::Remote(RemoteSource::Uri {
                uri: raw.to_owned(),
                location,
                store,
            }));
        }
        if store.is_some() {
            return Err(SpecError::FileUriShape);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(SpecError::FileUriShape);
        }
        if !matches!(url.host_str(), None | Some("") | Some("localhost")) {
            return Err(SpecError::FileUriShape);
        }
        // The url crate normalises `..` away, so the check runs on the raw text: every
        // segment, percent-decoded, must be an ordinary name.
        let raw_path = raw
            .strip_prefix("file://localhost")
            .or_else(|| raw.strip_prefix("file://"))
            .ok_or(SpecError::FileUriShape)?;
        if !raw_path.starts_with('/') {
            return Err(SpecError::FileUriShape);
        }
        for segment in raw_path.split('/') {
            let decoded = percent_decode(segment);
            if decoded == "." || decoded == ".." || decoded.contains(['\\', '\0']) {
                return Err(SpecError::Traversal);
            }
        }
        let path = url.to_file_path().map_err(|_| SpecError::FileUriShape)?;
        if path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(SpecError::Traversal);
        }
        Ok(StorageUri::File {
            uri: raw.to_owned(),
            path,
        })
    }

    /// A path in a named store (ModelMesh's `storage.key` + `storage.path`).
    pub fn store_path(
        store: StoreKey,
        path: &str,
        bucket: Option<String>,
    ) -> Result<Self, SpecError> {
        if path.len() > MAX_URI_LEN {
            return Err(SpecError::UriTooLong);
        }
        let path = crate::storage::uri::checked_key(path.trim_start_matches('/'), || {
            SpecError::StorePath
        })?;
        if path.is_empty() {
            return Err(SpecError::StorePath);
        }
        if let Some(b) = &bucket {
            // Checked when the store's type is known (at the pull); the shape here.
            if b.is_empty() || b.len() > 63 || b.contains(['/', '?', '#', '@']) {
                return Err(SpecError::BucketName(b.clone()));
            }
        }
        Ok(StorageUri::Remote(RemoteSource::Path {
            store,
            path,
            bucket,
        }))
    }

    /// The `storageUri` as registered, credentials included: only for the durable store.
    /// `None` for a named-store path. Anything shown goes through `Display` instead.
    pub fn secret_uri(&self) -> Option<&str> {
        match self {
            StorageUri::File { uri, .. } | StorageUri::Remote(RemoteSource::Uri { uri, .. }) => {
                Some(uri)
            }
            StorageUri::Remote(RemoteSource::Path { .. }) => None,
        }
    }

    /// The `storageUri` as views show it: user info and query string redacted.
    pub fn redacted_uri(&self) -> Option<String> {
        self.secret_uri().map(mm_wire::redact_uri)
    }

    /// The named store, path and bucket, as views and the durable store hold them.
    pub fn store_ref(&self) -> Option<StoreRef> {
        match self {
            StorageUri::File { .. } => None,
            StorageUri::Remote(RemoteSource::Uri { store, .. }) => {
                store.as_ref().map(|key| StoreRef {
                    key: key.as_str().to_owned(),
                    path: None,
                    bucket: None,
                })
            }
            StorageUri::Remote(RemoteSource::Path {
                store,
                path,
                bucket,
            }) => Some(StoreRef {
                key: store.as_str().to_owned(),
                path: Some(path.clone()),
                bucket: bucket.clone(),
            }),
        }
    }
}

/// Shows where the files are, never with credentials.
impl fmt::Display for StorageUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUri::File { uri, .. } => f.write_str(&mm_wire::redact_uri(uri)),
            StorageUri::Remote(source) => source.fmt(f),
        }
    }
}

/// `storage` in a spec, a view and the durable store: a named store (ModelMesh's
/// `storage.key`), and the path in it (or a `storageUri` to reach with its settings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreRef {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The bucket (container) in the store, instead of the store's default bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
}

/// The model format a spec declares (KServe's `modelFormat`, TrainedModel's `framework`):
/// recorded, shown and exported, and checked against what a Triton replica loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelFormat {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Model formats a Triton replica loads, each a Triton model directory (`config.pbtxt`
/// and version folders) for the backend named: the formats KServe's and ModelMesh's
/// Triton runtimes declare, plus Triton's own backends.
pub const TRITON_FORMATS: &[&str] = &[
    "triton",
    "onnx",
    "pytorch",
    "tensorflow",
    "tensorrt",
    "python",
    "openvino",
];

impl ModelFormat {
    /// What a spec that names no format is: a Triton model directory, for any backend.
    pub fn triton() -> Self {
        Self {
            name: "triton".into(),
            version: None,
        }
    }

    /// Lowercases the name and refuses formats a Triton replica cannot load.
    fn checked(mut self) -> Result<Self, SpecError> {
        self.name = self.name.trim().to_ascii_lowercase();
        if TRITON_FORMATS.contains(&self.name.as_str()) {
            return Ok(self);
        }
        let reason = match self.name.as_str() {
            "keras" => "convert the model to a TensorFlow SavedModel (ModelMesh's Triton adapter did this; this gateway does not)".to_owned(),
            "sklearn" | "xgboost" | "lightgbm" | "pmml" | "mlflow" | "huggingface" | "paddle"
            | "spark" | "catboost" => format!(
                "it needs a runtime other than Triton (MLServer, KServe's own servers); a Triton replica loads {}",
                TRITON_FORMATS.join(", ")
            ),
            _ => format!("a Triton replica loads {}", TRITON_FORMATS.join(", ")),
        };
        Err(SpecError::ModelFormat {
            name: self.name,
            reason,
        })
    }
}

fn checked_pool(pool: Option<String>) -> Result<Option<String>, SpecError> {
    match pool {
        Some(p)
            if p.is_empty()
                || p.len() > 253
                || !p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.')
                }) =>
        {
            Err(SpecError::PoolName)
        }
        other => Ok(other),
    }
}

pub(crate) fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// Public for the OpenAPI document; the handler parses the raw body with
// `ModelSpec::from_json` to report errors in its own words.
/// The JSON body of `PUT /api/v1/models/{name}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpecRequest {
    #[serde(default)]
    storage_uri: Option<String>,
    /// A named store (and a path in it).
    #[serde(default)]
    storage: Option<StoreRef>,
    #[serde(default)]
    model_format: Option<ModelFormat>,
    /// The pool (KServe InferenceService) the model was declared for: recorded.
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    #[schema(schema_with = quantity::schema)]
    memory: Option<Bytes>,
    #[serde(default)]
    #[schema(schema_with = quantity::schema)]
    gpu_memory: Option<Bytes>,
    #[serde(default)]
    min_copies: Option<u32>,
    #[serde(default)]
    max_copies: Option<u32>,
    /// Checksum of an archive URI's file, checked after the download.
    #[serde(default)]
    sha256: Option<String>,
}

/// Most copies of one model the pool will run.
pub const MAX_COPIES: u32 = 64;

/// A registered model's spec, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Boxed: a spec lives in every registry entry, and the URI is its largest part
    /// (144 bytes inline) while few readers need it.
    pub storage_uri: Box<StorageUri>,
    /// Host memory the model needs on a replica, in bytes: declared, or estimated from the
    /// size of its files when not declared.
    pub memory: u64,
    /// Whether `memory` was declared (true) or estimated (false).
    pub memory_declared: bool,
    /// GPU memory the model needs on a replica, in bytes (0: a CPU model).
    pub gpu_memory: u64,
    /// Copies kept loaded whatever the traffic: `>= 1` pins the model (never evicted).
    pub min_copies: u32,
    /// Most copies traffic may scale the model to.
    pub max_copies: u32,
    /// The archive's SHA-256 (lowercase hex), checked after each download.
    pub sha256: Option<String>,
    pub model_format: Option<ModelFormat>,
    pub pool: Option<String>,
}

/// A spec as the durable store keeps it: everything needed to serve the model again after a
/// restart, without touching the disk (the files may be on a volume that mounts later; the
/// load reports that case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredSpec {
    /// With credentials, as registered (the only place that keeps them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StoreRef>,
    pub memory: u64,
    pub memory_declared: bool,
    pub gpu_memory: u64,
    pub min_copies: u32,
    pub max_copies: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_format: Option<ModelFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

impl From<&ModelSpec> for StoredSpec {
    fn from(spec: &ModelSpec) -> Self {
        Self {
            storage_uri: spec.storage_uri.secret_uri().map(str::to_owned),
            storage: spec.storage_uri.store_ref(),
            model_format: spec.model_format.clone(),
            pool: spec.pool.clone(),
            memory: spec.memory,
            memory_declared: spec.memory_declared,
            gpu_memory: spec.gpu_memory,
            min_copies: spec.min_copies,
            max_copies: spec.max_copies,
            sha256: spec.sha256.clone(),
        }
    }
}

impl TryFrom<StoredSpec> for ModelSpec {
    type Error = SpecError;

    fn try_from(s: StoredSpec) -> Result<Self, SpecError> {
        if s.max_copies == 0 || s.max_copies > MAX_COPIES || s.min_copies > s.max_copies {
            return Err(SpecError::Copies);
        }
        // Store keys are not checked against the settings here: a store removed from
        // them fails the model's pulls with a message, it does not lose the model.
        let storage_uri = storage_of(s.storage_uri.as_deref(), s.storage)?;
        let sha256 = checked_sha256(&storage_uri, s.sha256.as_deref())?;
        Ok(ModelSpec {
            storage_uri: Box::new(storage_uri),
            memory: s.memory.max(1),
            memory_declared: s.memory_declared,
            gpu_memory: s.gpu_memory,
            min_copies: s.min_copies,
            max_copies: s.max_copies,
            sha256,
            model_format: Some(s.model_format.unwrap_or_else(ModelFormat::triton)),
            pool: s.pool,
        })
    }
}

/// Checks that a spec's files can be used, against the disk. Kept apart from JSON parsing
/// so parsing stays pure and the disk checks can be bounded by the caller.
#[derive(Debug, Clone, Default)]
pub struct StoragePolicy {
    /// When non-empty, `file://` URIs must resolve (after following links) inside one of
    /// these directories.
    pub allowed_roots: Vec<PathBuf>,
    /// The named stores a `storage.key` may choose.
    pub stores: StoreCatalog,
}

/// Files are estimated to take this much more memory once loaded than on disk (1.25x).
const ESTIMATE_NUM: u64 = 5;
const ESTIMATE_DEN: u64 = 4;

impl ModelSpec {
    /// Parses a registration body and checks its storage against the disk.
    pub fn from_json(body: &[u8], policy: &StoragePolicy) -> Result<Self, SpecError> {
        let req: SpecRequest =
            serde_json::from_slice(body).map_err(|e| SpecError::Json(scrub_json_error(&e)))?;
        let storage_uri = storage_of(req.storage_uri.as_deref(), req.storage)?;
        check_store(&storage_uri, &policy.stores)?;
        let sha256 = checked_sha256(&storage_uri, req.sha256.as_deref())?;
        let model_format = Some(match req.model_format {
            Some(f) => f.checked()?,
            None => ModelFormat::triton(),
        });
        let pool = checked_pool(req.pool)?;
        // A local directory is checked now; remote files are only looked at when pulled.
        let local = match &storage_uri {
            StorageUri::File { uri, path } => Some(check_model_dir(uri, path, policy)?),
            StorageUri::Remote(_) => None,
        };
        let (memory, memory_declared) = match (req.memory, &local) {
            (Some(Bytes(0)), _) => return Err(SpecError::ZeroMemory),
            (Some(Bytes(n)), _) => (n, true),
            (None, Some(dir)) => {
                let on_disk = dir_size(dir);
                (on_disk.saturating_mul(ESTIMATE_NUM) / ESTIMATE_DEN, false)
            }
            // Estimated from the pulled files before the first placement (see
            // `ModelSpec::estimate_from_files`); nothing is known yet.
            (None, None) => (0, false),
        };
        let min_copies = req.min_copies.unwrap_or(0);
        let max_copies = req.max_copies.unwrap_or(1);
        if max_copies == 0 || max_copies > MAX_COPIES || min_copies > max_copies {
            return Err(SpecError::Copies);
        }
        Ok(ModelSpec {
            storage_uri: Box::new(storage_uri),
            memory: memory.max(1),
            memory_declared,
            gpu_memory: req.gpu_memory.map(|b| b.0).unwrap_or(0),
            min_copies,
            max_copies,
            sha256,
            model_format,
            pool,
        })
    }

    /// The local directory holding the model's files; `None` for remote files, which
    /// are in the cache once pulled.
    pub fn local_dir(&self) -> Option<&Path> {
        match &*self.storage_uri {
            StorageUri::File { path, .. } => Some(path),
            StorageUri::Remote(_) => None,
        }
    }

    /// Sets an undeclared memory size from the size of the model's files (1.25x), as
    /// registration does for local directories. A declared size is kept.
    pub fn estimate_from_files(&mut self, bytes: u64) {
        if !self.memory_declared {
            self.memory = (bytes.saturating_mul(ESTIMATE_NUM) / ESTIMATE_DEN).max(1);
        }
    }

    pub fn memory_text(&self) -> String {
        quantity::format_bytes(self.memory)
    }

    /// Whether registering `new` again would change nothing: the same spec, where an
    /// undeclared size counts as the estimate `self` has made since from the same files.
    pub fn is_unchanged_by(&self, new: &ModelSpec) -> bool {
        let same_files = self.storage_uri == new.storage_uri && self.sha256 == new.sha256;
        if same_files && !self.memory_declared && !new.memory_declared {
            let mut new = new.clone();
            new.memory = self.memory;
            return *self == new;
        }
        self == new
    }

    /// Whether a change from `self` to `other` needs the loaded copies reloaded (the files
    /// may differ); other fields are applied in place.
    pub fn needs_reload(&self, other: &ModelSpec) -> bool {
        self.storage_uri != other.storage_uri || self.sha256 != other.sha256
    }
}

/// The spec's `sha256`, checked: well formed, and only for a URI naming an archive.
fn checked_sha256(uri: &StorageUri, sha256: Option<&str>) -> Result<Option<String>, SpecError> {
    let Some(text) = sha256 else {
        return Ok(None);
    };
    let sha256 = crate::storage::uri::parse_sha256(text)?;
    match uri {
        StorageUri::Remote(source) if source.archive().is_some() => Ok(Some(sha256)),
        _ => Err(SpecError::Sha256NotArchive),
    }
}

/// The storage a spec names: `storageUri` (optionally with `storage.key`), or
/// `storage.key` + `storage.path`.
fn storage_of(uri: Option<&str>, store: Option<StoreRef>) -> Result<StorageUri, SpecError> {
    match (uri, store) {
        (Some(uri), None) => StorageUri::parse(uri),
        (
            Some(uri),
            Some(StoreRef {
                key,
                path: None,
                bucket: None,
            }),
        ) => StorageUri::parse_with_store(uri, Some(StoreKey::new(&key)?)),
        (
            None,
            Some(StoreRef {
                key,
                path: Some(path),
                bucket,
            }),
        ) => StorageUri::store_path(StoreKey::new(&key)?, &path, bucket),
        (
            _,
            Some(StoreRef {
                path: None,
                bucket: Some(_),
                ..
            }),
        ) => Err(SpecError::BucketWithoutPath),
        _ => Err(SpecError::NoSource),
    }
}

/// Refuses a `storage.key` the settings do not have, or one of the wrong type for the URI.
fn check_store(storage: &StorageUri, stores: &StoreCatalog) -> Result<(), SpecError> {
    let StorageUri::Remote(source) = storage else {
        return Ok(());
    };
    let Some(key) = source.store() else {
        return Ok(());
    };
    let Some(kind) = stores.get(key.as_str()) else {
        let known = stores.keys();
        let known = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        return Err(SpecError::UnknownStore(key.as_str().to_owned(), known));
    };
    let mismatch = |reason| SpecError::StoreMismatch {
        key: key.as_str().to_owned(),
        kind: kind.as_str(),
        reason,
    };
    match (source, kind) {
        (RemoteSource::Path { .. }, StoreType::Http) if source.archive().is_none() => Err(
            mismatch("storage.path must name a .tar.gz, .tgz or .zip archive"),
        ),
        (RemoteSource::Path { .. }, _) => Ok(()),
        (RemoteSource::Uri { location, .. }, _) => {
            let scheme = match location {
                RemoteLocation::Object { scheme, .. } => scheme.as_str(),
                RemoteLocation::Http { .. } => "http",
            };
            match (scheme, kind) {
                ("s3", StoreType::S3) | ("gs", StoreType::Gcs) | ("az", StoreType::Azure) => Ok(()),
                _ => Err(mismatch("its storageUri must use the store's scheme (s3://, gs:// or az://), or use storage.path")),
            }
        }
    }
}

/// serde_json's message without the offending value (a URI with credentials, say).
fn scrub_json_error(e: &serde_json::Error) -> String {
    mm_wire::scrub_uris(&e.to_string())
}

fn check_model_dir(uri: &str, path: &Path, policy: &StoragePolicy) -> Result<PathBuf, SpecError> {
    let not_dir = |reason: String| SpecError::NotADirectory {
        uri: uri.to_owned(),
        reason,
    };
    let canonical = path.canonicalize().map_err(|e| not_dir(e.to_string()))?;
    if !canonical.is_dir() {
        return Err(not_dir("not a directory".into()));
    }
    if !policy.allowed_roots.is_empty()
        && !policy
            .allowed_roots
            .iter()
            .any(|root| canonical.starts_with(root))
    {
        return Err(SpecError::OutsideRoots(uri.to_owned()));
    }
    let has_version = std::fs::read_dir(&canonical)
        .map_err(|e| not_dir(e.to_string()))?
        .filter_map(Result::ok)
        .any(|e| {
            e.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && e.file_name()
                    .to_str()
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    if !has_version {
        return Err(SpecError::NotTritonLayout(uri.to_owned()));
    }
    Ok(canonical)
}

/// Total size of the regular files below `dir` (links are not followed). Bounded by the
/// number of entries so a huge tree cannot stall a registration.
fn dir_size(dir: &Path) -> u64 {
    const MAX_ENTRIES: usize = 100_000;
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            seen += 1;
            if seen > MAX_ENTRIES {
                return total;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => {
                    total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1")).unwrap();
        std::fs::write(dir.path().join("1/model.py"), vec![b'x'; 4000]).unwrap();
        std::fs::write(dir.path().join("config.pbtxt"), "backend: \"python\"").unwrap();
        dir
    }

    fn body(uri: &str, memory: &str) -> Vec<u8> {
        format!(r#"{{"storageUri": {uri:?}, "memory": {memory}}}"#).into_bytes()
    }

    #[test]
    fn accepts_a_file_uri_with_declared_memory() {
        let dir = model_dir();
        let uri = format!("file://{}", dir.path().display());
        let spec =
            ModelSpec::from_json(&body(&uri, "\"64Mi\""), &StoragePolicy::default()).unwrap();
        assert_eq!(spec.memory, 64 << 20);
        assert!(spec.memory_declared);
        assert_eq!(spec.local_dir(), Some(dir.path()));
    }

    #[test]
    fn reads_gpu_memory_and_copies_with_defaults() {
        let dir = model_dir();
        let uri = format!("file://{}", dir.path().display());
        let spec = ModelSpec::from_json(&body(&uri, "1"), &StoragePolicy::default()).unwrap();
        assert_eq!(
            (spec.gpu_memory, spec.min_copies, spec.max_copies),
            (0, 0, 1)
        );
        let raw = format!(
            r#"{{"storageUri": {uri:?}, "memory": "1Gi", "gpuMemory": "2Gi", "minCopies": 1, "maxCopies": 3}}"#
        );
        let spec = ModelSpec::from_json(raw.as_bytes(), &StoragePolicy::default()).unwrap();
        assert_eq!(
            (spec.gpu_memory, spec.min_copies, spec.max_copies),
            (2 << 30, 1, 3)
        );
    }

    #[test]
    fn estimates_memory_from_file_sizes_when_not_declared() {
        let dir = model_dir();
        let uri = format!("file://{}", dir.path().display());
        let raw = format!(r#"{{"storageUri": {uri:?}}}"#);
        let spec = ModelSpec::from_json(raw.as_bytes(), &StoragePolicy::default()).unwrap();
        let on_disk = 4000 + "backend: \"python\"".len() as u64;
        assert_eq!(spec.memory, on_disk * 5 / 4);
        assert!(!spec.memory_declared);
    }

    #[test]
    fn refuses_bad_specs() {
        let dir = model_dir();
        let good = format!("file://{}", dir.path().display());
        let p = StoragePolicy::default();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{".to_vec(), "invalid model spec"),
            (b"[]".to_vec(), "give storageUri"),
            (b"{}".to_vec(), "give storageUri"),
            (
                br#"{"storage": {"key": "nope", "path": "m"}}"#.to_vec(),
                "not a store in the pool-manager's storage settings (known: none)",
            ),
            (
                br#"{"storage": {"key": "a", "bucket": "b"}, "storageUri": "s3://bkt/m"}"#.to_vec(),
                "storage.bucket applies only with storage.path",
            ),
            (
                br#"{"storageUri": "s3://bkt/m", "storage": {"key": "a", "path": "m"}}"#.to_vec(),
                "not both",
            ),
            (
                br#"{"storage": {"key": "a b", "path": "m"}}"#.to_vec(),
                "not a valid store key",
            ),
            (
                format!(r#"{{"storageUri": {good:?}, "modelFormat": {{"name": "sklearn"}}}}"#)
                    .into_bytes(),
                "needs a runtime other than Triton",
            ),
            (
                format!(r#"{{"storageUri": {good:?}, "pool": "Not A Pool"}}"#).into_bytes(),
                "pool must be",
            ),
            (
                br#"{"storageUri": "https://u:pw@h/m.zip?sig=secret", "sha256": "abc"}"#.to_vec(),
                "64 hexadecimal",
            ),
            (
                format!(r#"{{"storageUri": {good:?}, "memory": "1Gi", "extra": 1}}"#).into_bytes(),
                "unknown field",
            ),
            (body(&good, "\"lots\""), "invalid model spec"),
            (body(&good, "-1"), "invalid model spec"),
            (body(&good, "0"), "greater than zero"),
            (body("ftp://host/m", "1"), "not supported"),
            (body("s3://Bucket/m", "1"), "bucket"),
            (body("https://host/m", "1"), "archive"),
            (
                format!(
                    r#"{{"storageUri": {good:?}, "sha256": "{}"}}"#,
                    "a".repeat(64)
                )
                .into_bytes(),
                "only to archive",
            ),
            (
                br#"{"storageUri": "https://h/m.zip", "sha256": "abc"}"#.to_vec(),
                "64 hexadecimal",
            ),
            (body("file://host/tmp/m", "1"), "file:///absolute"),
            (body("file:///tmp/../etc", "1"), "'..'"),
            (body("file:///tmp/%2e%2e/etc", "1"), "'..'"),
            (body("file:///tmp/./m", "1"), "'..'"),
            (
                body("file:///does/not/exist", "1"),
                "not a readable directory",
            ),
            (body("not a uri", "1"), "not a valid URI"),
            (body(&format!("{good}?x=1"), "1"), "file:///absolute"),
            (body("file:///tmp", "1"), "not a Triton model directory"),
            (
                format!(r#"{{"storageUri": {good:?}, "minCopies": 2, "maxCopies": 1}}"#)
                    .into_bytes(),
                "minCopies",
            ),
            (
                format!(r#"{{"storageUri": {good:?}, "maxCopies": 0}}"#).into_bytes(),
                "minCopies",
            ),
            (
                format!(r#"{{"storageUri": {good:?}, "minCopies": -1}}"#).into_bytes(),
                "invalid model spec",
            ),
            (
                format!(r#"{{"storageUri": {good:?}, "gpuMemory": "1Zi"}}"#).into_bytes(),
                "invalid model spec",
            ),
        ];
        for (raw, want) in cases {
            let err = ModelSpec::from_json(&raw, &p).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: got {err:?}, want {want:?}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn accepts_remote_uris_without_touching_the_network() {
        let p = StoragePolicy::default();
        let raw = br#"{"storageUri": "s3://models/fraud/v3/"}"#;
        let spec = ModelSpec::from_json(raw, &p).unwrap();
        assert!(matches!(*spec.storage_uri, StorageUri::Remote { .. }));
        assert_eq!(spec.local_dir(), None);
        // Undeclared: estimated from the files once pulled.
        assert!(!spec.memory_declared);
        let mut pulled = spec.clone();
        pulled.estimate_from_files(4000);
        assert_eq!(pulled.memory, 5000);
        let sha = "AB".repeat(32);
        let raw = format!(
            r#"{{"storageUri": "https://example.com/m.tar.gz", "memory": "1Gi", "sha256": "{sha}"}}"#
        );
        let spec = ModelSpec::from_json(raw.as_bytes(), &p).unwrap();
        assert_eq!(spec.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        let mut declared = spec.clone();
        declared.estimate_from_files(4000);
        assert_eq!(declared.memory, 1 << 30);
        // A new checksum is a new version of the files.
        let mut other = spec.clone();
        other.sha256 = Some("cd".repeat(32));
        assert!(spec.needs_reload(&other));
        // And the durable form round-trips.
        let stored = StoredSpec::from(&spec);
        assert_eq!(ModelSpec::try_from(stored).unwrap(), spec);
    }

    #[test]
    fn named_stores_are_chosen_by_key_and_checked_against_the_settings() {
        let policy = StoragePolicy::default();
        let mut stores = std::collections::BTreeMap::new();
        stores.insert("minio".to_owned(), StoreType::S3);
        stores.insert("web".to_owned(), StoreType::Http);
        policy.stores.set(stores);
        let ok = |raw: &str| ModelSpec::from_json(raw.as_bytes(), &policy).unwrap();
        let err = |raw: &str| {
            ModelSpec::from_json(raw.as_bytes(), &policy)
                .unwrap_err()
                .to_string()
        };
        let spec = ok(
            r#"{"storage": {"key": "minio", "path": "/sklearn/m/"}, "modelFormat": {"name": "ONNX", "version": "1"}, "pool": "triton-pool"}"#,
        );
        assert_eq!(
            spec.storage_uri.store_ref(),
            Some(StoreRef {
                key: "minio".into(),
                path: Some("sklearn/m".into()),
                bucket: None
            })
        );
        assert_eq!(spec.storage_uri.secret_uri(), None);
        assert_eq!(spec.model_format.as_ref().unwrap().name, "onnx");
        assert_eq!(ModelSpec::try_from(StoredSpec::from(&spec)).unwrap(), spec);
        let keyed_uri = ok(r#"{"storageUri": "s3://models/m", "storage": {"key": "minio"}}"#);
        assert_eq!(
            keyed_uri.storage_uri.to_string(),
            "s3://models/m (store minio)"
        );
        assert!(
            err(r#"{"storageUri": "gs://models/m", "storage": {"key": "minio"}}"#)
                .contains("is a s3 store")
        );
        assert!(err(r#"{"storage": {"key": "web", "path": "m/dir"}}"#).contains(".tar.gz"));
        ok(r#"{"storage": {"key": "web", "path": "m/v1.tar.gz"}}"#);
        assert!(err(r#"{"storage": {"key": "minio", "path": "a/../b"}}"#).contains("'..'"));
        assert!(err(r#"{"storage": {"key": "other", "path": "m"}}"#).contains("known: minio, web"));
    }

    #[test]
    fn only_the_stored_spec_keeps_a_uri_s_credentials() {
        let raw = "https://user:pw@host.example/x.tar.gz?X-Amz-Signature=secret";
        let spec = ModelSpec::from_json(
            format!(r#"{{"storageUri": "{raw}", "memory": "1Mi"}}"#).as_bytes(),
            &StoragePolicy::default(),
        )
        .unwrap();
        assert_eq!(spec.storage_uri.secret_uri(), Some(raw));
        let stored = StoredSpec::from(&spec);
        assert_eq!(stored.storage_uri.as_deref(), Some(raw));
        for shown in [
            spec.storage_uri.to_string(),
            spec.storage_uri.redacted_uri().unwrap(),
            format!("{:?}", SpecError::UriMalformed(raw.to_owned()).to_string()),
        ] {
            assert!(
                !shown.contains("secret") && !shown.contains("pw"),
                "{shown}"
            );
        }
    }

    #[test]
    fn enforces_allowed_roots() {
        let dir = model_dir();
        let uri = format!("file://{}", dir.path().display());
        let other = tempfile::tempdir().unwrap();
        let policy = StoragePolicy {
            allowed_roots: vec![other.path().canonicalize().unwrap()],
            ..StoragePolicy::default()
        };
        let err = ModelSpec::from_json(&body(&uri, "1"), &policy).unwrap_err();
        assert!(matches!(err, SpecError::OutsideRoots(_)));
        let policy = StoragePolicy {
            allowed_roots: vec![dir.path().parent().unwrap().canonicalize().unwrap()],
            ..StoragePolicy::default()
        };
        assert!(ModelSpec::from_json(&body(&uri, "1"), &policy).is_ok());
    }

    #[test]
    fn percent_decoding_handles_edges() {
        assert_eq!(percent_decode("%2e%2E"), "..");
        assert_eq!(percent_decode("a%"), "a%");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
