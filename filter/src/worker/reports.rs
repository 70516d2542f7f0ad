//! The worker's reports to the pool-manager: usage (requests routed and in flight, every
//! report period, one at a time) and replica failures (deduplicated across the workers of
//! one Envoy through shared data).

use std::collections::HashSet;
use std::time::Duration;

use mm_wire::{FailureReport, FAILURE_PATH, USAGE_PATH};

use crate::config::Config;
use crate::control;
use crate::failure::{self, FailureQueue};
use crate::host::Host;
use crate::metrics::Metric;
use crate::refresh;
use crate::shared::{cas_update, decode_u64, CasError, Update};
use crate::usage::{Pending, UsageTracker};
use crate::{debug, info, warn};

/// Usage report periods a report may stay unanswered before it counts as failed. The
/// call's timeout is at most one period, so Envoy answers well before; this only guards
/// against an answer that never comes, which would otherwise stop reporting for good.
const MAX_REPORT_PERIODS: u32 = 3;

/// Timeout of a failure report call.
const FAILURE_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reports on their way and the state of their failure streaks.
#[derive(Debug, Default)]
pub struct Reports {
    /// The usage report on its way, if any.
    usage: Option<Outstanding>,
    /// Whether the last usage report failed: warn once per failure streak, not every period.
    failing: bool,
    /// No usage report before this time (ns).
    next_report_at: u64,
    /// Failure reports on their way.
    failure_calls: HashSet<u32>,
    /// A watched model's last request ended: send the usage report at once.
    soon: bool,
}

/// A dispatched usage report waiting for its answer.
#[derive(Debug)]
struct Outstanding {
    token: u32,
    pending: Pending,
    /// Dispatch time (ns).
    sent_at: u64,
}

impl Reports {
    /// Sends the usage report at the next tick (or when the one on its way is answered),
    /// whatever the period.
    pub fn report_soon(&mut self) {
        self.soon = true;
    }

    /// Sends the usage report and the failure reports that are due.
    pub fn tick(
        &mut self,
        host: &mut impl Host,
        config: &Config,
        reporter: &str,
        usage: &mut UsageTracker,
        failures: &mut FailureQueue,
        now: u64,
    ) {
        self.usage_tick(host, config, reporter, usage, now);
        self.send_failure_reports(host, config, failures, now);
    }

    /// Handles the answer to call `token` if it is a report; returns whether it was.
    pub fn on_answer(
        &mut self,
        host: &mut impl Host,
        config: &Config,
        reporter: &str,
        usage: &mut UsageTracker,
        token: u32,
        body_size: usize,
    ) -> bool {
        if let Some(Outstanding { pending, .. }) = self.usage.take_if(|r| r.token == token) {
            self.on_usage_answer(host, usage, pending, token, body_size);
            // A watched model's last request ended while this report was on its way.
            if self.soon {
                host.increment(Metric::UsageReportsSoon, 1);
                let now = host.now();
                self.send_usage_report(host, config, reporter, usage, now);
            }
            return true;
        }
        if self.failure_calls.remove(&token) {
            match control::answer_status(host) {
                Some(200..=299) => debug!(host, "failure report {token} accepted"),
                status => {
                    let why = control::describe_answer(host, status, body_size);
                    warn!(host, "failure report {token} failed: {why}");
                }
            }
            return true;
        }
        false
    }

    /// Sends the usage report if one is due (and fails one left unanswered too long).
    fn usage_tick(
        &mut self,
        host: &mut impl Host,
        config: &Config,
        reporter: &str,
        usage: &mut UsageTracker,
        now: u64,
    ) {
        let period = refresh::nanos(config.usage_report_period());
        if let Some(outstanding) = &self.usage {
            let limit = period.saturating_mul(u64::from(MAX_REPORT_PERIODS));
            if now.saturating_sub(outstanding.sent_at) <= limit {
                return;
            }
            let token = outstanding.token;
            if let Some(Outstanding { pending, .. }) = self.usage.take() {
                usage.reject(pending);
            }
            let why = format!("report {token} unanswered after {MAX_REPORT_PERIODS} periods");
            self.usage_failed(host, &why);
        }
        if self.soon {
            host.increment(Metric::UsageReportsSoon, 1);
            self.send_usage_report(host, config, reporter, usage, now);
            return;
        }
        if now < self.next_report_at {
            return;
        }
        self.next_report_at = now.saturating_add(period);
        self.send_usage_report(host, config, reporter, usage, now);
    }

