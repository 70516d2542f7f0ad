//! Handing a model's files to a replica that does not share the pool-manager's disk: the
//! files travel in Triton's load request itself (`POST /v2/repository/models/{m}/load`
//! with `parameters.config` and one `parameters["file:<path>"]` per file, base64).
//!
//! What Triton 2.51 accepts (checked against a live server, Python backend): `config` must
//! be the model configuration as JSON and is required; a `file:config.pbtxt` is ignored
//! (an empty `{}` config loads a model with no inputs), and without `config` the load
//! fails ("failed to poll from model repository"). So `config.pbtxt` is converted here
//! from protobuf text format to JSON with Triton's own schema (`model_config.proto` of
//! tritonclient 2.51, embedded as `model_config.binpb`). Models loaded this way are not
//! listed by Triton's repository index (see [`crate::replica::triton`]).

use std::path::Path;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions, Value};

/// `FileDescriptorSet` of Triton's `model_config.proto` (package `inference`), from
/// tritonclient 2.51.0's `model_config_pb2` (`scripts/model-config-descriptor.sh`).
const MODEL_CONFIG_DESCRIPTOR: &[u8] = include_bytes!("model_config.binpb");

/// Most files sent in one load request (each is one JSON parameter).
const MAX_FILES: usize = 10_000;

/// A model's files, ready for a load request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The model configuration as JSON (Triton's `config` load parameter).
    pub config: String,
    /// Every other file, by its `/`-separated path in the model directory (`1/model.py`).
    pub files: Vec<(String, Vec<u8>)>,
}

impl ModelFiles {
    /// Bytes of file content (the request body is about 4/3 of this, base64).
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, data)| data.len() as u64).sum()
    }
}

/// Why a model's files cannot go in a load request.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// More than `--max-inline-bytes`.
    #[error("model files are over {limit} bytes, more than a load request may carry (--max-inline-bytes); use --file-transfer shared-dir or raise the limit")]
    TooLarge { limit: u64 },
    /// More files than one request carries.
    #[error("model has more than {MAX_FILES} files, more than a load request may carry")]
    TooManyFiles,
    /// No `config.pbtxt` at the model's top.
    #[error("model has no config.pbtxt; a load request must carry the model configuration")]
    NoConfig,
    /// `config.pbtxt` does not parse against Triton's model configuration schema.
    #[error("config.pbtxt is not a valid Triton model configuration: {0}")]
    Config(String),
    /// A link, device or non-UTF-8 name in the model directory.
    #[error("model directory entry {0} is not a regular file or directory with a UTF-8 name")]
    NotRegular(String),
    #[error("reading model files failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the model directory `dir` for a load of `model`: `config.pbtxt` as JSON (with
/// `name` set to `model`) and every other file. Blocking.
pub fn read_model_files(
    dir: &Path,
    model: &str,
    max_bytes: u64,
) -> Result<ModelFiles, TransferError> {
    let pbtxt = match std::fs::read_to_string(dir.join("config.pbtxt")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TransferError::NoConfig),
        Err(e) => return Err(e.into()),
    };
    let config = config_to_json(&pbtxt, model)?;
    let mut files = Vec::new();
    // config.pbtxt counts too: it travels as the `config` parameter.
    let mut total = pbtxt.len() as u64;
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| TransferError::NotRegular(n.to_string_lossy().into_owned()))?;
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), relative));
            } else if !kind.is_file() {
                return Err(TransferError::NotRegular(relative));
            } else if relative != "config.pbtxt" {
                total = total.saturating_add(entry.metadata()?.len());
                if total > max_bytes {
                    return Err(TransferError::TooLarge { limit: max_bytes });
                }
                if files.len() >= MAX_FILES {
                    return Err(TransferError::TooManyFiles);
                }
                files.push((relative, std::fs::read(entry.path())?));
            }
        }
    }
    // The sizes were read before the contents; a file that grew since is caught here.
    let read = ModelFiles { config, files };
    if read.bytes().saturating_add(pbtxt.len() as u64) > max_bytes {
        return Err(TransferError::TooLarge { limit: max_bytes });
    }
    Ok(read)
}

fn model_config_descriptor() -> Result<MessageDescriptor, TransferError> {
    static DESCRIPTOR: OnceLock<Result<MessageDescriptor, String>> = OnceLock::new();
    DESCRIPTOR
        .get_or_init(|| {
            let pool =
                DescriptorPool::decode(MODEL_CONFIG_DESCRIPTOR).map_err(|e| e.to_string())?;
            pool.get_message_by_name("inference.ModelConfig")
                .ok_or_else(|| "inference.ModelConfig is missing from the schema".to_owned())
        })
        .clone()
        .map_err(TransferError::Config)
}

