//! KServe V1 <-> Open Inference Protocol V2 (JSON) translation, so V1 clients
//! (`POST /v1/models/{name}:predict`) can call Triton, which only speaks V2. A V1 request
//! `{"instances": [...]}` becomes a V2 request for the model's single input, and a V2
//! response becomes `{"predictions": [...]}`. Plain Rust with no host calls; every input is
//! bounded ([`MAX_BODY_BYTES`], [`MAX_DEPTH`], [`MAX_VALUES`]) and no input can panic.
//!
//! The instances make the input tensor in one of two layouts (see [`v1_request_to_v2`]):
//! as rows of its first dimension (the batch, for a model that batches), or, for a single
//! instance that has the input's whole shape (a model without a batch dimension), as the
//! tensor itself. The V2 metadata cannot tell a batch dimension from a variable first
//! dimension (both are -1), so the layout is read from the instances' nesting. The
//! response is translated without the request at hand: a whole-tensor request carries the
//! V2 `id` [`WHOLE_TENSOR_ID`], which the server echoes in its response (as V2 requires),
//! and that response becomes a single prediction.
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

/// The V2 request `id` of a translated request whose only instance was the whole input
/// tensor. V2 servers echo a request's `id` in the response, so [`v2_response_to_v1`]
/// knows to answer one prediction; a V1 body cannot set `id` itself.
pub const WHOLE_TENSOR_ID: &str = "mm-v1-whole-tensor";

/// Why a body could not be translated. `Display` is one sentence for the client. Every
/// error of [`v1_request_to_v2`] is the client's (400); an error of [`v2_response_to_v1`]
/// means the model server answered something that is not a translatable V2 response (502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V1Error {
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body is larger than {} MiB", MAX_BODY_BYTES >> 20)]
    TooLarge,
    /// The body nests arrays or objects deeper than [`MAX_DEPTH`].
    #[error("body is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The request has more than [`MAX_VALUES`] scalars, or the response more than
    /// [`MAX_VALUES`] JSON values.
    #[error("body holds more than {MAX_VALUES} values")]
    TooManyValues,
    /// The model does not have exactly one input (V1 cannot name inputs); holds how many
    /// it has.
    #[error("KServe V1 requests need a model with exactly one input; this model has {0}")]
    InputCount(usize),
    /// The input's datatype has no V1 translation (`BYTES`, `BF16`, anything unknown).
    #[error("datatype {0} is not supported by V1 translation")]
    UnsupportedDatatype(String),
    /// The input's metadata shape has a dimension below -1, or more dimensions than a
    /// body may nest (`MAX_DEPTH - 2`).
    #[error(
        "input {name} has shape {} in the model metadata, which V1 translation cannot use",
        Shape(shape)
    )]
    InputShape { name: String, shape: Vec<i64> },
    /// The request body is not valid JSON (syntax, trailing bytes, number out of range).
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    /// The top level is not an object whose only key is `instances`.
    #[error("expected a JSON object whose only key is \"instances\"")]
    NotInstances,
    /// `instances` is not a non-empty array.
    #[error("\"instances\" must be a non-empty array")]
    InstancesNotArray,
    /// The input has a fixed batch size and the request has another number of instances.
    #[error("the model takes exactly {expected} instances per request; the request has {found}")]
    BatchSize { expected: usize, found: usize },
    /// An instance is nested deeper or shallower than a row of the input (its shape
    /// without the first dimension) and, for instance 0, than the whole input; or it
    /// holds an object.
    #[error("instance {index} must be {}", InstanceShapeWanted { index: *index, shape })]
    InstanceShape { index: usize, shape: Vec<i64> },
    /// Instance 0 has the input's whole shape, so it is the whole tensor and no other
    /// instance may follow it.
    #[error(
        "instance 0 has the input's whole shape {}, so it must be the only instance \
         (several instances are rows of the input's first dimension)",
        Shape(shape)
    )]
    WholeNotAlone { shape: Vec<i64> },
    /// A dimension of an instance differs from the input's fixed size for it.
    #[error(
        "instance {index} has length {found} in dimension {dim} where the input takes {expected}"
    )]
    DimLength {
        index: usize,
        dim: usize,
        expected: usize,
        found: usize,
    },
    /// A variable (-1) dimension of an instance differs from the length earlier instances
    /// gave it.
    #[error("instance {index} has length {found} in dimension {dim} where earlier instances have {expected}")]
    DimMismatch {
        index: usize,
        dim: usize,
        expected: usize,
        found: usize,
    },
    /// Arrays of one instance in the same dimension have different lengths.
    #[error("instance {index} is ragged: its arrays in dimension {dim} differ in length")]
    Ragged { index: usize, dim: usize },
    /// An instance holds a value of the wrong JSON kind for the datatype (a string, a
    /// null, a float for an integer type, ...).
    #[error("instance {index} holds a value that is not {expected}, as datatype {datatype} needs")]
    WrongKind {
        index: usize,
        datatype: &'static str,
        expected: &'static str,
    },
    /// An instance holds a number outside the datatype's range.
    #[error("instance {index} holds a value out of range for datatype {datatype}")]
    OutOfRange {
        index: usize,
        datatype: &'static str,
    },
    /// The response is not a V2 inference response (not JSON, no `outputs`, an output
    /// without `name`, `shape` or JSON `data`, a null or object in `data`, ...).
    #[error("the response is not a V2 inference response: {0}")]
    ResponseFormat(String),
    /// The response has an empty `outputs` array.
    #[error("the response has no outputs")]
    NoOutputs,
    /// Two outputs of the response have the same name.
    #[error("the response has two outputs named {0}")]
    DuplicateOutput(String),
    /// An output's shape is empty (no batch dimension).
    #[error("output {0} has no batch dimension to split into predictions")]
    OutputNoBatch(String),
    /// An output's shape has a negative dimension or does not hold exactly its data.
    #[error(
        "output {name} holds {values} values, which does not match its shape {}",
        Shape(shape)
    )]
    OutputShape {
        name: String,
        shape: Vec<i64>,
        values: usize,
    },
    /// An output has more than [`MAX_DEPTH`] dimensions or would need too many arrays.
    #[error("output {0} has a shape too large to translate to V1")]
    OutputTooLarge(String),
    /// Two outputs have different batch (first) dimensions.
    #[error(
        "outputs {first} and {other} have different batch sizes ({first_batch} and {other_batch})"
    )]
    BatchMismatch {
        first: String,
        first_batch: usize,
        other: String,
        other_batch: usize,
    },
}

