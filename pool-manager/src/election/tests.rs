//! The campaign against the in-memory store, on a paused clock: who leads, how fast
//! leadership moves, and that a cut-off leader stops acting before its lease can end.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::*;
use crate::store::memory::{MemoryClient, MemoryServer};

const TTL: Duration = Duration::from_secs(3);

fn member(id: &str) -> Member {
    Member {
        id: id.into(),
        url: format!("http://{id}"),
    }
}

fn start(client: &Arc<MemoryClient>, id: &str) -> Election {
    Election::start(client.clone(), member(id), TTL)
}

/// Waits (on the paused clock) until `role` satisfies `ok`; returns when it did.
async fn until(role: &mut watch::Receiver<Role>, ok: impl Fn(&Role) -> bool) -> Instant {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if ok(&role.borrow_and_update()) {
                return Instant::now();
            }
            role.changed().await.unwrap();
        }
    })
    .await
    .unwrap()
}

fn leads(role: &Role) -> bool {
    matches!(role, Role::Leader { .. })
}

fn follows(id: &'static str) -> impl Fn(&Role) -> bool {
    move |role| matches!(role, Role::Follower { leader: Some(m) } if m.id == id)
}

#[tokio::test(start_paused = true)]
async fn one_of_two_candidates_leads_and_the_other_follows_it() {
    let server = MemoryServer::start();
    let a = start(&server.client(), "pm-a");
    let mut role_a = a.role();
    until(&mut role_a, leads).await;
    let b = start(&server.client(), "pm-b");
    until(&mut b.role(), follows("pm-a")).await;

    // Renewals keep it so, well past several TTLs.
    tokio::time::sleep(TTL * 5).await;
    assert!(role_a.borrow().leads());
    assert!(!b.role().borrow().leads());
    let mut ids: Vec<_> = a
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["pm-a", "pm-b"]);
}

/// The leader cut off from the store stops leading before the store could expire its
/// lease, and the other instance leads within one TTL of the last renewal.
#[tokio::test(start_paused = true)]
async fn a_cut_off_leader_steps_down_before_its_lease_ends() {
    let server = MemoryServer::start();
    let client_a = server.client();
    let a = start(&client_a, "pm-a");
    let mut role_a = a.role();
    until(&mut role_a, leads).await;
    let b = start(&server.client(), "pm-b");
    let mut role_b = b.role();
    until(&mut role_b, follows("pm-a")).await;

    let Role::Leader { until: valid, .. } = role_a.borrow().clone() else {
        panic!("a leads");
    };
    let lease = server.leader().unwrap().lease;
    client_a.set_reachable(false);
    let cut = Instant::now();
    let stepped_down = until(&mut role_a, |r| !leads(r)).await;
    assert!(
        stepped_down <= valid,
        "stepped down at once when `until` passed"
    );
    // The store still held the lease then: no moment with two leaders.
    assert_eq!(server.leader().map(|k| k.lease), Some(lease));
    let took_over = until(&mut role_b, leads).await;
    assert!(took_over > stepped_down);
    assert!(
        took_over - cut <= TTL + Duration::from_millis(100),
        "b led {:?} after a was cut off",
        took_over - cut
    );

    // Back on the network, a follows b.
    client_a.set_reachable(true);
    until(&mut role_a, follows("pm-b")).await;
}

#[tokio::test(start_paused = true)]
async fn resigning_hands_leadership_over_at_once() {
    let server = MemoryServer::start();
    let a = start(&server.client(), "pm-a");
    until(&mut a.role(), leads).await;
    let b = start(&server.client(), "pm-b");
    let mut role_b = b.role();
    until(&mut role_b, follows("pm-a")).await;
    let asked = Instant::now();
    a.resign(Duration::from_secs(1)).await;
    assert!(!a.role().borrow().leads());
    let took_over = until(&mut role_b, leads).await;
    assert!(took_over - asked < Duration::from_millis(200));
}

