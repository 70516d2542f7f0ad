//! How the routing table reaches every worker: one root context at a time (the leader,
//! elected through a lease in Proxy-Wasm shared data) long-polls the pool-manager's table
//! and stores the raw JSON in shared data; every root context checks a small version stamp
//! on its tick and re-parses the big blob only when the stamp changed. Plain Rust: the
//! encodings, the lease rule and the poll schedule, with times in ns since the Unix epoch
//! passed in by the glue.

use std::time::Duration;

use mm_wire::{RoutingTable, MAX_TABLE_WAIT_MS, TABLE_PATH};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Shared-data key of the leader lease: [`Lease::encode`].
pub const LEASE_KEY: &str = "mm.table.lease";

/// Shared-data key of the table as the pool-manager sent it (raw JSON).
pub const TABLE_KEY: &str = "mm.table";

/// Shared-data key of the stamp of [`TABLE_KEY`]: [`Stamp::encode`], written after it.
pub const STAMP_KEY: &str = "mm.table.stamp";

/// How long the leader waits after a failed poll before the next one.
pub const POLL_BACKOFF: Duration = Duration::from_secs(1);

/// How much longer than the requested hold a poll may take before Envoy gives up on it.
pub const POLL_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// Most bytes of a table answer the leader reads; a larger answer counts as a failed poll.
/// (Shared data holds the blob once per Envoy; each worker parses its own copy.)
pub const MAX_TABLE_BYTES: usize = 16 * 1024 * 1024;

/// Shortest lease: a leader whose ticks stop (VM gone) is replaced after this long.
const MIN_LEASE: Duration = Duration::from_secs(1);

/// Ticks a lease lasts without renewal.
const LEASE_TICKS: u32 = 5;

/// The leader lease in shared data: who polls, and until when the claim holds unless
/// renewed. The holder renews it on every tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's id (its reporter id, unique per root context in one Envoy).
    pub owner: String,
    /// ns since the Unix epoch after which any root context may take the lease.
    pub expires_nanos: u64,
}

impl Lease {
    /// 8 little-endian bytes of `expires_nanos`, then the owner id.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.owner.len());
        out.extend_from_slice(&self.expires_nanos.to_le_bytes());
        out.extend_from_slice(self.owner.as_bytes());
        out
    }

    /// Reads [`Lease::encode`]'s bytes; `None` if they are not that shape (an unreadable
    /// lease counts as free).
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let (expires, owner) = bytes.split_at_checked(8)?;
        let expires_nanos = u64::from_le_bytes(expires.try_into().ok()?);
        let owner = std::str::from_utf8(owner).ok()?.to_owned();
        Some(Lease {
            owner,
            expires_nanos,
        })
    }

    /// Whether `me` holds this lease at `now`.
    pub fn is_held_by(&self, me: &str, now: u64) -> bool {
        self.owner == me && now < self.expires_nanos
    }
}

/// The lease `me` should write at `now` (compare-and-swap on what it read), or `None` if
/// someone else holds a lease that has not expired. `me` takes a free, unreadable or
/// expired lease and renews its own.
pub fn next_lease(current: Option<&Lease>, me: &str, now: u64, ttl: Duration) -> Option<Lease> {
    match current {
        Some(lease) if lease.owner != me && now < lease.expires_nanos => None,
        _ => Some(Lease {
            owner: me.to_owned(),
            expires_nanos: now.saturating_add(nanos(ttl)),
        }),
    }
}

/// How long a lease lasts: [`LEASE_TICKS`] tick periods, at least [`MIN_LEASE`].
pub fn lease_ttl(tick: Duration) -> Duration {
    tick.saturating_mul(LEASE_TICKS).max(MIN_LEASE)
}

/// The epoch and generation of the table in [`TABLE_KEY`]: workers compare it with the
/// last stamp they applied, so an unchanged table costs one small read per tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub epoch: String,
    pub generation: u64,
}

