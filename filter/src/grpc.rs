//! Routing of KServe V2 gRPC (`inference.GRPCInferenceService`) by model: which methods
//! the gateway forwards and where (any replica, or one that has the model), where the
//! model name is (a header, else field 1 of the first request message, read from the
//! start of the body without a protobuf library), and how a gateway error becomes a gRPC
//! status. Methods that change a replica (repository load/unload, shared memory, trace and
//! log settings) are never forwarded. Plain Rust; no input can panic.

use mm_wire::{validate_model_name, NameError, MAX_MODEL_NAME_LEN};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

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

/// Why the model of a gRPC call could not be told, or is not the one routed. `Display` is
/// one sentence for the client; every variant is the client's fault (HTTP 400, gRPC
/// `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    /// A model header is present but its value is not a valid model name.
    #[error("invalid model name in header {header}: {why}")]
    InvalidHeader {
        header: &'static str,
        #[source]
        why: NameError,
    },
    /// The message is compressed, so its fields cannot be read (or checked) without
    /// decompressing it.
    #[error("compressed gRPC request messages are not supported by this gateway")]
    Compressed,
    /// The gRPC frame's flag byte is neither 0 nor 1.
    #[error("invalid gRPC message frame")]
    BadFrame,
    /// The protobuf message is malformed (truncated or over-long varint, field running
    /// past the message, field number 0, wire type 6 or 7, groups, field 1 not a string).
    #[error("malformed protobuf request: {0}")]
    Malformed(&'static str),
    /// A complete message has no field 1.
    #[error("request message does not name a model (field 1, model_name)")]
    MissingModel,
    /// Field 1 is not valid UTF-8.
    #[error("model name in the request message is not UTF-8")]
    NotUtf8,
    /// Field 1 is not a valid model name.
    #[error("invalid model name in the request message: {0}")]
    InvalidName(#[source] NameError),
    /// The message is longer than [`MAX_SCAN`] and field 1 does not start within it.
    #[error("model name not found in the first 64 KiB; send a mm-model-id header")]
    NotInScan,
    /// A message names another model than the one the call was routed to (by a header,
    /// or by the first message): Triton would run that one.
    #[error("request message names model {found}, but the call was routed to model {routed}")]
    ModelMismatch { routed: String, found: String },
}

impl GrpcError {
    /// The HTTP status the gateway answers with (see [`grpc_status_for_http`]).
    pub fn status(&self) -> u16 {
        400
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
pub(crate) const FRAME_HEADER_LEN: usize = 5;

/// The length a message prefix announces. Only uncompressed messages are accepted: the
/// gateway reads or rewrites the model name inside them.
pub(crate) fn frame_length(prefix: [u8; FRAME_HEADER_LEN]) -> Result<u32, GrpcError> {
    let [flag, len @ ..] = prefix;
    match flag {
        0 => Ok(u32::from_be_bytes(len)),
        1 => Err(GrpcError::Compressed),
        _ => Err(GrpcError::BadFrame),
    }
}

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
/// few). `Ok(Some(name))`: field 1, validated. The first occurrence of field 1 answers;
/// the bytes after it are not looked at ([`MessageScan`] checks them all).
///
/// Errors: compressed message ([`GrpcError::Compressed`]); bad flag byte; malformed
/// protobuf; no field 1 in the complete message; field 1 not UTF-8 or not a valid name;
/// a message longer than [`MAX_SCAN`] whose field 1 does not start within it. The work is
/// bounded by `min(buf.len(), MAX_SCAN)`. Never panics.
pub fn model_from_message(buf: &[u8]) -> Result<Option<String>, GrpcError> {
    let mut scan = MessageScan::new(None);
    let mut rest = buf;
    while scan.model.is_none() && !rest.is_empty() {
        let used = scan.step(rest)?;
        rest = rest.get(used..).unwrap_or_default();
    }
    Ok(scan.model)
}

/// Follows the request messages of a gRPC call through its body, chunk by chunk, and
/// checks that every one names the call's model in every occurrence of field 1 (Triton
/// runs the model of the *last* occurrence; the gateway routed by one of them): the first
/// message gives the model when no header did, and any message that names another model,
/// or none, is refused. Memory stays constant whatever the body: skipped fields are never
/// held, only a model name (at most [`MAX_MODEL_NAME_LEN`] bytes) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageScan {
    /// The model every message must name; `None` until the first message named one.
    model: Option<String>,
    state: ScanState,
    /// Bytes of the current message not consumed yet (after its 5-byte prefix).
    left: u64,
    /// Bytes of the current message consumed so far.
    offset: u64,
    /// Whether the current message has named its model yet.
    named: bool,
    /// Whether a message has started (a body with none names no model).
    any_message: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ScanState {
    /// Reading a message's 5-byte prefix.
    Prefix {
        bytes: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Reading a field key.
    Key { value: u64, index: u32 },
    /// Reading (and dropping) a varint value.
    Varint { index: u32 },
    /// Reading a length; `model` for field 1.
    Length { model: bool, value: u64, index: u32 },
    /// Skipping this many bytes of a field.
    Skip(u64),
    /// Reading field 1's bytes.
    Name { bytes: Vec<u8>, need: usize },
}

impl MessageScan {
    /// A scan of a call routed to `model` (from a header), or, with `None`, of a call whose
    /// first message must name the model.
    pub fn new(model: Option<String>) -> MessageScan {
        MessageScan {
            model,
            state: ScanState::Prefix {
                bytes: [0; FRAME_HEADER_LEN],
                have: 0,
            },
            left: 0,
            offset: 0,
            named: false,
            any_message: false,
        }
    }

    /// The model of the call, once known.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// How many of the next bytes are skipped without being looked at: the caller may
    /// pass them over with [`MessageScan::skip`] instead of reading them.
    pub fn skippable(&self) -> u64 {
        match self.state {
            ScanState::Skip(n) => n,
            _ => 0,
        }
    }

    /// Passes over `n` bytes, at most [`MessageScan::skippable`].
    pub fn skip(&mut self, n: u64) -> Result<(), GrpcError> {
        let n = n.min(self.skippable());
        if n == 0 {
            return Ok(());
        }
        self.state = ScanState::Skip(self.skippable() - n);
        self.consume(n);
        if self.skippable() == 0 {
            self.field_boundary()?;
        }
        Ok(())
    }

    /// Reads the next bytes of the body.
    ///
    /// Errors: a compressed message, a bad frame, malformed protobuf, field 1 absent from a
    /// message, not UTF-8, not a valid name, or another model than the call's; while the
    /// model is still unknown, a first message whose field 1 does not start within
    /// [`MAX_SCAN`] bytes. The scan is not to be fed again after an error.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), GrpcError> {
        while !bytes.is_empty() {
            let used = self.step(bytes)?;
            bytes = bytes.get(used..).unwrap_or_default();
        }
        Ok(())
    }

    /// Checks the end of the body: it must not end inside a message, and a call whose
    /// model is not known yet had no message that named one.
    pub fn finish(&self) -> Result<(), GrpcError> {
        match self.state {
            ScanState::Prefix { have: 0, .. } if self.model.is_some() => Ok(()),
            ScanState::Prefix { have: 0, .. } => Err(GrpcError::MissingModel),
            _ if !self.any_message => Err(GrpcError::MissingModel),
            _ => Err(GrpcError::Malformed("the body ends inside a message")),
        }
    }

    fn consume(&mut self, n: u64) {
        self.left = self.left.saturating_sub(n);
        self.offset = self.offset.saturating_add(n);
    }

    /// One step over the start of `bytes` (never empty); returns how many bytes it used
    /// (at least one).
    fn step(&mut self, bytes: &[u8]) -> Result<usize, GrpcError> {
        if let ScanState::Prefix {
            bytes: prefix,
            have,
        } = &mut self.state
        {
            let take = (FRAME_HEADER_LEN - *have).min(bytes.len());
            prefix[*have..*have + take].copy_from_slice(&bytes[..take]);
            *have += take;
            if *have == FRAME_HEADER_LEN {
                let prefix = *prefix;
                self.start_message(prefix)?;
            }
            return Ok(take);
        }
        if let ScanState::Skip(n) = self.state {
            let take = n.min(bytes.len() as u64);
            self.skip(take)?;
            return Ok(usize::try_from(take).unwrap_or(bytes.len()));
        }
        if let ScanState::Name { bytes: name, need } = &mut self.state {
            let take = (*need - name.len()).min(bytes.len());
            name.extend_from_slice(&bytes[..take]);
            let done = name.len() == *need;
            self.consume(take as u64);
            if done {
                self.name_done()?;
            }
            return Ok(take);
        }
        // A varint byte: the message must still have it.
        if self.left == 0 {
            return Err(GrpcError::Malformed("truncated varint"));
        }
        let byte = bytes[0];
        self.consume(1);
        self.varint_byte(byte)?;
        Ok(1)
    }

    fn start_message(&mut self, prefix: [u8; FRAME_HEADER_LEN]) -> Result<(), GrpcError> {
        let len = frame_length(prefix)?;
        self.any_message = true;
        self.left = u64::from(len);
        self.offset = 0;
        self.named = false;
        self.state = ScanState::Key { value: 0, index: 0 };
        self.field_boundary()
    }

    /// At the start of a field: the end of the message, or a field key to come.
    fn field_boundary(&mut self) -> Result<(), GrpcError> {
        if self.left == 0 {
            if !self.named {
                return Err(GrpcError::MissingModel);
            }
            self.state = ScanState::Prefix {
                bytes: [0; FRAME_HEADER_LEN],
                have: 0,
            };
            return Ok(());
        }
        if self.model.is_none() && self.offset >= MAX_SCAN as u64 {
            return Err(GrpcError::NotInScan);
        }
        self.state = ScanState::Key { value: 0, index: 0 };
        Ok(())
    }

    /// One byte of the varint being read (key, value or length).
    fn varint_byte(&mut self, byte: u8) -> Result<(), GrpcError> {
        let (value, index) = match &mut self.state {
            ScanState::Key { value, index } | ScanState::Length { value, index, .. } => {
                (Some(value), index)
            }
            ScanState::Varint { index } => (None, index),
            // step() sends only varint bytes here.
            ScanState::Prefix { .. } | ScanState::Skip(_) | ScanState::Name { .. } => return Ok(()),
        };
        let bits = u64::from(byte & 0x7f);
        // The tenth byte may only carry the top bit of a u64.
        if *index == 9 && bits > 1 || *index > 9 {
            return Err(GrpcError::Malformed("varint overflows 64 bits"));
        }
        if let Some(value) = value {
            *value |= bits << (7 * *index);
        }
        *index += 1;
        if byte & 0x80 != 0 {
            if self.left == 0 {
                return Err(GrpcError::Malformed("truncated varint"));
            }
            return Ok(());
        }
        match std::mem::replace(&mut self.state, ScanState::Skip(0)) {
            ScanState::Key { value, .. } => self.key_done(value),
            ScanState::Length { model, value, .. } => self.length_done(model, value),
            _ => self.field_boundary(),
        }
    }

    fn key_done(&mut self, key: u64) -> Result<(), GrpcError> {
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(GrpcError::Malformed("invalid field number"));
        }
        let wire_type = key & 7;
        if field == 1 && wire_type != WIRE_LEN {
            return Err(GrpcError::Malformed("field 1 (model_name) is not a string"));
        }
        self.state = match wire_type {
            WIRE_VARINT => ScanState::Varint { index: 0 },
            WIRE_FIXED64 => return self.skip_field(8),
            WIRE_LEN => ScanState::Length {
                model: field == 1,
                value: 0,
                index: 0,
            },
            WIRE_FIXED32 => return self.skip_field(4),
            WIRE_START_GROUP | WIRE_END_GROUP => {
                return Err(GrpcError::Malformed("groups are not supported"))
            }
            _ => return Err(GrpcError::Malformed("invalid wire type")),
        };
        if self.left == 0 {
            return Err(GrpcError::Malformed("truncated varint"));
        }
        Ok(())
    }

    fn length_done(&mut self, model: bool, len: u64) -> Result<(), GrpcError> {
        if len > self.left {
            return Err(GrpcError::Malformed(
                "a field runs past the end of the message",
            ));
        }
        if !model {
            return self.skip_field(len);
        }
        // Decided before the bytes arrive, so a huge field 1 is never held.
        let need = usize::try_from(len).unwrap_or(usize::MAX);
        if need > MAX_MODEL_NAME_LEN {
            return Err(GrpcError::InvalidName(NameError::TooLong));
        }
        self.state = ScanState::Name {
            bytes: Vec::with_capacity(need),
            need,
        };
        if need == 0 {
            return self.name_done();
        }
        Ok(())
    }

    /// Skips a field of `len` bytes (after its key or length).
    fn skip_field(&mut self, len: u64) -> Result<(), GrpcError> {
        if len > self.left {
            return Err(GrpcError::Malformed(
                "a field runs past the end of the message",
            ));
        }
        // A field that runs to the end of a message that has not named its model: that
        // message names none, known from the length alone.
        if len == self.left && !self.named {
            return Err(GrpcError::MissingModel);
        }
        // While the model is unknown, a field that ends past MAX_SCAN in a message that
        // goes on means field 1 cannot start within it: known from the length alone.
        let next = self.offset.saturating_add(len);
        if self.model.is_none() && len < self.left && next >= MAX_SCAN as u64 {
            return Err(GrpcError::NotInScan);
        }
        self.state = ScanState::Skip(len);
        if len == 0 {
            return self.field_boundary();
        }
        Ok(())
    }

    fn name_done(&mut self) -> Result<(), GrpcError> {
        let ScanState::Name { bytes, .. } = std::mem::replace(&mut self.state, ScanState::Skip(0))
        else {
            return Ok(());
        };
        let name = String::from_utf8(bytes).map_err(|_| GrpcError::NotUtf8)?;
        validate_model_name(&name).map_err(GrpcError::InvalidName)?;
        match &self.model {
            None => self.model = Some(name),
            Some(routed) if *routed == name => {}
            Some(routed) => {
                return Err(GrpcError::ModelMismatch {
                    routed: routed.clone(),
                    found: name,
                })
            }
        }
        self.named = true;
        self.field_boundary()
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

/// What the gRPC HTTP/2 spec requires escaped in `grpc-message`: every byte outside
/// 0x20..=0x7E (non-ASCII bytes always are), and `%` itself.
const GRPC_MESSAGE_ESCAPED: &AsciiSet = &CONTROLS.add(b'%');

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 spec asks: every byte of the
/// UTF-8 text outside 0x20..=0x7E, and `%` itself, becomes `%XX` (uppercase hex).
pub fn percent_encode_grpc_message(msg: &str) -> String {
    utf8_percent_encode(msg, GRPC_MESSAGE_ESCAPED).to_string()
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
            "compressed gRPC request messages are not supported by this gateway"
        );
    }

    /// Feeds `body` to a scan in the given chunk sizes (cycled), passing skippable bytes
    /// over as the stream does; returns the result at the end.
    fn scan_in_chunks(
        header_model: Option<&str>,
        body: &[u8],
        sizes: &[usize],
    ) -> Result<Option<String>, GrpcError> {
        let mut scan = MessageScan::new(header_model.map(str::to_owned));
        let mut at = 0;
        let mut i = 0;
        while at < body.len() {
            let skip = (scan.skippable() as usize).min(body.len() - at);
            if skip > 0 {
                scan.skip(skip as u64)?;
                at += skip;
                continue;
            }
            let size = sizes[i % sizes.len()].max(1).min(body.len() - at);
            i += 1;
            scan.feed(&body[at..at + size])?;
            at += size;
        }
        scan.finish()?;
        Ok(scan.model().map(str::to_owned))
    }

    #[test]
    fn every_message_must_name_the_routed_model() {
        let infer = |name: &[u8]| infer_request(|_| {}, name);
        let two = [infer(b"linear"), infer(b"linear")].concat();
        for sizes in [&[1usize][..], &[3, 7], &[1000]] {
            assert_eq!(
                scan_in_chunks(None, &two, sizes),
                named("linear"),
                "{sizes:?}"
            );
            assert_eq!(
                scan_in_chunks(Some("linear"), &two, sizes),
                named("linear"),
                "{sizes:?}"
            );
        }
        let mismatch = |routed: &str, found: &str| {
            Err(GrpcError::ModelMismatch {
                routed: routed.into(),
                found: found.into(),
            })
        };
        // A header that names another model than the message.
        assert_eq!(
            scan_in_chunks(Some("linear"), &infer(b"xor"), &[5]),
            mismatch("linear", "xor")
        );
        // Field 1 twice in one message (Triton would take the last).
        let twice = frame(&[field(1, b"linear"), field(1, b"xor")].concat());
        assert_eq!(
            scan_in_chunks(None, &twice, &[2]),
            mismatch("linear", "xor")
        );
        // A later message of a stream.
        let later = [infer(b"linear"), infer(b"anomaly")].concat();
        for sizes in [&[1usize][..], &[4], &[4096]] {
            assert_eq!(
                scan_in_chunks(None, &later, sizes),
                mismatch("linear", "anomaly")
            );
        }
        // A later message that names none, or is compressed.
        let unnamed = [infer(b"linear"), frame(&field(2, b"1"))].concat();
        assert_eq!(
            scan_in_chunks(None, &unnamed, &[3]),
            Err(GrpcError::MissingModel)
        );
        let mut compressed = infer(b"linear");
        compressed[0] = 1;
        let later_compressed = [infer(b"linear"), compressed].concat();
        assert_eq!(
            scan_in_chunks(Some("linear"), &later_compressed, &[8]),
            Err(GrpcError::Compressed)
        );
        // A body that ends inside a message, or has none.
        let cut = &two[..two.len() - 2];
        assert_eq!(
            scan_in_chunks(None, cut, &[9]),
            Err(GrpcError::Malformed("the body ends inside a message"))
        );
        assert_eq!(
            scan_in_chunks(None, b"", &[1]),
            Err(GrpcError::MissingModel)
        );
        assert_eq!(scan_in_chunks(Some("linear"), b"", &[1]), named("linear"));
    }

    #[test]
    fn large_fields_are_passed_over_without_being_read() {
        let tensor = vec![7u8; 1 << 20];
        let msg = frame(&[field(1, b"linear"), field(7, &tensor)].concat());
        let mut scan = MessageScan::new(Some("linear".into()));
        // The frame prefix, field 1 and the key and length of field 7.
        let head = 5 + 2 + 6 + 1 + 3;
        scan.feed(&msg[..head]).unwrap();
        assert_eq!(scan.skippable(), 1 << 20);
        scan.skip(1 << 20).unwrap();
        assert_eq!(scan.skippable(), 0);
        scan.finish().unwrap();
    }

    fn field(number: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, number, value);
        out
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
        fn a_scan_in_any_chunks_agrees_with_the_whole_body(
            names in proptest::collection::vec(prop_oneof![Just("linear"), Just("xor")], 1..4),
            before in other_fields(),
            sizes in proptest::collection::vec(1usize..64, 1..5),
        ) {
            let body: Vec<u8> = names
                .iter()
                .flat_map(|name| {
                    let mut msg = before.clone();
                    string(&mut msg, 1, name.as_bytes());
                    frame(&msg)
                })
                .collect();
            let whole = scan_in_chunks(None, &body, &[body.len()]);
            prop_assert_eq!(scan_in_chunks(None, &body, &sizes), whole.clone());
            if names.iter().all(|n| *n == names[0]) {
                prop_assert_eq!(whole, Ok(Some(names[0].to_owned())));
            } else {
                let mismatch = matches!(whole, Err(GrpcError::ModelMismatch { .. }));
                prop_assert!(mismatch, "{:?}", whole);
            }
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
