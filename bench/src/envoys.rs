//! The Envoys the warm path runs beside the harness's gateway: plain Envoy with a static
//! route (no filter, or the no-op Wasm filter), and the gateway again with another build of
//! the filter (to compare builds side by side). Every one runs with the flags the harness
//! gives the gateway's Envoy, so the worker count and log levels never differ.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mm_tests::paths::{envoy, filter_wasm, root};
use mm_tests::process::{free_port, Process};
use serde_json::json;

/// Envoy's worker threads in every warm target (the harness's gateway runs with 2).
pub const CONCURRENCY: &str = "2";

/// A running Envoy started by the bench.
pub struct BenchEnvoy {
    pub process: Process,
    pub port: u16,
    admin_port: u16,
}

impl BenchEnvoy {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits (at most `timeout`) for the admin `/ready` to answer LIVE.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_alive()?;
            if let Ok(r) = http.get(&ready).send().await {
                if r.status().is_success() && r.text().await.unwrap_or_default().trim() == "LIVE" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("bench envoy not ready\n{}", self.process.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The no-op filter's module (`MM_NOOP_WASM` overrides; scripts/bench.sh builds it).
pub fn noop_wasm() -> PathBuf {
    std::env::var_os("MM_NOOP_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip1/release/mm_noop_filter.wasm"))
}

/// The `http_filters` entry of a Wasm filter with the gateway's VM settings (V8, fail
/// closed, body access while headers are held), and `configuration` as its plugin
/// configuration if given, as one line of JSON.
fn wasm_filter_entry(wasm: &Path, configuration: Option<&str>) -> String {
    let mut config = json!({
        "name": "noop",
        "root_id": "noop",
        "failure_policy": "FAIL_CLOSED",
        "allow_on_headers_stop_iteration": true,
        "vm_config": {
            "vm_id": "noop",
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": wasm.display().to_string()}}
        }
    });
    if let Some(value) = configuration {
        config["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": value,
        });
    }
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config,
        }
    })
    .to_string()
}

/// How a static-route Envoy reaches the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// A STATIC cluster holding the replica's address.
    Static,
    /// An ORIGINAL_DST cluster (`use_http_header: false`) connecting where the Wasm
    /// filter's filter state says; the no-op filter is configured with the replica's
    /// address and sets it per request (`set_envoy_filter_state`).
    OriginalDst,
    /// An ORIGINAL_DST cluster reading the address from the request header
    /// [`UPSTREAM_HEADER`], which the no-op filter replaces per request; with `strip`, the
    /// connection manager first removes any client-sent value natively (an early header
    /// mutation), which is what makes the header safe to trust.
    Header { strip: bool },
}

/// The request header a [`Upstream::Header`] cluster connects by.
pub const UPSTREAM_HEADER: &str = "x-mm-upstream";

/// The clusters of a static-route Envoy with an ORIGINAL_DST upstream: the gateway's
/// `triton_replicas` settings under the template's cluster name.
fn original_dst_clusters(use_http_header: bool) -> String {
    let lb = if use_http_header {
        format!("use_http_header: true\n      http_header_name: {UPSTREAM_HEADER}")
    } else {
        "use_http_header: false".to_owned()
    };
    format!(
        "  clusters:
  - name: replica
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config:
      {lb}
    cleanup_interval: 60s
"
    )
}

/// The connection manager's `early_header_mutation_extensions`, removing [`UPSTREAM_HEADER`]
/// before any HTTP filter runs (one line of JSON, which is YAML).
fn strip_upstream_header() -> String {
    let extension = json!([{
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "mutations": [{"remove": UPSTREAM_HEADER}],
        }
    }]);
    format!("early_header_mutation_extensions: {extension}")
}

