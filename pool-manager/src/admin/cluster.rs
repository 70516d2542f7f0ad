//! `GET /api/v1/cluster`: the pool-manager instances sharing this pool's store, which one
//! leads and this instance's role. Every instance answers from what it knows; the member
//! list is read from the store, and when that fails the answer says why instead of
//! failing (an operator asks exactly when something is wrong).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mm_wire::{ClusterMember, ClusterRole, ClusterView, ErrorBody, Readiness};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::election::{Election, Member, Role};

/// What the cluster view is made of.
#[derive(Clone)]
pub struct ClusterState {
    /// The store's description (no credentials).
    pub store: String,
    /// The campaign, with a shared store; `None`: the embedded store, one instance.
    pub election: Option<Arc<Election>>,
    /// Forwards calls to the leader ([`super::forward`]).
    pub client: reqwest::Client,
}

impl ClusterState {
    /// The single-instance view of the embedded store.
    pub fn sole(store: String) -> Self {
        Self {
            store,
            election: None,
            client: reqwest::Client::new(),
        }
    }

    /// The view of a store shared through `election`.
    pub fn shared(store: String, election: Arc<Election>) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(1))
            .build()
            .unwrap_or_default();
        Self {
            store,
            election: Some(election),
            client,
        }
    }
}

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cluster))
        .routes(routes!(ready))
}

/// `GET /readyz`: whether this instance can serve now. Alone: always. Shared: the
/// store's change feed is open (its copy of the registry and table is current) and it
/// leads with its view rebuilt, or follows a known leader.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "this instance can serve", body = Readiness),
    (status = 503, description = "it cannot, and why", body = Readiness)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let answer = readiness(&state);
    let status = if answer.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(answer))
}

fn readiness(state: &AppState) -> Readiness {
    let Some(election) = &state.cluster.election else {
        return Readiness {
            ready: true,
            role: ClusterRole::Sole,
            leader: Some("sole".into()),
            error: None,
        };
    };
    let role = election.role().borrow().clone();
    let (role, leader, error) = match role {
        Role::Leader { .. } if state.pool.acting() => {
            (ClusterRole::Leader, Some(election.me().id.clone()), None)
        }
        Role::Sole | Role::Leader { .. } => (
            ClusterRole::Leader,
            None,
            Some("taking the lead: rebuilding the pool's view".to_owned()),
        ),
        Role::Follower { leader: Some(l) } => (ClusterRole::Follower, Some(l.id), None),
        Role::Follower { leader: None } => (
            ClusterRole::Follower,
            None,
            Some("no pool-manager leads the pool now".to_owned()),
        ),
    };
    let error = match error {
        None if !state.pool.store_current() => {
            Some("the store's change feed is not open: this instance's copy may be stale".into())
        }
        other => other,
    };
    Readiness {
        ready: error.is_none(),
        role,
        leader,
        error,
    }
}

/// `GET /api/v1/cluster`: the instances sharing this pool's store and their roles.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "operations", responses(
    (status = 200, description = "the store, this instance, its role, the leader and the members", body = ClusterView),
    (status = 403, description = "a browser request from elsewhere", body = ErrorBody)))]
async fn cluster(State(state): State<AppState>) -> Json<ClusterView> {
    Json(view(&state.cluster).await)
}

/// The view as this instance sees it now.
pub async fn view(cluster: &ClusterState) -> ClusterView {
    let Some(election) = &cluster.election else {
        let me = ClusterMember {
            id: "sole".into(),
            url: String::new(),
        };
        return ClusterView {
            store: cluster.store.clone(),
            instance: me.clone(),
            role: ClusterRole::Sole,
            leader: Some(me.clone()),
            members: vec![me],
            error: None,
        };
    };
    let me = election.me();
    let role = election.role().borrow().clone();
    let (role, leader) = match role {
        Role::Sole => (ClusterRole::Sole, Some(me.clone())),
        Role::Leader { .. } if role.leads() => (ClusterRole::Leader, Some(me.clone())),
        Role::Leader { .. } => (ClusterRole::Follower, None),
        Role::Follower { leader } => (ClusterRole::Follower, leader),
    };
    let (members, error) = match election.members().await {
        Ok(mut members) => {
            members.sort_by(|a, b| a.id.cmp(&b.id));
            (members.iter().map(wire).collect(), None)
        }
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    ClusterView {
        store: cluster.store.clone(),
        instance: wire(me),
        role,
        leader: leader.as_ref().map(wire),
        members,
        error,
    }
}

fn wire(m: &Member) -> ClusterMember {
    ClusterMember {
        id: m.id.clone(),
        url: m.url.clone(),
    }
}
