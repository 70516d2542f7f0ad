//! Per-worker usage counting for the pool-manager's LRU eviction and copy scaling: how many
//! requests each (model, replica) pair was routed and how many are still in flight, sent as
//! a [`UsageReport`] every report period. Plain Rust with no clock and no I/O; the glue
//! calls [`UsageTracker::start`] / [`UsageTracker::finish`] per request and drives the
//! report cycle ([`UsageTracker::take_report`], then exactly one of
//! [`UsageTracker::acknowledge`] or [`UsageTracker::reject`]).
//!
//! Invariants: at most one report is outstanding; `requests` are only subtracted when the
//! pool-manager acknowledged them, so requests routed while a report is on its way, or
//! reported in a report that failed, are counted in a later one; in-flight counts never go
//! below zero.
//!
//! Watched models (the routing table's `watch`, see [`mm_wire::TableEntry`]): the tracker
//! knows which pairs the pool-manager may believe have requests in flight (those the last
//! acknowledged report listed so, and those of any report since, which may have arrived).
//! [`UsageTracker::finish`] says when a pair of those has none left, and
//! [`UsageTracker::owes_idle`] whether a model has such a pair: for a watched model the
//! glue then sends the report at once instead of at the next period.

use std::collections::{BTreeMap, BTreeSet};

use mm_wire::{UsageEntry, UsageReport, MAX_USAGE_ENTRIES};

/// The reporter id of a root context: `w<context id>-<start time in ns>`. Unique as long as
/// no two root contexts of one Envoy share a start time, which [`claim_start_nanos`]
/// ensures.
pub fn reporter_id(context_id: u32, start_nanos: u64) -> String {
    format!("w{context_id}-{start_nanos}")
}

/// The start time a new reporter claims: `now`, or one more than the last time claimed in
/// this Envoy if that is not earlier (the host clock may have coarse resolution, and worker
/// VMs start at the same moment).
pub fn claim_start_nanos(now: u64, last_claimed: Option<u64>) -> u64 {
    match last_claimed {
        Some(last) if last >= now => last.saturating_add(1),
        _ => now,
    }
}

/// Counters of one (model, replica) pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    /// Requests routed and not yet acknowledged by the pool-manager.
    requests: u64,
    /// Requests routed and not yet finished.
    in_flight: u64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        self.requests == 0 && self.in_flight == 0
    }
}

/// A report that was handed out by [`UsageTracker::take_report`] and has no answer yet.
/// Give it back to exactly one of [`UsageTracker::acknowledge`] (2xx) or
/// [`UsageTracker::reject`] (anything else, including a failed dispatch).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a pending report must be acknowledged or rejected, or reporting stops"]
pub struct Pending {
    /// Which report this is; only the outstanding one is accepted back.
    seq: u64,
    /// (model, replica, requests) of every reported entry with `requests > 0`.
    requests: Vec<(String, String, u64)>,
    /// How many entries the report carried.
    entries: usize,
    /// Pairs with requests in flight that did not fit under [`MAX_USAGE_ENTRIES`].
    in_flight_left_out: usize,
    /// Pairs with only `requests` that did not fit; they go in a later report.
    requests_left_out: usize,
    /// (model, replica) of every reported entry with `in_flight > 0`.
    in_flight: Vec<(String, String)>,
}

impl Pending {
    /// How many entries the report carries (0 for the "in flight went to zero" report).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Pairs with requests in flight that the report could not carry because of
    /// [`MAX_USAGE_ENTRIES`]; the pool-manager will take them as having none in flight.
    /// The report puts every in-flight pair before the others, so this is 0 unless one
    /// worker has more than [`MAX_USAGE_ENTRIES`] pairs in flight at once.
    pub fn in_flight_left_out(&self) -> usize {
        self.in_flight_left_out
    }

    /// Pairs with only new requests that were kept for a later report.
    pub fn requests_left_out(&self) -> usize {
        self.requests_left_out
    }
}