/// Renders bench/envoy-static.yaml.tmpl: a static route to `replica_port`, with the Wasm
/// filter `wasm` in front of the router or no filter at all.
pub fn render_static(
    port: u16,
    admin_port: u16,
    replica_port: u16,
    wasm: Option<&Path>,
    upstream: Upstream,
) -> anyhow::Result<String> {
    let template = std::fs::read_to_string(root().join("bench/envoy-static.yaml.tmpl"))?;
    let address = format!("127.0.0.1:{replica_port}");
    let configuration = match upstream {
        Upstream::Static => None,
        Upstream::OriginalDst => Some(address),
        Upstream::Header { .. } => Some(format!("{UPSTREAM_HEADER}={address}")),
    };
    let filter = wasm.map(|w| format!("- {}", wasm_filter_entry(w, configuration.as_deref())));
    let early = matches!(upstream, Upstream::Header { strip: true }).then(strip_upstream_header);
    // A placeholder alone on its line is replaced by its text at the same indent, or the
    // line is dropped when there is none.
    let rendered: Vec<String> = template
        .lines()
        .filter_map(|line| {
            let slot = match line.trim() {
                "{{WASM_FILTER}}" => &filter,
                "{{EARLY_HEADER_MUTATION}}" => &early,
                _ => return Some(line.to_owned()),
            };
            let indent = &line[..line.len() - line.trim_start().len()];
            slot.as_ref().map(|text| format!("{indent}{text}"))
        })
        .collect();
    let text = rendered
        .join("\n")
        .replace("{{GATEWAY_PORT}}", &port.to_string())
        .replace("{{ENVOY_ADMIN_PORT}}", &admin_port.to_string())
        .replace("{{REPLICA_PORT}}", &replica_port.to_string());
    if let Some(line) = text
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && l.contains("{{"))
    {
        bail!("unrendered placeholder in bench/envoy-static.yaml.tmpl: {line}");
    }
    if upstream == Upstream::Static {
        return Ok(text);
    }
    anyhow::ensure!(
        wasm.is_some(),
        "an ORIGINAL_DST cluster needs the filter to set the upstream"
    );
    let clusters = text
        .find("\n  clusters:\n")
        .context("no clusters section in bench/envoy-static.yaml.tmpl")?;
    let use_http_header = matches!(upstream, Upstream::Header { .. });
    Ok(format!(
        "{}\n{}",
        &text[..clusters],
        original_dst_clusters(use_http_header)
    ))
}

/// How to start an Envoy: directly, or under a wrapper such as valgrind.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Program and arguments put before Envoy's own command line.
    pub wrapper: Vec<String>,
    /// Environment to add (the harness gateway's `MM_*` variables).
    pub env: Vec<(String, String)>,
}

fn spawn(name: &str, config: &str, dir: &Path, launch: &Launch) -> anyhow::Result<Process> {
    let path = dir.join(format!("envoy-{name}.yaml"));
    std::fs::write(&path, config)?;
    let mut cmd = match launch.wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(envoy());
            cmd
        }
        None => Command::new(envoy()),
    };
    cmd.arg("-c").arg(&path).args([
        "--disable-hot-restart",
        "--concurrency",
        CONCURRENCY,
        "--log-level",
        "warn",
        "--component-log-level",
        "wasm:info",
    ]);
    cmd.envs(launch.env.iter().map(|(k, v)| (k, v)));
    Process::spawn(
        &format!("envoy-{name}"),
        cmd,
        &dir.join(format!("envoy-{name}.log")),
    )
}

/// Plain Envoy with a static route to `replica_port`, and `wasm` as its only filter if
/// given (the no-op filter).
pub fn static_route(
    name: &str,
    replica_port: u16,
    wasm: Option<&Path>,
    upstream: Upstream,
    dir: &Path,
    launch: &Launch,
) -> anyhow::Result<BenchEnvoy> {
    if let Some(w) = wasm {
        if !w.exists() {
            bail!("{} is missing (scripts/bench.sh builds it)", w.display());
        }
    }
    let (port, admin_port) = (free_port()?, free_port()?);
    let config = render_static(port, admin_port, replica_port, wasm, upstream)?;
    let process = spawn(name, &config, dir, launch)?;
    Ok(BenchEnvoy {
        process,
        port,
        admin_port,
    })
}

/// The gateway's Envoy config with another build of the filter, for the same pool-manager.
/// `launch.env` should hold the environment the harness's gateway Envoy runs with (its
/// `MM_*` variables, such as the gateway token), so the second build is configured the same.
pub fn gateway_build(
    name: &str,
    pool_manager_port: u16,
    wasm: &Path,
    dir: &Path,
    launch: &Launch,
) -> anyhow::Result<BenchEnvoy> {
    if !wasm.exists() {
        bail!("filter build {} is missing", wasm.display());
    }
    let (port, admin_port) = (free_port()?, free_port()?);
    let default = filter_wasm().display().to_string();
    let config = mm_tests::stack::render_envoy_config(port, admin_port, pool_manager_port)?;
    anyhow::ensure!(
        config.contains(&default),
        "the gateway config does not name {default}"
    );
    let config = config.replace(&default, &wasm.display().to_string());
    let process = spawn(name, &config, dir, launch)?;
    Ok(BenchEnvoy {
        process,
        port,
        admin_port,
    })
}

