//! The pool's tunables: how long requests wait, how copies scale, what is protected from
//! eviction. Read once at start; the table carries the part placement needs ([`super::table::Rules`]).

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::placement::Watermarks;

/// The `retire_grace` values accepted. Below the shortest usage report period the filter
/// accepts (100 ms), a request routed to the old version just before the switch could
/// never be seen in flight before the unload; past an hour, two versions of every updated
/// model would hold memory for no reason a grace can give.
pub const RETIRE_GRACE_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// Why a tunable was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A retire grace outside [`RETIRE_GRACE_RANGE`].
    #[error("retire grace {} is out of range: expected 100ms to 1h (and longer than the gateway's usage report period, 1s by default)", humantime::format_duration(*.0))]
    RetireGrace(Duration),
}

/// `grace` if it is a usable `retire_grace` (see [`RETIRE_GRACE_RANGE`]).
pub fn check_retire_grace(grace: Duration) -> Result<Duration, SettingsError> {
    if RETIRE_GRACE_RANGE.contains(&grace) {
        Ok(grace)
    } else {
        Err(SettingsError::RetireGrace(grace))
    }
}

/// When a model's copies are scaled up and down.
#[derive(Debug, Clone)]
pub struct ScaleSettings {
    /// How often the scaler looks at traffic (and re-loads pinned models).
    pub tick: Duration,
    /// A copy is added when, per loaded copy, the request rate exceeds this...
    pub up_rate: f64,
    /// ...or the requests in flight exceed this...
    pub up_in_flight: f64,
    /// ...for this many ticks in a row.
    pub up_ticks: u32,
    /// An extra copy is removed when the remaining copies would each see less than half
    /// of both thresholds, for this many ticks in a row.
    pub down_ticks: u32,
}

impl Default for ScaleSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            up_rate: 50.0,
            up_in_flight: 4.0,
            up_ticks: 3,
            down_ticks: 30,
        }
    }
}

/// Tunables of the pool.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a route call waits for a cold model's load before answering "still
    /// loading"; also how long it waits for busy models to free room for it.
    pub route_wait: Duration,
    /// First retry delay after a failed load; doubles per failure up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Bound on one readiness probe.
    pub probe_timeout: Duration,
    pub watermarks: Watermarks,
    /// A model loaded or used more recently than this is not evicted (guards against
    /// churn, and covers the moment between a request's routing and its first usage
    /// report). A load that needs such a model's room waits for it.
    pub min_age: Duration,
    /// Bound on waiting for a replica to finish an unload before loading into the memory it
    /// frees (Triton answers the unload call before the model is gone).
    pub unload_wait: Duration,
    /// How long the gateway's workers take to apply a new routing table: an evicted copy
    /// leaves the table this long before it is unloaded, so that a worker still routing by
    /// the previous table does not send a request to a model that is going.
    pub table_propagation: Duration,
    /// A usage reporter (one gateway worker) not heard from for this long is forgotten.
    pub report_ttl: Duration,
    /// How long a version replaced by an update stays loaded with no request in flight
    /// before it is unloaded: longer than the gateway's usage report period (1 s), so a
    /// request routed to it just before the switch is seen in flight first
    /// (`--retire-grace`, checked by [`check_retire_grace`]).
    pub retire_grace: Duration,
    pub scale: ScaleSettings,
    /// Most requests held waiting for a load at once; past it they get 503 at once.
    pub max_waiting: usize,
    /// Consecutive failed probes before a replica is taken out of placement and routing.
    pub unhealthy_after: u32,
    /// Unload models a replica has loaded that the registry does not know.
    pub unload_unknown: bool,
    /// How replica host names are resolved (again on every probe).
    pub resolver: crate::resolve::Resolver,
    /// Events kept for the admin API's event list.
    pub events_capacity: usize,
    /// The victim order among evictable copies (`--eviction`).
    pub eviction: crate::eviction::EvictionPolicy,
    /// GDSF's tuning (`--gdsf-aging`, `--gdsf-half-life`; half-life in requests); LRU
    /// ignores it.
    pub gdsf: crate::eviction::GdsfConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            route_wait: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(2),
            watermarks: Watermarks::default(),
            min_age: Duration::from_secs(10),
            unload_wait: Duration::from_secs(10),
            table_propagation: Duration::from_millis(250),
            report_ttl: Duration::from_secs(10),
            retire_grace: Duration::from_secs(2),
            scale: ScaleSettings::default(),
            max_waiting: 1000,
            unhealthy_after: 2,
            unload_unknown: true,
            resolver: crate::resolve::Resolver::default(),
            events_capacity: crate::events::DEFAULT_CAPACITY,
            eviction: crate::eviction::EvictionPolicy::default(),
            gdsf: crate::eviction::EvictionCost::default().config(),
        }
    }
}

impl Settings {
    /// The victim order in force, as the metric, the start log and the status page show it.
    pub fn order_in_force(&self) -> crate::eviction::OrderInForce {
        crate::eviction::OrderInForce::new(self.eviction, &self.gdsf)
    }

    /// The part of the settings placement rules read, as the table carries it.
    pub(crate) fn rules(&self) -> super::table::Rules {
        super::table::Rules {
            watermarks: self.watermarks,
            min_age: self.min_age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retire_grace_is_bounded() {
        let ms = Duration::from_millis;
        for ok in [
            ms(100),
            ms(1_000),
            Settings::default().retire_grace,
            ms(3_600_000),
        ] {
            assert_eq!(check_retire_grace(ok), Ok(ok), "{ok:?}");
        }
        for bad in [Duration::ZERO, ms(99), ms(3_600_001), Duration::MAX] {
            assert_eq!(
                check_retire_grace(bad),
                Err(SettingsError::RetireGrace(bad)),
                "{bad:?}"
            );
        }
        let message = SettingsError::RetireGrace(Duration::ZERO).to_string();
        assert!(
            message.contains("retire grace 0s is out of range"),
            "{message}"
        );
    }
}
