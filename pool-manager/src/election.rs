//! Leader election with fencing: of the pool-managers sharing one store, one leads (it
//! alone places, loads, unloads and writes the pool's state), the others follow.
//!
//! How: each instance holds a lease (a TTL the store forgets unless renewed) and tries to
//! create the leader key bound to it; the one that creates it leads, the others watch the
//! key and try again when it goes. The leader's [`Fence`] is the key's creation revision,
//! which every write it makes carries ([`crate::store::Store`]), so once its lease lapsed
//! (the key is deleted, maybe re-created by another) the store refuses its writes.
//!
//! The leader steps down by itself before the store can expire its lease: `until` in
//! [`Role::Leader`] is the last renewal's send time plus the TTL, less a margin; writes
//! check it, and the campaign publishes `Follower` when it passes without a renewal. A
//! process paused past its TTL (SIGSTOP, a long GC-like stall) therefore wakes up as a
//! non-leader, and any write it had already sent is refused by the fence.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::store::{Fence, Revision, StoreError};

/// A store lease's id.
pub type LeaseId = i64;

/// One pool-manager instance, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique among the instances sharing a store.
    pub id: String,
    /// Where the others reach its API (forwarded route calls and admin writes).
    pub url: String,
}

/// What this instance may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The only instance (embedded store): always leads, no fence needed.
    Sole,
    /// Leads until `until` (this process's monotonic clock) unless its lease is renewed;
    /// its writes carry `fence`.
    Leader { fence: Fence, until: Instant },
    /// Follows `leader` (`None`: no instance leads now, or this one cannot tell).
    Follower { leader: Option<Member> },
}

impl Role {
    /// Whether this instance may act on the pool now.
    pub fn leads(&self) -> bool {
        match self {
            Role::Sole => true,
            Role::Leader { until, .. } => Instant::now() < *until,
            Role::Follower { .. } => false,
        }
    }
}

/// The leader key as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub holder: Member,
    pub lease: LeaseId,
    /// The key's creation revision: the holder's fence.
    pub created: Revision,
}

/// What a campaign attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This instance holds the leader key (created now, or earlier with this lease).
    Won(Fence),
    /// Another lease holds it.
    Held(LeaderKey),
}

/// What the election needs from the store: leases, the leader key, the member list.
/// Implemented by the etcd backend and, in unit tests, by an in-memory fake.
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// A new lease of about `ttl` (the store may round it up); returns its id and TTL.
    async fn grant(&self, ttl: Duration) -> Result<(LeaseId, Duration), StoreError>;
    /// One renewal: the TTL it now has, or `None` when the store no longer knows it.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError>;
    /// Ends `lease` and deletes every key bound to it (a lease already gone is no error).
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Lists `me` among the members while `lease` lives.
    async fn join(&self, me: &Member, lease: LeaseId) -> Result<(), StoreError>;
    /// Every member whose lease lives.
    async fn members(&self) -> Result<Vec<Member>, StoreError>;
    /// Creates the leader key for `me`, bound to `lease`, unless it exists.
    async fn acquire(&self, me: &Member, lease: LeaseId) -> Result<Acquired, StoreError>;
    /// The leader key, kept current in the background (`None`: no key). A hint to try
    /// again, never proof: only [`Coordinator::acquire`] and fenced writes decide.
    fn observe(&self) -> watch::Receiver<Option<LeaderKey>>;
}

/// Bounds of the retry loop when the store cannot be reached.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A running campaign; dropping it does not stop it (see [`Election::resign`]).
pub struct Election {
    role: watch::Receiver<Role>,
    stop: watch::Sender<bool>,
    done: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    coordinator: Arc<dyn Coordinator>,
    me: Member,
}

impl Election {
    /// Starts campaigning for `me` with leases of `ttl` (spawned on the current runtime).
    pub fn start(coordinator: Arc<dyn Coordinator>, me: Member, ttl: Duration) -> Self {
        let (role_tx, role) = watch::channel(Role::Follower { leader: None });
        let (stop, stop_rx) = watch::channel(false);
        let campaign = Campaign {
            coordinator: coordinator.clone(),
            me: me.clone(),
            ttl,
            role: role_tx,
            stop: stop_rx,
            abandoned: Vec::new(),
        };
        let done = tokio::spawn(campaign.run());
        Self {
            role,
            stop,
            done: tokio::sync::Mutex::new(Some(done)),
            coordinator,
            me,
        }
    }

