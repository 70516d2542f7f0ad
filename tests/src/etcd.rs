//! A real etcd cluster on loopback for the high-availability scenarios: Debian's `etcd`
//! (installed by install-deps.sh), N members on free ports, one data directory each,
//! killed by PID on drop. Members can be killed, paused and started again with their data,
//! so scenarios can take quorum away and give it back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::{free_port, Process};

/// Bound on a member (or the cluster) becoming healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn etcd_binary() -> PathBuf {
    std::env::var_os("MM_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// One member: its ports and data directory stay the same across restarts.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data_dir: PathBuf,
    process: Option<Process>,
    starts: u32,
}

impl EtcdMember {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Whether its process runs (it may still be paused).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }
}

/// A running cluster; every member is SIGKILLed on drop.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    initial_cluster: String,
    token: String,
    logs: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    /// `user:password` etcdctl logs in with once authentication is on.
    root: Option<String>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one is healthy (has a leader).
    pub async fn start(size: usize, logs: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("mm-etcd").tempdir()?;
        let mut members = Vec::with_capacity(size);
        for i in 1..=size {
            members.push(EtcdMember {
                name: format!("e{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                data_dir: dir.path().join(format!("e{i}")),
                process: None,
                starts: 0,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            token: format!("mm-test-{}-{}", std::process::id(), free_port()?),
            logs: logs.to_path_buf(),
            _dir: dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .no_proxy()
                .build()?,
            root: None,
        };
        for i in 0..size {
            cluster.spawn(i, "new")?;
        }
        for i in 0..size {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize, state: &str) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        m.starts += 1;
        let mut cmd = Command::new(etcd_binary());
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={}", m.client_url()))
            .arg(format!("--advertise-client-urls={}", m.client_url()))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--initial-cluster-token={}", self.token))
            // Loopback: a faster etcd leader election (0.5-1 s instead of 1-2 s), so the
            // scenarios' 3 s leases outlive the loss of the etcd leader.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .env_remove("ETCDCTL_API");
        let log = self.logs.join(format!("etcd-{}.{}.log", m.name, m.starts));
        m.process = Some(Process::spawn(&format!("etcd {}", m.name), cmd, &log)?);
        Ok(())
    }

    /// `etcd://127.0.0.1:A,127.0.0.1:B,...`: the pool-manager's `--store` value.
    pub fn store_url(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Every member's client URL (`http://127.0.0.1:PORT`).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill();
        }
    }

    /// Starts member `i` again on its data (it rejoins the cluster) and waits until it
    /// is healthy, which needs quorum.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i, "existing")?;
        self.wait_healthy(i).await
    }

    /// Waits until member `i` answers `/health` with `"health":"true"` (it has a leader).
    pub async fn wait_healthy(&mut self, i: usize) -> anyhow::Result<()> {
        let url = format!("{}/health", self.members[i].client_url());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(p) = self.members[i].process.as_mut() {
                p.check_alive()?;
            } else {
                bail!("etcd {} is not running", self.members[i].name);
            }
            if let Ok(r) = self.http.get(&url).send().await {
                if r.text()
                    .await
                    .unwrap_or_default()
                    .contains("\"health\":\"true\"")
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd {} not healthy after {START_TIMEOUT:?}",
                    self.members[i].name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the member etcd's Raft elected leader, as `etcdctl endpoint status`
    /// reports it from the running members (`None`: none of them knows a leader).
    pub fn leader(&self) -> anyhow::Result<Option<usize>> {
        let out = self.etcdctl(&["endpoint", "status", "--write-out=json"])?;
        let statuses: Vec<serde_json::Value> =
            serde_json::from_str(&out).context("reading etcdctl endpoint status")?;
        for s in &statuses {
            let status = &s["Status"];
            let (Some(me), Some(leader)) = (
                status["header"]["member_id"].as_u64(),
                status["leader"].as_u64(),
            ) else {
                continue;
            };
            if me != leader {
                continue;
            }
            let endpoint = s["Endpoint"].as_str().unwrap_or_default();
            return Ok(self.members.iter().position(|m| m.client_url() == endpoint));
        }
        Ok(None)
    }

    /// Runs `etcdctl` (API v3) against the running members; returns its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(EtcdMember::client_url)
            .collect();
        let mut cmd = Command::new("etcdctl");
        if let Some(root) = &self.root {
            cmd.arg(format!("--user={root}"));
        }
        let out = cmd
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .context("running etcdctl")?;
        if !out.status.success() {
            bail!(
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Turns etcd's authentication on with a `root` user, and adds `user` (`password`)
    /// with read-write access to the keys under `prefix` only. etcdctl logs in as root
    /// from then on.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) -> anyhow::Result<()> {
        let root_password = format!("root-{}", free_port()?);
        let role = format!("{user}-role");
        self.etcdctl(&["user", "add", &format!("root:{root_password}")])?;
        self.etcdctl(&["user", "grant-role", "root", "root"])?;
        self.etcdctl(&["user", "add", &format!("{user}:{password}")])?;
        self.etcdctl(&["role", "add", &role])?;
        self.etcdctl(&[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "readwrite",
            prefix,
        ])?;
        self.etcdctl(&["user", "grant-role", user, &role])?;
        self.etcdctl(&["auth", "enable"])?;
        self.root = Some(format!("root:{root_password}"));
        Ok(())
    }

    /// The keys under `prefix` (`etcdctl get --prefix --keys-only`).
    pub fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .etcdctl(&["get", "--prefix", "--keys-only", prefix])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let out = self.etcdctl(&["get", "--print-value-only", key])?;
        let value = out.trim_end_matches('\n');
        Ok((!value.is_empty()).then(|| value.to_owned()))
    }
}
