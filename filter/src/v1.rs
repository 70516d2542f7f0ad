//! KServe V1 <-> Open Inference Protocol V2 (JSON) translation, so V1 clients
//! (`POST /v1/models/{name}:predict`) can call Triton, which only speaks V2. A V1 request
//! `{"instances": [...]}` becomes a V2 request for the model's single input, and a V2
//! response becomes `{"predictions": [...]}`. Plain Rust with no host calls; every input is
//! bounded ([`MAX_BODY_BYTES`], [`MAX_DEPTH`], [`MAX_VALUES`]) and no input can panic.
//!
//! The request is translated while it is parsed (a `serde` seed writes each value straight
//! into a flat, typed buffer), so no JSON tree of the request is ever built; a body's
//! nesting is checked with a linear byte scan before any recursive parser sees it.

use std::fmt;

use mm_wire::TensorSpec;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest body translated, in either direction: 16 MiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Deepest JSON nesting accepted in a body (the top-level object counts as 1).
pub const MAX_DEPTH: usize = 32;

/// Most scalar values a request may carry; a response may hold at most this many JSON
/// values (numbers, strings, arrays, objects, ...) in all.
pub const MAX_VALUES: usize = 4_000_000;

/// Why a body could not be translated. `Display` is one sentence for the client. Every
/// error of [`v1_request_to_v2`] is the client's (400); an error of [`v2_response_to_v1`]
/// means the model server answered something that is not a translatable V2 response (502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V1Error {
    /// The body is larger than [`MAX_BODY_BYTES`].
    TooLarge,
    /// The body nests arrays or objects deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The request has more than [`MAX_VALUES`] scalars, or the response more than
    /// [`MAX_VALUES`] JSON values.
    TooManyValues,
    /// The model does not have exactly one input (V1 cannot name inputs); holds how many
    /// it has.
    InputCount(usize),
    /// The input's datatype has no V1 translation (`BYTES`, `BF16`, anything unknown).
    UnsupportedDatatype(String),
    /// The input's metadata shape has no batch dimension, a dimension below -1, or more
    /// dimensions than a body may nest.
    InputShape { name: String, shape: Vec<i64> },
    /// The request body is not valid JSON (syntax, trailing bytes, number out of range).
    Json(String),
    /// The top level is not an object whose only key is `instances`.
    NotInstances,
    /// `instances` is not a non-empty array.
    InstancesNotArray,
    /// The input has a fixed batch size and the request has another number of instances.
    BatchSize { expected: usize, found: usize },
    /// An instance is nested deeper or shallower than the input's shape (without its
    /// batch dimension), or holds an object.
    InstanceShape { index: usize, shape: Vec<i64> },
    /// A dimension of an instance differs from the input's fixed size for it.
    DimLength {
        index: usize,
        dim: usize,
        expected: usize,
        found: usize,
    },
    /// A variable (-1) dimension of an instance differs from the length earlier instances
    /// gave it.
    DimMismatch {
        index: usize,
        dim: usize,
        expected: usize,
        found: usize,
    },
    /// Arrays of one instance in the same dimension have different lengths.
    Ragged { index: usize, dim: usize },
    /// An instance holds a value of the wrong JSON kind for the datatype (a string, a
    /// null, a float for an integer type, ...).
    WrongKind {
        index: usize,
        datatype: &'static str,
        expected: &'static str,
    },
    /// An instance holds a number outside the datatype's range.
    OutOfRange {
        index: usize,
        datatype: &'static str,
    },
    /// The response is not a V2 inference response (not JSON, no `outputs`, an output
    /// without `name`, `shape` or JSON `data`, a null or object in `data`, ...).
    ResponseFormat(String),
    /// The response has an empty `outputs` array.
    NoOutputs,
    /// Two outputs of the response have the same name.
    DuplicateOutput(String),
    /// An output's shape is empty (no batch dimension).
    OutputNoBatch(String),
    /// An output's shape has a negative dimension or does not hold exactly its data.
    OutputShape {
        name: String,
        shape: Vec<i64>,
        values: usize,
    },
    /// An output has more than [`MAX_DEPTH`] dimensions or would need too many arrays.
    OutputTooLarge(String),
    /// Two outputs have different batch (first) dimensions.
    BatchMismatch {
        first: String,
        first_batch: usize,
        other: String,
        other_batch: usize,
    },
}

impl fmt::Display for V1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V1Error::TooLarge => write!(f, "body is larger than {} MiB", MAX_BODY_BYTES >> 20),
            V1Error::TooDeep => write!(f, "body is nested deeper than {MAX_DEPTH} levels"),
            V1Error::TooManyValues => write!(f, "body holds more than {MAX_VALUES} values"),
            V1Error::InputCount(n) => write!(
                f,
                "KServe V1 requests need a model with exactly one input; this model has {n}"
            ),
            V1Error::UnsupportedDatatype(datatype) => write!(
                f,
                "datatype {datatype} is not supported by V1 translation"
            ),
            V1Error::InputShape { name, shape } => write!(
                f,
                "input {name} has shape {} in the model metadata, which V1 translation cannot use",
                Shape(shape)
            ),
            V1Error::Json(why) => write!(f, "request body is not valid JSON: {why}"),
            V1Error::NotInstances => f.write_str(
                "expected a JSON object whose only key is \"instances\"",
            ),
            V1Error::InstancesNotArray => f.write_str("\"instances\" must be a non-empty array"),
            V1Error::BatchSize { expected, found } => write!(
                f,
                "the model takes exactly {expected} instances per request; the request has {found}"
            ),
            V1Error::InstanceShape { index, shape } => match shape.get(1..) {
                Some(inner) if !inner.is_empty() => write!(
                    f,
                    "instance {index} must be an array of shape {}, as the input's shape is {}",
                    Shape(inner),
                    Shape(shape)
                ),
                _ => write!(
                    f,
                    "instance {index} must be a scalar, as the input's shape is {}",
                    Shape(shape)
                ),
            },
            V1Error::DimLength {
                index,
                dim,
                expected,
                found,
            } => write!(
                f,
                "instance {index} has length {found} in dimension {dim} where the input takes {expected}"
            ),
            V1Error::DimMismatch {
                index,
                dim,
                expected,
                found,
            } => write!(
                f,
                "instance {index} has length {found} in dimension {dim} where earlier instances have {expected}"
            ),
            V1Error::Ragged { index, dim } => write!(
                f,
                "instance {index} is ragged: its arrays in dimension {dim} differ in length"
            ),
            V1Error::WrongKind {
                index,
                datatype,
                expected,
            } => write!(
                f,
                "instance {index} holds a value that is not {expected}, as datatype {datatype} needs"
            ),
            V1Error::OutOfRange { index, datatype } => {
                write!(f, "instance {index} holds a value out of range for datatype {datatype}")
            }
            V1Error::ResponseFormat(why) => {
                write!(f, "the response is not a V2 inference response: {why}")
            }
            V1Error::NoOutputs => f.write_str("the response has no outputs"),
            V1Error::DuplicateOutput(name) => {
                write!(f, "the response has two outputs named {name}")
            }
            V1Error::OutputNoBatch(name) => {
                write!(f, "output {name} has no batch dimension to split into predictions")
            }
            V1Error::OutputShape {
                name,
                shape,
                values,
            } => write!(
                f,
                "output {name} holds {values} values, which does not match its shape {}",
                Shape(shape)
            ),
            V1Error::OutputTooLarge(name) => {
                write!(f, "output {name} has a shape too large to translate to V1")
            }
            V1Error::BatchMismatch {
                first,
                first_batch,
                other,
                other_batch,
            } => write!(
                f,
                "outputs {first} and {other} have different batch sizes ({first_batch} and {other_batch})"
            ),
        }
    }
}

