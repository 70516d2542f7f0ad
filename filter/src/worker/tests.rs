//! The worker's tick and call answers against the fake host: two workers of one Envoy
//! share one [`SharedStore`], as VMs of one plugin do.

use std::cell::RefCell;
use std::rc::Rc;

use mm_wire::{FailureKind, FAILURE_PATH, USAGE_PATH};

use super::*;
use crate::control::GATEWAY_TOKEN_HEADER;
use crate::host::fake::{Dispatched, FakeHost, Op, SharedStore};
use crate::host::{Buffer, Level, Map};

const MS: u64 = 1_000_000;
const CONFIG: &str = r#"{"gateway_token":"t0k3n","usage_report_ms":1000,"table_refresh_ms":200}"#;

const TABLE: &str = r#"{"epoch":"e1","generation":3,"models":[{"model":"linear","replicas":[{"replica":"r0","address":"127.0.0.1:8000"}]}]}"#;

struct Vm {
    host: FakeHost,
    worker: Worker,
}

impl Vm {
    fn new(store: &Rc<RefCell<SharedStore>>, id: u32) -> Vm {
        let mut host = FakeHost::sharing(store);
        let mut worker = Worker::new(&mut host, id);
        worker
            .configure(&mut host, Some(CONFIG.as_bytes()), |_| None)
            .unwrap();
        host.take_ops();
        Vm { host, worker }
    }

    fn tick_at(&mut self, now: u64) -> Vec<Op> {
        self.host.now = now;
        self.worker.on_tick(&mut self.host);
        self.host.take_ops()
    }

    fn answer(&mut self, token: u32, status: Option<u16>, body: &str) -> Vec<Op> {
        match status {
            Some(status) => self
                .host
                .set_map(Map::CallHeaders, &[(":status", &status.to_string())]),
            None => self.host.set_map(Map::CallHeaders, &[]),
        }
        self.host
            .buffers
            .insert(Buffer::CallBody, body.as_bytes().to_vec());
        self.worker
            .on_call_answer(&mut self.host, token, body.len());
        self.host.take_ops()
    }
}

fn dispatched(ops: &[Op]) -> Vec<Dispatched> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Dispatch(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn increments(ops: &[Op]) -> Vec<(Metric, u64)> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Increment(m, n) => Some((*m, *n)),
            _ => None,
        })
        .collect()
}

fn warnings(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|op| matches!(op, Op::Log(level, _) if *level >= Level::Warn))
        .count()
}

const T0: u64 = 1_700_000_000_000 * MS;

#[test]
fn reporter_ids_differ_even_with_one_clock() {
    let store = Rc::default();
    let a = Vm::new(&store, 2);
    let b = Vm::new(&store, 2);
    assert_ne!(a.worker.reporter(), b.worker.reporter());
}

#[test]
fn one_leader_polls_and_every_worker_applies_its_table() {
    let store = Rc::default();
    let mut a = Vm::new(&store, 2);
    let mut b = Vm::new(&store, 3);

    // a takes the lease and polls; b sees it held.
    let ops = a.tick_at(T0);
    let polls = dispatched(&ops);
    assert_eq!(polls.len(), 1, "{ops:#?}");
    assert_eq!(
        polls[0].header(":path"),
        Some("/internal/v1/table?waitMs=10000")
    );
    assert_eq!(polls[0].header(GATEWAY_TOKEN_HEADER), Some("t0k3n"));
    assert!(dispatched(&b.tick_at(T0 + MS)).is_empty());

    // The answer is shared and applied; a changed table is polled again at once, since it.
    let ops = a.answer(polls[0].token, Some(200), TABLE);
    assert!(a.worker.table.contains("linear"));
    assert_eq!(increments(&ops), vec![(Metric::TableRefreshes, 1)]);
    let again = dispatched(&ops);
    assert_eq!(
        again[0].header(":path"),
        Some("/internal/v1/table?since=3&epoch=e1&waitMs=10000")
    );
    assert_eq!(store.borrow().get(refresh::STAMP_KEY), Some(&b"3 e1"[..]));

    // b applies the shared table on its next tick, without a call; then not again.
    assert!(!b.worker.table.contains("linear"));
    let ops = b.tick_at(T0 + 200 * MS);
    assert!(b.worker.table.contains("linear"));
    assert!(dispatched(&ops).is_empty());
    let ops = b.tick_at(T0 + 400 * MS);
    assert!(!ops
        .iter()
        .any(|op| *op == Op::Shared(refresh::TABLE_KEY.into())));

    // An unchanged answer (the hold ran out) is not polled again before the next tick.
    let ops = a.answer(again[0].token, Some(200), TABLE);
    assert!(dispatched(&ops).is_empty());
    assert_eq!(dispatched(&a.tick_at(T0 + 600 * MS)).len(), 1);
}

