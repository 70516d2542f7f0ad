//! What to do with a paused request once the pool-manager has answered the route call:
//! forward it to a checked [`Target`], or answer the client with a [`Reply`]. Anything that
//! is not a well-formed answer from our own pool-manager ends as a 502 or 503, never as a
//! forward.

use std::net::SocketAddr;
use std::rc::Rc;

use mm_wire::{ErrorBody, RouteResponse, TensorSpec};

use crate::reply::Reply;
use crate::target::Target;

/// Most bytes of the route-call body the filter reads; an honest answer is far smaller.
pub const MAX_ROUTE_BODY_BYTES: usize = 64 * 1024;

/// Longest replica name accepted: it becomes a response header value.
pub const MAX_REPLICA_NAME_LEN: usize = 253;

/// The outcome of a route call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send the request to `target` (its gRPC address for a gRPC call).
    Forward {
        target: Rc<Target>,
        /// The model's inputs, when the pool-manager knows them (for KServe V1).
        inputs: Option<Rc<[TensorSpec]>>,
        /// The model's Triton-side name, when not the one the client used.
        upstream: Option<Rc<str>>,
        /// The model the answer is for, when the pool-manager says (another model than
        /// the one asked for when that was an alias).
        model: Option<String>,
    },
    /// Answer the client: [`Reply::PoolManagerUnreachable`], [`Reply::InvalidRoute`] or
    /// the pool-manager's own refusal ([`Reply::PoolManager`], status 400..=599).
    Reply(Reply),
}

/// Reads a `:status` header value; `None` unless it is exactly three ASCII digits.
pub fn parse_status(raw: &[u8]) -> Option<u16> {
    if raw.len() != 3 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Maps the route call's outcome to a [`Decision`].
///
/// - `status` `None` (Envoy reports a failed callout that way: connect failure, reset,
///   timeout) -> [`Reply::PoolManagerUnreachable`] (503).
/// - 200 with a [`RouteResponse`] whose address is a usable socket address and whose
///   replica name is a safe header value -> [`Decision::Forward`]; 200 with anything else
///   -> [`Reply::InvalidRoute`] (502).
/// - Any other status with an [`ErrorBody`] -> [`Reply::PoolManager`] with that status
///   and message, statuses outside 400..=599 turned into 502.
/// - Any other status with any other body (e.g. Envoy's own "no healthy upstream") ->
///   [`Reply::PoolManagerUnreachable`].
pub fn decide(status: Option<u16>, body: &[u8]) -> Decision {
    match status {
        None => Decision::Reply(Reply::PoolManagerUnreachable),
        Some(200) => forward(body).unwrap_or(Decision::Reply(Reply::InvalidRoute)),
        Some(status) => match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => Decision::Reply(Reply::PoolManager {
                status: if (400..=599).contains(&status) {
                    status
                } else {
                    502
                },
                message: error,
            }),
            Err(_) => Decision::Reply(Reply::PoolManagerUnreachable),
        },
    }
}

/// The forward decision for a 200 body, if it is a usable route.
fn forward(body: &[u8]) -> Option<Decision> {
    let route: RouteResponse = serde_json::from_slice(body).ok()?;
    let target = Target::new(
        &route.replica,
        &route.address,
        route.grpc_address.as_deref(),
    )?;
    if route
        .upstream
        .as_deref()
        .is_some_and(|u| mm_wire::validate_model_name(u).is_err())
    {
        return None;
    }
    Some(Decision::Forward {
        target: Rc::new(target),
        inputs: route.inputs.map(Rc::from),
        upstream: route.upstream.map(Rc::from),
        model: route
            .model
            .filter(|m| mm_wire::validate_model_name(m).is_ok()),
    })
}

/// `address` in the canonical `IP:PORT` form Envoy's ORIGINAL_DST cluster expects (IPv6
/// in brackets), or `None` unless it is an IP literal with a port, neither 0 nor an
/// unspecified IP. Host names are refused: the cluster would not resolve them.
pub fn canonical_address(address: &str) -> Option<String> {
    let address: SocketAddr = address.parse().ok()?;
    if address.port() == 0 || address.ip().is_unspecified() {
        return None;
    }
    Some(address.to_string())
}

