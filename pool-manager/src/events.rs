//! The pool's recent events (loads, evictions, failures, placements, health changes): a
//! bounded ring buffer of structured records that the admin API pages through
//! (`GET /api/v1/events`) and streams (`GET /api/v1/events/stream`).
//!
//! Invariants: sequence numbers grow by one per event, so a reader that remembers the last
//! one it saw misses nothing that is still buffered; they start at 1, or, with a durable
//! reservation ([`Events::resume`]), above every number an earlier run of the pool-manager
//! could have used, so a reader's `after` stays meaningful across restarts; the buffer
//! holds at most `capacity` events (the oldest go first); recording never blocks on a
//! reader.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

/// Events kept by default (`--events`).
pub const DEFAULT_CAPACITY: usize = 1000;

/// Sequence numbers reserved durably at a time (see [`Events::resume`]): a restart skips
/// at most this many numbers.
pub const SEQ_BLOCK: u64 = 10_000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A model was registered for the first time.
    Registered,
    /// A registered model's spec changed.
    Updated,
    /// A model was deleted.
    Deleted,
    /// A replica was chosen for a new copy (`reason`: demand, pin, scale, drain).
    Placed,
    /// A copy finished loading (`seconds`: the load's duration).
    Loaded,
    /// A load failed (`reason`: the replica's own words).
    LoadFailed,
    /// A copy was unloaded to make room (`seconds`: how long it had been loaded).
    Evicted,
    /// A copy was unloaded for any other reason (`reason` says which).
    Unloaded,
    /// A copy beyond the model's first was loaded.
    CopyAdded,
    /// An extra copy was removed by the scaler.
    CopyRemoved,
    /// A replica passed its readiness probe again.
    ReplicaHealthy,
    /// A replica was taken out of placement and routing.
    ReplicaUnhealthy,
    /// The table was brought in line with a replica's own index.
    Reconciled,
    /// A replica was marked draining: no new copies, its copies move or unload.
    Drained,
    /// A draining replica takes new copies again.
    Undrained,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Registered => "registered",
            EventKind::Updated => "updated",
            EventKind::Deleted => "deleted",
            EventKind::Placed => "placed",
            EventKind::Loaded => "loaded",
            EventKind::LoadFailed => "load_failed",
            EventKind::Evicted => "evicted",
            EventKind::Unloaded => "unloaded",
            EventKind::CopyAdded => "copy_added",
            EventKind::CopyRemoved => "copy_removed",
            EventKind::ReplicaHealthy => "replica_healthy",
            EventKind::ReplicaUnhealthy => "replica_unhealthy",
            EventKind::Reconciled => "reconciled",
            EventKind::Drained => "drained",
            EventKind::Undrained => "undrained",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recorded event, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, UTC, millisecond precision.
    pub time: String,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Host memory accounted for the model's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_bytes: Option<u64>,
    /// A load's duration, or an evicted copy's age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Evictions: the victim order in force (`lru` or `gdsf`)...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// ...and the victim's priority in it when chosen (GDSF's `H`; LRU: seconds from the
    /// pool's start to the victim's last use). Lowest goes first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<f64>,
}

/// An event being described, before it gets its number and time. Built with chained
/// setters so that recording one stays one statement.
#[derive(Debug, Clone)]
pub struct NewEvent {
    kind: EventKind,
    model: Option<String>,
    replica: Option<String>,
    bytes: Option<u64>,
    gpu_bytes: Option<u64>,
    seconds: Option<f64>,
    reason: Option<String>,
    policy: Option<String>,
    priority: Option<f64>,
}

impl NewEvent {
    pub fn new(kind: EventKind) -> Self {
        Self {
            kind,
            model: None,
            replica: None,
            bytes: None,
            gpu_bytes: None,
            seconds: None,
            reason: None,
            policy: None,
            priority: None,
        }
    }

    pub fn model(mut self, model: impl fmt::Display) -> Self {
        self.model = Some(model.to_string());
        self
    }

    pub fn replica(mut self, replica: impl fmt::Display) -> Self {
        self.replica = Some(replica.to_string());
        self
    }

    /// Host and GPU memory; a zero GPU size is left out.
    pub fn size(mut self, memory: u64, gpu_memory: u64) -> Self {
        self.bytes = Some(memory);
        self.gpu_bytes = (gpu_memory > 0).then_some(gpu_memory);
        self
    }

