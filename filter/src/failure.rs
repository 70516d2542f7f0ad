//! Replica failures seen on the data path: which upstream answers mean "that replica could
//! not be reached" or "that replica does not have the model", and the per-worker queue of
//! [`FailureReport`]s for the pool-manager, at most one per (model, replica, kind) per
//! [`REPORT_INTERVAL`]. Plain Rust; the glue reads the response and sends the reports.

use std::collections::HashMap;
use std::time::Duration;

use mm_wire::{FailureKind, FailureReport};

use crate::refresh::nanos;
use crate::route::ModelApi;

/// Shortest time between two reports of the same (model, replica, kind).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Most reports waiting to be sent; more are dropped (the same failure is seen again by
/// the next request that meets it).
pub const MAX_QUEUED_REPORTS: usize = 256;

/// Most bytes of an upstream error body read to recognise a missing model: Triton's
/// answers are well under 200 bytes.
pub const MAX_ERROR_BODY_BYTES: usize = 4 * 1024;

/// Bit of Envoy's `response.flags` property for "upstream connection failure" (`UF`).
pub const UPSTREAM_CONNECTION_FAILURE_FLAG: u64 = 0x20;

/// Parts of Envoy's `response.code_details` that mean the request never reached the
/// replica's server: its connection failed (refused, timed out), or no host was usable.
const CONNECT_FAILURE_DETAILS: [&[u8]; 3] = [
    b"connection_failure",
    b"connect_timeout",
    b"no_healthy_upstream",
];

/// Whether Envoy itself answered because the connection to the replica failed, from the
/// response's `response.code_details` and `response.flags` (either may be missing). A
/// reply that Triton sent (any status) has neither.
pub fn is_connect_failure(code_details: Option<&[u8]>, flags: Option<u64>) -> bool {
    let by_flags = flags.is_some_and(|f| f & UPSTREAM_CONNECTION_FAILURE_FLAG != 0);
    let by_details = code_details.is_some_and(|details| {
        CONNECT_FAILURE_DETAILS
            .iter()
            .any(|needle| contains(details, needle))
    });
    by_flags || by_details
}

/// Whether a response with `status` to a request of `kind` may say the model is missing,
/// so its (small) body is worth reading. Only unversioned requests count: a client can ask
/// for a version that exists nowhere, and that must not drop a healthy copy.
pub fn may_be_model_missing(status: u16, kind: ModelApi, versioned: bool) -> bool {
    if versioned {
        return false;
    }
    match kind {
        ModelApi::V2Metadata
        | ModelApi::V2Config
        | ModelApi::V2Infer
        | ModelApi::V2Generate
        | ModelApi::V2GenerateStream
        | ModelApi::V1Predict => status == 404,
        ModelApi::V2Ready => status == 400,
        ModelApi::V1Metadata => false,
    }
}

/// Whether the body of a response that passed [`may_be_model_missing`] is Triton saying
/// the model is not loaded. Triton 2.51 answers (seen live):
/// - 404 `{"error":"Request for unknown model: 'm' is not found"}` (never loaded) or
///   `... 'm' has no available versions` (unloaded), on metadata, infer and generate;
/// - 400 `{"error":"Model version not ready"}` on `/ready`.
pub fn is_model_missing(status: u16, kind: ModelApi, body: &[u8]) -> bool {
    match (kind, status) {
        (ModelApi::V2Ready, 400) => contains(body, b"not ready"),
        (_, 404) => says_model_missing(body),
        _ => false,
    }
}

/// gRPC status `NOT_FOUND`.
const GRPC_NOT_FOUND: &[u8] = b"5";

/// Whether a gRPC answer (`grpc-status`, `grpc-message` from the trailers, or the headers of
/// a trailers-only answer) is Triton saying the model is not loaded: 2.51 answers
/// `NOT_FOUND` with `Request for unknown model: 'm' is not found` (seen live). An answer
/// about a missing version (`... 'm' version 2 is not found`) is the client's: it does not
/// count, as the client may name any version.
pub fn is_grpc_model_missing(grpc_status: &[u8], grpc_message: &[u8]) -> bool {
    grpc_status == GRPC_NOT_FOUND && says_model_missing(grpc_message)
}

/// Triton's "model not loaded" wording, for the whole model (not one version).
fn says_model_missing(text: &[u8]) -> bool {
    let missing = contains(text, b"unknown model")
        || contains(text, b"is not found")
        || contains(text, b"is not ready");
    missing && !contains(text, b"' version ")
}