/// Request counters of one worker, keyed by (model, replica). See the module doc.
#[derive(Debug, Default)]
pub struct UsageTracker {
    /// model -> replica -> counts; a pair whose counts are both zero is removed.
    counts: BTreeMap<String, BTreeMap<String, Counts>>,
    /// `seq` of the report that is on its way, if any.
    outstanding: Option<u64>,
    /// `seq` of the next report.
    next_seq: u64,
    /// Whether the pool-manager may believe this reporter has something non-zero: set when
    /// a non-empty report is handed out (a failed one may still have arrived), cleared when
    /// an empty report is acknowledged.
    peer_may_see_activity: bool,
    /// Pairs the pool-manager may believe have requests in flight from this reporter.
    /// model -> replicas; looked up by `&str` when a request ends, without building keys.
    peer_may_see_in_flight: BTreeMap<String, BTreeSet<String>>,
}

impl UsageTracker {
    /// An empty tracker: nothing counted, nothing to report.
    pub fn new() -> UsageTracker {
        UsageTracker::default()
    }

    /// Counts a request routed to `replica` for `model` (one more request, one more in
    /// flight). Call it once the forward decision is applied, and pair it with exactly one
    /// [`UsageTracker::finish`] with the same names.
    pub fn start(&mut self, model: &str, replica: &str) {
        // A pair already counted (the warm case) is found without building its keys.
        let counts = match self
            .counts
            .get_mut(model)
            .and_then(|replicas| replicas.get_mut(replica))
        {
            Some(counts) => counts,
            None => self
                .counts
                .entry(model.to_owned())
                .or_default()
                .entry(replica.to_owned())
                .or_default(),
        };
        counts.requests = counts.requests.saturating_add(1);
        counts.in_flight = counts.in_flight.saturating_add(1);
    }

    /// Counts the end of a request counted by [`UsageTracker::start`], however it ended.
    /// A finish with no matching start is ignored: in-flight counts never go below zero.
    /// Returns true when this was the pair's last request in flight and the pool-manager
    /// may still count it in flight: if the model is watched, report now.
    pub fn finish(&mut self, model: &str, replica: &str) -> bool {
        let Some(replicas) = self.counts.get_mut(model) else {
            return false;
        };
        let Some(counts) = replicas.get_mut(replica) else {
            return false;
        };
        counts.in_flight = counts.in_flight.saturating_sub(1);
        let idle = counts.in_flight == 0;
        if counts.is_zero() {
            replicas.remove(replica);
            if replicas.is_empty() {
                self.counts.remove(model);
            }
        }
        idle && self
            .peer_may_see_in_flight
            .get(model)
            .is_some_and(|replicas| replicas.contains(replica))
    }

    /// Whether the pool-manager may count a request of `model` in flight from this reporter
    /// that has ended: if the model is watched, report now.
    pub fn owes_idle(&self, model: &str) -> bool {
        self.peer_may_see_in_flight
            .get(model)
            .is_some_and(|replicas| replicas.iter().any(|r| self.in_flight(model, r) == 0))
    }

    /// Requests in flight on the pair.
    fn in_flight(&self, model: &str, replica: &str) -> u64 {
        self.counts
            .get(model)
            .and_then(|r| r.get(replica))
            .map_or(0, |c| c.in_flight)
    }

    /// Whether a report is on its way (handed out and not yet acknowledged or rejected).
    pub fn is_reporting(&self) -> bool {
        self.outstanding.is_some()
    }

    /// How many (model, replica) pairs are tracked.
    pub fn pairs(&self) -> usize {
        self.counts.values().map(BTreeMap::len).sum()
    }

