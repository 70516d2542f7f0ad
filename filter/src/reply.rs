//! The gateway's own answers to a client: every reason the filter answers a request itself
//! instead of forwarding it, as one enum whose variants carry what the message needs. The
//! status, the message and the counter follow from the variant, so no code path compares
//! message strings. On gRPC the same reply becomes a trailers-only answer whose
//! `grpc-status` is [`grpc_status_for_http`] of the HTTP status.

use crate::decision::render_error_body;
use crate::grpc::{grpc_status_for_http, percent_encode_grpc_message, GrpcError};
use crate::metrics::Metric;
use crate::route::RouteError;
use crate::v1::V1Error;

/// Why the gateway answers a request itself. `Display` is the one-sentence message the
/// client gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reply {
    /// The path is not one the gateway serves, or names an invalid model or version.
    #[error("{0}")]
    BadPath(RouteError),
    /// A gRPC method the gateway never forwards.
    #[error("method {0} is not served by this gateway")]
    MethodRefused(String),
    /// The model of a gRPC call is missing, invalid, or differs between its places.
    #[error("{0}")]
    Grpc(GrpcError),
    /// The body is larger than `max_request_bytes`.
    #[error("request body is larger than the gateway's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// `Inference-Header-Content-Length` is not a number no larger than the body.
    #[error("Inference-Header-Content-Length must be a number no larger than the request body")]
    BadInferenceHeaderLength,
    /// The route call failed: no answer, or not one of the pool-manager's.
    #[error("pool-manager unreachable")]
    PoolManagerUnreachable,
    /// The pool-manager answered 200 with something that is not a usable route.
    #[error("pool-manager returned an invalid route")]
    InvalidRoute,
    /// The pool-manager refused the route (unknown model, load failed, no capacity...):
    /// its status (always 400..=599) and message.
    #[error("{message}")]
    PoolManager { status: u16, message: String },
    /// No copy of the model has a gRPC endpoint.
    #[error("no gRPC endpoint serves model {0}")]
    NoGrpcEndpoint(String),
    /// The replica the route call chose has no gRPC endpoint.
    #[error("replica {0} has no gRPC endpoint")]
    ReplicaWithoutGrpc(String),
    /// A KServe V1 request names a model whose inputs are not known yet.
    #[error("model metadata not available yet; retry")]
    NoMetadata,
    /// A KServe V1 `:predict` request without a body.
    #[error("a KServe V1 predict request needs a JSON body")]
    V1BodyRequired,
    /// A KServe V1 request body that cannot be translated to V2.
    #[error("{0}")]
    V1Request(V1Error),
    /// The request needs its body while it is held, and this deployment cannot hand it
    /// over (`bodies_while_paused: false`, e.g. under Istio's WasmPlugin).
    #[error(
        "this gateway cannot read the model from a gRPC message; name it in an mm-model-id header"
    )]
    BodyUnavailable,
    /// The client's routing headers could not be removed.
    #[error("cannot remove client routing headers")]
    CannotSanitize,
    /// The chosen address could not be handed to Envoy.
    #[error("cannot set the upstream address")]
    CannotSetUpstream,
    /// The body of a KServe V1 request could not be read or replaced.
    #[error("cannot translate the request body")]
    CannotTranslate,
    /// The request could not be renamed to the model's Triton-side name.
    #[error("cannot rename the request to the model's current version")]
    CannotRename,
}

impl Reply {
    /// The HTTP status of the reply (on gRPC, mapped to a `grpc-status`).
    pub fn status(&self) -> u16 {
        match self {
            Reply::BadPath(err) => err.status(),
            Reply::MethodRefused(_) => 403,
            Reply::Grpc(err) => err.status(),
            Reply::TooLarge { .. } => 413,
            Reply::BadInferenceHeaderLength | Reply::V1BodyRequired | Reply::V1Request(_) => 400,
            Reply::PoolManagerUnreachable
            | Reply::NoGrpcEndpoint(_)
            | Reply::ReplicaWithoutGrpc(_)
            | Reply::NoMetadata => 503,
            Reply::InvalidRoute => 502,
            Reply::PoolManager { status, .. } => *status,
            Reply::BodyUnavailable => 501,
            Reply::CannotSanitize
            | Reply::CannotSetUpstream
            | Reply::CannotTranslate
            | Reply::CannotRename => 500,
        }
    }

