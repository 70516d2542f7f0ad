//! The alias routes of the admin API: `GET /api/v1/aliases`, and `GET`, `PUT`, `DELETE`
//! on `/api/v1/aliases/{name}` (see `pool::aliases`).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{authorize, to_completion, ApiResult, AppState};
use crate::pool::AliasView;
use mm_wire::ErrorBody;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_aliases))
        .routes(routes!(get_alias, put_alias, delete_alias))
}

/// Every alias.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AliasList {
    pub aliases: Vec<AliasView>,
}

/// The answer to a delete.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AliasDeleted {
    pub deleted: String,
}

/// Every alias, in name order.
#[utoipa::path(get, path = "/api/v1/aliases", tag = "aliases", responses(
    (status = 200, description = "every alias", body = AliasList),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn list_aliases(State(state): State<AppState>) -> Json<AliasList> {
    Json(AliasList {
        aliases: state.pool.aliases(),
    })
}

/// One alias: its targets and weights.
#[utoipa::path(get, path = "/api/v1/aliases/{name}", tag = "aliases",
    params(("name" = String, Path, description = "the alias's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")), responses(
    (status = 200, description = "the alias", body = AliasView),
    (status = 400, description = "an invalid name", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 404, description = "no such alias", body = ErrorBody)))]
async fn get_alias(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<AliasView>> {
    let Path(name) = name?;
    Ok(Json(state.pool.alias(&name)?))
}

/// Creates an alias or moves it; a move takes effect once each new target has as many
/// loaded copies as the old targets had (loaded first). Runs to its end even if the
/// client hangs up.
#[utoipa::path(put, path = "/api/v1/aliases/{name}", tag = "aliases",
    params(("name" = String, Path, description = "the alias's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")),
    request_body(content = crate::pool::AliasRequest, content_type = "application/json"),
    security((), ("admin" = [])), responses(
    (status = 200, description = "moved", body = AliasView),
    (status = 201, description = "created", body = AliasView),
    (status = 400, description = "an invalid name, target or weight", body = ErrorBody),
    (status = 401, description = "the admin token is missing or wrong", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 409, description = "the name is a model's", body = ErrorBody),
    (status = 413, description = "a body over 64 KiB", body = ErrorBody),
    (status = 415, description = "a body that is not JSON", body = ErrorBody),
    (status = 503, description = "a new target could not be loaded, or the store is unavailable; the alias is unchanged", body = ErrorBody)))]
async fn put_alias(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let (name, body) = super::name_and_body(name, body).await?;
    let pool = state.pool.clone();
    let (created, view) = to_completion(async move { pool.put_alias(&name, &body).await }).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

/// Deletes an alias.
#[utoipa::path(delete, path = "/api/v1/aliases/{name}", tag = "aliases",
    params(("name" = String, Path, description = "the alias's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")),
    security((), ("admin" = [])), responses(
    (status = 200, description = "deleted", body = AliasDeleted),
    (status = 400, description = "an invalid name", body = ErrorBody),
    (status = 401, description = "the admin token is missing or wrong", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 404, description = "no such alias", body = ErrorBody),
    (status = 503, description = "the store is unavailable", body = ErrorBody)))]
async fn delete_alias(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<AliasDeleted>> {
    authorize(&state, &headers)?;
    let Path(name) = name?;
    let pool = state.pool.clone();
    let deleted = name.clone();
    to_completion(async move { pool.delete_alias(&deleted).await }).await?;
    Ok(Json(AliasDeleted { deleted: name }))
}
