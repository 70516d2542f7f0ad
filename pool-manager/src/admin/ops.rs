//! The operator's endpoints: recent events (a page, or a live Server-Sent Events stream),
//! a JSON summary of the pool's counters for the status page, and draining a replica.
//! Reads need no token; drain and undrain need the admin token like PUT and DELETE.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{authorize, summary, ApiError, ApiResult, AppState, MAX_PAGE};
use crate::events::Event;
use crate::pool::Pool;

/// Events returned when no `limit` is given.
const DEFAULT_EVENTS: usize = 100;
/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The routes of this module.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/stream", get(stream_events))
        .route("/api/v1/summary", get(get_summary))
        .route("/api/v1/replicas/{name}/drain", post(drain))
        .route("/api/v1/replicas/{name}/undrain", post(undrain))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    after: Option<u64>,
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
async fn list_events(
    State(state): State<AppState>,
    params: Result<Query<EventParams>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let params = query(params)?;
    let limit = params.limit.unwrap_or(DEFAULT_EVENTS);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(Json(json!(state.pool.events().page(params.after, limit))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamParams {
    after: Option<u64>,
}

/// `GET /api/v1/events/stream[?after=SEQ]`: Server-Sent Events, one `data:` JSON event
/// each with `id:` its sequence number. With `after` (or a `Last-Event-ID` header, as a
/// reconnecting browser sends) the buffered events after it come first. Ends at shutdown.
async fn stream_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> ApiResult<Response> {
    let params = query(params)?;
    let after = params.after.or_else(|| {
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

/// `GET /api/v1/summary`: the status page's numbers (hit rate, load latency, counts).
async fn get_summary(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.metrics)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let marks = state.pool.settings().watermarks;
    let events = state.pool.events();
    Ok(Json(json!({
        "metrics": summary::summarize(&text),
        "watermarks": { "high": marks.high, "low": marks.low },
        "events": { "capacity": events.capacity(), "last": events.page(None, 1).next },
    })))
}

/// `POST /api/v1/replicas/{name}/drain`: no new copies there; its copies move or unload.
async fn drain(
    State(state): State<AppState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, &headers)?;
    let Path(name) = name?;
    Ok(Json(json!(state.pool.drain(&name)?)))
}

/// `POST /api/v1/replicas/{name}/undrain`: the replica takes new copies again.
async fn undrain(
    State(state): State<AppState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, &headers)?;
    let Path(name) = name?;
    Ok(Json(json!(state.pool.undrain(&name)?)))
}