/// Shared-data key that holds when a failure was last reported by any worker of this
/// Envoy (8 little-endian bytes of ns), so the report goes out once per
/// [`REPORT_INTERVAL`] whatever the number of workers.
pub fn shared_key(report: &FailureReport) -> String {
    let kind = match report.kind {
        FailureKind::Unreachable => "unreachable",
        FailureKind::ModelMissing => "model_missing",
    };
    format!("mm.failure.{kind}.{}.{}", report.replica, report.model)
}

/// Whether a report last sent at `last` (ns, from [`shared_key`]) may be sent again at
/// `now`.
pub fn is_due(last: Option<u64>, now: u64) -> bool {
    last.is_none_or(|last| now.saturating_sub(last) >= nanos(REPORT_INTERVAL))
}

/// The message of the gateway's answer when the replica could not be reached.
pub fn unreachable_message(replica: &str) -> String {
    format!("replica {replica} unreachable; retry")
}

/// Failure reports waiting for the root context's tick, deduplicated. See the module doc.
#[derive(Debug, Default)]
pub struct FailureQueue {
    queued: Vec<FailureReport>,
    /// When each (model, replica, kind) was last handed out for sending, in ns.
    last_sent: HashMap<(String, String, FailureKind), u64>,
}

impl FailureQueue {
    /// An empty queue.
    pub fn new() -> FailureQueue {
        FailureQueue::default()
    }

