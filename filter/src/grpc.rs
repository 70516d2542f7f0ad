//! Routing of KServe V2 gRPC (`inference.GRPCInferenceService`) by model: which methods
//! the gateway forwards and where (any replica, or one that has the model), where the
//! model name is (a header, else field 1 of the first request message, read from the
//! start of the body without a protobuf library), and how a gateway error becomes a gRPC
//! status. Methods that change a replica (repository load/unload, shared memory, trace and
//! log settings) are never forwarded. Plain Rust; no input can panic.

use std::fmt;

use mm_wire::{validate_model_name, NameError, MAX_MODEL_NAME_LEN};

/// Path prefix of every method of the service.
pub const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";

/// Headers that may name the model, in order of precedence: ModelMesh's first (so its
/// clients work unchanged), then the gateway's own.
pub const MODEL_HEADERS: [&str; 3] = ["mm-vmodel-id", "mm-model-id", "x-model-name"];

/// How far into a request message the model name is looked for: the field that holds it
/// must start within this many bytes of the message, so the filter never buffers more.
pub const MAX_SCAN: usize = 64 * 1024;

/// Longest method name kept in [`GrpcRoute::Refused`] for an unknown method.
const MAX_METHOD_NAME_LEN: usize = 64;

/// The methods of `inference.GRPCInferenceService` (Triton's `grpc_service.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcMethod {
    ServerLive,
    ServerReady,
    ModelReady,
    ServerMetadata,
    ModelMetadata,
    ModelInfer,
    ModelStreamInfer,
    ModelConfig,
    ModelStatistics,
    RepositoryIndex,
    RepositoryModelLoad,
    RepositoryModelUnload,
    SystemSharedMemoryStatus,
    SystemSharedMemoryRegister,
    SystemSharedMemoryUnregister,
    CudaSharedMemoryStatus,
    CudaSharedMemoryRegister,
    CudaSharedMemoryUnregister,
    TraceSetting,
    LogSettings,
}

impl GrpcMethod {
    /// Every method of the service.
    pub const ALL: [GrpcMethod; 20] = [
        GrpcMethod::ServerLive,
        GrpcMethod::ServerReady,
        GrpcMethod::ModelReady,
        GrpcMethod::ServerMetadata,
        GrpcMethod::ModelMetadata,
        GrpcMethod::ModelInfer,
        GrpcMethod::ModelStreamInfer,
        GrpcMethod::ModelConfig,
        GrpcMethod::ModelStatistics,
        GrpcMethod::RepositoryIndex,
        GrpcMethod::RepositoryModelLoad,
        GrpcMethod::RepositoryModelUnload,
        GrpcMethod::SystemSharedMemoryStatus,
        GrpcMethod::SystemSharedMemoryRegister,
        GrpcMethod::SystemSharedMemoryUnregister,
        GrpcMethod::CudaSharedMemoryStatus,
        GrpcMethod::CudaSharedMemoryRegister,
        GrpcMethod::CudaSharedMemoryUnregister,
        GrpcMethod::TraceSetting,
        GrpcMethod::LogSettings,
    ];

