//! The contract between the data plane (the Envoy filter) and the control plane (the
//! pool-manager): which model names are acceptable, and the shape of the internal route
//! call. Both sides depend on this crate so the rules cannot drift apart; it has no I/O and
//! compiles for `wasm32-wasip1` as well as the host.

use serde::{Deserialize, Serialize};

/// Longest model name accepted anywhere. Triton uses the name as a directory name, so it
/// must stay well below common file-name limits (255 bytes).
pub const MAX_MODEL_NAME_LEN: usize = 128;

/// Path prefix of the internal route call: `GET {ROUTE_PATH_PREFIX}{model}` asks the
/// pool-manager for the replica that serves `model` (loading it first if needed).
pub const ROUTE_PATH_PREFIX: &str = "/internal/v1/route/";

/// Path of the internal call that asks for any ready replica, for server-level requests
/// such as `/v2/health/ready` that name no model.
pub const ANY_REPLICA_PATH: &str = "/internal/v1/route";

/// Path of the usage report: `POST` a [`UsageReport`] here. The filter sends one per Envoy
/// worker every report period, so the pool-manager's LRU and copy scaling see real traffic
/// and requests in flight.
pub const USAGE_PATH: &str = "/internal/v1/usage";

/// Most entries one usage report may carry; the pool-manager refuses larger reports.
pub const MAX_USAGE_ENTRIES: usize = 10_000;

/// Why a model name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("model name is empty")]
    Empty,
    /// The name is longer than [`MAX_MODEL_NAME_LEN`] bytes.
    #[error("model name is longer than {MAX_MODEL_NAME_LEN} bytes")]
    TooLong,
    /// The first character is not an ASCII letter or digit (this also refuses `.`, `..`
    /// and hidden directories).
    #[error("model name must start with an ASCII letter or digit")]
    BadStart,
    /// A character outside `[A-Za-z0-9_.-]` (this refuses `/`, `\`, `%`, spaces, unicode).
    #[error("model name may contain only ASCII letters, digits, '_', '-' and '.'")]
    BadChar,
}

/// Checks a model name against the rules shared by the filter and the pool-manager.
///
/// A valid name is safe to use as a single path segment and as a directory name in a
/// Triton model repository: 1 to [`MAX_MODEL_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit.
pub fn validate_model_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let first = *bytes.first().ok_or(NameError::Empty)?;
    if bytes.len() > MAX_MODEL_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(NameError::BadChar);
    }
    Ok(())
}

/// The pool-manager's answer to a route call: where to send the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteResponse {
    /// The model the answer is for; absent for an any-replica answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The replica's name, for logs.
    pub replica: String,
    /// `IP:PORT` of the replica's HTTP endpoint. Always an IP literal, never a host name:
    /// Envoy's ORIGINAL_DST cluster connects to it as is.
    pub address: String,
}

/// Every error body on the admin API, the internal API and the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One sentence a person can act on.
    pub error: String,
}

/// What one reporter (one Envoy worker's filter) saw since its previous report.
///
/// Semantics the two sides rely on:
/// - `entries` is the reporter's complete picture: a (model, replica) pair that is absent
///   has no requests in flight from this reporter;
/// - `requests` counts requests routed since the last report that the pool-manager
///   acknowledged with a 2xx (so a lost report is not lost traffic);
/// - `in_flight` is the absolute number of requests routed and not yet finished;
/// - a reporter that stops reporting is forgotten after a few periods (its in-flight
///   counts expire), so an Envoy restart cannot pin models forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageReport {
    /// Stable for the life of one filter instance, unique across instances.
    pub reporter: String,
    pub entries: Vec<UsageEntry>,
}

/// One (model, replica) line of a [`UsageReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageEntry {
    pub model: String,
    /// The replica name from the [`RouteResponse`] the request was routed by.
    pub replica: String,
    pub requests: u64,
    pub in_flight: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["linear", "mlp_2", "fraud-model.v3", "A", "9lives"] {
            assert_eq!(validate_model_name(name), Ok(()), "{name}");
        }
        assert_eq!(validate_model_name(&"a".repeat(MAX_MODEL_NAME_LEN)), Ok(()));
    }

    #[test]
    fn refuses_names_that_are_not_safe_path_segments() {
        assert_eq!(validate_model_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_model_name(&"a".repeat(MAX_MODEL_NAME_LEN + 1)),
            Err(NameError::TooLong)
        );
        for name in [".", "..", ".hidden", "-x", "_x"] {
            assert_eq!(
                validate_model_name(name),
                Err(NameError::BadStart),
                "{name}"
            );
        }
        for name in ["a/b", "a\\b", "a%2fb", "a b", "modèle", "a:predict", "a\0"] {
            assert_eq!(validate_model_name(name), Err(NameError::BadChar), "{name}");
        }
    }

    #[test]
    fn route_response_uses_camel_case_and_omits_missing_model() {
        let any = RouteResponse {
            model: None,
            replica: "r0".into(),
            address: "127.0.0.1:8000".into(),
        };
        let json = serde_json::to_string(&any).unwrap();
        assert_eq!(json, r#"{"replica":"r0","address":"127.0.0.1:8000"}"#);
    }

    #[test]
    fn usage_report_round_trips_in_camel_case() {
        let report = UsageReport {
            reporter: "w1".into(),
            entries: vec![UsageEntry {
                model: "m".into(),
                replica: "r0".into(),
                requests: 3,
                in_flight: 1,
            }],
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"reporter":"w1","entries":[{"model":"m","replica":"r0","requests":3,"inFlight":1}]}"#
        );
        assert_eq!(serde_json::from_str::<UsageReport>(&json).unwrap(), report);
        assert!(
            serde_json::from_str::<UsageReport>(r#"{"reporter":"w","entries":[],"x":1}"#).is_err()
        );
    }

    proptest! {
        #[test]
        fn valid_names_never_contain_separators(name in ".{0,200}") {
            if validate_model_name(&name).is_ok() {
                prop_assert!(!name.contains('/') && !name.contains('\\'));
                prop_assert!(!name.starts_with('.'));
                prop_assert!(name.len() <= MAX_MODEL_NAME_LEN);
            }
        }
    }
}
