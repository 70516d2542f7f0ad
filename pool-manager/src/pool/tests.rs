//! Pool behaviour against fake replicas: single-flight loads, failures with backoff,
//! placement, deletes and spec updates, bounded waits, replica failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::replica::fake::FakeReplica;

struct Fixture {
    pool: Pool,
    fakes: Vec<Arc<FakeReplica>>,
    _repo: tempfile::TempDir,
    model_dir: tempfile::TempDir,
}

fn fixture(capacities: &[u64], settings: Settings) -> Fixture {
    let repo = tempfile::tempdir().unwrap();
    let model_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(model_dir.path().join("1")).unwrap();
    std::fs::write(model_dir.path().join("1/model.py"), "pass").unwrap();
    let mut fakes = Vec::new();
    let replicas = capacities
        .iter()
        .enumerate()
        .map(|(i, &memory)| {
            let fake = Arc::new(FakeReplica::default());
            fakes.push(fake.clone());
            Replica {
                id: ReplicaId::new(&format!("r{i}")).unwrap(),
                url: url::Url::parse(&format!("http://127.0.0.1:{}", 8000 + i)).unwrap(),
                address: format!("127.0.0.1:{}", 8000 + i).parse().unwrap(),
                memory,
                client: fake as Arc<dyn ReplicaClient>,
            }
        })
        .collect();
    let mut reg = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut reg));
    let pool = Pool::new(
        replicas,
        ModelRepository::open(repo.path()).unwrap(),
        StoragePolicy::default(),
        metrics,
        settings,
    );
    Fixture {
        pool,
        fakes,
        _repo: repo,
        model_dir,
    }
}

impl Fixture {
    async fn ready(self) -> Self {
        self.pool.probe_replicas().await;
        self
    }

    async fn register(&self, name: &str, memory: u64) -> Registered {
        let body = format!(
            r#"{{"storageUri": "file://{}", "memory": {memory}}}"#,
            self.model_dir.path().display()
        );
        self.pool.register(name, body.as_bytes()).await.unwrap().0
    }

    fn total_loads(&self) -> usize {
        self.fakes
            .iter()
            .map(|f| f.loads.load(Ordering::SeqCst))
            .sum()
    }
}

#[tokio::test]
async fn concurrent_first_requests_cause_one_load() {
    let f = fixture(&[1000], Settings::default()).ready().await;
    f.fakes[0].load_delay_ms.store(50, Ordering::SeqCst);
    f.register("m", 100).await;
    let routes = futures::future::join_all((0..50).map(|_| f.pool.route("m"))).await;
    assert!(routes
        .iter()
        .all(|r| r.as_ref().unwrap().address == "127.0.0.1:8000"));
    assert_eq!(f.total_loads(), 1);
    assert_eq!(f.pool.model("m").unwrap().state, ModelState::Loaded);
}

