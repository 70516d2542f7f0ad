//! `v1::v1_request_to_v2` on any body and input spec: never panics, and what it produces
//! is a V2 request whose shape holds exactly its data; that data, echoed back as the
//! model's output, translates to one prediction per instance (one for a whole tensor).
//!
//! Input: byte 0 picks the datatype, byte 1 the rank (mod 5), the next `rank` bytes are
//! the dimensions (as `i8`: 0xff is -1), and the rest is the V1 body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mm_filter::v1::{self, WHOLE_TENSOR_ID};
use mm_wire::TensorSpec;
use serde_json::{json, Value};

const DATATYPES: [&str; 14] = [
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16",
    "FP32", "FP64", "BYTES", "BF16",
];

fn spec(data: &[u8]) -> Option<(TensorSpec, &[u8])> {
    let (&datatype, rest) = data.split_first()?;
    let (&rank, rest) = rest.split_first()?;
    let rank = usize::from(rank % 5);
    let dims = rest.get(..rank)?;
    let spec = TensorSpec {
        name: "x".to_owned(),
        datatype: DATATYPES[usize::from(datatype) % DATATYPES.len()].to_owned(),
        shape: dims
            .iter()
            .map(|&b| i64::from(i8::from_ne_bytes([b])))
            .collect(),
    };
    Some((spec, rest.get(rank..)?))
}

fuzz_target!(|data: &[u8]| {
    let Some((input, body)) = spec(data) else {
        return;
    };
    let out = match v1::v1_request_to_v2(body, std::slice::from_ref(&input)) {
        Ok(out) => out,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    let out: Value = serde_json::from_slice(&out).expect("the V2 request is JSON");
    let tensor = &out["inputs"][0];
    assert_eq!(tensor["name"], "x");
    assert_eq!(tensor["datatype"], input.datatype.as_str());
    let shape: Vec<u64> = serde_json::from_value(tensor["shape"].clone()).expect("shape");
    let values = tensor["data"].as_array().expect("data").len();
    let held = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    assert_eq!(
        held,
        Some(values as u64),
        "shape {shape:?} for {values} values"
    );
    // The data is the instances' values, in order.
    let body = String::from_utf8_lossy(body);
    let body: Value = serde_json::from_str(&body).expect("a translated body is JSON");
    let mut sent = Vec::new();
    leaves(&body["instances"], &mut sent);
    let data = tensor["data"].as_array().expect("data");
    assert_eq!(sent.len(), data.len());
    for (sent, written) in sent.iter().zip(data) {
        assert!(same_value(sent, written), "{sent} became {written}");
    }

    // Rows replace the first dimension by the instance count; a whole tensor is its shape.
    assert_eq!(shape.len(), input.shape.len());
    let whole = out.get("id").is_some();
    if whole {
        assert_eq!(out["id"], WHOLE_TENSOR_ID);
    }

    // The model echoing its input as its output: the response side takes it.
    let mut response = json!({"outputs": [{
        "name": "y", "datatype": tensor["datatype"], "shape": shape, "data": tensor["data"],
    }]});
    if whole {
        response["id"] = out["id"].clone();
    }
    let back = v1::v2_response_to_v1(response.to_string().as_bytes()).expect("echo translates");
    let back: Value = serde_json::from_slice(&back).expect("the V1 response is JSON");
    let predictions = back["predictions"].as_array().expect("predictions").len();
    let want = if whole { 1 } else { shape[0] as usize };
    assert_eq!(predictions, want);
});

/// Appends the scalars of a JSON value, depth first (an object's values, for predictions).
fn leaves<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
        scalar => out.push(scalar),
    }
}

/// Whether a value was written as it was sent: exactly for booleans and integers, as the
/// same number for floats (written as floats, and read back by serde_json, whose default
/// parser may move the last bit).
fn same_value(sent: &Value, written: &Value) -> bool {
    match (sent, written) {
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) if b.is_f64() => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() <= a.abs().max(1.0) * 1e-12,
            _ => false,
        },
        (Value::Number(a), Value::Number(b)) => a == b,
        _ => false,
    }
}
