//! Forwarding to the leader: on an instance that does not act on the pool (a follower, or
//! a new leader still rebuilding its view), what would act is sent on to the leader named
//! by the election: the gateway's route calls, usage and failure reports, and admin
//! writes, with the caller's tokens. Reads and table polls are answered from this
//! instance's own copy.
//!
//! While no instance leads (an election, a store without quorum) or the leader cannot be
//! reached (it just died), a route call is *held* and tried again as the leadership
//! changes, until the route wait ends: the filter does not retry a 503, so a cold request
//! survives a failover only if the pool-manager side waits for it. A route call for a
//! model the leader's table (as this instance follows it) has a copy of is answered from
//! that table instead of held, so warm requests need no leader. Reports and admin writes
//! are answered 503 with a clear error instead.
//!
//! A forwarded request carries [`FORWARDED`]; an instance that gets one and does not act
//! answers at once with [`NOT_LEADER`] instead of forwarding it again (no loops), and the
//! sender tries again when the leadership changes.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::{ApiError, AppState};
use crate::election::{Election, Member, Role};

/// Marks a request one instance forwarded to another (its value: the sender's id).
pub const FORWARDED: &str = "x-mm-forwarded-by";
/// On an answer to a forwarded request: the receiver does not lead either.
pub const NOT_LEADER: &str = "x-mm-not-leader";
/// On a forwarded answer: the id of the instance that served it.
pub const SERVED_BY: &str = "x-mm-served-by";

/// Largest body forwarded (usage reports are the largest: 10,000 entries at most).
const MAX_FORWARDED_BYTES: usize = 8 * 1024 * 1024;
/// How long an admin write waits for this instance to finish taking the lead.
const TAKING_LEAD_WAIT: Duration = Duration::from_secs(5);
/// Re-check of the leadership while a route call is held (besides every change).
const HOLD_RECHECK: Duration = Duration::from_millis(200);
/// Headers passed on to the leader: the content, the admin token, the gateway token.
const PASSED: [&str; 4] = [
    "content-type",
    "authorization",
    mm_wire::GATEWAY_TOKEN_HEADER,
    "accept",
];

/// What a request is, for forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Answered here, whoever leads (reads, table polls, health, the cluster view).
    Local,
    /// A route call: held across a change of leader.
    Route,
    /// A report or an admin write: forwarded once, or 503.
    Write,
}

fn classify(method: &Method, path: &str) -> Class {
    // The metadata call may load the model, as a route call does.
    if path.starts_with("/internal/v1/route") || path.starts_with("/internal/v1/metadata") {
        return Class::Route;
    }
    let write = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let forwarded = path.starts_with("/internal/v1/") || path.starts_with("/api/v1/");
    if write && forwarded {
        Class::Write
    } else {
        Class::Local
    }
}

/// The middleware: answers here when this instance acts (or is alone), forwards otherwise.
pub(super) async fn to_leader(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(election) = state.cluster.election.clone() else {
        return next.run(request).await;
    };
    let class = classify(request.method(), request.uri().path());
    let forwarded = request.headers().contains_key(FORWARDED);
    // A route call goes through `hold` even here while this instance acts: if it stops
    // acting during the call (its lease lapsed, say while it was paused), the call is
    // handed to the next leader instead of failing.
    if class == Class::Local || (state.pool.acting() && (class != Class::Route || forwarded)) {
        return next.run(request).await;
    }
    if forwarded {
        // Sent by another instance that believes this one leads: never forwarded again.
        return not_leading(&election).not_leader().into_response();
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_FORWARDED_BYTES).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_FORWARDED_BYTES} bytes"),
        )
        .into_response();
    };
    let call = Call {
        state: &state,
        election: &election,
        method: parts.method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: passed_headers(&parts.headers),
        body: body.clone(),
    };
    let local = move || {
        next.clone()
            .run(Request::from_parts(parts.clone(), Body::from(body.clone())))
    };
    match class {
        Class::Route => call.hold(local).await,
        _ => call.once(local).await,
    }
}

/// One request being forwarded.
struct Call<'a> {
    state: &'a AppState,
    election: &'a Election,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// Why a forward did not give the leader's answer.
enum Missed {
    /// The leader did not answer (gone, or not leading any more): try the next one.
    Unreachable,
    /// No answer before the deadline.
    TimedOut,
}

