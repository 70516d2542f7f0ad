//! The documents `models apply` reads, in any of three forms, each turned into a model name
//! and the JSON body of its `PUT /api/v1/models/{name}`:
//! - our own specs ([`crate::specs`]): one with a `name`, a list, or `{"models": [...]}`;
//! - KServe `TrainedModel` (`serving.kserve.io/v1alpha1`);
//! - ModelMesh-style `InferenceService` (`serving.kserve.io/v1beta1` with the annotation
//!   `serving.kserve.io/deploymentMode: ModelMesh`), with `spec.predictor.model` or the
//!   older `spec.predictor.<framework>` form.
//!
//! A field this gateway cannot honour is refused with its path, never silently dropped;
//! `metadata` other than the name and the annotations below, and `status`, are ignored
//! (they describe the object, not the model). And [`to_documents`] writes views back out
//! in these forms (`models export`).

use serde_json::{json, Map, Value};

use crate::specs;

/// The annotation that makes an InferenceService a ModelMesh one.
pub const DEPLOYMENT_MODE: &str = "serving.kserve.io/deploymentMode";
/// ModelMesh's older way to choose the store of a `storageUri`.
const SECRET_KEY: &str = "serving.kserve.io/secretKey";
/// Our annotations, for spec fields KServe has no place for.
const ANNOTATIONS: &[(&str, &str)] = &[
    ("mm-gateway.io/memory", "memory"),
    ("mm-gateway.io/gpu-memory", "gpuMemory"),
    ("mm-gateway.io/min-copies", "minCopies"),
    ("mm-gateway.io/max-copies", "maxCopies"),
    ("mm-gateway.io/sha256", "sha256"),
    ("mm-gateway.io/pool", "pool"),
];
const V1ALPHA1: &str = "serving.kserve.io/v1alpha1";
const V1BETA1: &str = "serving.kserve.io/v1beta1";
/// The `spec.predictor.<framework>` keys of a v1beta1 PredictorSpec.
const FRAMEWORKS: &[&str] = &[
    "tensorflow",
    "pytorch",
    "onnx",
    "triton",
    "sklearn",
    "xgboost",
    "lightgbm",
    "pmml",
    "paddle",
    "huggingface",
];

/// One document's model.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based position of the document in the file (a list document counts once).
    pub index: usize,
    /// `Spec`, `TrainedModel` or `InferenceService`.
    pub kind: &'static str,
    pub name: String,
    /// The body of `PUT /api/v1/models/{name}`.
    pub spec: Value,
}

/// A document that cannot be applied, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub index: usize,
    pub kind: String,
    pub name: Option<String>,
    pub reason: String,
}

/// A file whose documents are not all acceptable: the refusals, and the documents that
/// were fine (not applied either).
#[derive(Debug)]
pub struct Refused {
    pub refusals: Vec<Refusal>,
    pub documents: Vec<Document>,
}

/// Parses every document of `text` (JSON when `json` or when it looks like JSON; YAML,
/// possibly multi-document, otherwise). Returns the models, or every refusal when any
/// document is refused: nothing in a file is applied unless all of it can be.
pub fn parse(text: &str, json: bool) -> Result<Vec<Document>, Refused> {
    let values = match read_values(text, json) {
        Ok(v) => v,
        Err((index, reason)) => {
            return Err(Refused {
                refusals: vec![Refusal {
                    index,
                    kind: "?".into(),
                    name: None,
                    reason,
                }],
                documents: Vec::new(),
            })
        }
    };
    let mut documents = Vec::new();
    let mut refusals = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let index = i + 1;
        if value.is_null() {
            continue;
        }
        match document(index, value) {
            Ok(docs) => documents.extend(docs),
            Err(r) => refusals.push(r),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for d in &documents {
        if !seen.insert(d.name.clone()) {
            refusals.push(Refusal {
                index: d.index,
                kind: d.kind.into(),
                name: Some(d.name.clone()),
                reason: format!("model {:?} appears twice in the file", d.name),
            });
        }
    }
    if documents.is_empty() && refusals.is_empty() {
        refusals.push(Refusal {
            index: 1,
            kind: "?".into(),
            name: None,
            reason: "the file holds no model".into(),
        });
    }
    if refusals.is_empty() {
        Ok(documents)
    } else {
        Err(Refused {
            refusals,
            documents,
        })
    }
}

fn read_values(text: &str, json: bool) -> Result<Vec<Value>, (usize, String)> {
    let trimmed = text.trim_start();
    if json || trimmed.starts_with('{') || trimmed.starts_with('[') {
        return serde_json::from_str(text)
            .map(|v| vec![v])
            .map_err(|e| (1, format!("not valid JSON: {e}")));
    }
    let mut values = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = <Value as serde::Deserialize>::deserialize(doc)
            .map_err(|e| (i + 1, format!("not valid YAML: {e}")))?;
        values.push(value);
    }
    Ok(values)
}

