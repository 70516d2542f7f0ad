//! What the pool keeps of a model once it has loaded: its KServe V2 metadata and its model
//! configuration, as the replica answered them, so that metadata and readiness requests
//! for a model loaded nowhere are answered without loading it.
//!
//! Invariant: a record carries the digest of the spec it was read under ([`spec_digest`]);
//! it is served only while the model's spec has that digest, so a spec whose files may
//! differ never answers with the old version's metadata.

pub mod grpc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::{ModelSpec, StoredSpec};

/// A model's description as its replica gave it after a load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeptMetadata {
    /// [`spec_digest`] of the spec the model was loaded under.
    pub spec_digest: String,
    /// The V2 metadata (`GET /v2/models/{m}`), a JSON object.
    pub metadata: serde_json::Value,
    /// The model configuration (`GET /v2/models/{m}/config`), when the replica gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// Why a kept record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The stored bytes are not a record of this version.
    #[error("unreadable metadata record: {0}")]
    Unreadable(String),
    /// The metadata does not fit the V2 gRPC message.
    #[error("metadata does not fit ModelMetadataResponse: {0}")]
    NotEncodable(String),
}

/// The digest of what decides a model's files (storage location and checksum): the spec
/// fields whose change reloads the model ([`ModelSpec::needs_reload`]). Memory, copies and
/// the like do not change it.
pub fn spec_digest(spec: &ModelSpec) -> String {
    let stored = StoredSpec::from(spec);
    let identity = serde_json::json!({
        "storageUri": stored.storage_uri,
        "storage": stored.storage,
        "sha256": stored.sha256,
    });
    let digest = Sha256::digest(identity.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inputs listed in V2 metadata (what KServe V1 translation needs): empty when it
/// lists none, `None` when the list cannot be read.
pub fn inputs_of(metadata: &serde_json::Value) -> Option<Vec<mm_wire::TensorSpec>> {
    match metadata.get("inputs") {
        None => Some(Vec::new()),
        Some(inputs) => serde_json::from_value(inputs.clone()).ok(),
    }
}

impl KeptMetadata {
    /// The record of `metadata` (and `config`) read under `spec`.
    pub fn new(
        spec: &ModelSpec,
        metadata: serde_json::Value,
        config: Option<serde_json::Value>,
    ) -> Self {
        Self {
            spec_digest: spec_digest(spec),
            metadata,
            config,
        }
    }

    /// Whether the record still describes `spec`'s files.
    pub fn matches(&self, spec: &ModelSpec) -> bool {
        self.spec_digest == spec_digest(spec)
    }

    /// The store's bytes for this record.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and JSON values always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A record back from the store's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetadataError> {
        let kept: Self =
            serde_json::from_slice(bytes).map_err(|e| MetadataError::Unreadable(e.to_string()))?;
        if !kept.metadata.is_object() {
            return Err(MetadataError::Unreadable(
                "metadata is not a JSON object".into(),
            ));
        }
        Ok(kept)
    }

    /// The metadata as a client of `model` sees it: under the client-facing name (the
    /// replica may know the model by another name) and, when the request names a
    /// version, that version only; `None` when the model has no such version.
    pub fn for_client(&self, model: &str, version: Option<&str>) -> Option<serde_json::Value> {
        let mut metadata = self.metadata.clone();
        let object = metadata.as_object_mut()?;
        object.insert("name".into(), model.into());
        if let Some(version) = version {
            let known = object
                .get("versions")
                .and_then(|v| v.as_array())
                .is_some_and(|vs| vs.iter().any(|v| v.as_str() == Some(version)));
            if !known {
                return None;
            }
            object.insert("versions".into(), serde_json::json!([version]));
        }
        Some(metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StoragePolicy;

    fn spec(dir: &std::path::Path, memory: u64) -> ModelSpec {
        let body = format!(
            r#"{{"storageUri": "file://{}", "memory": {memory}}}"#,
            dir.display()
        );
        ModelSpec::from_json(body.as_bytes(), &StoragePolicy::default()).unwrap()
    }

    fn model_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("1")).unwrap();
        dir
    }

    #[test]
    fn the_digest_follows_the_files_not_the_sizes() {
        let (a, b) = (model_dir(), model_dir());
        let kept = KeptMetadata::new(&spec(a.path(), 100), serde_json::json!({}), None);
        assert!(kept.matches(&spec(a.path(), 100)));
        assert!(
            kept.matches(&spec(a.path(), 5000)),
            "memory is not the files"
        );
        assert!(!kept.matches(&spec(b.path(), 100)), "another storageUri is");
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let dir = model_dir();
        let kept = KeptMetadata::new(
            &spec(dir.path(), 1),
            serde_json::json!({"name": "m", "versions": ["1"]}),
            Some(serde_json::json!({"max_batch_size": 8})),
        );
        assert_eq!(KeptMetadata::decode(&kept.encode()).unwrap(), kept);
        for bad in [&b"{"[..], b"[]", br#"{"specDigest":"x","metadata":[1]}"#] {
            assert!(KeptMetadata::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn clients_see_their_own_name_and_version() {
        let dir = model_dir();
        let kept = KeptMetadata::new(
            &spec(dir.path(), 1),
            serde_json::json!({"name": "m--v2", "versions": ["1", "2"], "platform": "python"}),
            None,
        );
        let seen = kept.for_client("m", None).unwrap();
        assert_eq!(seen["name"], "m");
        assert_eq!(seen["versions"], serde_json::json!(["1", "2"]));
        let two = kept.for_client("m", Some("2")).unwrap();
        assert_eq!(two["versions"], serde_json::json!(["2"]));
        assert_eq!(kept.for_client("m", Some("3")), None);
    }
}
