//! Metadata and readiness requests for a model in none of the worker's tables: instead of
//! the route call (which loads the model), the filter makes the pool-manager's metadata
//! call, which never loads for readiness, and turns its answer into a [`MetadataDecision`]:
//! forward to the loaded copy, answer over HTTP itself, or (gRPC, whose local replies
//! cannot carry a message) have a replica's `ServerLive` carry the kept answer.
//!
//! What `ready` means for a registered model loaded nowhere: ready (HTTP 200, gRPC
//! `ready: true`), because a request for it would be served after a load, marked with
//! [`MODEL_STATE_HEADER`]; not ready while its last load failed (within the backoff).

use std::rc::Rc;

use base64::Engine;
use mm_wire::{MetadataAnswer, TensorSpec, METADATA_PATH_PREFIX};

use crate::decision::{self, Decision};
use crate::grpc::GrpcMethod;
use crate::reply::Reply;
use crate::route::ModelApi;
use crate::target::Target;

/// Response header on an answer given without the model loaded: `standby` (registered,
/// loaded nowhere, loaded on its next inference request).
pub const MODEL_STATE_HEADER: &str = "x-mm-model-state";

/// Its value.
pub const STANDBY: &str = "standby";

/// Most bytes of a metadata-call answer the filter reads (a model's metadata can list many
/// tensors).
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The method a carried gRPC answer rides on: every replica serves it and it needs no model.
pub const CARRIER_PATH: &str = "/inference.GRPCInferenceService/ServerLive";

/// What a request asks of its model, when it is a metadata or readiness request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// V2 metadata (`GET /v2/models/{m}`, gRPC `ModelMetadata`).
    Metadata,
    /// V2 readiness (`GET /v2/models/{m}/ready`, gRPC `ModelReady`).
    Ready,
    /// KServe V1 `GET /v1/models/{m}`: `{"name", "ready"}`, answered by the gateway.
    V1Ready,
    /// Triton's model configuration (`GET /v2/models/{m}/config`, gRPC `ModelConfig`).
    Config,
}

impl Asked {
    /// What an HTTP request of `api` asks, if it is one of these.
    pub fn of_http(api: ModelApi) -> Option<Asked> {
        match api {
            ModelApi::V2Metadata => Some(Asked::Metadata),
            ModelApi::V2Ready => Some(Asked::Ready),
            ModelApi::V1Metadata => Some(Asked::V1Ready),
            ModelApi::V2Config => Some(Asked::Config),
            _ => None,
        }
    }

    /// What a gRPC call of `method` asks, if it is one of these.
    pub fn of_grpc(method: GrpcMethod) -> Option<Asked> {
        match method {
            GrpcMethod::ModelMetadata => Some(Asked::Metadata),
            GrpcMethod::ModelReady => Some(Asked::Ready),
            GrpcMethod::ModelConfig => Some(Asked::Config),
            _ => None,
        }
    }

    fn query(self) -> &'static str {
        match self {
            Asked::Metadata => "metadata",
            Asked::Ready | Asked::V1Ready => "ready",
            Asked::Config => "config",
        }
    }
}

/// The `:path` of the metadata call (the model and version passed [`crate::route::parse`]
/// or the gRPC checks, so they are safe in a path).
pub fn call_path(model: &str, asked: Asked, version: Option<&str>, grpc: bool) -> String {
    let mut path = format!("{METADATA_PATH_PREFIX}{model}?for={}", asked.query());
    if let Some(version) = version {
        path.push_str("&version=");
        path.push_str(version);
    }
    if grpc {
        path.push_str("&grpc=true");
    }
    path
}

/// What to do once the metadata call has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataDecision {
    /// The model is loaded: route the request to this copy as usual.
    Forward {
        target: Rc<Target>,
        inputs: Option<Rc<[TensorSpec]>>,
        /// The model's Triton-side name, when not its own (after an update).
        upstream: Option<Rc<str>>,
    },
    /// Answer the HTTP request with this status and JSON body (`None`: empty), marked
    /// [`STANDBY`].
    Answer { status: u16, body: Option<Vec<u8>> },
    /// Send the gRPC call to `target`'s `ServerLive` and give the client `message` (a
    /// whole gRPC frame) as the answer's body.
    Carry {
        target: Rc<Target>,
        message: Vec<u8>,
    },
    /// Answer with an error.
    Reply(Reply),
}