    /// This instance.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// This instance's role, kept current.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The instances whose leases live.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        self.coordinator.members().await
    }

    /// Stops campaigning and gives leadership up at once (the lease is revoked, so
    /// another instance takes over without waiting for the TTL); bounded by `within`.
    pub async fn resign(&self, within: Duration) {
        let _ = self.stop.send(true);
        if let Some(done) = self.done.lock().await.take() {
            if timeout(within, done).await.is_err() {
                warn!("the campaign did not end in time; the lease will expire by itself");
            }
        }
    }
}

struct Campaign {
    coordinator: Arc<dyn Coordinator>,
    me: Member,
    ttl: Duration,
    role: watch::Sender<Role>,
    stop: watch::Receiver<bool>,
    /// Leases of ended sessions the store may still hold (it could not be told): revoked
    /// first thing once it answers, so a stale leader key of ours does not linger.
    abandoned: Vec<LeaseId>,
}

/// Why a session (one lease) ended.
enum Ended {
    Resigned,
    Lost(String),
}

impl Campaign {
    async fn run(mut self) {
        let mut backoff = RETRY_MIN;
        while !*self.stop.borrow() {
            match self.session().await {
                Ok(Ended::Resigned) => break,
                Ok(Ended::Lost(why)) => {
                    warn!(member = %self.me.id, reason = %why, "lease lost; campaigning again");
                    backoff = RETRY_MIN;
                }
                Err(e) => {
                    warn!(member = %self.me.id, error = %e, retry_in = ?backoff, "cannot campaign");
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        () = sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        self.step_down(None);
    }

    /// One lease: joins, campaigns and renews until the lease is lost or the campaign is
    /// stopped. Always ends as a follower, with the lease revoked if the store answers.
    async fn session(&mut self) -> Result<Ended, StoreError> {
        self.revoke_abandoned().await;
        let sent = Instant::now();
        let (lease, ttl) = self.coordinator.grant(self.ttl).await?;
        let mut until = valid_until(sent, ttl);
        let ended = self.hold(lease, ttl, &mut until).await;
        self.step_down(None);
        if self.coordinator.revoke(lease).await.is_err() {
            self.abandoned.push(lease);
        }
        ended
    }

    async fn hold(
        &mut self,
        lease: LeaseId,
        ttl: Duration,
        until: &mut Instant,
    ) -> Result<Ended, StoreError> {
        self.coordinator.join(&self.me, lease).await?;
        let mut observed = self.coordinator.observe();
        let mut stop = self.stop.clone();
        let mut leading: Option<Fence> = None;
        let mut campaign = true;
        let mut recheck = false;
        let mut renew_at = Instant::now() + ttl / 3;
        let mut failing = false;
        loop {
            if std::mem::take(&mut campaign) {
                match self.campaign(lease, *until).await {
                    Ok(won) => leading = won,
                    // A leader keeps leading through a check the store did not answer
                    // (its fence still guards every write) and checks again after its
                    // next renewal; an answer such as "no such lease" ends the session.
                    Err(e) if leading.is_some() && e.is_transient() => {
                        debug!(member = %self.me.id, error = %e, "leadership check failed");
                        recheck = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            tokio::select! {
                () = sleep_until(renew_at) => {
                    match self.renew(lease, ttl, until, leading.as_ref(), &mut failing).await {
                        Some(next) => renew_at = next,
                        None => return Ok(Ended::Lost("the store expired the lease".into())),
                    }
                    campaign = !failing && std::mem::take(&mut recheck);
                }
                () = sleep_until(*until) => {
                    return Ok(Ended::Lost("the lease could not be renewed before its TTL".into()));
                }
                changed = observed.changed() => {
                    if changed.is_err() {
                        return Ok(Ended::Lost("the leader watch ended".into()));
                    }
                    let key = observed.borrow_and_update().clone();
                    campaign = self.on_leader_key(leading.as_ref(), lease, key);
                }
                _ = stop.changed() => return Ok(Ended::Resigned),
            }
        }
    }

    /// One renewal of `lease`; returns when to renew next, or `None` when the store no
    /// longer knows the lease. A failure leaves `until` as it was (and is logged once per
    /// run of failures: without quorum they repeat every few hundred milliseconds).
    async fn renew(
        &self,
        lease: LeaseId,
        ttl: Duration,
        until: &mut Instant,
        leading: Option<&Fence>,
        failing: &mut bool,
    ) -> Option<Instant> {
        let sent = Instant::now();
        let why = match timeout(ttl / 3, self.coordinator.keep_alive(lease)).await {
            Ok(Ok(Some(left))) => {
                *until = valid_until(sent, left);
                if let Some(fence) = leading {
                    self.publish(Role::Leader {
                        fence: fence.clone(),
                        until: *until,
                    });
                }
                if std::mem::take(failing) {
                    info!(member = %self.me.id, "lease renewed again");
                }
                return Some(sent + ttl / 3);
            }
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", ttl / 3),
        };
        if std::mem::replace(failing, true) {
            debug!(member = %self.me.id, error = %why, "lease renewal failed again");
        } else {
            warn!(member = %self.me.id, error = %why, left = ?until.saturating_duration_since(Instant::now()),
                  "lease renewal failed; retrying until the lease runs out");
        }
        Some(Instant::now() + RETRY_MIN)
    }

    /// Tries to take the leader key (or confirms it is still ours); publishes the outcome.
    async fn campaign(
        &mut self,
        lease: LeaseId,
        until: Instant,
    ) -> Result<Option<Fence>, StoreError> {
        match self.coordinator.acquire(&self.me, lease).await? {
            Acquired::Won(fence) => {
                let known =
                    matches!(&*self.role.borrow(), Role::Leader { fence: f, .. } if *f == fence);
                if !known {
                    info!(member = %self.me.id, fence = fence.revision, "leading the pool");
                }
                self.publish(Role::Leader {
                    fence: fence.clone(),
                    until,
                });
                Ok(Some(fence))
            }
            Acquired::Held(key) => {
                self.step_down(Some(key.holder));
                Ok(None)
            }
        }
    }

    /// Follows a change of the leader key as the watch saw it; returns whether to ask
    /// the store (campaign), which alone decides: the watch may lag behind a campaign.
    fn on_leader_key(
        &mut self,
        leading: Option<&Fence>,
        lease: LeaseId,
        key: Option<LeaderKey>,
    ) -> bool {
        match (leading, key) {
            (Some(fence), Some(k)) => k.created != fence.revision,
            (Some(_), None) | (None, None) => true,
            (None, Some(k)) if k.lease == lease => true,
            (None, Some(k)) => {
                self.step_down(Some(k.holder));
                false
            }
        }
    }

    fn step_down(&self, leader: Option<Member>) {
        if matches!(*self.role.borrow(), Role::Leader { .. }) {
            info!(member = %self.me.id, "no longer leading");
        }
        self.publish(Role::Follower { leader });
    }

    fn publish(&self, role: Role) {
        self.role.send_if_modified(|current| {
            let changed = *current != role;
            *current = role;
            changed
        });
    }

    async fn revoke_abandoned(&mut self) {
        let mut kept = Vec::new();
        for lease in std::mem::take(&mut self.abandoned) {
            if self.coordinator.revoke(lease).await.is_err() {
                kept.push(lease);
            }
        }
        self.abandoned = kept;
    }
}

/// Until when a lease renewed (or granted) at `sent` with `ttl` left may be relied on:
/// the store counts the TTL from when it received the request, after `sent`, and the
/// margin leaves time to stop acting before another instance can take over.
fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    let margin = (ttl / 5).max(Duration::from_millis(300)).min(ttl / 2);
    sent + ttl.saturating_sub(margin)
}

#[cfg(test)]
mod tests;