#[tokio::test]
async fn unknown_models_are_not_found() {
    let f = fixture(&[1000], Settings::default()).ready().await;
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

#[tokio::test]
async fn failed_loads_report_the_reason_and_back_off() {
    let f = fixture(&[1000], Settings::default()).ready().await;
    *f.fakes[0].fail_loads_with.lock().unwrap() = Some("bad model.py".into());
    f.register("m", 100).await;
    let err = f.pool.route("m").await.unwrap_err().to_string();
    assert!(err.contains("bad model.py"), "{err}");
    let view = f.pool.model("m").unwrap();
    assert_eq!(view.state, ModelState::Failed);
    assert!(view.last_error.unwrap().contains("bad model.py"));
    assert!(view.replicas.is_empty());
    // Within the backoff: answered from the table, no second load call.
    let err = f.pool.route("m").await.unwrap_err().to_string();
    assert!(err.contains("next attempt in"), "{err}");
    assert_eq!(f.total_loads(), 1);
}

#[tokio::test]
async fn a_failed_model_is_retried_after_the_backoff() {
    let settings = Settings {
        retry_base: Duration::from_millis(20),
        ..Settings::default()
    };
    let f = fixture(&[1000], settings).ready().await;
    *f.fakes[0].fail_loads_with.lock().unwrap() = Some("transient".into());
    f.register("m", 100).await;
    assert!(f.pool.route("m").await.is_err());
    *f.fakes[0].fail_loads_with.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(f.pool.route("m").await.is_ok());
    assert_eq!(f.pool.model("m").unwrap().last_error, None);
}

#[tokio::test]
async fn places_on_the_replica_with_most_free_memory() {
    let f = fixture(&[1000, 1000], Settings::default()).ready().await;
    f.register("a", 600).await;
    f.register("b", 300).await;
    f.register("c", 300).await;
    let a = f.pool.route("a").await.unwrap();
    let b = f.pool.route("b").await.unwrap();
    let c = f.pool.route("c").await.unwrap();
    assert_eq!(a.replica, "r0");
    assert_eq!(b.replica, "r1");
    assert_eq!(c.replica, "r1", "r1 has 700 free, r0 only 400");
    let replicas = f.pool.replicas();
    assert_eq!(replicas[0].used_bytes, 600);
    assert_eq!(replicas[1].used_bytes, 600);
    assert_eq!(replicas[1].models, vec!["b", "c"]);
}

#[tokio::test]
async fn refuses_models_bigger_than_any_replica_and_reports_full_pools() {
    let f = fixture(&[1000], Settings::default()).ready().await;
    let body = format!(
        r#"{{"storageUri": "file://{}", "memory": 1001}}"#,
        f.model_dir.path().display()
    );
    assert!(matches!(
        f.pool.register("big", body.as_bytes()).await,
        Err(PoolError::TooBig { .. })
    ));
    assert!(
        f.pool.models(None, 10).0.is_empty(),
        "refused registration changed nothing"
    );
    f.register("a", 800).await;
    f.register("b", 300).await;
    f.pool.route("a").await.unwrap();
    assert!(matches!(
        f.pool.route("b").await,
        Err(PoolError::NoCapacity { .. })
    ));
    assert_eq!(f.pool.model("b").unwrap().state, ModelState::Pending);
}

#[tokio::test]
async fn delete_unloads_everywhere() {
    let f = fixture(&[1000], Settings::default()).ready().await;
    f.register("m", 100).await;
    f.pool.route("m").await.unwrap();
    assert!(f.fakes[0].loaded().contains("m"));
    f.pool.delete("m").await.unwrap();
    assert!(f.fakes[0].loaded().is_empty());
    assert!(matches!(f.pool.model("m"), Err(PoolError::UnknownModel(_))));
    assert_eq!(f.pool.replicas()[0].used_bytes, 0);
}

#[tokio::test]
async fn changing_a_spec_unloads_the_old_version() {
    let f = fixture(&[1000], Settings::default()).ready().await;
    assert_eq!(f.register("m", 100).await, Registered::Created);
    assert_eq!(f.register("m", 100).await, Registered::Unchanged);
    f.pool.route("m").await.unwrap();
    assert_eq!(f.register("m", 200).await, Registered::Updated);
    assert!(f.fakes[0].loaded().is_empty());
    let view = f.pool.model("m").unwrap();
    assert_eq!((view.state, view.memory), (ModelState::Pending, 200));
    f.pool.route("m").await.unwrap();
    assert_eq!(f.total_loads(), 2);
}

#[tokio::test]
async fn a_slow_load_answers_still_loading_but_finishes() {
    let settings = Settings {
        route_wait: Duration::from_millis(20),
        ..Settings::default()
    };
    let f = fixture(&[1000], settings).ready().await;
    f.fakes[0].load_delay_ms.store(150, Ordering::SeqCst);
    f.register("m", 100).await;
    let err = f.pool.route("m").await.unwrap_err();
    assert!(matches!(err, PoolError::StillLoading { .. }), "{err}");
    assert_eq!(f.pool.model("m").unwrap().state, ModelState::Loading);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(f.pool.model("m").unwrap().state, ModelState::Loaded);
    assert_eq!(f.total_loads(), 1);
}

#[tokio::test]
async fn models_on_a_failed_replica_are_placed_again() {
    let f = fixture(&[1000, 1000], Settings::default()).ready().await;
    f.register("m", 100).await;
    let first = f.pool.route("m").await.unwrap();
    let dead = if first.replica == "r0" { 0 } else { 1 };
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

#[tokio::test]
async fn pages_through_models_in_name_order() {
    let f = fixture(&[1000], Settings::default()).ready().await;
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