impl std::error::Error for V1Error {}

/// Renders a shape as `[-1,4]`.
struct Shape<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for Shape<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, dim) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{dim}")?;
        }
        f.write_str("]")
    }
}

/// Translates a KServe V1 predict request into a V2 infer request for a model whose
/// metadata lists `inputs`.
///
/// The model must have exactly one input; its shape's first dimension is the batch (-1,
/// or a fixed size the instance count must equal) and each instance must have the shape
/// of the rest, a -1 there taking any length that is the same in every instance (a rank-1
/// input takes scalar instances). BOOL takes JSON booleans, INT*/UINT* JSON integers in
/// range, FP16/FP32/FP64 JSON numbers (written as floats, e.g. `1.0`). The answer is
/// `{"inputs":[{"name","shape":[N,...],"datatype","data":[row-major values]}]}`.
///
/// Errors: a body over [`MAX_BODY_BYTES`], nested deeper than [`MAX_DEPTH`] or with more
/// than [`MAX_VALUES`] scalars; a model without exactly one input or with an unsupported
/// datatype or unusable shape; anything that is not `{"instances": [non-empty array]}`;
/// an instance of the wrong shape or with a value of the wrong kind or out of range (the
/// message names the instance). Never panics.
pub fn v1_request_to_v2(body: &[u8], inputs: &[TensorSpec]) -> Result<Vec<u8>, V1Error> {
    if body.len() > MAX_BODY_BYTES {
        return Err(V1Error::TooLarge);
    }
    let input = match inputs {
        [input] => input,
        _ => return Err(V1Error::InputCount(inputs.len())),
    };
    let kind = Kind::of(&input.datatype)
        .ok_or_else(|| V1Error::UnsupportedDatatype(input.datatype.clone()))?;
    let (batch, dims) = instance_dims(input)?;
    // Anything but an object (an array, a number, an empty body) gets the message that
    // says what is expected rather than a parser error.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(V1Error::NotInstances);
    }
    scan(body)?;

    let mut translate = Translate {
        kind,
        shape: &input.shape,
        dims,
        data: kind.empty_data(),
        instance: 0,
        error: None,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Body(&mut translate)
        .deserialize(&mut de)
        .and_then(|count| de.end().map(|()| count));
    let count = match parsed {
        Ok(count) => count,
        Err(err) => {
            return Err(translate
                .error
                .take()
                .unwrap_or(V1Error::Json(err.to_string())))
        }
    };
    if let Some(expected) = batch {
        if count != expected {
            return Err(V1Error::BatchSize {
                expected,
                found: count,
            });
        }
    }

    let mut shape = Vec::with_capacity(translate.dims.len() + 1);
    shape.push(to_i64(count));
    shape.extend(translate.dims.iter().map(|dim| to_i64(dim.len())));
    let request = V2Request {
        inputs: [V2Input {
            name: &input.name,
            shape,
            datatype: kind.name,
            data: translate.data,
        }],
    };
    serde_json::to_vec(&request).map_err(|err| V1Error::Json(err.to_string()))
}

/// Translates a V2 infer response into a KServe V1 predict response.
///
/// With one output, `predictions` has one element per row of the output's first (batch)
/// dimension, nested per the other dimensions (a rank-1 output gives scalars). With
/// several, each prediction is an object `{output name: row}`, and all outputs must have
/// the same batch size. `data` may be flat or nested (both are V2); its numbers, booleans
/// and strings are kept as they come.
///
/// Errors: a body over [`MAX_BODY_BYTES`], nested deeper than [`MAX_DEPTH`] or with more
/// than [`MAX_VALUES`] JSON values; anything that is not a V2 response with JSON data; no
/// outputs, two outputs with one name, an output whose shape is empty, has a negative
/// dimension, more than [`MAX_DEPTH`] dimensions or does not match its data; batch sizes
/// that differ. Never panics.
pub fn v2_response_to_v1(body: &[u8]) -> Result<Vec<u8>, V1Error> {
    if body.len() > MAX_BODY_BYTES {
        return Err(V1Error::TooLarge);
    }
    if scan(body)? > MAX_VALUES {
        return Err(V1Error::TooManyValues);
    }
    let response: V2Response =
        serde_json::from_slice(body).map_err(|err| V1Error::ResponseFormat(err.to_string()))?;
    if response.outputs.is_empty() {
        return Err(V1Error::NoOutputs);
    }

    let mut names = std::collections::BTreeSet::new();
    let mut all_dims = Vec::with_capacity(response.outputs.len());
    let mut budget = 2 * MAX_VALUES;
    let mut batch: Option<(usize, &str)> = None;
    for output in &response.outputs {
        if !names.insert(output.name.as_str()) {
            return Err(V1Error::DuplicateOutput(output.name.clone()));
        }
        let dims = output_dims(output, &mut budget)?;
        let rows = dims.first().copied().unwrap_or(0);
        match batch {
            None => batch = Some((rows, &output.name)),
            Some((first_batch, first)) if first_batch != rows => {
                return Err(V1Error::BatchMismatch {
                    first: first.to_owned(),
                    first_batch,
                    other: output.name.clone(),
                    other_batch: rows,
                })
            }
            Some(_) => {}
        }
        all_dims.push(dims);
    }
    let rows = batch.map_or(0, |(rows, _)| rows);

    // Every check is done: what remains cannot fail, so the data can be moved out.
    let mut columns: Vec<(String, Vec<usize>, std::vec::IntoIter<Value>)> = response
        .outputs
        .into_iter()
        .zip(all_dims)
        .map(|(output, dims)| (output.name, dims, output.data.0.into_iter()))
        .collect();
    let predictions: Vec<Value> = match columns.as_mut_slice() {
        [(_, dims, values)] => {
            let row_dims = dims.get(1..).unwrap_or_default();
            (0..rows).map(|_| nest(values, row_dims)).collect()
        }
        _ => (0..rows)
            .map(|_| {
                let mut row = Map::new();
                for (name, dims, values) in columns.iter_mut() {
                    let row_dims = dims.get(1..).unwrap_or_default();
                    row.insert(name.clone(), nest(values, row_dims));
                }
                Value::Object(row)
            })
            .collect(),
    };
    let mut answer = Map::new();
    answer.insert("predictions".to_owned(), Value::Array(predictions));
    serde_json::to_vec(&Value::Object(answer))
        .map_err(|err| V1Error::ResponseFormat(err.to_string()))
}

