//! The HTTP API: the admin API (`/api/v1/...`), health and metrics, and the internal route
//! call the gateway's filter makes (`/internal/v1/route/...`). Every error answer is JSON
//! `{"error": "..."}` with a 4xx status for the client's mistakes and 5xx for ours; bad
//! input never changes state because everything is validated before the pool is touched.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::pool::{Asked, ModelView, Pool, PoolError, Registered};
use mm_wire::ErrorBody;
use openapi::{Accepted, Applied, Deleted, DryRun, Health, ModelList, PutAnswer, ReplicaList};

mod aliases;
pub mod cluster;
pub mod forward;
mod guard;
mod openapi;
mod ops;
mod summary;
mod ui;

/// Largest accepted registration body. Specs are a few hundred bytes.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// When set, PUT and DELETE on the admin API need `Authorization: Bearer <token>`.
    pub admin_token: Option<Arc<str>>,
    /// When set, every `/internal/v1/*` call needs it in `x-mm-gateway-token`.
    pub gateway_token: Option<Arc<str>>,
    /// Host names the admin API answers to besides IP literals and `localhost`
    /// (`--allowed-host`, e.g. the Service's names in Kubernetes).
    pub allowed_hosts: Arc<[String]>,
    /// The instances sharing the store, for `GET /api/v1/cluster`.
    pub cluster: cluster::ClusterState,
}

/// Checks the bearer token of a mutating admin call (constant-time comparison).
fn authorize(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if guard::same_secret(given, token) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this call needs the admin bearer token (Authorization: Bearer ...)",
        ))
    }
}

/// Every route with its OpenAPI description: the router and the document
/// (`GET /api/v1/openapi.json`) are both made from this, so neither can list a route the
/// other lacks. Routes are only ever added here with `routes!`.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::document))
        .routes(routes!(list_models))
        .routes(routes!(get_model, put_model, delete_model))
        .routes(routes!(list_replicas))
        .routes(routes!(route_any))
        .routes(routes!(route_model))
        .routes(routes!(model_metadata))
        .routes(routes!(report_usage))
        .routes(routes!(routing_table))
        .routes(routes!(report_failure))
        .merge(ops::routes())
        .merge(aliases::routes())
        .merge(cluster::routes())
        .merge(ui::routes())
}

/// Builds the router; tests call it without a socket.
pub fn app(state: AppState) -> Router {
    let (router, _) = api().split_for_parts();
    router
        // Inside the guard: what reaches the leader was checked here first.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::to_leader,
        ))
        // Only routes that exist are guarded: an unknown path or method is a 404 or 405
        // whatever the request carries, and acts on nothing.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// This instance does not act on the pool: an instance that forwarded the call tries
    /// the next leader ([`forward::NOT_LEADER`]).
    not_leader: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            not_leader: false,
        }
    }

    /// Marks the answer as coming from an instance that does not lead.
    pub(crate) fn not_leader(mut self) -> Self {
        self.not_leader = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut answer = (
            self.status,
            Json(mm_wire::ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.not_leader {
            answer.headers_mut().insert(
                forward::NOT_LEADER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        answer
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let status = match &e {
            PoolError::UnknownModel(_)
            | PoolError::UnknownReplica(_)
            | PoolError::UnknownVersion { .. }
            | PoolError::UnknownAlias(_) => StatusCode::NOT_FOUND,
            PoolError::NameTaken { .. } | PoolError::AliasTarget { .. } => StatusCode::CONFLICT,
            PoolError::BadAlias(_) => StatusCode::BAD_REQUEST,
            PoolError::AliasNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            PoolError::UpdateInProgress { .. } => StatusCode::CONFLICT,
            PoolError::Spec(_)
            | PoolError::ReservedName(_)
            | PoolError::TooBig { .. }
            | PoolError::TooManyCopies { .. }
            | PoolError::BadReport(_) => StatusCode::BAD_REQUEST,
            PoolError::LoadFailed { .. }
            | PoolError::NoCapacity { .. }
            | PoolError::EvictionFailed { .. }
            | PoolError::Store(_)
            | PoolError::Overloaded(_)
            | PoolError::StillLoading { .. }
            | PoolError::NoHealthyReplica
            | PoolError::NotLeader => StatusCode::SERVICE_UNAVAILABLE,
            PoolError::TooManyReporters(_) => StatusCode::TOO_MANY_REQUESTS,
            PoolError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if matches!(e, PoolError::NotLeader) {
            return ApiError::new(status, e.to_string()).not_leader();
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "internal error");
            return ApiError::new(status, "internal error; see the pool-manager log");
        }
        ApiError::new(status, e.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid path: {}", e.body_text()),
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A sequence number or generation from a query: at most 2^63 - 1 (the document's int64).
fn in_range(value: Option<u64>, what: &str) -> ApiResult<Option<u64>> {
    match value {
        Some(v) if i64::try_from(v).is_err() => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what} must be at most {}", i64::MAX),
        )),
        v => Ok(v),
    }
}

/// Runs an admin write to its end whether or not the client waits for the answer. axum
/// drops a handler's future when its client disconnects; a write dropped between its
/// durable commit and the table change (a delete waiting for a load to release the model,
/// an update waiting to apply) would leave the registry and the table disagreeing.
async fn to_completion<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T, PoolError>> + Send + 'static,
) -> ApiResult<T> {
    match tokio::spawn(write).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(PoolError::Internal(format!("admin write failed: {e}")).into()),
    }
}

/// Liveness: answers as long as the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "serving", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "every metric", body = String,
     content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 500, description = "the metrics could not be encoded", body = ErrorBody)))]
