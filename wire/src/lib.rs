//! The contract between the data plane (the Envoy filter) and the control plane (the
//! pool-manager): which model names are acceptable, and the shape of the internal route
//! call. Both sides depend on this crate so the rules cannot drift apart; it has no I/O and
//! compiles for `wasm32-wasip1` as well as the host.

use serde::{Deserialize, Serialize};

pub mod redact;
pub use redact::{redact_uri, scrub_uris};

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

/// Most requests in flight one report may claim for one (model, replica). One Envoy worker
/// holds far fewer open requests (its connections are bounded long before this), so a
/// larger value is not a count but a forged or broken report, refused whole.
pub const MAX_REPORTED_IN_FLIGHT: u64 = 1_000_000;

/// Most requests one report may count for one (model, replica). A filter carries unsent
/// counts over while the pool-manager is away, so this is generous (hours at 100,000
/// requests per second); a filter past it reports this much and keeps the rest for the
/// next report.
pub const MAX_REPORTED_REQUESTS: u64 = 1_000_000_000;

/// Longest reporter id (see [`UsageReport::reporter`]).
pub const MAX_REPORTER_LEN: usize = 256;

/// The request header that carries the shared gateway token on every call the filter
/// makes to the pool-manager's internal routes (`/internal/v1/*`).
pub const GATEWAY_TOKEN_HEADER: &str = "x-mm-gateway-token";

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// `IP:PORT` of the replica's gRPC endpoint, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_address: Option<String>,
    /// The model's inputs from its V2 metadata, when known (for KServe V1 translation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<TensorSpec>>,
    /// The model's Triton-side name when it differs from `model` (see
    /// [`TableEntry::upstream`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// Path prefix of the gateway's metadata call, made instead of the route call for a
/// metadata or readiness request whose model is in none of its tables:
/// `GET {METADATA_PATH_PREFIX}{model}?for=metadata|ready|config[&version=V][&grpc=true]`.
/// It never loads a model for `ready`; for `metadata` and `config` only when nothing was
/// kept from an earlier load (then it answers like the route call).
pub const METADATA_PATH_PREFIX: &str = "/internal/v1/metadata/";

/// The pool-manager's answer to a metadata call: exactly one of `route` and `standby`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataAnswer {
    /// The model is loaded (or was loaded for this call): the request goes to this copy
    /// like any routed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteResponse>,
    /// The model is registered and loaded nowhere: the gateway answers itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<Standby>,
}

/// What the gateway answers for a registered model that is loaded nowhere.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Standby {
    /// Whether a request for the model would be served (after a load): false while its
    /// last load failed and it waits for the retry backoff.
    pub ready: bool,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The HTTP answer's JSON for `for=metadata` (the V2 metadata under the client's model
    /// name) and `for=config` (the model configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub body: Option<serde_json::Value>,
    /// For a gRPC call: the answer message (`ModelMetadataResponse` or
    /// `ModelReadyResponse`), protobuf in standard base64, without the gRPC frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_message: Option<String>,
    /// For a gRPC call: a healthy replica whose gRPC port carries the answer (Envoy answers
    /// a gRPC call by itself only with a status, never with a message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<RouteResponse>,
}

/// Path of the routing table: `GET {TABLE_PATH}?since=G&waitMs=W` answers the whole table
/// at once if its generation differs from `G` (or the pool-manager restarted), and
/// otherwise holds the call up to `W` milliseconds (at most [`MAX_TABLE_WAIT_MS`]) for a
/// change: a long poll, so the gateway learns of loads, evictions and failed replicas
/// within milliseconds without polling hard.
pub const TABLE_PATH: &str = "/internal/v1/table";

/// Longest hold of a table long poll.
pub const MAX_TABLE_WAIT_MS: u64 = 30_000;

/// Every routable model and where its loaded copies are: what the gateway routes warm
/// requests by, with no call to the pool-manager.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTable {
    /// Identifies one run of the pool-manager: a new epoch replaces the gateway's table
    /// whatever the generations (they restart with the process).
    pub epoch: String,
    /// Grows with every change of the table within an epoch.
    pub generation: u64,
    pub models: Vec<TableEntry>,
    /// Names that stand for one or more models, by weight (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<AliasEntry>,
}