/// Checks the nesting of a JSON body with a linear scan that no input can make recurse,
/// and returns an upper bound of the number of JSON values it holds (every value but the
/// first of each container follows a comma). The body need not be valid JSON: the parser
/// that runs next reports that.
fn scan(body: &[u8]) -> Result<usize, V1Error> {
    let mut depth = 0usize;
    let mut values = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                values += 1;
                if depth > MAX_DEPTH {
                    return Err(V1Error::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => values += 1,
            _ => {}
        }
    }
    Ok(values)
}

/// The input's fixed batch size (`None` for -1) and the dimensions of one instance.
fn instance_dims(input: &TensorSpec) -> Result<(Option<usize>, Vec<Dim>), V1Error> {
    let bad = || V1Error::InputShape {
        name: input.name.clone(),
        shape: input.shape.clone(),
    };
    let (&batch, rest) = input.shape.split_first().ok_or_else(bad)?;
    // The body's object and `instances` array take two levels of the nesting allowed.
    if rest.len() + 2 > MAX_DEPTH {
        return Err(bad());
    }
    let batch = match batch {
        -1 => None,
        n => Some(usize::try_from(n).map_err(|_| bad())?),
    };
    let dims = rest
        .iter()
        .map(|&dim| match dim {
            -1 => Ok(Dim::Variable(None)),
            n => usize::try_from(n).map(Dim::Fixed).map_err(|_| bad()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((batch, dims))
}

/// `usize` to the `i64` of a V2 shape; lengths here are far below `i64::MAX`.
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One dimension of an instance.
#[derive(Debug, Clone, Copy)]
enum Dim {
    /// A size fixed by the metadata.
    Fixed(usize),
    /// A -1 in the metadata: the first array met in this dimension sets its length (and
    /// remembers in which instance, to tell a ragged instance from a mismatch).
    Variable(Option<Seen>),
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    len: usize,
    instance: usize,
}

impl Dim {
    /// The length in the V2 shape. A variable dimension that no array reached (an outer
    /// dimension is 0) has no data either way; 0 keeps the shape consistent with it.
    fn len(&self) -> usize {
        match self {
            Dim::Fixed(len) | Dim::Variable(Some(Seen { len, .. })) => *len,
            Dim::Variable(None) => 0,
        }
    }
}

/// A V2 datatype V1 translation supports, and what JSON it takes.
#[derive(Debug, Clone, Copy)]
struct Kind {
    name: &'static str,
    range: Range,
}

#[derive(Debug, Clone, Copy)]
enum Range {
    Bool,
    Signed {
        min: i64,
        max: i64,
    },
    Unsigned {
        max: u64,
    },
    /// Largest finite magnitude of the float type.
    Float {
        max: f64,
    },
}

impl Kind {
    fn of(datatype: &str) -> Option<Kind> {
        let (name, range) = match datatype {
            "BOOL" => ("BOOL", Range::Bool),
            "INT8" => ("INT8", signed(i8::MIN.into(), i8::MAX.into())),
            "INT16" => ("INT16", signed(i16::MIN.into(), i16::MAX.into())),
            "INT32" => ("INT32", signed(i32::MIN.into(), i32::MAX.into())),
            "INT64" => ("INT64", signed(i64::MIN, i64::MAX)),
            "UINT8" => (
                "UINT8",
                Range::Unsigned {
                    max: u8::MAX.into(),
                },
            ),
            "UINT16" => (
                "UINT16",
                Range::Unsigned {
                    max: u16::MAX.into(),
                },
            ),
            "UINT32" => (
                "UINT32",
                Range::Unsigned {
                    max: u32::MAX.into(),
                },
            ),
            "UINT64" => ("UINT64", Range::Unsigned { max: u64::MAX }),
            "FP16" => ("FP16", Range::Float { max: 65504.0 }),
            "FP32" => (
                "FP32",
                Range::Float {
                    max: f32::MAX.into(),
                },
            ),
            "FP64" => ("FP64", Range::Float { max: f64::MAX }),
            _ => return None,
        };
        Some(Kind { name, range })
    }

    /// What the error says a value should have been.
    fn expected(&self) -> &'static str {
        match self.range {
            Range::Bool => "a JSON boolean",
            Range::Signed { .. } | Range::Unsigned { .. } => "a JSON integer",
            Range::Float { .. } => "a JSON number",
        }
    }

    fn empty_data(&self) -> Data {
        match self.range {
            Range::Bool => Data::Bool(Vec::new()),
            Range::Signed { .. } => Data::Signed(Vec::new()),
            Range::Unsigned { .. } => Data::Unsigned(Vec::new()),
            Range::Float { .. } => Data::Float(Vec::new()),
        }
    }
}

fn signed(min: i64, max: i64) -> Range {
    Range::Signed { min, max }
}

/// The flattened values of the request, typed so each takes 8 bytes or less.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Data {
    Bool(Vec<bool>),
    Signed(Vec<i64>),
    Unsigned(Vec<u64>),
    Float(Vec<f64>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Bool(v) => v.len(),
            Data::Signed(v) => v.len(),
            Data::Unsigned(v) => v.len(),
            Data::Float(v) => v.len(),
        }
    }
}

/// A JSON scalar as serde_json hands it over.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
}

#[derive(Serialize)]
struct V2Request<'a> {
    inputs: [V2Input<'a>; 1],
}

#[derive(Serialize)]
struct V2Input<'a> {
    name: &'a str,
    shape: Vec<i64>,
    datatype: &'static str,
    data: Data,
}

/// Why a scalar was refused.
enum Fault {
    Kind,
    Range,
}

/// Appends `value` to `data` if it has the kind and range the datatype takes.
fn push(data: &mut Data, range: Range, value: Scalar) -> Result<(), Fault> {
    match (data, range, value) {
        (Data::Bool(data), Range::Bool, Scalar::Bool(v)) => data.push(v),
        (Data::Signed(data), Range::Signed { min, max }, Scalar::I64(v)) => {
            if v < min || v > max {
                return Err(Fault::Range);
            }
            data.push(v);
        }
        (Data::Signed(data), Range::Signed { max, .. }, Scalar::U64(v)) => match i64::try_from(v) {
            Ok(v) if v <= max => data.push(v),
            _ => return Err(Fault::Range),
        },
        (Data::Unsigned(data), Range::Unsigned { max }, Scalar::U64(v)) => {
            if v > max {
                return Err(Fault::Range);
            }
            data.push(v);
        }
        (Data::Unsigned(data), Range::Unsigned { max }, Scalar::I64(v)) => match u64::try_from(v) {
            Ok(v) if v <= max => data.push(v),
            _ => return Err(Fault::Range),
        },
        (Data::Float(data), Range::Float { max }, value) => {
            let v = match value {
                Scalar::F64(v) => v,
                // Integers become floats; beyond 2^53 they round, as in any JSON reader.
                Scalar::I64(v) => v as f64,
                Scalar::U64(v) => v as f64,
                Scalar::Bool(_) => return Err(Fault::Kind),
            };
            if !v.is_finite() || v.abs() > max {
                return Err(Fault::Range);
            }
            data.push(v);
        }
        _ => return Err(Fault::Kind),
    }
    Ok(())
}