async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.metrics)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Models per page (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Start after this model name (the previous page's `next`).
    after: Option<String>,
}

/// Registered models in name order, a page at a time.
#[utoipa::path(get, path = "/api/v1/models", tag = "models", params(ListParams), responses(
    (status = 200, description = "a page of models", body = ModelList),
    (status = 400, description = "a bad limit or query", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn list_models(
    State(state): State<AppState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<ModelList>> {
    let Query(params) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let (models, more) = state.pool.models(params.after.as_deref(), limit);
    let next = more
        .then(|| models.last().map(|m| m.name.clone()))
        .flatten();
    Ok(Json(ModelList { models, next }))
}

/// One model: spec, state, copies, last error, traffic.
#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "the model's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")), responses(
    (status = 200, description = "the model", body = ModelView),
    (status = 400, description = "an invalid name", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 404, description = "no such model", body = ErrorBody)))]
async fn get_model(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ModelView>> {
    let Path(name) = name?;
    Ok(Json(state.pool.model(&name)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct PutParams {
    /// Check the spec and say what would happen (created, updated, unchanged), changing
    /// nothing: `mmctl models apply` checks every document of a file before applying any.
    #[serde(default)]
    dry_run: bool,
}

/// A write's body, at most [`MAX_SPEC_BYTES`] (`what` names it in the 413).
async fn read_body(body: Body, what: &str) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, MAX_SPEC_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{what} is larger than {MAX_SPEC_BYTES} bytes"),
            )
        })
}

/// A named resource's write: the name from the path, checked before a byte of the body is
/// read, then the body.
pub(super) async fn name_and_body(
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<(String, bytes::Bytes)> {
    let Path(name) = name?;
    mm_wire::validate_model_name(&name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let body = read_body(body, "request body").await?;
    Ok((name, body))
}

/// Registers a model or updates its spec; runs to its end even if the client hangs up.
#[utoipa::path(put, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "the model's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"), PutParams),
    request_body(content = crate::spec::SpecRequest, content_type = "application/json"),
    security((), ("admin" = [])), responses(
    (status = 200, description = "updated, or unchanged; with dryRun, what would happen", body = PutAnswer),
    (status = 201, description = "registered", body = ModelView),
    (status = 400, description = "an invalid name or spec", body = ErrorBody),
    (status = 401, description = "the admin token is missing or wrong", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 413, description = "a body over 64 KiB", body = ErrorBody),
    (status = 415, description = "a body that is not JSON", body = ErrorBody),
    (status = 503, description = "the registry could not be saved", body = ErrorBody)))]
async fn put_model(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<PutParams>, QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let (name, body) = name_and_body(name, body).await?;
    let Query(params) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if params.dry_run {
        let what = state.pool.check_registration(&name, &body).await?;
        return Ok(Json(PutAnswer::DryRun(DryRun {
            dry_run: true,
            result: registered_text(what).to_owned(),
        }))
        .into_response());
    }
    let pool = state.pool.clone();
    let (what, view) = to_completion(async move { pool.register(&name, &body).await }).await?;
    let status = match what {
        Registered::Created => StatusCode::CREATED,
        Registered::Updated | Registered::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(PutAnswer::Model(Box::new(view)))).into_response())
}