    /// The method's name as it appears in the path.
    pub fn name(self) -> &'static str {
        match self {
            GrpcMethod::ServerLive => "ServerLive",
            GrpcMethod::ServerReady => "ServerReady",
            GrpcMethod::ModelReady => "ModelReady",
            GrpcMethod::ServerMetadata => "ServerMetadata",
            GrpcMethod::ModelMetadata => "ModelMetadata",
            GrpcMethod::ModelInfer => "ModelInfer",
            GrpcMethod::ModelStreamInfer => "ModelStreamInfer",
            GrpcMethod::ModelConfig => "ModelConfig",
            GrpcMethod::ModelStatistics => "ModelStatistics",
            GrpcMethod::RepositoryIndex => "RepositoryIndex",
            GrpcMethod::RepositoryModelLoad => "RepositoryModelLoad",
            GrpcMethod::RepositoryModelUnload => "RepositoryModelUnload",
            GrpcMethod::SystemSharedMemoryStatus => "SystemSharedMemoryStatus",
            GrpcMethod::SystemSharedMemoryRegister => "SystemSharedMemoryRegister",
            GrpcMethod::SystemSharedMemoryUnregister => "SystemSharedMemoryUnregister",
            GrpcMethod::CudaSharedMemoryStatus => "CudaSharedMemoryStatus",
            GrpcMethod::CudaSharedMemoryRegister => "CudaSharedMemoryRegister",
            GrpcMethod::CudaSharedMemoryUnregister => "CudaSharedMemoryUnregister",
            GrpcMethod::TraceSetting => "TraceSetting",
            GrpcMethod::LogSettings => "LogSettings",
        }
    }

    /// The method with this exact (case-sensitive) name.
    pub fn from_name(name: &str) -> Option<GrpcMethod> {
        GrpcMethod::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Where the gateway sends a call of this method.
    pub fn route(self) -> GrpcRoute {
        match self {
            GrpcMethod::ServerLive | GrpcMethod::ServerReady | GrpcMethod::ServerMetadata => {
                GrpcRoute::AnyReplica(self)
            }
            GrpcMethod::ModelReady
            | GrpcMethod::ModelMetadata
            | GrpcMethod::ModelInfer
            | GrpcMethod::ModelStreamInfer
            | GrpcMethod::ModelConfig => GrpcRoute::Model(self),
            // Statistics of an empty model name are every model's; the rest change a
            // replica's state or read the repository.
            GrpcMethod::ModelStatistics
            | GrpcMethod::RepositoryIndex
            | GrpcMethod::RepositoryModelLoad
            | GrpcMethod::RepositoryModelUnload
            | GrpcMethod::SystemSharedMemoryStatus
            | GrpcMethod::SystemSharedMemoryRegister
            | GrpcMethod::SystemSharedMemoryUnregister
            | GrpcMethod::CudaSharedMemoryStatus
            | GrpcMethod::CudaSharedMemoryRegister
            | GrpcMethod::CudaSharedMemoryUnregister
            | GrpcMethod::TraceSetting
            | GrpcMethod::LogSettings => GrpcRoute::Refused(self.name().to_owned()),
        }
    }
}

/// Where a gRPC call of the inference service has to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcRoute {
    /// A server-level method (`ServerLive`, `ServerReady`, `ServerMetadata`): any ready
    /// replica can answer.
    AnyReplica(GrpcMethod),
    /// A per-model method: it must reach a replica that has the model named by a header
    /// ([`model_from_headers`]) or by the request message ([`model_from_message`]).
    Model(GrpcMethod),
    /// A method the gateway never forwards: every other method of the service, and names
    /// it does not know. Holds the method name for the error message (an unknown name is
    /// kept only if it is 1 to 64 ASCII letters, digits or `_`, else it is `unknown`).
    Refused(String),
}

/// Classifies a request `:path`. `None` when it is not a method of
/// `inference.GRPCInferenceService` at all (another service, or not gRPC). Matching is
/// exact and case-sensitive, like gRPC's. Never panics.
pub fn parse_path(path: &[u8]) -> Option<GrpcRoute> {
    let method = path.strip_prefix(SERVICE_PREFIX.as_bytes())?;
    let known = std::str::from_utf8(method)
        .ok()
        .and_then(GrpcMethod::from_name);
    Some(match known {
        Some(method) => method.route(),
        None => GrpcRoute::Refused(printable_method(method)),
    })
}

/// An unknown method name, kept for messages only if it is plainly an identifier.
fn printable_method(method: &[u8]) -> String {
    let plain = (1..=MAX_METHOD_NAME_LEN).contains(&method.len())
        && method
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if plain {
        String::from_utf8_lossy(method).into_owned()
    } else {
        "unknown".to_owned()
    }
}

/// Why the model of a gRPC call could not be told. `Display` is one sentence for the
/// client; every variant is the client's fault (HTTP 400, gRPC `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcError {
    /// A model header is present but its value is not a valid model name.
    InvalidHeader {
        header: &'static str,
        why: NameError,
    },
    /// The message is compressed, so its fields cannot be read without decompressing.
    Compressed,
    /// The gRPC frame's flag byte is neither 0 nor 1.
    BadFrame,
    /// The protobuf message is malformed (truncated or over-long varint, field running
    /// past the message, field number 0, wire type 6 or 7, groups, field 1 not a string).
    Malformed(&'static str),
    /// The complete message has no field 1.
    MissingModel,
    /// Field 1 is not valid UTF-8.
    NotUtf8,
    /// Field 1 is not a valid model name.
    InvalidName(NameError),
    /// The message is longer than [`MAX_SCAN`] and field 1 does not start within it.
    NotInScan,
}

