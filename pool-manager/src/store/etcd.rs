//! The store on etcd v3, for several pool-managers sharing one registry: records,
//! counters, leases, the leader key and the member list, all below one key prefix so
//! several pools can share an etcd cluster.
//!
//! Layout below the prefix: `<kind>/<name>` (a record, e.g. `models/fraud-eu`),
//! `counters/<name>` (a decimal number), `leader` (the elected [`Member`], bound to its
//! lease) and `members/<id>` (each live instance, bound to its lease).
//!
//! Every call is bounded by the request timeout, and the client requires the etcd member
//! it talks to to have a leader, so without quorum calls fail at once with a clear error
//! instead of hanging. A commit returns after etcd applied it (raft-committed); a fenced
//! commit is one transaction whose compare is the leader key's creation revision.

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::{Backend, Change, Fence, Key, Kind, Revision, Snapshot, StoreError, Watch, WatchEvent};
use crate::election::{Acquired, Coordinator, LeaderKey, LeaseId, Member};

/// Keys read per page of a snapshot (etcd answers stay well under gRPC's 4 MiB).
const PAGE: i64 = 1000;
/// etcd's default `--max-txn-ops`: a larger commit would be refused by the server.
pub const MAX_TXN_OPS: usize = 128;
/// Tries of a counter raise that lost a race with another writer.
const RAISE_TRIES: usize = 8;
/// Wait before reopening a lost watch of the leader key.
const REWATCH: Duration = Duration::from_millis(500);

/// How to reach etcd. Credentials are never logged ([`EtcdOptions`]'s `Debug` hides them).
#[derive(Clone)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Every key's prefix; ends with `/`.
    pub prefix: String,
    /// Whether the endpoints are `https` (TLS).
    pub tls: bool,
    /// CA bundle (PEM) that signs the members' certificates (default: the system's).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM), when etcd asks for one.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// etcd user and password (etcd's own authentication).
    pub user: Option<(String, String)>,
    /// Bound on every call.
    pub timeout: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity_pem.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The etcd backend; cheap to share (`Arc`), one gRPC connection per endpoint.
pub struct EtcdBackend {
    client: Client,
    prefix: String,
    timeout: Duration,
    endpoints: Vec<String>,
    /// The open keep-alive stream of the lease being renewed, with the TTL it was granted.
    keeper: tokio::sync::Mutex<Option<(LeaseId, LeaseKeeper, LeaseKeepAliveStream)>>,
    granted: std::sync::Mutex<Option<(LeaseId, Duration)>>,
    leader: OnceLock<watch::Receiver<Option<LeaderKey>>>,
}

