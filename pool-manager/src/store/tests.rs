use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::memory::MemoryServer;
use super::*;
use crate::election::{Acquired, Coordinator, Member};
use crate::spec::StoragePolicy;

fn spec(dir: &Path, memory: u64) -> ModelSpec {
    let body = format!(
        r#"{{"storageUri": "file://{}", "memory": {memory}, "maxCopies": 2}}"#,
        dir.display()
    );
    ModelSpec::from_json(body.as_bytes(), &StoragePolicy::default()).unwrap()
}

fn name(n: &str) -> ModelName {
    ModelName::new(n).unwrap()
}

fn model_dir() -> tempfile::TempDir {
    let model = tempfile::tempdir().unwrap();
    std::fs::create_dir(model.path().join("1")).unwrap();
    model
}

fn reopen(dir: &Path) -> Opened {
    // The writer thread of an earlier handle exits with its channel, then frees the file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Ok(opened) => return opened,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[tokio::test]
async fn registrations_survive_reopening() {
    let data = tempfile::tempdir().unwrap();
    let model = model_dir();
    {
        let Opened { store, models, .. } = Store::open(data.path()).unwrap();
        assert!(models.is_empty());
        let writes = (0..50).map(|i| {
            let store = store.clone();
            let s = spec(model.path(), 100 + i);
            async move { store.put(&name(&format!("m{i}")), &s).await }
        });
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
        store.delete(&name("m7")).await.unwrap();
        store.reserve_events(20_000).await.unwrap();
        store.reserve_events(10_000).await.unwrap();
        store.reserve_events(30_000).await.unwrap();
    }
    let Opened {
        models,
        unreadable,
        events_reserved,
        revision,
        ..
    } = reopen(data.path());
    assert!(unreadable.is_empty());
    assert_eq!(events_reserved, 30_000);
    assert!(
        revision >= 4,
        "one revision per commit at least: {revision}"
    );
    assert_eq!(models.len(), 49);
    let m3 = models.iter().find(|(n, _)| n.as_str() == "m3").unwrap();
    assert_eq!(m3.1, spec(model.path(), 103));
    assert!(!models.iter().any(|(n, _)| n.as_str() == "m7"));
}

#[tokio::test]
async fn unreadable_records_are_returned_apart() {
    let data = tempfile::tempdir().unwrap();
    {
        let opened = Store::open(data.path()).unwrap();
        let bad = |n: &str, v: &str| Change::Put {
            key: Key {
                kind: Kind::Model,
                name: n.into(),
            },
            value: v.as_bytes().to_vec(),
        };
        opened
            .store
            .commit(vec![bad("not json", "{}"), bad("m", "not json")])
            .await
            .unwrap();
    }
    let opened = reopen(data.path());
    assert!(opened.models.is_empty());
    let mut names: Vec<_> = opened.unreadable.iter().map(|u| u.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["m", "not json"]);
}

/// A watch opened at a snapshot's revision sees every later commit once, in order, and
/// one opened at an older revision still in the backlog sees the ones in between.
#[tokio::test]
async fn the_embedded_store_feeds_watches_from_a_revision() {
    let data = tempfile::tempdir().unwrap();
    let model = model_dir();
    let opened = Store::open(data.path()).unwrap();
    let store = opened.store;
    let mut from_open = store.backend().watch(opened.revision).await.unwrap();
    store.put(&name("a"), &spec(model.path(), 1)).await.unwrap();
    let middle = store.backend().snapshot().await.unwrap().revision;
    store.put(&name("b"), &spec(model.path(), 2)).await.unwrap();
    store.delete(&name("a")).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = from_open.next().await.unwrap();
        seen.push((e.key.name, e.value.is_some(), e.revision));
    }
    let names: Vec<_> = seen.iter().map(|(n, put, _)| (n.as_str(), *put)).collect();
    assert_eq!(names, [("a", true), ("b", true), ("a", false)]);
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2));

    let mut later = store.backend().watch(middle).await.unwrap();
    assert_eq!(later.next().await.unwrap().key.name, "b");
    assert_eq!(later.next().await.unwrap().value, None);
}

fn member(id: &str) -> Member {
    Member {
        id: id.into(),
        url: format!("http://{id}"),
    }
}

