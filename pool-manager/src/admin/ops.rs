//! The operator's endpoints: recent events (a page, or a live Server-Sent Events stream),
//! a JSON summary of the pool's counters for the status page, and draining a replica.
//! Reads need no token; drain and undrain need the admin token like PUT and DELETE.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{authorize, summary, ApiError, ApiResult, AppState, MAX_PAGE};
use crate::events::{Event, Page};
use crate::pool::{Pool, ReplicaView};
use mm_wire::ErrorBody;

/// Events returned when no `limit` is given.
const DEFAULT_EVENTS: usize = 100;
/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The routes of this module.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(stream_events))
        .routes(routes!(get_summary))
        .routes(routes!(drain))
        .routes(routes!(undrain))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventParams {
    /// Events after this sequence number (default: the newest).
    after: Option<u64>,
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    query.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", e.body_text()),
        )
    })
}

/// `GET /api/v1/events?after=SEQ&limit=N`: the first `N` events after `SEQ`, or the newest
/// `N` without `after`; oldest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "operations", params(EventParams), responses(
    (status = 200, description = "a page of events", body = Page),
    (status = 400, description = "a bad query", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn list_events(
    State(state): State<AppState>,
    params: Result<Query<EventParams>, QueryRejection>,
) -> ApiResult<Json<Page>> {
    let params = query(params)?;
    let limit = params.limit.unwrap_or(DEFAULT_EVENTS);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let after = super::in_range(params.after, "after")?;
    Ok(Json(state.pool.events().page(after, limit)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamParams {
    /// Replay the buffered events after this sequence number first (or `Last-Event-ID`).
    after: Option<u64>,
}

/// `GET /api/v1/events/stream[?after=SEQ]`: Server-Sent Events, one `data:` JSON event
/// each with `id:` its sequence number. With `after` (or a `Last-Event-ID` header, as a
/// reconnecting browser sends) the buffered events after it come first. Ends at shutdown.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "operations", params(StreamParams),
    responses(
    (status = 200, description = "Server-Sent Events: `id:` the sequence number, `data:` an Event",
     body = String, content_type = "text/event-stream"),
    (status = 400, description = "a bad query", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn stream_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> ApiResult<Response> {
    let params = query(params)?;
    let after = super::in_range(params.after, "after")?.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    });
    let events = live_events(state.pool.clone(), after).map(|e| {
        Ok::<_, Infallible>(
            SseEvent::default()
                .id(e.seq.to_string())
                .json_data(&e)
                .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
        )
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// What a stream has yet to send, and where it is.
struct Follow {
    pool: Pool,
    rx: tokio::sync::broadcast::Receiver<Event>,
    closed: tokio::sync::watch::Receiver<bool>,
    pending: VecDeque<Event>,
    /// The last sequence number sent (0: none yet).
    last: u64,
}

/// The buffered events after `after` (if given), then every new event, in order and
/// without duplicates; a reader that lags behind the live channel is caught up from the
/// buffer. Ends when the pool's events are closed.
fn live_events(pool: Pool, after: Option<u64>) -> impl Stream<Item = Event> + Send {
    let events = pool.events();
    // Subscribe before reading the buffer, so nothing falls between the two.
    let rx = events.subscribe();
    let closed = events.closed();
    let (pending, last) = match after {
        Some(after) => {
            let page = events.page(Some(after), events.capacity());
            (VecDeque::from(page.events), after)
        }
        None => (VecDeque::new(), events.page(None, 1).next),
    };
    let follow = Follow {
        pool,
        rx,
        closed,
        pending,
        last,
    };
    stream::unfold(follow, |mut f| async move {
        loop {
            if *f.closed.borrow() {
                return None;
            }
            if let Some(e) = f.pending.pop_front() {
                if e.seq > f.last {
                    f.last = e.seq;
                    return Some((e, f));
                }
                continue;
            }
            let received = tokio::select! {
                r = f.rx.recv() => r,
                _ = f.closed.changed() => return None,
            };
            match received {
                Ok(e) => f.pending.push_back(e),
                Err(RecvError::Lagged(_)) => {
                    let events = f.pool.events();
                    let page = events.page(Some(f.last), events.capacity());
                    f.pending.extend(page.events);
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

/// The status page's numbers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SummaryView {
    metrics: summary::Summary,
    watermarks: WatermarksView,
    eviction: EvictionView,
    events: EventsView,
}

/// The victim order in force (`--eviction`, `--gdsf-aging`, `--gdsf-half-life`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct EvictionView {
    /// `lru` or `gdsf`.
    policy: &'static str,
    /// GDSF's aging (`inflation` or `decay`); absent under LRU.
    #[serde(skip_serializing_if = "Option::is_none")]
    aging: Option<&'static str>,
    /// Half-life of GDSF's request counts, in requests to the pool; absent under LRU.
    #[serde(skip_serializing_if = "Option::is_none")]
    half_life_requests: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct WatermarksView {
    high: f64,
    low: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct EventsView {
    /// Events kept.
    capacity: usize,
    /// The newest event's sequence number.
    last: u64,
}

/// `GET /api/v1/summary`: the status page's numbers (hit rate, load latency, counts).
#[utoipa::path(get, path = "/api/v1/summary", tag = "operations", responses(
    (status = 200, description = "the numbers", body = SummaryView),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 500, description = "the metrics could not be encoded", body = ErrorBody)))]
async fn get_summary(State(state): State<AppState>) -> ApiResult<Json<SummaryView>> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.metrics)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let marks = state.pool.settings().watermarks;
    let order = state.pool.settings().order_in_force();
    let events = state.pool.events();
    Ok(Json(SummaryView {
        metrics: summary::summarize(&text),
        watermarks: WatermarksView {
            high: marks.high,
            low: marks.low,
        },
        eviction: EvictionView {
            policy: order.policy.name(),
            aging: order.gdsf.map(|(aging, _)| aging.name()),
            half_life_requests: order.gdsf.map(|(_, half_life)| half_life),
        },
        events: EventsView {
            capacity: events.capacity(),
            last: events.page(None, 1).next,
        },
    }))
}

/// `POST /api/v1/replicas/{name}/drain`: no new copies there; its copies move or unload.
/// (Drain and undrain have no await point: a client hanging up cannot cut them.)
#[utoipa::path(post, path = "/api/v1/replicas/{name}/drain", tag = "replicas",
    params(("name" = String, Path, description = "the replica's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")),
    request_body(content = Option<Object>, content_type = "application/json",
                 description = "none, or any JSON (ignored); the type must be JSON"),
    security((), ("admin" = [])), responses(
    (status = 200, description = "the replica, draining", body = ReplicaView),
    (status = 400, description = "an invalid name, or a body that is not null or an object", body = ErrorBody),
    (status = 401, description = "the admin token is missing or wrong", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 404, description = "no such replica", body = ErrorBody),
    (status = 413, description = "a body over 4 KiB", body = ErrorBody),
    (status = 415, description = "a Content-Type that is not JSON", body = ErrorBody)))]
async fn drain(
    State(state): State<AppState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Json<ReplicaView>> {
    authorize(&state, &headers)?;
    let Path(name) = name?;
    no_arguments(body).await?;
    Ok(Json(state.pool.drain(&name)?))
}

/// `POST /api/v1/replicas/{name}/undrain`: the replica takes new copies again.
#[utoipa::path(post, path = "/api/v1/replicas/{name}/undrain", tag = "replicas",
    params(("name" = String, Path, description = "the replica's name",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")),
    request_body(content = Option<Object>, content_type = "application/json",
                 description = "none, or any JSON (ignored); the type must be JSON"),
    security((), ("admin" = [])), responses(
    (status = 200, description = "the replica, taking copies", body = ReplicaView),
    (status = 400, description = "an invalid name, or a body that is not null or an object", body = ErrorBody),
    (status = 401, description = "the admin token is missing or wrong", body = ErrorBody),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody),
    (status = 404, description = "no such replica", body = ErrorBody),
    (status = 413, description = "a body over 4 KiB", body = ErrorBody),
    (status = 415, description = "a Content-Type that is not JSON", body = ErrorBody)))]
async fn undrain(
    State(state): State<AppState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Json<ReplicaView>> {
    authorize(&state, &headers)?;
    let Path(name) = name?;
    no_arguments(body).await?;
    Ok(Json(state.pool.undrain(&name)?))
}

/// Drain and undrain take no arguments: an empty body, `null` or an object (ignored);
/// anything else is a mistake worth saying so.
async fn no_arguments(body: Body) -> ApiResult<()> {
    let bytes = axum::body::to_bytes(body, 4096)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "this call takes no body"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<Option<serde_json::Map<String, serde_json::Value>>>(&bytes) {
        Ok(_) => Ok(()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("this call takes no arguments (an empty body, null or {{}}): {e}"),
        )),
    }
}