#[test]
fn the_lease_moves_when_its_holder_stops_ticking() {
    let store = Rc::default();
    let mut a = Vm::new(&store, 2);
    let mut b = Vm::new(&store, 3);
    a.tick_at(T0);
    // The lease lasts five ticks (1 s at least): b takes it only after that.
    assert!(dispatched(&b.tick_at(T0 + 900 * MS)).is_empty());
    let ops = b.tick_at(T0 + 1_001 * MS);
    assert_eq!(dispatched(&ops).len(), 1, "{ops:#?}");
}

#[test]
fn failed_polls_back_off_and_warn_once() {
    let store = Rc::default();
    let mut a = Vm::new(&store, 2);
    let token = dispatched(&a.tick_at(T0))[0].token;
    let ops = a.answer(token, None, "");
    assert_eq!(increments(&ops), vec![(Metric::TablePollFailures, 1)]);
    assert_eq!(warnings(&ops), 1);
    // Backoff: no poll within a second.
    assert!(dispatched(&a.tick_at(T0 + 500 * MS)).is_empty());
    let ops = a.tick_at(T0 + 1_100 * MS);
    let token = dispatched(&ops)[0].token;
    let ops = a.answer(token, Some(503), "");
    assert_eq!(warnings(&ops), 0, "a streak warns once: {ops:#?}");
}

#[test]
fn usage_reports_are_sent_acknowledged_and_retried() {
    let store = Rc::default();
    let mut a = Vm::new(&store, 2);
    a.worker.usage.start("linear", "r0");
    let ops = a.tick_at(T0);
    let report = dispatched(&ops)
        .into_iter()
        .find(|d| d.header(":path") == Some(USAGE_PATH))
        .unwrap();
    assert_eq!(report.header(GATEWAY_TOKEN_HEADER), Some("t0k3n"));
    let body: serde_json::Value = serde_json::from_slice(report.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["entries"][0]["model"], "linear");
    assert_eq!(body["entries"][0]["requests"], 1);
    assert_eq!(body["entries"][0]["inFlight"], 1);

    // A failed report keeps the counts for the next one.
    let ops = a.answer(report.token, Some(500), r#"{"error":"boom"}"#);
    assert_eq!(increments(&ops), vec![(Metric::UsageReportsFailed, 1)]);
    assert_eq!(warnings(&ops), 1);
    let ops = a.tick_at(T0 + 1_000 * MS);
    let report = dispatched(&ops)
        .into_iter()
        .find(|d| d.header(":path") == Some(USAGE_PATH))
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(report.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["entries"][0]["requests"], 1);
    let ops = a.answer(report.token, Some(200), "");
    assert_eq!(increments(&ops), vec![(Metric::UsageReportsSent, 1)]);

    // Not before the period; a report left unanswered for three periods is given up.
    a.worker.usage.finish("linear", "r0");
    assert!(dispatched(&a.tick_at(T0 + 1_500 * MS))
        .iter()
        .all(|d| d.header(":path") != Some(USAGE_PATH)));
    let ops = a.tick_at(T0 + 2_000 * MS);
    assert!(dispatched(&ops)
        .iter()
        .any(|d| d.header(":path") == Some(USAGE_PATH)));
    let ops = a.tick_at(T0 + 6_000 * MS);
    assert!(
        increments(&ops).contains(&(Metric::UsageReportsFailed, 1)),
        "{ops:#?}"
    );
}

#[test]
fn failure_reports_go_out_once_per_envoy() {
    let store = Rc::default();
    let mut a = Vm::new(&store, 2);
    let mut b = Vm::new(&store, 3);
    a.worker
        .failures
        .push("linear", "r0", FailureKind::Unreachable);
    b.worker
        .failures
        .push("linear", "r0", FailureKind::Unreachable);
    let ops = a.tick_at(T0);
    let sent: Vec<Dispatched> = dispatched(&ops)
        .into_iter()
        .filter(|d| d.header(":path") == Some(FAILURE_PATH))
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header(GATEWAY_TOKEN_HEADER), Some("t0k3n"));
    assert!(increments(&ops).contains(&(Metric::FailureReportsSent, 1)));
    // b saw the same failure within the interval: another worker already reported it.
    let ops = b.tick_at(T0 + 100 * MS);
    assert!(dispatched(&ops)
        .iter()
        .all(|d| d.header(":path") != Some(FAILURE_PATH)));
    let ops = a.answer(sent[0].token, Some(202), "");
    assert_eq!(warnings(&ops), 0);
}