/// The models of one document.
fn document(index: usize, value: Value) -> Result<Vec<Document>, Refusal> {
    let kind = value.get("kind").and_then(Value::as_str).map(str::to_owned);
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let refuse = |kind: &str, reason: String| Refusal {
        index,
        kind: kind.into(),
        name: name.clone(),
        reason,
    };
    match (kind.as_deref(), api_version.as_deref()) {
        (None, None) => specs::parse_value(value)
            .map(|named| {
                named
                    .into_iter()
                    .map(|n| Document {
                        index,
                        kind: "Spec",
                        name: n.name,
                        spec: n.spec,
                    })
                    .collect()
            })
            .map_err(|e| refuse("Spec", e)),
        (Some("TrainedModel"), Some(V1ALPHA1)) => trained_model(value)
            .map(|(name, spec)| vec![Document { index, kind: "TrainedModel", name, spec }])
            .map_err(|e| refuse("TrainedModel", e)),
        (Some("InferenceService"), Some(V1BETA1)) => inference_service(value)
            .map(|(name, spec)| vec![Document { index, kind: "InferenceService", name, spec }])
            .map_err(|e| refuse("InferenceService", e)),
        (Some(k @ ("TrainedModel" | "InferenceService")), v) => Err(refuse(
            k,
            format!(
                "apiVersion {:?} is not supported: TrainedModel is {V1ALPHA1}, InferenceService {V1BETA1}",
                v.unwrap_or("")
            ),
        )),
        (k, _) => Err(refuse(
            k.unwrap_or("?"),
            "not a model: expected a TrainedModel, a ModelMesh InferenceService or an mmctl spec".into(),
        )),
    }
}

/// An object's fields, taken one by one; what is left at the end was not understood.
struct Fields {
    path: String,
    map: Map<String, Value>,
}

impl Fields {
    fn of(path: &str, value: Value) -> Result<Self, String> {
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_owned(),
                map,
            }),
            _ => Err(format!("{path} must be an object")),
        }
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{} must be a string", self.at(key))),
        }
    }

    fn object(&mut self, key: &str) -> Result<Option<Fields>, String> {
        let path = self.at(key);
        self.take(key).map(|v| Fields::of(&path, v)).transpose()
    }

    fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.map.remove(*k);
        }
    }

    /// Refuses whatever was not taken, naming it.
    fn done(self) -> Result<(), String> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(format!(
                "{}: this gateway cannot honour this field{}",
                self.at(key),
                hint(key)
            )),
        }
    }
}

fn hint(key: &str) -> &'static str {
    match key {
        "runtime" | "runtimeVersion" => " (one runtime, Triton, serves every model here; remove it)",
        "resources" | "minReplicas" | "maxReplicas" | "scaleTarget" | "scaleMetric" => {
            " (replicas are the pool's; a model's memory is mm-gateway.io/memory, its copies mm-gateway.io/min-copies and max-copies)"
        }
        "schemaPath" => " (the gateway reads a model's inputs from Triton's own metadata)",
        _ => "",
    }
}