/// Whether a replica name is safe as a header value and in logs: 1 to
/// [`MAX_REPLICA_NAME_LEN`] printable ASCII characters, no spaces.
pub fn is_valid_replica_name(replica: &str) -> bool {
    (1..=MAX_REPLICA_NAME_LEN).contains(&replica.len())
        && replica.bytes().all(|b| b.is_ascii_graphic())
}

/// Renders the body of a gateway reply, `{"error":"<message>"}`, with JSON escaping.
pub fn render_error_body(message: &str) -> Vec<u8> {
    let body = ErrorBody {
        error: message.to_owned(),
    };
    // Serialising a struct of one string cannot fail; the fallback only avoids a panic path.
    serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, message: &str) -> Decision {
        Decision::Reply(Reply::PoolManager {
            status,
            message: message.to_owned(),
        })
    }

    const UNREACHABLE: Decision = Decision::Reply(Reply::PoolManagerUnreachable);
    const INVALID_ROUTE: Decision = Decision::Reply(Reply::InvalidRoute);

    fn fwd(address: &str, replica: &str) -> Decision {
        Decision::Forward {
            target: Rc::new(Target::new(replica, address, None).unwrap()),
            inputs: None,
            upstream: None,
            model: None,
        }
    }

    #[test]
    fn parses_status_headers() {
        assert_eq!(parse_status(b"200"), Some(200));
        assert_eq!(parse_status(b"503"), Some(503));
        assert_eq!(parse_status(b"099"), Some(99));
        for raw in [
            &b""[..],
            b"20",
            b"2000",
            b"+20",
            b" 200",
            b"2x0",
            b"\xff\xff\xff",
        ] {
            assert_eq!(parse_status(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn forwards_a_valid_route() {
        let cases: &[(&str, Decision)] = &[
            (
                r#"{"model":"linear","replica":"r0","address":"127.0.0.1:8000"}"#,
                Decision::Forward {
                    target: Rc::new(Target::new("r0", "127.0.0.1:8000", None).unwrap()),
                    inputs: None,
                    upstream: None,
                    model: Some("linear".into()),
                },
            ),
            (
                r#"{"replica":"triton-1","address":"10.0.0.7:8000"}"#,
                fwd("10.0.0.7:8000", "triton-1"),
            ),
            (
                r#"{"replica":"r6","address":"[::1]:9000","extra":true}"#,
                fwd("[::1]:9000", "r6"),
            ),
            (
                r#"{"replica":"r6","address":"[0:0:0:0:0:0:0:1]:9000"}"#,
                fwd("[::1]:9000", "r6"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(&decide(Some(200), body.as_bytes()), want, "{body}");
        }
    }

    #[test]
    fn forwards_the_grpc_address_and_inputs() {
        let body = r#"{"model":"m","replica":"r0","address":"127.0.0.1:8000","grpcAddress":"[0::1]:8001","inputs":[{"name":"x","datatype":"FP32","shape":[-1,4]}]}"#;
        assert_eq!(
            decide(Some(200), body.as_bytes()),
            Decision::Forward {
                target: Rc::new(Target::new("r0", "127.0.0.1:8000", Some("[::1]:8001")).unwrap()),
                inputs: Some(Rc::from(vec![TensorSpec {
                    name: "x".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 4],
                }])),
                upstream: None,
                model: Some("m".into()),
            }
        );
        // A renamed model's answer carries its Triton-side name, checked like any name.
        let renamed = r#"{"replica":"r0","address":"127.0.0.1:8000","upstream":"m--0123abcd"}"#;
        assert!(matches!(
            decide(Some(200), renamed.as_bytes()),
            Decision::Forward { upstream: Some(u), .. } if &*u == "m--0123abcd"
        ));
        let bad = r#"{"replica":"r0","address":"127.0.0.1:8000","upstream":"../x"}"#;
        assert_eq!(decide(Some(200), bad.as_bytes()), INVALID_ROUTE);
        // A gRPC address that is not IP:PORT is dropped; the HTTP route still stands.
        for grpc in ["localhost:8001", "127.0.0.1:0", "0.0.0.0:8001", ""] {
            let body =
                format!(r#"{{"replica":"r0","address":"127.0.0.1:8000","grpcAddress":"{grpc}"}}"#);
            assert_eq!(
                decide(Some(200), body.as_bytes()),
                fwd("127.0.0.1:8000", "r0"),
                "{grpc}"
            );
        }
    }

    #[test]
    fn refuses_an_invalid_route_with_502() {
        let bodies = [
            "",
            "not json",
            "{}",
            r#"{"error":"x"}"#,
            r#"{"replica":"r0"}"#,
            r#"{"replica":"r0","address":"localhost:8000"}"#,
            r#"{"replica":"r0","address":"triton.svc:8000"}"#,
            r#"{"replica":"r0","address":"127.0.0.1"}"#,
            r#"{"replica":"r0","address":"127.0.0.1:0"}"#,
            r#"{"replica":"r0","address":"0.0.0.0:8000"}"#,
            r#"{"replica":"r0","address":"[::]:8000"}"#,
            r#"{"replica":"r0","address":"127.0.0.1:70000"}"#,
            r#"{"replica":"r0","address":" 127.0.0.1:8000"}"#,
            r#"{"replica":"r0","address":"::1:8000"}"#,
            r#"{"replica":"","address":"127.0.0.1:8000"}"#,
            r#"{"replica":"r 0","address":"127.0.0.1:8000"}"#,
            r#"{"replica":"r0\r\nx-evil: 1","address":"127.0.0.1:8000"}"#,
            r#"{"replica":"répl","address":"127.0.0.1:8000"}"#,
            r#"{"replica":1,"address":"127.0.0.1:8000"}"#,
        ];
        for body in bodies {
            assert_eq!(decide(Some(200), body.as_bytes()), INVALID_ROUTE, "{body}");
        }
        let long = format!(
            r#"{{"replica":"{}","address":"127.0.0.1:1"}}"#,
            "r".repeat(254)
        );
        assert_eq!(decide(Some(200), long.as_bytes()), INVALID_ROUTE);
        let longest = format!(
            r#"{{"replica":"{}","address":"127.0.0.1:1"}}"#,
            "r".repeat(253)
        );
        assert!(matches!(
            decide(Some(200), longest.as_bytes()),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn failed_callout_is_503() {
        assert_eq!(decide(None, b""), UNREACHABLE);
        assert_eq!(decide(None, br#"{"error":"x"}"#), UNREACHABLE);
    }

    #[test]
    fn passes_pool_manager_errors_through() {
        let cases: &[(u16, &str, Decision)] = &[
            (
                404,
                r#"{"error":"unknown model 'x'"}"#,
                reply(404, "unknown model 'x'"),
            ),
            (
                503,
                r#"{"error":"model 'x' failed to load: No module named 'numpy'"}"#,
                reply(503, "model 'x' failed to load: No module named 'numpy'"),
            ),
            (
                400,
                r#"{"error":"invalid model name"}"#,
                reply(400, "invalid model name"),
            ),
            (
                429,
                r#"{"error":"too many loads"}"#,
                reply(429, "too many loads"),
            ),
            (500, r#"{"error":"boom"}"#, reply(500, "boom")),
            (599, r#"{"error":"odd"}"#, reply(599, "odd")),
            (
                507,
                r#"{"error":"no capacity","detail":1}"#,
                reply(507, "no capacity"),
            ),
            // Statuses a client must not see from a gateway error are clamped to 502.
            (204, r#"{"error":"no content"}"#, reply(502, "no content")),
            (302, r#"{"error":"moved"}"#, reply(502, "moved")),
            (100, r#"{"error":"continue"}"#, reply(502, "continue")),
            (600, r#"{"error":"too high"}"#, reply(502, "too high")),
            (999, r#"{"error":"too high"}"#, reply(502, "too high")),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                &decide(Some(*status), body.as_bytes()),
                want,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn foreign_error_bodies_mean_unreachable() {
        let cases: &[(u16, &str)] = &[
            (503, "no healthy upstream"),
            (
                503,
                "upstream connect error or disconnect/reset before headers",
            ),
            (504, "upstream request timeout"),
            (404, ""),
            (500, r#"{"message":"x"}"#),
            (500, r#"{"error":5}"#),
            (302, "<html>"),
        ];
        for (status, body) in cases {
            assert_eq!(
                decide(Some(*status), body.as_bytes()),
                UNREACHABLE,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn renders_escaped_error_bodies() {
        assert_eq!(
            render_error_body("no route for this path"),
            br#"{"error":"no route for this path"}"#
        );
        let body = render_error_body("say \"hi\"\n\\ \u{1} é");
        assert_eq!(body, r#"{"error":"say \"hi\"\n\\ \u0001 é"}"#.as_bytes());
        let parsed: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.error, "say \"hi\"\n\\ \u{1} é");
    }
}
