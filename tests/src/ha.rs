//! A highly available stack: a 3-member etcd on loopback, Triton replicas, several
//! pool-manager instances sharing one etcd key prefix (one leads, the others follow and
//! forward), and Envoy whose pool-manager cluster lists them all. Every process is killed
//! on drop; the etcd data and the logs live in the stack's temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use mm_wire::{ClusterRole, ClusterView};

use crate::etcd::EtcdCluster;
use crate::stack::{client, eventually, write_gateway_token};
use crate::{Envoy, PoolManager, Triton};

/// Options for [`HaStack::start`].
#[derive(Debug, Clone)]
pub struct HaOptions {
    pub instances: usize,
    pub replicas: usize,
    pub replica_memory: String,
    /// Every instance's `--lease-ttl`.
    pub lease_ttl: Duration,
    /// Extra flags for every instance.
    pub pool_manager_args: Vec<String>,
}

impl Default for HaOptions {
    fn default() -> Self {
        Self {
            instances: 2,
            replicas: 2,
            replica_memory: "1Gi".into(),
            lease_ttl: Duration::from_secs(3),
            pool_manager_args: Vec::new(),
        }
    }
}

/// The running stack. Fields drop in order: Envoy, the instances, the replicas, etcd,
/// then the directory.
pub struct HaStack {
    pub envoy: Envoy,
    /// Instance `i` has the id `pm-{i}`.
    pub instances: Vec<PoolManager>,
    pub replicas: Vec<Triton>,
    pub etcd: EtcdCluster,
    pub repository: PathBuf,
    pub gateway_token: String,
    pub http: reqwest::Client,
    launch: Launch,
    pub dir: tempfile::TempDir,
}

/// How an instance is started (again).
struct Launch {
    dir: PathBuf,
    repository: PathBuf,
    store_url: String,
    options: HaOptions,
    /// `--replica` values.
    configured: Vec<String>,
    token_file: PathBuf,
}

impl Launch {
    /// Starts instance `i` (`pm-{i}`), logs in `pm-{i}.{generation}/`.
    fn spawn(&self, i: usize, generation: u32) -> anyhow::Result<PoolManager> {
        let logs = self.dir.join(format!("pm-{i}.{generation}"));
        std::fs::create_dir_all(&logs)?;
        let mut extra = vec![
            format!("--store={}", self.store_url),
            format!("--store-prefix={PREFIX}"),
            format!("--instance-id=pm-{i}"),
            format!("--lease-ttl={}ms", self.options.lease_ttl.as_millis()),
            "--gateway-token-file".to_owned(),
            self.token_file.display().to_string(),
        ];
        extra.extend(self.options.pool_manager_args.iter().cloned());
        PoolManager::spawn(&self.repository, &self.configured, &extra, &logs)
    }
}

/// The etcd key prefix of the stack's pool.
pub const PREFIX: &str = "/mm/ha-pool/";

