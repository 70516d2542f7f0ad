//! The three real components and a whole stack of them: N Triton replicas sharing one
//! model repository, the pool-manager in front of them, and Envoy with the filter.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::paths;
use crate::process::{free_port, Process};

/// How long a component may take to become ready before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Polls `check` every 100 ms until it returns `Ok(Some(v))` or `timeout` passes; the last
/// error (or `what`) is reported on timeout. The harness's only way to wait: no bare sleeps.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// A real Triton server in explicit model-control mode.
pub struct Triton {
    pub name: String,
    /// The loopback address it listens on.
    pub ip: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub process: Process,
    http: reqwest::Client,
}

impl Triton {
    /// Starts a replica on free ports of 127.0.0.1 reading models from `repository`.
    pub fn spawn(name: &str, repository: &Path, logs: &Path) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, repository, logs, &[])
    }

    /// [`Triton::spawn`] with extra environment variables for the `tritonserver` wrapper:
    /// what a user's shell would hand it (an activated venv, a stray `PYTHONHOME`...).
    pub fn spawn_with_env(
        name: &str,
        repository: &Path,
        logs: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let ports = (free_port()?, free_port()?, free_port()?);
        Self::start(name, "127.0.0.1", ports, repository, logs, env)
    }

    /// Starts a replica on `ip` (any 127.x.y.z address) and the given (http, grpc,
    /// metrics) ports: several replicas can then share ports on different addresses, as
    /// pods behind one headless Service do.
    pub fn spawn_at(
        name: &str,
        ip: &str,
        ports: (u16, u16, u16),
        repository: &Path,
        logs: &Path,
    ) -> anyhow::Result<Self> {
        Self::start(name, ip, ports, repository, logs, &[])
    }

    fn start(
        name: &str,
        ip: &str,
        (http_port, grpc_port, metrics_port): (u16, u16, u16),
        repository: &Path,
        logs: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(paths::tritonserver());
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.arg(format!("--model-repository={}", repository.display()))
            .arg("--model-control-mode=explicit")
            .arg("--strict-readiness=false")
            // Our configs are complete; auto-complete costs ~1.2 s per Python model load.
            .arg("--disable-auto-complete-config")
            .arg(format!("--http-address={ip}"))
            .arg(format!("--grpc-address={ip}"))
            .arg(format!("--metrics-address={ip}"))
            .arg(format!("--http-port={http_port}"))
            .arg(format!("--grpc-port={grpc_port}"))
            .arg(format!("--metrics-port={metrics_port}"))
            .arg("--exit-timeout-secs=5")
            // Python backends of two servers on one machine must not share shm names.
            .arg(format!(
                "--backend-config=python,shm-region-prefix-name=mmtest{}{name}{}",
                std::process::id(),
                ip.replace('.', "")
            ));
        let process = Process::spawn(name, cmd, &logs.join(format!("{name}.log")))?;
        Ok(Self {
            name: name.to_owned(),
            ip: ip.to_owned(),
            http_port,
            grpc_port,
            metrics_port,
            process,
            http: client(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.http_port)
    }

    /// This replica as the pool-manager's `--replica` flag names it, with `memory`.
    pub fn replica_flag(&self, memory: &str) -> String {
        format!(
            "name={},url={},memory={memory},grpcPort={}",
            self.name,
            self.url(),
            self.grpc_port
        )
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/v2/health/ready", self.url());
        let http = self.http.clone();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.process.check_alive()?;
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {START_TIMEOUT:?}\n{}",
                    self.name,
                    self.process.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Triton's repository index: `[{name, version, state, reason}]`.
    pub async fn index(&self) -> anyhow::Result<Vec<Value>> {
        let r = self
            .http
            .post(format!("{}/v2/repository/index", self.url()))
            .body("{}")
            .send()
            .await?;
        Ok(r.json().await?)
    }

    /// Whether `model` is READY on this replica, by its own index.
    pub async fn has_ready(&self, model: &str) -> anyhow::Result<bool> {
        Ok(self
            .index()
            .await?
            .iter()
            .any(|m| m["name"] == model && m["state"] == "READY"))
    }

    /// Successful inferences this replica served for `model` (0 if it is not loaded).
    pub async fn inference_count(&self, model: &str) -> anyhow::Result<u64> {
        let r = self
            .http
            .get(format!("{}/v2/models/{model}/stats", self.url()))
            .send()
            .await?;
        if !r.status().is_success() {
            return Ok(0);
        }
        let stats: Value = r.json().await?;
        Ok(stats["model_stats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["inference_stats"]["success"]["count"].as_u64())
            .sum())
    }
}

/// The real pool-manager binary.
pub struct PoolManager {
    pub port: u16,
    pub process: Process,
    http: reqwest::Client,
    /// Everything needed to start it again the same way (same port, same data directory).
    command: (PathBuf, Vec<String>, PathBuf),
}

impl PoolManager {
    /// Starts the pool-manager for `replicas` (each a `--replica` value such as
    /// `name=r0,url=http://127.0.0.1:8000,memory=1Gi,grpcPort=8001`) with extra flags.
    pub fn spawn(
        repository: &Path,
        replicas: &[String],
        extra: &[String],
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--model-repository".to_owned(),
            repository.display().to_string(),
            "--data-dir".to_owned(),
            logs.join("pool-manager-data").display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        for replica in replicas {
            args.push("--replica".to_owned());
            args.push(replica.clone());
        }
        let command = (paths::pool_manager(), args, logs.to_path_buf());
        let process = Self::start(&command, 0)?;
        Ok(Self {
            port,
            process,
            http: client(),
            command,
        })
    }

    fn start(
        command: &(PathBuf, Vec<String>, PathBuf),
        generation: u32,
    ) -> anyhow::Result<Process> {
        let (program, args, logs) = command;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RUST_LOG", "info,pool_manager=debug")
            // Only what the test passes (`--gateway-token-file`), never the shell's.
            .env_remove(GATEWAY_TOKEN_ENV);
        let log = if generation == 0 {
            logs.join("pool-manager.log")
        } else {
            logs.join(format!("pool-manager.{generation}.log"))
        };
        Process::spawn("pool-manager", cmd, &log)
    }

    /// SIGKILLs the pool-manager (if running) and starts it again with the same flags,
    /// port and data directory; waits until it is ready.
    pub async fn restart(&mut self, generation: u32) -> anyhow::Result<()> {
        self.process.kill();
        self.process = Self::start(&self.command, generation)?;
        self.wait_ready().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The sum of every series of the counter or gauge `name` in `/metrics` (e.g.
    /// `mm_model_loads_total` over all replicas), 0 if it has no series yet.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        self.metric_where(name, "").await
    }

    /// Like [`PoolManager::metric`], only over series whose labels contain `label`
    /// (e.g. `outcome="miss"`).
    pub async fn metric_where(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        Ok(sum_metric(&self.metrics_text().await?, name, label))
    }

    /// The whole Prometheus exposition of `/metrics`, for callers that read several series
    /// from one scrape.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.process.check_alive()?;
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("pool-manager not ready\n{}", self.process.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The environment variable Envoy hands the filter's Wasm VM the gateway token in
/// (`vm_config.environment_variables.host_env_keys` in the template).
pub const GATEWAY_TOKEN_ENV: &str = "MM_GATEWAY_TOKEN";

/// The header the filter sends the gateway token in (cross-lane contract, issue 12 item 5).
pub const GATEWAY_TOKEN_HEADER: &str = "x-mm-gateway-token";

/// Real Envoy running the rendered bootstrap with the real filter.
pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    pub process: Process,
    http: reqwest::Client,
    dir: PathBuf,
    /// Given to every start in `MM_GATEWAY_TOKEN`, restarts included.
    gateway_token: Option<String>,
}

impl Envoy {
    /// Renders `envoy/gateway.yaml.tmpl` for these ports and starts Envoy.
    pub fn spawn(pool_manager_port: u16, dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_with_token(pool_manager_port, dir, None)
    }

    /// [`Envoy::spawn`] with the gateway token in its environment (`MM_GATEWAY_TOKEN`),
    /// where the filter reads it, for this start and every restart.
    pub fn spawn_with_token(
        pool_manager_port: u16,
        dir: &Path,
        gateway_token: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::spawn_for(&[pool_manager_port], dir, gateway_token)
    }

    /// [`Envoy::spawn_with_token`] for several pool-manager instances (its
    /// `pool_managers` cluster lists them all, health-checked on `/readyz`).
    pub fn spawn_for(
        pool_manager_ports: &[u16],
        dir: &Path,
        gateway_token: Option<&str>,
    ) -> anyhow::Result<Self> {
        let (port, admin_port) = (free_port()?, free_port()?);
        let config = render_envoy_config_for(port, admin_port, pool_manager_ports)?;
        let config_path = dir.join("envoy.yaml");
        std::fs::write(&config_path, config)?;
        let gateway_token = gateway_token.map(str::to_owned);
        let process = Self::start(dir, "envoy.log", gateway_token.as_deref())?;
        Ok(Self {
            port,
            admin_port,
            process,
            http: client(),
            dir: dir.to_path_buf(),
            gateway_token,
        })
    }

    fn start(dir: &Path, log: &str, gateway_token: Option<&str>) -> anyhow::Result<Process> {
        let config_path = dir.join("envoy.yaml");
        let mut cmd = Command::new(paths::envoy());
        match gateway_token {
            Some(token) => cmd.env(GATEWAY_TOKEN_ENV, token),
            // Never one inherited from the shell that runs the tests.
            None => cmd.env_remove(GATEWAY_TOKEN_ENV),
        };
        cmd.arg("-c")
            .arg(&config_path)
            // No hot restart: no shared-memory segment is left behind in /dev/shm.
            .arg("--disable-hot-restart")
            .arg("--concurrency")
            .arg("2")
            .arg("--log-level")
            .arg("warn")
            .arg("--component-log-level")
            .arg("wasm:info");
        Process::spawn("envoy", cmd, &dir.join(log))
    }

    /// SIGKILLs Envoy and starts it again with the same config (same ports); waits until
    /// it is ready. Its filter starts with an empty table.
    pub async fn restart(&mut self, generation: u32) -> anyhow::Result<()> {
        self.process.kill();
        self.process = Self::start(
            &self.dir,
            &format!("envoy.{generation}.log"),
            self.gateway_token.as_deref(),
        )?;
        self.wait_ready().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let ready = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.process.check_alive()?;
            if let Ok(r) = self.http.get(&ready).send().await {
                if r.status().is_success() && r.text().await.unwrap_or_default().trim() == "LIVE" {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("envoy not ready\n{}", self.process.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One counter or gauge from Envoy's admin `/stats` (e.g. `cluster.pool_manager.upstream_rq_total`).
    pub async fn stat(&self, name: &str) -> anyhow::Result<u64> {
        let text = self
            .http
            .get(format!(
                "http://127.0.0.1:{}/stats?filter=^{}$",
                self.admin_port,
                regex_escape(name)
            ))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .ok_or_else(|| anyhow!("no stat {name} in {text:?}"))?
            .trim()
            .parse()
            .context("stat value")
    }
}

/// Sums the samples of metric `name` in Prometheus/OpenMetrics text, over the series
/// whose label set contains `label` (every series when `label` is empty).
pub fn sum_metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            if !labels.contains(label) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::{sum_metric, write_gateway_token};

    #[test]
    fn gateway_tokens_are_random_hex_in_a_file_only_the_user_reads() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (token, file) = write_gateway_token(a.path()).unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), token);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(write_gateway_token(b.path()).unwrap().0, token);
    }

    #[test]
    fn sums_series_by_name_and_label() {
        let text = "# TYPE mm_x counter\nmm_x_total{outcome=\"hit\"} 2\nmm_x_total{outcome=\"miss\"} 3\nmm_x_total_other 9\nmm_y 4\n";
        assert_eq!(sum_metric(text, "mm_x_total", ""), 5.0);
        assert_eq!(sum_metric(text, "mm_x_total", "outcome=\"miss\""), 3.0);
        assert_eq!(sum_metric(text, "mm_y", ""), 4.0);
        assert_eq!(sum_metric(text, "mm_z", ""), 0.0);
    }
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// Renders the Envoy template with the test's ports; fails on any placeholder left over.
pub fn render_envoy_config(
    port: u16,
    admin_port: u16,
    pool_manager_port: u16,
) -> anyhow::Result<String> {
    render_envoy_config_for(port, admin_port, &[pool_manager_port])
}

/// [`render_envoy_config`] with every pool-manager instance in the `pool_managers` cluster.
pub fn render_envoy_config_for(
    port: u16,
    admin_port: u16,
    pool_manager_ports: &[u16],
) -> anyhow::Result<String> {
    let endpoints: Vec<String> = pool_manager_ports
        .iter()
        .map(|p| format!("{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}"))
        .collect();
    let template = std::fs::read_to_string(paths::envoy_template())?;
    let wasm = paths::filter_wasm();
    if !wasm.exists() {
        bail!(
            "{} is missing: run `make test` (it builds the filter first)",
            wasm.display()
        );
    }
    let rendered = template
        .replace("{{GATEWAY_ADDRESS}}", "127.0.0.1")
        .replace("{{GATEWAY_PORT}}", &port.to_string())
        .replace("{{ENVOY_ADMIN_PORT}}", &admin_port.to_string())
        .replace("{{POOL_MANAGER_HOP_PORT}}", &free_port()?.to_string())
        .replace(
            "{{POOL_MANAGER_ENDPOINTS}}",
            &format!("[{}]", endpoints.join(", ")),
        )
        .replace("{{FILTER_WASM}}", &wasm.display().to_string());
    let leftover = rendered
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find(|l| l.contains("{{"));
    if let Some(line) = leftover {
        bail!("unrendered placeholder in envoy template: {line}");
    }
    Ok(rendered)
}

/// Options for [`Stack::start`]. Build them with `..StackOptions::default()` so that new
/// switches reach every scenario with their default.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub replicas: usize,
    /// Memory each replica offers, as a quantity (`1Gi`).
    pub replica_memory: String,
    /// Extra pool-manager flags.
    pub pool_manager_args: Vec<String>,
    /// Extra environment variables for every Triton replica's `tritonserver` wrapper: the
    /// shell a user starts the stack from (an activated venv, `PYTHONPATH`, ...).
    pub replica_env: Vec<(String, String)>,
    /// Generate a random gateway token ([`Stack::gateway_token`]) and give it to the
    /// pool-manager (`--gateway-token-file`, a 0600 file in the stack's directory) and to
    /// Envoy (`MM_GATEWAY_TOKEN`, which the filter reads); restarts keep it.
    pub gateway_token: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            replicas: 2,
            replica_memory: "1Gi".into(),
            pool_manager_args: Vec::new(),
            replica_env: Vec::new(),
            // As `make up` and the k8s overlays run it: the internal routes authenticated.
            gateway_token: true,
        }
    }
}

/// A fresh random token (256 bits from the kernel, hex) in `dir/gateway-token`, mode 0600.
pub(crate) fn write_gateway_token(dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("gateway-token");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?
        .write_all(token.as_bytes())?;
    Ok((token, path))
}

/// A whole running stack. Fields drop in order: Envoy, pool-manager, replicas, then the
/// temporary directory holding the repository and the logs.
pub struct Stack {
    pub envoy: Envoy,
    /// The token the filter and the pool-manager share, if [`StackOptions::gateway_token`].
    pub gateway_token: Option<String>,
    pub pool_manager: PoolManager,
    pub replicas: Vec<Triton>,
    pub repository: PathBuf,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("mm-stack-").tempdir()?;
        let repository = dir.path().join("model-repository");
        std::fs::create_dir_all(&repository)?;
        // Start every replica first, then wait for them together: Triton's start-up
        // dominates the stack's and the replicas do not depend on each other.
        let env = &options.replica_env;
        let mut replicas = (0..options.replicas)
            .map(|i| Triton::spawn_with_env(&format!("r{i}"), &repository, dir.path(), env))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for r in &mut replicas {
            // A port taken between choosing and binding it: start again on other ports.
            let mut tries = 0;
            while let Err(e) = r.wait_ready().await {
                tries += 1;
                if tries > 3 || !r.process.log_tail(200).contains("already in use") {
                    return Err(e);
                }
                *r = Triton::spawn_with_env(&r.name.clone(), &repository, dir.path(), env)?;
            }
        }
        let configured: Vec<String> = replicas
            .iter()
            .map(|r| r.replica_flag(&options.replica_memory))
            .collect();
        let mut pool_manager_args = options.pool_manager_args.clone();
        let gateway_token = if options.gateway_token {
            let (token, file) = write_gateway_token(dir.path())?;
            pool_manager_args.push("--gateway-token-file".to_owned());
            pool_manager_args.push(file.display().to_string());
            Some(token)
        } else {
            None
        };
        let mut pool_manager =
            PoolManager::spawn(&repository, &configured, &pool_manager_args, dir.path())?;
        pool_manager.wait_ready().await?;
        let mut envoy =
            Envoy::spawn_with_token(pool_manager.port, dir.path(), gateway_token.as_deref())?;
        envoy.wait_ready().await?;
        Ok(Self {
            envoy,
            gateway_token,
            pool_manager,
            replicas,
            repository,
            http: client(),
            dir,
        })
    }

    pub fn replica(&self, name: &str) -> anyhow::Result<&Triton> {
        self.replicas
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| anyhow!("no replica {name}"))
    }

    /// `PUT /api/v1/models/{name}` with `dir` as a file:// URI; returns status and body.
    pub async fn register(
        &self,
        name: &str,
        dir: &Path,
        memory: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let spec = serde_json::json!({
            "storageUri": format!("file://{}", dir.display()),
            "memory": memory,
        });
        self.admin_call(
            reqwest::Method::PUT,
            &format!("/api/v1/models/{name}"),
            Some(spec.to_string()),
        )
        .await
    }

    /// Any admin API call; returns status and the JSON body (Null if not JSON).
    pub async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, self.pool_manager.url(path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A call to the pool-manager's `/internal/v1/*` routes as the filter makes it: a JSON
    /// body if any, and the stack's gateway token (if it has one) in `x-mm-gateway-token`.
    /// Returns status and the JSON body (Null if not JSON).
    pub async fn internal_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, self.pool_manager.url(path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        if let Some(token) = &self.gateway_token {
            request = request.header(GATEWAY_TOKEN_HEADER, token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A request through the gateway; returns status, the `x-mm-replica` header, and the
    /// JSON body (Null if not JSON).
    pub async fn gateway_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<GatewayResponse> {
        let mut request = self.http.request(method, self.envoy.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let replica = response
            .headers()
            .get("x-mm-replica")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        Ok(GatewayResponse {
            status,
            replica,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        })
    }

    /// The models READY on replica `name`, by Triton's own index, sorted.
    pub async fn ready_models(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .replica(name)?
            .index()
            .await?
            .iter()
            .filter(|m| m["state"] == "READY")
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Route calls the pool-manager has answered so far (every outcome).
    pub async fn route_calls(&self) -> anyhow::Result<f64> {
        self.pool_manager.metric("mm_route_requests_total").await
    }

    /// Infers through the gateway until an answer is 200 (bounded by `timeout`): for a
    /// model that is being placed again, or tables that are converging.
    pub async fn infer_until_ok(
        &self,
        what: &str,
        model: &str,
        body: &Value,
        timeout: Duration,
    ) -> anyhow::Result<GatewayResponse> {
        eventually(what, timeout, || async {
            let r = self.infer(model, body).await?;
            Ok((r.status == 200).then_some(r))
        })
        .await
    }

    /// Waits (at most `timeout`) until requests for `model` are answered from the filter's
    /// table on every Envoy worker: 20 requests in a row, all 200, with no route call.
    pub async fn wait_warm(
        &self,
        model: &str,
        body: &Value,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        eventually(
            &format!("{model} in every worker's table"),
            timeout,
            || async {
                let before = self.route_calls().await?;
                for _ in 0..20 {
                    let r = self.infer(model, body).await?;
                    anyhow::ensure!(r.status == 200, "{}", r.text);
                }
                Ok((self.route_calls().await? == before).then_some(()))
            },
        )
        .await
    }

    /// `POST /v2/models/{model}/infer` through the gateway.
    pub async fn infer(&self, model: &str, body: &Value) -> anyhow::Result<GatewayResponse> {
        self.gateway_call(
            reqwest::Method::POST,
            &format!("/v2/models/{model}/infer"),
            Some(body),
            &[],
        )
        .await
    }
}

/// What came back through the gateway.
#[derive(Debug, Clone)]
pub struct GatewayResponse {
    pub status: u16,
    pub replica: Option<String>,
    pub json: Value,
    pub text: String,
}

impl GatewayResponse {
    /// The `data` array of the named output of a V2 infer response, as f64.
    pub fn output(&self, name: &str) -> anyhow::Result<Vec<f64>> {
        let outputs = self.json["outputs"]
            .as_array()
            .ok_or_else(|| anyhow!("no outputs in {}", self.text))?;
        let output = outputs
            .iter()
            .find(|o| o["name"] == name)
            .ok_or_else(|| anyhow!("no output {name} in {}", self.text))?;
        output["data"]
            .as_array()
            .ok_or_else(|| anyhow!("output {name} has no data"))?
            .iter()
            .map(|v| {
                v.as_f64()
                    .or_else(|| v.as_bool().map(|b| f64::from(u8::from(b))))
                    .ok_or_else(|| anyhow!("non-numeric value {v}"))
            })
            .collect()
    }
}