impl Stamp {
    /// `<generation> <epoch>` in ASCII.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.generation, self.epoch).into_bytes()
    }

    /// Reads [`Stamp::encode`]'s bytes; `None` if they are not that shape.
    pub fn decode(bytes: &[u8]) -> Option<Stamp> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (generation, epoch) = text.split_once(' ')?;
        Some(Stamp {
            epoch: epoch.to_owned(),
            generation: generation.parse().ok()?,
        })
    }

    /// Whether a table with this stamp replaces one stamped `current` (the table's rule:
    /// another epoch always, the same epoch only with a newer generation).
    pub fn replaces(&self, current: Option<&Stamp>) -> bool {
        match current {
            Some(current) if current.epoch == self.epoch => self.generation > current.generation,
            _ => true,
        }
    }
}

/// The `:path` of the table long poll: `TABLE_PATH?waitMs=W` for the first poll, then
/// `TABLE_PATH?since=G&epoch=E&waitMs=W` once a table is known (the epoch
/// percent-encoded). `wait_ms` is clamped to [`MAX_TABLE_WAIT_MS`].
pub fn poll_path(known: Option<&Stamp>, wait_ms: u64) -> String {
    let wait_ms = wait_ms.min(MAX_TABLE_WAIT_MS);
    match known {
        None => format!("{TABLE_PATH}?waitMs={wait_ms}"),
        Some(stamp) => format!(
            "{TABLE_PATH}?since={}&epoch={}&waitMs={wait_ms}",
            stamp.generation,
            utf8_percent_encode(&stamp.epoch, QUERY_VALUE)
        ),
    }
}

/// Timeout of a long poll that asks for a hold of `wait_ms`.
pub fn poll_timeout(wait_ms: u64) -> Duration {
    Duration::from_millis(wait_ms.min(MAX_TABLE_WAIT_MS)) + POLL_TIMEOUT_MARGIN
}

/// Why a table answer was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// No answer: connect failure, reset or timeout.
    #[error("no answer (connect failure, reset or timeout)")]
    NoAnswer,
    /// An answer other than 200.
    #[error("status {0}")]
    Status(u16),
    /// A 200 whose body is larger than [`MAX_TABLE_BYTES`].
    #[error("table of {0} bytes is over {MAX_TABLE_BYTES}")]
    TooLarge(usize),
    /// A 200 whose body is not a routing table; holds serde_json's description.
    #[error("invalid table: {0}")]
    Invalid(String),
}

/// Checks a table answer before it is shared: `status` `None` for a failed call, the body
/// length as Envoy reported it, then the body (only read when the length is acceptable).
pub fn check_answer(
    status: Option<u16>,
    body_len: usize,
    body: impl FnOnce() -> Vec<u8>,
) -> Result<(RoutingTable, Vec<u8>), PollError> {
    match status {
        None => return Err(PollError::NoAnswer),
        Some(200) => {}
        Some(other) => return Err(PollError::Status(other)),
    }
    if body_len > MAX_TABLE_BYTES {
        return Err(PollError::TooLarge(body_len));
    }
    let body = body();
    let table = serde_json::from_slice(&body).map_err(|e| PollError::Invalid(e.to_string()))?;
    Ok((table, body))
}

/// When the leader polls: one poll at a time, the next right after an answer, or
/// [`POLL_BACKOFF`] after a failure. A poll that Envoy never answers (it always should,
/// at the timeout) is forgotten after its timeout plus [`POLL_BACKOFF`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollSchedule {
    /// Token and dispatch time of the poll on its way.
    outstanding: Option<(u32, u64)>,
    /// No poll before this time (ns).
    not_before: u64,
}

impl PollSchedule {
    /// A schedule that may poll at once.
    pub fn new() -> PollSchedule {
        PollSchedule::default()
    }

    /// Whether a poll should be dispatched at `now`, given the poll timeout; forgets an
    /// outstanding poll that is overdue.
    pub fn is_due(&mut self, now: u64, timeout: Duration) -> bool {
        if let Some((_, sent)) = self.outstanding {
            let limit = sent.saturating_add(nanos(timeout + POLL_BACKOFF));
            if now < limit {
                return false;
            }
            self.outstanding = None;
        }
        now >= self.not_before
    }