/// The state of one request translation, shared by the seeds below.
struct Translate<'a> {
    kind: Kind,
    /// The input's metadata shape, for messages.
    shape: &'a [i64],
    /// The shape of one instance, learnt as the instances are read.
    dims: Vec<Dim>,
    data: Data,
    /// Index of the instance being read.
    instance: usize,
    /// The error to report when a seed stopped the parse (serde's own error carries only
    /// a string).
    error: Option<V1Error>,
}

impl Translate<'_> {
    /// Records `err` and returns the serde error that stops the parse.
    fn fail<E: de::Error>(&mut self, err: V1Error) -> E {
        self.error = Some(err);
        E::custom("translation stopped")
    }

    fn wrong_shape(&self) -> V1Error {
        V1Error::InstanceShape {
            index: self.instance,
            shape: self.shape.to_vec(),
        }
    }

    fn wrong_kind(&self) -> V1Error {
        V1Error::WrongKind {
            index: self.instance,
            datatype: self.kind.name,
            expected: self.kind.expected(),
        }
    }

    fn out_of_range(&self) -> V1Error {
        V1Error::OutOfRange {
            index: self.instance,
            datatype: self.kind.name,
        }
    }

    /// Appends one scalar met at `depth` (0 is the instance itself).
    fn scalar<E: de::Error>(&mut self, depth: usize, value: Scalar) -> Result<(), E> {
        if depth < self.dims.len() {
            let err = self.wrong_shape();
            return Err(self.fail(err));
        }
        if self.data.len() >= MAX_VALUES {
            return Err(self.fail(V1Error::TooManyValues));
        }
        let err = match push(&mut self.data, self.kind.range, value) {
            Ok(()) => return Ok(()),
            Err(Fault::Kind) => self.wrong_kind(),
            Err(Fault::Range) => self.out_of_range(),
        };
        Err(self.fail(err))
    }

    /// Checks the length of an array met at `depth` against what the instance shape says
    /// or, for a -1 dimension, against the first array met there.
    fn array_len(&mut self, depth: usize, found: usize) -> Result<(), V1Error> {
        let index = self.instance;
        let dim = depth + 1;
        match self.dims.get_mut(depth) {
            None => Err(self.wrong_shape()),
            Some(Dim::Fixed(expected)) if *expected != found => Err(V1Error::DimLength {
                index,
                dim,
                expected: *expected,
                found,
            }),
            Some(Dim::Fixed(_)) => Ok(()),
            Some(Dim::Variable(seen @ None)) => {
                *seen = Some(Seen {
                    len: found,
                    instance: index,
                });
                Ok(())
            }
            Some(Dim::Variable(Some(seen))) if seen.len != found => {
                if seen.instance == index {
                    Err(V1Error::Ragged { index, dim })
                } else {
                    Err(V1Error::DimMismatch {
                        index,
                        dim,
                        expected: seen.len,
                        found,
                    })
                }
            }
            Some(Dim::Variable(Some(_))) => Ok(()),
        }
    }
}

/// The whole body: an object whose only key is `instances`. Yields the instance count.
struct Body<'t, 'a>(&'t mut Translate<'a>);

impl<'de> DeserializeSeed<'de> for Body<'_, '_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body<'_, '_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object whose only key is \"instances\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let translate = self.0;
        let mut count = None;
        while let Some(is_instances) = map.next_key_seed(InstancesKey)? {
            if !is_instances || count.is_some() {
                return Err(translate.fail(V1Error::NotInstances));
            }
            count = Some(map.next_value_seed(Instances(&mut *translate))?);
        }
        match count {
            Some(count) => Ok(count),
            None => Err(translate.fail(V1Error::NotInstances)),
        }
    }
}

/// A map key: whether it is `instances`.
struct InstancesKey;

impl<'de> DeserializeSeed<'de> for InstancesKey {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for InstancesKey {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "instances")
    }
}

/// The `instances` array. Yields its length.
struct Instances<'t, 'a>(&'t mut Translate<'a>);

impl<'de> DeserializeSeed<'de> for Instances<'_, '_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Instances<'_, '_> {
    fn not_array<E: de::Error>(self) -> Result<usize, E> {
        Err(self.0.fail(V1Error::InstancesNotArray))
    }
}

