//! Instructions per warm request, counted by callgrind: deterministic where timings are
//! not (2 shared cores, other processes). Each Envoy target (plain, no-op Wasm, the gateway
//! and any other filter build) runs under `valgrind --tool=callgrind`; its counters are
//! zeroed, a fixed number of sequential requests is sent, and the counts are dumped. The
//! Envoy's background work (timers, the filter's tick) is measured in an idle window of its
//! own and subtracted at the same rate. An opt-in part (`--parts instructions`): Envoy runs
//! about 50x slower under valgrind, and starting the gateway's V8 VMs takes minutes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mm_tests::paths::{example_model, filter_wasm};
use mm_tests::{Stack, StackOptions};
use serde::Serialize;

use crate::envoys::{self, BenchEnvoy, Launch, Upstream};
use crate::stats::{median, ratio};
use crate::warm::{linear_body, warm_up_build, Kind};

/// How the part runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sequential requests per measured window.
    pub requests: usize,
    /// Measured windows per target.
    pub windows: usize,
    /// Length of the idle window that measures background work.
    pub idle_seconds: u64,
    /// Which of plain, noop, noop-upstream and gateway to count (other builds always are).
    pub targets: Vec<String>,
    /// Other builds of the filter (label, .wasm).
    pub filter_builds: Vec<(String, PathBuf)>,
    /// Where callgrind's dumps go (kept for `callgrind_annotate`).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub label: String,
    pub kind: Kind,
    /// Per window: instructions per request, background subtracted.
    pub per_request: Vec<f64>,
    /// Per window: instructions per request as counted.
    pub raw_per_request: Vec<f64>,
    /// Background instructions per second (idle window).
    pub idle_per_second: f64,
    pub median_per_request: f64,
    /// Per request, by object (medians over the windows, background not subtracted).
    pub split: Split,
    pub non_200: usize,
    pub dump_prefix: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Instructions {
    pub targets: Vec<Target>,
    pub requests: usize,
    pub windows: usize,
    pub idle_seconds: u64,
}

/// Envoy under callgrind, with collection on from the start (the zeroing starts each window).
fn callgrind(prefix: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", prefix.display()),
    ]
}

/// Where instructions were executed, by the object the code belongs to.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Split {
    /// Code V8 generated at run time: the compiled Wasm module and its wrappers.
    pub wasm: f64,
    /// The Envoy binary (with the V8 runtime and the host functions linked in).
    pub envoy: f64,
    pub libc: f64,
    pub other: f64,
}

impl Split {
    fn scaled(self, by: f64) -> Self {
        Self {
            wasm: self.wasm / by,
            envoy: self.envoy / by,
            libc: self.libc / by,
            other: self.other / by,
        }
    }
}

/// Whether code at `function` (a callgrind function name) in `object` is V8's generated
/// code: valgrind names no object for anonymous memory (`???`), but it also leaves some of
/// Envoy's own code there; valgrind loads a position-independent program low (0x108000),
/// while V8 maps its code space high, so only high addresses are generated code.
fn is_generated(object: &str, function: &str) -> bool {
    object == "???"
        && function
            .strip_prefix("0x")
            .map(|hex| hex.split('\'').next().unwrap_or(hex))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|address| address >= 1 << 32)
}

/// A compressed name definition (`ob=(2) ???` defines id `(2)`; `ob=(2)` refers to it).
fn define<'a>(names: &mut HashMap<&'a str, &'a str>, rest: &'a str) -> &'a str {
    match rest.split_once(' ') {
        Some((id, name)) => {
            names.insert(id, name);
            name
        }
        None => names.get(rest).copied().unwrap_or(rest),
    }
}

/// Sums a callgrind dump's self costs by where the code is: cost lines count for the
/// object and function in force, except the line after `calls=`, which is a call's
/// inclusive cost. Names are compressed, objects shared by `ob=`/`cob=` and functions by
/// `fn=`/`cfn=`.
pub fn split(text: &str) -> Split {
    let (mut objects, mut functions) = (HashMap::new(), HashMap::new());
    let (mut object, mut function) = ("", "");
    let mut inclusive = false;
    let mut out = Split::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ob=") {
            object = define(&mut objects, rest);
        } else if let Some(rest) = line.strip_prefix("cob=") {
            define(&mut objects, rest);
        } else if let Some(rest) = line.strip_prefix("fn=") {
            function = define(&mut functions, rest);
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            define(&mut functions, rest);
        } else if line.starts_with("calls=") {
            inclusive = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '*')) {
            if std::mem::take(&mut inclusive) {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let cost = match fields.as_slice() {
                [_, .., last] => last.parse::<f64>().unwrap_or(0.0),
                _ => 0.0,
            };
            let slot = if is_generated(object, function) {
                &mut out.wasm
            } else if object.ends_with("/envoy") || object == "???" {
                &mut out.envoy
            } else if object.contains("/libc.so") {
                &mut out.libc
            } else {
                &mut out.other
            };
            *slot += cost;
        }
    }
    out
}