impl EtcdBackend {
    /// Connects (lazily: no member needs to answer yet, unless a user must log in).
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Rejected("no etcd endpoint".into()));
        }
        if !options.prefix.ends_with('/') {
            return Err(StoreError::Rejected(format!(
                "the key prefix '{}' must end with '/'",
                options.prefix
            )));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_keep_alive(Duration::from_secs(10), options.timeout)
            .with_require_leader(true);
        if options.tls {
            let mut tls = TlsOptions::new();
            tls = match &options.ca_pem {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &options.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(tls);
        }
        if let Some((user, password)) = &options.user {
            connect = connect
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let client = tokio::time::timeout(
            options.timeout,
            Client::connect(&options.endpoints, Some(connect)),
        )
        .await
        .map_err(|_| timed_out(options.timeout))?
        .map_err(from_etcd)?;
        Ok(Self {
            client,
            prefix: options.prefix,
            timeout: options.timeout,
            endpoints: options.endpoints,
            keeper: tokio::sync::Mutex::new(None),
            granted: std::sync::Mutex::new(None),
            leader: OnceLock::new(),
        })
    }

    fn record_key(&self, key: &Key) -> String {
        format!("{}{}/{}", self.prefix, key.kind.segment(), key.name)
    }

    fn counter_key(&self, name: &str) -> String {
        format!("{}counters/{name}", self.prefix)
    }

    fn leader_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    fn member_key(&self, id: &str) -> String {
        format!("{}members/{id}", self.prefix)
    }

    /// Runs `op` on a client within the request timeout, again when an attempt could
    /// not reach a member (the balanced channel may pick one that is down) or got no
    /// answer within a third of the timeout (a proposal in flight when the etcd leader
    /// died waits for etcd's own 7 s request timeout; etcd elects a new leader in about
    /// one). Every operation here is safe to repeat: puts of the same value,
    /// compare-guarded transactions, revokes.
    async fn call<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let attempt = (self.timeout / 3).max(Duration::from_millis(500));
        let mut pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(timed_out(self.timeout));
            }
            match tokio::time::timeout(attempt.min(left), op(self.client.clone())).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) if !unreached(&e) => return Err(from_etcd(e)),
                Ok(Err(e)) => {
                    debug!(error = %e, "etcd member unreachable; trying again");
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(_) => debug!(after = ?attempt, "no answer from etcd; trying again"),
            }
        }
    }

    /// One page of keys in `[from, end)` at `revision` (0: the current one).
    async fn page(
        &self,
        from: Vec<u8>,
        end: Vec<u8>,
        revision: i64,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        let options = GetOptions::new()
            .with_range(end)
            .with_limit(PAGE)
            .with_revision(revision);
        self.call(|mut c| {
            let (from, options) = (from.clone(), options.clone());
            async move { c.get(from, Some(options)).await }
        })
        .await
    }

    async fn current_counter(&self, key: &str) -> Result<(u64, i64), StoreError> {
        let got = self
            .call(|mut c| async move { c.get(key, None).await })
            .await?;
        match got.kvs().first() {
            Some(kv) => {
                let value = parse_counter(kv.value())?;
                Ok((value, kv.mod_revision()))
            }
            None => Ok((0, 0)),
        }
    }

    fn start_observer(&self) -> watch::Receiver<Option<LeaderKey>> {
        let (tx, rx) = watch::channel(None);
        let observer = LeaderObserver {
            client: self.client.clone(),
            key: self.leader_key(),
            timeout: self.timeout,
        };
        tokio::spawn(observer.run(tx));
        rx
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let end = prefix_end(self.prefix.as_bytes());
        let mut from = self.prefix.as_bytes().to_vec();
        let mut snapshot = Snapshot::default();
        let mut revision = 0;
        loop {
            let page = self.page(from.clone(), end.clone(), revision).await?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
                snapshot.revision = u64::try_from(revision).unwrap_or(0);
            }
            for kv in page.kvs() {
                let counters = format!("{}counters/", self.prefix);
                if let Some(key) = record_of(&self.prefix, kv.key()) {
                    snapshot.records.insert(key, kv.value().to_vec());
                } else if let Some(name) = kv.key_str().ok().and_then(|k| k.strip_prefix(&counters))
                {
                    snapshot
                        .counters
                        .insert(name.to_owned(), parse_counter(kv.value())?);
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(snapshot)
    }

    async fn commit(
        &self,
        fence: Option<&Fence>,
        changes: Vec<Change>,
    ) -> Result<Revision, StoreError> {
        if changes.len() > MAX_TXN_OPS {
            return Err(StoreError::Rejected(format!(
                "{} changes in one commit; etcd takes at most {MAX_TXN_OPS}",
                changes.len()
            )));
        }
        let ops: Vec<TxnOp> = changes
            .iter()
            .map(|change| match change {
                Change::Put { key, value } => TxnOp::put(self.record_key(key), value.clone(), None),
                Change::Delete { key } => TxnOp::delete(self.record_key(key), None),
            })
            .collect();
        let compares: Vec<Compare> = fence
            .map(|f| Compare::create_revision(f.key.as_str(), CompareOp::Equal, to_i64(f.revision)))
            .into_iter()
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let answer = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if !answer.succeeded() {
            return Err(StoreError::Fenced);
        }
        Ok(header_revision(answer.header()))
    }

    async fn raise_counter(&self, name: &str, to: u64) -> Result<(), StoreError> {
        let key = self.counter_key(name);
        for _ in 0..RAISE_TRIES {
            let (current, mod_revision) = self.current_counter(&key).await?;
            if current >= to {
                return Ok(());
            }
            // Written only if nobody wrote it since it was read (0: it did not exist).
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    mod_revision,
                )])
                .and_then([TxnOp::put(key.as_str(), format!("{to:020}"), None)]);
            let answer = self
                .call(|mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if answer.succeeded() {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "counter '{name}' kept changing under {RAISE_TRIES} tries"
        )))
    }

    async fn watch(&self, after: Revision) -> Result<Watch, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(to_i64(after.saturating_add(1)));
        let prefix = self.prefix.clone();
        let stream = self
            .call(|mut c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { c.watch(prefix, Some(options)).await }
            })
            .await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(forward_watch(stream, self.prefix.clone(), tx));
        Ok(Watch::new(rx))
    }

    fn describe(&self) -> String {
        format!(
            "etcd ({}; prefix {})",
            self.endpoints.join(","),
            self.prefix
        )
    }
}

