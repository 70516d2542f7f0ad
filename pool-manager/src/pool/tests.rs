//! Pool behaviour against fake replicas: single-flight loads, failures with backoff,
//! placement, eviction (LRU order, watermarks, what is protected), waiting for room,
//! copies, pins, usage reports, deletes and spec updates, bounded waits, replica failure.
//! Time is tokio's paused clock: waits take no wall-clock time and nothing here reads the
//! wall clock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::placement::Watermarks;
use crate::replica::fake::FakeReplica;
use crate::replica::MemoryUsage;
use crate::spec::ModelName;
use mm_wire::{UsageEntry, UsageReport};

struct Fixture {
    pool: Pool,
    registry: prometheus_client::registry::Registry,
    fakes: Vec<Arc<FakeReplica>>,
    _repo: tempfile::TempDir,
    model_dir: tempfile::TempDir,
}

/// Settings for tests: no minimum age unless a test sets one, room up to capacity, and a
/// replica out at its first failed probe.
fn settings() -> Settings {
    Settings {
        min_age: Duration::ZERO,
        table_propagation: Duration::ZERO,
        watermarks: Watermarks::new(1.0, 1.0).unwrap(),
        unhealthy_after: 1,
        ..Settings::default()
    }
}

fn fixture(capacities: &[u64], settings: Settings) -> Fixture {
    let fakes: Vec<(Arc<FakeReplica>, u64)> = capacities
        .iter()
        .map(|&memory| (Arc::new(FakeReplica::default()), memory))
        .collect();
    fixture_on(&fakes, settings, None)
}

/// A pool over the given fake replicas (with their capacities), writing to `store`.
fn fixture_on(
    fakes: &[(Arc<FakeReplica>, u64)],
    settings: Settings,
    store: Option<crate::store::Store>,
) -> Fixture {
    let repo = tempfile::tempdir().unwrap();
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(model_dir.path().join("1")).unwrap();
    std::fs::write(model_dir.path().join("1/model.py"), "pass").unwrap();
    let replicas = fakes
        .iter()
        .enumerate()
        .map(|(i, (fake, memory))| fake.as_replica(i, *memory))
        .collect();
    let mut reg = prometheus_client::registry::Registry::with_prefix("mm");
    let metrics = Arc::new(Metrics::register(&mut reg, 100));
    let pool = Pool::with_store(
        replicas,
        ModelRepository::open(repo.path()).unwrap(),
        StoragePolicy::default(),
        metrics,
        settings,
        store,
    );
    Fixture {
        pool,
        registry: reg,
        fakes: fakes.iter().map(|(f, _)| f.clone()).collect(),
        _repo: repo,
        model_dir,
    }
}

impl Fixture {
    async fn ready(self) -> Self {
        self.pool.probe_replicas().await;
        self
    }

    async fn register_with(&self, name: &str, extra: &str) -> Registered {
        let body = format!(
            r#"{{"storageUri": "file://{}"{extra}}}"#,
            self.model_dir.path().display()
        );
        self.pool.register(name, body.as_bytes()).await.unwrap().0
    }