/// Writes go out only under a live leadership, and carry its fence.
#[tokio::test(start_paused = true)]
async fn writes_need_a_live_leadership() {
    let server = MemoryServer::start();
    let client = server.client();
    let model = model_dir();
    let (role_tx, role) = watch::channel(Role::Follower { leader: None });
    let store = Store::open_with(client.clone(), role).await.unwrap().store;
    let s = spec(model.path(), 5);

    assert_eq!(store.put(&name("m"), &s).await, Err(StoreError::NoLeader));
    role_tx.send_replace(Role::Follower {
        leader: Some(member("pm-b")),
    });
    let e = store.put(&name("m"), &s).await.unwrap_err();
    assert_eq!(
        e,
        StoreError::NotLeader {
            leader: Some("pm-b".into())
        }
    );
    assert!(e.to_string().contains("pm-b"), "{e}");

    let (lease, _) = client.grant(Duration::from_secs(3)).await.unwrap();
    let Acquired::Won(fence) = client.acquire(&member("pm-a"), lease).await.unwrap() else {
        panic!("an empty store elects the first candidate");
    };
    role_tx.send_replace(Role::Leader {
        fence: fence.clone(),
        until: Instant::now() + Duration::from_secs(2),
    });
    store.put(&name("m"), &s).await.unwrap();

    // Past `until` this instance no longer writes, even before anything else happened.
    tokio::time::advance(Duration::from_millis(2001)).await;
    assert_eq!(store.put(&name("m"), &s).await, Err(StoreError::NoLeader));
    assert_eq!(client.snapshot().await.unwrap().records.len(), 1);
}

/// A deposed leader's write that reaches the store anyway changes nothing.
#[tokio::test(start_paused = true)]
async fn the_store_refuses_a_stale_fence() {
    let server = MemoryServer::start();
    let (a, b) = (server.client(), server.client());
    let (lease_a, _) = a.grant(Duration::from_secs(3)).await.unwrap();
    let Acquired::Won(stale) = a.acquire(&member("pm-a"), lease_a).await.unwrap() else {
        panic!("a leads first");
    };
    server.expire_lease(lease_a);
    let (lease_b, _) = b.grant(Duration::from_secs(3)).await.unwrap();
    let Acquired::Won(current) = b.acquire(&member("pm-b"), lease_b).await.unwrap() else {
        panic!("b leads once a's lease is gone");
    };
    assert_ne!(stale, current);
    let change = || {
        vec![Change::Delete {
            key: Key {
                kind: Kind::Model,
                name: "m".into(),
            },
        }]
    };
    assert_eq!(
        a.commit(Some(&stale), change()).await,
        Err(StoreError::Fenced)
    );
    b.commit(Some(&current), change()).await.unwrap();
}

#[test]
fn errors_say_whether_to_retry() {
    assert!(StoreError::NoLeader.is_transient());
    assert!(StoreError::Unavailable("x".into()).is_transient());
    assert!(!StoreError::Fenced.is_transient());
    assert!(!StoreError::NotLeader { leader: None }.is_transient());
}

#[tokio::test]
async fn kept_metadata_survives_reopening_and_goes_with_its_spec() {
    use crate::metadata::KeptMetadata;
    let data = tempfile::tempdir().unwrap();
    let (model, other) = (model_dir(), model_dir());
    let first = spec(model.path(), 1);
    let kept = KeptMetadata::new(&first, serde_json::json!({"name": "a"}), None);
    {
        let Opened { store, .. } = Store::open(data.path()).unwrap();
        for n in ["a", "b", "c"] {
            store.put(&name(n), &first).await.unwrap();
            store.put_metadata(&name(n), &kept).await.unwrap();
        }
        // A size change keeps it; new files and a delete drop it.
        store.put(&name("a"), &spec(model.path(), 2)).await.unwrap();
        store
            .put_reloaded(&name("b"), &spec(other.path(), 1))
            .await
            .unwrap();
        store.delete(&name("c")).await.unwrap();
    }
    let Opened { metadata, .. } = reopen(data.path());
    assert_eq!(metadata, vec![(name("a"), kept.clone())]);
    // A record left under another spec (a write racing an update) is not read back.
    let Opened { store, .. } = reopen(data.path());
    store.put_metadata(&name("b"), &kept).await.unwrap();
    drop(store);
    let Opened { metadata, .. } = reopen(data.path());
    assert_eq!(metadata.len(), 1);
}