/// The `MM_*` variables of process `pid`'s environment.
pub fn mm_environment(pid: u32) -> anyhow::Result<Vec<(String, String)>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("reading the environment of {pid}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .filter(|(k, _)| k.starts_with("MM_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_config_with_and_without_the_wasm_filter() {
        let plain = render_static(1, 2, 3, None, Upstream::Static).unwrap();
        assert!(!plain.contains("envoy.filters.http.wasm"));
        assert!(plain.contains("port_value: 3"));
        let noop =
            render_static(1, 2, 3, Some(Path::new("/x/noop.wasm")), Upstream::Static).unwrap();
        let line = noop
            .lines()
            .find(|l| l.contains("envoy.filters.http.wasm"))
            .unwrap();
        // One YAML list item whose value is the JSON entry, indented like the router's.
        let router = noop
            .lines()
            .find(|l| l.contains("- name: envoy.filters.http.router"))
            .unwrap();
        let indent = |l: &str| l.len() - l.trim_start().len();
        assert_eq!(indent(line), indent(router));
        let entry: serde_json::Value =
            serde_json::from_str(line.trim_start().trim_start_matches("- ")).unwrap();
        assert_eq!(
            entry["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"],
            "/x/noop.wasm"
        );
        assert_eq!(
            entry["typed_config"]["config"]["failure_policy"],
            "FAIL_CLOSED"
        );
    }

    /// The no-op filter's plugin configuration in a rendered config (the Wasm filter's
    /// entry is one YAML list item holding JSON).
    fn plugin_configuration(text: &str) -> serde_json::Value {
        let line = text
            .lines()
            .find(|l| l.contains("envoy.filters.http.wasm"))
            .unwrap();
        let entry: serde_json::Value =
            serde_json::from_str(line.trim_start().trim_start_matches("- ")).unwrap();
        entry["typed_config"]["config"]["configuration"]["value"].clone()
    }

    #[test]
    fn original_dst_config_sets_the_upstream_from_the_filter() {
        let wasm = Path::new("/x/noop.wasm");
        let text = render_static(1, 2, 3, Some(wasm), Upstream::OriginalDst).unwrap();
        assert!(text.contains("type: ORIGINAL_DST") && text.contains("use_http_header: false"));
        assert!(!text.contains("type: STATIC") && !text.contains("port_value: 3"));
        assert_eq!(plugin_configuration(&text), "127.0.0.1:3");
        assert!(render_static(1, 2, 3, None, Upstream::OriginalDst).is_err());
        assert!(!text.contains("early_header_mutation"));
    }

    #[test]
    fn header_config_reads_the_header_and_strips_a_client_sent_one_when_asked() {
        let wasm = Path::new("/x/noop.wasm");
        for strip in [false, true] {
            let text = render_static(1, 2, 3, Some(wasm), Upstream::Header { strip }).unwrap();
            assert!(text.contains("use_http_header: true\n      http_header_name: x-mm-upstream"));
            assert!(!text.contains("port_value: 3"));
            assert_eq!(plugin_configuration(&text), "x-mm-upstream=127.0.0.1:3");
            let early = text
                .lines()
                .find(|l| l.contains("early_header_mutation_extensions"));
            assert_eq!(early.is_some(), strip, "{text}");
            if let Some(early) = early {
                // A key of the connection manager's config, at the indent of its others.
                let stat = text.lines().find(|l| l.contains("stat_prefix")).unwrap();
                let indent = |l: &str| l.len() - l.trim_start().len();
                assert_eq!(indent(early), indent(stat));
                let (_, value) = early.trim().split_once(": ").unwrap();
                let value: serde_json::Value = serde_json::from_str(value).unwrap();
                assert_eq!(
                    value[0]["typed_config"]["mutations"][0]["remove"],
                    "x-mm-upstream"
                );
            }
        }
    }
}