fn registered_text(what: Registered) -> &'static str {
    match what {
        Registered::Created => "created",
        Registered::Updated => "updated",
        Registered::Unchanged => "unchanged",
    }
}

/// Unloads a model everywhere and forgets it; runs to its end even if the client hangs up.
#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "the model's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")),
    security((), ("admin" = [])), responses(
    (status = 200, description = "deleted", body = Deleted),
    (status = 400, description = "an invalid name", body = ErrorBody),
    (status = 401, description = "the admin token is missing or wrong", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 404, description = "no such model", body = ErrorBody),
    (status = 503, description = "the registry could not be saved", body = ErrorBody)))]
async fn delete_model(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Deleted>> {
    authorize(&state, &headers)?;
    let Path(name) = name?;
    let pool = state.pool.clone();
    let deleted = name.clone();
    to_completion(async move { pool.delete(&deleted).await }).await?;
    Ok(Json(Deleted { deleted: name }))
}

/// Every replica: address, health, draining, capacity and use, models.
#[utoipa::path(get, path = "/api/v1/replicas", tag = "replicas", responses(
    (status = 200, description = "the replicas", body = ReplicaList),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn list_replicas(State(state): State<AppState>) -> Json<ReplicaList> {
    Json(ReplicaList {
        replicas: state.pool.replicas(),
    })
}

/// The filter's route call: where the model's copy is, loading it first if needed.
#[utoipa::path(get, path = "/internal/v1/route/{name}", tag = "gateway",
    params(("name" = String, Path, description = "the model's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")),
    security((), ("gateway" = [])), responses(
    (status = 200, description = "where to send the request", body = mm_wire::RouteResponse),
    (status = 400, description = "an invalid name", body = ErrorBody),
    (status = 401, description = "the gateway token is missing or wrong", body = ErrorBody),
    (status = 404, description = "no such model", body = ErrorBody),
    (status = 503, description = "the model could not be loaded now", body = ErrorBody)))]
async fn route_model(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<mm_wire::RouteResponse>> {
    let Path(name) = name?;
    Ok(Json(state.pool.route(&name).await?))
}

/// What the filter's metadata call asks (`?for=metadata|ready|config&version=V&grpc=true`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MetadataQuery {
    /// `metadata`, `ready` or `config`.
    #[serde(rename = "for")]
    asked: String,
    /// The version the request names (1 to 19 digits).
    #[serde(default)]
    version: Option<String>,
    /// The request is a gRPC call: the answer carries its message.
    #[serde(default)]
    grpc: bool,
}

/// The filter's metadata call, for a metadata or readiness request whose model is in none
/// of its tables: where the model's copy is, or (loaded nowhere) the answer from the
/// metadata kept from its last load. Never loads for `ready`.
#[utoipa::path(get, path = "/internal/v1/metadata/{name}", tag = "gateway",
    params(("name" = String, Path, description = "the model's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"), MetadataQuery),
    security((), ("gateway" = [])), responses(
    (status = 200, description = "where to send the request, or the answer", body = mm_wire::MetadataAnswer),
    (status = 400, description = "an invalid name, version or `for`", body = ErrorBody),
    (status = 401, description = "the gateway token is missing or wrong", body = ErrorBody),
    (status = 404, description = "no such model or version", body = ErrorBody),
    (status = 503, description = "the model could not be loaded now (metadata never kept)", body = ErrorBody)))]
async fn model_metadata(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<MetadataQuery>, QueryRejection>,
) -> ApiResult<Json<mm_wire::MetadataAnswer>> {
    let Path(name) = name?;
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    let version = match query.version {
        Some(v) if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "version must be 1 to 19 ASCII digits",
            ))
        }
        v => v,
    };
    let asked = match query.asked.as_str() {
        "metadata" => Asked::Metadata(version),
        "ready" => Asked::Ready,
        "config" => Asked::Config,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "for must be metadata, ready or config",
            ))
        }
    };
    let answer = state.pool.metadata_answer(&name, asked, query.grpc).await?;
    Ok(Json(answer))
}