#[test]
fn a_bad_configuration_keeps_the_last_good_one() {
    let store = Rc::default();
    let mut a = Vm::new(&store, 2);
    let err = a
        .worker
        .configure(&mut a.host, Some(br#"{"route_timeout_ms":0}"#), |_| None);
    assert!(err.is_err());
    assert_eq!(
        a.worker.config().gateway_token.as_ref().map(|t| t.as_str()),
        Some("t0k3n")
    );
    a.worker
        .configure(&mut a.host, None, |name| {
            (name == "MM_GATEWAY_TOKEN").then(|| "env-token".to_owned())
        })
        .unwrap();
    assert_eq!(
        a.worker.config().gateway_token.as_ref().map(|t| t.as_str()),
        Some("env-token")
    );
    let logs = a.host.logs(Level::Info);
    assert!(
        logs.iter()
            .any(|l| l.contains("gateway token from $MM_GATEWAY_TOKEN")),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|l| l.contains("env-token")), "{logs:?}");
}

const WATCHED: &str = r#"{"epoch":"e1","generation":4,"models":[{"model":"linear","replicas":[{"replica":"r0","address":"127.0.0.1:8000"}],"watch":true}]}"#;

fn usage_reports(ops: &[Op]) -> Vec<Dispatched> {
    dispatched(ops)
        .into_iter()
        .filter(|d| d.header(":path") == Some(USAGE_PATH))
        .collect()
}

fn tick_periods(ops: &[Op]) -> Vec<std::time::Duration> {
    ops.iter()
        .filter_map(|op| match op {
            Op::SetTickPeriod(p) => Some(*p),
            _ => None,
        })
        .collect()
}

/// A worker that polls as leader, with `TABLE` applied; returns the token of its next poll.
fn leader_with_table(a: &mut Vm) -> u32 {
    let poll = dispatched(&a.tick_at(T0))[0].token;
    dispatched(&a.answer(poll, Some(200), TABLE))[0].token
}

/// Starts a request for linear on r0 and lets the pool-manager hear of it at `at`.
fn reported_start(a: &mut Vm, at: u64) {
    a.worker.usage.start("linear", "r0");
    let report = usage_reports(&a.tick_at(at))[0].token;
    a.answer(report, Some(200), "");
}

#[test]
fn the_end_of_a_watched_models_last_request_is_reported_at_once() {
    let store = Rc::default();
    let mut a = Vm::new(&store, 2);
    let poll = leader_with_table(&mut a);
    reported_start(&mut a, T0 + 1_000 * MS);
    // Unwatched: its end waits for the next period, with no host call.
    assert!(a.worker.usage.finish("linear", "r0"));
    a.worker.ended_last_request(&mut a.host, "linear", "linear");
    assert!(a.host.take_ops().is_empty());
    assert!(usage_reports(&a.tick_at(T0 + 1_010 * MS)).is_empty());
    let report = usage_reports(&a.tick_at(T0 + 2_000 * MS))[0].token;
    a.answer(report, Some(200), "");

    // Watched: a request's end brings the tick forward, and that tick reports at once.
    let ops = a.answer(poll, Some(200), WATCHED);
    assert!(a.worker.table.is_watched("linear"));
    assert!(tick_periods(&ops).is_empty(), "nothing owed: {ops:#?}");
    reported_start(&mut a, T0 + 3_000 * MS);
    assert!(a.worker.usage.finish("linear", "r0"));
    a.worker.ended_last_request(&mut a.host, "linear", "linear");
    let ops = a.host.take_ops();
    assert_eq!(tick_periods(&ops), [std::time::Duration::from_millis(1)]);
    let ops = a.tick_at(T0 + 3_001 * MS);
    let reports = usage_reports(&ops);
    assert_eq!(reports.len(), 1, "{ops:#?}");
    let body: serde_json::Value =
        serde_json::from_slice(reports[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body["entries"],
        serde_json::json!([]),
        "nothing in flight any more"
    );
    assert!(increments(&ops).contains(&(Metric::UsageReportsSoon, 1)));
    // The tick period is back to normal.
    assert_eq!(tick_periods(&ops), [std::time::Duration::from_millis(200)]);
}

#[test]
fn a_watched_model_that_went_idle_before_the_table_said_so_is_reported_with_the_table() {
    let store = Rc::default();
    let mut a = Vm::new(&store, 2);
    let poll = leader_with_table(&mut a);
    reported_start(&mut a, T0 + 1_000 * MS);
    a.worker.usage.finish("linear", "r0");
    // The table that watches "linear" arrives after its last request ended.
    let ops = a.answer(poll, Some(200), WATCHED);
    assert_eq!(tick_periods(&ops), [std::time::Duration::from_millis(1)]);
    assert_eq!(usage_reports(&a.tick_at(T0 + 1_001 * MS)).len(), 1);
}