    /// A poll was dispatched with `token` at `now`.
    pub fn dispatched(&mut self, token: u32, now: u64) {
        self.outstanding = Some((token, now));
    }

    /// Whether `token` is the poll on its way.
    pub fn is_outstanding(&self, token: u32) -> bool {
        matches!(self.outstanding, Some((t, _)) if t == token)
    }

    /// Whether any poll is on its way.
    pub fn is_polling(&self) -> bool {
        self.outstanding.is_some()
    }

    /// The poll `token` ended (answer used: `ok`) at `now`; returns whether it was the
    /// outstanding one. After a failure the next poll waits [`POLL_BACKOFF`].
    pub fn finished(&mut self, token: u32, ok: bool, now: u64) -> bool {
        if !self.is_outstanding(token) {
            return false;
        }
        self.outstanding = None;
        self.not_before = if ok {
            now
        } else {
            now.saturating_add(nanos(POLL_BACKOFF))
        };
        true
    }

    /// Dispatching failed at `now`: back off as after a failed poll.
    pub fn dispatch_failed(&mut self, now: u64) {
        self.not_before = now.saturating_add(nanos(POLL_BACKOFF));
    }
}

/// `d` in ns, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Everything but RFC 3986 unreserved characters is escaped in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn lease_round_trips_and_refuses_garbage() {
        let lease = Lease {
            owner: "w2-1700".into(),
            expires_nanos: 42 * S,
        };
        assert_eq!(Lease::decode(&lease.encode()), Some(lease.clone()));
        assert_eq!(&lease.encode()[8..], b"w2-1700");
        for bad in [
            &b""[..],
            b"1234567",
            b"\x01\x02\x03\x04\x05\x06\x07\x08\xff",
        ] {
            assert_eq!(Lease::decode(bad), None, "{bad:?}");
        }
        assert!(lease.is_held_by("w2-1700", 41 * S));
        assert!(!lease.is_held_by("w2-1700", 42 * S));
        assert!(!lease.is_held_by("w3-1700", 41 * S));
    }

    #[test]
    fn one_holder_until_the_lease_expires() {
        let ttl = Duration::from_secs(1);
        // Free: the first to ask gets it.
        let a = next_lease(None, "a", 10 * S, ttl).unwrap();
        assert_eq!(a.owner, "a");
        assert_eq!(a.expires_nanos, 11 * S);
        // Held by a: b may not take it, a renews it.
        assert_eq!(next_lease(Some(&a), "b", 10 * S + 1, ttl), None);
        let renewed = next_lease(Some(&a), "a", 10 * S + 500_000_000, ttl).unwrap();
        assert_eq!(renewed.expires_nanos, 11 * S + 500_000_000);
        // a stops renewing: b takes over once it has expired.
        assert_eq!(next_lease(Some(&renewed), "b", 11 * S, ttl), None);
        let b = next_lease(Some(&renewed), "b", 11 * S + 500_000_000, ttl).unwrap();
        assert_eq!(b.owner, "b");
        assert_eq!(next_lease(Some(&b), "a", 12 * S, ttl), None);
    }

    #[test]
    fn lease_lasts_five_ticks_at_least_a_second() {
        assert_eq!(
            lease_ttl(Duration::from_millis(200)),
            Duration::from_secs(1)
        );
        assert_eq!(lease_ttl(Duration::from_millis(50)), Duration::from_secs(1));
        assert_eq!(lease_ttl(Duration::from_secs(10)), Duration::from_secs(50));
    }

    #[test]
    fn stamps_round_trip_and_follow_the_table_rule() {
        let stamp = Stamp {
            epoch: "pm 7/é".into(),
            generation: 12,
        };
        assert_eq!(stamp.encode(), "12 pm 7/é".as_bytes());
        assert_eq!(Stamp::decode(&stamp.encode()), Some(stamp.clone()));
        for bad in [&b""[..], b"12", b"x e", b"\xff e", b"-1 e"] {
            assert_eq!(Stamp::decode(bad), None, "{bad:?}");
        }
        let newer = Stamp {
            generation: 13,
            ..stamp.clone()
        };
        let other_epoch = Stamp {
            epoch: "pm 8".into(),
            generation: 1,
        };
        assert!(stamp.replaces(None));
        assert!(newer.replaces(Some(&stamp)));
        assert!(!stamp.replaces(Some(&stamp)));
        assert!(!stamp.replaces(Some(&newer)));
        assert!(other_epoch.replaces(Some(&newer)));
    }

    #[test]
    fn poll_paths_carry_since_epoch_and_wait() {
        assert_eq!(poll_path(None, 10_000), "/internal/v1/table?waitMs=10000");
        let stamp = Stamp {
            epoch: "a b&c=d/é".into(),
            generation: 7,
        };
        assert_eq!(
            poll_path(Some(&stamp), 99_999),
            "/internal/v1/table?since=7&epoch=a%20b%26c%3Dd%2F%C3%A9&waitMs=30000"
        );
        assert_eq!(poll_timeout(10_000), Duration::from_secs(15));
        assert_eq!(poll_timeout(u64::MAX), Duration::from_secs(35));
    }

    #[test]
    fn table_answers_are_checked() {
        let json = br#"{"epoch":"e","generation":3,"models":[]}"#.to_vec();
        let (table, body) = check_answer(Some(200), json.len(), || json.clone()).unwrap();
        assert_eq!((table.epoch.as_str(), table.generation), ("e", 3));
        assert_eq!(body, json);
        assert_eq!(
            check_answer(None, 0, Vec::new).unwrap_err(),
            PollError::NoAnswer
        );
        assert_eq!(
            check_answer(Some(503), 0, Vec::new).unwrap_err(),
            PollError::Status(503)
        );
        let huge = MAX_TABLE_BYTES + 1;
        let err = check_answer(Some(200), huge, || unreachable!()).unwrap_err();
        assert_eq!(err, PollError::TooLarge(huge));
        let err = check_answer(Some(200), 2, || b"{}".to_vec()).unwrap_err();
        assert!(matches!(err, PollError::Invalid(_)), "{err:?}");
        assert!(err.to_string().starts_with("invalid table: "));
    }

    #[test]
    fn polls_one_at_a_time_and_backs_off_after_failures() {
        let timeout = Duration::from_secs(15);
        let mut schedule = PollSchedule::new();
        assert!(schedule.is_due(S, timeout));
        schedule.dispatched(1, S);
        assert!(schedule.is_polling() && schedule.is_outstanding(1));
        assert!(!schedule.is_due(2 * S, timeout));
        // A late answer to another token changes nothing.
        assert!(!schedule.finished(9, true, 2 * S));
        assert!(schedule.is_polling());
        // An answer: poll again at once.
        assert!(schedule.finished(1, true, 3 * S));
        assert!(schedule.is_due(3 * S, timeout));
        // A failure: wait one backoff.
        schedule.dispatched(2, 3 * S);
        assert!(schedule.finished(2, false, 4 * S));
        assert!(!schedule.is_due(4 * S + 999_999_999, timeout));
        assert!(schedule.is_due(5 * S, timeout));
        schedule.dispatch_failed(5 * S);
        assert!(!schedule.is_due(5 * S + 1, timeout));
        assert!(schedule.is_due(6 * S, timeout));
    }

    #[test]
    fn an_unanswered_poll_is_forgotten_after_its_timeout() {
        let timeout = Duration::from_secs(15);
        let mut schedule = PollSchedule::new();
        schedule.dispatched(7, 0);
        assert!(!schedule.is_due(15 * S, timeout));
        assert!(!schedule.is_due(16 * S - 1, timeout));
        assert!(schedule.is_due(16 * S, timeout));
        assert!(!schedule.is_polling());
        assert!(!schedule.finished(7, true, 17 * S));
    }

    proptest! {
        #[test]
        fn leases_and_stamps_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Lease::decode(&bytes);
            let _ = Stamp::decode(&bytes);
        }

        #[test]
        fn encoded_epochs_stay_in_the_query(epoch in ".{0,20}") {
            let path = poll_path(Some(&Stamp { epoch, generation: 1 }), 1_000);
            let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
            prop_assert_eq!(query.split('&').count(), 3);
            prop_assert!(path.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