    /// The counter this reply counts under, if any.
    pub fn metric(&self) -> Option<Metric> {
        match self {
            Reply::BadPath(_) | Reply::MethodRefused(_) | Reply::Grpc(_) => {
                Some(Metric::ErrorsBadPath)
            }
            Reply::PoolManagerUnreachable => Some(Metric::ErrorsPoolManagerUnreachable),
            Reply::V1BodyRequired | Reply::V1Request(_) => Some(Metric::V1TranslationErrors),
            _ => None,
        }
    }

    /// The answer as the host sends it: `(status, headers, body)`. HTTP: the status and
    /// `{"error": message}`. gRPC: HTTP 200, trailers-only, `grpc-status` and the
    /// percent-encoded `grpc-message`.
    pub fn render(&self, grpc: bool) -> Rendered {
        let message = self.to_string();
        if grpc {
            Rendered {
                status: 200,
                grpc_status: Some(grpc_status_for_http(self.status()).to_string()),
                grpc_message: Some(percent_encode_grpc_message(&message)),
                body: None,
            }
        } else {
            Rendered {
                status: self.status(),
                grpc_status: None,
                grpc_message: None,
                body: Some(render_error_body(&message)),
            }
        }
    }
}

/// A reply ready for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub status: u16,
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
    pub body: Option<Vec<u8>>,
}

impl Rendered {
    /// The headers to send with it.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        match (&self.grpc_status, &self.grpc_message) {
            (Some(status), Some(message)) => vec![
                ("content-type", "application/grpc"),
                ("grpc-status", status.as_str()),
                ("grpc-message", message.as_str()),
            ],
            _ => vec![("content-type", "application/json")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_messages_and_metrics_follow_the_variant() {
        let cases: Vec<(Reply, u16, &str, Option<Metric>)> = vec![
            (
                Reply::BadPath(RouteError::NoRoute),
                404,
                "no route for this path",
                Some(Metric::ErrorsBadPath),
            ),
            (
                Reply::MethodRefused("RepositoryIndex".into()),
                403,
                "method RepositoryIndex is not served by this gateway",
                Some(Metric::ErrorsBadPath),
            ),
            (
                Reply::TooLarge { limit: 1024 },
                413,
                "request body is larger than the gateway's limit of 1024 bytes",
                None,
            ),
            (
                Reply::PoolManagerUnreachable,
                503,
                "pool-manager unreachable",
                Some(Metric::ErrorsPoolManagerUnreachable),
            ),
            (
                Reply::InvalidRoute,
                502,
                "pool-manager returned an invalid route",
                None,
            ),
            (
                Reply::PoolManager {
                    status: 404,
                    message: "unknown model 'x'".into(),
                },
                404,
                "unknown model 'x'",
                None,
            ),
            (
                Reply::NoMetadata,
                503,
                "model metadata not available yet; retry",
                None,
            ),
            (
                Reply::V1BodyRequired,
                400,
                "a KServe V1 predict request needs a JSON body",
                Some(Metric::V1TranslationErrors),
            ),
            (
                Reply::CannotSetUpstream,
                500,
                "cannot set the upstream address",
                None,
            ),
        ];
        for (reply, status, message, metric) in cases {
            assert_eq!(reply.status(), status, "{reply:?}");
            assert_eq!(reply.to_string(), message, "{reply:?}");
            assert_eq!(reply.metric(), metric, "{reply:?}");
        }
    }

    #[test]
    fn renders_json_for_http_and_a_status_for_grpc() {
        let reply = Reply::TooLarge { limit: 2048 };
        let http = reply.render(false);
        assert_eq!(http.status, 413);
        assert_eq!(http.headers(), vec![("content-type", "application/json")]);
        assert_eq!(
            http.body.as_deref(),
            Some(
                &br#"{"error":"request body is larger than the gateway's limit of 2048 bytes"}"#[..]
            )
        );
        let grpc = Reply::Grpc(GrpcError::MissingModel).render(true);
        assert_eq!(grpc.status, 200);
        assert_eq!(grpc.body, None);
        assert_eq!(
            grpc.headers(),
            vec![
                ("content-type", "application/grpc"),
                ("grpc-status", "3"),
                (
                    "grpc-message",
                    "request message does not name a model (field 1, model_name)"
                ),
            ]
        );
    }
}