impl HaStack {
    pub async fn start(options: HaOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("mm-ha-").tempdir()?;
        let repository = dir.path().join("model-repository");
        std::fs::create_dir_all(&repository)?;
        let etcd = EtcdCluster::start(3, dir.path()).await?;
        let mut replicas = (0..options.replicas)
            .map(|i| Triton::spawn(&format!("r{i}"), &repository, dir.path()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for r in &mut replicas {
            r.wait_ready().await?;
        }
        let configured = replicas
            .iter()
            .map(|r| r.replica_flag(&options.replica_memory))
            .collect();
        let (gateway_token, token_file) = write_gateway_token(dir.path())?;
        let launch = Launch {
            dir: dir.path().to_path_buf(),
            repository: repository.clone(),
            store_url: etcd.store_url(),
            options,
            configured,
            token_file,
        };
        let mut instances = Vec::new();
        for i in 0..launch.options.instances {
            let mut pm = launch.spawn(i, 0)?;
            pm.wait_ready().await?;
            instances.push(pm);
        }
        let ports: Vec<u16> = instances.iter().map(|p| p.port).collect();
        let mut envoy = Envoy::spawn_for(&ports, dir.path(), Some(&gateway_token))?;
        envoy.wait_ready().await?;
        let stack = Self {
            envoy,
            instances,
            replicas,
            etcd,
            repository,
            gateway_token,
            http: client(),
            launch,
            dir,
        };
        stack.leader(stack.launch.options.lease_ttl * 4).await?;
        Ok(stack)
    }

    /// SIGKILLs instance `i` if it runs and starts it again the same way (same port and
    /// id, so Envoy's health checks find it again); its log is `pool-manager.{generation}.log`.
    pub async fn restart_instance(&mut self, i: usize, generation: u32) -> anyhow::Result<()> {
        self.instances[i].restart(generation).await
    }

    /// Instance `i`'s view of the cluster.
    pub async fn view(&self, i: usize) -> anyhow::Result<ClusterView> {
        let r = self
            .http
            .get(self.instances[i].url(mm_wire::CLUSTER_PATH))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("cluster view of pm-{i}: HTTP {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// Whether instance `i` is ready (`/readyz` 200).
    pub async fn ready(&self, i: usize) -> anyhow::Result<bool> {
        let r = self
            .http
            .get(self.instances[i].url(mm_wire::READY_PATH))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        Ok(r.status().is_success())
    }

    /// Waits (bounded by `within`) until instance `i` calls itself the leader.
    pub async fn until_leads(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        eventually(&format!("pm-{i} to lead"), within, || async {
            let v = self.view(i).await?;
            Ok((v.role == ClusterRole::Leader).then_some(()))
        })
        .await
    }

    /// Waits until exactly one of the running instances leads and is ready; its index.
    pub async fn leader(&self, within: Duration) -> anyhow::Result<usize> {
        eventually("one ready leader", within, || async {
            let mut leaders = Vec::new();
            for i in 0..self.instances.len() {
                let Ok(v) = self.view(i).await else { continue };
                if v.role == ClusterRole::Leader && self.ready(i).await.unwrap_or(false) {
                    leaders.push(i);
                }
            }
            match leaders.as_slice() {
                [one] => Ok(Some(*one)),
                [] => Ok(None),
                many => Err(anyhow!("several leaders at once: {many:?}")),
            }
        })
        .await
    }

    /// How many times replica logs say `model` was loaded (Triton logs every load).
    pub fn loads_of(&self, model: &str) -> anyhow::Result<usize> {
        let needle = format!("successfully loaded '{model}'");
        let mut n = 0;
        for r in &self.replicas {
            let log = std::fs::read_to_string(r.process.log_path())?;
            n += log.matches(&needle).count();
        }
        Ok(n)
    }

    /// Where the stack's files are.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl HaStack {
    /// The routing table instance `i` serves the gateway now (an immediate answer, with
    /// the gateway token).
    pub async fn table(&self, i: usize) -> anyhow::Result<mm_wire::RoutingTable> {
        let r = self
            .http
            .get(self.instances[i].url(mm_wire::TABLE_PATH))
            .header(mm_wire::GATEWAY_TOKEN_HEADER, &self.gateway_token)
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("table of pm-{i}: HTTP {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// `PUT /api/v1/models/{name}` with the files at `dir` (32Mi) on instance `i`,
    /// forwarded when it follows, bounded: its status and JSON body.
    pub async fn put_model(
        &self,
        i: usize,
        name: &str,
        dir: &Path,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let spec = serde_json::json!({
            "storageUri": format!("file://{}", dir.display()),
            "memory": "32Mi",
        });
        let r = self
            .http
            .put(self.instances[i].url(&format!("/api/v1/models/{name}")))
            .json(&spec)
            .timeout(Duration::from_secs(20))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or_default()))
    }

    /// Registers `name` with the files of the example `example_name` through instance
    /// `i`; an error unless it was created (201).
    pub async fn register(&self, i: usize, name: &str, example_name: &str) -> anyhow::Result<()> {
        let dir = crate::paths::example_model(example_name);
        let (status, body) = self.put_model(i, name, &dir).await?;
        if status != 201 {
            bail!("registering {name} through pm-{i}: {status} {body}");
        }
        Ok(())
    }
}

/// Steady warm traffic on one model through the gateway, about 50 requests a second
/// until stopped: every answer counted, every failure kept with what it said.
pub struct WarmLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`WarmLoad`] saw: successes, and each failure's status and body (or error).
#[derive(Debug)]
pub struct WarmOutcome {
    pub ok: u64,
    pub failures: Vec<String>,
}

impl WarmLoad {
    /// Starts posting `body` to `{gateway}/v2/models/{model}/infer`.
    pub fn start(gateway: &str, model: &str, body: serde_json::Value) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let url = format!("{gateway}/v2/models/{model}/infer");
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .unwrap_or_default();
            while !s.load(Ordering::SeqCst) {
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        lock(&f).push(format!("{status} {text}"));
                    }
                    Err(e) => lock(&f).push(e.to_string()),
                }
                // Paces the load; nothing waits on it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self {
            stop,
            ok,
            failures,
            task,
        }
    }

    /// Requests answered 2xx so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Failures so far.
    pub fn failed(&self) -> usize {
        lock(&self.failures).len()
    }

    /// Waits (bounded) until `more` further requests succeeded: traffic still flows.
    pub async fn wait_for(&self, what: &str, more: u64) -> anyhow::Result<()> {
        let target = self.ok() + more;
        eventually(what, Duration::from_secs(15), || async {
            Ok((self.ok() >= target).then_some(()))
        })
        .await
    }

    /// Stops the traffic; what it saw.
    pub async fn stop(self) -> WarmOutcome {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        WarmOutcome {
            ok: self.ok.load(Ordering::SeqCst),
            failures: lock(&self.failures).clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