/// Most models one alias may name.
pub const MAX_ALIAS_TARGETS: usize = 16;

/// Largest weight of one alias target (weights are relative; 100 is usual).
pub const MAX_ALIAS_WEIGHT: u32 = 10_000;

/// A name that stands for models: a request naming it goes to one of `targets`, chosen
/// with a probability proportional to its weight, and is renamed to the chosen model
/// (its Triton-side name). Alias and model names share one namespace.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AliasEntry {
    pub name: String,
    pub targets: Vec<AliasTarget>,
}

/// One model an alias stands for, and its weight (1 to [`MAX_ALIAS_WEIGHT`]).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AliasTarget {
    pub model: String,
    pub weight: u32,
}

/// One routable model.
///
/// Watched models: while an entry has `watch: true`, a filter sends its usage report
/// ([`USAGE_PATH`]) as soon as its requests in flight for one of the model's (model,
/// replica) pairs fall to zero after the pool-manager may have been told they were above
/// zero (the last report it handed out, or one that failed and may have arrived, listed
/// them), instead of waiting for the next report period. The report is the ordinary one,
/// the reporter's complete picture, so nothing else changes on either side. A filter also
/// sends it at once when a table marking such a model arrives while that is already the
/// case. Models without `watch` never cause an early report, so warm requests make no
/// call to the pool-manager. The flag is set only while a load waits for room that such a
/// copy holds, so it is rare and short.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableEntry {
    pub model: String,
    /// Its loaded copies on healthy replicas; never empty in a table.
    pub replicas: Vec<Endpoint>,
    /// Its inputs from the V2 metadata, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<TensorSpec>>,
    /// The pool-manager is waiting for this model's requests to end: it needs the memory
    /// of a copy that has requests in flight, to load another model. See [`TableEntry`]'s
    /// "watched models" contract. Absent (false) for every other model.
    #[serde(default, skip_serializing_if = "is_false")]
    pub watch: bool,
    /// The name the replicas know this model by, when it is not `model`: a model whose
    /// spec was updated while loaded serves its new version as another Triton model
    /// ([`version_name`]), and the gateway renames each request to it. Absent for every
    /// other model, which Triton knows by its own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// What separates a model's name from its version digest in a Triton-side name.
pub const VERSION_SEPARATOR: &str = "--";

/// Hex digits of the spec digest in a Triton-side version name.
pub const VERSION_DIGEST_LEN: usize = 8;

/// The Triton-side name of a version of `model` whose spec digest starts with `digest`
/// (lowercase hex, at least [`VERSION_DIGEST_LEN`] digits): `{model}--{8 hex}`, with
/// `model` cut so the result stays within [`MAX_MODEL_NAME_LEN`]. It is a valid model
/// name (and so a valid Triton model and directory name) whenever `model` is one.
pub fn version_name(model: &str, digest: &str) -> String {
    let keep = MAX_MODEL_NAME_LEN - VERSION_SEPARATOR.len() - VERSION_DIGEST_LEN;
    let base = model.get(..keep.min(model.len())).unwrap_or(model);
    let digest = digest.get(..VERSION_DIGEST_LEN).unwrap_or(digest);
    format!("{base}{VERSION_SEPARATOR}{digest}")
}

/// Whether `name` has the shape of a Triton-side version name (`...--` and 8 lowercase
/// hex digits): such names are reserved, never registered by a client.
pub fn is_version_name(name: &str) -> bool {
    let Some((base, digest)) = name.rsplit_once(VERSION_SEPARATOR) else {
        return false;
    };
    !base.is_empty()
        && digest.len() == VERSION_DIGEST_LEN
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where one copy is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub replica: String,
    /// HTTP `IP:PORT`.
    pub address: String,
    /// gRPC `IP:PORT`, when the replica has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_address: Option<String>,
}

/// A tensor as the V2 model metadata describes it (`-1` for a variable dimension).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Path of the gateway's failure report: `POST` a [`FailureReport`] when a routed request
/// found its replica unreachable or without the model. The pool-manager checks the claim
/// (probes the replica, asks it about the model) and fixes its table; the report alone
/// changes nothing, so a misbehaving caller cannot unload anything.
pub const FAILURE_PATH: &str = "/internal/v1/failure";

