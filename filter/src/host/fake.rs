//! A recording [`Host`] for unit tests: it holds the header maps, buffers and shared data
//! a test sets up, answers the filter's calls from them as Envoy would, and keeps every
//! call in [`FakeHost::ops`] for the assertions.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use super::{Buffer, Call, Host, HostError, Level, Map};
use crate::metrics::Metric;
use crate::pairs::HeaderPairs;

/// One call the filter made, with what matters of its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Header(Map, String),
    Headers(Map),
    SetHeader(Map, String, String),
    RemoveHeader(Map, String),
    Body(Buffer, usize, usize),
    /// Buffer, start, size replaced, the new bytes.
    SetBody(Buffer, usize, usize, Vec<u8>),
    Dispatch(Dispatched),
    Shared(String),
    /// Key, the compare-and-swap token given, the value written.
    SetShared(String, Option<u32>, Vec<u8>),
    SetUpstream(String),
    Resume,
    Reply(Replied),
    Property(String),
    Increment(Metric, u64),
    SetTickPeriod(Duration),
    Now,
    Log(Level, String),
    FollowLogLevel,
}

/// A dispatched call out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Dispatched {
    /// A header of the call.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replied {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Replied {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_slice(self.body.as_deref()?).ok()?;
        body["error"].as_str().map(str::to_owned)
    }
}

/// Shared data of one Envoy: value and compare-and-swap token per key.
#[derive(Debug, Default)]
pub struct SharedStore {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SharedStore {
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(|(v, _)| v.as_slice())
    }
}

/// Host calls a test makes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failing {
    SetUpstream,
    Dispatch,
    Headers,
    SetBody,
}

/// See the module doc. Every field is the test's to set up and read.
#[derive(Debug)]
pub struct FakeHost {
    pub ops: Vec<Op>,
    pub maps: HashMap<Map, Vec<(String, Vec<u8>)>>,
    pub buffers: HashMap<Buffer, Vec<u8>>,
    pub shared: Rc<RefCell<SharedStore>>,
    pub properties: HashMap<String, Vec<u8>>,
    pub now: u64,
    pub level: Level,
    pub failing: HashSet<Failing>,
    next_token: u32,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            ops: Vec::new(),
            maps: HashMap::new(),
            buffers: HashMap::new(),
            shared: Rc::default(),
            properties: HashMap::new(),
            now: 1_700_000_000_000_000_000,
            level: Level::Info,
            failing: HashSet::new(),
            next_token: 1,
        }
    }
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    /// Another VM of the same Envoy: a host that shares `store` with this one.
    pub fn sharing(store: &Rc<RefCell<SharedStore>>) -> FakeHost {
        FakeHost {
            shared: Rc::clone(store),
            ..FakeHost::default()
        }
    }

    /// Replaces a header map.
    pub fn set_map(&mut self, map: Map, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect();
        self.maps.insert(map, headers);
    }

    /// A header's current value, as the filter left it.
    pub fn map_value(&self, map: Map, name: &str) -> Option<String> {
        self.maps
            .get(&map)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Forgets the calls recorded so far.
    pub fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    /// The calls out made so far.
    pub fn dispatches(&self) -> Vec<&Dispatched> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Dispatch(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    /// The local replies sent so far.
    pub fn replies(&self) -> Vec<&Replied> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Reply(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The messages logged at `level` or above.
    pub fn logs(&self, level: Level) -> Vec<&str> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Log(l, m) if *l >= level => Some(m.as_str()),
                _ => None,
            })
            .collect()
    }

    fn fails(&self, what: Failing) -> bool {
        self.failing.contains(&what)
    }
}

