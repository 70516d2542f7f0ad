//! The shared store and leader election against a real 3-member etcd cluster (one per
//! file, scenarios in sequence, each on its own key prefix): one pool-manager leads and
//! alone may write; leadership moves when the leader dies or is paused past its lease;
//! a paused leader's writes are refused when it wakes (fencing, also checked directly on
//! etcd); one etcd member down changes nothing; without quorum writes fail clearly while
//! reads continue, and everything recovers when quorum returns.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use mm_tests::etcd::EtcdCluster;
use mm_tests::paths::example_model;
use mm_tests::process::free_port;
use mm_tests::stack::eventually;
use mm_tests::PoolManager;
use mm_wire::{ClusterRole, ClusterView};
use pool_manager::election::{Election, Member, Role};
use pool_manager::store::etcd::{EtcdBackend, EtcdOptions};
use pool_manager::store::{Change, Key, Kind, Store, StoreError};

/// The lease TTL of these scenarios (etcd's own minimum is about 1.5 s).
const TTL: Duration = Duration::from_secs(3);
/// Added to the TTL for etcd's expiry sweep (every 500 ms) and a busy 2-core machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(2);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

fn spawn_instance(
    cluster: &EtcdCluster,
    prefix: &str,
    id: &str,
    logs: &Path,
) -> anyhow::Result<PoolManager> {
    let dir = logs.join(id);
    std::fs::create_dir_all(&dir)?;
    // A replica nobody listens on: these scenarios are about the registry, not loads.
    let replica = format!("name=r0,url=http://127.0.0.1:{},memory=1Gi", free_port()?);
    let extra = [
        format!("--store={}", cluster.store_url()),
        format!("--store-prefix={prefix}"),
        format!("--instance-id={id}"),
        format!("--lease-ttl={}s", TTL.as_secs()),
        // The default: above etcd's own leader election (about 1 s), which a write
        // waits through when the etcd leader is the member that died.
        "--store-timeout=5s".to_owned(),
    ];
    PoolManager::spawn(&dir.join("repo"), &[replica], &extra, &dir)
}

async fn start_instance(
    cluster: &EtcdCluster,
    prefix: &str,
    id: &str,
    logs: &Path,
) -> anyhow::Result<PoolManager> {
    std::fs::create_dir_all(logs.join(id).join("repo"))?;
    let mut pm = spawn_instance(cluster, prefix, id, logs)?;
    pm.wait_ready().await?;
    Ok(pm)
}

async fn view(pm: &PoolManager) -> anyhow::Result<ClusterView> {
    let r = http().get(pm.url("/api/v1/cluster")).send().await?;
    if !r.status().is_success() {
        bail!("cluster view: HTTP {}", r.status());
    }
    Ok(r.json().await?)
}

/// Waits until `pm` leads; returns how long that took.
async fn until_leads(pm: &PoolManager, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    eventually("an instance to lead", within, || async {
        Ok((view(pm).await?.role == ClusterRole::Leader).then_some(()))
    })
    .await?;
    Ok(start.elapsed())
}

/// Waits until `pm` follows the instance `leader`.
async fn until_follows(pm: &PoolManager, leader: &str) -> anyhow::Result<()> {
    eventually("an instance to follow", TTL * 4, || async {
        let v = view(pm).await?;
        Ok(
            (v.role == ClusterRole::Follower && v.leader.as_ref().is_some_and(|l| l.id == leader))
                .then_some(()),
        )
    })
    .await
}

/// `PUT /api/v1/models/{name}` of the example `linear`: (status, body).
async fn register(pm: &PoolManager, name: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, body, _) = register_via(pm, name).await?;
    Ok((status, body))
}