/// What the gateway saw go wrong on the data path.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureReport {
    pub model: String,
    pub replica: String,
    pub kind: FailureKind,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The connection to the replica failed (refused, reset, timed out).
    Unreachable,
    /// The replica answered that it does not have the model loaded.
    ModelMissing,
}

/// Every error body on the admin API, the internal API and the gateway.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageReport {
    /// Stable for the life of one filter instance, unique across instances.
    pub reporter: String,
    pub entries: Vec<UsageEntry>,
}

/// Why a usage report was refused as a whole (nothing of it is applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The reporter id is empty or longer than [`MAX_REPORTER_LEN`].
    #[error("reporter must be 1 to {MAX_REPORTER_LEN} bytes")]
    Reporter,
    /// More than [`MAX_USAGE_ENTRIES`] entries.
    #[error("more than {MAX_USAGE_ENTRIES} entries")]
    TooManyEntries,
    /// An entry's `inFlight` is above [`MAX_REPORTED_IN_FLIGHT`].
    #[error("entry {index}: inFlight {value} is above the limit of {MAX_REPORTED_IN_FLIGHT}")]
    InFlight { index: usize, value: u64 },
    /// An entry's `requests` is above [`MAX_REPORTED_REQUESTS`].
    #[error("entry {index}: requests {value} is above the limit of {MAX_REPORTED_REQUESTS}")]
    Requests { index: usize, value: u64 },
}

impl UsageReport {
    /// Checks the report against the bounds above. Names are not checked here: an entry
    /// naming an unknown model or replica is skipped by the receiver, not refused.
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.reporter.is_empty() || self.reporter.len() > MAX_REPORTER_LEN {
            return Err(ReportError::Reporter);
        }
        if self.entries.len() > MAX_USAGE_ENTRIES {
            return Err(ReportError::TooManyEntries);
        }
        for (index, e) in self.entries.iter().enumerate() {
            if e.in_flight > MAX_REPORTED_IN_FLIGHT {
                return Err(ReportError::InFlight {
                    index,
                    value: e.in_flight,
                });
            }
            if e.requests > MAX_REPORTED_REQUESTS {
                return Err(ReportError::Requests {
                    index,
                    value: e.requests,
                });
            }
        }
        Ok(())
    }
}