impl Host for FakeHost {
    fn header(&mut self, map: Map, name: &str) -> Option<Vec<u8>> {
        self.ops.push(Op::Header(map, name.to_owned()));
        self.maps
            .get(&map)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn headers(&mut self, map: Map) -> Result<HeaderPairs, HostError> {
        self.ops.push(Op::Headers(map));
        if self.fails(Failing::Headers) {
            return Err(HostError::BadArgument);
        }
        // Serialised as Envoy does, so the filter reads the same format as in Envoy.
        let raw = HeaderPairs::encode(self.maps.get(&map).map_or(&[][..], Vec::as_slice));
        HeaderPairs::from_raw(raw).map_err(|_| HostError::BadArgument)
    }

    fn set_header(&mut self, map: Map, name: &str, value: &str) -> Result<(), HostError> {
        self.ops
            .push(Op::SetHeader(map, name.to_owned(), value.to_owned()));
        let headers = self.maps.entry(map).or_default();
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_owned(), value.as_bytes().to_vec()));
        Ok(())
    }

    fn remove_header(&mut self, map: Map, name: &str) -> Result<(), HostError> {
        self.ops.push(Op::RemoveHeader(map, name.to_owned()));
        if let Some(headers) = self.maps.get_mut(&map) {
            headers.retain(|(n, _)| n != name);
        }
        Ok(())
    }

    fn body(&mut self, buffer: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
        self.ops.push(Op::Body(buffer, start, max));
        let bytes = self.buffers.get(&buffer).map(Vec::as_slice).unwrap_or(&[]);
        let end = start.saturating_add(max).min(bytes.len());
        Ok(bytes.get(start..end).unwrap_or_default().to_vec())
    }

    fn set_body(
        &mut self,
        buffer: Buffer,
        start: usize,
        size: usize,
        bytes: &[u8],
    ) -> Result<(), HostError> {
        self.ops
            .push(Op::SetBody(buffer, start, size, bytes.to_vec()));
        if self.fails(Failing::SetBody) {
            return Err(HostError::BadArgument);
        }
        let current = self.buffers.entry(buffer).or_default();
        let start = start.min(current.len());
        let end = start.saturating_add(size).min(current.len());
        current.splice(start..end, bytes.iter().copied());
        Ok(())
    }

    fn dispatch(&mut self, call: &Call<'_>) -> Result<u32, HostError> {
        let token = self.next_token;
        self.next_token += 1;
        self.ops.push(Op::Dispatch(Dispatched {
            token,
            cluster: call.cluster.to_owned(),
            headers: call
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: call.body.map(<[u8]>::to_vec),
            timeout: call.timeout,
        }));
        if self.fails(Failing::Dispatch) {
            return Err(HostError::BadArgument);
        }
        Ok(token)
    }

    fn shared(&mut self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.ops.push(Op::Shared(key.to_owned()));
        let store = self.shared.borrow();
        Ok(match store.entries.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set_shared(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        self.ops
            .push(Op::SetShared(key.to_owned(), cas, value.to_vec()));
        let mut store = self.shared.borrow_mut();
        // As Envoy: a token only guards a key that exists.
        if let (Some((_, current)), Some(cas)) = (store.entries.get(key), cas) {
            if *current != cas {
                return Err(HostError::CasMismatch);
            }
        }
        store.next_cas += 1;
        let next = store.next_cas;
        store.entries.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }

    fn set_upstream(&mut self, address: &str) -> Result<(), HostError> {
        self.ops.push(Op::SetUpstream(address.to_owned()));
        if self.fails(Failing::SetUpstream) {
            return Err(HostError::BadArgument);
        }
        Ok(())
    }

    fn resume_request(&mut self) -> Result<(), HostError> {
        self.ops.push(Op::Resume);
        Ok(())
    }

    fn reply(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(), HostError> {
        self.ops.push(Op::Reply(Replied {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
        }));
        Ok(())
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        self.ops.push(Op::Property(key.clone()));
        self.properties.get(&key).cloned()
    }

    fn increment(&mut self, metric: Metric, count: u64) {
        self.ops.push(Op::Increment(metric, count));
    }

    fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError> {
        self.ops.push(Op::SetTickPeriod(period));
        Ok(())
    }

    fn now(&mut self) -> u64 {
        self.ops.push(Op::Now);
        self.now
    }

    fn log_enabled(&self, level: Level) -> bool {
        level >= self.level
    }

    fn log(&mut self, level: Level, message: fmt::Arguments<'_>) {
        self.ops.push(Op::Log(level, message.to_string()));
    }

    fn follow_log_level(&mut self) {
        self.ops.push(Op::FollowLogLevel);
    }
}