impl GrpcError {
    /// The HTTP status the gateway answers with (see [`grpc_status_for_http`]).
    pub fn status(&self) -> u16 {
        400
    }
}

impl fmt::Display for GrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcError::InvalidHeader { header, why } => {
                write!(f, "invalid model name in header {header}: {why}")
            }
            GrpcError::Compressed => f.write_str("compressed gRPC messages need a model header"),
            GrpcError::BadFrame => f.write_str("invalid gRPC message frame"),
            GrpcError::Malformed(why) => write!(f, "malformed protobuf request: {why}"),
            GrpcError::MissingModel => {
                f.write_str("request message does not name a model (field 1, model_name)")
            }
            GrpcError::NotUtf8 => f.write_str("model name in the request message is not UTF-8"),
            GrpcError::InvalidName(why) => {
                write!(f, "invalid model name in the request message: {why}")
            }
            GrpcError::NotInScan => {
                f.write_str("model name not found in the first 64 KiB; send a mm-model-id header")
            }
        }
    }
}

impl std::error::Error for GrpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GrpcError::InvalidHeader { why, .. } | GrpcError::InvalidName(why) => Some(why),
            _ => None,
        }
    }
}

/// The model named by the request headers: the first of [`MODEL_HEADERS`] that `header`
/// returns a value for, validated with [`validate_model_name`]. `header` looks a header up
/// by its lowercase name. `Ok(None)` when none is present.
///
/// Errors: the first present header's value is not a valid name (an empty or bad value is
/// refused, not skipped: a later header must not silently win).
pub fn model_from_headers<F>(mut header: F) -> Result<Option<String>, GrpcError>
where
    F: FnMut(&str) -> Option<String>,
{
    for name in MODEL_HEADERS {
        if let Some(value) = header(name) {
            validate_model_name(&value)
                .map_err(|why| GrpcError::InvalidHeader { header: name, why })?;
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// Length of the gRPC message prefix: a flag byte and a big-endian `u32` length.
const FRAME_HEADER_LEN: usize = 5;

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_START_GROUP: u64 = 3;
const WIRE_END_GROUP: u64 = 4;
const WIRE_FIXED32: u64 = 5;

/// The model name in the first gRPC message of a request body, from the start of the
/// body (`buf` may be incomplete).
///
/// `buf` holds a length-prefixed message (flag byte, 4-byte big-endian length, protobuf
/// bytes). In `ModelInferRequest`, `ModelMetadataRequest`, `ModelReadyRequest` and
/// `ModelConfigRequest` the name is field 1 (a string); fields are scanned in any order,
/// others skipped. `Ok(None)`: more bytes are needed (call again with a longer prefix;
/// the answer never needs more than the frame header and [`MAX_SCAN`] bytes plus field 1's
/// few). `Ok(Some(name))`: field 1, validated. If field 1 occurs more than once, the first
/// occurrence is taken (a later one is not looked for).
///
/// Errors: compressed message ([`GrpcError::Compressed`]); bad flag byte; malformed
/// protobuf; no field 1 in the complete message; field 1 not UTF-8 or not a valid name;
/// a message longer than [`MAX_SCAN`] whose field 1 does not start within it. The work is
/// bounded by `min(buf.len(), MAX_SCAN)`. Never panics.
pub fn model_from_message(buf: &[u8]) -> Result<Option<String>, GrpcError> {
    let Some((header, body)) = buf.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let [flag, len @ ..] = *header;
    match flag {
        0 => {}
        1 => return Err(GrpcError::Compressed),
        _ => return Err(GrpcError::BadFrame),
    }
    let msg_len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    let complete = body.len() >= msg_len;
    let body = body.get(..msg_len).unwrap_or(body);
    let mut reader = Reader {
        buf: body,
        pos: 0,
        complete,
    };

    loop {
        if reader.pos >= msg_len {
            return Err(GrpcError::MissingModel);
        }
        if reader.pos >= MAX_SCAN {
            return Err(GrpcError::NotInScan);
        }
        let Some(key) = reader.varint()? else {
            return Ok(None);
        };
        let field = key >> 3;
        let wire_type = key & 7;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(GrpcError::Malformed("invalid field number"));
        }
        if field == 1 {
            if wire_type != WIRE_LEN {
                return Err(GrpcError::Malformed("field 1 (model_name) is not a string"));
            }
            return reader.model_name(msg_len);
        }
        let skip = match wire_type {
            WIRE_VARINT => match reader.varint()? {
                Some(_) => 0,
                None => return Ok(None),
            },
            WIRE_FIXED64 => 8,
            WIRE_LEN => match reader.varint()? {
                Some(len) => usize::try_from(len).unwrap_or(usize::MAX),
                None => return Ok(None),
            },
            WIRE_FIXED32 => 4,
            WIRE_START_GROUP | WIRE_END_GROUP => {
                return Err(GrpcError::Malformed("groups are not supported"))
            }
            _ => return Err(GrpcError::Malformed("invalid wire type")),
        };
        // Where the next field starts is known from the length alone: no need to wait
        // for bytes that will be skipped anyway.
        let next = reader.pos.saturating_add(skip);
        if next > msg_len {
            return Err(GrpcError::Malformed(
                "a field runs past the end of the message",
            ));
        }
        if next < msg_len && next >= MAX_SCAN {
            return Err(GrpcError::NotInScan);
        }
        if next > reader.buf.len() && next < msg_len {
            return Ok(None);
        }
        reader.pos = next;
    }
}

/// A cursor over the available bytes of one message.
struct Reader<'a> {
    /// The bytes of the message received so far (never past its end).
    buf: &'a [u8],
    pos: usize,
    /// Whether `buf` is the whole message: running out of bytes is then malformed, not a
    /// reason to wait.
    complete: bool,
}

impl Reader<'_> {
    /// Reads a varint; `Ok(None)` if the available bytes end inside it.
    fn varint(&mut self) -> Result<Option<u64>, GrpcError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos + i) else {
                return if self.complete {
                    Err(GrpcError::Malformed("truncated varint"))
                } else {
                    Ok(None)
                };
            };
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && bits > 1 {
                return Err(GrpcError::Malformed("varint overflows 64 bits"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                self.pos += i + 1;
                return Ok(Some(value));
            }
        }
        Err(GrpcError::Malformed("varint overflows 64 bits"))
    }

    /// Reads field 1's length and bytes, once its key has been read.
    fn model_name(&mut self, msg_len: usize) -> Result<Option<String>, GrpcError> {
        let Some(len) = self.varint()? else {
            return Ok(None);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let end = self.pos.saturating_add(len);
        if end > msg_len {
            return Err(GrpcError::Malformed(
                "a field runs past the end of the message",
            ));
        }
        // Decided before the bytes arrive, so a huge field 1 is never buffered.
        if len > MAX_MODEL_NAME_LEN {
            return Err(GrpcError::InvalidName(NameError::TooLong));
        }
        let Some(bytes) = self.buf.get(self.pos..end) else {
            return Ok(None);
        };
        let name = std::str::from_utf8(bytes).map_err(|_| GrpcError::NotUtf8)?;
        validate_model_name(name).map_err(GrpcError::InvalidName)?;
        Ok(Some(name.to_owned()))
    }
}

