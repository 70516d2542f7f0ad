//! The pool-manager's eviction flags (`--eviction`, `--gdsf-aging`, `--gdsf-half-life`),
//! checked and turned into the victim order and the [`GdsfConfig`] the pool plans with,
//! built by [`EvictionCost::tuned`] as mm-sim builds its own, so the simulator's figures
//! are the pool's.

use super::gdsf::{Aging, GdsfConfig};
use super::policy::{EvictionCost, EvictionPolicy, HALF_LIFE_REQUESTS};

/// The eviction flags of the pool-manager binary.
#[derive(Debug, Clone, clap::Args)]
pub struct EvictionArgs {
    /// The order in which evictable models go when a load needs room: lru (least recently
    /// used first) or gdsf (GreedyDual-Size-Frequency: lowest request count x smoothed load
    /// time / size; see docs/eviction.md). Which models may go at all (minimum age,
    /// requests in flight, pins) does not depend on it.
    #[arg(long, env = "MM_EVICTION", default_value = "lru")]
    pub eviction: EvictionPolicy,
    /// How idle models lose priority under --eviction gdsf [default: inflation]:
    /// inflation (GreedyDual: each victim raises the priority newcomers start from) or
    /// decay (no inflation: an idle model's priority halves every --gdsf-half-life
    /// requests). For loads of seconds (GPU models) docs/eviction.md recommends decay with
    /// --gdsf-half-life 8000 and --low-watermark 0.8. Ignored (with a warning) under lru.
    #[arg(long, env = "MM_GDSF_AGING", value_enum)]
    pub gdsf_aging: Option<Aging>,
    /// Half-life of GDSF's request counts, in requests to the whole pool: a positive whole
    /// number [default: 30000]. Ignored (with a warning) under lru.
    #[arg(long, env = "MM_GDSF_HALF_LIFE", value_parser = half_life)]
    pub gdsf_half_life: Option<u64>,
}

impl EvictionArgs {
    /// The GDSF tuning the flags describe (the defaults where a flag is absent). The pool
    /// always weighs misses by load time ([`EvictionCost::LoadTime`]).
    pub fn gdsf(&self) -> GdsfConfig {
        let half_life = self.gdsf_half_life.map_or(HALF_LIFE_REQUESTS, |h| h as f64);
        EvictionCost::LoadTime.tuned(self.gdsf_aging.unwrap_or_default(), half_life)
    }

    /// The GDSF flags given that the policy in force does not use, for one warning at
    /// start. They are accepted rather than refused so that switching `--eviction` back to
    /// lru (a rollback) works without also removing the tuning from the environment or
    /// the manifests.
    pub fn ignored(&self) -> Vec<&'static str> {
        if self.eviction == EvictionPolicy::Gdsf {
            return Vec::new();
        }
        let mut ignored = Vec::new();
        if self.gdsf_aging.is_some() {
            ignored.push("--gdsf-aging");
        }
        if self.gdsf_half_life.is_some() {
            ignored.push("--gdsf-half-life");
        }
        ignored
    }
}

/// Parses `--gdsf-half-life`: a positive whole number of requests.
fn half_life(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) | Err(_) => Err(format!(
            "{text:?} is not a half-life: expected a positive whole number of requests \
             (e.g. 8000)"
        )),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        eviction: EvictionArgs,
    }

    fn args(extra: &[&str]) -> Result<EvictionArgs, String> {
        let argv = std::iter::once("pm").chain(extra.iter().copied());
        Flags::try_parse_from(argv)
            .map(|f| f.eviction)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn without_flags_the_pool_keeps_todays_order_and_tuning() {
        let a = args(&[]).unwrap();
        assert_eq!(a.eviction, EvictionPolicy::Lru);
        assert_eq!(a.gdsf(), EvictionCost::LoadTime.config());
        assert_eq!(a.gdsf().aging, Aging::Inflation);
        assert_eq!(a.gdsf().half_life, HALF_LIFE_REQUESTS);
        assert!(a.ignored().is_empty());
    }

    #[test]
    fn the_recommended_configuration_parses_into_the_simulators_tuning() {
        let a = args(&[
            "--eviction",
            "gdsf",
            "--gdsf-aging",
            "decay",
            "--gdsf-half-life",
            "8000",
        ])
        .unwrap();
        assert_eq!(a.eviction, EvictionPolicy::Gdsf);
        // What `mm-sim --aging decay --half-life 8000` plans with.
        assert_eq!(a.gdsf(), EvictionCost::LoadTime.tuned(Aging::Decay, 8000.0));
        assert!(a.ignored().is_empty());
        let inflation = args(&["--eviction", "gdsf", "--gdsf-aging", "inflation"]).unwrap();
        assert_eq!(inflation.gdsf(), EvictionCost::LoadTime.config());
    }

    #[test]
    fn gdsf_flags_under_lru_are_accepted_and_reported_as_ignored() {
        let a = args(&["--gdsf-aging", "decay", "--gdsf-half-life", "8000"]).unwrap();
        assert_eq!(a.eviction, EvictionPolicy::Lru);
        assert_eq!(a.ignored(), ["--gdsf-aging", "--gdsf-half-life"]);
        let one = args(&["--eviction", "lru", "--gdsf-half-life", "5"]).unwrap();
        assert_eq!(one.ignored(), ["--gdsf-half-life"]);
    }

    #[test]
    fn bad_values_are_refused_with_what_is_expected() {
        for (flags, expected) in [
            (["--gdsf-aging", "none"], "inflation, decay"),
            (["--gdsf-aging", "Decay"], "inflation, decay"),
            (["--gdsf-aging", ""], "inflation, decay"),
            (
                ["--gdsf-half-life", "0"],
                "positive whole number of requests",
            ),
            (
                ["--gdsf-half-life", "-8000"],
                "positive whole number of requests",
            ),
            (
                ["--gdsf-half-life", "8000.5"],
                "positive whole number of requests",
            ),
            (
                ["--gdsf-half-life", "1e4"],
                "positive whole number of requests",
            ),
            (
                ["--gdsf-half-life", "8k"],
                "positive whole number of requests",
            ),
            (
                ["--gdsf-half-life", "99999999999999999999"],
                "positive whole number of requests",
            ),
            (["--eviction", "belady"], "lru, gdsf"),
        ] {
            let [flag, value] = flags;
            let err = match args(&[&format!("{flag}={value}")]) {
                Ok(a) => panic!("{flags:?} accepted: {a:?}"),
                Err(e) => e,
            };
            assert!(err.contains(flag), "{flags:?}: {err}");
            assert!(err.contains(expected), "{flags:?}: {err}");
        }
    }
}
