//! The warm path side by side: direct Triton, plain Envoy (static route), plain Envoy with
//! the no-op Wasm filter (the Wasm floor), and the gateway (plus any other filter builds
//! asked for), in interleaved rounds with the same load and Envoy worker count, reporting
//! throughput, latency and Envoy's own CPU time per request (the stable figure on shared
//! cores).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mm_tests::paths::example_model;
use mm_tests::{Stack, StackOptions};
use serde::Serialize;

use crate::envoys::{self, BenchEnvoy, Upstream};
use crate::stats::{median, ratio};
use crate::{cpu, profile, wrk};

/// What a warm target is, for the ratios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Direct,
    Plain,
    Noop,
    /// The no-op filter choosing the upstream the gateway's way (filter state and an
    /// ORIGINAL_DST cluster): the floor of a filter that picks the replica itself.
    NoopUpstream,
    /// The no-op filter choosing the upstream by a request header (an ORIGINAL_DST cluster
    /// with `use_http_header`), a client-sent value of which Envoy strips first.
    NoopHeader,
    /// The same without the strip (unsafe: a client could choose the upstream); the
    /// difference to [`Kind::NoopHeader`] is the price of the protection.
    NoopHeaderUnstripped,
    Gateway,
    /// The gateway with another build of the filter (`--filter-wasm`).
    GatewayBuild,
}

impl Kind {
    /// The names `--warm-targets` takes.
    pub const NAMES: [&'static str; 7] = [
        "direct",
        "plain",
        "noop",
        "noop-upstream",
        "noop-header",
        "noop-header-unstripped",
        "gateway",
    ];

    /// The no-op filter's targets, each with how its Envoy reaches the replica.
    pub const NOOPS: [(Kind, Upstream); 4] = [
        (Kind::Noop, Upstream::Static),
        (Kind::NoopUpstream, Upstream::OriginalDst),
        (Kind::NoopHeader, Upstream::Header { strip: true }),
        (
            Kind::NoopHeaderUnstripped,
            Upstream::Header { strip: false },
        ),
    ];

    /// What a static-route target is called in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Noop => "Envoy + no-op Wasm filter",
            Kind::NoopUpstream => "Envoy + no-op Wasm filter setting the upstream (ORIGINAL_DST)",
            Kind::NoopHeader => {
                "Envoy + no-op Wasm filter setting the upstream by header (client's stripped)"
            }
            Kind::NoopHeaderUnstripped => {
                "Envoy + no-op Wasm filter setting the upstream by header (not stripped)"
            }
            _ => self.name(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Plain => "plain",
            Kind::Noop => "noop",
            Kind::NoopUpstream => "noop-upstream",
            Kind::NoopHeader => "noop-header",
            Kind::NoopHeaderUnstripped => "noop-header-unstripped",
            Kind::Gateway | Kind::GatewayBuild => "gateway",
        }
    }
}

/// How the warm part runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: usize,
    pub load: wrk::Load,
    /// Which of [`Kind::NAMES`] to run.
    pub targets: Vec<String>,
    /// Other builds of the filter to run as gateways beside the default one: (label, .wasm).
    pub filter_builds: Vec<(String, PathBuf)>,
    /// Record every Envoy target's runs with `perf record` into this directory.
    pub perf_dir: Option<PathBuf>,
}

