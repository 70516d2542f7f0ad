//! `GET /api/v1/cluster`: the pool-manager instances sharing this pool's store, which one
//! leads and this instance's role. Every instance answers from what it knows; the member
//! list is read from the store, and when that fails the answer says why instead of
//! failing (an operator asks exactly when something is wrong).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use mm_wire::{ClusterMember, ClusterRole, ClusterView, ErrorBody};
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
}

impl ClusterState {
    /// The single-instance view of the embedded store.
    pub fn sole(store: String) -> Self {
        Self {
            store,
            election: None,
        }
    }
}

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cluster))
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
