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
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::pool::{Pool, PoolError, Registered};

mod guard;
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

/// Builds the router; tests call it without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/models", get(list_models))
        .route(
            "/api/v1/models/{name}",
            get(get_model).put(put_model).delete(delete_model),
        )
        .route("/api/v1/replicas", get(list_replicas))
        .route(mm_wire::ANY_REPLICA_PATH, get(route_any))
        .route(mm_wire::USAGE_PATH, post(report_usage))
        .route(mm_wire::TABLE_PATH, get(routing_table))
        .route(mm_wire::FAILURE_PATH, post(report_failure))
        .route(
            &format!("{}{{name}}", mm_wire::ROUTE_PATH_PREFIX),
            get(route_model),
        )
        .merge(ops::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(mm_wire::ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let status = match &e {
            PoolError::UnknownModel(_) | PoolError::UnknownReplica(_) => StatusCode::NOT_FOUND,
            PoolError::Spec(_)
            | PoolError::TooBig { .. }
            | PoolError::TooManyCopies { .. }
            | PoolError::BadReport(_) => StatusCode::BAD_REQUEST,
            PoolError::LoadFailed { .. }
            | PoolError::NoCapacity { .. }
            | PoolError::EvictionFailed { .. }
            | PoolError::Store(_)
            | PoolError::Overloaded(_)
            | PoolError::StillLoading { .. }
            | PoolError::NoHealthyReplica => StatusCode::SERVICE_UNAVAILABLE,
            PoolError::TooManyReporters(_) => StatusCode::TOO_MANY_REQUESTS,
            PoolError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<usize>,
    after: Option<String>,
}

async fn list_models(
    State(state): State<AppState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
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
    Ok(Json(json!({ "models": models, "next": next })))
}

async fn get_model(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Path(name) = name?;
    Ok(Json(json!(state.pool.model(&name)?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PutParams {
    /// Check the spec and say what would happen (created, updated, unchanged), changing
    /// nothing: `mmctl models apply` checks every document of a file before applying any.
    #[serde(default)]
    dry_run: bool,
}

async fn put_model(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<PutParams>, QueryRejection>,
    body: Body,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let Path(name) = name?;
    // Validate the name before reading a byte of the body.
    mm_wire::validate_model_name(&name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let body = axum::body::to_bytes(body, MAX_SPEC_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {MAX_SPEC_BYTES} bytes"),
            )
        })?;
    let Query(params) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if params.dry_run {
        let what = state.pool.check_registration(&name, &body).await?;
        return Ok(
            Json(json!({ "dryRun": true, "result": registered_text(what) })).into_response(),
        );
    }
    let pool = state.pool.clone();
    let (what, view) = to_completion(async move { pool.register(&name, &body).await }).await?;
    let status = match what {
        Registered::Created => StatusCode::CREATED,
        Registered::Updated | Registered::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(view)).into_response())
}

fn registered_text(what: Registered) -> &'static str {
    match what {
        Registered::Created => "created",
        Registered::Updated => "updated",
        Registered::Unchanged => "unchanged",
    }
}

async fn delete_model(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, &headers)?;
    let Path(name) = name?;
    let pool = state.pool.clone();
    let deleted = name.clone();
    to_completion(async move { pool.delete(&deleted).await }).await?;
    Ok(Json(json!({ "deleted": name })))
}

async fn list_replicas(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "replicas": state.pool.replicas() }))
}

async fn route_model(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<mm_wire::RouteResponse>> {
    let Path(name) = name?;
    Ok(Json(state.pool.route(&name).await?))
}

async fn route_any(State(state): State<AppState>) -> ApiResult<Json<mm_wire::RouteResponse>> {
    Ok(Json(state.pool.any_replica()?))
}

/// Largest accepted usage report (10,000 entries of ~100 bytes).
const MAX_REPORT_BYTES: usize = 2 << 20;

async fn report_usage(
    State(state): State<AppState>,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
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
    Ok(Json(json!({ "applied": applied })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TableParams {
    since: Option<u64>,
    epoch: Option<String>,
    wait_ms: Option<u64>,
}

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
            params.since,
            std::time::Duration::from_millis(wait_ms),
        )
        .await;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        json.as_str().to_owned(),
    )
        .into_response())
}

async fn report_failure(
    State(state): State<AppState>,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let body = axum::body::to_bytes(body, MAX_SPEC_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("failure report is larger than {MAX_SPEC_BYTES} bytes"),
            )
        })?;
    let report: mm_wire::FailureReport = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid failure report: {e}"),
        )
    })?;
    state.pool.report_failure(report)?;
    Ok(Json(json!({ "accepted": true })))
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