/// The store forgetting the lease (an operator revoked it, or it expired during a
/// stall) ends leadership at the next renewal; the campaign starts over.
#[tokio::test(start_paused = true)]
async fn a_lease_the_store_forgot_ends_leadership() {
    let server = MemoryServer::start();
    let a = start(&server.client(), "pm-a");
    let mut role_a = a.role();
    until(&mut role_a, leads).await;
    let Role::Leader { fence: first, .. } = role_a.borrow().clone() else {
        panic!("a leads");
    };
    server.expire_lease(server.leader().unwrap().lease);
    // Alone, it leads again, under a new fence (a new term: never the old one's).
    until(
        &mut role_a,
        |r| matches!(r, Role::Leader { fence, .. } if *fence != first),
    )
    .await;
    let Role::Leader { fence: second, .. } = role_a.borrow().clone() else {
        panic!("a leads again");
    };
    assert!(second.revision > first.revision);
}

/// With the store unreachable for everyone (no quorum) nobody leads; when it is back,
/// one instance leads again.
#[tokio::test(start_paused = true)]
async fn without_the_store_nobody_leads_until_it_returns() {
    let server = MemoryServer::start();
    let (client_a, client_b) = (server.client(), server.client());
    let a = start(&client_a, "pm-a");
    let b = start(&client_b, "pm-b");
    let (mut role_a, mut role_b) = (a.role(), b.role());
    until(&mut role_a, leads).await;
    until(&mut role_b, follows("pm-a")).await;

    client_a.set_reachable(false);
    client_b.set_reachable(false);
    until(&mut role_a, |r| !leads(r)).await;
    tokio::time::sleep(TTL * 3).await;
    assert!(!role_a.borrow().leads() && !role_b.borrow().leads());

    client_a.set_reachable(true);
    client_b.set_reachable(true);
    tokio::time::timeout(Duration::from_secs(30), async {
        while !role_a.borrow().leads() && !role_b.borrow().leads() {
            tokio::select! {
                _ = role_a.changed() => {}
                _ = role_b.changed() => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(!(role_a.borrow().leads() && role_b.borrow().leads()));
}

/// The watch of the leader key may lag behind a campaign (it said "no key" just after
/// this instance created it): only the store decides, so leadership does not flap.
#[tokio::test(start_paused = true)]
async fn a_lagging_watch_does_not_unseat_the_leader() {
    let server = MemoryServer::start();
    let a = start(&server.client(), "pm-a");
    let mut role_a = a.role();
    until(&mut role_a, leads).await;
    let before = role_a.borrow_and_update().clone();
    let mut watcher = a.role();
    let followed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = followed.clone();
    tokio::spawn(async move {
        while watcher.changed().await.is_ok() {
            if !leads(&watcher.borrow_and_update()) {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let mut stale = server.leader().unwrap();
    stale.created -= 1;
    stale.holder = member("pm-old");
    server.hint(None);
    server.hint(Some(stale));
    tokio::time::sleep(TTL).await;
    let Role::Leader { fence, .. } = role_a.borrow().clone() else {
        panic!("still leads: {:?}", role_a.borrow());
    };
    let Role::Leader { fence: first, .. } = before else {
        panic!("led before");
    };
    assert_eq!(fence, first);
    assert!(
        !followed.load(std::sync::atomic::Ordering::SeqCst),
        "it never stopped leading"
    );
}

#[test]
fn the_margin_leaves_time_to_stop_before_the_store_expires_the_lease() {
    let now = Instant::now();
    for (ttl_ms, want_ms) in [(10_000, 8_000), (3_000, 2_400), (1_000, 700), (400, 200)] {
        let ttl = Duration::from_millis(ttl_ms);
        assert_eq!(
            valid_until(now, ttl) - now,
            Duration::from_millis(want_ms),
            "ttl {ttl:?}"
        );
    }
}