    pub fn seconds(mut self, seconds: f64) -> Self {
        self.seconds = Some(seconds);
        self
    }

    pub fn reason(mut self, reason: impl fmt::Display) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    /// An eviction's victim order and the victim's priority in it. Left out when it is not
    /// a number a reader can compare: non-finite, or `f64::MIN`, the bottom a large one-off
    /// model enters at under GDSF's decay aging (it is on probation: the next victim).
    pub fn priority(mut self, policy: &str, priority: f64) -> Self {
        self.policy = Some(policy.to_owned());
        self.priority = (priority.is_finite() && priority > f64::MIN).then_some(priority);
        self
    }
}

/// A page of events.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub events: Vec<Event>,
    /// The sequence number to pass as `after` for what follows (the last one returned, or
    /// the `after` asked for when nothing newer exists).
    pub next: u64,
    /// The oldest sequence number still buffered (0 when empty): a reader whose `after` is
    /// below `oldest - 1` has missed events.
    pub oldest: u64,
}

struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
    /// Numbers up to this one are reserved durably (`u64::MAX`: no reservation is kept).
    reserved: u64,
}

/// Durably records that sequence numbers up to the given one may be in use.
pub type Reserve = Box<dyn Fn(u64) + Send + Sync>;

/// How the numbering continues across restarts ([`Events::resume`]).
struct Reservation {
    reserve: Reserve,
    /// Numbers reserved at a time.
    block: u64,
}

/// The ring buffer plus a broadcast channel for live readers.
pub struct Events {
    capacity: usize,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Event>,
    /// Set at shutdown, so that streams end and the server can stop.
    closed: watch::Sender<bool>,
    reservation: std::sync::OnceLock<Reservation>,
}