impl Call<'_> {
    /// A route call: answered here while this instance acts, by the leader when one
    /// answers, and held in between until the route wait ends. An answer made here that
    /// says this instance stopped acting meanwhile is not the caller's answer: the call
    /// is held again for the next leader.
    async fn hold<F, Fut>(self, local: F) -> Response
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let wait = self.state.pool.settings().route_wait;
        let deadline = Instant::now() + wait;
        let mut role = self.election.role();
        let mut acting = self.state.pool.acting_changes();
        loop {
            if self.state.pool.acting() {
                match tokio::time::timeout_at(deadline, local()).await {
                    Ok(answer) if answer.headers().contains_key(NOT_LEADER) => {
                        tracing::info!(path = %self.path, "this instance stopped leading during a route call; holding it for the next leader");
                    }
                    Ok(answer) => return answer,
                    Err(_) => return still_waiting(wait),
                }
            }
            let leader = leader_of(&role.borrow_and_update());
            if let Some(leader) = leader {
                match self.send(&leader, deadline).await {
                    Ok(answer) => return answer,
                    Err(Missed::TimedOut) => return still_waiting(wait),
                    Err(Missed::Unreachable) => {}
                }
            }
            if let Some(answer) = self.answered_from_followed_table() {
                return answer;
            }
            if Instant::now() >= deadline {
                return still_waiting(wait);
            }
            let recheck = (Instant::now() + HOLD_RECHECK).min(deadline);
            tokio::select! {
                _ = role.changed() => {}
                _ = acting.changed() => {}
                () = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// A route call for a model with a copy in the leader's table this instance follows
    /// (or for any replica with one), answered from that table when no leader answers:
    /// warm requests are served through every instance without a leader (they need no
    /// load), cold ones wait for one.
    fn answered_from_followed_table(&self) -> Option<Response> {
        if self.method != Method::GET {
            return None;
        }
        let path = self.path.split('?').next().unwrap_or_default();
        let name = match path.strip_prefix(mm_wire::ROUTE_PATH_PREFIX) {
            Some(name) => Some(name),
            None if path == mm_wire::ANY_REPLICA_PATH => None,
            None => return None,
        };
        let route = self.state.pool.route_from_followed(name)?;
        let mut answer = axum::Json(route).into_response();
        if let Ok(id) = HeaderValue::from_str(&self.election.me().id) {
            answer.headers_mut().insert(SERVED_BY, id);
        }
        Some(answer)
    }

    /// A report or an admin write: here if this instance is about to act, else to the
    /// leader once; 503 when there is none or it does not answer.
    async fn once<F, Fut>(self, local: F) -> Response
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        if self.election.role().borrow().leads() {
            // Taking the lead: the view is being rebuilt, which takes moments.
            let mut acting = self.state.pool.acting_changes();
            let _ = tokio::time::timeout(TAKING_LEAD_WAIT, acting.wait_for(|a| *a)).await;
            if self.state.pool.acting() {
                return local().await;
            }
            return not_leading(self.election).into_response();
        }
        let leader = leader_of(&self.election.role().borrow());
        let Some(leader) = leader else {
            return not_leading(self.election).into_response();
        };
        let deadline = Instant::now() + self.state.pool.settings().route_wait;
        match self.send(&leader, deadline).await {
            Ok(answer) => answer,
            Err(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the leading pool-manager ({}) did not answer; retry shortly",
                    leader.id
                ),
            )
            .into_response(),
        }
    }

    /// Sends the request to `leader` and relays its answer.
    async fn send(&self, leader: &Member, deadline: Instant) -> Result<Response, Missed> {
        let url = format!("{}{}", leader.url.trim_end_matches('/'), self.path);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Missed::TimedOut);
        }
        let sent = self
            .state
            .cluster
            .client
            .request(self.method.clone(), url)
            .headers(self.headers.clone())
            .header(FORWARDED, self.election.me().id.as_str())
            .timeout(left)
            .body(self.body.clone())
            .send()
            .await;
        let answer = match sent {
            Ok(a) => a,
            Err(e) if e.is_timeout() => return Err(Missed::TimedOut),
            Err(e) => {
                tracing::debug!(leader = %leader.id, error = %e, "forwarding to the leader failed");
                return Err(Missed::Unreachable);
            }
        };
        if answer.headers().contains_key(NOT_LEADER) {
            return Err(Missed::Unreachable);
        }
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let body = match answer.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Err(Missed::TimedOut),
            Err(_) => return Err(Missed::Unreachable),
        };
        let mut relayed = Response::new(Body::from(body));
        *relayed.status_mut() = status;
        if let Some(ct) = content_type {
            relayed.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        if let Ok(id) = HeaderValue::from_str(&leader.id) {
            relayed.headers_mut().insert(SERVED_BY, id);
        }
        Ok(relayed)
    }
}

/// The leader as this instance knows it (`None`: none, or this instance itself).
fn leader_of(role: &Role) -> Option<Member> {
    match role {
        Role::Follower { leader } => leader.clone(),
        Role::Sole | Role::Leader { .. } => None,
    }
}

fn passed_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PASSED {
        if let (Ok(n), Some(v)) = (HeaderName::from_bytes(name.as_bytes()), from.get(name)) {
            out.insert(n, v.clone());
        }
    }
    out
}

/// 503: no instance leads that this one can reach (the store's own wording).
fn not_leading(election: &Election) -> ApiError {
    let message = match leader_of(&election.role().borrow()) {
        Some(leader) => crate::store::StoreError::NotLeader {
            leader: Some(leader.id),
        }
        .to_string(),
        None => crate::store::StoreError::NoLeader.to_string(),
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

fn still_waiting(wait: Duration) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "no pool-manager could place the model within {wait:?} (the pool's leadership is changing); retry"
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_acts_is_forwarded() {
        let rows = [
            (Method::GET, "/internal/v1/route/m", Class::Route),
            (Method::GET, "/internal/v1/route", Class::Route),
            (Method::GET, "/internal/v1/metadata/m", Class::Route),
            (Method::POST, "/internal/v1/usage", Class::Write),
            (Method::POST, "/internal/v1/failure", Class::Write),
            (Method::GET, "/internal/v1/table", Class::Local),
            (Method::PUT, "/api/v1/models/m", Class::Write),
            (Method::DELETE, "/api/v1/models/m", Class::Write),
            (Method::POST, "/api/v1/replicas/r0/drain", Class::Write),
            (Method::GET, "/api/v1/models/m", Class::Local),
            (Method::GET, "/api/v1/cluster", Class::Local),
            (Method::GET, "/readyz", Class::Local),
            (Method::GET, "/healthz", Class::Local),
        ];
        for (method, path, class) in rows {
            assert_eq!(classify(&method, path), class, "{method} {path}");
        }
    }
}
