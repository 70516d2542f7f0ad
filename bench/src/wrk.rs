//! Runs `wrk` (Debian's) with a POST body and parses its summary: requests per second and
//! the latency percentiles `--latency` prints.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

/// One wrk run's figures (latencies in milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub requests: u64,
    pub errors: u64,
}

/// Runs wrk against `url`, POSTing `body` (JSON) on `connections` connections for `duration`.
pub fn run(
    url: &str,
    body: &str,
    connections: u32,
    duration: Duration,
    scratch: &Path,
) -> anyhow::Result<Run> {
    let script = scratch.join("post.lua");
    let escaped = body.replace('\\', "\\\\").replace('"', "\\\"");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{escaped}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             function response(status, headers, body)\n  if status ~= 200 then wrk.thread:set(\"bad\", (wrk.thread:get(\"bad\") or 0) + 1) end\nend\n"
        ),
    )?;
    let out = Command::new("wrk")
        .arg("-t2")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
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
    let mut run = Run {
        rps: 0.0,
        p50: 0.0,
        p90: 0.0,
        p99: 0.0,
        requests: 0,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse()?,
            ["50%", v] => run.p50 = millis(v)?,
            ["90%", v] => run.p90 = millis(v)?,
            ["99%", v] => run.p99 = millis(v)?,
            [n, "requests", "in", ..] => run.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>()?,
            ["Socket", "errors:", ..] => {
                run.errors += fields
                    .iter()
                    .filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if run.rps == 0.0 {
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
        assert_eq!((r.rps, r.requests, r.errors), (9603.21, 48020, 2));
        assert!((r.p50 - 0.812).abs() < 1e-9 && (r.p99 - 3.1).abs() < 1e-9);
    }
}
