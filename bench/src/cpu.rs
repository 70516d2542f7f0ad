//! A process's own CPU time from `/proc/PID/stat` (utime + stime, every thread of the
//! process), read around each load run: on 2 shared cores throughput swings by ±20% from
//! run to run, while the CPU time a proxy spends per request is a stable figure.

#![allow(unsafe_code)] // sysconf(3) through libc; see the SAFETY note.

use std::sync::OnceLock;

use anyhow::{bail, Context};

/// Clock ticks (utime + stime) of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks(pub u64);

/// Parses utime + stime (fields 14 and 15, in clock ticks) from the text of
/// `/proc/PID/stat`. The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> anyhow::Result<Ticks> {
    let (_, rest) = text
        .rsplit_once(')')
        .context("no ')' after the command name in /proc/PID/stat")?;
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        let raw = fields
            .get(n - 3)
            .with_context(|| format!("/proc/PID/stat has no field {n}"))?;
        raw.parse()
            .with_context(|| format!("field {n} of /proc/PID/stat is not a count: {raw:?}"))
    };
    let (utime, stime) = (field(14)?, field(15)?);
    Ok(Ticks(utime.saturating_add(stime)))
}

/// The CPU ticks process `pid` has used so far.
pub fn ticks(pid: u32) -> anyhow::Result<Ticks> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&text)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux in practice).
pub fn ticks_per_second() -> anyhow::Result<u64> {
    static TCK: OnceLock<libc::c_long> = OnceLock::new();
    // SAFETY: sysconf(3) only reads a constant of the C library; no memory is passed.
    let tck = *TCK.get_or_init(|| unsafe { libc::sysconf(libc::_SC_CLK_TCK) });
    match u64::try_from(tck) {
        Ok(tck) if tck > 0 => Ok(tck),
        _ => bail!("sysconf(_SC_CLK_TCK) failed ({tck})"),
    }
}

/// CPU microseconds per request between two readings, over `requests` requests; `None`
/// when no request completed (a per-request figure over nothing is not a figure).
pub fn micros_per_request(
    before: Ticks,
    after: Ticks,
    ticks_per_second: u64,
    requests: u64,
) -> Option<f64> {
    if requests == 0 || ticks_per_second == 0 {
        return None;
    }
    let used = after.0.saturating_sub(before.0) as f64;
    Some(used * 1e6 / ticks_per_second as f64 / requests as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (envoy) S 1 4242 4242 0 -1 4194560 52110 0 0 0 1234 567 0 0 20 0 14 0 98765 2147483648 12000 18446744073709551615 1 1 0 0 0 0 0 4096 1024 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_utime_plus_stime() {
        assert_eq!(parse_stat(STAT).unwrap(), Ticks(1234 + 567));
    }

    #[test]
    fn command_names_with_spaces_and_parentheses() {
        let odd = STAT.replace("(envoy)", "(wrk (x) y)");
        assert_eq!(parse_stat(&odd).unwrap(), Ticks(1801));
    }

    #[test]
    fn malformed_stat_is_an_error() {
        assert!(parse_stat("4242 envoy S 1").is_err());
        assert!(parse_stat("4242 (envoy) S 1 2 3").is_err());
        let bad = STAT.replace(" 1234 ", " x ");
        assert!(parse_stat(&bad).is_err());
    }

    #[test]
    fn per_request_micros() {
        // 450 ticks at 100 Hz = 4.5 s over 30,000 requests = 150 us each.
        let us = micros_per_request(Ticks(1000), Ticks(1450), 100, 30_000).unwrap();
        assert!((us - 150.0).abs() < 1e-9);
        assert_eq!(micros_per_request(Ticks(5), Ticks(9), 100, 0), None);
        // A counter that went backwards (another process) is 0, not an overflow.
        assert_eq!(micros_per_request(Ticks(9), Ticks(5), 100, 10), Some(0.0));
    }

    #[test]
    fn this_process_has_ticks() {
        assert!(ticks(std::process::id()).is_ok());
        assert!(ticks_per_second().unwrap() > 0);
    }
}