#[async_trait]
impl Coordinator for EtcdBackend {
    async fn grant(&self, ttl: Duration) -> Result<(LeaseId, Duration), StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = self
            .call(|mut c| async move { c.lease_grant(seconds, None).await })
            .await?;
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0));
        if let Ok(mut g) = self.granted.lock() {
            *g = Some((granted.id(), ttl));
        }
        Ok((granted.id(), ttl))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let mut keeper = self.keeper.lock().await;
        if keeper.as_ref().map(|(id, _, _)| *id) != Some(lease) {
            *keeper = None;
            // Opening the stream renews once and fails if the lease is gone.
            match self
                .call(|mut c| async move { c.lease_keep_alive(lease).await })
                .await
            {
                Ok((k, s)) => *keeper = Some((lease, k, s)),
                Err(StoreError::Rejected(e)) if e.contains("lease not found") => return Ok(None),
                Err(e) => return Err(e),
            }
            let granted = self.granted.lock().ok().and_then(|g| *g);
            return Ok(granted.filter(|(id, _)| *id == lease).map(|(_, ttl)| ttl));
        }
        let Some((_, k, s)) = keeper.as_mut() else {
            return Err(StoreError::Unavailable("no keep-alive stream".into()));
        };
        let renewed = tokio::time::timeout(self.timeout, async {
            k.keep_alive().await?;
            s.message().await
        })
        .await;
        match renewed {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => Ok(Some(Duration::from_secs(
                u64::try_from(answer.ttl()).unwrap_or(0),
            ))),
            Ok(Ok(Some(_))) => Ok(None),
            Ok(Ok(None)) => {
                *keeper = None;
                Err(StoreError::Unavailable(
                    "the keep-alive stream ended".into(),
                ))
            }
            Ok(Err(e)) => {
                *keeper = None;
                Err(from_etcd(e))
            }
            Err(_) => {
                *keeper = None;
                Err(timed_out(self.timeout))
            }
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Rejected(e)) if e.contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn join(&self, me: &Member, lease: LeaseId) -> Result<(), StoreError> {
        let value = serde_json::to_vec(me).map_err(|e| StoreError::Rejected(e.to_string()))?;
        let options = etcd_client::PutOptions::new().with_lease(lease);
        let key = self.member_key(&me.id);
        self.call(|mut c| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, Some(options)).await }
        })
        .await
        .map(drop)
    }

    async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let prefix = self.member_key("");
        let got = self
            .call(|mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(got
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    async fn acquire(&self, me: &Member, lease: LeaseId) -> Result<Acquired, StoreError> {
        let key = self.leader_key();
        let value = serde_json::to_vec(me).map_err(|e| StoreError::Rejected(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                value,
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let answer = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if answer.succeeded() {
            return Ok(Acquired::Won(Fence {
                key,
                revision: header_revision(answer.header()),
            }));
        }
        let held = answer.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(got) => got.kvs().first().map(leader_of),
            _ => None,
        });
        match held {
            // Ours already (an earlier attempt whose answer was lost).
            Some(k) if k.lease == lease => Ok(Acquired::Won(Fence {
                key,
                revision: k.created,
            })),
            Some(k) => Ok(Acquired::Held(k)),
            // Deleted between the compare and the get: the caller tries again.
            None => Err(StoreError::Unavailable(
                "the leader key changed during the campaign".into(),
            )),
        }
    }

    fn observe(&self) -> watch::Receiver<Option<LeaderKey>> {
        self.leader.get_or_init(|| self.start_observer()).clone()
    }
}

/// Keeps a [`watch`] of the leader key current: read it, watch it, and start again
/// (after a pause) whenever the watch fails.
struct LeaderObserver {
    client: Client,
    key: String,
    timeout: Duration,
}

impl LeaderObserver {
    async fn run(mut self, tx: watch::Sender<Option<LeaderKey>>) {
        while !tx.is_closed() {
            if let Err(e) = self.follow(&tx).await {
                debug!(error = %e, "leader watch interrupted");
            }
            tokio::time::sleep(REWATCH).await;
        }
    }

    async fn follow(&mut self, tx: &watch::Sender<Option<LeaderKey>>) -> Result<(), StoreError> {
        let got = tokio::time::timeout(self.timeout, self.client.get(self.key.as_str(), None))
            .await
            .map_err(|_| timed_out(self.timeout))?
            .map_err(from_etcd)?;
        tx.send_replace(got.kvs().first().map(leader_of));
        let start = got.header().map_or(0, |h| h.revision()).saturating_add(1);
        let options = WatchOptions::new().with_start_revision(start);
        let mut stream = tokio::time::timeout(
            self.timeout,
            self.client.watch(self.key.as_str(), Some(options)),
        )
        .await
        .map_err(|_| timed_out(self.timeout))?
        .map_err(from_etcd)?;
        loop {
            let Some(answer) = stream.message().await.map_err(from_etcd)? else {
                return Err(StoreError::Unavailable("the leader watch ended".into()));
            };
            if answer.canceled() {
                return Err(StoreError::Unavailable(format!(
                    "the leader watch was cancelled: {}",
                    answer.cancel_reason()
                )));
            }
            for event in answer.events() {
                let now = match (event.event_type(), event.kv()) {
                    (EventType::Put, Some(kv)) => Some(leader_of(kv)),
                    _ => None,
                };
                tx.send_replace(now);
            }
        }
    }
}

async fn forward_watch(
    mut stream: etcd_client::WatchStream,
    prefix: String,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
) {
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            () = tx.closed() => return,
        };
        let answer = match next {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                let _ = tx
                    .send(Err(StoreError::Unavailable("the watch ended".into())))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(from_etcd(e))).await;
                return;
            }
        };
        if answer.compact_revision() > 0 {
            let _ = tx.send(Err(StoreError::WatchLost)).await;
            return;
        }
        if answer.canceled() {
            let reason = answer.cancel_reason().to_owned();
            let _ = tx
                .send(Err(StoreError::Unavailable(format!(
                    "the watch was cancelled: {reason}"
                ))))
                .await;
            return;
        }
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(key) = record_of(&prefix, kv.key()) else {
                continue;
            };
            let value = match event.event_type() {
                EventType::Put => Some(kv.value().to_vec()),
                EventType::Delete => None,
            };
            let change = WatchEvent {
                revision: u64::try_from(kv.mod_revision()).unwrap_or(0),
                key,
                value,
            };
            if tx.send(Ok(change)).await.is_err() {
                return;
            }
        }
    }
}

