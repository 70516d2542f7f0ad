//! Runs `wrk` (Debian's) with a POST body and parses its summary: requests per second, the
//! latency percentiles `--latency` prints, the requests it completed and the ones that
//! failed (non-2xx answers and socket errors, reported apart so a failing run shows).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;

/// The load of one run: wrk's threads and connections, and how long.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u64,
}

/// One wrk run's figures (latencies in milliseconds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// Every response wrk read, whatever its status.
    pub requests: u64,
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
}

/// Writes the Lua script that makes wrk POST `body` (JSON). No `response` callback: it
/// would make wrk parse every answer in Lua, and wrk shares the cores with what it measures.
pub fn post_script(body: &str, scratch: &Path) -> anyhow::Result<std::path::PathBuf> {
    let script = scratch.join("post.lua");
    let escaped = body.replace('\\', "\\\\").replace('"', "\\\"");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{escaped}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    Ok(script)
}

/// Runs wrk against `url` with the POST script from [`post_script`].
pub fn run(url: &str, script: &Path, load: Load) -> anyhow::Result<Run> {
    let out = Command::new("wrk")
        .arg(format!("-t{}", load.threads.min(load.connections).max(1)))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&text)
}

fn parse(text: &str) -> anyhow::Result<Run> {
    let mut run = Run::default();
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse()?,
            ["50%", v] => run.p50 = millis(v)?,
            ["90%", v] => run.p90 = millis(v)?,
            ["99%", v] => run.p99 = millis(v)?,
            [n, "requests", "in", ..] => run.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse()?,
            ["Socket", "errors:", ..] => {
                run.socket_errors = fields
                    .iter()
                    .filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok())
                    .fold(0u64, u64::saturating_add);
            }
            _ => {}
        }
    }
    if run.rps == 0.0 && run.requests == 0 {
        bail!("could not read wrk's output: {text}");
    }
    Ok(run)
}

fn millis(v: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    Ok(num.parse::<f64>()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_output() {
        let text = "Running 5s test @ http://127.0.0.1:1/x\n  2 threads and 16 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.02ms\n     90%    1.40ms\n     99%    3.10ms\n  48020 requests in 5.00s, 9.1MB read\n  Non-2xx or 3xx responses: 2\nRequests/sec:   9603.21\n";
        let r = parse(text).unwrap();
        assert_eq!((r.rps, r.requests, r.non_2xx), (9603.21, 48020, 2));
        assert!((r.p50 - 0.812).abs() < 1e-9 && (r.p99 - 3.1).abs() < 1e-9);
    }

    #[test]
    fn counts_socket_errors_apart() {
        let text = "  1 threads and 8 connections\n     50%    2.00ms\n     90%    3.00ms\n     99%    1.20s\n  100 requests in 8.00s, 1MB read\n  Socket errors: connect 0, read 3, write 0, timeout 4\nRequests/sec:     12.50\n";
        let r = parse(text).unwrap();
        assert_eq!((r.requests, r.non_2xx, r.socket_errors), (100, 0, 7));
        assert!((r.p99 - 1200.0).abs() < 1e-9);
    }

    #[test]
    fn unreadable_output_is_an_error() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused\n").is_err());
    }
}