    /// The next report for `reporter`, or `None` when there is nothing to say or a report
    /// is already on its way.
    ///
    /// The report lists every pair with `requests > 0` or `in_flight > 0`, pairs with
    /// requests in flight first, each group sorted by (model, replica), at most
    /// [`MAX_USAGE_ENTRIES`] entries; pairs left out keep their counts for a later report.
    /// When every pair is zero it is `None`, except right after the pool-manager may have
    /// seen a non-empty report: then it is one report with no entries, so the pool-manager
    /// learns that nothing is in flight any more.
    pub fn take_report(&mut self, reporter: &str) -> Option<(UsageReport, Pending)> {
        if self.outstanding.is_some() {
            return None;
        }
        let pairs = || {
            self.counts.iter().flat_map(|(model, replicas)| {
                replicas
                    .iter()
                    .map(move |(replica, counts)| (model, replica, *counts))
            })
        };
        let in_flight = pairs().filter(|(_, _, c)| c.in_flight > 0);
        let requests_only = pairs().filter(|(_, _, c)| c.in_flight == 0 && c.requests > 0);
        let in_flight_total = in_flight.clone().count();
        let requests_only_total = requests_only.clone().count();
        if in_flight_total + requests_only_total == 0 && !self.peer_may_see_activity {
            return None;
        }

        let entries: Vec<UsageEntry> = in_flight
            .chain(requests_only)
            .take(MAX_USAGE_ENTRIES)
            .map(|(model, replica, counts)| UsageEntry {
                model: model.clone(),
                replica: replica.clone(),
                // The pool-manager refuses a report over its bounds; what a cap holds
                // back stays counted (only acknowledged requests are subtracted) and
                // goes in the next report.
                requests: counts.requests.min(mm_wire::MAX_REPORTED_REQUESTS),
                in_flight: counts.in_flight.min(mm_wire::MAX_REPORTED_IN_FLIGHT),
            })
            .collect();
        let requests = entries
            .iter()
            .filter(|e| e.requests > 0)
            .map(|e| (e.model.clone(), e.replica.clone(), e.requests))
            .collect();
        let in_flight_sent = in_flight_total.min(MAX_USAGE_ENTRIES);
        let busy: Vec<(String, String)> = entries
            .iter()
            .filter(|e| e.in_flight > 0)
            .map(|e| (e.model.clone(), e.replica.clone()))
            .collect();
        // Until this report is answered, the pool-manager may have it (or not).
        for (model, replica) in &busy {
            self.peer_may_see_in_flight
                .entry(model.clone())
                .or_default()
                .insert(replica.clone());
        }
        let pending = Pending {
            seq: self.next_seq,
            requests,
            entries: entries.len(),
            in_flight_left_out: in_flight_total - in_flight_sent,
            requests_left_out: requests_only_total - (entries.len() - in_flight_sent),
            in_flight: busy,
        };
        self.outstanding = Some(self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        if !entries.is_empty() {
            self.peer_may_see_activity = true;
        }
        let report = UsageReport {
            reporter: reporter.to_owned(),
            entries,
        };
        Some((report, pending))
    }

    /// The pool-manager answered 2xx to `pending`'s report: its `requests` are delivered, so
    /// they are subtracted (requests routed since then stay counted), and pairs left with
    /// nothing are forgotten. A `pending` that is not the outstanding report is ignored.
    pub fn acknowledge(&mut self, pending: Pending) {
        if !self.settle(&pending) {
            return;
        }
        if pending.entries == 0 {
            self.peer_may_see_activity = false;
        }
        // The pool-manager now holds exactly this report's in-flight pairs.
        self.peer_may_see_in_flight.clear();
        for (model, replica) in pending.in_flight {
            self.peer_may_see_in_flight
                .entry(model)
                .or_default()
                .insert(replica);
        }
        for (model, replica, requests) in pending.requests {
            let Some(replicas) = self.counts.get_mut(&model) else {
                continue;
            };
            if let Some(counts) = replicas.get_mut(&replica) {
                counts.requests = counts.requests.saturating_sub(requests);
                if counts.is_zero() {
                    replicas.remove(&replica);
                }
            }
            if replicas.is_empty() {
                self.counts.remove(&model);
            }
        }
    }

    /// `pending`'s report failed (non-2xx, timeout, no connection, not dispatched): every
    /// count stays for the next report. A `pending` that is not the outstanding report is
    /// ignored.
    pub fn reject(&mut self, pending: Pending) {
        self.settle(&pending);
    }

    /// Ends the outstanding report if `pending` is it; `false` if it is not.
    fn settle(&mut self, pending: &Pending) -> bool {
        if self.outstanding == Some(pending.seq) {
            self.outstanding = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(model: &str, replica: &str, requests: u64, in_flight: u64) -> UsageEntry {
        UsageEntry {
            model: model.to_owned(),
            replica: replica.to_owned(),
            requests,
            in_flight,
        }
    }

    /// Takes a report and acknowledges it; returns its entries.
    fn report_and_ack(tracker: &mut UsageTracker) -> Option<Vec<UsageEntry>> {
        let (report, pending) = tracker.take_report("w")?;
        tracker.acknowledge(pending);
        Some(report.entries)
    }

    #[test]
    fn reporter_ids_are_unique_even_with_a_coarse_clock() {
        assert_eq!(
            reporter_id(1, 1_700_000_000_000_000_000),
            "w1-1700000000000000000"
        );
        assert_eq!(claim_start_nanos(1_000, None), 1_000);
        assert_eq!(claim_start_nanos(1_000, Some(999)), 1_000);
        assert_eq!(claim_start_nanos(1_000, Some(1_000)), 1_001);
        assert_eq!(claim_start_nanos(1_000, Some(5_000)), 5_001);
        // Four VMs start within one microsecond tick.
        let mut last = None;
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let claimed = claim_start_nanos(2_000, last);
            last = Some(claimed);
            ids.insert(reporter_id(1, claimed));
        }
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn a_count_over_the_pool_managers_bound_is_sent_in_parts() {
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        tracker.finish("a", "r0");
        let max = mm_wire::MAX_REPORTED_REQUESTS;
        if let Some(counts) = tracker.counts.get_mut("a").and_then(|r| r.get_mut("r0")) {
            counts.requests = max + 5;
        }
        let (report, pending) = tracker.take_report("w").unwrap();
        assert_eq!(report.entries, vec![entry("a", "r0", max, 0)]);
        tracker.acknowledge(pending);
        let (report, _) = tracker.take_report("w").unwrap();
        assert_eq!(report.entries, vec![entry("a", "r0", 5, 0)]);
    }

    #[test]
    fn nothing_to_report_at_first() {
        let mut tracker = UsageTracker::new();
        assert_eq!(tracker.take_report("w"), None);
        assert!(!tracker.is_reporting());
        // A main-thread root context never routes anything: it never reports.
        for _ in 0..10 {
            assert_eq!(tracker.take_report("w"), None);
        }
    }

    #[test]
    fn counts_requests_and_in_flight_per_pair() {
        let mut tracker = UsageTracker::new();
        tracker.start("b", "r0");
        tracker.start("a", "r1");
        tracker.start("a", "r0");
        tracker.start("a", "r0");
        tracker.finish("a", "r0");
        tracker.finish("a", "r1");
        let (report, pending) = tracker.take_report("w1-42").unwrap();
        assert_eq!(report.reporter, "w1-42");
        // In-flight pairs first, then the others; each group sorted.
        assert_eq!(
            report.entries,
            vec![
                entry("a", "r0", 2, 1),
                entry("b", "r0", 1, 1),
                entry("a", "r1", 1, 0),
            ]
        );
        assert_eq!(pending.entries(), 3);
        assert_eq!(pending.in_flight_left_out(), 0);
        assert_eq!(pending.requests_left_out(), 0);
        tracker.acknowledge(pending);
        // Requests were delivered; in-flight counts are absolute and stay.
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 0, 1), entry("b", "r0", 0, 1)]
        );
        assert_eq!(tracker.pairs(), 2);
    }