/// The record a full etcd key names, if it is one.
fn record_of(prefix: &str, full: &[u8]) -> Option<Key> {
    let rest = std::str::from_utf8(full).ok()?.strip_prefix(prefix)?;
    let (segment, name) = rest.split_once('/')?;
    Some(Key {
        kind: Kind::from_segment(segment)?,
        name: name.to_owned(),
    })
}

fn leader_of(kv: &etcd_client::KeyValue) -> LeaderKey {
    let holder = serde_json::from_slice(kv.value()).unwrap_or_else(|_| Member {
        id: String::from_utf8_lossy(kv.value()).into_owned(),
        url: String::new(),
    });
    LeaderKey {
        holder,
        lease: kv.lease(),
        created: u64::try_from(kv.create_revision()).unwrap_or(0),
    }
}

fn parse_counter(value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| StoreError::Rejected("a counter in etcd is not a number".into()))
}

/// The smallest key greater than every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header
        .and_then(|h| u64::try_from(h.revision()).ok())
        .unwrap_or(0)
}

fn to_i64(revision: Revision) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

fn timed_out(after: Duration) -> StoreError {
    StoreError::Unavailable(format!("etcd did not answer within {after:?}"))
}

/// Whether `e` says no member was reached (connection refused or broken) rather than
/// that a member answered: then another attempt may reach another member.
fn unreached(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown
            ) && !status.message().starts_with("etcdserver:")
        }
        _ => false,
    }
}

/// etcd's errors, as the store's: refusals (bad credentials, permissions, a lease it
/// does not know) apart from unavailability (no quorum, no connection), which clears.
fn from_etcd(e: etcd_client::Error) -> StoreError {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::OutOfRange => StoreError::Rejected(status.message().to_owned()),
            _ => StoreError::Unavailable(status.message().to_owned()),
        },
        etcd_client::Error::LeaseKeepAliveError(message) => StoreError::Rejected(message),
        other => StoreError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_cover_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/mm/a/"), b"/mm/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn credentials_never_reach_debug_output() {
        let options = EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/mm/p/".into(),
            tls: true,
            ca_pem: None,
            identity_pem: Some((b"CERT".to_vec(), b"PRIVATE KEY".to_vec())),
            user: Some(("pool".into(), "s3cret".into())),
            timeout: Duration::from_secs(1),
        };
        let text = format!("{options:?}");
        assert!(text.contains("pool"));
        assert!(!text.contains("s3cret"));
        assert!(!text.contains("PRIVATE KEY"));
    }

    #[test]
    fn counters_read_back_padded_or_not() {
        assert_eq!(parse_counter(b"00000000000000012345").unwrap(), 12345);
        assert_eq!(parse_counter(b"7").unwrap(), 7);
        assert!(parse_counter(b"x").is_err());
    }
}
