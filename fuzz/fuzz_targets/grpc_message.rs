//! The gRPC parsers on any bytes: `grpc::model_from_message` (frame header and protobuf
//! fields, as a body arrives chunk by chunk), `grpc::parse_path`,
//! `grpc::model_from_headers` and `grpc::percent_encode_grpc_message`. None panics; a
//! prefix of a body never decides otherwise than the whole body (it may only wait), and a
//! name found is a valid model name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_filter::grpc::{self, GrpcRoute};

fuzz_target!(|data: &[u8]| {
    let whole = grpc::model_from_message(data);
    if let Ok(Some(name)) = &whole {
        assert!(mm_wire::validate_model_name(name).is_ok(), "{name:?}");
    }
    let step = (data.len() / 64).max(1);
    for cut in (0..data.len()).step_by(step) {
        let part = grpc::model_from_message(&data[..cut]);
        assert!(
            part == Ok(None) || part == whole,
            "prefix {cut}: {part:?}, whole body: {whole:?}"
        );
    }

    if let Some(GrpcRoute::Refused(method)) = grpc::parse_path(data) {
        assert!(
            method.len() <= 64
                && method
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        );
    }
    let text = String::from_utf8_lossy(data);
    let header = grpc::model_from_headers(|name| (name == "mm-model-id").then(|| text.to_string()));
    if let Ok(Some(name)) = header {
        assert!(mm_wire::validate_model_name(&name).is_ok());
    }
    let encoded = grpc::percent_encode_grpc_message(&text);
    assert!(
        encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "{encoded:?}"
    );
});