/// The filter's route call for requests that name no model: any healthy replica.
#[utoipa::path(get, path = "/internal/v1/route", tag = "gateway",
    security((), ("gateway" = [])), responses(
    (status = 200, description = "a healthy replica", body = mm_wire::RouteResponse),
    (status = 401, description = "the gateway token is missing or wrong", body = ErrorBody),
    (status = 503, description = "no replica is healthy", body = ErrorBody)))]
async fn route_any(State(state): State<AppState>) -> ApiResult<Json<mm_wire::RouteResponse>> {
    Ok(Json(state.pool.any_replica()?))
}

/// Largest accepted usage report (10,000 entries of ~100 bytes).
const MAX_REPORT_BYTES: usize = 2 << 20;

/// The filter's usage report (requests and requests in flight per model and replica).
#[utoipa::path(post, path = "/internal/v1/usage", tag = "gateway",
    request_body(content = mm_wire::UsageReport, content_type = "application/json"),
    security((), ("gateway" = [])), responses(
    (status = 200, description = "how many entries were applied", body = Applied),
    (status = 400, description = "a malformed or out-of-bounds report; nothing applied", body = ErrorBody),
    (status = 401, description = "the gateway token is missing or wrong", body = ErrorBody),
    (status = 413, description = "a report over 2 MiB", body = ErrorBody),
    (status = 415, description = "a body that is not JSON", body = ErrorBody),
    (status = 429, description = "too many reporters have requests in flight", body = ErrorBody)))]
async fn report_usage(State(state): State<AppState>, body: Body) -> ApiResult<Json<Applied>> {
    let body = axum::body::to_bytes(body, MAX_REPORT_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("usage report is larger than {MAX_REPORT_BYTES} bytes"),
            )
        })?;
    let report: mm_wire::UsageReport = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid usage report: {e}"),
        )
    })?;
    let applied = state.pool.report_usage(report)?;
    Ok(Json(Applied { applied }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct TableParams {
    /// The generation the caller has.
    since: Option<u64>,
    /// The epoch the caller has.
    epoch: Option<String>,
    /// Hold the call up to this long for a newer generation (at most 30,000).
    #[param(maximum = 30000)]
    wait_ms: Option<u64>,
}

/// The routing table (a long poll when the caller's epoch and generation are current).
#[utoipa::path(get, path = "/internal/v1/table", tag = "gateway", params(TableParams),
    security((), ("gateway" = [])), responses(
    (status = 200, description = "the table", body = mm_wire::RoutingTable),
    (status = 400, description = "a bad query", body = ErrorBody),
    (status = 401, description = "the gateway token is missing or wrong", body = ErrorBody)))]
async fn routing_table(
    State(state): State<AppState>,
    query: Result<Query<TableParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    let wait_ms = params.wait_ms.unwrap_or(0);
    if wait_ms > mm_wire::MAX_TABLE_WAIT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("waitMs must be at most {}", mm_wire::MAX_TABLE_WAIT_MS),
        ));
    }
    let json = state
        .pool
        .routing_table(
            params.epoch.as_deref(),
            in_range(params.since, "since")?,
            std::time::Duration::from_millis(wait_ms),
        )
        .await;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        json.as_str().to_owned(),
    )
        .into_response())
}

/// The filter's report of an unreachable replica or a missing model (checked before acting).
#[utoipa::path(post, path = "/internal/v1/failure", tag = "gateway",
    request_body(content = mm_wire::FailureReport, content_type = "application/json"),
    security((), ("gateway" = [])), responses(
    (status = 200, description = "taken (it is checked in the background)", body = Accepted),
    (status = 400, description = "a malformed report", body = ErrorBody),
    (status = 401, description = "the gateway token is missing or wrong", body = ErrorBody),
    (status = 413, description = "a report over 64 KiB", body = ErrorBody),
    (status = 415, description = "a body that is not JSON", body = ErrorBody)))]
async fn report_failure(State(state): State<AppState>, body: Body) -> ApiResult<Json<Accepted>> {
    let body = read_body(body, "failure report").await?;
    let report: mm_wire::FailureReport = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid failure report: {e}"),
        )
    })?;
    state.pool.report_failure(report)?;
    Ok(Json(Accepted { accepted: true }))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hardening_tests;