/// Maps the metadata call's outcome to a decision. Errors and anything malformed end as
/// the route call's would ([`decision::decide`]).
pub fn decide(
    status: Option<u16>,
    body: &[u8],
    model: &str,
    asked: Asked,
    grpc: bool,
) -> MetadataDecision {
    if status != Some(200) {
        return match decision::decide(status, body) {
            Decision::Reply(reply) => MetadataDecision::Reply(reply),
            Decision::Forward { .. } => MetadataDecision::Reply(Reply::InvalidRoute),
        };
    }
    let Ok(answer) = serde_json::from_slice::<MetadataAnswer>(body) else {
        return MetadataDecision::Reply(Reply::InvalidRoute);
    };
    match (answer.route, answer.standby) {
        (Some(route), None) => {
            let Ok(route) = serde_json::to_vec(&route) else {
                return MetadataDecision::Reply(Reply::InvalidRoute);
            };
            match decision::decide(Some(200), &route) {
                Decision::Forward {
                    target,
                    inputs,
                    upstream,
                    ..
                } => MetadataDecision::Forward {
                    target,
                    inputs,
                    upstream,
                },
                Decision::Reply(reply) => MetadataDecision::Reply(reply),
            }
        }
        (None, Some(standby)) if grpc => carry(standby),
        (None, Some(standby)) => answer_http(standby, model, asked),
        _ => MetadataDecision::Reply(Reply::InvalidRoute),
    }
}

/// The HTTP answer for a model loaded nowhere.
fn answer_http(standby: mm_wire::Standby, model: &str, asked: Asked) -> MetadataDecision {
    let not_ready = || {
        let reason = standby.reason.clone().unwrap_or_default();
        MetadataDecision::Reply(Reply::PoolManager {
            status: 503,
            message: format!("model '{model}' is not ready: {reason}"),
        })
    };
    let body = match asked {
        Asked::Ready if standby.ready => None,
        Asked::Ready | Asked::V1Ready if !standby.ready => return not_ready(),
        Asked::V1Ready => Some(serde_json::json!({"name": model, "ready": true})),
        Asked::Ready => None,
        Asked::Metadata | Asked::Config => match standby.body {
            Some(body) => Some(body),
            None => return MetadataDecision::Reply(Reply::InvalidRoute),
        },
    };
    match body.map(|b| serde_json::to_vec(&b)) {
        None => MetadataDecision::Answer {
            status: 200,
            body: None,
        },
        Some(Ok(body)) => MetadataDecision::Answer {
            status: 200,
            body: Some(body),
        },
        Some(Err(_)) => MetadataDecision::Reply(Reply::InvalidRoute),
    }
}

/// The gRPC answer for a model loaded nowhere: its message, framed, on a carrier.
fn carry(standby: mm_wire::Standby) -> MetadataDecision {
    let message = standby
        .grpc_message
        .as_deref()
        .and_then(|m| base64::engine::general_purpose::STANDARD.decode(m).ok());
    let target = standby
        .carrier
        .and_then(|c| Target::new(&c.replica, &c.address, c.grpc_address.as_deref()).map(Rc::new));
    match (message, target) {
        (Some(message), Some(target)) => MetadataDecision::Carry {
            target,
            message: grpc_frame(&message),
        },
        _ => MetadataDecision::Reply(Reply::InvalidRoute),
    }
}