/// Converts a `config.pbtxt` to the JSON Triton's load request takes, naming the model
/// `model` (Triton refuses a config whose name differs from the model's).
pub fn config_to_json(pbtxt: &str, model: &str) -> Result<String, TransferError> {
    let descriptor = model_config_descriptor()?;
    let pbtxt = colon_before_lists(pbtxt);
    let mut message = DynamicMessage::parse_text_format(descriptor, &pbtxt)
        .map_err(|e| TransferError::Config(e.to_string()))?;
    message.set_field_by_name("name", Value::String(model.to_owned()));
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut out, &options)
        .map_err(|e| TransferError::Config(e.to_string()))?;
    String::from_utf8(out.into_inner()).map_err(|e| TransferError::Config(e.to_string()))
}

/// Adds the optional `:` between a field name and a list (`input [ {...} ]` becomes
/// `input: [ {...} ]`). Text format allows both for message fields and Triton's configs
/// mostly omit it, but prost-reflect's parser only takes the colon form. Strings and
/// comments are copied as they are; an identifier right after a `:` is a value, not a
/// field name, and is left alone.
fn colon_before_lists(pbtxt: &str) -> String {
    let chars: Vec<char> = pbtxt.chars().collect();
    let mut out = String::with_capacity(pbtxt.len() + 16);
    let mut i = 0;
    // The last significant token was ':' (so an identifier now is a value).
    let mut after_colon = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                out.push(chars[i]);
                i += 1;
            }
        } else if c == '"' || c == '\'' {
            out.push(c);
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    out.push(chars[i]);
                    i += 1;
                }
                out.push(chars[i]);
                i += 1;
            }
            if i < chars.len() {
                out.push(chars[i]);
                i += 1;
            }
            after_colon = false;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.extend(&chars[start..i]);
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if !after_colon && chars.get(j) == Some(&'[') {
                out.push(':');
            }
            after_colon = false;
        } else {
            if !c.is_whitespace() {
                after_colon = c == ':';
            }
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(name)
    }

    #[test]
    fn converts_the_example_configs_to_json() {
        let pbtxt = std::fs::read_to_string(example("linear").join("config.pbtxt")).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&config_to_json(&pbtxt, "fraud-eu").unwrap()).unwrap();
        assert_eq!(json["name"], "fraud-eu");
        assert_eq!(json["backend"], "python");
        assert_eq!(json["input"][0]["name"], "x");
        assert_eq!(json["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(json["input"][0]["dims"], serde_json::json!([-1, 4]));
        assert_eq!(json["instance_group"][0]["kind"], "KIND_CPU");
        for model in ["xor_mlp", "anomaly"] {
            let pbtxt = std::fs::read_to_string(example(model).join("config.pbtxt")).unwrap();
            config_to_json(&pbtxt, model).unwrap();
        }
    }

    #[test]
    fn converts_maps_and_64_bit_numbers() {
        let pbtxt = r#"
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            dynamic_batching { max_queue_delay_microseconds: 100 }
            parameters { key: "k" value { string_value: "v" } }
        "#;
        let json: serde_json::Value =
            serde_json::from_str(&config_to_json(pbtxt, "m").unwrap()).unwrap();
        assert_eq!(
            json["dynamic_batching"]["max_queue_delay_microseconds"],
            100
        );
        assert_eq!(json["parameters"]["k"]["string_value"], "v");
    }

    #[test]
    fn adds_colons_before_lists_only_after_field_names() {
        assert_eq!(
            colon_before_lists("input [ { dims [1] } ]\nx: [1]\n"),
            "input: [ { dims: [1] } ]\nx: [1]\n"
        );
        assert_eq!(
            colon_before_lists("s: \"a [b\" # c [d\nk: V\n"),
            "s: \"a [b\" # c [d\nk: V\n"
        );
        assert_eq!(
            colon_before_lists("s: 'it\\'s' t [1]"),
            "s: 'it\\'s' t: [1]"
        );
    }

    #[test]
    fn refuses_what_is_not_a_model_config() {
        let err = config_to_json("backend: \"python\"\nno_such_field: 1\n", "m").unwrap_err();
        assert!(
            err.to_string()
                .contains("not a valid Triton model configuration"),
            "{err}"
        );
    }

    #[test]
    fn reads_files_within_the_limit() {
        let files = read_model_files(&example("linear"), "linear", 1 << 20).unwrap();
        let mut names: Vec<&str> = files.files.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["1/model.py", "1/weights.json"]);
        let err = read_model_files(&example("linear"), "linear", 100).unwrap_err();
        assert!(
            matches!(err, TransferError::TooLarge { limit: 100 }),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_model_files(empty.path(), "m", 1 << 20).unwrap_err(),
            TransferError::NoConfig
        ));
    }
}
