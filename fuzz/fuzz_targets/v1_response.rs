//! `v1::v2_response_to_v1` on any model server answer: never panics, and what it produces
//! is `{"predictions": [...]}`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_filter::v1;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    match v1::v2_response_to_v1(body) {
        Ok(out) => {
            let out: Value = serde_json::from_slice(&out).expect("the V1 response is JSON");
            let object = out.as_object().expect("an object");
            assert_eq!(object.len(), 1);
            assert!(object["predictions"].is_array());
            // Every value of every output is in the predictions, once.
            // (Lossy: the translation skips the keys it does not read without checking
            // that their strings are UTF-8.)
            let response = String::from_utf8_lossy(body);
            let response: Value =
                serde_json::from_str(&response).expect("a translated body is JSON");
            let outputs = response["outputs"].as_array().expect("outputs");
            let given: usize = outputs.iter().map(|o| leaves(&o["data"])).sum();
            assert_eq!(leaves(&object["predictions"]), given);
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});

/// How many scalars a JSON value holds (an object's values count, for predictions).
fn leaves(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(leaves).sum(),
        Value::Object(map) => map.values().map(leaves).sum(),
        _ => 1,
    }
}
