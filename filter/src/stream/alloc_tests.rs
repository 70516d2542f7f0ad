//! The allocation budget of a warm request: heap allocations made while a warm V2 infer
//! goes through the stream, from its request headers to its end, counted by a counting
//! global allocator (per thread, so parallel tests do not add to each other's counts).
//! Each allocation costs the Wasm module its allocator's work, and the ones the host
//! makes for a returned value also a call back into the VM; the count is the
//! deterministic guard against the warm path allocating again.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt;
use std::time::Duration;

use mm_wire::{Endpoint, RoutingTable, TableEntry};

use super::Stream;
use crate::host::{Action, Buffer, Call, Host, HostError, Level, Map};
use crate::metrics::Metric;
use crate::pairs::HeaderPairs;
use crate::table::Table;
use crate::worker::Worker;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting this thread's allocations.
struct Counting;

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as for `dealloc`; the caller's contract is `System::realloc`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Envoy as a warm request sees it, and nothing more: the request headers serialised once
/// (handed out as a copy, as the host copies them into the VM) and a 200 `:status`. Every
/// value it returns is one allocation, as in the VM (`proxy_on_memory_allocate`).
struct CannedHost {
    request_headers: Vec<u8>,
}

impl Host for CannedHost {
    fn header(&mut self, map: Map, name: &str) -> Option<Vec<u8>> {
        (map == Map::ResponseHeaders && name == ":status").then(|| b"200".to_vec())
    }
    fn headers(&mut self, map: Map) -> Result<HeaderPairs, HostError> {
        if map != Map::RequestHeaders {
            return Err(HostError::NotFound);
        }
        HeaderPairs::from_raw(self.request_headers.clone()).map_err(|_| HostError::BadArgument)
    }
    fn set_header(&mut self, _: Map, _: &str, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn remove_header(&mut self, _: Map, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn body(&mut self, _: Buffer, _: usize, _: usize) -> Result<Vec<u8>, HostError> {
        Err(HostError::NotFound)
    }
    fn set_body(&mut self, _: Buffer, _: usize, _: usize, _: &[u8]) -> Result<(), HostError> {
        Ok(())
    }
    fn dispatch(&mut self, _: &Call<'_>) -> Result<u32, HostError> {
        Err(HostError::BadArgument)
    }
    fn shared(&mut self, _: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        Ok((None, None))
    }
    fn set_shared(&mut self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), HostError> {
        Ok(())
    }
    fn set_upstream(&mut self, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn resume_request(&mut self) -> Result<(), HostError> {
        Ok(())
    }
    fn reply(&mut self, _: u16, _: &[(&str, &str)], _: Option<&[u8]>) -> Result<(), HostError> {
        Ok(())
    }
    fn property(&mut self, _: &[&str]) -> Option<Vec<u8>> {
        None
    }
    fn increment(&mut self, _: Metric, _: u64) {}
    fn set_tick_period(&mut self, _: Duration) -> Result<(), HostError> {
        Ok(())
    }
    fn now(&mut self) -> u64 {
        1_700_000_000_000_000_000
    }
    fn log_enabled(&self, level: Level) -> bool {
        level >= Level::Info
    }
    fn log(&mut self, _: Level, _: fmt::Arguments<'_>) {}
    fn follow_log_level(&mut self) {}
}

fn warm_worker(host: &mut CannedHost) -> Worker {
    let mut worker = Worker::new(host, 1);
    worker
        .configure(host, None, |_| None)
        .expect("the default configuration");
    let endpoint = Endpoint {
        replica: "r0".into(),
        address: "127.0.0.1:8000".into(),
        grpc_address: Some("127.0.0.1:8001".into()),
    };
    let (table, _) = Table::from_wire(RoutingTable {
        aliases: vec![],
        epoch: "e".into(),
        generation: 1,
        models: vec![TableEntry {
            model: "linear".into(),
            replicas: vec![endpoint],
            inputs: None,
            watch: false,
            upstream: None,
        }],
    });
    worker.table = table;
    worker
}

/// One warm V2 infer through a new stream (as Envoy makes one per request); returns the
/// allocations it made.
fn warm_request(host: &mut CannedHost, worker: &mut Worker, id: u32) -> u64 {
    let before = allocations();
    let mut stream = Stream::new(id);
    assert_eq!(
        stream.on_request_headers(host, worker, false),
        Action::Continue
    );
    assert_eq!(
        stream.on_request_body(host, worker, 50, true),
        Action::Continue
    );
    assert_eq!(
        stream.on_response_headers(host, worker, false),
        Action::Continue
    );
    assert_eq!(
        stream.on_response_body(host, worker, 100, true),
        Action::Continue
    );
    stream.on_log(host, worker);
    drop(stream);
    allocations() - before
}

/// A host whose every request is the same warm V2 infer for `linear`.
fn warm_infer_host() -> CannedHost {
    CannedHost {
        request_headers: HeaderPairs::encode(&[
            (":method", "POST"),
            (":path", "/v2/models/linear/infer"),
            (":authority", "gateway"),
            ("content-type", "application/json"),
            ("content-length", "50"),
            ("user-agent", "bench"),
        ]),
    }
}

#[test]
fn a_warm_request_stays_within_its_allocation_budget() {
    let mut host = warm_infer_host();
    let mut worker = warm_worker(&mut host);
    // The first request makes the usage tracker's entry for (linear, r0); later ones reuse it.
    warm_request(&mut host, &mut worker, 1);
    let counts: Vec<u64> = (2..6)
        .map(|id| warm_request(&mut host, &mut worker, id))
        .collect();
    // What is left: the two values the host hands over (the request headers' buffer and
    // `:status`, allocated in the VM by the host) and the model name the stream keeps.
    assert_eq!(counts, vec![3; 4], "allocations per warm request");
}

/// The warm path natively, for a profiler: `MM_WARM_REQUESTS` (default 20,000) warm V2
/// infers through the stream with the canned host, so that the filter's own code (path
/// parse, table lookup, usage counting, metrics) dominates the profile. Run by
/// `scripts/profile-filter.sh` under callgrind; ignored in `cargo test` (it asserts only
/// that every request stayed warm).
#[test]
#[ignore = "a profiling harness: scripts/profile-filter.sh"]
fn warm_requests_for_a_profiler() {
    let n: u32 = std::env::var("MM_WARM_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut host = warm_infer_host();
    let mut worker = warm_worker(&mut host);
    let allocations: u64 = (1..=n)
        .map(|id| warm_request(&mut host, &mut worker, id))
        .sum();
    assert!(allocations <= 3 * u64::from(n) + 10, "{allocations}");
}