/// The instruction total of one callgrind dump file (its `totals:` or `summary:` line).
pub fn parse_totals(text: &str) -> anyhow::Result<u64> {
    // `totals:` is the sum of the cost lines (what [`split`] divides); `summary:` can be
    // lower after a zeroing while frames were active.
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
    };
    line("totals:")
        .or_else(|| line("summary:"))
        .context("no totals: line in the callgrind dump")?
        .split_whitespace()
        .next()
        .context("empty totals: line")?
        .parse()
        .context("totals: is not a count")
}

fn control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control (apt-get install valgrind)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("OK") {
        bail!(
            "callgrind_control {flag} {pid}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A target's Envoy under callgrind and the dumps taken so far.
struct Counted {
    label: String,
    kind: Kind,
    envoy: BenchEnvoy,
    prefix: PathBuf,
    dumps: u32,
}

impl Counted {
    fn zero(&self) -> anyhow::Result<()> {
        control("-z", self.envoy.process.pid())
    }

    /// Dumps the counters since the last zeroing; returns their total and where they were.
    fn dump(&mut self) -> anyhow::Result<(u64, Split)> {
        control("-d", self.envoy.process.pid())?;
        self.dumps += 1;
        let file = PathBuf::from(format!("{}.{}", self.prefix.display(), self.dumps));
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok((parse_totals(&text)?, split(&text)))
    }
}

/// Sends `n` sequential requests on one connection; returns how many were not 200.
async fn requests(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    n: usize,
) -> anyhow::Result<usize> {
    let mut failed = 0;
    for _ in 0..n {
        let r = http.post(url).json(body).send().await?;
        let ok = r.status().as_u16() == 200;
        r.bytes().await?;
        failed += usize::from(!ok);
    }
    Ok(failed)
}

pub async fn run(options: &Options) -> anyhow::Result<Instructions> {
    std::fs::create_dir_all(&options.dir)?;
    let stack = Stack::start(StackOptions {
        replicas: 1,
        ..StackOptions::default()
    })
    .await?;
    let (status, body) = stack
        .register("linear", &example_model("linear"), "32Mi")
        .await?;
    anyhow::ensure!(status == 201, "register: {body}");
    let req = linear_body();
    stack
        .wait_warm("linear", &req, Duration::from_secs(15))
        .await?;
    let replica_port = stack.replicas[0].http_port;
    let dir = stack.dir.path();
    let env = envoys::mm_environment(stack.envoy.process.pid())?;
    let mut builds = vec![("gateway (Envoy + mm filter)".to_owned(), filter_wasm())];
    builds.extend(
        options
            .filter_builds
            .iter()
            .map(|(l, p)| (format!("gateway, build {l}"), p.clone())),
    );
    // Start every Envoy first: their start-up under valgrind (V8 compiling the modules)
    // dominates, and they do not depend on each other.
    let mut counted = Vec::new();
    let mut start = |label: String,
                     kind: Kind,
                     spawn: &dyn Fn(&Launch) -> anyhow::Result<BenchEnvoy>|
     -> anyhow::Result<()> {
        let letter = (b'b' + counted.len() as u8) as char;
        let prefix = options.dir.join(format!("{letter}.cg"));
        let launch = Launch {
            wrapper: callgrind(&prefix),
            env: env.clone(),
        };
        counted.push(Counted {
            label: format!("{letter}: {label}"),
            kind,
            envoy: spawn(&launch)?,
            prefix,
            dumps: 0,
        });
        Ok(())
    };
    let wanted = |name: &str| options.targets.iter().any(|t| t == name);
    if wanted("plain") {
        start("Envoy, static route".into(), Kind::Plain, &|l| {
            envoys::static_route("cg-plain", replica_port, None, Upstream::Static, dir, l)
        })?;
    }
    let noop = envoys::noop_wasm();
    for (kind, upstream) in Kind::NOOPS {
        if wanted(kind.name()) {
            start(kind.label().into(), kind, &|l| {
                let name = format!("cg-{}", kind.name());
                envoys::static_route(&name, replica_port, Some(&noop), upstream, dir, l)
            })?;
        }
    }
    for (i, (label, wasm)) in builds.iter().enumerate() {
        let kind = if i == 0 {
            if !wanted("gateway") {
                continue;
            }
            Kind::Gateway
        } else {
            Kind::GatewayBuild
        };
        let pm = stack.pool_manager.port;
        start(label.clone(), kind, &|l| {
            envoys::gateway_build(&format!("cg-build{i}"), pm, wasm, dir, l)
        })?;
    }
    for c in &mut counted {
        c.envoy
            .wait_ready(Duration::from_secs(900))
            .await
            .with_context(|| c.label.clone())?;
    }
    let path = "/v2/models/linear/infer";
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let mut targets = Vec::new();
    for c in &mut counted {
        let url = c.envoy.url(path);
        if matches!(c.kind, Kind::Gateway | Kind::GatewayBuild) {
            warm_up_build(&c.envoy, &stack, path, &req, Duration::from_secs(600)).await?;
        }
        let mut non_200 = requests(&http, &url, &req, 20).await?;
        c.zero()?;
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(options.idle_seconds)).await;
        let idle = c.dump()?.0 as f64 / t.elapsed().as_secs_f64();
        let (mut net, mut raw, mut splits) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..options.windows {
            c.zero()?;
            let t = Instant::now();
            non_200 += requests(&http, &url, &req, options.requests).await?;
            let elapsed = t.elapsed().as_secs_f64();
            let (total, where_) = c.dump()?;
            let total = total as f64;
            let n = options.requests.max(1) as f64;
            splits.push(where_.scaled(n));
            raw.push(total / n);
            net.push((total - idle * elapsed).max(0.0) / n);
        }
        eprintln!(
            "[mm-bench] instructions {}: {:.0} per request (windows {:?}), background {:.0}/s, {non_200} non-200",
            c.label, median(&net), net.iter().map(|v| v.round()).collect::<Vec<_>>(), idle
        );
        let m = |f: fn(&Split) -> f64| median(&splits.iter().map(f).collect::<Vec<_>>());
        targets.push(Target {
            split: Split {
                wasm: m(|s| s.wasm),
                envoy: m(|s| s.envoy),
                libc: m(|s| s.libc),
                other: m(|s| s.other),
            },
            label: c.label.clone(),
            kind: c.kind,
            median_per_request: median(&net),
            per_request: net,
            raw_per_request: raw,
            idle_per_second: idle,
            non_200,
            dump_prefix: c.prefix.clone(),
        });
    }
    Ok(Instructions {
        targets,
        requests: options.requests,
        windows: options.windows,
        idle_seconds: options.idle_seconds,
    })
}

impl Instructions {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "### Instructions per warm request (callgrind)\n\n\
             Each Envoy target runs under `valgrind --tool=callgrind` (same config and `--concurrency 2` as \
             in the warm path, the same real Triton and pool-manager behind it); per window its counters are \
             zeroed, {} sequential V2 infer requests are sent on one connection, and the counters are dumped. \
             Background work (timers, the filter's tick) is counted in a {} s idle window and subtracted at \
             the same rate. Instruction counts do not depend on the machine's load, so these ratios are the \
             stable ones; absolute counts include every thread of Envoy (and valgrind's view of V8's \
             compiled Wasm code).\n\n\
             | target | instructions / request (median) | per window | as counted (no background subtracted) | background / s | non-200 |\n\
             |---|---:|---|---|---:|---:|\n",
            self.requests, self.idle_seconds
        );
        let k = |v: f64| format!("{:.0}k", v / 1000.0);
        for t in &self.targets {
            md += &format!(
                "| {} | **{}** | {} | {} | {} | {} |\n",
                t.label,
                k(t.median_per_request),
                t.per_request
                    .iter()
                    .map(|v| k(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                t.raw_per_request
                    .iter()
                    .map(|v| k(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                k(t.idle_per_second),
                t.non_200
            );
        }
        md += "\nWhere they are executed (self instructions per request by object, median window, background \
               included): code V8 generated (the compiled Wasm module and its wrappers), and the Envoy \
               binary, which includes the V8 runtime and the host functions.\n\n\
               | target | compiled Wasm code | Envoy binary | libc | other |\n|---|---:|---:|---:|---:|\n";
        for t in &self.targets {
            let s = t.split;
            md += &format!(
                "| {} | {} | {} | {} | {} |\n",
                t.label,
                k(s.wasm),
                k(s.envoy),
                k(s.libc),
                k(s.other)
            );
        }
        let of = |kind: Kind| {
            self.targets
                .iter()
                .find(|t| t.kind == kind)
                .map(|t| t.median_per_request)
        };
        let noop = of(Kind::Noop);
        md += "\n";
        for t in self
            .targets
            .iter()
            .filter(|t| matches!(t.kind, Kind::Gateway | Kind::GatewayBuild))
        {
            if let Some(r) = ratio(Some(t.median_per_request), noop) {
                md += &format!("- {} / no-op Wasm: **{r:.2}**\n", t.label);
            }
        }
        let floor = of(Kind::NoopUpstream);
        for t in self
            .targets
            .iter()
            .filter(|t| matches!(t.kind, Kind::Gateway | Kind::GatewayBuild))
        {
            if let Some(r) = ratio(Some(t.median_per_request), floor) {
                md += &format!(
                    "- {} / no-op Wasm setting the upstream: **{r:.2}**\n",
                    t.label
                );
            }
        }
        if let Some(r) = ratio(floor, noop) {
            md += &format!("- no-op Wasm setting the upstream / no-op Wasm: **{r:.2}**\n");
        }
        for kind in [Kind::NoopHeader, Kind::NoopHeaderUnstripped] {
            let Some(header) = of(kind) else { continue };
            if let Some(r) = ratio(Some(header), noop) {
                md += &format!("- {} / no-op Wasm: **{r:.2}**\n", kind.label());
            }
            if let Some(state) = floor {
                md += &format!(
                    "- {} against filter state: **{:+.1}k** per request\n",
                    kind.label(),
                    (header - state) / 1000.0
                );
            }
        }
        if let Some(r) = ratio(noop, of(Kind::Plain)) {
            md += &format!("- no-op Wasm / plain Envoy: **{r:.2}**\n");
        }
        md += "\n`callgrind_annotate` reads the dumps (`bench/results/callgrind/`); Envoy's binary is stripped, \
               so its functions show as addresses.\n";
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_of_a_dump() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\npid: 2223\ncmd:  envoy -c x.yaml\npart: 3\n\nevents: Ir\n\nfl=(1) ???\nfn=(1) 0x1\n0 5\n\nsummary: 1136610735\n\n\ntotals: 1136610735\n";
        assert_eq!(parse_totals(dump).unwrap(), 1_136_610_735);
        assert_eq!(parse_totals("events: Ir\nsummary: 42\n").unwrap(), 42);
        assert_eq!(parse_totals("summary: 41\ntotals: 42\n").unwrap(), 42);
        assert!(parse_totals("events: Ir\n").is_err());
        assert!(parse_totals("totals: many\n").is_err());
    }

    #[test]
    fn self_cost_by_object_skips_inclusive_call_costs() {
        let dump = "events: Ir\n\
ob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6\nfl=(1) ???\nfn=(0) 0x1\n\
cob=(9) /work/.tools/envoy/bin/envoy\ncfn=(2) 0x2\ncalls=1 0\n0 71520\n0 30\n+2 5\n\n\
ob=(2) ???\nfn=(3) 0x00007f694e40050a\n0 400\n* 100\nfn=(6) 0x000000000628d840\n0 60\n\
ob=(9)\nfn=(4) 0x4\n0 7000\nob=(2)\nfn=(3)\n0 1\n\
ob=(5) /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\nfn=(5) 0x5\n0 3\n\
summary: 7538\n";
        let s = split(dump);
        // Unnamed code at a low address is Envoy's; at a high one, V8's (also when the
        // function is named by reference only, `fn=(3)`).
        assert_eq!(
            (s.libc, s.wasm, s.envoy, s.other),
            (35.0, 501.0, 7060.0, 3.0)
        );
        assert_eq!(s.scaled(3.0).wasm, 167.0);
    }
}
