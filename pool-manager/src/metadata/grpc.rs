//! The KServe V2 gRPC answers the gateway gives for a model loaded nowhere
//! (`ModelMetadataResponse`, `ModelReadyResponse`, `ModelConfigResponse`), encoded from Triton's own schema
//! (`grpc_service.proto` from tritonclient 2.51, `scripts/grpc-service-descriptor.sh`)
//! so that they are exactly what a replica would have sent.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, Value};

use super::MetadataError;

/// `FileDescriptorSet` of `grpc_service.proto` and the `model_config.proto` it imports.
const GRPC_SERVICE_DESCRIPTOR: &[u8] = include_bytes!("grpc_service.binpb");

fn message(name: &str) -> Result<MessageDescriptor, MetadataError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    let pool = POOL
        .get_or_init(|| DescriptorPool::decode(GRPC_SERVICE_DESCRIPTOR).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| MetadataError::NotEncodable(e.clone()))?;
    pool.get_message_by_name(name)
        .ok_or_else(|| MetadataError::NotEncodable(format!("{name} is missing from the schema")))
}

/// `inference.ModelMetadataResponse` from V2 HTTP metadata JSON (the same fields: name,
/// versions, platform, inputs, outputs; anything else Triton adds is left out).
pub fn metadata_response(metadata: &serde_json::Value) -> Result<Vec<u8>, MetadataError> {
    let descriptor = message("inference.ModelMetadataResponse")?;
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let message = DynamicMessage::deserialize_with_options(descriptor, metadata, &options)
        .map_err(|e| MetadataError::NotEncodable(e.to_string()))?;
    Ok(prost_reflect::prost::Message::encode_to_vec(&message))
}

/// `inference.ModelConfigResponse { config }` from the configuration Triton gave over HTTP
/// (`GET /v2/models/{m}/config`: `ModelConfig` in protobuf's JSON form with its proto field
/// names; fields this schema does not know are left out).
pub fn config_response(config: &serde_json::Value) -> Result<Vec<u8>, MetadataError> {
    let descriptor = message("inference.ModelConfigResponse")?;
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let wrapped = serde_json::json!({ "config": config });
    let message = DynamicMessage::deserialize_with_options(descriptor, &wrapped, &options)
        .map_err(|e| MetadataError::NotEncodable(e.to_string()))?;
    Ok(prost_reflect::prost::Message::encode_to_vec(&message))
}

/// `inference.ModelReadyResponse { ready }`.
pub fn ready_response(ready: bool) -> Result<Vec<u8>, MetadataError> {
    let mut message = DynamicMessage::new(message("inference.ModelReadyResponse")?);
    message
        .try_set_field_by_name("ready", Value::Bool(ready))
        .map_err(|e| MetadataError::NotEncodable(e.to_string()))?;
    Ok(prost_reflect::prost::Message::encode_to_vec(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_field_one() {
        assert_eq!(ready_response(true).unwrap(), vec![0x08, 0x01]);
        assert_eq!(ready_response(false).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn metadata_encodes_like_tritons_own_message() {
        let json = serde_json::json!({
            "name": "linear", "versions": ["1"], "platform": "python",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
            "parameters": {"ignored": true}
        });
        let bytes = metadata_response(&json).unwrap();
        let back = DynamicMessage::decode(
            message("inference.ModelMetadataResponse").unwrap(),
            &bytes[..],
        )
        .unwrap();
        let text = back.to_text_format();
        assert!(text.contains(r#"name:"linear""#), "{text}");
        assert!(
            text.contains("shape:[-1,4]") || text.contains("shape:-1"),
            "{text}"
        );
        assert!(metadata_response(&serde_json::json!({"inputs": 3})).is_err());
    }

    #[test]
    fn config_encodes_tritons_http_config() {
        // What Triton 2.51 answers to GET /v2/models/linear/config (python backend).
        let json = serde_json::json!({
            "name": "linear", "platform": "", "backend": "python", "runtime": "",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": 0,
            "input": [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE",
                       "dims": [-1, 4], "is_shape_tensor": false, "allow_ragged_batch": false,
                       "optional": false, "is_non_linear_format_io": false}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1, 1],
                        "label_filename": "", "is_shape_tensor": false,
                        "is_non_linear_format_io": false}],
            "batch_input": [], "batch_output": [],
            "optimization": {"priority": "PRIORITY_DEFAULT", "input_pinned_memory":
                {"enable": true}, "output_pinned_memory": {"enable": true},
                "gather_kernel_buffer_threshold": 0, "eager_batching": false},
            "instance_group": [{"name": "linear_0", "kind": "KIND_CPU", "count": 1,
                "gpus": [], "secondary_devices": [], "profile": [], "passive": false,
                "host_policy": ""}],
            "default_model_filename": "model.py", "cc_model_filenames": {},
            "metric_tags": {}, "parameters": {"EXECUTION_ENV_PATH": {"string_value": "x"}},
            "model_warmup": [],
            "model_transaction_policy": {"decoupled": false},
            "a_field_of_a_later_triton": {"x": 1}
        });
        let bytes = config_response(&json).unwrap();
        let back = DynamicMessage::decode(
            message("inference.ModelConfigResponse").unwrap(),
            &bytes[..],
        )
        .unwrap();
        let text = back.to_text_format();
        assert!(text.contains(r#"name:"linear""#), "{text}");
        assert!(text.contains(r#"backend:"python""#), "{text}");
        assert!(text.contains("data_type:TYPE_FP32"), "{text}");
        assert!(text.contains("kind:KIND_CPU"), "{text}");
        for bad in [
            serde_json::json!({"max_batch_size": "many"}),
            serde_json::json!({"input": "x"}),
        ] {
            assert!(config_response(&bad).is_err(), "{bad}");
        }
    }
}