impl Events {
    /// Keeps the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            ring: Mutex::new(Ring {
                next_seq: 1,
                events: VecDeque::with_capacity(capacity.min(4096)),
                reserved: u64::MAX,
            }),
            live: broadcast::channel(256).0,
            closed: watch::channel(false).0,
            reservation: std::sync::OnceLock::new(),
        }
    }

    /// Numbers events from `next` on, where every number below `next` may have been used
    /// by an earlier run and numbers up to `reserved` (at least `next`) are reserved
    /// durably. Whenever fewer than half a `block` of reserved numbers remain, `reserve`
    /// is called with the end of the next block: recording never waits for it, and half a
    /// block of headroom is far more than can be recorded while it is committed. Call it
    /// once, before the first event.
    pub fn resume(&self, next: u64, reserved: u64, block: u64, reserve: Reserve) {
        let mut ring = self.ring();
        ring.next_seq = next.max(1);
        ring.reserved = reserved.max(ring.next_seq);
        let block = block.max(2);
        let _ = self.reservation.set(Reservation { reserve, block });
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The ring is consistent at every unlock point; a panic elsewhere must not stop it.
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers, timestamps and keeps `event`, and hands it to live readers.
    pub fn record(&self, event: NewEvent) {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let recorded = {
            let mut ring = self.ring();
            let recorded = Event {
                seq: ring.next_seq,
                time,
                kind: event.kind,
                model: event.model,
                replica: event.replica,
                bytes: event.bytes,
                gpu_bytes: event.gpu_bytes,
                seconds: event.seconds,
                reason: event.reason,
                policy: event.policy,
                priority: event.priority,
            };
            ring.next_seq = ring.next_seq.saturating_add(1);
            if let Some(r) = self.reservation.get() {
                // Numbers next_seq..=reserved are still free.
                let left = ring
                    .reserved
                    .saturating_sub(ring.next_seq)
                    .saturating_add(1);
                if left < r.block / 2 {
                    ring.reserved = ring.reserved.saturating_add(r.block);
                    (r.reserve)(ring.reserved);
                }
            }
            if ring.events.len() == self.capacity {
                ring.events.pop_front();
            }
            ring.events.push_back(recorded.clone());
            recorded
        };
        // No live reader is not an error.
        let _ = self.live.send(recorded);
    }

    /// Up to `limit` events: the first ones after sequence number `after`, or the newest
    /// ones when `after` is `None`; oldest first either way.
    pub fn page(&self, after: Option<u64>, limit: usize) -> Page {
        let ring = self.ring();
        let oldest = ring.events.front().map_or(0, |e| e.seq);
        let events: Vec<Event> = match after {
            Some(after) => ring
                .events
                .iter()
                .filter(|e| e.seq > after)
                .take(limit)
                .cloned()
                .collect(),
            None => {
                let skip = ring.events.len().saturating_sub(limit);
                ring.events.iter().skip(skip).cloned().collect()
            }
        };
        let next = events
            .last()
            .map_or_else(|| after.unwrap_or(ring.next_seq - 1), |e| e.seq);
        Page {
            events,
            next,
            oldest,
        }
    }

    /// A receiver of every event recorded from now on. A reader that falls more than 256
    /// events behind gets `Lagged` and should page the gap from the buffer.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Ends every stream (at shutdown: a server waits for open responses to finish).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Becomes `true` once [`Events::close`] was called.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(model: &str) -> NewEvent {
        NewEvent::new(EventKind::Loaded)
            .model(model)
            .replica("r0")
            .size(64, 0)
            .seconds(0.5)
    }

    #[test]
    fn a_priority_is_kept_only_when_comparable() {
        let with = |p: f64| {
            NewEvent::new(EventKind::Evicted)
                .priority("gdsf", p)
                .priority
        };
        assert_eq!(with(-3.5), Some(-3.5));
        assert_eq!(with(0.0), Some(0.0));
        assert_eq!(with(f64::MIN), None);
        assert_eq!(with(f64::NEG_INFINITY), None);
        assert_eq!(with(f64::NAN), None);
    }

    #[test]
    fn keeps_the_newest_events_and_numbers_them_in_order() {
        let events = Events::new(3);
        for m in ["a", "b", "c", "d"] {
            events.record(loaded(m));
        }
        let page = events.page(None, 10);
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(page.oldest, 2);
        assert_eq!(page.next, 4);
        assert_eq!(page.events[0].model.as_deref(), Some("b"));
    }

    #[test]
    fn pages_after_a_sequence_number() {
        let events = Events::new(10);
        for m in ["a", "b", "c", "d", "e"] {
            events.record(loaded(m));
        }
        let page = events.page(Some(1), 2);
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(page.next, 3);
        let rest = events.page(Some(page.next), 10);
        assert_eq!(rest.events.len(), 2);
        let none = events.page(Some(5), 10);
        assert!(none.events.is_empty());
        assert_eq!(
            none.next, 5,
            "nothing newer: next stays where the reader is"
        );
        // The newest two, oldest first.
        let newest = events.page(None, 2);
        let seqs: Vec<u64> = newest.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
    }

    #[test]
    fn serialises_with_snake_case_kinds_and_no_empty_fields() {
        let events = Events::new(4);
        events.record(
            NewEvent::new(EventKind::LoadFailed)
                .model("m")
                .replica("r1")
                .reason("boom"),
        );
        let json = serde_json::to_value(&events.page(None, 1).events[0]).unwrap();
        assert_eq!(json["kind"], "load_failed");
        assert_eq!(json["reason"], "boom");
        assert!(json.get("bytes").is_none() && json.get("gpuBytes").is_none());
        let time = json["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.contains('T'), "{time}");
    }

    #[test]
    fn numbering_resumes_above_what_an_earlier_run_reserved() {
        let events = Events::new(4);
        let reserved = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = reserved.clone();
        let reserve: Reserve = Box::new(move |upto| seen.lock().unwrap().push(upto));
        // The last run reserved up to 1000; this one reserved 1001..=1010 at start.
        events.resume(1001, 1010, 10, reserve);
        events.record(loaded("a"));
        assert_eq!(events.page(None, 1).events[0].seq, 1001);
        assert!(reserved.lock().unwrap().is_empty(), "9 numbers left of 10");
        for m in ["b", "c", "d", "e"] {
            events.record(loaded(m));
        }
        // 1005 recorded: 5 left, not under half a block yet; 1006 takes it under.
        assert!(reserved.lock().unwrap().is_empty());
        events.record(loaded("f"));
        assert_eq!(*reserved.lock().unwrap(), vec![1020]);
        let page = events.page(Some(1004), 10);
        let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1005, 1006]);
    }

    #[tokio::test]
    async fn live_readers_get_new_events() {
        let events = Events::new(4);
        let mut rx = events.subscribe();
        events.record(loaded("a"));
        let got = rx.recv().await.unwrap();
        assert_eq!((got.seq, got.kind), (1, EventKind::Loaded));
    }
}