/// `metadata`: the name, and the annotations we act on; the rest describes the object.
fn metadata(
    value: &mut Map<String, Value>,
    spec: &mut Map<String, Value>,
) -> Result<(String, Map<String, Value>), String> {
    let mut meta = Fields::of("metadata", value.remove("metadata").unwrap_or(Value::Null))
        .map_err(|_| "metadata (with a name) is required".to_owned())?;
    let name = meta
        .string("name")?
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is required")?;
    let annotations = match meta.take("annotations") {
        None => Map::new(),
        Some(Value::Object(a)) => a,
        Some(_) => return Err("metadata.annotations must be an object".into()),
    };
    let mut rest = Map::new();
    for (key, value) in annotations {
        if let Some((_, field)) = ANNOTATIONS.iter().find(|(a, _)| *a == key) {
            let text = value
                .as_str()
                .ok_or_else(|| format!("metadata.annotations.{key} must be a string"))?;
            let value = match *field {
                "minCopies" | "maxCopies" => text
                    .parse::<u64>()
                    .map(Value::from)
                    .map_err(|_| format!("metadata.annotations.{key} must be a whole number"))?,
                _ => Value::String(text.to_owned()),
            };
            spec.insert((*field).to_owned(), value);
        } else if key.starts_with("mm-gateway.io/")
            || key.starts_with("serving.kserve.io/") && key != DEPLOYMENT_MODE && key != SECRET_KEY
        {
            return Err(format!(
                "metadata.annotations.{key}: this gateway cannot honour this annotation"
            ));
        } else {
            rest.insert(key, value);
        }
    }
    Ok((name, rest))
}

fn top_level(value: Value, kind: &str) -> Result<Map<String, Value>, String> {
    let Value::Object(mut top) = value else {
        return Err(format!("a {kind} must be an object"));
    };
    // What the cluster adds to an object it stores, and what `kubectl get -o yaml` shows.
    top.remove("apiVersion");
    top.remove("kind");
    top.remove("status");
    Ok(top)
}

/// KServe `TrainedModel`: `spec.model.{storageUri, framework, memory}`, and
/// `spec.inferenceService` (recorded as the spec's `pool`).
fn trained_model(value: Value) -> Result<(String, Value), String> {
    let mut top = top_level(value, "TrainedModel")?;
    let mut spec = Map::new();
    let (name, annotations) = metadata(&mut top, &mut spec)?;
    if let Some(key) = annotations.get(SECRET_KEY).and_then(Value::as_str) {
        spec.insert("storage".into(), json!({ "key": key }));
    }
    let mut s = Fields::of("spec", top.remove("spec").unwrap_or(Value::Null))
        .map_err(|_| "spec is required".to_owned())?;
    if let Some(pool) = s.string("inferenceService")? {
        spec.insert("pool".into(), pool.into());
    }
    let mut model = s.object("model")?.ok_or("spec.model is required")?;
    let uri = model
        .string("storageUri")?
        .ok_or("spec.model.storageUri is required")?;
    spec.insert("storageUri".into(), checked_uri(uri)?.into());
    let framework = model
        .string("framework")?
        .ok_or("spec.model.framework is required")?;
    spec.insert("modelFormat".into(), json!({ "name": framework }));
    if let Some(memory) = model.take("memory") {
        spec.insert("memory".into(), memory);
    }
    model.done()?;
    s.done()?;
    leftover_top(top)?;
    Ok((name, Value::Object(spec)))
}

/// ModelMesh `InferenceService`: `spec.predictor.model` (`modelFormat`, `storageUri` or
/// `storage`) or the older `spec.predictor.<framework>`.
fn inference_service(value: Value) -> Result<(String, Value), String> {
    let mut top = top_level(value, "InferenceService")?;
    let mut spec = Map::new();
    let (name, annotations) = metadata(&mut top, &mut spec)?;
    if annotations.get(DEPLOYMENT_MODE).and_then(Value::as_str) != Some("ModelMesh") {
        return Err(format!(
            "metadata.annotations.{DEPLOYMENT_MODE} must be ModelMesh: other InferenceServices are one server per model, which this gateway replaces"
        ));
    }
    let secret_key = annotations
        .get(SECRET_KEY)
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut s = Fields::of("spec", top.remove("spec").unwrap_or(Value::Null))
        .map_err(|_| "spec is required".to_owned())?;
    let mut predictor = s.object("predictor")?.ok_or("spec.predictor is required")?;
    let mut forms = Vec::new();
    if let Some(model) = predictor.object("model")? {
        forms.push((None, model));
    }
    for framework in FRAMEWORKS {
        if let Some(f) = predictor.object(framework)? {
            forms.push((Some(*framework), f));
        }
    }
    let (framework, mut model) = match forms.len() {
        1 => forms.remove(0),
        0 => {
            return Err(
                "spec.predictor needs model (or the older <framework>, e.g. tensorflow)".into(),
            )
        }
        _ => {
            return Err("spec.predictor must have one of model and <framework>, not several".into())
        }
    };
    match framework {
        Some(f) => {
            spec.insert("modelFormat".into(), json!({ "name": f }));
        }
        None => {
            let mut format = model
                .object("modelFormat")?
                .ok_or("spec.predictor.model.modelFormat is required")?;
            let name = format
                .string("name")?
                .ok_or("spec.predictor.model.modelFormat.name is required")?;
            let version = format.string("version")?;
            format.done()?;
            spec.insert(
                "modelFormat".into(),
                json!({ "name": name, "version": version }),
            );
        }
    }
    if let Some(protocol) = model.string("protocolVersion")? {
        if !matches!(protocol.as_str(), "v1" | "v2" | "grpc-v2") {
            return Err(format!(
                "{}: {protocol:?} is not a protocol this gateway speaks (v1, v2, grpc-v2; all are served at once)",
                model.at("protocolVersion")
            ));
        }
    }
    storage(&mut model, &mut spec, secret_key)?;
    model.done()?;
    predictor.done()?;
    s.done()?;
    leftover_top(top)?;
    Ok((name, Value::Object(spec)))
}