    /// Queues a report unless the same one is already queued or the queue is full; returns
    /// whether it was queued.
    pub fn push(&mut self, model: &str, replica: &str, kind: FailureKind) -> bool {
        if self.queued.len() >= MAX_QUEUED_REPORTS
            || self
                .queued
                .iter()
                .any(|r| r.kind == kind && r.model == model && r.replica == replica)
        {
            return false;
        }
        self.queued.push(FailureReport {
            model: model.to_owned(),
            replica: replica.to_owned(),
            kind,
        });
        true
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Takes the queued reports to send at `now`: those whose (model, replica, kind) was not
    /// sent within [`REPORT_INTERVAL`]; the others are dropped (the pool-manager already
    /// has the news). Forgets send times older than the interval, so memory stays bounded.
    pub fn take_due(&mut self, now: u64) -> Vec<FailureReport> {
        let interval = nanos(REPORT_INTERVAL);
        self.last_sent
            .retain(|_, sent| now.saturating_sub(*sent) < interval);
        let mut due = Vec::new();
        for report in self.queued.drain(..) {
            let key = (report.model.clone(), report.replica.clone(), report.kind);
            if self.last_sent.contains_key(&key) {
                continue;
            }
            self.last_sent.insert(key, now);
            due.push(report);
        }
        due
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn recognises_envoy_connect_failures() {
        let yes: &[(Option<&[u8]>, Option<u64>)] = &[
            (
                Some(b"upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"),
                Some(0x20),
            ),
            (
                Some(b"upstream_reset_before_response_started{connection_failure}"),
                None,
            ),
            (Some(b"no_healthy_upstream"), None),
            (None, Some(0x20 | 0x10)),
            (Some(b"via_upstream"), Some(0x20)),
        ];
        for (details, flags) in yes {
            assert!(
                is_connect_failure(*details, *flags),
                "{details:?} {flags:?}"
            );
        }
        let no: &[(Option<&[u8]>, Option<u64>)] = &[
            (Some(b"via_upstream"), Some(0)),
            (None, None),
            (Some(b""), Some(0x10)),
            (
                Some(b"upstream_reset_after_response_started{remote_reset}"),
                None,
            ),
            (Some(b"upstream_response_timeout"), Some(0x4)),
        ];
        for (details, flags) in no {
            assert!(
                !is_connect_failure(*details, *flags),
                "{details:?} {flags:?}"
            );
        }
    }

    #[test]
    fn reads_the_body_only_for_unversioned_model_errors() {
        use ModelApi::*;
        for kind in [
            V2Metadata,
            V2Config,
            V2Infer,
            V2Generate,
            V2GenerateStream,
            V1Predict,
        ] {
            assert!(may_be_model_missing(404, kind, false), "{kind:?}");
            assert!(!may_be_model_missing(404, kind, true), "{kind:?}");
            assert!(!may_be_model_missing(400, kind, false), "{kind:?}");
            assert!(!may_be_model_missing(503, kind, false), "{kind:?}");
            assert!(!may_be_model_missing(200, kind, false), "{kind:?}");
        }
        assert!(may_be_model_missing(400, V2Ready, false));
        assert!(!may_be_model_missing(400, V2Ready, true));
        assert!(!may_be_model_missing(404, V2Ready, false));
        assert!(!may_be_model_missing(404, V1Metadata, false));
    }

    #[test]
    fn recognises_triton_model_missing_answers() {
        use ModelApi::*;
        let missing: &[(u16, ModelApi, &str)] = &[
            (
                404,
                V2Infer,
                r#"{"error":"Request for unknown model: 'linear' is not found"}"#,
            ),
            (
                404,
                V2Metadata,
                r#"{"error":"Request for unknown model: 'linear' has no available versions"}"#,
            ),
            (404, V1Predict, r#"{"error":"model 'm' is not ready"}"#),
            (400, V2Ready, r#"{"error":"Model version not ready"}"#),
        ];
        for (status, kind, body) in missing {
            assert!(is_model_missing(*status, *kind, body.as_bytes()), "{body}");
        }
        let other: &[(u16, ModelApi, &str)] = &[
            (404, V2Infer, "Not Found"),
            (
                404,
                V2Infer,
                r#"{"error":"unexpected shape for input 'x'"}"#,
            ),
            (
                400,
                V2Infer,
                r#"{"error":"Request for unknown model: 'x' is not found"}"#,
            ),
            (400, V2Ready, r#"{"error":"bad request"}"#),
            (503, V2Infer, r#"{"error":"Request for unknown model"}"#),
        ];
        for (status, kind, body) in other {
            assert!(!is_model_missing(*status, *kind, body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn versioned_misses_are_the_clients() {
        use ModelApi::*;
        let body = br#"{"error":"Request for unknown model: 'linear' version 2 is not found"}"#;
        assert!(!is_model_missing(404, V2Infer, body));
    }

    #[test]
    fn recognises_triton_grpc_model_missing_answers() {
        assert!(is_grpc_model_missing(
            b"5",
            b"Request for unknown model: 'nope' is not found"
        ));
        assert!(is_grpc_model_missing(
            b"5",
            b"Request for unknown model: 'linear' has no available versions"
        ));
        assert!(!is_grpc_model_missing(
            b"5",
            b"Request for unknown model: 'linear' version 2 is not found"
        ));
        assert!(!is_grpc_model_missing(
            b"14",
            b"Request for unknown model: 'nope' is not found"
        ));
        assert!(!is_grpc_model_missing(b"5", b"other"));
        assert!(!is_grpc_model_missing(b"", b""));
    }

    #[test]
    fn shared_dedupe_keys_and_interval() {
        let report = FailureReport {
            model: "m".into(),
            replica: "r0".into(),
            kind: FailureKind::ModelMissing,
        };
        assert_eq!(shared_key(&report), "mm.failure.model_missing.r0.m");
        let report = FailureReport {
            kind: FailureKind::Unreachable,
            ..report
        };
        assert_eq!(shared_key(&report), "mm.failure.unreachable.r0.m");
        assert!(is_due(None, 0));
        assert!(!is_due(Some(5_000 * MS), 5_999 * MS));
        assert!(is_due(Some(5_000 * MS), 6_000 * MS));
        // A clock that went back does not block reports for long.
        assert!(!is_due(Some(9_000 * MS), 5_000 * MS));
    }

    #[test]
    fn the_unreachable_message_names_the_replica() {
        assert_eq!(unreachable_message("r0"), "replica r0 unreachable; retry");
    }

    #[test]
    fn reports_each_failure_at_most_once_a_second() {
        let mut queue = FailureQueue::new();
        assert!(queue.is_empty());
        assert!(queue.push("m", "r0", FailureKind::Unreachable));
        assert!(!queue.push("m", "r0", FailureKind::Unreachable));
        assert!(queue.push("m", "r0", FailureKind::ModelMissing));
        assert!(queue.push("m", "r1", FailureKind::Unreachable));
        let due = queue.take_due(1_000 * MS);
        assert_eq!(due.len(), 3);
        assert_eq!(
            due[0],
            FailureReport {
                model: "m".into(),
                replica: "r0".into(),
                kind: FailureKind::Unreachable
            }
        );
        assert!(queue.is_empty());
        // Within the second: dropped.
        assert!(queue.push("m", "r0", FailureKind::Unreachable));
        assert!(queue.take_due(1_999 * MS).is_empty());
        assert!(queue.is_empty());
        // A second later: sent again.
        assert!(queue.push("m", "r0", FailureKind::Unreachable));
        assert_eq!(queue.take_due(2_000 * MS).len(), 1);
        // Old send times are forgotten.
        assert_eq!(queue.take_due(10_000 * MS).len(), 0);
        assert!(queue.last_sent.is_empty());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut queue = FailureQueue::new();
        for i in 0..MAX_QUEUED_REPORTS {
            assert!(queue.push(&format!("m{i}"), "r0", FailureKind::Unreachable));
        }
        assert!(!queue.push("one-more", "r0", FailureKind::Unreachable));
        assert_eq!(queue.take_due(0).len(), MAX_QUEUED_REPORTS);
    }
}