    #[test]
    fn in_flight_never_goes_negative() {
        let mut tracker = UsageTracker::new();
        tracker.finish("a", "r0");
        assert_eq!(tracker.take_report("w"), None);
        assert_eq!(tracker.pairs(), 0);

        tracker.start("a", "r0");
        tracker.finish("a", "r0");
        tracker.finish("a", "r0");
        tracker.finish("a", "r1");
        tracker.finish("b", "r0");
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 1, 0)]
        );
        tracker.finish("a", "r0");
        tracker.start("a", "r0");
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 1, 1)]
        );
    }

    #[test]
    fn one_empty_report_when_in_flight_drops_to_zero() {
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 1, 1)]
        );
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 0, 1)]
        );
        tracker.finish("a", "r0");
        assert_eq!(tracker.pairs(), 0);
        // The pool-manager last heard "1 in flight": tell it once that it is 0 now.
        let (report, pending) = tracker.take_report("w").unwrap();
        assert!(report.entries.is_empty());
        assert_eq!(pending.entries(), 0);
        // Still owed while that empty report is unanswered or fails.
        assert_eq!(tracker.take_report("w"), None);
        tracker.reject(pending);
        let (report, pending) = tracker.take_report("w").unwrap();
        assert!(report.entries.is_empty());
        tracker.acknowledge(pending);
        // Then silence.
        assert_eq!(tracker.take_report("w"), None);
        assert_eq!(tracker.take_report("w"), None);
    }

    #[test]
    fn empty_report_after_a_finished_request_that_was_never_reported_in_flight() {
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        tracker.finish("a", "r0");
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 1, 0)]
        );
        // The last report was non-empty: one empty report closes it.
        assert_eq!(report_and_ack(&mut tracker), Some(vec![]));
        assert_eq!(tracker.take_report("w"), None);
    }

    #[test]
    fn empty_report_also_follows_a_failed_non_empty_report() {
        // A report that timed out may still have reached the pool-manager.
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        let (_, pending) = tracker.take_report("w").unwrap();
        tracker.reject(pending);
        tracker.finish("a", "r0");
        // The request itself is still owed ...
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 1, 0)]
        );
        // ... then the closing empty report.
        assert_eq!(report_and_ack(&mut tracker), Some(vec![]));
        assert_eq!(tracker.take_report("w"), None);
    }

    #[test]
    fn acknowledge_subtracts_only_what_was_reported() {
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        tracker.start("a", "r0");
        let (report, pending) = tracker.take_report("w").unwrap();
        assert_eq!(report.entries, vec![entry("a", "r0", 2, 2)]);
        // Routed while the report is on its way.
        tracker.start("a", "r0");
        tracker.start("b", "r0");
        tracker.finish("a", "r0");
        assert_eq!(tracker.take_report("w"), None, "one report at a time");
        assert!(tracker.is_reporting());
        tracker.acknowledge(pending);
        assert!(!tracker.is_reporting());
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 1, 2), entry("b", "r0", 1, 1)]
        );
    }

    #[test]
    fn reject_keeps_every_count() {
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        tracker.start("a", "r0");
        tracker.finish("a", "r0");
        let (first, pending) = tracker.take_report("w").unwrap();
        tracker.start("a", "r0");
        tracker.reject(pending);
        assert!(!tracker.is_reporting());
        let (second, pending) = tracker.take_report("w").unwrap();
        assert_eq!(first.entries, vec![entry("a", "r0", 2, 1)]);
        assert_eq!(second.entries, vec![entry("a", "r0", 3, 2)]);
        tracker.acknowledge(pending);
        assert_eq!(
            report_and_ack(&mut tracker).unwrap(),
            vec![entry("a", "r0", 0, 2)]
        );
    }

    #[test]
    fn a_stale_pending_is_ignored() {
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        let (_, first) = tracker.take_report("w").unwrap();
        // Hand-made copy of the first report's token, given back after it was settled.
        let stale = Pending {
            seq: first.seq,
            requests: first.requests.clone(),
            entries: first.entries,
            in_flight_left_out: 0,
            requests_left_out: 0,
            in_flight: first.in_flight.clone(),
        };
        tracker.acknowledge(first);
        tracker.start("a", "r0");
        let (_, second) = tracker.take_report("w").unwrap();
        tracker.acknowledge(stale);
        assert!(
            tracker.is_reporting(),
            "the stale ack must not settle the second"
        );
        tracker.reject(second);
        let (report, _) = tracker.take_report("w").unwrap();
        assert_eq!(report.entries, vec![entry("a", "r0", 1, 2)]);
    }

    #[test]
    fn pairs_with_nothing_left_are_forgotten() {
        let mut tracker = UsageTracker::new();
        for i in 0..100 {
            let model = format!("m{i}");
            tracker.start(&model, "r0");
            tracker.finish(&model, "r0");
        }
        tracker.start("busy", "r0");
        assert_eq!(tracker.pairs(), 101);
        assert_eq!(report_and_ack(&mut tracker).unwrap().len(), 101);
        assert_eq!(tracker.pairs(), 1);
        tracker.finish("busy", "r0");
        assert_eq!(tracker.pairs(), 0);
    }

    #[test]
    fn caps_the_report_and_keeps_the_rest() {
        let mut tracker = UsageTracker::new();
        let extra = 5;
        for i in 0..MAX_USAGE_ENTRIES + extra {
            let model = format!("m{i:05}");
            tracker.start(&model, "r0");
            tracker.finish(&model, "r0");
        }
        // Sorted last, but in flight: must be in the first report.
        tracker.start("z", "r9");

        let (report, pending) = tracker.take_report("w").unwrap();
        assert_eq!(report.entries.len(), MAX_USAGE_ENTRIES);
        assert_eq!(report.entries[0], entry("z", "r9", 1, 1));
        assert_eq!(pending.in_flight_left_out(), 0);
        assert_eq!(pending.requests_left_out(), extra + 1);
        tracker.acknowledge(pending);

        let rest = report_and_ack(&mut tracker).unwrap();
        let mut want = vec![entry("z", "r9", 0, 1)];
        for i in MAX_USAGE_ENTRIES - 1..MAX_USAGE_ENTRIES + extra {
            want.push(entry(&format!("m{i:05}"), "r0", 1, 0));
        }
        assert_eq!(rest, want);
        assert_eq!(tracker.pairs(), 1);
    }

    #[test]
    fn counts_in_flight_pairs_that_do_not_fit() {
        let mut tracker = UsageTracker::new();
        for i in 0..MAX_USAGE_ENTRIES + 2 {
            tracker.start(&format!("m{i:05}"), "r0");
        }
        let (report, pending) = tracker.take_report("w").unwrap();
        assert_eq!(report.entries.len(), MAX_USAGE_ENTRIES);
        assert_eq!(pending.in_flight_left_out(), 2);
        assert_eq!(pending.requests_left_out(), 0);
    }

    #[test]
    fn the_end_of_a_reported_request_is_owed_to_the_pool_manager() {
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        tracker.start("a", "r0");
        // Never reported: its end owes nothing.
        tracker.start("b", "r0");
        assert!(!tracker.finish("b", "r0"));
        report_and_ack(&mut tracker);
        assert!(!tracker.finish("a", "r0"), "one request still in flight");
        assert!(!tracker.owes_idle("a"));
        assert!(
            tracker.finish("a", "r0"),
            "the last one, reported in flight"
        );
        assert!(tracker.owes_idle("a") && !tracker.owes_idle("b"));
        // Once a report saying so is acknowledged, nothing is owed.
        assert_eq!(report_and_ack(&mut tracker), Some(vec![]));
        assert!(!tracker.owes_idle("a"));
    }

    #[test]
    fn a_report_that_failed_may_have_arrived() {
        let mut tracker = UsageTracker::new();
        tracker.start("a", "r0");
        let (_, pending) = tracker.take_report("w").unwrap();
        tracker.reject(pending);
        assert!(
            tracker.finish("a", "r0"),
            "the failed report may have said 1 in flight"
        );
        // A report that is on its way counts too.
        tracker.start("a", "r1");
        let (_, pending) = tracker.take_report("w").unwrap();
        assert!(tracker.finish("a", "r1"));
        tracker.acknowledge(pending);
        assert!(
            tracker.owes_idle("a"),
            "the acknowledged report said r1 had one in flight"
        );
    }

    #[test]
    fn report_serialises_to_the_wire_shape() {
        let mut tracker = UsageTracker::new();
        tracker.start("linear", "r0");
        let (report, _) = tracker.take_report("w2-1700000000000000000").unwrap();
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"reporter":"w2-1700000000000000000","entries":[{"model":"linear","replica":"r0","requests":1,"inFlight":1}]}"#
        );
    }
}