/// `storageUri`, or `storage.key` + `storage.path` (+ `storage.parameters.bucket`), or
/// `storageUri` with the store named by `storage.key` or the older secretKey annotation.
fn storage(
    model: &mut Fields,
    spec: &mut Map<String, Value>,
    secret_key: Option<String>,
) -> Result<(), String> {
    let uri = model.string("storageUri")?;
    let mut key = secret_key;
    let mut path = None;
    let mut bucket = None;
    if let Some(mut st) = model.object("storage")? {
        if let Some(k) = st.string("key")? {
            key = Some(k);
        }
        path = st.string("path")?;
        if let Some(mut params) = st.object("parameters")? {
            bucket = params.string("bucket")?;
            // ModelMesh lets parameters restate the store's type; nothing to honour here.
            params.ignore(&["type"]);
            params.done()?;
        }
        st.done()?;
    }
    match (uri, path) {
        (Some(_), Some(_)) => Err(format!(
            "{}: give storageUri or storage.path, not both",
            model.path
        )),
        (None, None) => Err(format!(
            "{} needs storageUri, or storage.key and storage.path",
            model.path
        )),
        (Some(uri), None) => {
            spec.insert("storageUri".into(), checked_uri(uri)?.into());
            if let Some(key) = key {
                spec.insert("storage".into(), json!({ "key": key }));
            }
            Ok(())
        }
        (None, Some(path)) => {
            let key =
                key.ok_or_else(|| format!("{}.storage.path needs storage.key", model.path))?;
            let mut st = json!({ "key": key, "path": path });
            if let Some(b) = bucket {
                st["bucket"] = b.into();
            }
            spec.insert("storage".into(), st);
            Ok(())
        }
    }
}

fn leftover_top(top: Map<String, Value>) -> Result<(), String> {
    match top.keys().next() {
        None => Ok(()),
        Some(k) => Err(format!("{k}: this gateway cannot honour this field")),
    }
}

/// Refuses a URI that `models export` redacted (its credentials are gone).
fn checked_uri(uri: String) -> Result<String, String> {
    if uri.contains("REDACTED@") || uri.contains("?REDACTED") {
        return Err("storageUri was redacted by `mmctl models export` (it held credentials): put the real URI back".into());
    }
    Ok(uri)
}

/// The form `models export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// ModelMesh InferenceService (serving.kserve.io/v1beta1).
    Modelmesh,
    /// KServe TrainedModel (serving.kserve.io/v1alpha1); a model in a named store, which
    /// a TrainedModel cannot name, as a ModelMesh InferenceService.
    Trainedmodel,
    /// mmctl's own spec list.
    Spec,
}