/// What an instance should have been, for [`V1Error::InstanceShape`]: a row of the input,
/// or, for instance 0, the whole input as the only instance.
struct InstanceShapeWanted<'a> {
    index: usize,
    shape: &'a [i64],
}

impl fmt::Display for InstanceShapeWanted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (index, shape) = (self.index, self.shape);
        match shape.get(1..) {
            Some(inner) if !inner.is_empty() => write!(f, "an array of shape {}", Shape(inner))?,
            _ => f.write_str("a scalar")?,
        }
        if index == 0 && !shape.is_empty() {
            write!(
                f,
                " (a row of the input, whose shape is {0}) or, as the only instance, \
                 an array of shape {0}",
                Shape(shape)
            )
        } else {
            write!(f, ", as the input's shape is {}", Shape(shape))
        }
    }
}

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
/// The model must have exactly one input, of metadata shape `S`. The instances make the
/// tensor in one of two layouts, told apart by how deep instance 0 nests its values:
/// - **Rows** (every batching model, and what V1 means by instances): each instance is
///   one row of `S`'s first dimension, of shape `S[1..]` (a scalar when `S` has rank 1).
///   N instances make the tensor `[N, S[1..]]`; a fixed first dimension (a model without
///   a batch dimension) takes exactly that many instances.
/// - **Whole** (a model without a batch dimension): a single instance of the shape `S`
///   itself is the whole tensor, e.g. `{"instances": [[1,2,3,4]]}` for `S = [4]`. It must
///   be the only instance, and the request carries the V2 `id` [`WHOLE_TENSOR_ID`].
///
/// A -1 in `S` takes any length that is the same throughout the request (every instance,
/// every array of that dimension). For a fixed first dimension both layouts give the same
/// tensor. An instance 0 that holds no value at all (only empty arrays) reads as a row.
/// BOOL takes JSON booleans, INT*/UINT* JSON integers in range, FP16/FP32/FP64 JSON
/// numbers (written as floats, e.g. `1.0`). The answer is `{["id",] "inputs":[{"name",
/// "shape","datatype","data":[row-major values]}]}`.
///
/// Errors: a body over [`MAX_BODY_BYTES`], nested deeper than [`MAX_DEPTH`] or with more
/// than [`MAX_VALUES`] scalars; a model without exactly one input or with an unsupported
/// datatype or unusable shape; anything that is not `{"instances": [non-empty array]}`;
/// an instance that fits neither layout, a value of the wrong kind or out of range (the
/// message names the instance); an instance after a whole-tensor one. Never panics.
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
    let (batch, readings) = readings(input)?;
    // Anything but an object (an array, a number, an empty body) gets the message that
    // says what is expected rather than a parser error.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(V1Error::NotInstances);
    }
    scan(body)?;

    let mut translate = Translate {
        kind,
        shape: &input.shape,
        readings,
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
    // The instances are read: one reading is left (`Instances` settles it).
    let Some(reading) = translate.readings.first() else {
        return Err(V1Error::NotInstances);
    };
    let mut shape = Vec::with_capacity(reading.dims.len() + 1);
    let id = match reading.layout {
        Layout::Rows => {
            if let Some(expected) = batch.filter(|&expected| expected != count) {
                return Err(V1Error::BatchSize {
                    expected,
                    found: count,
                });
            }
            shape.push(to_i64(count));
            None
        }
        Layout::Whole => Some(WHOLE_TENSOR_ID),
    };
    shape.extend(reading.dims.iter().map(|dim| to_i64(dim.len())));
    let request = V2Request {
        id,
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
/// the same batch size. The answer to a whole-tensor request (its `id` is
/// [`WHOLE_TENSOR_ID`]) is a single prediction, the whole output (or `{name: output}` per
/// output), whatever the outputs' shapes (a rank-0 output gives a scalar). `data` may be
/// flat or nested (both are V2); its numbers, booleans and strings are kept as they come.
///
/// Errors: a body over [`MAX_BODY_BYTES`], nested deeper than [`MAX_DEPTH`] or with more
/// than [`MAX_VALUES`] JSON values; anything that is not a V2 response with JSON data; no
/// outputs, two outputs with one name, an output whose shape has a negative dimension,
/// more than [`MAX_DEPTH`] dimensions or does not match its data; in rows, an empty shape
/// or batch sizes that differ. Never panics.
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
    let whole = response.id.as_ref().and_then(Value::as_str) == Some(WHOLE_TENSOR_ID);
    let all_dims = check_outputs(&response.outputs, whole)?;
    let rows = match all_dims.first() {
        _ if whole => 1,
        Some(dims) => dims.first().copied().unwrap_or(0),
        None => 0,
    };

    // Every check is done: what remains cannot fail, so the data can be moved out. In
    // rows, each prediction takes one row of every output; whole, the one prediction
    // takes all of them.
    let mut columns: Vec<(String, &[usize], std::vec::IntoIter<Value>)> = response
        .outputs
        .into_iter()
        .zip(&all_dims)
        .map(|(output, dims)| {
            let row_dims = if whole {
                dims.as_slice()
            } else {
                dims.get(1..).unwrap_or_default()
            };
            (output.name, row_dims, output.data.0.into_iter())
        })
        .collect();
    let predictions: Vec<Value> = match columns.as_mut_slice() {
        [(_, dims, values)] => (0..rows).map(|_| nest(values, dims)).collect(),
        _ => (0..rows)
            .map(|_| {
                let mut row = Map::new();
                for (name, dims, values) in columns.iter_mut() {
                    row.insert(name.clone(), nest(values, dims));
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

/// Checks every output's name and shape and returns the shapes as sizes; in rows
/// (`whole` false), also that every output has a first dimension and all the same one.
fn check_outputs(outputs: &[V2Output], whole: bool) -> Result<Vec<Vec<usize>>, V1Error> {
    let mut names = std::collections::BTreeSet::new();
    let mut all_dims = Vec::with_capacity(outputs.len());
    let mut budget = 2 * MAX_VALUES;
    let mut batch: Option<(usize, &str)> = None;
    for output in outputs {
        if !names.insert(output.name.as_str()) {
            return Err(V1Error::DuplicateOutput(output.name.clone()));
        }
        if output.shape.is_empty() && !whole {
            return Err(V1Error::OutputNoBatch(output.name.clone()));
        }
        let dims = output_dims(output, &mut budget)?;
        let rows = dims.first().copied().unwrap_or(0);
        match batch {
            _ if whole => {}
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
    Ok(all_dims)
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

/// The input's fixed first dimension (`None` for -1) and the readings of the instances
/// to try: rows (when the input has a first dimension) and the whole tensor.
fn readings(input: &TensorSpec) -> Result<(Option<usize>, Vec<Reading>), V1Error> {
    let bad = || V1Error::InputShape {
        name: input.name.clone(),
        shape: input.shape.clone(),
    };
    // The body's object and `instances` array take two levels of the nesting allowed.
    if input.shape.len() + 2 > MAX_DEPTH {
        return Err(bad());
    }
    let whole = input
        .shape
        .iter()
        .map(|&dim| match dim {
            -1 => Ok(Dim::Variable(None)),
            n => usize::try_from(n).map(Dim::Fixed).map_err(|_| bad()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut readings = Vec::with_capacity(2);
    let batch = match whole.split_first() {
        Some((first, rest)) => {
            readings.push(Reading::new(Layout::Rows, rest.to_vec()));
            match first {
                Dim::Fixed(n) => Some(*n),
                Dim::Variable(_) => None,
            }
        }
        None => None,
    };
    readings.push(Reading::new(Layout::Whole, whole));
    Ok((batch, readings))
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

/// How the instances make up the input tensor (see [`v1_request_to_v2`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Each instance is a row of the input's first dimension.
    Rows,
    /// The only instance is the whole tensor.
    Whole,
}

/// One way of reading the instances, and what it has learnt of their dimensions.
#[derive(Debug)]
struct Reading {
    layout: Layout,
    /// The shape of one instance under this layout.
    dims: Vec<Dim>,
    /// Why the instances read so far do not fit this layout.
    error: Option<V1Error>,
}

impl Reading {
    fn new(layout: Layout, dims: Vec<Dim>) -> Reading {
        Reading {
            layout,
            dims,
            error: None,
        }
    }

    /// The dimension of the input's shape that an instance's depth 0 is.
    fn first_dim(&self) -> usize {
        match self.layout {
            Layout::Rows => 1,
            Layout::Whole => 0,
        }
    }

    /// Checks the length of an array of instance `index` met at `depth` against what the
    /// shape says or, for a -1 dimension, against the first array met there.
    fn array_len(&mut self, index: usize, depth: usize, found: usize) -> Result<(), V1Error> {
        let dim = depth + self.first_dim();
        match self.dims.get_mut(depth) {
            // Arrays deeper than the shape were refused on the way in.
            None => Ok(()),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'static str>,
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
    /// The layouts the instances may still have (rows first); at least one has no error.
    /// Instance 0 decides, and from instance 1 on only its layout is left.
    readings: Vec<Reading>,
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

    /// Applies `check` to every layout still possible and keeps what it refuses; stops
    /// the parse once no layout is left.
    fn narrow<E: de::Error>(
        &mut self,
        check: impl Fn(&mut Reading) -> Result<(), V1Error>,
    ) -> Result<(), E> {
        for reading in &mut self.readings {
            if reading.error.is_none() {
                reading.error = check(reading).err();
            }
        }
        if self.readings.iter().any(|r| r.error.is_none()) {
            return Ok(());
        }
        let err = self.best_error();
        Err(self.fail(err))
    }

    /// The error to report when no layout fits: the rows reading's, unless it only says
    /// the nesting is wrong and the whole-tensor reading got further.
    fn best_error(&mut self) -> V1Error {
        let mut errors = self.readings.iter_mut().filter_map(|r| r.error.take());
        match (errors.next(), errors.next()) {
            (Some(V1Error::InstanceShape { .. }), Some(whole))
                if !matches!(whole, V1Error::InstanceShape { .. }) =>
            {
                whole
            }
            (Some(err), _) => err,
            (None, _) => self.wrong_shape(),
        }
    }

    /// Instance 0 has been read: keep the first layout that fits it (rows, when no value
    /// told them apart).
    fn settle(&mut self) {
        if let Some(fits) = self.readings.iter().position(|r| r.error.is_none()) {
            self.readings.swap(0, fits);
            self.readings.truncate(1);
        }
    }

    /// Whether the layout is settled as the whole tensor.
    fn is_whole(&self) -> bool {
        matches!(self.readings.as_slice(), [r] if r.layout == Layout::Whole)
    }

    /// Checks that a scalar or another non-array value at `depth` is where the shape has
    /// its values.
    fn at_leaf<E: de::Error>(&mut self, depth: usize) -> Result<(), E> {
        let index = self.instance;
        let shape = self.shape;
        self.narrow(|r| {
            if depth == r.dims.len() {
                Ok(())
            } else {
                Err(V1Error::InstanceShape {
                    index,
                    shape: shape.to_vec(),
                })
            }
        })
    }

    /// Checks that an array may start at `depth`.
    fn enter_array<E: de::Error>(&mut self, depth: usize) -> Result<(), E> {
        let index = self.instance;
        let shape = self.shape;
        self.narrow(|r| {
            if depth < r.dims.len() {
                Ok(())
            } else {
                Err(V1Error::InstanceShape {
                    index,
                    shape: shape.to_vec(),
                })
            }
        })
    }

    /// Checks the length of an array that ended at `depth`.
    fn leave_array<E: de::Error>(&mut self, depth: usize, len: usize) -> Result<(), E> {
        let index = self.instance;
        self.narrow(|r| r.array_len(index, depth, len))
    }

    /// Appends one scalar met at `depth` (0 is the instance itself).
    fn scalar<E: de::Error>(&mut self, depth: usize, value: Scalar) -> Result<(), E> {
        self.at_leaf(depth)?;
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
            if count == 0 {
                translate.settle();
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
        if self.depth == 0 && self.translate.instance > 0 && self.translate.is_whole() {
            let shape = self.translate.shape.to_vec();
            return Err(self.translate.fail(V1Error::WholeNotAlone { shape }));
        }
        deserializer.deserialize_any(self)
    }
}

impl Element<'_, '_> {
    /// A string, null or object: not an array, and not a value of any supported datatype.
    fn other<E: de::Error>(self) -> Result<(), E> {
        self.translate.at_leaf(self.depth)?;
        let err = self.translate.wrong_kind();
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
        translate.enter_array(self.depth)?;
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
        translate.leave_array(self.depth, len)
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
    /// The request's `id`, echoed: [`WHOLE_TENSOR_ID`] marks a whole-tensor request.
    #[serde(default)]
    id: Option<Value>,
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

    /// The V2 request of a whole-tensor V1 request.
    fn whole(name: &str, datatype: &str, shape: Value, data: Value) -> Result<Value, V1Error> {
        Ok(json!({"id": WHOLE_TENSOR_ID,
                  "inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}))
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
            // A model without batching: the instances are rows of its first dimension,
            // as many as it says...
            (
                r#"{"instances":[1,2,3,4]}"#,
                spec("v", "FP64", &[4]),
                v2("v", "FP64", json!([4]), json!([1.0, 2.0, 3.0, 4.0])),
            ),
            // ... or the only instance is the whole tensor.
            (
                r#"{"instances":[[1,2,3,4]]}"#,
                spec("v", "FP64", &[4]),
                whole("v", "FP64", json!([4]), json!([1.0, 2.0, 3.0, 4.0])),
            ),
            (
                r#"{"instances":[[[1,2,3],[4,5,6]]]}"#,
                spec("m", "INT32", &[2, -1]),
                whole("m", "INT32", json!([2, 3]), json!([1, 2, 3, 4, 5, 6])),
            ),
            (
                r#"{"instances":[[1,2,3],[4,5,6]]}"#,
                spec("m", "INT32", &[2, -1]),
                v2("m", "INT32", json!([2, 3]), json!([1, 2, 3, 4, 5, 6])),
            ),
            // A first dimension of 1: one row, or the whole tensor, make the same tensor.
            (
                r#"{"instances":[[1,2,3,4]]}"#,
                spec("x", "FP32", &[1, 4]),
                v2("x", "FP32", json!([1, 4]), json!([1.0, 2.0, 3.0, 4.0])),
            ),
            (
                r#"{"instances":[[[1,2,3,4]]]}"#,
                spec("x", "FP32", &[1, 4]),
                whole("x", "FP32", json!([1, 4]), json!([1.0, 2.0, 3.0, 4.0])),
            ),
            // A -1 first dimension (a batch, or a variable dimension of a model without
            // one): a single instance of the whole shape is the whole tensor too.
            (
                r#"{"instances":[[[1,2],[3,4],[5,6]]]}"#,
                spec("x", "UINT8", &[-1, 2]),
                whole("x", "UINT8", json!([3, 2]), json!([1, 2, 3, 4, 5, 6])),
            ),
            // A rank-0 input takes one scalar instance.
            (
                r#"{"instances":[5]}"#,
                spec("s", "INT32", &[]),
                whole("s", "INT32", json!([]), json!([5])),
            ),
            // No value tells the layouts apart: rows, unless only the whole tensor fits.
            (
                r#"{"instances":[[]]}"#,
                spec("e", "FP32", &[-1, -1]),
                v2("e", "FP32", json!([1, 0]), json!([])),
            ),
            (
                r#"{"instances":[[]]}"#,
                spec("e", "FP32", &[-1]),
                whole("e", "FP32", json!([0]), json!([])),
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
            (
                r#"{"instances":[[1,2,3,4],[[1,2,3,4]]]}"#,
                x.clone(),
                shape(1),
            ),
            (r#"{"instances":[[[[1,2,3,4]]]]}"#, x.clone(), shape(0)),
            (r#"{"instances":[[1,[2,3,4]]]}"#, x.clone(), shape(0)),
            // Deeper than a row: read as the whole tensor, whose rows have 4 values.
            (
                r#"{"instances":[[[1],[2],[3],[4]]]}"#,
                x.clone(),
                V1Error::DimLength {
                    index: 0,
                    dim: 1,
                    expected: 4,
                    found: 1,
                },
            ),
            (
                r#"{"instances":[[[1,2,3,4]],[[1,2,3,4]]]}"#,
                x.clone(),
                V1Error::WholeNotAlone { shape: vec![-1, 4] },
            ),
            // A model without a batch dimension, input [4].
            (
                r#"{"instances":[[1,2,3,4],[5,6,7,8]]}"#,
                spec("v", "FP32", &[4]),
                V1Error::WholeNotAlone { shape: vec![4] },
            ),
            (
                r#"{"instances":[[1,2,3,4],5]}"#,
                spec("v", "FP32", &[4]),
                V1Error::WholeNotAlone { shape: vec![4] },
            ),
            (
                r#"{"instances":[[1,2,3]]}"#,
                spec("v", "FP32", &[4]),
                V1Error::DimLength {
                    index: 0,
                    dim: 0,
                    expected: 4,
                    found: 3,
                },
            ),
            (
                r#"{"instances":[1,2,3]}"#,
                spec("v", "FP32", &[4]),
                V1Error::BatchSize {
                    expected: 4,
                    found: 3,
                },
            ),
            (
                r#"{"instances":[1,[2]]}"#,
                spec("v", "FP32", &[4]),
                V1Error::InstanceShape {
                    index: 1,
                    shape: vec![4],
                },
            ),
            (
                r#"{"instances":[[[1,2],[3]]]}"#,
                spec("v", "FP32", &[-1, -1]),
                V1Error::Ragged { index: 0, dim: 1 },
            ),
            (
                r#"{"instances":[5,6]}"#,
                spec("s", "INT32", &[]),
                V1Error::WholeNotAlone { shape: vec![] },
            ),
            (
                r#"{"instances":[[5]]}"#,
                spec("s", "INT32", &[]),
                V1Error::InstanceShape {
                    index: 0,
                    shape: vec![],
                },
            ),
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
                spec("s", "FP32", &[1; MAX_DEPTH - 1]),
                V1Error::InputShape {
                    name: "s".to_owned(),
                    shape: vec![1; MAX_DEPTH - 1],
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
    fn translates_whole_tensor_responses() {
        let id = WHOLE_TENSOR_ID;
        let cases: &[(Value, Value)] = &[
            // A model without a batch dimension: its output is the one prediction.
            (
                json!({"id":id,"outputs":[{"name":"y","datatype":"FP32","shape":[4],"data":[1,3,6,10]}]}),
                json!({"predictions":[[1,3,6,10]]}),
            ),
            (
                json!({"id":id,"outputs":[{"name":"y","datatype":"INT32","shape":[2,2],"data":[1,2,3,4]}]}),
                json!({"predictions":[[[1,2],[3,4]]]}),
            ),
            // Rank 0: a scalar; and an output with no data.
            (
                json!({"id":id,"outputs":[{"name":"s","datatype":"FP64","shape":[],"data":[5]}]}),
                json!({"predictions":[5]}),
            ),
            (
                json!({"id":id,"outputs":[{"name":"e","datatype":"FP32","shape":[0,3],"data":[]}]}),
                json!({"predictions":[[]]}),
            ),
            // Several outputs need not share a first dimension.
            (
                json!({"id":id,"outputs":[
                    {"name":"a","datatype":"FP32","shape":[2],"data":[1,2]},
                    {"name":"b","datatype":"BOOL","shape":[3,1],"data":[true,false,true]}]}),
                json!({"predictions":[{"a":[1,2],"b":[[true],[false],[true]]}]}),
            ),
            // Any other id is a rows response.
            (
                json!({"id":"mine","outputs":[{"name":"y","datatype":"FP32","shape":[4],"data":[1,3,6,10]}]}),
                json!({"predictions":[1,3,6,10]}),
            ),
            (
                json!({"id":7,"outputs":[{"name":"y","datatype":"FP32","shape":[2],"data":[1,3]}]}),
                json!({"predictions":[1,3]}),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(response(&body.to_string()).as_ref(), Ok(want), "{body}");
        }
        let bad = json!({"id":id,"outputs":[{"name":"y","shape":[2,2],"data":[1,2,3]}]});
        assert_eq!(
            response(&bad.to_string()),
            Err(V1Error::OutputShape {
                name: "y".to_owned(),
                shape: vec![2, 2],
                values: 3,
            })
        );
        let bad = json!({"id":id,"outputs":[{"name":"y","shape":[],"data":[]}]});
        assert!(matches!(
            response(&bad.to_string()),
            Err(V1Error::OutputShape { .. })
        ));
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
                index: 1,
                shape: vec![-1],
            },
            V1Error::InstanceShape {
                index: 0,
                shape: vec![-1, 4],
            },
            V1Error::InstanceShape {
                index: 0,
                shape: vec![4],
            },
            V1Error::InstanceShape {
                index: 0,
                shape: vec![],
            },
            V1Error::WholeNotAlone { shape: vec![4] },
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
            "instance 1 must be a scalar, as the input's shape is [-1]",
            "instance 0 must be an array of shape [4] (a row of the input, whose shape is \
             [-1,4]) or, as the only instance, an array of shape [-1,4]",
            "instance 0 must be a scalar (a row of the input, whose shape is [4]) or, as the \
             only instance, an array of shape [4]",
            "instance 0 must be a scalar, as the input's shape is []",
            "instance 0 has the input's whole shape [4], so it must be the only instance \
             (several instances are rows of the input's first dimension)",
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

    /// An input shape (each dimension fixed or -1) with the sizes of one whole tensor
    /// for it, a datatype and the tensor as one instance: (datatype, shape, dims, instance).
    fn whole_tensor() -> impl Strategy<Value = (&'static str, Vec<i64>, Vec<usize>, Value)> {
        (
            proptest::sample::select(vec!["BOOL", "INT8", "UINT16", "INT64", "UINT64", "FP32"]),
            proptest::collection::vec((1usize..4, any::<bool>()), 0..4),
        )
            .prop_flat_map(|(datatype, dims)| {
                let count = dims.iter().map(|(d, _)| d).product::<usize>();
                (
                    Just((datatype, dims)),
                    proptest::collection::vec(scalar_for(datatype), count),
                )
            })
            .prop_map(|((datatype, dims), values)| {
                let shape = dims
                    .iter()
                    .map(|&(d, variable)| if variable { -1 } else { d as i64 })
                    .collect();
                let dims: Vec<usize> = dims.iter().map(|&(d, _)| d).collect();
                let tensor = instance(&dims, &mut values.into_iter());
                (datatype, shape, dims, tensor)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_single_whole_instance_is_the_tensor(
            (datatype, shape, dims, tensor) in whole_tensor(),
        ) {
            let body = serde_json::to_vec(&json!({ "instances": [tensor] })).unwrap();
            let out = v1_request_to_v2(&body, &[spec("x", datatype, &shape)]).unwrap();
            let out: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(&out["id"], WHOLE_TENSOR_ID);
            let input = &out["inputs"][0];
            prop_assert_eq!(&input["shape"], &json!(dims));
            prop_assert_eq!(
                input["data"].as_array().unwrap().len(),
                dims.iter().product::<usize>()
            );

            // The server echoes the id: the output comes back as one prediction.
            let response = json!({"id": out["id"], "outputs": [{
                "name": "y", "datatype": datatype, "shape": input["shape"], "data": input["data"],
            }]});
            let back = v2_response_to_v1(response.to_string().as_bytes()).unwrap();
            let back: Value = serde_json::from_slice(&back).unwrap();
            prop_assert_eq!(back["predictions"].as_array().unwrap().len(), 1);
            if !datatype.starts_with("FP") {
                prop_assert_eq!(&back, &json!({ "predictions": [tensor] }));
            }

            // A second instance, whatever it is, is refused.
            let body = serde_json::to_vec(&json!({ "instances": [tensor, tensor] })).unwrap();
            prop_assert_eq!(
                v1_request_to_v2(&body, &[spec("x", datatype, &shape)]),
                Err(V1Error::WholeNotAlone { shape: shape.clone() })
            );
        }

        #[test]
        fn rows_and_whole_agree_on_a_fixed_first_dimension(
            (datatype, shape, _dims, tensor) in whole_tensor(),
        ) {
            let Some(rows) = tensor.as_array().filter(|rows| !rows.is_empty()) else {
                return Ok(());
            };
            let mut shape = shape;
            shape[0] = rows.len() as i64;
            let input = [spec("x", datatype, &shape)];
            let as_rows = json!({ "instances": rows }).to_string();
            let as_whole = json!({ "instances": [tensor] }).to_string();
            let as_rows: Value =
                serde_json::from_slice(&v1_request_to_v2(as_rows.as_bytes(), &input).unwrap())
                    .unwrap();
            let as_whole: Value =
                serde_json::from_slice(&v1_request_to_v2(as_whole.as_bytes(), &input).unwrap())
                    .unwrap();
            prop_assert_eq!(&as_rows["inputs"], &as_whole["inputs"]);
            prop_assert!(as_rows.get("id").is_none());
        }

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
            // Rows, as for any batching model: no whole-tensor id.
            prop_assert!(out.get("id").is_none(), "{}", out);
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