/// Like [`register`], with the instance that served it when it was forwarded.
async fn register_via(
    pm: &PoolManager,
    name: &str,
) -> anyhow::Result<(u16, serde_json::Value, Option<String>)> {
    let spec = serde_json::json!({
        "storageUri": format!("file://{}", example_model("linear").display()),
        "memory": "32Mi",
    });
    let r = http()
        .put(pm.url(&format!("/api/v1/models/{name}")))
        .json(&spec)
        .send()
        .await?;
    let served_by = served_by(r.headers());
    Ok((
        r.status().as_u16(),
        r.json().await.unwrap_or_default(),
        served_by,
    ))
}

fn served_by(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("x-mm-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn error_of(body: &serde_json::Value) -> String {
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// Which of two instances leads (waiting for one to), and the other.
async fn leader_of<'a>(
    a: &'a mut PoolManager,
    b: &'a mut PoolManager,
) -> anyhow::Result<(&'a mut PoolManager, &'a mut PoolManager)> {
    let (ra, rb) = (&*a, &*b);
    let leader = eventually("one of two instances to lead", TTL * 4, || async {
        let (va, vb) = (view(ra).await?, view(rb).await?);
        Ok(match (va.role, vb.role) {
            (ClusterRole::Leader, ClusterRole::Follower) => Some(0),
            (ClusterRole::Follower, ClusterRole::Leader) => Some(1),
            (ClusterRole::Leader, ClusterRole::Leader) => {
                return Err(anyhow!("two leaders at once"));
            }
            _ => None,
        })
    })
    .await?;
    Ok(if leader == 0 { (a, b) } else { (b, a) })
}

#[tokio::test]
async fn leadership_fencing_and_quorum_on_a_real_etcd() -> anyhow::Result<()> {
    let logs = tempfile::Builder::new().prefix("mm-ha-store").tempdir()?;
    let outcome = scenarios(logs.path()).await;
    if outcome.is_err() {
        // Every process has stopped by now; keep their logs for the reader.
        eprintln!("logs kept in {}", logs.keep().display());
    }
    outcome
}

async fn scenarios(logs: &Path) -> anyhow::Result<()> {
    let mut cluster = EtcdCluster::start(3, logs).await?;

    a_deposed_leaders_fence_is_refused_by_etcd(&cluster).await?;

    let prefix = "/mm/ha-store/";
    let mut a = start_instance(&cluster, prefix, "pm-a", logs).await?;
    let mut b = start_instance(&cluster, prefix, "pm-b", logs).await?;
    let (leader, follower) = leader_of(&mut a, &mut b).await?;
    only_the_leader_writes(&cluster, prefix, leader, follower).await?;
    a_paused_leader_is_replaced_and_fenced(&cluster, prefix, leader, follower).await?;
    // `follower` leads now; `leader` (woken) follows it.
    a_killed_leader_is_replaced(&cluster, prefix, follower, leader, logs).await?;
    let (leader, _) = leader_of(&mut a, &mut b).await?;
    quorum_loss_stops_writes_until_it_returns(&mut cluster, leader).await?;
    drop((a, b));
    etcd_credentials_come_from_a_file_and_stay_secret(&mut cluster, logs).await?;
    Ok(())
}

/// Directly on etcd: a write carrying the fence of a leadership that ended is refused
/// and changes nothing, while the new leader's goes through.
async fn a_deposed_leaders_fence_is_refused_by_etcd(cluster: &EtcdCluster) -> anyhow::Result<()> {
    let prefix = "/mm/fence/";
    let connect = || {
        EtcdBackend::connect(EtcdOptions {
            endpoints: cluster.endpoints(),
            prefix: prefix.into(),
            tls: false,
            ca_pem: None,
            identity_pem: None,
            user: None,
            timeout: Duration::from_secs(2),
        })
    };
    let member = |id: &str| Member {
        id: id.into(),
        url: format!("http://{id}"),
    };
    let (backend_a, backend_b) = (Arc::new(connect().await?), Arc::new(connect().await?));
    let a = Election::start(backend_a.clone(), member("a"), TTL);
    let mut role_a = a.role();
    let stale = eventually("a to lead", TTL * 4, || {
        let role = role_a.borrow_and_update().clone();
        async move {
            Ok(match role {
                Role::Leader { fence, .. } => Some(fence),
                _ => None,
            })
        }
    })
    .await?;
    let b = Election::start(backend_b.clone(), member("b"), TTL);
    eventually("b to follow a", TTL * 2, || {
        let follows =
            matches!(&*b.role().borrow(), Role::Follower { leader: Some(l) } if l.id == "a");
        async move { Ok(follows.then_some(())) }
    })
    .await?;
    let store_b = Store::open_with(backend_b.clone(), b.role()).await?.store;
    let change = |name: &str| {
        vec![Change::Put {
            key: Key {
                kind: Kind::Model,
                name: name.into(),
            },
            value: b"{}".to_vec(),
        }]
    };
    match store_b.commit(change("by-b-too-early")).await {
        Err(StoreError::NotLeader { leader: Some(l) }) if l == "a" => {}
        other => bail!("a follower's write must be refused naming the leader: {other:?}"),
    }
    a.resign(Duration::from_secs(2)).await;
    eventually("b to lead", TTL * 2, || {
        let leads = b.role().borrow().leads();
        async move { Ok(leads.then_some(())) }
    })
    .await?;
    use pool_manager::store::Backend;
    let before = backend_a.snapshot().await?.revision;
    let mut feed = backend_a.watch(before).await?;
    match backend_a.commit(Some(&stale), change("by-a")).await {
        Err(StoreError::Fenced) => {}
        other => bail!("a stale fence must be refused by etcd: {other:?}"),
    }
    store_b.commit(change("by-b")).await?;
    let keys = cluster.keys(&format!("{prefix}models/"))?;
    if keys != [format!("{prefix}models/by-b")] {
        bail!("only the current leader's write may land: {keys:?}");
    }
    // Another instance sees the change through its watch, and in a snapshot.
    let seen = tokio::time::timeout(Duration::from_secs(5), feed.next()).await??;
    if seen.key.name != "by-b" || seen.value.as_deref() != Some(b"{}".as_slice()) {
        bail!("the watch reports the leader's write: {seen:?}");
    }
    let records = backend_a.snapshot().await?.records;
    if records.keys().map(|k| k.name.as_str()).collect::<Vec<_>>() != ["by-b"] {
        bail!("a snapshot holds exactly the records: {records:?}");
    }
    b.resign(Duration::from_secs(2)).await;
    Ok(())
}

async fn only_the_leader_writes(
    cluster: &EtcdCluster,
    prefix: &str,
    leader: &PoolManager,
    follower: &PoolManager,
) -> anyhow::Result<()> {
    let leader_id = view(leader).await?.instance.id;
    until_follows(follower, &leader_id).await?;
    let v = view(follower).await?;
    if v.members.len() != 2 || !v.store.contains(prefix) {
        bail!("both instances are members of the store {prefix}: {v:?}");
    }
    let (status, body) = register(leader, "m1").await?;
    if status != 201 {
        bail!("the leader registers: {status} {body}");
    }
    if cluster.get(&format!("{prefix}models/m1"))?.is_none() {
        bail!("an acknowledged registration is in etcd");
    }
    // A follower hands the write to the leader, which makes it.
    let (status, body, by) = register_via(follower, "m-follower").await?;
    if status != 201 || by.as_deref() != Some(leader_id.as_str()) {
        bail!("a follower forwards writes to the leader: {status} {body} (served by {by:?})");
    }
    if cluster
        .get(&format!("{prefix}models/m-follower"))?
        .is_none()
    {
        bail!("a forwarded registration is in etcd");
    }
    // ... and the follower's own registry follows the store.
    eventually("the follower to see the registration", TTL, || async {
        let r = http()
            .get(follower.url("/api/v1/models/m-follower"))
            .send()
            .await?;
        Ok((r.status() == 200).then_some(()))
    })
    .await?;
    Ok(())
}

/// SIGSTOP the leader past its TTL: the other instance leads; a registration sent to the
/// paused one is answered, when it wakes, with a refusal, and etcd is unchanged.
async fn a_paused_leader_is_replaced_and_fenced(
    cluster: &EtcdCluster,
    prefix: &str,
    leader: &PoolManager,
    follower: &PoolManager,
) -> anyhow::Result<()> {
    let follower_id = view(follower).await?.instance.id;
    leader.process.signal(libc::SIGSTOP);
    let paused = Instant::now();
    // Sent while it is paused: the kernel accepts the connection, the process answers
    // after SIGCONT.
    let late = {
        let url = leader.url("/api/v1/models/m-paused");
        let spec = serde_json::json!({
            "storageUri": format!("file://{}", example_model("linear").display()),
            "memory": "32Mi",
        });
        tokio::spawn(async move {
            let r = http().put(url).json(&spec).send().await?;
            let status = r.status().as_u16();
            let by = served_by(r.headers());
            anyhow::Ok((
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
                by,
            ))
        })
    };
    let took_over = until_leads(follower, TTL + TAKEOVER_SLACK).await;
    leader.process.signal(libc::SIGCONT);
    took_over?;
    eprintln!(
        "paused leader replaced {:?} after the pause (TTL {TTL:?})",
        paused.elapsed()
    );
    // Woken, it makes no write itself: it refuses the write (it no longer leads, and
    // may not know who does yet), or hands it to the new leader, which makes it.
    let (status, body, by) = late.await??;
    let stored = cluster.get(&format!("{prefix}models/m-paused"))?.is_some();
    match (status, by.as_deref()) {
        (503, None) if !stored => {}
        (201, Some(by)) if by == follower_id && stored => {}
        _ => bail!("the woken leader's write must be refused or forwarded: {status} {body} (served by {by:?}, stored: {stored})"),
    }
    until_follows(leader, &follower_id).await?;
    Ok(())
}

/// kill -9 the leader: the other instance leads within the TTL (plus etcd's sweep);
/// started again, the killed one follows.
async fn a_killed_leader_is_replaced(
    cluster: &EtcdCluster,
    prefix: &str,
    leader: &mut PoolManager,
    follower: &mut PoolManager,
    logs: &Path,
) -> anyhow::Result<()> {
    let leader_id = view(leader).await?.instance.id;
    let (status, body) = register(leader, "m2").await?;
    if status != 201 {
        bail!("the new leader registers: {status} {body}");
    }
    leader.process.kill();
    let took = until_leads(follower, TTL + TAKEOVER_SLACK).await?;
    eprintln!("killed leader replaced after {took:?} (TTL {TTL:?})");
    let follower_id = view(follower).await?.instance.id;
    let (status, body) = register(follower, "m3").await?;
    if status != 201 {
        bail!("the instance that took over registers: {status} {body}");
    }
    for m in ["m1", "m2", "m3"] {
        if cluster.get(&format!("{prefix}models/{m}"))?.is_none() {
            bail!("registration {m} lost");
        }
    }
    *leader = spawn_instance(cluster, prefix, &leader_id, logs)?;
    leader.wait_ready().await?;
    until_follows(leader, &follower_id).await
}

/// One etcd member down changes nothing; two down: the leader steps down, writes get a
/// clear 503, reads still answer; members back: a leader again, writes work.
async fn quorum_loss_stops_writes_until_it_returns(
    cluster: &mut EtcdCluster,
    leader: &PoolManager,
) -> anyhow::Result<()> {
    cluster.kill(0);
    let (status, body) = register(leader, "with-two-members").await?;
    if status != 201 || view(leader).await?.role != ClusterRole::Leader {
        bail!("one etcd member down changes nothing: {status} {body}");
    }
    cluster.kill(1);
    eventually(
        "the leader to step down without quorum",
        TTL * 2,
        || async { Ok((view(leader).await?.role == ClusterRole::Follower).then_some(())) },
    )
    .await?;
    let (status, body) = register(leader, "without-quorum").await?;
    if status != 503 || !error_of(&body).contains("no pool-manager leads the pool") {
        bail!("without quorum a write gets a clear 503: {status} {body}");
    }
    let r = http().get(leader.url("/api/v1/models/m1")).send().await?;
    if r.status() != 200 {
        bail!(
            "reads of the local copy continue without quorum: {}",
            r.status()
        );
    }
    cluster.restart(0).await?;
    cluster.restart(1).await?;
    until_leads_any(leader).await?;
    Ok(())
}

/// Quorum is back: some instance leads again and takes writes (a 503 while the lease
/// the old leader could not revoke without quorum is cleared is part of recovering).
async fn until_leads_any(pm: &PoolManager) -> anyhow::Result<()> {
    let spec = serde_json::json!({
        "storageUri": format!("file://{}", example_model("linear").display()),
        "memory": "32Mi",
    });
    eventually("writes to work again with quorum", TTL * 5, || async {
        let Some(leader) = view(pm).await?.leader else {
            return Ok(None);
        };
        let url = format!("{}/api/v1/models/after-quorum", leader.url);
        let r = http().put(url).json(&spec).send().await?;
        Ok((r.status() == 201).then_some(()))
    })
    .await
}

/// With etcd's authentication on, an instance given the user and a password file reads
/// and writes its prefix; a wrong password stops it at start with a clear error that
/// does not show the password.
async fn etcd_credentials_come_from_a_file_and_stay_secret(
    cluster: &mut EtcdCluster,
    logs: &Path,
) -> anyhow::Result<()> {
    let prefix = "/mm/auth/";
    let password = format!("pw-{}", free_port()?);
    cluster.enable_auth("pool", &password, prefix)?;
    let secrets = logs.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let good = secrets.join("good");
    let bad = secrets.join("bad");
    std::fs::write(&good, format!("{password}\n"))?;
    std::fs::write(&bad, "not-the-password\n")?;
    let with_password = |id: &str, file: &Path| -> anyhow::Result<PoolManager> {
        let dir = logs.join(id);
        std::fs::create_dir_all(dir.join("repo"))?;
        let replica = format!("name=r0,url=http://127.0.0.1:{},memory=1Gi", free_port()?);
        let extra = [
            format!("--store={}", cluster.store_url()),
            format!("--store-prefix={prefix}"),
            format!("--instance-id={id}"),
            format!("--lease-ttl={}s", TTL.as_secs()),
            "--etcd-user=pool".to_owned(),
            format!("--etcd-password-file={}", file.display()),
        ];
        PoolManager::spawn(&dir.join("repo"), &[replica], &extra, &dir)
    };

    let mut authed = with_password("pm-auth", &good)?;
    authed.wait_ready().await?;
    until_leads(&authed, TTL * 4).await?;
    let (status, body) = register(&authed, "with-auth").await?;
    if status != 201 || cluster.get(&format!("{prefix}models/with-auth"))?.is_none() {
        bail!("an instance with etcd credentials registers: {status} {body}");
    }

    let mut refused = with_password("pm-bad-password", &bad)?;
    let log = eventually(
        "a wrong etcd password to stop the instance",
        Duration::from_secs(30),
        || {
            let exited = refused.process.check_alive().is_err();
            // The whole log: with RUST_BACKTRACE set, a backtrace follows the error.
            let log = std::fs::read_to_string(refused.process.log_path()).unwrap_or_default();
            async move { Ok(exited.then_some(log)) }
        },
    )
    .await?;
    if !log.contains("authentication failed") || log.contains("not-the-password") {
        bail!("a wrong password is named as such, never shown:\n{log}");
    }
    let own = std::fs::read_to_string(authed.process.log_path())?;
    if own.contains(&password) {
        bail!("the etcd password appeared in the log");
    }
    Ok(())
}