/// One (model, replica) line of a [`UsageReport`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
            grpc_address: None,
            inputs: None,
            upstream: None,
        };
        let json = serde_json::to_string(&any).unwrap();
        assert_eq!(json, r#"{"replica":"r0","address":"127.0.0.1:8000"}"#);
    }

    #[test]
    fn table_and_failure_reports_use_the_documented_json() {
        let table = RoutingTable {
            epoch: "e1".into(),
            generation: 7,
            aliases: vec![],
            models: vec![TableEntry {
                model: "m".into(),
                replicas: vec![Endpoint {
                    replica: "r0".into(),
                    address: "127.0.0.1:8000".into(),
                    grpc_address: Some("127.0.0.1:8001".into()),
                }],
                inputs: Some(vec![TensorSpec {
                    name: "x".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 4],
                }]),
                watch: false,
                upstream: None,
            }],
        };
        let json = serde_json::to_string(&table).unwrap();
        assert_eq!(
            json,
            r#"{"epoch":"e1","generation":7,"models":[{"model":"m","replicas":[{"replica":"r0","address":"127.0.0.1:8000","grpcAddress":"127.0.0.1:8001"}],"inputs":[{"name":"x","datatype":"FP32","shape":[-1,4]}]}]}"#
        );
        assert_eq!(serde_json::from_str::<RoutingTable>(&json).unwrap(), table);
        // A watched model says so; an old table without the field reads as unwatched.
        let mut watched = table.clone();
        watched.models[0].watch = true;
        let json = serde_json::to_string(&watched).unwrap();
        assert!(
            json.ends_with(r#""shape":[-1,4]}],"watch":true}]}"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<RoutingTable>(&json).unwrap(),
            watched
        );
        let failure: FailureReport =
            serde_json::from_str(r#"{"model":"m","replica":"r0","kind":"model_missing"}"#).unwrap();
        assert_eq!(failure.kind, FailureKind::ModelMissing);
        assert!(serde_json::from_str::<FailureReport>(
            r#"{"model":"m","replica":"r0","kind":"x"}"#
        )
        .is_err());
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

    #[test]
    fn usage_reports_out_of_bounds_are_refused() {
        let entry = |requests, in_flight| UsageEntry {
            model: "m".into(),
            replica: "r0".into(),
            requests,
            in_flight,
        };
        let report = |reporter: &str, entries| UsageReport {
            reporter: reporter.into(),
            entries,
        };
        let max = (MAX_REPORTED_REQUESTS, MAX_REPORTED_IN_FLIGHT);
        assert_eq!(report("w", vec![entry(max.0, max.1)]).validate(), Ok(()));
        assert_eq!(
            report("w", vec![entry(0, 0), entry(0, u64::MAX)]).validate(),
            Err(ReportError::InFlight {
                index: 1,
                value: u64::MAX
            })
        );
        assert_eq!(
            report("w", vec![entry(max.0 + 1, 0)]).validate(),
            Err(ReportError::Requests {
                index: 0,
                value: max.0 + 1
            })
        );
        assert_eq!(report("", vec![]).validate(), Err(ReportError::Reporter));
        let long = "w".repeat(MAX_REPORTER_LEN + 1);
        assert_eq!(report(&long, vec![]).validate(), Err(ReportError::Reporter));
        let many = vec![entry(1, 1); MAX_USAGE_ENTRIES + 1];
        assert_eq!(
            report("w", many).validate(),
            Err(ReportError::TooManyEntries)
        );
    }

    #[test]
    fn version_names_are_valid_reserved_and_bounded() {
        let v = version_name("fraud", "0123abcdef99");
        assert_eq!(v, "fraud--0123abcd");
        assert_eq!(validate_model_name(&v), Ok(()));
        assert!(is_version_name(&v));
        let long = version_name(&"m".repeat(MAX_MODEL_NAME_LEN), "ffffffff");
        assert_eq!(long.len(), MAX_MODEL_NAME_LEN);
        assert_eq!(validate_model_name(&long), Ok(()));
        assert!(is_version_name(&long));
        for name in [
            "fraud",
            "a--1234567",
            "a--0123ABCD",
            "--01234567",
            "a-01234567",
        ] {
            assert!(!is_version_name(name), "{name}");
        }
        // A renamed entry says so; an old table without the field reads as not renamed.
        let json = r#"{"model":"m","replicas":[],"upstream":"m--0123abcd"}"#;
        let entry: TableEntry = serde_json::from_str(json).unwrap();
        assert_eq!(entry.upstream.as_deref(), Some("m--0123abcd"));
        assert_eq!(serde_json::to_string(&entry).unwrap(), json);
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

/// Path of the cluster view: the pool-manager instances sharing one store, which leads,
/// and this instance's role ([`ClusterView`]). Every instance answers it.
pub const CLUSTER_PATH: &str = "/api/v1/cluster";

/// The answer to `GET {CLUSTER_PATH}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// Where the registry lives, e.g. `embedded (/var/lib/mm/registry.redb)` or
    /// `etcd (https://e1:2379,https://e2:2379; prefix /mm/prod/)`.
    pub store: String,
    /// The instance that answered.
    pub instance: ClusterMember,
    /// Its role now.
    pub role: ClusterRole,
    /// The leader as this instance knows it (itself when it leads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<ClusterMember>,
    /// Every instance whose lease lives, by id.
    pub members: Vec<ClusterMember>,
    /// Why `members` could not be read now (the store unavailable), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET {READY_PATH}`: whether this instance can serve (the store reachable, its copy of
/// the table current, a leader known); 200 when it can, 503 with the reason when not.
/// Envoy's active health checks of the pool-manager cluster use it; `/healthz` is liveness.
pub const READY_PATH: &str = "/readyz";

/// The answer to `GET {READY_PATH}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub ready: bool,
    /// This instance's role now.
    pub role: ClusterRole,
    /// The leader's id, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Why it cannot serve, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One pool-manager instance.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMember {
    pub id: String,
    /// Where the other instances reach its API.
    pub url: String,
}

/// What an instance does in its cluster.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// The only instance (the embedded store): it does everything.
    Sole,
    /// It places, loads, unloads and writes the pool's state.
    Leader,
    /// It serves from its copy and hands changes to the leader.
    Follower,
}