/// `message` as one uncompressed gRPC frame (flag byte, big-endian length, message).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(message.len().saturating_add(5));
    frame.push(0);
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Whether `body` (the carrier's answer so far) holds its whole first gRPC frame, so the
/// frame can be replaced in one piece.
pub fn frame_complete(body: &[u8]) -> bool {
    let Some(header) = body.get(1..5) else {
        return false;
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(header);
    let len = u32::from_be_bytes(len) as usize;
    body.len() >= len.saturating_add(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json).unwrap()
    }

    const ROUTE: &str =
        r#"{"replica":"r0","address":"127.0.0.1:8000","grpcAddress":"127.0.0.1:8001"}"#;

    #[test]
    fn paths_carry_what_is_asked() {
        assert_eq!(
            call_path("m", Asked::Metadata, Some("2"), false),
            "/internal/v1/metadata/m?for=metadata&version=2"
        );
        assert_eq!(
            call_path("m", Asked::V1Ready, None, true),
            "/internal/v1/metadata/m?for=ready&grpc=true"
        );
    }

    #[test]
    fn a_loaded_model_is_forwarded() {
        let route: serde_json::Value = serde_json::from_str(ROUTE).unwrap();
        let body = answer(serde_json::json!({ "route": route }));
        let d = decide(Some(200), &body, "m", Asked::Metadata, false);
        assert!(matches!(d, MetadataDecision::Forward { .. }), "{d:?}");
    }

    #[test]
    fn http_answers_for_a_model_loaded_nowhere() {
        let standby = |ready: bool| {
            answer(serde_json::json!({"standby": {
                "ready": ready, "reason": if ready { None } else { Some("bad files") },
                "body": {"name": "m", "versions": ["1"]}}}))
        };
        let rows = [
            (Asked::Ready, true, 200, None),
            (
                Asked::V1Ready,
                true,
                200,
                Some(r#"{"name":"m","ready":true}"#),
            ),
            (
                Asked::Metadata,
                true,
                200,
                Some(r#"{"name":"m","versions":["1"]}"#),
            ),
            (
                Asked::Metadata,
                false,
                200,
                Some(r#"{"name":"m","versions":["1"]}"#),
            ),
        ];
        for (asked, ready, status, body) in rows {
            let d = decide(Some(200), &standby(ready), "m", asked, false);
            assert_eq!(
                d,
                MetadataDecision::Answer {
                    status,
                    body: body.map(|b| b.as_bytes().to_vec())
                },
                "{asked:?} {ready}"
            );
        }
        for asked in [Asked::Ready, Asked::V1Ready] {
            let d = decide(Some(200), &standby(false), "m", asked, false);
            let MetadataDecision::Reply(reply) = d else {
                panic!("{d:?}")
            };
            assert_eq!(reply.status(), 503);
            assert!(reply.to_string().contains("bad files"), "{reply}");
        }
    }

    #[test]
    fn grpc_answers_ride_on_a_carrier() {
        let route: serde_json::Value = serde_json::from_str(ROUTE).unwrap();
        let body = answer(serde_json::json!({"standby": {
            "ready": true, "grpcMessage": "CAE=", "carrier": route}}));
        let d = decide(Some(200), &body, "m", Asked::Ready, true);
        let MetadataDecision::Carry { target, message } = d else {
            panic!("{d:?}")
        };
        assert_eq!(message, vec![0, 0, 0, 0, 2, 0x08, 0x01]);
        assert_eq!(target.grpc_address(), Some("127.0.0.1:8001"));
        let no_carrier =
            answer(serde_json::json!({"standby": {"ready": true, "grpcMessage": "CAE="}}));
        assert_eq!(
            decide(Some(200), &no_carrier, "m", Asked::Ready, true),
            MetadataDecision::Reply(Reply::InvalidRoute)
        );
    }

    #[test]
    fn errors_and_garbage_end_like_route_calls() {
        let d = decide(
            Some(404),
            br#"{"error":"model 'm' is not registered"}"#,
            "m",
            Asked::Ready,
            false,
        );
        let MetadataDecision::Reply(reply) = d else {
            panic!("{d:?}")
        };
        assert_eq!(reply.status(), 404);
        for body in [&b"{}"[..], b"nonsense", br#"{"route":{"replica":"r0"}}"#] {
            let d = decide(Some(200), body, "m", Asked::Metadata, false);
            assert_eq!(d, MetadataDecision::Reply(Reply::InvalidRoute), "{body:?}");
        }
        assert_eq!(
            decide(None, b"", "m", Asked::Ready, false),
            MetadataDecision::Reply(Reply::PoolManagerUnreachable)
        );
    }

    #[test]
    fn frames_are_complete_only_when_whole() {
        let frame = grpc_frame(&[8, 1]);
        assert!(frame_complete(&frame));
        assert!(!frame_complete(&frame[..6]));
        assert!(!frame_complete(&[0, 0]));
    }
}