/// The gRPC status (`grpc-status`) for a gateway reply the HTTP API would answer with
/// `status`, so gRPC clients see the same outcome a REST client would:
///
/// | HTTP | gRPC |
/// |---|---|
/// | 2xx | 0 `OK` |
/// | 400 | 3 `INVALID_ARGUMENT` |
/// | 401 | 16 `UNAUTHENTICATED` |
/// | 403 | 7 `PERMISSION_DENIED` |
/// | 404 | 5 `NOT_FOUND` |
/// | 408 | 4 `DEADLINE_EXCEEDED` |
/// | 413, 429 | 8 `RESOURCE_EXHAUSTED` |
/// | 499 (client closed) | 1 `CANCELLED` |
/// | other 4xx | 9 `FAILED_PRECONDITION` (the request cannot succeed as the system is) |
/// | 501 | 12 `UNIMPLEMENTED` |
/// | 502, 503, 504 | 14 `UNAVAILABLE` (retryable: the replica or pool-manager is away) |
/// | 507 (no capacity to load the model) | 8 `RESOURCE_EXHAUSTED` |
/// | other 5xx | 13 `INTERNAL` |
/// | anything else | 2 `UNKNOWN` |
pub fn grpc_status_for_http(status: u16) -> u32 {
    match status {
        200..=299 => 0,
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        408 => 4,
        413 | 429 => 8,
        499 => 1,
        402..=498 => 9,
        501 => 12,
        502..=504 => 14,
        507 => 8,
        500..=599 => 13,
        _ => 2,
    }
}

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 spec asks: every byte of the
/// UTF-8 text outside 0x20..=0x7E, and `%` itself, becomes `%XX` (uppercase hex).
pub fn percent_encode_grpc_message(msg: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(msg.len());
    for &byte in msg.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A tiny protobuf encoder, enough for the requests tested here.

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
        varint(out, (field << 3) | wire_type);
    }

    fn string(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        key(out, field, WIRE_LEN);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(msg);
        out
    }

    fn named(name: &str) -> Result<Option<String>, GrpcError> {
        Ok(Some(name.to_owned()))
    }

    /// A ModelInferRequest-like message: `before` fields, then model_name, then an input.
    fn infer_request(before: impl FnOnce(&mut Vec<u8>), name: &[u8]) -> Vec<u8> {
        let mut msg = Vec::new();
        before(&mut msg);
        string(&mut msg, 1, name);
        string(&mut msg, 5, b"\x0a\x05input\x12\x04FP32");
        frame(&msg)
    }

    #[test]
    fn finds_the_model_name_wherever_it_is() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("first", infer_request(|_| {}, b"linear")),
            (
                "after model_version",
                infer_request(|m| string(m, 2, b"3"), b"linear"),
            ),
            (
                "after id and parameters",
                infer_request(
                    |m| {
                        string(m, 3, b"request-42");
                        string(m, 4, b"\x0a\x01k\x12\x02\x10\x01");
                    },
                    b"linear",
                ),
            ),
            (
                "after scalar fields of every wire type",
                infer_request(
                    |m| {
                        key(m, 9, WIRE_VARINT);
                        varint(m, u64::MAX);
                        key(m, 10, WIRE_FIXED64);
                        m.extend_from_slice(&[0xff; 8]);
                        key(m, 11, WIRE_FIXED32);
                        m.extend_from_slice(&[0xff; 4]);
                        key(m, 536_870_911, WIRE_VARINT);
                        varint(m, 0);
                    },
                    b"linear",
                ),
            ),
        ];
        for (what, buf) in cases {
            assert_eq!(model_from_message(&buf), named("linear"), "{what}");
        }
        // Bytes after the first message (a stream's next one) do not matter.
        let mut two = infer_request(|_| {}, b"a");
        two.extend(infer_request(|_| {}, b"b"));
        two.extend_from_slice(&[1, 2, 3]);
        assert_eq!(model_from_message(&two), named("a"));
    }

    #[test]
    fn waits_for_a_field_that_spans_chunks() {
        let big = vec![7u8; 40_000];
        let buf = infer_request(|m| string(m, 3, &big), b"resnet-50");
        let name_at = buf.windows(9).position(|w| w == b"resnet-50").unwrap();
        for cut in [0, 1, 4, 5, 6, 7, 8, 100, 39_000, name_at, name_at + 8] {
            assert_eq!(model_from_message(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        for cut in [name_at + 9, buf.len()] {
            assert_eq!(model_from_message(&buf[..cut]), named("resnet-50"));
        }
    }

    #[test]
    fn skips_large_fields_without_their_bytes() {
        // A 60 KiB field 3, then the name at 60 KiB: found once the name arrives, and the
        // skipped bytes are never needed to decide.
        let big = vec![0u8; 60 * 1024];
        let buf = infer_request(|m| string(m, 3, &big), b"m");
        assert_eq!(model_from_message(&buf[..20]), Ok(None));
        assert_eq!(model_from_message(&buf), named("m"));

        // A 1 MiB field first: the name cannot start within MAX_SCAN, which is known
        // as soon as the field's length is.
        let mut msg = Vec::new();
        key(&mut msg, 7, WIRE_LEN);
        varint(&mut msg, 1 << 20);
        let mut buf = vec![0];
        buf.extend_from_slice(&((msg.len() + (1 << 20) + 3) as u32).to_be_bytes());
        buf.extend_from_slice(&msg);
        assert_eq!(model_from_message(&buf), Err(GrpcError::NotInScan));
        assert_eq!(
            GrpcError::NotInScan.to_string(),
            "model name not found in the first 64 KiB; send a mm-model-id header"
        );

        // The same field as the whole message: it has no field 1 at all.
        let mut buf = vec![0];
        buf.extend_from_slice(&((msg.len() + (1 << 20)) as u32).to_be_bytes());
        buf.extend_from_slice(&msg);
        assert_eq!(model_from_message(&buf), Err(GrpcError::MissingModel));

        // Many small fields that reach past MAX_SCAN.
        let mut msg = Vec::new();
        while msg.len() < MAX_SCAN + 10 {
            key(&mut msg, 2, WIRE_VARINT);
            varint(&mut msg, 1);
        }
        string(&mut msg, 1, b"late");
        assert_eq!(model_from_message(&frame(&msg)), Err(GrpcError::NotInScan));
    }

    #[test]
    fn refuses_bad_messages() {
        let mut compressed = infer_request(|_| {}, b"linear");
        compressed[0] = 1;
        let mut bad_flag = infer_request(|_| {}, b"linear");
        bad_flag[0] = 2;
        let malformed = GrpcError::Malformed;
        let cases: Vec<(&str, Vec<u8>, GrpcError)> = vec![
            ("compressed", compressed, GrpcError::Compressed),
            ("bad flag", bad_flag, GrpcError::BadFrame),
            ("empty message", frame(b""), GrpcError::MissingModel),
            (
                "no field 1",
                frame(&{
                    let mut m = Vec::new();
                    string(&mut m, 2, b"1");
                    string(&mut m, 5, b"x");
                    m
                }),
                GrpcError::MissingModel,
            ),
            (
                "truncated varint",
                frame(&[0x10, 0x80]),
                malformed("truncated varint"),
            ),
            (
                "truncated key",
                frame(&[0x88]),
                malformed("truncated varint"),
            ),
            (
                "over-long varint",
                frame(&[
                    0x10, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
                ]),
                malformed("varint overflows 64 bits"),
            ),
            (
                "varint above u64",
                frame(&[
                    0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ]),
                malformed("varint overflows 64 bits"),
            ),
            (
                "field past the end",
                frame(&[0x1a, 0x05, b'a']),
                malformed("a field runs past the end of the message"),
            ),
            (
                "name past the end",
                frame(&[0x0a, 0x05, b'a']),
                malformed("a field runs past the end of the message"),
            ),
            (
                "fixed64 past the end",
                frame(&[0x11, 1, 2, 3]),
                malformed("a field runs past the end of the message"),
            ),
            (
                "field 0",
                frame(&[0x02, 0x00]),
                malformed("invalid field number"),
            ),
            (
                "group",
                frame(&[0x1b, 0x1c]),
                malformed("groups are not supported"),
            ),
            (
                "wire type 7",
                frame(&[0x1f]),
                malformed("invalid wire type"),
            ),
            (
                "field 1 as varint",
                frame(&[0x08, 0x01]),
                malformed("field 1 (model_name) is not a string"),
            ),
            (
                "not utf-8",
                infer_request(|_| {}, b"mod\xffel"),
                GrpcError::NotUtf8,
            ),
            (
                "slash",
                infer_request(|_| {}, b"a/b"),
                GrpcError::InvalidName(NameError::BadChar),
            ),
            (
                "dot dot",
                infer_request(|_| {}, b".."),
                GrpcError::InvalidName(NameError::BadStart),
            ),
            (
                "empty name",
                infer_request(|_| {}, b""),
                GrpcError::InvalidName(NameError::Empty),
            ),
            (
                "long name",
                infer_request(|_| {}, &[b'a'; 129]),
                GrpcError::InvalidName(NameError::TooLong),
            ),
        ];
        for (what, buf, want) in cases {
            assert_eq!(model_from_message(&buf), Err(want), "{what}");
        }
        // A too-long name is refused from its length, before its bytes arrive.
        let buf = infer_request(|_| {}, &[b'a'; 100_000]);
        assert_eq!(
            model_from_message(&buf[..10]),
            Err(GrpcError::InvalidName(NameError::TooLong))
        );
        assert_eq!(
            GrpcError::Compressed.to_string(),
            "compressed gRPC messages need a model header"
        );
    }

    #[test]
    fn waits_for_the_frame_header() {
        assert_eq!(model_from_message(b""), Ok(None));
        assert_eq!(model_from_message(&[0, 0, 0, 0]), Ok(None));
        assert_eq!(model_from_message(&[0, 0, 0, 1, 0]), Ok(None));
        assert_eq!(model_from_message(&[0, 0, 0, 0, 10, 0x0a]), Ok(None));
        assert_eq!(
            model_from_message(&[0, 0, 0, 0, 10, 0x0a, 0x03, b'a']),
            Ok(None)
        );
        assert_eq!(
            model_from_message(&[0, 0, 0, 0, 3, 0x0a, 0x01, b'a']),
            named("a")
        );
    }

    #[test]
    fn picks_the_model_header_by_precedence() {
        type Headers = &'static [(&'static str, &'static str)];
        let cases: &[(Headers, Result<Option<String>, GrpcError>)] = &[
            (&[], Ok(None)),
            (&[("x-model-name", "c")], named("c")),
            (&[("mm-model-id", "b"), ("x-model-name", "c")], named("b")),
            (
                &[
                    ("x-model-name", "c"),
                    ("mm-model-id", "b"),
                    ("mm-vmodel-id", "a"),
                ],
                named("a"),
            ),
            (&[("content-type", "application/grpc")], Ok(None)),
            (
                &[("mm-vmodel-id", "../x"), ("mm-model-id", "b")],
                Err(GrpcError::InvalidHeader {
                    header: "mm-vmodel-id",
                    why: NameError::BadStart,
                }),
            ),
            (
                &[("mm-model-id", ""), ("x-model-name", "c")],
                Err(GrpcError::InvalidHeader {
                    header: "mm-model-id",
                    why: NameError::Empty,
                }),
            ),
            (
                &[("x-model-name", "a/b")],
                Err(GrpcError::InvalidHeader {
                    header: "x-model-name",
                    why: NameError::BadChar,
                }),
            ),
        ];
        for (pairs, want) in cases {
            let header = |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            assert_eq!(&model_from_headers(header), want, "{pairs:?}");
        }
    }

    #[test]
    fn classifies_every_method() {
        use GrpcMethod::*;
        let any = [ServerLive, ServerReady, ServerMetadata];
        let model = [
            ModelReady,
            ModelMetadata,
            ModelInfer,
            ModelStreamInfer,
            ModelConfig,
        ];
        for method in GrpcMethod::ALL {
            let path = format!("{SERVICE_PREFIX}{}", method.name());
            let want = if any.contains(&method) {
                GrpcRoute::AnyReplica(method)
            } else if model.contains(&method) {
                GrpcRoute::Model(method)
            } else {
                GrpcRoute::Refused(method.name().to_owned())
            };
            assert_eq!(parse_path(path.as_bytes()), Some(want), "{path}");
            assert_eq!(GrpcMethod::from_name(method.name()), Some(method));
        }
        let refused = |name: &str| Some(GrpcRoute::Refused(name.to_owned()));
        let cases: &[(&[u8], Option<GrpcRoute>)] = &[
            (
                b"/inference.GRPCInferenceService/RepositoryModelLoad",
                refused("RepositoryModelLoad"),
            ),
            (
                b"/inference.GRPCInferenceService/SystemSharedMemoryRegister",
                refused("SystemSharedMemoryRegister"),
            ),
            (
                b"/inference.GRPCInferenceService/LogSettings",
                refused("LogSettings"),
            ),
            (
                b"/inference.GRPCInferenceService/Frobnicate",
                refused("Frobnicate"),
            ),
            (
                b"/inference.GRPCInferenceService/modelinfer",
                refused("modelinfer"),
            ),
            (b"/inference.GRPCInferenceService/", refused("unknown")),
            (
                b"/inference.GRPCInferenceService/ModelInfer/",
                refused("unknown"),
            ),
            (
                b"/inference.GRPCInferenceService/ModelInfer?x",
                refused("unknown"),
            ),
            (
                b"/inference.GRPCInferenceService/Model\xffInfer",
                refused("unknown"),
            ),
            (b"/inference.GRPCInferenceService", None),
            (b"/inference.GRPCInferenceServiceX/ModelInfer", None),
            (b"/Inference.GRPCInferenceService/ModelInfer", None),
            (b"/grpc.health.v1.Health/Check", None),
            (b"/v2/models/x/infer", None),
            (b"inference.GRPCInferenceService/ModelInfer", None),
            (b"", None),
        ];
        for (path, want) in cases {
            assert_eq!(&parse_path(path), want, "{}", String::from_utf8_lossy(path));
        }
    }

    #[test]
    fn maps_http_statuses_to_grpc() {
        let cases = [
            (200, 0),
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 5),
            (408, 4),
            (409, 9),
            (413, 8),
            (429, 8),
            (499, 1),
            (500, 13),
            (501, 12),
            (502, 14),
            (503, 14),
            (504, 14),
            (507, 8),
            (599, 13),
            (302, 2),
            (0, 2),
            (600, 2),
        ];
        for (http, grpc) in cases {
            assert_eq!(grpc_status_for_http(http), grpc, "{http}");
        }
    }

    #[test]
    fn percent_encodes_grpc_messages() {
        let cases = [
            ("no route for this path", "no route for this path"),
            ("100% sure", "100%25 sure"),
            ("line\nbreak\ttab", "line%0Abreak%09tab"),
            ("café ☕", "caf%C3%A9 %E2%98%95"),
            ("~ and \u{7f}", "~ and %7F"),
            ("", ""),
        ];
        for (msg, want) in cases {
            assert_eq!(percent_encode_grpc_message(msg), want, "{msg}");
        }
    }

    fn valid_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
    }

    /// Fields other than 1, of every wire type, as encoded bytes.
    fn other_fields() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            (2u64..40, any::<u64>()).prop_map(|(f, v)| {
                let mut m = Vec::new();
                key(&mut m, f, WIRE_VARINT);
                varint(&mut m, v);
                m
            }),
            (2u64..40, any::<[u8; 8]>()).prop_map(|(f, v)| {
                let mut m = Vec::new();
                key(&mut m, f, WIRE_FIXED64);
                m.extend_from_slice(&v);
                m
            }),
            (2u64..40, any::<[u8; 4]>()).prop_map(|(f, v)| {
                let mut m = Vec::new();
                key(&mut m, f, WIRE_FIXED32);
                m.extend_from_slice(&v);
                m
            }),
            (2u64..1000, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(f, v)| {
                let mut m = Vec::new();
                string(&mut m, f, &v);
                m
            }),
        ];
        proptest::collection::vec(field, 0..6).prop_map(|fields| fields.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_bytes(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = model_from_message(&buf);
            let mut framed = frame(&buf);
            let _ = model_from_message(&framed);
            framed.truncate(framed.len() / 2);
            let _ = model_from_message(&framed);
            let _ = parse_path(&buf);
        }

        #[test]
        fn any_prefix_waits_or_finds_the_name(
            name in valid_name(),
            before in other_fields(),
            after in other_fields(),
            split in any::<prop::sample::Index>(),
        ) {
            let mut msg = before;
            string(&mut msg, 1, name.as_bytes());
            msg.extend(after);
            let buf = frame(&msg);
            let cut = split.index(buf.len());
            match model_from_message(&buf[..cut]) {
                Ok(None) => {}
                Ok(Some(found)) => prop_assert_eq!(&found, &name),
                Err(err) => prop_assert!(false, "prefix of {} bytes: {}", cut, err),
            }
            prop_assert_eq!(model_from_message(&buf), Ok(Some(name)));
        }

        #[test]
        fn header_values_are_valid_or_refused(value in ".{0,20}") {
            match model_from_headers(|h| (h == "mm-model-id").then(|| value.clone())) {
                Ok(Some(name)) => prop_assert_eq!(validate_model_name(&name), Ok(())),
                Ok(None) => prop_assert!(false, "the header was present"),
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            }
        }

        #[test]
        fn encoded_messages_are_printable(msg in ".{0,40}") {
            let encoded = percent_encode_grpc_message(&msg);
            prop_assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
    }
}