impl<'de> Visitor<'de> for Instances<'_, '_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-empty array of instances")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let translate = self.0;
        let mut count = 0;
        loop {
            translate.instance = count;
            let seed = Element {
                translate: &mut *translate,
                depth: 0,
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            count += 1;
        }
        if count == 0 {
            return Err(translate.fail(V1Error::InstancesNotArray));
        }
        Ok(count)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<usize, E> {
        self.not_array()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<usize, E> {
        self.not_array()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<usize, E> {
        self.not_array()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<usize, E> {
        self.not_array()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<usize, E> {
        self.not_array()
    }

    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        self.not_array()
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<usize, A::Error> {
        self.not_array()
    }
}

/// An instance (`depth` 0) or an array or scalar inside one. Recursion follows the body's
/// nesting, which [`scan`] bounded to [`MAX_DEPTH`].
struct Element<'t, 'a> {
    translate: &'t mut Translate<'a>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Element<'_, '_> {
    /// A string, null or object: not an array, and not a value of any supported datatype.
    fn other<E: de::Error>(self) -> Result<(), E> {
        let err = if self.depth < self.translate.dims.len() {
            self.translate.wrong_shape()
        } else {
            self.translate.wrong_kind()
        };
        Err(self.translate.fail(err))
    }
}

impl<'de> Visitor<'de> for Element<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an instance")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let translate = self.translate;
        if self.depth >= translate.dims.len() {
            let err = translate.wrong_shape();
            return Err(translate.fail(err));
        }
        let mut len = 0;
        loop {
            let seed = Element {
                translate: &mut *translate,
                depth: self.depth + 1,
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            len += 1;
        }
        match translate.array_len(self.depth, len) {
            Ok(()) => Ok(()),
            Err(err) => Err(translate.fail(err)),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.translate.scalar(self.depth, Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.translate.scalar(self.depth, Scalar::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.translate.scalar(self.depth, Scalar::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.translate.scalar(self.depth, Scalar::F64(v))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.other()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.other()
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.other()
    }
}

/// The parts of a V2 infer response the translation reads; other keys are ignored.
#[derive(Deserialize)]
struct V2Response {
    outputs: Vec<V2Output>,
}

#[derive(Deserialize)]
struct V2Output {
    name: String,
    shape: Vec<i64>,
    data: FlatData,
}

/// An output's `data`, flattened: V2 allows it nested or flat, row-major either way.
struct FlatData(Vec<Value>);

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FlatData, D::Error> {
        let mut values = Vec::new();
        deserializer.deserialize_seq(Flatten(&mut values))?;
        Ok(FlatData(values))
    }
}

/// Appends the scalars of a (nested) array to the vector. Recursion follows the body's
/// nesting, which [`scan`] bounded to [`MAX_DEPTH`].
struct Flatten<'v>(&'v mut Vec<Value>);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers, booleans or strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(Value::Bool(v));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(Value::from(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(Value::from(v));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(Value::from(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(Value::String(v.to_owned()));
        Ok(())
    }
}

/// Checks an output's shape against its data and returns it as sizes. `budget` is how
/// many more arrays and values the predictions may take; the output's share is taken
/// from it (a shape like `[1000000000, 0]` holds no data but would need a billion rows).
fn output_dims(output: &V2Output, budget: &mut usize) -> Result<Vec<usize>, V1Error> {
    let name = &output.name;
    let values = output.data.0.len();
    let bad_shape = || V1Error::OutputShape {
        name: name.clone(),
        shape: output.shape.clone(),
        values,
    };
    if output.shape.is_empty() {
        return Err(V1Error::OutputNoBatch(name.clone()));
    }
    if output.shape.len() > MAX_DEPTH {
        return Err(V1Error::OutputTooLarge(name.clone()));
    }
    let dims = output
        .shape
        .iter()
        .map(|&dim| usize::try_from(dim).map_err(|_| bad_shape()))
        .collect::<Result<Vec<_>, _>>()?;
    // The predictions hold one node per prefix of the shape: rows, then their arrays, ...
    let mut nodes = 1usize;
    for &dim in &dims {
        nodes = nodes.checked_mul(dim).ok_or_else(bad_shape)?;
        *budget = budget
            .checked_sub(nodes)
            .ok_or_else(|| V1Error::OutputTooLarge(name.clone()))?;
    }
    if nodes != values {
        return Err(bad_shape());
    }
    Ok(dims)
}

/// Takes the next `product(dims)` values and nests them per `dims` (no dims: one scalar).
/// Recursion depth is `dims.len()`, at most [`MAX_DEPTH`]; the caller checked there are
/// enough values, and a missing one would become `null` rather than a panic.
fn nest(values: &mut std::vec::IntoIter<Value>, dims: &[usize]) -> Value {
    match dims.split_first() {
        None => values.next().unwrap_or(Value::Null),
        Some((&len, rest)) => Value::Array((0..len).map(|_| nest(values, rest)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn spec(name: &str, datatype: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.to_owned(),
            datatype: datatype.to_owned(),
            shape: shape.to_vec(),
        }
    }

    fn request(body: &str, inputs: &[TensorSpec]) -> Result<Value, V1Error> {
        v1_request_to_v2(body.as_bytes(), inputs).map(|out| serde_json::from_slice(&out).unwrap())
    }

    fn response(body: &str) -> Result<Value, V1Error> {
        v2_response_to_v1(body.as_bytes()).map(|out| serde_json::from_slice(&out).unwrap())
    }

    fn v2(name: &str, datatype: &str, shape: Value, data: Value) -> Result<Value, V1Error> {
        Ok(json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}))
    }

    #[test]
    fn translates_the_linear_model_request() {
        let x = [spec("x", "FP32", &[-1, 4])];
        let out = v1_request_to_v2(br#"{"instances":[[1,2,3,4],[0,0,0,0]]}"#, &x).unwrap();
        // Float datatypes are written as floats, whatever the client wrote.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1.0,2.0,3.0,4.0,0.0,0.0,0.0,0.0]}]}"#
        );
    }

    #[test]
    fn translates_requests() {
        let cases: &[(&str, TensorSpec, Result<Value, V1Error>)] = &[
            (
                r#"{"instances":[[1.5,-2e3,3,4]]}"#,
                spec("x", "FP32", &[-1, 4]),
                v2("x", "FP32", json!([1, 4]), json!([1.5, -2000.0, 3.0, 4.0])),
            ),
            (
                " \n{ \"instances\" : [ [true,false], [false,true] ] } \n",
                spec("flags", "BOOL", &[2, 2]),
                v2(
                    "flags",
                    "BOOL",
                    json!([2, 2]),
                    json!([true, false, false, true]),
                ),
            ),
            (
                r#"{"instances":[1,-2,3]}"#,
                spec("ids", "INT64", &[-1]),
                v2("ids", "INT64", json!([3]), json!([1, -2, 3])),
            ),
            (
                r#"{"instances":[[-128,127]]}"#,
                spec("b", "INT8", &[-1, 2]),
                v2("b", "INT8", json!([1, 2]), json!([-128, 127])),
            ),
            (
                r#"{"instances":[[0,255]]}"#,
                spec("u", "UINT8", &[-1, -1]),
                v2("u", "UINT8", json!([1, 2]), json!([0, 255])),
            ),
            (
                r#"{"instances":[18446744073709551615]}"#,
                spec("u", "UINT64", &[-1]),
                v2("u", "UINT64", json!([1]), json!([u64::MAX])),
            ),
            (
                r#"{"instances":[65504, -65504]}"#,
                spec("h", "FP16", &[-1]),
                v2("h", "FP16", json!([2]), json!([65504.0, -65504.0])),
            ),
            (
                r#"{"instances":[1e300]}"#,
                spec("d", "FP64", &[-1]),
                v2("d", "FP64", json!([1]), json!([1e300])),
            ),
            // Variable inner dimensions take the length of the first instance.
            (
                r#"{"instances":[[[1,2,3]],[[4,5,6]]]}"#,
                spec("img", "INT32", &[-1, -1, 3]),
                v2("img", "INT32", json!([2, 1, 3]), json!([1, 2, 3, 4, 5, 6])),
            ),
            (
                r#"{"instances":[[],[]]}"#,
                spec("e", "FP32", &[-1, -1, 7]),
                v2("e", "FP32", json!([2, 0, 7]), json!([])),
            ),
            (
                r#"{"instances":[[[]]]}"#,
                spec("e", "FP32", &[-1, -1, -1]),
                v2("e", "FP32", json!([1, 1, 0]), json!([])),
            ),
            // A model without batching: the first dimension is the instance count.
            (
                r#"{"instances":[1,2,3,4]}"#,
                spec("v", "FP64", &[4]),
                v2("v", "FP64", json!([4]), json!([1.0, 2.0, 3.0, 4.0])),
            ),
        ];
        for (body, input, want) in cases {
            assert_eq!(&request(body, std::slice::from_ref(input)), want, "{body}");
        }
    }

    #[test]
    fn refuses_bad_requests() {
        let x = spec("x", "FP32", &[-1, 4]);
        let shape = |index| V1Error::InstanceShape {
            index,
            shape: vec![-1, 4],
        };
        let kind = |index, datatype, expected| V1Error::WrongKind {
            index,
            datatype,
            expected,
        };
        let cases: &[(&str, TensorSpec, V1Error)] = &[
            (
                r#"{"instances":[[1,2,3,4],[1,2,3]]}"#,
                x.clone(),
                V1Error::DimLength {
                    index: 1,
                    dim: 1,
                    expected: 4,
                    found: 3,
                },
            ),
            (
                r#"{"instances":[[[1,2],[3]]]}"#,
                spec("x", "FP32", &[-1, -1, -1]),
                V1Error::Ragged { index: 0, dim: 2 },
            ),
            (
                r#"{"instances":[[[1,2]],[[3]]]}"#,
                spec("x", "FP32", &[-1, -1, -1]),
                V1Error::DimMismatch {
                    index: 1,
                    dim: 2,
                    expected: 2,
                    found: 1,
                },
            ),
            (r#"{"instances":[1,2,3,4]}"#, x.clone(), shape(0)),
            (r#"{"instances":[[1,2,3,4],5]}"#, x.clone(), shape(1)),
            (r#"{"instances":[[[1],[2],[3],[4]]]}"#, x.clone(), shape(0)),
            (r#"{"instances":[{"a":1}]}"#, x.clone(), shape(0)),
            (r#"{"instances":["abcd"]}"#, x.clone(), shape(0)),
            (
                r#"{"instances":[[1,2,3,4],["a","b","c","d"]]}"#,
                x.clone(),
                kind(1, "FP32", "a JSON number"),
            ),
            (
                r#"{"instances":[[1,2,null,4]]}"#,
                x.clone(),
                kind(0, "FP32", "a JSON number"),
            ),
            (
                r#"{"instances":[[1,2,true,4]]}"#,
                x.clone(),
                kind(0, "FP32", "a JSON number"),
            ),
            (
                r#"{"instances":[[1,2,{},4]]}"#,
                x.clone(),
                kind(0, "FP32", "a JSON number"),
            ),
            (
                r#"{"instances":[1, 1.5]}"#,
                spec("i", "INT32", &[-1]),
                kind(1, "INT32", "a JSON integer"),
            ),
            (
                r#"{"instances":[true, 1]}"#,
                spec("b", "BOOL", &[-1]),
                kind(1, "BOOL", "a JSON boolean"),
            ),
            (
                r#"{"instances":[[1,2],[3,128]]}"#,
                spec("b", "INT8", &[-1, 2]),
                V1Error::OutOfRange {
                    index: 1,
                    datatype: "INT8",
                },
            ),
            (
                r#"{"instances":[-129]}"#,
                spec("b", "INT8", &[-1]),
                V1Error::OutOfRange {
                    index: 0,
                    datatype: "INT8",
                },
            ),
            (
                r#"{"instances":[0, -1]}"#,
                spec("u", "UINT32", &[-1]),
                V1Error::OutOfRange {
                    index: 1,
                    datatype: "UINT32",
                },
            ),
            (
                r#"{"instances":[9223372036854775808]}"#,
                spec("i", "INT64", &[-1]),
                V1Error::OutOfRange {
                    index: 0,
                    datatype: "INT64",
                },
            ),
            (
                r#"{"instances":[1e39]}"#,
                spec("f", "FP32", &[-1]),
                V1Error::OutOfRange {
                    index: 0,
                    datatype: "FP32",
                },
            ),
            (
                r#"{"instances":[65520]}"#,
                spec("h", "FP16", &[-1]),
                V1Error::OutOfRange {
                    index: 0,
                    datatype: "FP16",
                },
            ),
            (r#"{"instances":[]}"#, x.clone(), V1Error::InstancesNotArray),
            (r#"{"instances":{}}"#, x.clone(), V1Error::InstancesNotArray),
            (
                r#"{"instances":null}"#,
                x.clone(),
                V1Error::InstancesNotArray,
            ),
            (
                r#"{"instances":"[]"}"#,
                x.clone(),
                V1Error::InstancesNotArray,
            ),
            (
                r#"{"instances":[[1,2,3,4]],"x":1}"#,
                x.clone(),
                V1Error::NotInstances,
            ),
            (
                r#"{"signature_name":"a","instances":[]}"#,
                x.clone(),
                V1Error::NotInstances,
            ),
            (
                r#"{"instances":[[1,2,3,4]],"instances":[[1,2,3,4]]}"#,
                x.clone(),
                V1Error::NotInstances,
            ),
            (
                r#"{"inputs":[[1,2,3,4]]}"#,
                x.clone(),
                V1Error::NotInstances,
            ),
            (r#"{}"#, x.clone(), V1Error::NotInstances),
            (r#"[[1,2,3,4]]"#, x.clone(), V1Error::NotInstances),
            ("", x.clone(), V1Error::NotInstances),
            ("null", x.clone(), V1Error::NotInstances),
            (
                r#"{"instances":[[1,2,3,4]]}"#,
                spec("x", "FP32", &[3, 4]),
                V1Error::BatchSize {
                    expected: 3,
                    found: 1,
                },
            ),
            (
                r#"{"instances":["a"]}"#,
                spec("s", "BYTES", &[-1]),
                V1Error::UnsupportedDatatype("BYTES".to_owned()),
            ),
            (
                r#"{"instances":[1]}"#,
                spec("s", "BF16", &[-1]),
                V1Error::UnsupportedDatatype("BF16".to_owned()),
            ),
            (
                r#"{"instances":[1]}"#,
                spec("s", "FP32", &[]),
                V1Error::InputShape {
                    name: "s".to_owned(),
                    shape: vec![],
                },
            ),
            (
                r#"{"instances":[1]}"#,
                spec("s", "FP32", &[-1, -2]),
                V1Error::InputShape {
                    name: "s".to_owned(),
                    shape: vec![-1, -2],
                },
            ),
        ];
        for (body, input, want) in cases {
            assert_eq!(
                &request(body, std::slice::from_ref(input)).unwrap_err(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn refuses_models_without_exactly_one_input() {
        let body = r#"{"instances":[1]}"#;
        let a = spec("a", "FP32", &[-1]);
        let b = spec("b", "FP32", &[-1]);
        assert_eq!(request(body, &[]), Err(V1Error::InputCount(0)));
        assert_eq!(request(body, &[a, b]), Err(V1Error::InputCount(2)));
        assert_eq!(
            V1Error::InputCount(2).to_string(),
            "KServe V1 requests need a model with exactly one input; this model has 2"
        );
    }

    #[test]
    fn refuses_invalid_json() {
        let x = [spec("x", "FP32", &[-1])];
        for body in [
            r#"{"instances":[1,2]"#,
            r#"{"instances":[1,2]} x"#,
            r#"{"instances":[1,,2]}"#,
            r#"{"instances":[1e400]}"#,
            r#"{instances:[1]}"#,
            "{",
        ] {
            assert!(
                matches!(request(body, &x), Err(V1Error::Json(_))),
                "{body}: {:?}",
                request(body, &x)
            );
        }
    }

    #[test]
    fn enforces_limits() {
        let x = [spec("x", "FP32", &[-1, -1])];
        let too_big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(v1_request_to_v2(&too_big, &x), Err(V1Error::TooLarge));
        assert_eq!(v2_response_to_v1(&too_big), Err(V1Error::TooLarge));

        // 31 levels pass the depth check (and fail the shape check); 33 do not. Brackets
        // inside strings do not count.
        let deep = |levels: usize| {
            format!(
                r#"{{"instances":{}{}}}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(matches!(
            request(&deep(MAX_DEPTH), &x),
            Err(V1Error::InstanceShape { .. })
        ));
        assert_eq!(request(&deep(MAX_DEPTH + 1), &x), Err(V1Error::TooDeep));
        let deep = format!(r#"{{"instances":[[1]],"{}":1}}"#, "[".repeat(100));
        assert_eq!(request(&deep, &x), Err(V1Error::NotInstances));
        let unclosed = "[".repeat(100_000);
        assert_eq!(
            v2_response_to_v1(unclosed.as_bytes()),
            Err(V1Error::TooDeep)
        );
        assert_eq!(
            v1_request_to_v2(format!("{{{unclosed}").as_bytes(), &x),
            Err(V1Error::TooDeep)
        );

        let values = |n: usize| format!(r#"{{"instances":[[{}0]]}}"#, "0,".repeat(n - 1));
        let out = v1_request_to_v2(values(MAX_VALUES).as_bytes(), &x).unwrap();
        let head = format!(r#"{{"inputs":[{{"name":"x","shape":[1,{MAX_VALUES}],"#);
        assert!(out.starts_with(head.as_bytes()));
        assert_eq!(
            request(&values(MAX_VALUES + 1), &x),
            Err(V1Error::TooManyValues)
        );
        let response = format!(
            r#"{{"outputs":[{{"name":"y","shape":[{n}],"data":[{}0]}}]}}"#,
            "0,".repeat(MAX_VALUES),
            n = MAX_VALUES + 1
        );
        assert_eq!(
            v2_response_to_v1(response.as_bytes()),
            Err(V1Error::TooManyValues)
        );
    }

    #[test]
    fn translates_responses() {
        let cases: &[(Value, Value)] = &[
            (
                json!({"model_name":"linear","model_version":"1","outputs":[
                    {"name":"y","datatype":"FP32","shape":[2,1],"data":[7.0,1.5]}]}),
                json!({"predictions":[[7.0],[1.5]]}),
            ),
            (
                json!({"outputs":[{"name":"y","datatype":"INT64","shape":[3],"data":[1,-2,3]}]}),
                json!({"predictions":[1,-2,3]}),
            ),
            (
                json!({"outputs":[{"name":"y","datatype":"FP32","shape":[1,2,2],"data":[1,2,3,4]}]}),
                json!({"predictions":[[[1,2],[3,4]]]}),
            ),
            // Nested data is V2 too.
            (
                json!({"outputs":[{"name":"y","datatype":"FP32","shape":[2,2],"data":[[1,2],[3,4]]}]}),
                json!({"predictions":[[1,2],[3,4]]}),
            ),
            (
                json!({"outputs":[{"name":"s","datatype":"BYTES","shape":[2],"data":["a","b"]}]}),
                json!({"predictions":["a","b"]}),
            ),
            (
                json!({"outputs":[{"name":"y","datatype":"FP32","shape":[0,4],"data":[]}]}),
                json!({"predictions":[]}),
            ),
            (
                json!({"outputs":[
                    {"name":"score","datatype":"FP32","shape":[3,1],"data":[0.1,0.9,0.5]},
                    {"name":"is_anomaly","datatype":"BOOL","shape":[3,1],"data":[false,true,false]}]}),
                json!({"predictions":[
                    {"score":[0.1],"is_anomaly":[false]},
                    {"score":[0.9],"is_anomaly":[true]},
                    {"score":[0.5],"is_anomaly":[false]}]}),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(response(&body.to_string()).as_ref(), Ok(want), "{body}");
        }
        // Numbers keep their JSON kind: floats stay floats, integers stay integers.
        let out = v2_response_to_v1(
            br#"{"outputs":[{"name":"y","datatype":"FP32","shape":[2,1],"data":[7.0,1.5]}]}"#,
        )
        .unwrap();
        assert_eq!(out, br#"{"predictions":[[7.0],[1.5]]}"#);
    }

    #[test]
    fn refuses_bad_responses() {
        let cases: &[(&str, V1Error)] = &[
            (
                r#"{"outputs":[{"name":"a","shape":[3,1],"data":[1,2,3]},{"name":"b","shape":[2,1],"data":[1,2]}]}"#,
                V1Error::BatchMismatch {
                    first: "a".to_owned(),
                    first_batch: 3,
                    other: "b".to_owned(),
                    other_batch: 2,
                },
            ),
            (
                r#"{"outputs":[{"name":"a","shape":[1],"data":[1]},{"name":"a","shape":[1],"data":[2]}]}"#,
                V1Error::DuplicateOutput("a".to_owned()),
            ),
            (r#"{"outputs":[]}"#, V1Error::NoOutputs),
            (
                r#"{"outputs":[{"name":"a","shape":[],"data":[1]}]}"#,
                V1Error::OutputNoBatch("a".to_owned()),
            ),
            (
                r#"{"outputs":[{"name":"a","shape":[2,2],"data":[1,2,3]}]}"#,
                V1Error::OutputShape {
                    name: "a".to_owned(),
                    shape: vec![2, 2],
                    values: 3,
                },
            ),
            (
                r#"{"outputs":[{"name":"a","shape":[-1,3],"data":[1,2,3]}]}"#,
                V1Error::OutputShape {
                    name: "a".to_owned(),
                    shape: vec![-1, 3],
                    values: 3,
                },
            ),
            (
                r#"{"outputs":[{"name":"a","shape":[4294967296,4294967296,4294967296],"data":[]}]}"#,
                V1Error::OutputTooLarge("a".to_owned()),
            ),
            (
                r#"{"outputs":[{"name":"a","shape":[1000000000,0],"data":[]}]}"#,
                V1Error::OutputTooLarge("a".to_owned()),
            ),
            (
                &format!(
                    r#"{{"outputs":[{{"name":"a","shape":[{}1],"data":[1]}}]}}"#,
                    "1,".repeat(MAX_DEPTH)
                ),
                V1Error::OutputTooLarge("a".to_owned()),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(&response(body).unwrap_err(), want, "{body}");
        }
        for body in [
            "",
            "not json",
            "{}",
            "[]",
            r#"{"error":"model not found"}"#,
            r#"{"outputs":{}}"#,
            r#"{"outputs":[{"name":"a","shape":[1]}]}"#,
            r#"{"outputs":[{"name":"a","shape":[1],"parameters":{"binary_data_size":4}}]}"#,
            r#"{"outputs":[{"name":"a","shape":[1],"data":[null]}]}"#,
            r#"{"outputs":[{"name":"a","shape":[1],"data":[{"x":1}]}]}"#,
            r#"{"outputs":[{"name":"a","shape":[1.5],"data":[1]}]}"#,
            r#"{"outputs":[{"name":"a","shape":[1],"data":[1]}]} trailing"#,
        ] {
            assert!(
                matches!(response(body), Err(V1Error::ResponseFormat(_))),
                "{body}: {:?}",
                response(body)
            );
        }
    }

    #[test]
    fn messages_are_one_sentence() {
        let errors = [
            V1Error::TooLarge,
            V1Error::TooDeep,
            V1Error::TooManyValues,
            V1Error::UnsupportedDatatype("BYTES".to_owned()),
            V1Error::NotInstances,
            V1Error::InstanceShape {
                index: 2,
                shape: vec![-1, 4],
            },
            V1Error::InstanceShape {
                index: 0,
                shape: vec![-1],
            },
            V1Error::OutOfRange {
                index: 3,
                datatype: "INT8",
            },
        ];
        let want = [
            "body is larger than 16 MiB",
            "body is nested deeper than 32 levels",
            "body holds more than 4000000 values",
            "datatype BYTES is not supported by V1 translation",
            "expected a JSON object whose only key is \"instances\"",
            "instance 2 must be an array of shape [4], as the input's shape is [-1,4]",
            "instance 0 must be a scalar, as the input's shape is [-1]",
            "instance 3 holds a value out of range for datatype INT8",
        ];
        for (err, want) in errors.iter().zip(want) {
            assert_eq!(err.to_string(), want);
        }
    }

    /// Any JSON value, bounded in depth and size.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z\"\\\\\\[\\]{}]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 96, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn datatype() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
            "FP16", "FP32", "FP64", "BYTES", "BF16",
        ])
    }

    fn input_spec() -> impl Strategy<Value = TensorSpec> {
        (
            datatype(),
            proptest::collection::vec(prop_oneof![Just(-1i64), -2i64..4], 0..4),
        )
            .prop_map(|(datatype, shape)| spec("x", datatype, &shape))
    }

    /// A V1 body or a V2 response, shaped enough to reach past the top-level checks.
    fn body_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            json_value(),
            json_value().prop_map(|v| json!({ "instances": v })),
            proptest::collection::vec(json_value(), 0..4).prop_map(|v| json!({ "instances": v })),
            (
                proptest::collection::vec(-2i64..5, 0..4),
                json_value(),
                "[a-c]"
            )
                .prop_map(|(shape, data, name)| json!({"outputs":[
                    {"name": name, "shape": shape, "data": data}]})),
        ]
    }

    /// A scalar of the kind the datatype takes, as JSON.
    fn scalar_for(datatype: &'static str) -> BoxedStrategy<Value> {
        match datatype {
            "BOOL" => any::<bool>().prop_map(Value::from).boxed(),
            "INT8" => any::<i8>().prop_map(Value::from).boxed(),
            "UINT16" => any::<u16>().prop_map(Value::from).boxed(),
            "INT64" => any::<i64>().prop_map(Value::from).boxed(),
            "UINT64" => any::<u64>().prop_map(Value::from).boxed(),
            _ => (-1e4f64..1e4).prop_map(Value::from).boxed(),
        }
    }

    /// One instance of the given shape, each value drawn from `values` in row-major order.
    fn instance(dims: &[usize], values: &mut impl Iterator<Item = Value>) -> Value {
        match dims.split_first() {
            None => values.next().unwrap(),
            Some((&len, rest)) => Value::Array((0..len).map(|_| instance(rest, values)).collect()),
        }
    }

    /// A model input and a well-formed request for it: (datatype, metadata shape, the
    /// instance dims, instances).
    fn well_formed() -> impl Strategy<Value = (&'static str, Vec<i64>, Vec<usize>, Vec<Value>)> {
        (
            proptest::sample::select(vec!["BOOL", "INT8", "UINT16", "INT64", "UINT64", "FP32"]),
            proptest::collection::vec((0usize..4, any::<bool>()), 0..4),
            1usize..5,
            any::<bool>(),
        )
            .prop_flat_map(|(datatype, dims, n, fixed_batch)| {
                let count = n * dims.iter().map(|(d, _)| d).product::<usize>();
                (
                    Just((datatype, dims, n, fixed_batch)),
                    proptest::collection::vec(scalar_for(datatype), count),
                )
            })
            .prop_map(|((datatype, dims, n, fixed_batch), values)| {
                let mut shape = vec![if fixed_batch { n as i64 } else { -1 }];
                shape.extend(
                    dims.iter()
                        .map(|&(d, variable)| if variable { -1 } else { d as i64 }),
                );
                let dims: Vec<usize> = dims.iter().map(|&(d, _)| d).collect();
                let mut values = values.into_iter();
                let instances = (0..n).map(|_| instance(&dims, &mut values)).collect();
                (datatype, shape, dims, instances)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_bytes(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            input in input_spec(),
        ) {
            let _ = v1_request_to_v2(&body, &[input]);
            let _ = v2_response_to_v1(&body);
        }

        #[test]
        fn never_panics_on_json(value in body_value(), input in input_spec()) {
            let body = serde_json::to_vec(&value).unwrap();
            if let Ok(out) = v1_request_to_v2(&body, std::slice::from_ref(&input)) {
                let out: Value = serde_json::from_slice(&out).unwrap();
                prop_assert_eq!(&out["inputs"][0]["name"], "x");
            }
            if let Ok(out) = v2_response_to_v1(&body) {
                let out: Value = serde_json::from_slice(&out).unwrap();
                prop_assert!(out["predictions"].is_array());
            }
            for err in [
                v1_request_to_v2(&body, &[input]).err(),
                v2_response_to_v1(&body).err(),
            ].into_iter().flatten() {
                prop_assert!(!err.to_string().is_empty());
            }
        }

        #[test]
        fn well_formed_batches_translate((datatype, shape, dims, instances) in well_formed()) {
            let n = instances.len();
            let body = serde_json::to_vec(&json!({ "instances": instances })).unwrap();
            let out = v1_request_to_v2(&body, &[spec("x", datatype, &shape)]).unwrap();
            let out: Value = serde_json::from_slice(&out).unwrap();
            let input = &out["inputs"][0];
            let mut want_shape = vec![n];
            want_shape.extend(&dims);
            let data_len = input["data"].as_array().unwrap().len();
            prop_assert_eq!(data_len, n * dims.iter().product::<usize>());
            prop_assert_eq!(&input["datatype"], datatype);
            // A variable dimension below an empty one is unknown and written as 0.
            if data_len > 0 {
                prop_assert_eq!(&input["shape"], &json!(want_shape));
            }

            // Back through the response direction, the instances come out as predictions.
            let response = json!({"outputs": [{
                "name": "y", "datatype": datatype, "shape": input["shape"], "data": input["data"],
            }]});
            let back = v2_response_to_v1(response.to_string().as_bytes()).unwrap();
            let back: Value = serde_json::from_slice(&back).unwrap();
            // (serde_json's default float parsing may move the last bit, so floats are left
            // to the length check.)
            if data_len > 0 && !datatype.starts_with("FP") {
                prop_assert_eq!(&back, &json!({ "predictions": instances }));
            }
            prop_assert_eq!(back["predictions"].as_array().unwrap().len(), n);
        }
    }
}