/// The documents for `views` (admin API model views) in `format`; the second value names
/// the models whose storageUri was redacted (they need their real URI put back).
pub fn to_documents(
    views: &[Value],
    format: ExportFormat,
    inference_service: &str,
) -> (Vec<Value>, Vec<String>) {
    let mut redacted = Vec::new();
    let docs = views
        .iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            let uri = v["storageUri"].as_str();
            if uri.is_some_and(|u| u.contains("REDACTED")) {
                redacted.push(name.clone());
            }
            match format {
                ExportFormat::Spec => spec_document(v),
                // A TrainedModel has no place for a named store's path: such a model is
                // written as the ModelMesh InferenceService it would be there.
                ExportFormat::Trainedmodel if v["storageUri"].is_null() => isvc_document(v, &name),
                ExportFormat::Trainedmodel => trained_model_document(v, &name, inference_service),
                ExportFormat::Modelmesh => isvc_document(v, &name),
            }
        })
        .collect();
    (docs, redacted)
}

fn format_name(v: &Value) -> Value {
    v.pointer("/modelFormat/name")
        .cloned()
        .unwrap_or_else(|| "triton".into())
}

fn spec_document(v: &Value) -> Value {
    let mut d = Map::new();
    d.insert("name".into(), v["name"].clone());
    for key in ["storageUri", "storage", "modelFormat", "pool", "sha256"] {
        if !v[key].is_null() {
            d.insert(key.into(), v[key].clone());
        }
    }
    if v["memoryDeclared"] == true {
        d.insert("memory".into(), v["memory"].clone());
    }
    if v["gpuMemory"].as_u64().unwrap_or(0) > 0 {
        d.insert("gpuMemory".into(), v["gpuMemory"].clone());
    }
    d.insert("minCopies".into(), v["minCopies"].clone());
    d.insert("maxCopies".into(), v["maxCopies"].clone());
    Value::Object(d)
}

/// Our annotations for the fields KServe's objects have no place for.
fn annotations(v: &Value, with_memory: bool) -> Map<String, Value> {
    let mut a = Map::new();
    if with_memory && v["memoryDeclared"] == true {
        a.insert(
            "mm-gateway.io/memory".into(),
            v["memory"].to_string().into(),
        );
    }
    if v["gpuMemory"].as_u64().unwrap_or(0) > 0 {
        a.insert(
            "mm-gateway.io/gpu-memory".into(),
            v["gpuMemory"].to_string().into(),
        );
    }
    if v["minCopies"].as_u64().unwrap_or(0) > 0 {
        a.insert(
            "mm-gateway.io/min-copies".into(),
            v["minCopies"].to_string().into(),
        );
    }
    if v["maxCopies"].as_u64().unwrap_or(1) != 1 {
        a.insert(
            "mm-gateway.io/max-copies".into(),
            v["maxCopies"].to_string().into(),
        );
    }
    if let Some(sha) = v["sha256"].as_str() {
        a.insert("mm-gateway.io/sha256".into(), sha.into());
    }
    a
}

fn trained_model_document(v: &Value, name: &str, inference_service: &str) -> Value {
    let pool = v["pool"].as_str().unwrap_or(inference_service);
    let mut meta = json!({ "name": name });
    let mut a = annotations(v, false);
    if let Some(key) = v.pointer("/storage/key") {
        // storageUri reached with a named store's settings.
        a.insert(SECRET_KEY.into(), key.clone());
    }
    if !a.is_empty() {
        meta["annotations"] = Value::Object(a);
    }
    json!({
        "apiVersion": V1ALPHA1,
        "kind": "TrainedModel",
        "metadata": meta,
        "spec": {
            "inferenceService": pool,
            "model": {
                "storageUri": v["storageUri"],
                "framework": format_name(v),
                "memory": v["memory"],
            }
        }
    })
}