/// One wrk run of a target, with Envoy's CPU time per request over the same run.
#[derive(Debug, Clone, Serialize)]
pub struct WarmRun {
    #[serde(flatten)]
    pub wrk: wrk::Run,
    pub envoy_cpu_us_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WarmTarget {
    pub label: String,
    pub kind: Kind,
    pub runs: Vec<WarmRun>,
    /// Medians over the rounds.
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub envoy_cpu_us_per_request: Option<f64>,
    /// Sums over the rounds.
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// `of / over` for Envoy CPU per request, throughput and p50 (medians of the same run).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub of: String,
    pub over: String,
    pub cpu: Option<f64>,
    pub rps: Option<f64>,
    pub p50: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Warm {
    pub targets: Vec<WarmTarget>,
    pub ratios: Vec<Ratio>,
    pub route_calls_per_1000: Option<f64>,
    pub load: wrk::Load,
    pub rounds: usize,
    pub envoy_concurrency: &'static str,
    pub perf_dir: Option<PathBuf>,
}

/// A target while it runs.
struct Spec {
    label: String,
    kind: Kind,
    url: String,
    envoy_pid: Option<u32>,
    runs: Vec<WarmRun>,
}

pub fn linear_body() -> serde_json::Value {
    serde_json::json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
}

pub async fn run(options: &Options, scratch: &Path) -> anyhow::Result<Warm> {
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
    let wanted = |k: Kind| options.targets.iter().any(|t| t == k.name());
    let direct = envoys::Launch::default();
    let replica = &stack.replicas[0];
    let path = "/v2/models/linear/infer";
    let mut envoys: Vec<BenchEnvoy> = Vec::new();
    let mut specs: Vec<Spec> = Vec::new();
    let mut add = |label: &str, kind: Kind, url: String, envoy_pid: Option<u32>| {
        let letter = (b'a' + specs.len() as u8) as char;
        specs.push(Spec {
            label: format!("{letter}: {label}"),
            kind,
            url,
            envoy_pid,
            runs: Vec::new(),
        });
    };
    if wanted(Kind::Direct) {
        add(
            "Triton direct",
            Kind::Direct,
            format!("{}{path}", replica.url()),
            None,
        );
    }
    let dir = stack.dir.path();
    if wanted(Kind::Plain) {
        let mut e = envoys::static_route(
            "plain",
            replica.http_port,
            None,
            Upstream::Static,
            dir,
            &direct,
        )?;
        e.wait_ready(READY).await?;
        add(
            "Envoy, static route",
            Kind::Plain,
            e.url(path),
            Some(e.process.pid()),
        );
        envoys.push(e);
    }
    for (kind, upstream) in Kind::NOOPS {
        if !wanted(kind) {
            continue;
        }
        let wasm = envoys::noop_wasm();
        let port = replica.http_port;
        let mut e = envoys::static_route(kind.name(), port, Some(&wasm), upstream, dir, &direct)?;
        e.wait_ready(READY).await?;
        let url = e.url(path);
        add(kind.label(), kind, url, Some(e.process.pid()));
        envoys.push(e);
    }
    if wanted(Kind::Gateway) {
        let pid = stack.envoy.process.pid();
        add(
            "gateway (Envoy + mm filter)",
            Kind::Gateway,
            stack.envoy.url(path),
            Some(pid),
        );
    }
    let like_gateway = envoys::Launch {
        env: envoys::mm_environment(stack.envoy.process.pid())?,
        ..envoys::Launch::default()
    };
    for (i, (label, wasm)) in options.filter_builds.iter().enumerate() {
        let name = format!("build{i}");
        let pm = stack.pool_manager.port;
        let mut e = envoys::gateway_build(&name, pm, wasm, dir, &like_gateway)?;
        e.wait_ready(READY).await?;
        // Its own workers fill their tables from the same pool-manager.
        warm_up_build(&e, &stack, path, &req, Duration::from_secs(15)).await?;
        let url = e.url(path);
        add(
            &format!("gateway, build {label}"),
            Kind::GatewayBuild,
            url,
            Some(e.process.pid()),
        );
        envoys.push(e);
    }
    anyhow::ensure!(!specs.is_empty(), "no warm target selected");
    let script = wrk::post_script(&req.to_string(), scratch)?;
    let tck = cpu::ticks_per_second()?;
    let (mut gateway_requests, mut gateway_route_calls) = (0u64, 0.0);
    // Warm every connection path once, then interleave: a, b, c, d, a, b, c, d, ...
    let warm_up = wrk::Load {
        seconds: 1,
        ..options.load
    };
    for s in &specs {
        wrk::run(&s.url, &script, warm_up)?;
    }
    for round in 0..options.rounds {
        for s in &mut specs {
            let before = stack.route_calls().await.unwrap_or(0.0);
            let recording = match (&options.perf_dir, s.envoy_pid) {
                (Some(dir), Some(pid)) => {
                    let file = dir.join(format!("{}-r{round}.data", slug(&s.label)));
                    Some((profile::record(pid, options.load.seconds, &file)?, file))
                }
                _ => None,
            };
            let t0 = s.envoy_pid.map(cpu::ticks).transpose()?;
            let run = wrk::run(&s.url, &script, options.load)
                .with_context(|| format!("wrk against {}", s.label))?;
            let t1 = s.envoy_pid.map(cpu::ticks).transpose()?;

            if matches!(s.kind, Kind::Gateway | Kind::GatewayBuild) {
                gateway_requests += run.requests;
                gateway_route_calls += stack.route_calls().await.unwrap_or(0.0) - before;
            }
            let cpu_us = match (t0, t1) {
                (Some(a), Some(b)) => cpu::micros_per_request(a, b, tck, run.requests),
                _ => None,
            };
            if let (Some((r, file)), Some(dir)) = (recording, &options.perf_dir) {
                r.finish()?;
                profile::note_run(dir, &file, &s.label, round, cpu_us, run.requests)?;
            }
            eprintln!(
                "[mm-bench] warm round {round} {}: {:.0} req/s, p50 {:.3} ms, Envoy CPU {} us/request, {} non-2xx, {} socket errors",
                s.label,
                run.rps,
                run.p50,
                cpu_us.map_or("-".into(), |v| format!("{v:.1}")),
                run.non_2xx,
                run.socket_errors
            );
            s.runs.push(WarmRun {
                wrk: run,
                envoy_cpu_us_per_request: cpu_us,
            });
        }
    }
    drop(envoys);
    let targets: Vec<WarmTarget> = specs.into_iter().map(summarise).collect();
    Ok(Warm {
        ratios: ratios(&targets),
        targets,
        route_calls_per_1000: (gateway_requests > 0)
            .then(|| gateway_route_calls * 1000.0 / gateway_requests as f64),
        load: options.load,
        rounds: options.rounds,
        envoy_concurrency: envoys::CONCURRENCY,
        perf_dir: options.perf_dir.clone(),
    })
}

/// How long a bench Envoy may take to become ready.
const READY: Duration = Duration::from_secs(30);

/// Sends requests through a second gateway Envoy until 20 in a row are answered 200 with no
/// route call (bounded by `timeout`): its workers then hold the model in their tables.
pub async fn warm_up_build(
    envoy: &BenchEnvoy,
    stack: &Stack,
    path: &str,
    req: &serde_json::Value,
    timeout: Duration,
) -> anyhow::Result<()> {
    let url = envoy.url(path);
    mm_tests::stack::eventually("second build warm", timeout, || async {
        let before = stack.route_calls().await?;
        for _ in 0..20 {
            let r = stack.http.post(&url).json(req).send().await?;
            anyhow::ensure!(r.status().is_success(), "{}", r.text().await?);
        }
        Ok((stack.route_calls().await? == before).then_some(()))
    })
    .await
}

fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

fn summarise(s: Spec) -> WarmTarget {
    let pick = |f: fn(&WarmRun) -> f64| median(&s.runs.iter().map(f).collect::<Vec<_>>());
    let cpu: Vec<f64> = s
        .runs
        .iter()
        .filter_map(|r| r.envoy_cpu_us_per_request)
        .collect();
    let sum = |f: fn(&WarmRun) -> u64| s.runs.iter().map(f).fold(0u64, u64::saturating_add);
    WarmTarget {
        rps: pick(|r| r.wrk.rps),
        p50: pick(|r| r.wrk.p50),
        p90: pick(|r| r.wrk.p90),
        p99: pick(|r| r.wrk.p99),
        envoy_cpu_us_per_request: (!cpu.is_empty()).then(|| median(&cpu)),
        requests: sum(|r| r.wrk.requests),
        non_2xx: sum(|r| r.wrk.non_2xx),
        socket_errors: sum(|r| r.wrk.socket_errors),
        label: s.label,
        kind: s.kind,
        runs: s.runs,
    }
}

/// The ratios the targets are stated in: every gateway over the no-op Wasm floor,
/// then the floor and the gateway over plain Envoy, and plain Envoy over direct Triton.
pub fn ratios(targets: &[WarmTarget]) -> Vec<Ratio> {
    let first = |k: Kind| targets.iter().find(|t| t.kind == k);
    let pair = |of: &WarmTarget, over: &WarmTarget| Ratio {
        of: of.label.clone(),
        over: over.label.clone(),
        cpu: ratio(of.envoy_cpu_us_per_request, over.envoy_cpu_us_per_request),
        rps: ratio(Some(of.rps), Some(over.rps)),
        p50: ratio(Some(of.p50), Some(over.p50)),
    };
    let gateways = targets
        .iter()
        .filter(|t| matches!(t.kind, Kind::Gateway | Kind::GatewayBuild));
    let mut out = Vec::new();
    if let Some(noop) = first(Kind::Noop) {
        out.extend(gateways.clone().map(|g| pair(g, noop)));
    }
    if let Some(floor) = first(Kind::NoopUpstream) {
        out.extend(gateways.clone().map(|g| pair(g, floor)));
        out.extend(first(Kind::Noop).map(|n| pair(floor, n)));
    }
    if let Some(plain) = first(Kind::Plain) {
        out.extend(first(Kind::Noop).map(|n| pair(n, plain)));
        out.extend(first(Kind::Gateway).map(|g| pair(g, plain)));
        out.extend(first(Kind::Direct).map(|d| pair(plain, d)));
    }
    out
}

fn figure(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

impl Warm {
    pub fn markdown(&self) -> String {
        let l = self.load;
        let mut md = format!(
            "### Warm path: direct Triton, plain Envoy, the Wasm floor, the gateway\n\n\
             The `linear` example model loaded on one real Triton replica; `wrk -t{} -c{} -d{}s --latency`, \
             POST of a [1,4] FP32 V2 infer body. Targets: (a) Triton itself; (b) plain Envoy with a static \
             route; (c) the same Envoy with a no-op Proxy-Wasm filter (`bench/noop-filter`: reads `:path`, \
             continues; same V8 VM settings as the gateway), the floor any Wasm filter pays; (d) the no-op \
             filter also setting the upstream the gateway's way (filter state read by an ORIGINAL_DST \
             cluster), the floor of any filter that picks the replica; (e) the gateway (Envoy + the mm \
             filter, routing from its table). They run interleaved (a, b, c, d, e, a, b, ...) for \
             {} rounds after a 1 s warm-up each; the table shows each target's median over its rounds. Every \
             Envoy runs with `--concurrency {}`. **Envoy CPU per request** is the Envoy process's utime + stime \
             (`/proc/PID/stat`) over the run divided by the requests wrk completed in it (non-2xx included): \
             the figure that stays put when throughput swings with the other processes on the 2 shared \
             cores.{}\n\n\
             | target | requests/s | p50 ms | p90 ms | p99 ms | Envoy CPU µs/request | per round | requests | non-2xx | socket errors |\n\
             |---|---:|---:|---:|---:|---:|---|---:|---:|---:|\n",
            l.threads,
            l.connections,
            l.seconds,
            self.rounds,
            self.envoy_concurrency,
            if self.perf_dir.is_some() {
                " These runs were recorded with `perf record`, which inflates Envoy's CPU time."
            } else {
                ""
            }
        );
        for t in &self.targets {
            let rounds: Vec<String> = t
                .runs
                .iter()
                .map(|r| figure(r.envoy_cpu_us_per_request, 0))
                .collect();
            md += &format!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} |\n",
                t.label,
                t.rps,
                t.p50,
                t.p90,
                t.p99,
                figure(t.envoy_cpu_us_per_request, 1),
                if t.envoy_cpu_us_per_request.is_some() {
                    rounds.join(", ")
                } else {
                    "–".into()
                },
                t.requests,
                t.non_2xx,
                t.socket_errors
            );
        }
        md += "\n| ratio | Envoy CPU per request | throughput | p50 |\n|---|---:|---:|---:|\n";
        for r in &self.ratios {
            md += &format!(
                "| {} / {} | **{}** | **{}** | **{}** |\n",
                short(&r.of),
                short(&r.over),
                figure(r.cpu, 2),
                figure(r.rps, 2),
                figure(r.p50, 2)
            );
        }
        md += "\nTargets (issue 13), gateway / no-op: Envoy CPU per request ≤ 1.05, throughput ≥ 0.95, p50 ≤ 1.05.\n";
        let failing: Vec<&WarmTarget> = self
            .targets
            .iter()
            .filter(|t| t.non_2xx + t.socket_errors > 0)
            .collect();
        for t in failing {
            md += &format!(
                "\n**Errors in {}**: {} non-2xx answers and {} socket errors over its runs; its figures are not comparable.\n",
                t.label, t.non_2xx, t.socket_errors
            );
        }
        md += &format!(
            "\nPool-manager route calls per 1,000 warm requests through the gateway: **{}** (counted from \
             `mm_route_requests_total` around the gateway's runs).\n\n\
             ![warm latency](bench/results/warm_latency.png)\n![warm throughput](bench/results/warm_throughput.png)\n\
             ![warm Envoy CPU](bench/results/warm_cpu.png)\n",
            figure(self.route_calls_per_1000, 2)
        );
        md
    }
}

/// The target's letter and short name, for the ratio table ("d: gateway (...)" -> "d gateway").
fn short(label: &str) -> String {
    label.split(" (").next().unwrap_or(label).replace(':', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(label: &str, kind: Kind, rps: f64, p50: f64, cpu: Option<f64>) -> WarmTarget {
        WarmTarget {
            label: label.into(),
            kind,
            runs: Vec::new(),
            rps,
            p50,
            p90: 0.0,
            p99: 0.0,
            envoy_cpu_us_per_request: cpu,
            requests: 0,
            non_2xx: 0,
            socket_errors: 0,
        }
    }

    #[test]
    fn ratios_put_every_gateway_over_the_noop_floor() {
        let t = vec![
            target("a: Triton direct", Kind::Direct, 6000.0, 1.0, None),
            target(
                "b: Envoy, static route",
                Kind::Plain,
                4000.0,
                2.0,
                Some(148.0),
            ),
            target(
                "c: Envoy + no-op Wasm filter",
                Kind::Noop,
                4100.0,
                2.0,
                Some(156.0),
            ),
            target(
                "d: gateway (Envoy + mm filter)",
                Kind::Gateway,
                3500.0,
                2.5,
                Some(203.0),
            ),
            target(
                "e: gateway, build x",
                Kind::GatewayBuild,
                4000.0,
                2.1,
                Some(160.0),
            ),
        ];
        let r = ratios(&t);
        let find = |of: &str, over: &str| {
            r.iter()
                .find(|r| r.of.starts_with(of) && r.over.starts_with(over))
                .unwrap()
        };
        let d_c = find("d:", "c:");
        assert!((d_c.cpu.unwrap() - 203.0 / 156.0).abs() < 1e-12);
        assert!((d_c.rps.unwrap() - 3500.0 / 4100.0).abs() < 1e-12);
        assert!((d_c.p50.unwrap() - 1.25).abs() < 1e-12);
        assert!((find("e:", "c:").cpu.unwrap() - 160.0 / 156.0).abs() < 1e-12);
        assert!((find("c:", "b:").cpu.unwrap() - 156.0 / 148.0).abs() < 1e-12);
        // Direct Triton has no Envoy: no CPU ratio, but throughput still compares.
        let b_a = find("b:", "a:");
        assert_eq!(b_a.cpu, None);
        assert!((b_a.rps.unwrap() - 4000.0 / 6000.0).abs() < 1e-12);
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn summary_takes_medians_and_sums_errors() {
        let run = |rps: f64, cpu: f64, non_2xx: u64| WarmRun {
            wrk: wrk::Run {
                rps,
                p50: rps / 1000.0,
                requests: 100,
                non_2xx,
                ..wrk::Run::default()
            },
            envoy_cpu_us_per_request: Some(cpu),
        };
        let s = Spec {
            label: "c: x".into(),
            kind: Kind::Noop,
            url: String::new(),
            envoy_pid: Some(1),
            runs: vec![
                run(3000.0, 160.0, 0),
                run(4000.0, 150.0, 2),
                run(5000.0, 155.0, 0),
            ],
        };
        let t = summarise(s);
        assert_eq!(
            (t.rps, t.p50, t.envoy_cpu_us_per_request),
            (4000.0, 4.0, Some(155.0))
        );
        assert_eq!((t.requests, t.non_2xx), (300, 2));
        let md = Warm {
            targets: vec![t],
            ratios: Vec::new(),
            route_calls_per_1000: Some(0.0),
            load: wrk::Load {
                threads: 1,
                connections: 8,
                seconds: 8,
            },
            rounds: 3,
            envoy_concurrency: "2",
            perf_dir: None,
        }
        .markdown();
        assert!(md.contains("| 160, 150, 155 |"), "{md}");
        assert!(md.contains("**Errors in c: x**: 2 non-2xx"), "{md}");
    }

    #[test]
    fn slugs_and_short_labels() {
        assert_eq!(
            slug("d: gateway (Envoy + mm filter)"),
            "d-gateway-envoy-mm-filter"
        );
        assert_eq!(short("d: gateway (Envoy + mm filter)"), "d gateway");
        assert_eq!(
            short("c: Envoy + no-op Wasm filter"),
            "c Envoy + no-op Wasm filter"
        );
    }
}