    async fn register(&self, name: &str, memory: u64) -> Registered {
        self.register_with(name, &format!(r#", "memory": {memory}"#))
            .await
    }

    fn total_loads(&self) -> usize {
        self.fakes
            .iter()
            .map(|f| f.loads.load(Ordering::SeqCst))
            .sum()
    }

    fn loaded(&self, replica: usize) -> Vec<String> {
        self.fakes[replica].loaded().into_iter().collect()
    }

    fn report(&self, reporter: &str, entries: &[(&str, &str, u64, u64)]) {
        let report = UsageReport {
            reporter: reporter.into(),
            entries: entries
                .iter()
                .map(|&(model, replica, requests, in_flight)| UsageEntry {
                    model: model.into(),
                    replica: replica.into(),
                    requests,
                    in_flight,
                })
                .collect(),
        };
        self.pool.report_usage(report).unwrap();
    }

    /// Waits (bounded) for background scaler work to settle.
    async fn settle(&self) {
        for _ in 0..100 {
            let busy = {
                let t = self.pool.table();
                t.active()
                    .iter()
                    .any(|n| t.get(n).is_some_and(|e| e.scaling))
            };
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("scaler work did not settle");
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_requests_cause_one_load() {
    let f = fixture(&[1000], settings()).ready().await;
    f.fakes[0].load_delay_ms.store(50, Ordering::SeqCst);
    f.register("m", 100).await;
    let routes = futures::future::join_all((0..50).map(|_| f.pool.route("m"))).await;
    assert!(routes
        .iter()
        .all(|r| r.as_ref().unwrap().address == "127.0.0.1:8000"));
    assert_eq!(f.total_loads(), 1);
    assert_eq!(f.pool.model("m").unwrap().state, ModelState::Loaded);
}

#[tokio::test(start_paused = true)]
async fn unknown_models_are_not_found() {
    let f = fixture(&[1000], settings()).ready().await;
    assert!(matches!(
        f.pool.route("nope").await,
        Err(PoolError::UnknownModel(_))
    ));
    assert!(matches!(
        f.pool.route("../x").await,
        Err(PoolError::Spec(_))
    ));
    assert!(matches!(
        f.pool.delete("nope").await,
        Err(PoolError::UnknownModel(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn failed_loads_report_the_reason_and_back_off() {
    let f = fixture(&[1000], settings()).ready().await;
    *f.fakes[0].fail_loads_with.lock().unwrap() = Some("bad model.py".into());
    f.register("m", 100).await;
    let err = f.pool.route("m").await.unwrap_err().to_string();
    assert!(err.contains("bad model.py"), "{err}");
    let view = f.pool.model("m").unwrap();
    assert_eq!(view.state, ModelState::Failed);
    assert!(view.last_error.unwrap().contains("bad model.py"));
    assert!(view.replicas.is_empty() && view.copies.is_empty());
    // Within the backoff: answered from the table, no second load call.
    let err = f.pool.route("m").await.unwrap_err().to_string();
    assert!(err.contains("next attempt in"), "{err}");
    assert_eq!(f.total_loads(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_model_is_retried_after_the_backoff() {
    let f = fixture(
        &[1000],
        Settings {
            retry_base: Duration::from_millis(20),
            ..settings()
        },
    )
    .ready()
    .await;
    *f.fakes[0].fail_loads_with.lock().unwrap() = Some("transient".into());
    f.register("m", 100).await;
    assert!(f.pool.route("m").await.is_err());
    *f.fakes[0].fail_loads_with.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(f.pool.route("m").await.is_ok());
    assert_eq!(f.pool.model("m").unwrap().last_error, None);
}

#[tokio::test(start_paused = true)]
async fn places_on_the_replica_with_most_free_memory() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    f.register("a", 600).await;
    f.register("b", 300).await;
    f.register("c", 300).await;
    assert_eq!(f.pool.route("a").await.unwrap().replica, "r0");
    assert_eq!(f.pool.route("b").await.unwrap().replica, "r1");
    assert_eq!(
        f.pool.route("c").await.unwrap().replica,
        "r1",
        "r1 has 700 free, r0 400"
    );
    let replicas = f.pool.replicas();
    assert_eq!(replicas[0].used_bytes, 600);
    assert_eq!(replicas[1].used_bytes, 600);
    assert_eq!(replicas[1].models, vec!["b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn refuses_models_that_can_never_fit() {
    let f = fixture(&[1000], Settings::default()).ready().await;
    for (memory, extra) in [
        (801, ""),
        (10, r#", "gpuMemory": 1"#),
        (10, r#", "minCopies": 2, "maxCopies": 2"#),
    ] {
        let body = format!(
            r#"{{"storageUri": "file://{}", "memory": {memory}{extra}}}"#,
            f.model_dir.path().display()
        );
        let err = f.pool.register("big", body.as_bytes()).await.unwrap_err();
        assert!(
            matches!(
                err,
                PoolError::TooBig { .. } | PoolError::TooManyCopies { .. }
            ),
            "{err}"
        );
    }
    assert!(
        f.pool.models(None, 10).0.is_empty(),
        "refused registrations changed nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn evicts_the_least_recently_used_model() {
    let f = fixture(&[300], settings()).ready().await;
    for m in ["a", "b", "c", "d"] {
        f.register(m, 100).await;
    }
    // A millisecond between requests: the clock is paused, and recency is by time.
    for m in ["a", "b", "c", "a", "d"] {
        tokio::time::advance(Duration::from_millis(1)).await;
        f.pool.route(m).await.unwrap(); // after the second "a", b is the least recent.
    }
    assert_eq!(f.loaded(0), vec!["a", "c", "d"]);
    assert_eq!(f.pool.model("b").unwrap().state, ModelState::Pending);
    tokio::time::advance(Duration::from_millis(1)).await;
    f.pool.route("b").await.unwrap(); // c is now the least recently used.
    assert_eq!(f.loaded(0), vec!["a", "b", "d"]);
    assert_eq!(f.pool.replicas()[0].used_bytes, 300);
    assert_eq!(f.total_loads(), 5);
}

/// One replica with room for two: "hot" gets five requests (reported by the gateway),
/// then three one-off models arrive. Returns the models left loaded and the evicted
/// events' (model, policy, priority).
async fn one_offs_after_a_hot_model(
    eviction: crate::eviction::EvictionPolicy,
    hot_load_ms: usize,
) -> (Vec<String>, Vec<(String, String, f64)>) {
    let f = fixture(
        &[200],
        Settings {
            eviction,
            ..settings()
        },
    )
    .ready()
    .await;
    for m in ["hot", "c0", "c1", "c2"] {
        f.register(m, 100).await;
    }
    f.fakes[0]
        .load_delay_ms
        .store(hot_load_ms, Ordering::SeqCst);
    f.pool.route("hot").await.unwrap();
    f.fakes[0].load_delay_ms.store(0, Ordering::SeqCst);
    f.report("w1", &[("hot", "r0", 5, 0)]);
    for m in ["c0", "c1", "c2"] {
        tokio::time::advance(Duration::from_millis(1)).await;
        f.pool.route(m).await.unwrap();
        f.report("w1", &[(m, "r0", 1, 0)]);
    }
    let evicted = f
        .pool
        .events()
        .page(None, 100)
        .events
        .into_iter()
        .filter(|e| e.kind == crate::events::EventKind::Evicted)
        .map(|e| {
            (
                e.model.unwrap_or_default(),
                e.policy.unwrap_or_default(),
                e.priority.unwrap_or(f64::NAN),
            )
        })
        .collect();
    (f.loaded(0), evicted)
}

#[tokio::test(start_paused = true)]
async fn gdsf_keeps_a_frequent_model_through_one_offs_that_lru_lets_evict_it() {
    use crate::eviction::EvictionPolicy;
    let (left, evicted) = one_offs_after_a_hot_model(EvictionPolicy::Lru, 0).await;
    assert_eq!(left, vec!["c1", "c2"]);
    let victims: Vec<&str> = evicted.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(victims, ["hot", "c0"]);
    assert!(evicted.iter().all(|(_, p, _)| p == "lru"));

    let (left, evicted) = one_offs_after_a_hot_model(EvictionPolicy::Gdsf, 0).await;
    assert_eq!(left, vec!["c2", "hot"]);
    // H = L + f * c / s with c = 0.5 s (no measured load time) and s = 1/2 of the
    // replica: c0 goes at 1 (raising L to 1), then c1 at 1 + 1 = 2; hot is worth 5.
    assert_eq!(
        evicted,
        [
            ("c0".to_owned(), "gdsf".to_owned(), 1.0),
            ("c1".to_owned(), "gdsf".to_owned(), 2.0)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn gdsf_keeps_the_model_that_is_slower_to_load_back() {
    use crate::eviction::EvictionPolicy;
    for (eviction, victim) in [
        (EvictionPolicy::Lru, "slow"),
        (EvictionPolicy::Gdsf, "fast"),
    ] {
        let f = fixture(
            &[200],
            Settings {
                eviction,
                ..settings()
            },
        )
        .ready()
        .await;
        for m in ["slow", "fast", "new"] {
            f.register(m, 100).await;
        }
        // Same traffic; "slow" takes 2 s to load and is the least recently used.
        f.fakes[0].load_delay_ms.store(2000, Ordering::SeqCst);
        f.pool.route("slow").await.unwrap();
        f.fakes[0].load_delay_ms.store(0, Ordering::SeqCst);
        f.pool.route("fast").await.unwrap();
        f.report("w1", &[("slow", "r0", 2, 0)]);
        tokio::time::advance(Duration::from_millis(1)).await;
        f.report("w1", &[("fast", "r0", 2, 0)]);
        tokio::time::advance(Duration::from_millis(1)).await;
        f.pool.route("new").await.unwrap();
        assert!(
            !f.loaded(0).contains(&victim.to_owned()),
            "{eviction}: {:?}",
            f.loaded(0)
        );
        assert_eq!(f.loaded(0).len(), 2, "{eviction}");
    }
}

#[tokio::test(start_paused = true)]
async fn evicts_down_to_the_low_watermark() {
    let f = fixture(
        &[1000],
        Settings {
            watermarks: Watermarks::new(0.8, 0.5).unwrap(),
            ..settings()
        },
    )
    .ready()
    .await;
    for m in ["a", "b", "c", "d", "e"] {
        f.register(m, 200).await;
    }
    for m in ["a", "b", "c", "d"] {
        tokio::time::advance(Duration::from_millis(1)).await;
        f.pool.route(m).await.unwrap(); // 800 used: at the high watermark.
    }
    f.pool.route("e").await.unwrap();
    // 800 + 200 > 800: evict LRU until used + 200 <= 500: a (800), b (600), c (400).
    assert_eq!(f.loaded(0), vec!["d", "e"]);
}

#[tokio::test(start_paused = true)]
async fn models_with_requests_in_flight_are_not_evicted() {
    let f = fixture(&[200], settings()).ready().await;
    for m in ["busy", "idle", "new"] {
        f.register(m, 100).await;
    }
    f.pool.route("busy").await.unwrap();
    f.pool.route("idle").await.unwrap();
    // "busy" is the least recently used, but a gateway worker has a request in flight.
    f.report("w1", &[("busy", "r0", 0, 1)]);
    f.pool.route("new").await.unwrap();
    assert_eq!(f.loaded(0), vec!["busy", "new"]);
}

fn watched(f: &Fixture) -> Vec<String> {
    let table: mm_wire::RoutingTable =
        serde_json::from_str(&f.pool.inner.routing.current().json).unwrap();
    table
        .models
        .into_iter()
        .filter(|m| m.watch)
        .map(|m| m.model)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_load_blocked_by_requests_in_flight_waits_for_them_and_watches_them() {
    let f = fixture(&[200], settings()).ready().await;
    for m in ["a", "b", "c"] {
        f.register(m, 100).await;
        if m != "c" {
            f.pool.route(m).await.unwrap();
        }
    }
    f.report("w1", &[("a", "r0", 0, 1), ("b", "r0", 0, 2)]);
    let pool = f.pool.clone();
    let waiting = tokio::spawn(async move { pool.route("c").await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiting.is_finished(), "it waits instead of failing");
    assert_eq!(
        f.loaded(0),
        vec!["a", "b"],
        "nothing evicted under its requests"
    );
    // The gateway is asked to report the end of "a"'s requests at once (the plan's victim).
    assert_eq!(watched(&f), ["a"]);
    // Its requests end: the waiting load evicts it, and nothing is watched any more.
    let before = Instant::now();
    f.report("w1", &[("b", "r0", 0, 2)]);
    let route = waiting.await.unwrap().unwrap();
    assert_eq!(route.replica, "r0");
    assert_eq!(
        Instant::now(),
        before,
        "placed at the report, not at a later tick"
    );
    assert_eq!(f.loaded(0), vec!["b", "c"]);
    assert!(watched(&f).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_load_still_blocked_at_the_route_wait_fails_with_the_reason() {
    let f = fixture(
        &[200],
        Settings {
            route_wait: Duration::from_secs(3),
            ..settings()
        },
    )
    .ready()
    .await;
    for m in ["a", "b", "c"] {
        f.register(m, 100).await;
        if m != "c" {
            f.pool.route(m).await.unwrap();
        }
    }
    f.report("w1", &[("a", "r0", 0, 1), ("b", "r0", 0, 1)]);
    let started = Instant::now();
    let err = f.pool.route("c").await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "waited the route wait"
    );
    let text = err.to_string();
    assert!(matches!(err, PoolError::NoCapacity { .. }), "{text}");
    assert!(text.contains("with requests in flight"), "{text}");
    assert_eq!(f.loaded(0), vec!["a", "b"]);
    assert!(watched(&f).is_empty(), "nothing watched once it gave up");
}

#[tokio::test(start_paused = true)]
async fn a_load_that_can_never_fit_fails_at_once() {
    let f = fixture(&[200], settings()).ready().await;
    for m in ["p1", "p2"] {
        f.register_with(m, r#", "memory": 100, "minCopies": 1"#)
            .await;
    }
    until("both pinned copies", || f.loaded(0).len() == 2).await;
    f.register("c", 100).await;
    let started = Instant::now();
    let err = f.pool.route("c").await.unwrap_err();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait: pins never leave"
    );
    assert!(
        err.to_string()
            .contains("even after evicting every model that is not pinned"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_loads_get_room_in_arrival_order() {
    let f = fixture(
        &[200],
        Settings {
            min_age: Duration::from_secs(10),
            ..settings()
        },
    )
    .ready()
    .await;
    for m in ["x", "y", "first", "second"] {
        f.register(m, 100).await;
    }
    f.pool.route("x").await.unwrap();
    f.pool.route("y").await.unwrap();
    f.report("w1", &[("x", "r0", 0, 1), ("y", "r0", 0, 1)]);
    tokio::time::advance(Duration::from_secs(20)).await;
    let spawn = |m: &'static str| {
        let pool = f.pool.clone();
        tokio::spawn(async move { pool.route(m).await })
    };
    let first = spawn("first");
    tokio::time::sleep(Duration::from_millis(1)).await;
    let second = spawn("second");
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Room for one: it goes to the request that came first; the second then waits for the
    // first one's copy to age out or for "y".
    f.report("w1", &[("y", "r0", 0, 1)]);
    assert_eq!(first.await.unwrap().unwrap().replica, "r0");
    tokio::task::yield_now().await;
    assert!(!second.is_finished());
    assert_eq!(f.loaded(0), vec!["first", "y"]);
    f.report("w1", &[]);
    second.await.unwrap().unwrap();
    assert!(f.loaded(0).contains(&"second".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_victim_leaves_the_routing_table_before_it_is_unloaded() {
    let propagation = Duration::from_millis(250);
    let f = fixture(
        &[200],
        Settings {
            table_propagation: propagation,
            ..settings()
        },
    )
    .ready()
    .await;
    for m in ["old", "keep", "new"] {
        f.register(m, 100).await;
    }
    f.pool.route("old").await.unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    f.pool.route("keep").await.unwrap();
    let pool = f.pool.clone();
    let started = Instant::now();
    let placing = tokio::spawn(async move { pool.route("new").await });
    tokio::time::sleep(propagation / 2).await;
    let table = parse_table(&f.pool.routing_table(None, None, Duration::ZERO).await);
    let routed: Vec<&str> = table.models.iter().map(|m| m.model.as_str()).collect();
    assert_eq!(routed, ["keep"], "the victim is no longer routed");
    assert_eq!(f.loaded(0), vec!["keep", "old"], "but not unloaded yet");
    placing.await.unwrap().unwrap();
    assert!(started.elapsed() >= propagation);
    assert_eq!(f.loaded(0), vec!["keep", "new"]);
}

#[tokio::test(start_paused = true)]
async fn a_model_busy_with_another_operation_is_never_a_victim() {
    let f = fixture(&[200], settings()).ready().await;
    for m in ["held", "free", "new"] {
        f.register(m, 100).await;
    }
    f.pool.route("held").await.unwrap();
    f.pool.route("free").await.unwrap();
    let lock = f.pool.table().get_mut("held").unwrap().op_lock();
    let guard = lock.try_lock_owned().unwrap();
    // "held" is the least recently used, but its op lock is taken.
    f.pool.route("new").await.unwrap();
    assert_eq!(f.loaded(0), vec!["held", "new"]);
    drop(guard);
}

#[tokio::test(start_paused = true)]
async fn reported_in_flight_expires_with_its_reporter() {
    let f = fixture(
        &[100],
        Settings {
            report_ttl: Duration::from_millis(20),
            route_wait: Duration::from_millis(10),
            ..settings()
        },
    )
    .ready()
    .await;
    f.register("a", 100).await;
    f.register("b", 100).await;
    f.pool.route("a").await.unwrap();
    f.report("gone-worker", &[("a", "r0", 0, 3)]);
    assert!(f.pool.route("b").await.is_err());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let _ = f.pool.scale_tick();
    assert_eq!(f.pool.model("a").unwrap().in_flight, 0);
    f.pool.route("b").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn recently_used_models_are_protected_by_the_minimum_age() {
    let f = fixture(
        &[200],
        Settings {
            min_age: Duration::from_millis(300),
            ..settings()
        },
    )
    .ready()
    .await;
    for m in ["a", "b", "c"] {
        f.register(m, 100).await;
    }
    f.pool.route("a").await.unwrap();
    f.pool.route("b").await.unwrap();
    // Both are younger than the minimum age: "c" waits for "a" to age out, then evicts it
    // (LRU), instead of failing or evicting a model used moments ago.
    let started = Instant::now();
    f.pool.route("c").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(f.loaded(0), vec!["b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn a_load_that_cannot_wait_for_the_minimum_age_fails_fast() {
    let f = fixture(
        &[200],
        Settings {
            min_age: Duration::from_secs(30),
            route_wait: Duration::from_secs(1),
            ..settings()
        },
    )
    .ready()
    .await;
    for m in ["a", "b", "c"] {
        f.register(m, 100).await;
    }
    f.pool.route("a").await.unwrap();
    f.pool.route("b").await.unwrap();
    let started = Instant::now();
    let err = f.pool.route("c").await.unwrap_err();
    assert!(matches!(err, PoolError::NoCapacity { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(500), "fails fast");
    assert_eq!(f.loaded(0), vec!["a", "b"], "nothing evicted");
}

#[tokio::test(start_paused = true)]
async fn usage_reports_drive_recency() {
    let f = fixture(&[200], settings()).ready().await;
    for m in ["a", "b", "c"] {
        f.register(m, 100).await;
    }
    f.pool.route("a").await.unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    f.pool.route("b").await.unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    // Warm traffic for "a" that never reached the route call.
    f.report(
        "w1",
        &[("a", "r0", 5, 0), ("ghost", "r0", 1, 0), ("a", "r9", 1, 0)],
    );
    f.pool.route("c").await.unwrap();
    assert_eq!(f.loaded(0), vec!["a", "c"]);
}

#[tokio::test(start_paused = true)]
async fn pinned_models_load_at_once_and_are_never_evicted() {
    let f = fixture(&[200], settings()).ready().await;
    f.register_with("pinned", r#", "memory": 100, "minCopies": 1"#)
        .await;
    f.settle().await;
    for _ in 0..100 {
        if f.loaded(0) == vec!["pinned"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(f.loaded(0), vec!["pinned"], "loaded without a request");
    for m in ["a", "b", "c"] {
        f.register(m, 100).await;
        f.pool.route(m).await.unwrap();
    }
    assert!(f.loaded(0).contains(&"pinned".to_string()));
    assert_eq!(f.loaded(0).len(), 2);
    let ev = f.fakes[0].unloads.load(Ordering::SeqCst);
    assert_eq!(ev, 2, "a and b evicted, never the pinned model");
}

#[tokio::test(start_paused = true)]
async fn the_scaler_re_pins_a_model_that_lost_its_copy() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    f.register_with("p", r#", "memory": 100, "minCopies": 2, "maxCopies": 2"#)
        .await;
    for _ in 0..100 {
        if f.pool.model("p").unwrap().replicas.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(f.pool.model("p").unwrap().replicas, vec!["r0", "r1"]);
    // r1 dies and comes back empty; reconciling it on its return drops the lost copy.
    f.fakes[1].down.store(true, Ordering::SeqCst);
    f.pool.probe_replicas().await;
    f.fakes[1].loaded.lock().unwrap().clear();
    f.fakes[1].down.store(false, Ordering::SeqCst);
    f.pool.probe_replicas().await;
    assert_eq!(f.pool.model("p").unwrap().replicas, vec!["r0"]);
    let d = f.pool.scale_tick();
    assert_eq!(d.pin, vec![ModelName::new("p").unwrap()]);
    f.pool.carry_out(d);
    f.settle().await;
    assert_eq!(f.pool.model("p").unwrap().replicas.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn copies_follow_traffic_up_and_down() {
    let scale = ScaleSettings {
        tick: Duration::from_secs(1),
        up_rate: 10.0,
        up_in_flight: 4.0,
        up_ticks: 2,
        down_ticks: 3,
    };
    let f = fixture(
        &[1000, 1000, 1000],
        Settings {
            scale,
            ..settings()
        },
    )
    .ready()
    .await;
    f.register_with("hot", r#", "memory": 100, "maxCopies": 2"#)
        .await;
    f.pool.route("hot").await.unwrap();
    // 40 requests per 1 s tick: 40 req/s on one copy > 10.
    let mut added = false;
    for _ in 0..5 {
        f.report("w1", &[("hot", "r0", 40, 0)]);
        let d = f.pool.scale_tick();
        if !d.add.is_empty() {
            f.pool.carry_out(d);
            added = true;
            break;
        }
    }
    assert!(added, "a copy was added");
    f.settle().await;
    let view = f.pool.model("hot").unwrap();
    assert_eq!(view.replicas.len(), 2, "{view:?}");
    // Never more than maxCopies, however hot.
    for _ in 0..5 {
        f.report("w1", &[("hot", "r0", 400, 0)]);
        assert!(f.pool.scale_tick().add.is_empty());
    }
    // Spread: the next routes alternate between the two copies.
    let a = f.pool.route("hot").await.unwrap().replica;
    let b = f.pool.route("hot").await.unwrap().replica;
    assert_ne!(a, b);
    // Traffic stops: after the down ticks, back to one copy.
    let mut removed = false;
    for _ in 0..12 {
        f.report("w1", &[]);
        let d = f.pool.scale_tick();
        if !d.remove.is_empty() {
            f.pool.carry_out(d);
            removed = true;
            break;
        }
    }
    assert!(removed, "the extra copy was removed");
    f.settle().await;
    assert_eq!(f.pool.model("hot").unwrap().replicas.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn routes_prefer_the_copy_with_fewest_requests_in_flight() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    f.register_with("m", r#", "memory": 100, "minCopies": 2, "maxCopies": 2"#)
        .await;
    for _ in 0..100 {
        if f.pool.model("m").unwrap().replicas.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.report("w1", &[("m", "r0", 0, 5), ("m", "r1", 0, 1)]);
    for _ in 0..4 {
        assert_eq!(f.pool.route("m").await.unwrap().replica, "r1");
    }
}

#[tokio::test(start_paused = true)]
async fn measured_memory_larger_than_declared_is_accounted() {
    let f = fixture(&[1000], settings()).ready().await;
    *f.fakes[0].reported_usage.lock().unwrap() = MemoryUsage { cpu: 300, gpu: 0 };
    f.register("m", 100).await;
    f.pool.route("m").await.unwrap();
    let view = f.pool.model("m").unwrap();
    assert_eq!((view.memory, view.measured_memory), (100, 300));
    assert_eq!(f.pool.replicas()[0].used_bytes, 300);
}

#[tokio::test(start_paused = true)]
async fn delete_unloads_everywhere() {
    let f = fixture(&[1000], settings()).ready().await;
    f.register("m", 100).await;
    f.pool.route("m").await.unwrap();
    assert_eq!(f.loaded(0), vec!["m"]);
    f.pool.delete("m").await.unwrap();
    assert!(f.loaded(0).is_empty());
    assert!(matches!(f.pool.model("m"), Err(PoolError::UnknownModel(_))));
    assert_eq!(f.pool.replicas()[0].used_bytes, 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_storage_uri_reloads_other_changes_apply_in_place() {
    let f = fixture(&[1000], settings()).ready().await;
    assert_eq!(f.register("m", 100).await, Registered::Created);
    assert_eq!(f.register("m", 100).await, Registered::Unchanged);
    f.pool.route("m").await.unwrap();
    assert_eq!(f.register("m", 200).await, Registered::Updated);
    assert_eq!(f.loaded(0), vec!["m"], "a new size does not reload");
    assert_eq!(f.pool.replicas()[0].used_bytes, 200);
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("1")).unwrap();
    let body = format!(
        r#"{{"storageUri": "file://{}", "memory": 200}}"#,
        other.path().display()
    );
    f.pool.register("m", body.as_bytes()).await.unwrap();
    // New files: the new version loads alongside, then replaces the old one.
    assert_eq!(f.pool.model("m").unwrap().state, ModelState::Loaded);
    f.until("the old version is unloaded", |f| {
        let loaded = f.loaded(0);
        loaded.len() == 1 && loaded[0].starts_with("m--")
    })
    .await;
    f.pool.route("m").await.unwrap();
    assert_eq!(f.total_loads(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_load_answers_still_loading_but_finishes() {
    let f = fixture(
        &[1000],
        Settings {
            route_wait: Duration::from_millis(20),
            ..settings()
        },
    )
    .ready()
    .await;
    f.fakes[0].load_delay_ms.store(150, Ordering::SeqCst);
    f.register("m", 100).await;
    let err = f.pool.route("m").await.unwrap_err();
    assert!(matches!(err, PoolError::StillLoading { .. }), "{err}");
    assert_eq!(f.pool.model("m").unwrap().state, ModelState::Loading);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(f.pool.model("m").unwrap().state, ModelState::Loaded);
    assert_eq!(f.total_loads(), 1);
}

#[tokio::test(start_paused = true)]
async fn models_on_a_failed_replica_are_placed_again() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    f.register("m", 100).await;
    let first = f.pool.route("m").await.unwrap();
    let dead = usize::from(first.replica != "r0");
    f.fakes[dead].down.store(true, Ordering::SeqCst);
    f.pool.probe_replicas().await;
    assert!(!f.pool.replicas()[dead].healthy);
    let second = f.pool.route("m").await.unwrap();
    assert_ne!(second.replica, first.replica);
    assert!(f.pool.any_replica().is_ok());
    f.fakes[1 - dead].down.store(true, Ordering::SeqCst);
    f.pool.probe_replicas().await;
    assert!(matches!(
        f.pool.any_replica(),
        Err(PoolError::NoHealthyReplica)
    ));
}

#[tokio::test(start_paused = true)]
async fn pages_through_models_in_name_order() {
    let f = fixture(&[1000], settings()).ready().await;
    for name in ["c", "a", "b", "d"] {
        f.register(name, 1).await;
    }
    let (page, more) = f.pool.models(None, 3);
    assert_eq!(
        page.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(more);
    let (page, more) = f.pool.models(Some("c"), 3);
    assert_eq!(
        page.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["d"]
    );
    assert!(!more);
}

fn parse_table(json: &str) -> mm_wire::RoutingTable {
    serde_json::from_str(json).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_routing_table_lists_loaded_copies_with_their_inputs() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    let empty = parse_table(&f.pool.routing_table(None, None, Duration::ZERO).await);
    assert!(empty.models.is_empty());
    f.register("a", 100).await;
    f.register("b", 100).await;
    let registered = parse_table(&f.pool.routing_table(None, None, Duration::ZERO).await);
    assert_eq!(
        registered.generation, empty.generation,
        "registering routes nothing new"
    );
    f.pool.route("a").await.unwrap();
    let table = parse_table(&f.pool.routing_table(None, None, Duration::ZERO).await);
    assert!(table.generation > empty.generation);
    assert_eq!(table.models.len(), 1);
    assert_eq!(table.models[0].model, "a");
    assert_eq!(table.models[0].replicas[0].address, "127.0.0.1:8000");
    assert_eq!(
        table.models[0].inputs.as_ref().unwrap()[0].shape,
        vec![-1, 4]
    );
    // Routes carry the inputs too (for V1 translation on a miss).
    let route = f.pool.route("b").await.unwrap();
    assert_eq!(route.inputs.unwrap()[0].name, "x");
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_returns_at_the_next_change_or_the_time_limit() {
    let f = fixture(&[1000], settings()).ready().await;
    f.register("a", 100).await;
    let first = parse_table(&f.pool.routing_table(None, None, Duration::ZERO).await);
    let epoch = first.epoch.clone();
    // Up to date and nothing changes: held for the wait, then the same table.
    let started = Instant::now();
    let same = f
        .pool
        .routing_table(
            Some(&epoch),
            Some(first.generation),
            Duration::from_millis(50),
        )
        .await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(parse_table(&same).generation, first.generation);
    // A stale epoch answers at once.
    let started = Instant::now();
    f.pool
        .routing_table(
            Some("old-epoch"),
            Some(first.generation),
            Duration::from_secs(5),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // A load during the poll wakes it.
    let pool = f.pool.clone();
    let poll = tokio::spawn(async move {
        pool.routing_table(
            Some(&epoch),
            Some(first.generation),
            Duration::from_secs(10),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.pool.route("a").await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parse_table(&woken).models.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn failure_reports_change_the_table_only_when_the_replica_confirms() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    f.register("m", 100).await;
    let home = f.pool.route("m").await.unwrap().replica;
    let idx = usize::from(home == "r1");
    let report = |kind| mm_wire::FailureReport {
        model: "m".into(),
        replica: home.clone(),
        kind,
    };
    // A false claim: the replica still has the model.
    f.pool
        .report_failure(report(mm_wire::FailureKind::ModelMissing))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.pool.model("m").unwrap().replicas, vec![home.clone()]);
    // A true one: the replica lost it (say it restarted).
    f.fakes[idx].loaded.lock().unwrap().clear();
    f.pool
        .report_failure(report(mm_wire::FailureKind::ModelMissing))
        .unwrap();
    for _ in 0..100 {
        if f.pool.model("m").unwrap().replicas.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(f.pool.model("m").unwrap().state, ModelState::Pending);
    // Unreachable: believed only if a probe fails too.
    f.pool.route("m").await.unwrap();
    let home = f.pool.model("m").unwrap().replicas[0].clone();
    let idx = usize::from(home == "r1");
    f.pool
        .report_failure(mm_wire::FailureReport {
            model: "m".into(),
            replica: home.clone(),
            kind: mm_wire::FailureKind::Unreachable,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(f.pool.replicas()[idx].healthy);
    f.fakes[idx].down.store(true, Ordering::SeqCst);
    f.pool
        .report_failure(mm_wire::FailureReport {
            model: "m".into(),
            replica: home,
            kind: mm_wire::FailureKind::Unreachable,
        })
        .unwrap();
    for _ in 0..100 {
        if !f.pool.replicas()[idx].healthy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!f.pool.replicas()[idx].healthy);
    let table = parse_table(&f.pool.routing_table(None, None, Duration::ZERO).await);
    assert!(
        table.models.is_empty(),
        "the unhealthy replica's copy is not routable"
    );
    assert!(f
        .pool
        .report_failure(mm_wire::FailureReport {
            model: "../x".into(),
            replica: "r0".into(),
            kind: mm_wire::FailureKind::Unreachable,
        })
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn reconcile_adopts_what_replicas_have_and_drops_what_they_lost() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    f.register("a", 100).await;
    f.register("b", 100).await;
    // A previous pool-manager loaded "a" on r1; a stranger loaded "x" on r0.
    f.fakes[1].loaded.lock().unwrap().insert("a".into());
    f.fakes[0].loaded.lock().unwrap().insert("x".into());
    f.pool.reconcile().await;
    let a = f.pool.model("a").unwrap();
    assert_eq!(
        (a.state, a.replicas.clone()),
        (ModelState::Loaded, vec!["r1".to_string()])
    );
    assert!(a.in_flight == 0 && a.copies.len() == 1);
    assert!(
        !f.loaded(0).contains(&"x".to_string()),
        "unknown models are unloaded"
    );
    assert_eq!(f.pool.route("a").await.unwrap().replica, "r1");
    assert_eq!(f.total_loads(), 0, "adopted, not loaded again");
    // r1 restarts empty: the copy is dropped and the next request places it again.
    f.fakes[1].loaded.lock().unwrap().clear();
    let out = f.pool.reconcile_replica(ReplicaIdx::new(1)).await.unwrap();
    assert_eq!(out.dropped, vec!["a"]);
    assert_eq!(f.pool.model("a").unwrap().state, ModelState::Pending);
    f.pool.route("a").await.unwrap();
    assert_eq!(f.total_loads(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replica_is_out_only_after_failed_probes_in_a_row() {
    let f = fixture(
        &[1000],
        Settings {
            unhealthy_after: 2,
            ..settings()
        },
    )
    .ready()
    .await;
    f.fakes[0].down.store(true, Ordering::SeqCst);
    f.pool.probe_replicas().await;
    assert!(f.pool.replicas()[0].healthy, "one failure is not enough");
    f.pool.probe_replicas().await;
    assert!(!f.pool.replicas()[0].healthy);
    f.fakes[0].down.store(false, Ordering::SeqCst);
    f.pool.probe_replicas().await;
    assert!(f.pool.replicas()[0].healthy, "one success brings it back");
}

#[tokio::test(start_paused = true)]
async fn requests_waiting_for_loads_are_bounded() {
    let f = fixture(
        &[1000],
        Settings {
            max_waiting: 2,
            route_wait: Duration::from_millis(300),
            ..settings()
        },
    )
    .ready()
    .await;
    f.fakes[0].load_delay_ms.store(100, Ordering::SeqCst);
    f.register("m", 100).await;
    let results = futures::future::join_all((0..5).map(|_| f.pool.route("m"))).await;
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(PoolError::Overloaded(2))))
        .count();
    assert_eq!(overloaded, 3, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
    // Once loaded, nothing waits: any number of requests go through.
    let warm = futures::future::join_all((0..5).map(|_| f.pool.route("m"))).await;
    assert!(warm.iter().all(Result::is_ok));
}

// Real time: the store's writer is a thread that paused time would not wait for.
#[tokio::test]
async fn the_durable_store_is_written_before_the_answer() {
    let data = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(model_dir.path().join("1")).unwrap();
    let opened = crate::store::Store::open(data.path()).unwrap();
    assert!(opened.models.is_empty());
    let store = opened.store;
    let mut reg = prometheus_client::registry::Registry::default();
    let pool = Pool::with_store(
        vec![],
        ModelRepository::open(repo.path()).unwrap(),
        StoragePolicy::default(),
        Arc::new(Metrics::register(&mut reg, 10)),
        settings(),
        Some(store),
    );
    let body = format!(
        r#"{{"storageUri": "file://{}", "memory": 1}}"#,
        model_dir.path().display()
    );
    // No replica at all: registration is refused and nothing is stored.
    assert!(pool.register("m", body.as_bytes()).await.is_err());
    drop(pool);
    // The writer thread lets the database go when it sees the pool's handle dropped.
    let mut reopened = None;
    for _ in 0..500 {
        if let Ok(o) = crate::store::Store::open(data.path()) {
            reopened = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reopened = reopened.expect("the store was released within 5 s");
    assert!(reopened.models.is_empty());
}

// Real time: the store's writer is a thread that paused time would not wait for.
#[tokio::test]
async fn metadata_kept_by_a_burst_of_loads_is_written_in_one_commit() {
    let data = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(model_dir.path().join("1")).unwrap();
    let store = crate::store::Store::open(data.path()).unwrap().store;
    let backend = store.backend().clone();
    let fake = Arc::new(FakeReplica::default());
    let replica = fake.as_replica(0, 1 << 30);
    let mut reg = prometheus_client::registry::Registry::default();
    let pool = Pool::with_store(
        vec![replica],
        ModelRepository::open(repo.path()).unwrap(),
        StoragePolicy::default(),
        Arc::new(Metrics::register(&mut reg, 10)),
        settings(),
        Some(store),
    );
    pool.probe_replicas().await;
    let body = format!(
        r#"{{"storageUri": "file://{}", "memory": 1}}"#,
        model_dir.path().display()
    );
    let models = ["a", "b", "c", "gone"].map(|m| ModelName::new(m).unwrap());
    for m in &models {
        pool.register(m.as_str(), body.as_bytes()).await.unwrap();
    }
    let before = backend.snapshot().await.unwrap().revision;
    {
        let mut t = pool.table();
        for m in &models {
            let metadata = serde_json::json!({"name": m.as_str(), "inputs": []});
            pool.keep_description(&mut t, m, (metadata, None));
        }
    }
    // A model deleted meanwhile: its queued record must not come back after the delete.
    pool.delete("gone").await.unwrap();
    let after_delete = backend.snapshot().await.unwrap().revision;
    assert_eq!(after_delete, before + 1, "the delete's own commit only");
    let mut kept = Vec::new();
    for _ in 0..500 {
        let snapshot = backend.snapshot().await.unwrap();
        kept = crate::store::records_of(&snapshot, crate::store::Kind::Metadata);
        if !kept.is_empty() {
            assert_eq!(
                snapshot.revision,
                after_delete + 1,
                "one commit for the burst"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

/// Settings whose drain passes run every 10 ms.
fn fast_drain() -> Settings {
    Settings {
        scale: ScaleSettings {
            tick: Duration::from_millis(10),
            ..ScaleSettings::default()
        },
        ..settings()
    }
}

/// Polls `check` (bounded, 2 s) until it holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(start_paused = true)]
async fn a_draining_replica_takes_no_new_copies() {
    let f = fixture(&[1000, 1000], fast_drain()).ready().await;
    assert!(matches!(
        f.pool.drain("r9"),
        Err(PoolError::UnknownReplica(_))
    ));
    let view = f.pool.drain("r1").unwrap();
    assert!(view.draining);
    for m in ["a", "b", "c"] {
        f.register(m, 100).await;
        f.pool.route(m).await.unwrap();
    }
    assert_eq!(f.loaded(0), vec!["a", "b", "c"]);
    assert!(f.loaded(1).is_empty());
    // Every replica draining: nothing can be placed.
    f.pool.drain("r0").unwrap();
    f.register("d", 100).await;
    assert!(matches!(
        f.pool.route("d").await,
        Err(PoolError::NoCapacity { .. })
    ));
    f.pool.undrain("r1").unwrap();
    assert!(!f.pool.replicas()[1].draining);
}

#[tokio::test(start_paused = true)]
async fn draining_moves_wanted_copies_and_unloads_idle_ones_when_nothing_is_in_flight() {
    let f = fixture(&[1000, 1000], fast_drain()).ready().await;
    f.pool.drain("r1").unwrap();
    for m in ["warm", "idle", "busy"] {
        f.register(m, 100).await;
        f.pool.route(m).await.unwrap();
    }
    f.register_with("pinned", r#", "memory": 100, "minCopies": 1"#)
        .await;
    until("the pinned copy", || f.loaded(0).len() == 4).await;
    // "idle" and the pinned model go unused for longer than a drain keeps copies warm.
    tokio::time::advance(drain::WARM + Duration::from_secs(1)).await;
    f.report("w1", &[("warm", "r0", 1, 0), ("busy", "r0", 1, 1)]);
    f.pool.undrain("r1").unwrap();
    f.pool.drain("r0").unwrap();
    until("r0 keeps only the busy copy", || f.loaded(0) == ["busy"]).await;
    // Wanted copies (recently used or pinned) moved; the idle one is simply gone.
    assert_eq!(f.loaded(1), vec!["pinned", "warm"]);
    assert_eq!(f.pool.model("idle").unwrap().state, ModelState::Pending);
    // The busy one leaves once its requests finish; it was used recently, so it moves.
    f.report("w1", &[]);
    until("r0 empty", || f.loaded(0).is_empty()).await;
    assert_eq!(f.loaded(1), vec!["busy", "pinned", "warm"]);
    let events = f.pool.events().page(None, 100).events;
    let drained_unloads = events
        .iter()
        .filter(|e| e.kind == crate::events::EventKind::Unloaded)
        .filter(|e| e.reason.as_deref() == Some("drained"))
        .count();
    assert_eq!(drained_unloads, 4);
    assert!(events.iter().any(
        |e| e.kind == crate::events::EventKind::Placed && e.reason.as_deref() == Some("drain")
    ));
}

/// The simulator and the live pool, given the same trace on the same pool, choose the
/// same replica and the same victims for every miss: both plan from `snapshot` with the
/// same planner and the same victim order, and nothing else decides. Under LRU, under
/// GDSF as the pool runs it by default, and under the configuration docs/eviction.md
/// recommends for slow loads (decay, half-life 8,000 requests), and with a half-life
/// short enough for decay to reorder victims within this trace.
#[tokio::test(start_paused = true)]
async fn the_simulator_and_the_live_pool_choose_the_same_victims() {
    use crate::eviction::{Aging, EvictionCost, EvictionPolicy};
    let cost = EvictionCost::LoadTime;
    for (eviction, gdsf) in [
        (EvictionPolicy::Lru, cost.config()),
        (EvictionPolicy::Gdsf, cost.config()),
        (EvictionPolicy::Gdsf, cost.tuned(Aging::Decay, 8000.0)),
        (EvictionPolicy::Gdsf, cost.tuned(Aging::Decay, 40.0)),
    ] {
        same_victims(eviction, gdsf).await;
    }
}

/// Replays one trace on the simulator and on a live pool (each request reported by the
/// gateway, then routed) and asserts every miss's replica and victims agree.
async fn same_victims(
    eviction: crate::eviction::EvictionPolicy,
    gdsf: crate::eviction::GdsfConfig,
) {
    use crate::sim::{Policy, SimConfig, Simulation, Step, TraceSpec};
    let policy = match eviction {
        crate::eviction::EvictionPolicy::Lru => Policy::Lru,
        crate::eviction::EvictionPolicy::Gdsf => Policy::Gdsf,
    };
    let label = format!("{}", crate::eviction::OrderInForce::new(eviction, &gdsf));
    let trace = TraceSpec {
        models: 24,
        requests: 300,
        zipf_s: 0.8,
        seed: 5,
        size_min: 20,
        size_max: 120,
    }
    .generate()
    .unwrap();
    let config = SimConfig {
        replicas: 3,
        replica_capacity: 400,
        marks: Watermarks::new(0.8, 0.5).unwrap(),
        min_age: 0,
    };
    let f = fixture(
        &[400, 400, 400],
        Settings {
            watermarks: config.marks,
            eviction,
            gdsf,
            ..settings()
        },
    )
    .ready()
    .await;
    for (i, size) in trace.sizes.iter().enumerate() {
        f.register(&format!("m{i}"), *size).await;
    }
    let mut sim = Simulation::new(&trace, config, policy)
        .unwrap()
        .with_gdsf(gdsf);
    let mut seen_events = f.pool.events().page(None, 1000).next;
    let (mut loads, mut evictions) = (0, 0);
    while let Some((model, step)) = sim.step() {
        tokio::time::advance(Duration::from_millis(1)).await;
        // The simulator counts each request before placing it; so does the pool, from
        // the gateway's usage report.
        f.report("w0", &[(&format!("m{model}"), "r0", 1, 0)]);
        let live = f.pool.route(&format!("m{model}")).await;
        let page = f.pool.events().page(Some(seen_events), 1000);
        seen_events = page.next;
        let evicted: Vec<String> = page
            .events
            .iter()
            .filter(|e| e.kind == crate::events::EventKind::Evicted)
            .filter_map(|e| e.model.clone())
            .collect();
        match step {
            Step::Hit => assert!(
                live.is_ok() && evicted.is_empty(),
                "{label}: m{model}: {live:?} {evicted:?}"
            ),
            Step::Loaded {
                replica,
                evicted: want,
                ..
            } => {
                let want: Vec<String> = want.iter().map(|v| format!("m{v}")).collect();
                assert_eq!(
                    live.unwrap().replica,
                    format!("r{replica}"),
                    "{label}: m{model}"
                );
                assert_eq!(evicted, want, "{label}: m{model}");
                loads += 1;
                evictions += want.len();
            }
            Step::Failed => assert!(live.is_err(), "{label}: m{model}"),
        }
    }
    assert!(
        loads > 50 && evictions > 30,
        "{label}: a trace that exercises eviction: {loads} loads, {evictions} evictions"
    );
}

/// A cold placement reads the candidates' copies, never the registry: the table lookups of
/// a cold route call are the same with 100 or 20,000 models registered.
#[tokio::test(start_paused = true)]
async fn a_cold_route_call_touches_no_other_model() {
    let mut lookups = Vec::new();
    for registered in [100, 20_000] {
        let f = fixture(&[200, 200, 200, 200], settings()).ready().await;
        {
            let mut t = f.pool.table();
            let spec = t_spec(&f, 10);
            for i in 0..registered {
                t.insert(ModelName::new(&format!("m{i:05}")).unwrap(), spec.clone());
            }
        }
        // Some copies everywhere, and a full replica set so the cold one must evict.
        for i in 0..90 {
            f.pool.route(&format!("m{i:05}")).await.unwrap();
        }
        let before = f.pool.table().lookups();
        f.pool.route("m00099").await.unwrap();
        lookups.push(f.pool.table().lookups() - before);
    }
    assert_eq!(
        lookups[0], lookups[1],
        "lookups grew with the registry: {lookups:?}"
    );
    assert!(lookups[0] < 400, "{lookups:?}");
    println!("lookups of a cold route call: {lookups:?}");
}

fn t_spec(f: &Fixture, memory: u64) -> crate::spec::ModelSpec {
    let body = format!(
        r#"{{"storageUri": "file://{}", "memory": {memory}}}"#,
        f.model_dir.path().display()
    );
    crate::spec::ModelSpec::from_json(body.as_bytes(), &crate::spec::StoragePolicy::default())
        .unwrap()
}

/// Not a test: timings at scale, run by hand (`cargo test -p pool-manager --lib
/// timings_at_scale -- --ignored --nocapture`, with `--release` too) and quoted in
/// reports. Real time, fake replicas that load instantly, 1,000 replicas.
#[tokio::test]
#[ignore]
async fn timings_at_scale() {
    for registered in [1_000, 10_000, 100_000] {
        let f = fixture(
            &[64 << 30; 1000],
            Settings {
                min_age: Duration::ZERO,
                ..Settings::default()
            },
        )
        .ready()
        .await;
        let spec = t_spec(&f, 16 << 20);
        {
            let mut t = f.pool.table();
            for i in 0..registered {
                t.insert(ModelName::new(&format!("s{i:06}")).unwrap(), spec.clone());
            }
        }
        let started = std::time::Instant::now();
        for i in 0..300 {
            f.pool.route(&format!("s{i:06}")).await.unwrap();
        }
        let cold = started.elapsed().as_secs_f64() * 1000.0 / 300.0;
        let started = std::time::Instant::now();
        let mut after = None;
        for _ in 0..10 {
            let (page, _) = f.pool.models(after.as_deref(), 1000);
            let json = serde_json::to_vec(&page).unwrap();
            assert!(!json.is_empty());
            after = page.last().map(|m| m.name.clone());
        }
        let list = started.elapsed().as_secs_f64() * 1000.0 / 10.0;
        let started = std::time::Instant::now();
        for _ in 0..100 {
            f.pool.update_gauges();
        }
        let gauges = started.elapsed().as_secs_f64() * 1000.0 / 100.0;
        println!("{registered} models: cold route {cold:.3} ms, page of 1000 {list:.3} ms, gauges {gauges:.3} ms");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &f.registry).unwrap();
        for line in text
            .lines()
            .filter(|l| l.starts_with("mm_cold_phase_seconds_sum"))
        {
            println!("  {line}");
        }
    }
}

/// Waits (bounded, in the test's time) until no failure claim is being checked.
async fn claims_checked(pool: &Pool) {
    for _ in 0..1000 {
        if pool.table().checking.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("failure claims still being checked");
}

fn ignored(pool: &Pool, reason: &'static str) -> u64 {
    pool.metrics()
        .reports_ignored
        .get_or_create(&crate::metrics::ReportLabel {
            report: "failure",
            reason,
        })
        .get()
}

fn unreachable(model: &str, replica: &str) -> mm_wire::FailureReport {
    mm_wire::FailureReport {
        model: model.into(),
        replica: replica.into(),
        kind: mm_wire::FailureKind::Unreachable,
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_report_takes_a_replica_out_only_after_unhealthy_after_failed_probes() {
    let f = fixture(
        &[1000, 1000],
        Settings {
            unhealthy_after: 3,
            ..settings()
        },
    )
    .ready()
    .await;
    f.register("m", 100).await;
    // A blip: two probes fail, the third answers. The report must not take r0 out.
    f.fakes[0].failing_probes.store(2, Ordering::SeqCst);
    let probes = f.fakes[0].ready_calls.load(Ordering::SeqCst);
    f.pool.report_failure(unreachable("m", "r0")).unwrap();
    claims_checked(&f.pool).await;
    assert_eq!(f.fakes[0].ready_calls.load(Ordering::SeqCst) - probes, 3);
    assert!(f.pool.replicas()[0].healthy, "two failed probes of three");
    assert_eq!(
        f.pool
            .table()
            .replica(ReplicaIdx::new(0))
            .unwrap()
            .probe_failures,
        0,
        "a success starts over"
    );
    // Really down: out after exactly three failed probes, the report's own.
    f.fakes[0].down.store(true, Ordering::SeqCst);
    let probes = f.fakes[0].ready_calls.load(Ordering::SeqCst);
    f.pool.report_failure(unreachable("m", "r0")).unwrap();
    claims_checked(&f.pool).await;
    assert_eq!(f.fakes[0].ready_calls.load(Ordering::SeqCst) - probes, 3);
    assert!(!f.pool.replicas()[0].healthy);
    assert!(f.pool.replicas()[1].healthy);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_failure_reports_costs_one_check_per_claim_and_a_bounded_number_at_once() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    let models: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    for m in &models {
        f.register(m, 10).await;
    }
    f.fakes[0].ready_delay_ms.store(1000, Ordering::SeqCst);
    let probes = f.fakes[0].ready_calls.load(Ordering::SeqCst);
    // 4,000 "r0 unreachable" reports naming 40 models: one claim, one check.
    for _ in 0..100 {
        for m in &models {
            f.pool.report_failure(unreachable(m, "r0")).unwrap();
        }
    }
    // 40 distinct "missing" claims: at most MAX_FAILURE_CHECKS checks at once (one
    // already runs for the unreachable claim); the rest are refused, not queued.
    for m in &models {
        f.pool
            .report_failure(mm_wire::FailureReport {
                model: m.clone(),
                replica: "r1".into(),
                kind: mm_wire::FailureKind::ModelMissing,
            })
            .unwrap();
    }
    f.fakes[1].ready_delay_ms.store(1000, Ordering::SeqCst);
    assert_eq!(f.pool.table().checking.len(), routing::MAX_FAILURE_CHECKS);
    assert_eq!(ignored(&f.pool, "duplicate"), 4000 - 1);
    assert_eq!(
        ignored(&f.pool, "busy"),
        (40 - (routing::MAX_FAILURE_CHECKS - 1)) as u64
    );
    claims_checked(&f.pool).await;
    assert_eq!(f.fakes[0].ready_calls.load(Ordering::SeqCst) - probes, 1);
    assert!(f.pool.replicas().iter().all(|r| r.healthy));
    // Claims about what the pool does not know cost nothing.
    f.pool.report_failure(unreachable("ghost", "r0")).unwrap();
    f.pool.report_failure(unreachable("m0", "r7")).unwrap();
    assert!(f.pool.table().checking.is_empty());
    assert_eq!(ignored(&f.pool, "unknown_model"), 1);
    assert_eq!(ignored(&f.pool, "unknown_replica"), 1);
}

#[tokio::test]
async fn reconcile_judges_only_what_the_index_could_know() {
    // One replica with room for one of the two models.
    let f = fixture(&[150], settings()).ready().await;
    f.register("m", 100).await;
    f.register("b", 100).await;
    f.pool.route("m").await.unwrap();
    let hold = f.fakes[0].index_hold.lock().await;
    let pool = f.pool.clone();
    let reconcile = tokio::spawn(async move { pool.reconcile_replica(ReplicaIdx::new(0)).await });
    for _ in 0..1000 {
        if f.fakes[0].index_calls.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(f.fakes[0].index_calls.load(Ordering::SeqCst), 1);
    // While the index (saying "m READY") is on its way, "b" evicts "m" and loads.
    f.pool.route("b").await.unwrap();
    assert_eq!(f.loaded(0), ["b"]);
    drop(hold);
    let out = reconcile.await.unwrap().unwrap();
    assert_eq!(out, Reconciled::default(), "nothing to fix");
    let b = f.pool.model("b").unwrap();
    assert_eq!(
        (b.state, b.replicas),
        (ModelState::Loaded, vec!["r0".to_owned()])
    );
    let m = f.pool.model("m").unwrap();
    assert!(
        m.copies.is_empty(),
        "the evicted model was adopted back: {m:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn metadata_and_readiness_of_a_model_loaded_nowhere_load_nothing() {
    let f = fixture(&[100], settings()).ready().await;
    f.register("m", 100).await;
    f.register("n", 100).await;
    f.register("never", 100).await;
    // Never loaded: ready answers at once; metadata can only be had by loading once.
    let ready = f
        .pool
        .metadata_answer("never", Asked::Ready, false)
        .await
        .unwrap();
    assert_eq!(ready.standby.as_ref().map(|s| s.ready), Some(true));
    assert_eq!(f.total_loads(), 0);
    f.pool.route("m").await.unwrap();
    // Loaded: the call routes to the copy like a route call.
    let routed = f
        .pool
        .metadata_answer("m", Asked::Metadata(None), false)
        .await
        .unwrap();
    assert_eq!(routed.route.map(|r| r.replica), Some("r0".to_owned()));
    f.pool.route("n").await.unwrap(); // evicts m
    assert_eq!(f.loaded(0), vec!["n"]);
    let loads = f.total_loads();
    let answer = f
        .pool
        .metadata_answer("m", Asked::Metadata(None), false)
        .await
        .unwrap();
    let standby = answer.standby.expect("answered from what was kept");
    assert!(answer.route.is_none());
    let body = standby.body.unwrap();
    assert_eq!(body["name"], "m");
    assert_eq!(body["inputs"][0]["shape"], serde_json::json!([-1, 4]));
    let versioned = f
        .pool
        .metadata_answer("m", Asked::Metadata(Some("7".into())), false)
        .await;
    assert!(matches!(versioned, Err(PoolError::UnknownVersion { .. })));
    let config = f.pool.metadata_answer("m", Asked::Config, false).await;
    assert_eq!(
        config.unwrap().standby.unwrap().body.unwrap()["max_batch_size"],
        8
    );
    let grpc = f
        .pool
        .metadata_answer("m", Asked::Ready, true)
        .await
        .unwrap()
        .standby
        .unwrap();
    assert_eq!(grpc.grpc_message.as_deref(), Some("CAE="), "ready: true");
    assert_eq!(grpc.carrier.map(|c| c.replica), Some("r0".to_owned()));
    // gRPC ModelConfig too: ModelConfigResponse { config { name: "m", max_batch_size: 8 } }.
    let grpc_config = f
        .pool
        .metadata_answer("m", Asked::Config, true)
        .await
        .unwrap()
        .standby
        .unwrap();
    use base64::Engine as _;
    let message = base64::engine::general_purpose::STANDARD
        .decode(grpc_config.grpc_message.unwrap())
        .unwrap();
    assert_eq!(
        message,
        b"\x0a\x05\x0a\x01m\x20\x08".to_vec(),
        "{message:?}"
    );
    assert_eq!(
        grpc_config.carrier.map(|c| c.replica),
        Some("r0".to_owned())
    );
    assert_eq!(f.total_loads(), loads, "nothing loaded");
    assert_eq!(f.loaded(0), vec!["n"], "nothing evicted");
    assert!(matches!(
        f.pool.metadata_answer("nobody", Asked::Ready, false).await,
        Err(PoolError::UnknownModel(_))
    ));
    // New files: what was kept no longer describes the model.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("1")).unwrap();
    let body = format!(
        r#"{{"storageUri": "file://{}", "memory": 100}}"#,
        other.path().display()
    );
    f.pool.register("m", body.as_bytes()).await.unwrap();
    let reloaded = f
        .pool
        .metadata_answer("m", Asked::Metadata(None), false)
        .await
        .unwrap();
    assert!(reloaded.route.is_some(), "loaded to learn the new metadata");
    assert_eq!(f.total_loads(), loads + 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_model_is_not_ready() {
    let f = fixture(&[1000], settings()).ready().await;
    f.register("m", 100).await;
    *f.fakes[0].fail_loads_with.lock().unwrap() = Some("bad model".into());
    assert!(f.pool.route("m").await.is_err());
    let answer = f
        .pool
        .metadata_answer("m", Asked::Ready, true)
        .await
        .unwrap();
    let standby = answer.standby.unwrap();
    assert!(!standby.ready);
    assert!(standby.reason.unwrap().contains("replica r0"));
    assert_eq!(standby.grpc_message.as_deref(), Some(""), "ready: false");
}

#[tokio::test(start_paused = true)]
async fn a_model_with_no_healthy_replica_to_load_on_is_not_ready() {
    let f = fixture(&[1000], settings()).ready().await;
    f.register("m", 100).await;
    f.fakes[0].down.store(true, Ordering::SeqCst);
    f.pool.probe_replicas().await;
    let answer = f
        .pool
        .metadata_answer("m", Asked::Ready, false)
        .await
        .unwrap();
    let standby = answer.standby.unwrap();
    assert!(!standby.ready);
    assert_eq!(standby.reason.as_deref(), Some("no healthy replica"));
}

/// A role channel for a pool shared with other instances, starting as a follower.
fn shared_role(pool: &Pool) -> tokio::sync::watch::Sender<crate::election::Role> {
    let (tx, rx) = tokio::sync::watch::channel(crate::election::Role::Follower { leader: None });
    pool.attach_role(rx);
    tx
}

fn leading_until(until: Instant) -> crate::election::Role {
    crate::election::Role::Leader {
        fence: crate::store::Fence {
            key: "/mm/leader".into(),
            revision: 7,
        },
        until,
    }
}

#[tokio::test(start_paused = true)]
async fn only_a_leader_with_its_view_rebuilt_places_and_a_lapsed_one_touches_nothing() {
    let f = fixture(&[1000], settings()).ready().await;
    f.register("m", 100).await;
    let role = shared_role(&f.pool);
    assert!(matches!(f.pool.route("m").await, Err(PoolError::NotLeader)));
    // Leading, but the view is not rebuilt yet: still no route call served.
    role.send_replace(leading_until(Instant::now() + Duration::from_secs(10)));
    assert!(!f.pool.acting());
    assert!(matches!(f.pool.route("m").await, Err(PoolError::NotLeader)));
    assert_eq!(f.total_loads(), 0);
    f.pool.take_lead(None).await.unwrap();
    assert!(f.pool.acting());
    f.pool.route("m").await.unwrap();
    assert_eq!(f.total_loads(), 1);
    // The lease runs out without a word from the campaign (a paused process waking up):
    // nothing reaches a replica any more, not even the unloads of a delete.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(!f.pool.may_act() && !f.pool.acting());
    f.register("m2", 100).await;
    assert!(matches!(
        f.pool.route("m2").await,
        Err(PoolError::NotLeader)
    ));
    f.pool.delete("m").await.unwrap();
    assert_eq!(f.total_loads(), 1);
    assert_eq!(f.fakes[0].unloads.load(Ordering::SeqCst), 0);
    assert_eq!(f.loaded(0), ["m"]);
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_adopts_every_loaded_copy_and_loads_nothing() {
    let f = fixture(&[1000, 1000], settings()).ready().await;
    f.register("a", 100).await;
    f.register("b", 100).await;
    // Loaded by the previous leader.
    f.fakes[0].loaded.lock().unwrap().insert("a".into());
    f.fakes[1].loaded.lock().unwrap().insert("b".into());
    let role = shared_role(&f.pool);
    role.send_replace(leading_until(Instant::now() + Duration::from_secs(10)));
    f.pool.take_lead(None).await.unwrap();
    for (model, address) in [("a", "127.0.0.1:8000"), ("b", "127.0.0.1:8001")] {
        assert_eq!(f.pool.route(model).await.unwrap().address, address);
    }
    assert_eq!(f.total_loads(), 0);
    let table: mm_wire::RoutingTable =
        serde_json::from_str(&f.pool.routing_table(None, None, Duration::ZERO).await).unwrap();
    assert_eq!(table.models.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_follower_serves_the_leaders_table_and_follows_the_registry() {
    use crate::store::{Key, Snapshot, WatchEvent};
    let f = fixture(&[1000], settings()).ready().await;
    let _role = shared_role(&f.pool);
    let leaders = r#"{"epoch":"e1","generation":4,"models":[{"model":"x","replicas":[{"replica":"r0","address":"127.0.0.1:8000"}]}]}"#;
    let mut snapshot = Snapshot::default();
    snapshot
        .records
        .insert(Key::routing_table(), leaders.as_bytes().to_vec());
    f.pool.resync(&snapshot);
    let served = f.pool.routing_table(None, None, Duration::ZERO).await;
    assert_eq!(served.as_str(), leaders);
    // A long poll from a gateway that has it waits for the next one.
    let pool = f.pool.clone();
    let poll = tokio::spawn(async move {
        pool.routing_table(Some("e1"), Some(4), Duration::from_secs(30))
            .await
    });
    tokio::task::yield_now().await;
    let next = leaders.replace("\"generation\":4", "\"generation\":5");
    f.pool.apply_change(WatchEvent {
        revision: 9,
        key: Key::routing_table(),
        value: Some(next.as_bytes().to_vec()),
    });
    assert_eq!(poll.await.unwrap().as_str(), next);
    // Registrations the leader made reach the follower's registry; none is loaded here.
    let spec = format!(
        r#"{{"storageUri":"file://{}","memory":100}}"#,
        f.model_dir.path().display()
    );
    let spec =
        crate::spec::ModelSpec::from_json(spec.as_bytes(), &StoragePolicy::default()).unwrap();
    let stored = serde_json::to_vec(&crate::spec::StoredSpec::from(&spec)).unwrap();
    f.pool.apply_change(WatchEvent {
        revision: 10,
        key: Key::model(&ModelName::new("x").unwrap()),
        value: Some(stored),
    });
    assert!(f.pool.model("x").is_ok());
    f.pool.apply_change(WatchEvent {
        revision: 11,
        key: Key::model(&ModelName::new("x").unwrap()),
        value: None,
    });
    assert!(f.pool.model("x").is_err());
    assert_eq!(f.total_loads(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_follower_routes_warm_calls_from_the_leaders_table_and_nothing_else() {
    use crate::store::{Key, Snapshot};
    let f = fixture(&[1000], settings()).ready().await;
    let role = shared_role(&f.pool);
    assert!(
        f.pool.route_from_followed(Some("x")).is_none(),
        "no table read yet"
    );
    let leaders = r#"{"epoch":"e1","generation":4,"models":[
        {"model":"x","replicas":[{"replica":"r0","address":"127.0.0.1:8000"},{"replica":"r1","address":"127.0.0.1:8001","grpcAddress":"127.0.0.1:9001"}]},
        {"model":"v","replicas":[{"replica":"r1","address":"127.0.0.1:8001"}],"upstream":"v--0123abcd"}]}"#;
    let mut snapshot = Snapshot::default();
    snapshot
        .records
        .insert(Key::routing_table(), leaders.as_bytes().to_vec());
    f.pool.resync(&snapshot);
    // Round-robin over the model's copies, as the table lists them.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let route = f.pool.route_from_followed(Some("x")).unwrap();
        assert_eq!(route.model.as_deref(), Some("x"));
        seen.insert((route.replica, route.address, route.grpc_address));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let v = f.pool.route_from_followed(Some("v")).unwrap();
    assert_eq!(
        (v.address.as_str(), v.upstream.as_deref()),
        ("127.0.0.1:8001", Some("v--0123abcd"))
    );
    let any = f.pool.route_from_followed(None).unwrap();
    assert!(any.model.is_none() && ["r0", "r1"].contains(&any.replica.as_str()));
    // A model with no copy there needs a load, which only a leader makes.
    assert!(f.pool.route_from_followed(Some("cold")).is_none());
    // Acting, an instance routes from its own view, never from the table it followed.
    role.send_replace(leading_until(Instant::now() + Duration::from_secs(10)));
    f.pool.take_lead(None).await.unwrap();
    assert!(f.pool.route_from_followed(Some("x")).is_none());
    assert_eq!(f.total_loads(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_follower_follows_the_leaders_aliases() {
    use crate::store::{Key, Snapshot, WatchEvent};
    let f = fixture(&[1000], settings()).ready().await;
    let _role = shared_role(&f.pool);
    assert!(!f.pool.acting());
    let name = |n: &str| ModelName::new(n).unwrap();
    let targets = |n: &str| f.pool.alias(n).map(|a| a.targets);
    let canary = br#"{"targets":[{"model":"a","weight":90},{"model":"b","weight":10}]}"#;
    f.pool.apply_change(WatchEvent {
        revision: 3,
        key: Key::alias(&name("can")),
        value: Some(canary.to_vec()),
    });
    let weights: Vec<u32> = targets("can").unwrap().iter().map(|t| t.weight).collect();
    assert_eq!(weights, [90, 10]);
    // Moved, then deleted, by the leader.
    f.pool.apply_change(WatchEvent {
        revision: 4,
        key: Key::alias(&name("can")),
        value: Some(br#"{"targets":[{"model":"c","weight":1}]}"#.to_vec()),
    });
    assert_eq!(targets("can").unwrap()[0].model, "c");
    f.pool.apply_change(WatchEvent {
        revision: 5,
        key: Key::alias(&name("can")),
        value: None,
    });
    assert!(matches!(targets("can"), Err(PoolError::UnknownAlias(_))));
    // A snapshot replaces them all; an unreadable record is left out.
    f.pool.apply_change(WatchEvent {
        revision: 6,
        key: Key::alias(&name("old")),
        value: Some(br#"{"target":"a"}"#.to_vec()),
    });
    let mut snapshot = Snapshot::default();
    snapshot
        .records
        .insert(Key::alias(&name("new")), br#"{"target":"b"}"#.to_vec());
    snapshot
        .records
        .insert(Key::alias(&name("bad")), b"not json".to_vec());
    f.pool.resync(&snapshot);
    let names: Vec<String> = f.pool.aliases().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["new"]);
}

// ---- updates without downtime (update.rs) ----

/// A second model directory, for a spec whose files differ (a new `storageUri`).
fn other_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("1")).unwrap();
    std::fs::write(dir.path().join("1/model.py"), "pass # v2").unwrap();
    dir
}

impl Fixture {
    async fn register_dir(
        &self,
        name: &str,
        dir: &std::path::Path,
    ) -> Result<Registered, PoolError> {
        let body = format!(
            r#"{{"storageUri": "file://{}", "memory": 10}}"#,
            dir.display()
        );
        self.pool.register(name, body.as_bytes()).await.map(|r| r.0)
    }

    /// Waits (bounded, on the paused clock) until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..2000 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    fn serving(&self, name: &str) -> Option<String> {
        self.pool
            .table()
            .resolve(&ModelName::new(name).unwrap())
            .map(|k| k.to_string())
    }
}

#[tokio::test(start_paused = true)]
async fn an_update_loads_alongside_then_switches_and_unloads_the_old_version() {
    let f = fixture(&[100, 100], settings()).ready().await;
    f.register("m", 10).await;
    f.pool.route("m").await.unwrap();
    let generation = f.pool.table_generation();
    let v2 = other_model_dir();
    assert_eq!(
        f.register_dir("m", v2.path()).await.unwrap(),
        Registered::Updated
    );
    // Until the switch the old version serves, and the model shows the transition.
    let view = f.pool.model("m").unwrap();
    let transition = view.transition.expect("a transition");
    assert_eq!(transition.state, TransitionState::Loading);
    assert_eq!(transition.copies, 1);
    assert!(transition.version.starts_with("m--"), "{transition:?}");
    f.until("the switch", |f| f.serving("m").as_deref() != Some("m"))
        .await;
    let version = f.serving("m").unwrap();
    assert_eq!(version, transition.version);
    let route = f.pool.route("m").await.unwrap();
    assert_eq!(route.model.as_deref(), Some("m"));
    assert_eq!(route.upstream.as_deref(), Some(version.as_str()));
    let table = f.pool.routing_table(None, None, Duration::ZERO).await;
    let table: mm_wire::RoutingTable = serde_json::from_str(&table).unwrap();
    assert!(table.generation > generation);
    assert_eq!(table.models.len(), 1, "{table:?}");
    assert_eq!(table.models[0].model, "m");
    assert_eq!(table.models[0].upstream.as_deref(), Some(version.as_str()));
    let view = f.pool.model("m").unwrap();
    assert_eq!(view.name, "m");
    assert_eq!(view.version.as_deref(), Some(version.as_str()));
    assert!(view.transition.is_none());
    // The old version goes once its grace passed with nothing in flight.
    f.until("the old version is unloaded", |f| {
        (0..2).all(|i| !f.loaded(i).contains(&"m".to_owned()))
    })
    .await;
    let (page, _) = f.pool.models(None, 10);
    assert_eq!(
        page.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["m"]
    );
    // Usage reports name the Triton-side name.
    f.report("w", &[(&version, &route.replica, 3, 0)]);
    assert!(f.pool.model("m").unwrap().idle_seconds.is_some());
}

#[tokio::test(start_paused = true)]
async fn the_old_version_stays_while_it_has_requests_in_flight() {
    let f = fixture(&[100], settings()).ready().await;
    f.register("m", 10).await;
    f.pool.route("m").await.unwrap();
    f.report("w", &[("m", "r0", 1, 1)]);
    let v2 = other_model_dir();
    f.register_dir("m", v2.path()).await.unwrap();
    f.until("the switch", |f| f.serving("m").as_deref() != Some("m"))
        .await;
    tokio::time::sleep(settings().retire_grace * 3).await;
    assert!(f.loaded(0).contains(&"m".to_owned()), "unloaded in flight");
    f.report("w", &[]);
    f.until("the old version is unloaded", |f| {
        !f.loaded(0).contains(&"m".to_owned())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_update_leaves_the_old_version_serving_and_says_why() {
    let f = fixture(&[100], settings()).ready().await;
    f.register("m", 10).await;
    f.pool.route("m").await.unwrap();
    *f.fakes[0].fail_loads_with.lock().unwrap() = Some("bad model file".into());
    let v2 = other_model_dir();
    f.register_dir("m", v2.path()).await.unwrap();
    f.until("the update fails", |f| {
        f.pool
            .model("m")
            .unwrap()
            .transition
            .is_some_and(|t| t.state == TransitionState::Failed)
    })
    .await;
    let view = f.pool.model("m").unwrap();
    let reason = view.transition.unwrap().reason.unwrap();
    assert!(reason.contains("bad model file"), "{reason}");
    assert_eq!(view.state, ModelState::Loaded);
    assert_eq!(f.serving("m").as_deref(), Some("m"));
    let route = f.pool.route("m").await.unwrap();
    assert_eq!(route.upstream, None);
    f.until("the failed version is gone", |f| f.pool.table().len() == 1)
        .await;
    assert_eq!(f.loaded(0), ["m"]);
    // The failure shows until the spec changes again (back to the serving one, here).
    *f.fakes[0].fail_loads_with.lock().unwrap() = None;
    assert_eq!(
        f.register_dir("m", f.model_dir.path()).await.unwrap(),
        Registered::Unchanged
    );
    assert!(f.pool.model("m").unwrap().transition.is_none());
}

#[tokio::test(start_paused = true)]
async fn updating_a_cold_model_only_changes_its_spec() {
    let f = fixture(&[100], settings()).ready().await;
    f.register("m", 10).await;
    let v2 = other_model_dir();
    assert_eq!(
        f.register_dir("m", v2.path()).await.unwrap(),
        Registered::Updated
    );
    let view = f.pool.model("m").unwrap();
    assert!(view.transition.is_none());
    assert_eq!(view.version, None);
    assert_eq!(f.serving("m").as_deref(), Some("m"));
    assert_eq!(f.total_loads(), 0);
}

#[tokio::test(start_paused = true)]
async fn version_names_are_reserved_and_updates_do_not_overlap() {
    let f = fixture(&[100], settings()).ready().await;
    let err = f
        .register_dir("m--0123abcd", f.model_dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::ReservedName(_)), "{err}");
    f.register("m", 10).await;
    f.pool.route("m").await.unwrap();
    f.fakes[0].load_delay_ms.store(500, Ordering::SeqCst);
    let v2 = other_model_dir();
    f.register_dir("m", v2.path()).await.unwrap();
    let v3 = other_model_dir();
    std::fs::write(v3.path().join("1/model.py"), "pass # v3").unwrap();
    let err = f.register_dir("m", v3.path()).await.unwrap_err();
    assert!(matches!(err, PoolError::UpdateInProgress { .. }), "{err}");
    // The name of a version is no model of its own.
    let version = f.pool.model("m").unwrap().transition.unwrap().version;
    assert!(matches!(
        f.pool.route(&version).await,
        Err(PoolError::UnknownModel(_))
    ));
    assert!(f.pool.model(&version).is_err());
}

#[tokio::test(start_paused = true)]
async fn deleting_an_updated_model_removes_every_version() {
    let f = fixture(&[100], settings()).ready().await;
    f.register("m", 10).await;
    f.pool.route("m").await.unwrap();
    let v2 = other_model_dir();
    f.register_dir("m", v2.path()).await.unwrap();
    f.until("the switch", |f| f.serving("m").as_deref() != Some("m"))
        .await;
    f.pool.delete("m").await.unwrap();
    f.until("every version is gone", |f| {
        f.pool.table().len() == 0 && f.loaded(0).is_empty()
    })
    .await;
    assert!(f.pool.model("m").is_err());
    // The name is free again, served under its own name.
    f.register("m", 10).await;
    assert_eq!(f.serving("m").as_deref(), Some("m"));
}

#[tokio::test(start_paused = true)]
async fn a_restart_restores_the_serving_version_and_the_interrupted_update() {
    use super::update::{NextVersion, VersionRecord};
    let f = fixture(&[100], settings()).ready().await;
    let spec = |dir: &std::path::Path| {
        let body = format!(
            r#"{{"storageUri": "file://{}", "memory": 10}}"#,
            dir.display()
        );
        crate::spec::ModelSpec::from_json(body.as_bytes(), &StoragePolicy::default()).unwrap()
    };
    let v2 = other_model_dir();
    let record = VersionRecord {
        serving: "m--0123abcd".into(),
        next: Some(NextVersion {
            name: "m--ffff0000".into(),
            spec: crate::spec::StoredSpec::from(&spec(v2.path())),
            copies: 1,
        }),
        failed: None,
    };
    let versions = vec![
        ("m".to_owned(), serde_json::to_vec(&record).unwrap()),
        ("n".to_owned(), b"not json".to_vec()),
    ];
    let models = vec![
        (ModelName::new("m").unwrap(), spec(f.model_dir.path())),
        (ModelName::new("n").unwrap(), spec(f.model_dir.path())),
    ];
    let pending = f.pool.restore_with_versions(models, &versions);
    assert_eq!(f.serving("m").as_deref(), Some("m--0123abcd"));
    assert_eq!(f.serving("n").as_deref(), Some("n"));
    assert_eq!(pending, 1);
    // Loaded nowhere: the interrupted update simply applies (once the replicas are read).
    f.pool.take_lead(None).await.unwrap();
    assert_eq!(
        f.pool.model("m").unwrap().storage_uri,
        Some(format!("file://{}", v2.path().display()))
    );
}

// ---- version records across restarts and failovers (versions.rs) ----

/// Two instances on one memory store and the same fake replicas: `a` leads and acts, `b`
/// follows the store's change feed.
struct Pair {
    server: Arc<crate::store::memory::MemoryServer>,
    a: Fixture,
    b: Fixture,
    role_a: tokio::sync::watch::Sender<crate::election::Role>,
    role_b: tokio::sync::watch::Sender<crate::election::Role>,
    lease_a: crate::election::LeaseId,
    backend_b: Arc<crate::store::memory::MemoryClient>,
    store_b: crate::store::Store,
}

const LONG_LEASE: Duration = Duration::from_secs(3600);

/// Campaigns for `id` on `client`: its lease and the role it leads with.
async fn win(
    client: &crate::store::memory::MemoryClient,
    id: &str,
) -> (crate::election::LeaseId, crate::election::Role) {
    use crate::election::{Acquired, Coordinator, Member};
    let (lease, _) = client.grant(LONG_LEASE).await.unwrap();
    let me = Member {
        id: id.into(),
        url: format!("http://{id}"),
    };
    let Acquired::Won(fence) = client.acquire(&me, lease).await.unwrap() else {
        panic!("{id} did not win the election");
    };
    (
        lease,
        crate::election::Role::Leader {
            fence,
            until: Instant::now() + LONG_LEASE,
        },
    )
}

impl Pair {
    async fn start() -> Self {
        use crate::election::Role;
        let server = crate::store::memory::MemoryServer::start();
        let (backend_a, backend_b) = (server.client(), server.client());
        let (lease_a, leading) = win(&backend_a, "a").await;
        let role_a = tokio::sync::watch::channel(leading).0;
        let role_b = tokio::sync::watch::channel(Role::Follower { leader: None }).0;
        let store_a = crate::store::Store::open_with(backend_a.clone(), role_a.subscribe())
            .await
            .unwrap()
            .store;
        let opened_b = crate::store::Store::open_with(backend_b.clone(), role_b.subscribe())
            .await
            .unwrap();
        let store_b = opened_b.store;
        let fakes: Vec<(Arc<FakeReplica>, u64)> = (0..2)
            .map(|_| (Arc::new(FakeReplica::default()), 100))
            .collect();
        let a = fixture_on(&fakes, settings(), Some(store_a.clone()))
            .ready()
            .await;
        let b = fixture_on(&fakes, settings(), Some(store_b.clone()))
            .ready()
            .await;
        a.pool.attach_role(role_a.subscribe());
        b.pool.attach_role(role_b.subscribe());
        a.pool.take_lead(Some(&store_a)).await.unwrap();
        tokio::spawn(
            b.pool
                .clone()
                .follow_store(backend_b.clone(), opened_b.revision),
        );
        Self {
            server,
            a,
            b,
            role_a,
            role_b,
            lease_a,
            backend_b,
            store_b,
        }
    }

    /// `a` dies (its lease ends, it no longer leads); `b` wins and rebuilds its view.
    async fn fail_over(&self) {
        self.server.expire_lease(self.lease_a);
        self.role_a
            .send_replace(crate::election::Role::Follower { leader: None });
        let (_, leading) = win(&self.backend_b, "b").await;
        self.role_b.send_replace(leading);
        self.b.pool.take_lead(Some(&self.store_b)).await.unwrap();
    }

    /// `model`'s version record in the store.
    async fn record(&self, model: &str) -> Option<super::update::VersionRecord> {
        use crate::store::Backend;
        let snapshot = self.backend_b.snapshot().await.unwrap();
        let key = crate::store::Key::version(&ModelName::new(model).unwrap());
        snapshot
            .records
            .get(&key)
            .map(|v| serde_json::from_slice(v).unwrap())
    }
}

/// Every load the fake replicas were sent, by model name.
fn loads_of(f: &Fixture, model: &str) -> usize {
    f.fakes
        .iter()
        .map(|fake| fake.loaded().contains(model) as usize)
        .sum()
}

#[tokio::test(start_paused = true)]
async fn a_follower_follows_an_update_and_as_leader_adopts_the_version_without_a_load() {
    let p = Pair::start().await;
    p.a.register("m", 10).await;
    p.a.pool.route("m").await.unwrap();
    let v2 = other_model_dir();
    p.a.register_dir("m", v2.path()).await.unwrap();
    p.a.until("the switch", |f| f.serving("m").as_deref() != Some("m"))
        .await;
    let version = p.a.serving("m").unwrap();
    p.a.until("the old version is unloaded", |f| loads_of(f, "m") == 0)
        .await;
    // The follower holds the model under the version's name, with the new spec and
    // nothing else.
    p.b.until("the follower follows the switch", |f| {
        f.serving("m").as_deref() == Some(version.as_str())
    })
    .await;
    let view = p.b.pool.model("m").unwrap();
    assert_eq!(view.version.as_deref(), Some(version.as_str()));
    assert!(view.transition.is_none(), "{:?}", view.transition);
    assert_eq!(
        view.storage_uri,
        Some(format!("file://{}", v2.path().display()))
    );
    assert_eq!(p.b.pool.table().len(), 1);
    let loads = p.b.total_loads();
    p.fail_over().await;
    // The new leader adopted the copy loaded under the version's name: no load, and the
    // gateway is sent there under the client name.
    let route = p.b.pool.route("m").await.unwrap();
    assert_eq!(route.upstream.as_deref(), Some(version.as_str()));
    assert_eq!(p.b.total_loads(), loads);
    assert_eq!(loads_of(&p.b, &version), 1);
    let table = p.b.pool.routing_table(None, None, Duration::ZERO).await;
    let table: mm_wire::RoutingTable = serde_json::from_str(&table).unwrap();
    assert_eq!(table.models.len(), 1, "{table:?}");
    assert_eq!(table.models[0].upstream.as_deref(), Some(version.as_str()));
    // A delete the new leader makes removes the version, and a follower's copy follows
    // deletes too (checked on `a`, which now follows).
    tokio::spawn(
        p.a.pool
            .clone()
            .follow_store(p.server.client(), p.record_revision().await),
    );
    p.b.pool.delete("m").await.unwrap();
    assert_eq!(loads_of(&p.b, &version), 0);
    p.a.until("the old leader's copy forgets the model", |f| {
        f.pool.table().len() == 0
    })
    .await;
}

impl Pair {
    /// The store's revision now.
    async fn record_revision(&self) -> crate::store::Revision {
        use crate::store::Backend;
        self.backend_b.snapshot().await.unwrap().revision
    }
}

#[tokio::test(start_paused = true)]
async fn an_update_a_failover_interrupts_is_finished_by_the_new_leader_from_its_loaded_copy() {
    let p = Pair::start().await;
    p.a.register("m", 10).await;
    p.a.pool.route("m").await.unwrap();
    for fake in &p.a.fakes {
        fake.load_delay_ms.store(1000, Ordering::SeqCst);
    }
    let v2 = other_model_dir();
    p.a.register_dir("m", v2.path()).await.unwrap();
    let version = p.a.pool.model("m").unwrap().transition.unwrap().version;
    // The follower shows the update under way.
    p.b.until("the follower shows the update", |f| {
        f.pool
            .model("m")
            .is_ok_and(|v| v.transition.is_some_and(|t| t.version == version))
    })
    .await;
    let shown = p.b.pool.model("m").unwrap().transition.unwrap();
    assert_eq!(shown.state, TransitionState::Loading);
    assert_eq!(shown.copies, 1);
    assert_eq!(p.b.serving("m").as_deref(), Some("m"));
    // The leader dies while the replica loads the new version; the load ends on its own.
    p.fail_over_when_loaded(&version).await;
    p.b.until("the new leader switches", |f| {
        f.serving("m").as_deref() == Some(version.as_str())
    })
    .await;
    // Loaded once (by the dead leader), adopted, switched to; the old version retired.
    assert_eq!(p.b.total_loads(), 2);
    p.b.until("the old version is unloaded", |f| loads_of(f, "m") == 0)
        .await;
    assert_eq!(loads_of(&p.b, &version), 1);
    let record = p.record("m").await.unwrap();
    assert_eq!(record.serving, version);
    assert!(
        record.next.is_none() && record.failed.is_none(),
        "{record:?}"
    );
    assert!(p.b.pool.model("m").unwrap().transition.is_none());
}

impl Pair {
    /// Fails over once the replicas finished loading `version` (the load the dead leader
    /// sent; a real replica lists it LOADING meanwhile, which the new leader waits for).
    async fn fail_over_when_loaded(&self, version: &str) {
        self.server.expire_lease(self.lease_a);
        self.role_a
            .send_replace(crate::election::Role::Follower { leader: None });
        self.b
            .until("the replica loaded the new version", |f| {
                loads_of(f, version) == 1
            })
            .await;
        let (_, leading) = win(&self.backend_b, "b").await;
        self.role_b.send_replace(leading);
        self.b.pool.take_lead(Some(&self.store_b)).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_updates_note_survives_a_failover_until_the_spec_changes_again() {
    let p = Pair::start().await;
    p.a.register("m", 10).await;
    p.a.pool.route("m").await.unwrap();
    *p.a.fakes[0].fail_loads_with.lock().unwrap() = Some("bad model file".into());
    *p.a.fakes[1].fail_loads_with.lock().unwrap() = Some("bad model file".into());
    let v2 = other_model_dir();
    p.a.register_dir("m", v2.path()).await.unwrap();
    let failed = |f: &Fixture| {
        f.pool
            .model("m")
            .ok()
            .and_then(|v| v.transition)
            .filter(|t| t.state == TransitionState::Failed)
    };
    p.a.until("the update fails", |f| failed(f).is_some()).await;
    // Followed, then kept across the failover, with its reason.
    p.b.until("the follower shows the failure", |f| failed(f).is_some())
        .await;
    p.fail_over().await;
    let note = failed(&p.b).expect("the failed update's note");
    assert!(
        note.reason
            .as_deref()
            .unwrap_or("")
            .contains("bad model file"),
        "{note:?}"
    );
    assert_eq!(p.b.serving("m").as_deref(), Some("m"));
    assert_eq!(p.record("m").await.unwrap().failed, Some(note));
    // Putting the serving spec again clears it, durably.
    assert_eq!(
        p.b.register_dir("m", p.a.model_dir.path()).await.unwrap(),
        Registered::Unchanged
    );
    assert!(failed(&p.b).is_none());
    assert_eq!(p.record("m").await, None);
}

// ---- aliases (aliases.rs) ----

#[tokio::test(start_paused = true)]
async fn aliases_share_the_model_namespace_and_protect_their_targets() {
    let f = fixture(&[100], settings()).ready().await;
    f.register("m1", 10).await;
    f.register("m2", 10).await;
    let put = |name: &'static str, body: &'static str| f.pool.put_alias(name, body.as_bytes());
    assert!(matches!(
        put("m1", r#"{"target":"m2"}"#).await,
        Err(PoolError::NameTaken { .. })
    ));
    assert!(matches!(
        put("a", r#"{"target":"nope"}"#).await,
        Err(PoolError::BadAlias(_))
    ));
    let (created, view) = put(
        "a",
        r#"{"targets":[{"model":"m1","weight":9},{"model":"m2","weight":1}]}"#,
    )
    .await
    .unwrap();
    assert!(created);
    assert_eq!(view.targets.len(), 2);
    // An alias is no model, and its name is taken for models.
    let err = f.register_dir("a", f.model_dir.path()).await.unwrap_err();
    assert!(matches!(err, PoolError::NameTaken { .. }), "{err}");
    assert!(matches!(
        f.pool.delete("m2").await,
        Err(PoolError::AliasTarget { .. })
    ));
    // The routing table carries it; a route call for it answers for a target.
    let table = f.pool.routing_table(None, None, Duration::ZERO).await;
    let table: mm_wire::RoutingTable = serde_json::from_str(&table).unwrap();
    assert_eq!(table.aliases.len(), 1, "{table:?}");
    let mut picked = std::collections::HashMap::new();
    for _ in 0..100 {
        let route = f.pool.route("a").await.unwrap();
        *picked.entry(route.model.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(picked.get("m2"), Some(&10), "{picked:?}");
    // Moving it loads the new target on as many copies as the old ones have, first.
    let (created, _) = put("a", r#"{"target":"m2"}"#).await.unwrap();
    assert!(!created);
    assert_eq!(f.pool.model("m2").unwrap().state, ModelState::Loaded);
    f.pool.delete("m1").await.unwrap();
    f.pool.delete_alias("a").await.unwrap();
    assert!(matches!(f.pool.alias("a"), Err(PoolError::UnknownAlias(_))));
    f.pool.delete("m2").await.unwrap();
    let table = f.pool.routing_table(None, None, Duration::ZERO).await;
    assert!(!table.contains("aliases"), "{table}");
}