    /// Takes the next usage report, if there is one to send, and dispatches it.
    fn send_usage_report(
        &mut self,
        host: &mut impl Host,
        config: &Config,
        reporter: &str,
        usage: &mut UsageTracker,
        now: u64,
    ) {
        // Whatever happens next, this is the report a watched model was waiting for.
        self.soon = false;
        let Some((report, pending)) = usage.take_report(reporter) else {
            return;
        };
        if pending.in_flight_left_out() > 0 {
            warn!(
                host,
                "usage report: {} pairs with requests in flight left out (limit {} entries)",
                pending.in_flight_left_out(),
                report.entries.len()
            );
        }
        let body = match serde_json::to_vec(&report) {
            Ok(body) => body,
            Err(err) => {
                usage.reject(pending);
                self.usage_failed(host, &format!("cannot encode the usage report: {err}"));
                return;
            }
        };
        match control::post_json(
            host,
            config,
            USAGE_PATH,
            &body,
            config.usage_report_timeout(),
        ) {
            Ok(token) => {
                debug!(
                    host,
                    "usage report {token} sent: reporter {reporter}, {} entries, {} in flight, {} pairs kept for later",
                    report.entries.len(),
                    report
                        .entries
                        .iter()
                        .map(|e| e.in_flight)
                        .fold(0u64, u64::saturating_add),
                    pending.requests_left_out()
                );
                self.usage = Some(Outstanding {
                    token,
                    pending,
                    sent_at: now,
                });
            }
            Err(status) => {
                usage.reject(pending);
                let why = format!(
                    "cannot call cluster {}: {status}",
                    config.pool_manager_cluster
                );
                self.usage_failed(host, &why);
            }
        }
    }

    /// Handles the answer to usage report `token` (the outstanding one).
    fn on_usage_answer(
        &mut self,
        host: &mut impl Host,
        usage: &mut UsageTracker,
        pending: Pending,
        token: u32,
        body_size: usize,
    ) {
        let status = control::answer_status(host);
        if let Some(200..=299) = status {
            usage.acknowledge(pending);
            host.increment(Metric::UsageReportsSent, 1);
            debug!(host, "usage report {token} acknowledged: {status:?}");
            if self.failing {
                info!(host, "usage reports are delivered again");
                self.failing = false;
            }
            return;
        }
        usage.reject(pending);
        let why = control::describe_answer(host, status, body_size);
        self.usage_failed(host, &why);
    }

    /// Logs a failed usage report: a warning for the first of a streak, debug after that.
    fn usage_failed(&mut self, host: &mut impl Host, why: &str) {
        host.increment(Metric::UsageReportsFailed, 1);
        if self.failing {
            debug!(host, "usage report failed again: {why}");
        } else {
            warn!(
                host,
                "usage report failed (warning once until one succeeds): {why}"
            );
            self.failing = true;
        }
    }

    /// Sends the failure reports that are due.
    fn send_failure_reports(
        &mut self,
        host: &mut impl Host,
        config: &Config,
        failures: &mut FailureQueue,
        now: u64,
    ) {
        if failures.is_empty() {
            return;
        }
        for report in failures.take_due(now) {
            if !claim_failure_report(host, &report, now) {
                debug!(
                    host,
                    "failure of model {} on replica {} reported by another worker within the interval",
                    report.model,
                    report.replica
                );
                continue;
            }
            let Ok(body) = serde_json::to_vec(&report) else {
                continue;
            };
            match control::post_json(host, config, FAILURE_PATH, &body, FAILURE_REPORT_TIMEOUT) {
                Ok(token) => {
                    info!(
                        host,
                        "failure report {token}: model {} replica {} {:?}",
                        report.model,
                        report.replica,
                        report.kind
                    );
                    host.increment(Metric::FailureReportsSent, 1);
                    self.failure_calls.insert(token);
                }
                Err(status) => warn!(
                    host,
                    "cannot send the failure report for model {} replica {}: {status}",
                    report.model,
                    report.replica
                ),
            }
        }
    }
}

/// Claims the right to send `report` at `now` for every worker of this Envoy: at most one
/// report of a (model, replica, kind) per [`failure::REPORT_INTERVAL`] (compare-and-swap on
/// [`failure::shared_key`]). If shared data does not cooperate, the report is sent.
fn claim_failure_report(host: &mut impl Host, report: &FailureReport, now: u64) -> bool {
    let key = failure::shared_key(report);
    let claimed = cas_update(host, &key, 1, |_, last| {
        if failure::is_due(last.and_then(decode_u64), now) {
            Update::Write(now.to_le_bytes().to_vec(), true)
        } else {
            Update::Keep(false)
        }
    });
    match claimed {
        Ok(claimed) => claimed,
        // Another worker claimed it in between.
        Err(CasError::Contended(_)) => false,
        Err(CasError::Host(_)) => true,
    }
}