fn isvc_document(v: &Value, name: &str) -> Value {
    let mut a = annotations(v, true);
    if let Some(pool) = v["pool"].as_str() {
        a.insert("mm-gateway.io/pool".into(), pool.into());
    }
    a.insert(DEPLOYMENT_MODE.into(), "ModelMesh".into());
    let mut model = json!({ "modelFormat": v["modelFormat"].clone() });
    if model["modelFormat"].is_null() {
        model["modelFormat"] = json!({ "name": "triton" });
    }
    if let Some(uri) = v["storageUri"].as_str() {
        model["storageUri"] = uri.into();
    }
    if let Some(key) = v.pointer("/storage/key") {
        let mut st = json!({ "key": key });
        if let Some(path) = v.pointer("/storage/path") {
            st["path"] = path.clone();
        }
        if let Some(bucket) = v.pointer("/storage/bucket") {
            st["parameters"] = json!({ "bucket": bucket });
        }
        model["storage"] = st;
    }
    json!({
        "apiVersion": V1BETA1,
        "kind": "InferenceService",
        "metadata": { "name": name, "annotations": a },
        "spec": { "predictor": { "model": model } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Document {
        let mut docs = parse(text, false).unwrap_or_else(|r| panic!("{r:?}"));
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    fn refused(text: &str) -> String {
        let r = parse(text, false).unwrap_err();
        r.refusals
            .iter()
            .map(|r| r.reason.clone())
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[test]
    fn reads_a_trained_model() {
        let d = one(
            "apiVersion: serving.kserve.io/v1alpha1\nkind: TrainedModel\nmetadata:\n  name: fraud\n  namespace: ml\n  annotations:\n    mm-gateway.io/min-copies: \"1\"\nspec:\n  inferenceService: triton-pool\n  model:\n    storageUri: s3://models/fraud\n    framework: onnx\n    memory: 256Mi\nstatus:\n  url: x\n",
        );
        assert_eq!((d.kind, d.name.as_str()), ("TrainedModel", "fraud"));
        assert_eq!(
            d.spec,
            json!({"storageUri": "s3://models/fraud", "modelFormat": {"name": "onnx"},
                   "memory": "256Mi", "pool": "triton-pool", "minCopies": 1})
        );
    }

    #[test]
    fn reads_every_modelmesh_inference_service_form() {
        let head = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: m\n  annotations:\n    serving.kserve.io/deploymentMode: ModelMesh\n";
        let d = one(&format!("{head}spec:\n  predictor:\n    model:\n      modelFormat:\n        name: triton\n        version: \"2\"\n      storageUri: gs://b/m\n"));
        assert_eq!(
            d.spec,
            json!({"modelFormat": {"name": "triton", "version": "2"}, "storageUri": "gs://b/m"})
        );
        let d = one(&format!("{head}spec:\n  predictor:\n    model:\n      modelFormat: {{name: onnx}}\n      storage:\n        key: localMinIO\n        path: onnx/m\n        parameters: {{bucket: other, type: s3}}\n"));
        assert_eq!(
            d.spec,
            json!({"modelFormat": {"name": "onnx", "version": null},
                   "storage": {"key": "localMinIO", "path": "onnx/m", "bucket": "other"}})
        );
        let d = one(&format!("{head}    serving.kserve.io/secretKey: localMinIO\nspec:\n  predictor:\n    tensorflow:\n      storageUri: s3://b/tf\n"));
        assert_eq!(
            d.spec,
            json!({"modelFormat": {"name": "tensorflow"}, "storageUri": "s3://b/tf", "storage": {"key": "localMinIO"}})
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour_naming_the_field() {
        let head = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: m\n  annotations:\n    serving.kserve.io/deploymentMode: ModelMesh\n";
        let cases = [
            (format!("{head}spec:\n  predictor:\n    minReplicas: 2\n    model:\n      modelFormat: {{name: onnx}}\n      storageUri: s3://b/m\n"), "spec.predictor.minReplicas"),
            (format!("{head}spec:\n  predictor:\n    model:\n      runtime: triton-2.x\n      modelFormat: {{name: onnx}}\n      storageUri: s3://b/m\n"), "spec.predictor.model.runtime"),
            (format!("{head}spec:\n  predictor:\n    model:\n      modelFormat: {{name: onnx}}\n      storage: {{key: k, path: p, schemaPath: s}}\n"), "spec.predictor.model.storage.schemaPath"),
            (format!("{head}spec:\n  predictor:\n    model:\n      modelFormat: {{name: onnx}}\n      storageUri: s3://b/m\n      storage: {{key: k, path: p}}\n"), "not both"),
            (format!("{head}spec:\n  predictor:\n    model:\n      modelFormat: {{name: onnx}}\n")
             , "needs storageUri"),
            (format!("{head}spec:\n  predictor:\n    model:\n      modelFormat: {{name: onnx}}\n      storageUri: https://REDACTED@h/m.zip?REDACTED\n"), "redacted by `mmctl models export`"),
            ("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: m\nspec:\n  predictor:\n    sklearn:\n      storageUri: s3://b/m\n".into(), "must be ModelMesh"),
            (format!("{head}    serving.kserve.io/autoscalerClass: hpa\nspec: {{}}\n"), "serving.kserve.io/autoscalerClass"),
            ("apiVersion: serving.kserve.io/v1alpha1\nkind: TrainedModel\nmetadata: {name: t}\nspec:\n  model: {storageUri: s3://b/m, framework: onnx, memory: 1Gi, extra: 1}\n".into(), "spec.model.extra"),
            ("apiVersion: serving.kserve.io/v1alpha1\nkind: TrainedModel\nmetadata: {name: t}\nspec:\n  model: {framework: onnx}\n".into(), "spec.model.storageUri is required"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n".into(), "not a model"),
            ("apiVersion: serving.kserve.io/v1\nkind: TrainedModel\nmetadata: {name: c}\n".into(), "apiVersion"),
        ];
        for (text, want) in cases {
            let got = refused(&text);
            assert!(got.contains(want), "{text}\n=> {got}");
        }
    }

    #[test]
    fn every_document_is_checked_and_one_bad_one_refuses_the_file() {
        let text = "name: a\nstorageUri: file:///m/a\n---\napiVersion: v1\nkind: Secret\n---\n- name: b\n  storageUri: file:///m/b\n---\nname: a\nstorageUri: file:///m/c\n";
        let r = parse(text, false).unwrap_err().refusals;
        let indexes: Vec<usize> = r.iter().map(|r| r.index).collect();
        assert_eq!(indexes, vec![2, 4], "{r:?}");
        let ok = parse(
            "name: a\nstorageUri: file:///m/a\n---\n- name: b\n  storageUri: file:///m/b\n---\n",
            false,
        )
        .unwrap();
        assert_eq!(
            ok.iter()
                .map(|d| (d.index, d.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "a"), (2, "b")]
        );
        assert!(parse("a: [\n", false).is_err());
        assert!(parse("", false).is_err());
    }

    #[test]
    fn exported_documents_apply_back_to_the_same_spec() {
        let view = json!({"name": "m", "storageUri": "s3://b/m", "memory": 1048576, "memoryDeclared": true,
                          "gpuMemory": 0, "minCopies": 1, "maxCopies": 2, "modelFormat": {"name": "onnx"},
                          "pool": "p1", "state": "Loaded"});
        let keyed = json!({"name": "k", "storage": {"key": "minio", "path": "a/b", "bucket": "x"},
                           "memory": 5, "memoryDeclared": false, "gpuMemory": 0, "minCopies": 0, "maxCopies": 1});
        for format in [
            ExportFormat::Modelmesh,
            ExportFormat::Trainedmodel,
            ExportFormat::Spec,
        ] {
            let views = if format == ExportFormat::Trainedmodel {
                vec![view.clone()]
            } else {
                vec![view.clone(), keyed.clone()]
            };
            let (docs, redacted) = to_documents(&views, format, "mm-gateway");
            assert!(redacted.is_empty());
            let text: String = docs
                .iter()
                .map(|d| format!("---\n{}", serde_norway::to_string(d).unwrap()))
                .collect();
            let parsed =
                parse(&text, false).unwrap_or_else(|r| panic!("{format:?}: {r:?}\n{text}"));
            let m = &parsed[0].spec;
            assert_eq!(m["storageUri"], "s3://b/m", "{format:?}");
            assert_eq!(m["modelFormat"]["name"], "onnx", "{format:?}");
            assert_eq!(m["minCopies"], 1, "{format:?}");
            if format != ExportFormat::Trainedmodel {
                assert_eq!(m["maxCopies"], 2, "{format:?}");
                assert_eq!(
                    parsed[1].spec["storage"],
                    json!({"key": "minio", "path": "a/b", "bucket": "x"}),
                    "{format:?}"
                );
            }
        }
        let (_, redacted) = to_documents(
            &[json!({"name": "s", "storageUri": "https://h/m.zip?REDACTED"})],
            ExportFormat::Spec,
            "x",
        );
        assert_eq!(redacted, vec!["s".to_owned()]);
    }
}
