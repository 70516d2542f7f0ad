//! Every path through a request, as rows: (the worker's table, the request's headers and
//! body chunks, the route call's answer, the response) -> the callbacks' actions, the host
//! calls that matter and the reply. [`Sim`] plays Envoy around a [`Stream`]: it buffers a
//! body while the filter holds it and lets it go on `Continue` or a resume, as Envoy does
//! with `allow_on_headers_stop_iteration`.

use mm_wire::{Endpoint, FailureKind, RoutingTable, TableEntry, TensorSpec};

use super::*;
use crate::host::fake::{FakeHost, Op, Replied};
use crate::host::Level;
use crate::table::Table;

/// One event Envoy delivers to the stream.
#[derive(Debug, Clone)]
enum Step {
    Headers(Vec<(&'static str, &'static str)>, bool),
    Body(Vec<u8>, bool),
    Trailers(Vec<(&'static str, &'static str)>),
    /// The route call's answer: status (`None`: no answer) and body.
    Answer(Option<u16>, String),
    ResponseHeaders(Vec<(&'static str, &'static str)>, bool),
    ResponseBody(Vec<u8>, bool),
    ResponseTrailers(Vec<(&'static str, &'static str)>),
    /// A stream property Envoy will answer from now on.
    Property(&'static str, Vec<u8>),
}

/// Envoy around one stream. See the module doc.
struct Sim {
    host: FakeHost,
    worker: Worker,
    stream: Stream,
    /// What each callback returned, in order.
    actions: Vec<Action>,
    /// Whether the request headers went upstream.
    headers_sent: bool,
    /// Request body bytes that went upstream.
    forwarded: Vec<u8>,
    /// Response body bytes that went to the client.
    delivered: Vec<u8>,
    /// Resumes already acted on.
    resumes_seen: usize,
    /// Whether Envoy hands the filter the body while it holds the headers
    /// (`allow_on_headers_stop_iteration`); without it, the body held meanwhile comes to
    /// the filter once the request goes on.
    bodies_while_paused: bool,
    /// Whether the held body, not yet handed over, ended the stream.
    held_end: bool,
}

impl Sim {
    fn new(config: &str, table: Vec<TableEntry>) -> Sim {
        let mut host = FakeHost::new();
        let mut worker = Worker::new(&mut host, 1);
        let bytes = (!config.is_empty()).then_some(config.as_bytes());
        worker.configure(&mut host, bytes, |_| None).unwrap();
        let (table, _) = Table::from_wire(RoutingTable {
            aliases: vec![],
            epoch: "e".into(),
            generation: 1,
            models: table,
        });
        worker.table = table;
        host.take_ops();
        let bodies_while_paused = worker.config().bodies_while_paused;
        Sim {
            host,
            worker,
            stream: Stream::new(7),
            actions: Vec::new(),
            headers_sent: false,
            forwarded: Vec::new(),
            delivered: Vec::new(),
            resumes_seen: 0,
            bodies_while_paused,
            held_end: false,
        }
    }

    fn run(&mut self, steps: &[Step]) {
        for step in steps {
            self.step(step.clone());
        }
    }

    fn step(&mut self, step: Step) {
        let (host, worker, stream) = (&mut self.host, &mut self.worker, &mut self.stream);
        let action = match step {
            Step::Headers(headers, eos) => {
                host.set_map(Map::RequestHeaders, &headers);
                let action = stream.on_request_headers(host, worker, eos);
                self.headers_sent |= action == Action::Continue;
                Some(action)
            }
            Step::Body(chunk, eos) if !self.bodies_while_paused && !self.headers_sent => {
                host.buffers
                    .entry(Buffer::RequestBody)
                    .or_default()
                    .extend_from_slice(&chunk);
                self.held_end = eos;
                None
            }
            Step::Body(chunk, eos) => {
                host.buffers
                    .entry(Buffer::RequestBody)
                    .or_default()
                    .extend_from_slice(&chunk);
                let size = host.buffers[&Buffer::RequestBody].len();
                let action = stream.on_request_body(host, worker, size, eos);
                if action == Action::Continue {
                    self.headers_sent = true;
                    self.pass_body();
                }
                Some(action)
            }
            Step::Trailers(trailers) => {
                host.set_map(Map::RequestTrailers, &trailers);
                let action = stream.on_request_trailers(host, worker);
                if action == Action::Continue {
                    self.headers_sent = true;
                    self.pass_body();
                }
                Some(action)
            }
            Step::Answer(status, body) => {
                match status {
                    Some(status) => {
                        host.set_map(Map::CallHeaders, &[(":status", &status.to_string())])
                    }
                    None => host.set_map(Map::CallHeaders, &[]),
                }
                host.buffers
                    .insert(Buffer::CallBody, body.clone().into_bytes());
                stream.on_route_answer(host, worker, body.len());
                None
            }
            Step::ResponseHeaders(headers, eos) => {
                host.set_map(Map::ResponseHeaders, &headers);
                Some(stream.on_response_headers(host, worker, eos))
            }
            Step::ResponseBody(chunk, eos) => {
                host.buffers
                    .entry(Buffer::ResponseBody)
                    .or_default()
                    .extend_from_slice(&chunk);
                let size = host.buffers[&Buffer::ResponseBody].len();
                let action = stream.on_response_body(host, worker, size, eos);
                if action == Action::Continue {
                    let body = self
                        .host
                        .buffers
                        .remove(&Buffer::ResponseBody)
                        .unwrap_or_default();
                    self.delivered.extend(body);
                }
                Some(action)
            }
            Step::ResponseTrailers(trailers) => {
                host.set_map(Map::ResponseTrailers, &trailers);
                Some(stream.on_response_trailers(host, worker))
            }
            Step::Property(path, value) => {
                host.properties.insert(path.to_owned(), value);
                None
            }
        };
        if let Some(action) = action {
            self.actions.push(action);
        }
        // A resume lets the held headers and body go.
        let resumes = self.host.ops.iter().filter(|op| **op == Op::Resume).count();
        if resumes > self.resumes_seen {
            self.resumes_seen = resumes;
            self.headers_sent = true;
            if self.bodies_while_paused {
                self.pass_body();
            } else {
                self.hand_over_held_body();
            }
        }
    }

    /// Without `bodies_while_paused`: the body Envoy held comes to the filter now.
    fn hand_over_held_body(&mut self) {
        let size = self
            .host
            .buffers
            .get(&Buffer::RequestBody)
            .map_or(0, Vec::len);
        if size == 0 && !self.held_end {
            return;
        }
        let (host, worker) = (&mut self.host, &mut self.worker);
        let action = self
            .stream
            .on_request_body(host, worker, size, self.held_end);
        self.actions.push(action);
        if action == Action::Continue {
            self.pass_body();
        }
    }

    fn pass_body(&mut self) {
        let body = self
            .host
            .buffers
            .remove(&Buffer::RequestBody)
            .unwrap_or_default();
        self.forwarded.extend(body);
    }

    fn reply(&self) -> Option<&Replied> {
        let replies = self.host.replies();
        assert!(replies.len() <= 1, "more than one reply: {replies:?}");
        replies.first().copied()
    }

    fn upstreams(&self) -> Vec<&str> {
        self.host
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::SetUpstream(address) => Some(address.as_str()),
                _ => None,
            })
            .collect()
    }

    fn route_calls(&self) -> Vec<String> {
        self.host
            .dispatches()
            .iter()
            .filter_map(|d| d.header(":path").map(str::to_owned))
            .collect()
    }

    /// (model, replica, in flight) of every counted pair.
    fn in_flight(&mut self) -> Vec<(String, String, u64)> {
        let Some((report, pending)) = self.worker.usage.take_report("test") else {
            return Vec::new();
        };
        self.worker.usage.reject(pending);
        report
            .entries
            .into_iter()
            .filter(|e| e.in_flight > 0)
            .map(|e| (e.model, e.replica, e.in_flight))
            .collect()
    }
}

// ---- building blocks ----

fn endpoint(replica: &str, port: u16, grpc: Option<u16>) -> Endpoint {
    Endpoint {
        replica: replica.into(),
        address: format!("127.0.0.1:{port}"),
        grpc_address: grpc.map(|p| format!("127.0.0.1:{p}")),
    }
}

fn inputs() -> Vec<TensorSpec> {
    vec![TensorSpec {
        name: "x".into(),
        datatype: "FP32".into(),
        shape: vec![-1, 4],
    }]
}

/// `linear` on r0 (HTTP 8000, gRPC 8001) with its inputs, `xor` on r1 (HTTP only).
fn warm_table() -> Vec<TableEntry> {
    vec![
        TableEntry {
            model: "linear".into(),
            replicas: vec![endpoint("r0", 8000, Some(8001))],
            inputs: Some(inputs()),
            watch: false,
            upstream: None,
        },
        TableEntry {
            model: "xor".into(),
            replicas: vec![endpoint("r1", 9000, None)],
            inputs: None,
            watch: false,
            upstream: None,
        },
    ]
}

fn post(path: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "POST"),
        (":path", path),
        (":authority", "gateway"),
        ("content-type", "application/json"),
        ("content-length", "50"),
    ]
}

fn get(path: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "gateway"),
    ]
}

fn grpc_call(
    method: &'static str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut headers = vec![
        (":method", "POST"),
        (":path", method),
        (":authority", "gateway"),
        ("content-type", "application/grpc"),
    ];
    headers.extend_from_slice(extra);
    headers
}

const V2_BODY: &str =
    r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
const V2_ANSWER: &str = r#"{"model_name":"linear","outputs":[{"name":"y","datatype":"FP32","shape":[2,1],"data":[7.0,1.5]}]}"#;
const V1_BODY: &str = r#"{"instances":[[1,2,3,4],[0,0,0,0]]}"#;
const V1_TRANSLATED: &str = r#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1.0,2.0,3.0,4.0,0.0,0.0,0.0,0.0]}]}"#;
const V1_ANSWER: &str = r#"{"predictions":[[7.0],[1.5]]}"#;

fn route_answer(replica: &str, port: u16, with_inputs: bool) -> String {
    let mut answer = serde_json::json!({
        "model": "linear", "replica": replica,
        "address": format!("127.0.0.1:{port}"), "grpcAddress": format!("127.0.0.1:{}", port + 1),
    });
    if with_inputs {
        answer["inputs"] = serde_json::to_value(inputs()).unwrap();
    }
    answer.to_string()
}

/// A protobuf string field.
fn field(number: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2, value.len() as u8];
    out.extend_from_slice(value);
    out
}

/// A gRPC message frame around `fields`.
fn frame(fields: &[Vec<u8>]) -> Vec<u8> {
    let msg = fields.concat();
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend(msg);
    out
}

fn ok_response() -> Vec<(&'static str, &'static str)> {
    vec![
        (":status", "200"),
        ("content-type", "application/json"),
        ("content-length", "100"),
    ]
}

use Action::{Continue, Pause};
use Step::*;

/// What a row expects. Empty fields are not checked.
#[derive(Default)]
struct Expect {
    actions: Vec<Action>,
    /// HTTP status and the error message (or, on gRPC, `grpc-status` and message).
    reply: Option<(u16, &'static str)>,
    upstream: Option<&'static str>,
    route_calls: Vec<&'static str>,
    forwarded: Option<Vec<u8>>,
    delivered: Option<Vec<u8>>,
    request_headers: Vec<(&'static str, Option<&'static str>)>,
    response_headers: Vec<(&'static str, Option<&'static str>)>,
    in_flight: Option<Vec<(&'static str, &'static str)>>,
    /// Failure reports queued: (model, replica, kind).
    failures: Vec<(&'static str, &'static str, FailureKind)>,
    /// Whether the table routes this model after the request (model, expected).
    table_has: Vec<(&'static str, bool)>,
}

struct Row {
    name: &'static str,
    config: &'static str,
    table: Vec<TableEntry>,
    steps: Vec<Step>,
    expect: Expect,
}

fn check(row: Row) {
    check_with_aliases(row, vec![]);
}

/// [`check`] with these aliases in the worker's table too.
fn check_with_aliases(row: Row, aliases: Vec<mm_wire::AliasEntry>) {
    let name = row.name;
    let mut sim = Sim::new(row.config, row.table.clone());
    if !aliases.is_empty() {
        let (table, _) = Table::from_wire(RoutingTable {
            aliases,
            epoch: "e".into(),
            generation: 1,
            models: row.table,
        });
        sim.worker.table = table;
    }
    sim.run(&row.steps);
    let expect = row.expect;
    if !expect.actions.is_empty() {
        assert_eq!(sim.actions, expect.actions, "{name}: actions");
    }
    match (expect.reply, sim.reply()) {
        (None, None) => {}
        (Some((status, message)), Some(reply)) => {
            if reply.header("content-type") == Some("application/grpc") {
                assert_eq!(reply.status, 200, "{name}: gRPC replies are HTTP 200");
                assert_eq!(
                    reply.header("grpc-status"),
                    Some(status.to_string().as_str()),
                    "{name}"
                );
                let got = reply.header("grpc-message").unwrap_or_default();
                assert!(
                    got.contains(message),
                    "{name}: grpc-message {got:?} lacks {message:?}"
                );
            } else {
                assert_eq!(reply.status, status, "{name}: {reply:?}");
                let error = reply.error().unwrap_or_default();
                assert!(
                    error.contains(message),
                    "{name}: error {error:?} lacks {message:?}"
                );
            }
        }
        (want, got) => panic!("{name}: reply {got:?}, want {want:?}"),
    }
    let upstreams = sim.upstreams();
    match expect.upstream {
        Some(address) => assert_eq!(upstreams, vec![address], "{name}: upstream"),
        None => assert!(upstreams.is_empty(), "{name}: routed to {upstreams:?}"),
    }
    assert_eq!(sim.route_calls(), expect.route_calls, "{name}: route calls");
    if let Some(body) = expect.forwarded {
        assert_eq!(
            String::from_utf8_lossy(&sim.forwarded),
            String::from_utf8_lossy(&body),
            "{name}: body sent upstream"
        );
    }
    if let Some(body) = expect.delivered {
        assert_eq!(
            String::from_utf8_lossy(&sim.delivered),
            String::from_utf8_lossy(&body),
            "{name}: body delivered"
        );
    }
    for (header, value) in expect.request_headers {
        assert_eq!(
            sim.host.map_value(Map::RequestHeaders, header).as_deref(),
            value,
            "{name}: request header {header}"
        );
    }
    for (header, value) in expect.response_headers {
        assert_eq!(
            sim.host.map_value(Map::ResponseHeaders, header).as_deref(),
            value,
            "{name}: response header {header}"
        );
    }
    if let Some(pairs) = expect.in_flight {
        let want: Vec<(String, String, u64)> = pairs
            .iter()
            .map(|(m, r)| ((*m).to_owned(), (*r).to_owned(), 1))
            .collect();
        assert_eq!(sim.in_flight(), want, "{name}: in flight");
        let (host, worker) = (&mut sim.host, &mut sim.worker);
        sim.stream.on_log(host, worker);
        assert_eq!(sim.in_flight(), vec![], "{name}: in flight after the end");
    }
    let queued: Vec<(String, String, FailureKind)> = sim
        .worker
        .failures
        .take_due(u64::MAX)
        .into_iter()
        .map(|r| (r.model, r.replica, r.kind))
        .collect();
    let want: Vec<(String, String, FailureKind)> = expect
        .failures
        .iter()
        .map(|(m, r, k)| ((*m).to_owned(), (*r).to_owned(), *k))
        .collect();
    assert_eq!(queued, want, "{name}: failure reports");
    for (model, present) in expect.table_has {
        assert_eq!(
            sim.worker.table.contains(model),
            present,
            "{name}: table has {model}"
        );
    }
}

fn row(name: &'static str, table: Vec<TableEntry>, steps: Vec<Step>, expect: Expect) -> Row {
    Row {
        name,
        config: "",
        table,
        steps,
        expect,
    }
}

// ---- HTTP (KServe V2) ----

#[test]
fn v2_rows() {
    let rows = vec![
        row(
            "warm V2 infer: routed from the table, nothing held",
            warm_table(),
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Body(V2_BODY.into(), true),
                ResponseHeaders(ok_response(), false),
                ResponseBody(V2_ANSWER.into(), true),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8000"),
                forwarded: Some(V2_BODY.into()),
                delivered: Some(V2_ANSWER.into()),
                response_headers: vec![("x-mm-replica", Some("r0"))],
                in_flight: Some(vec![("linear", "r0")]),
                ..Expect::default()
            },
        ),
        row(
            "cold V2: held for the route call, then routed; the model becomes warm",
            vec![],
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Body(V2_BODY.into(), true),
                Answer(Some(200), route_answer("r2", 7000, false)),
                ResponseHeaders(ok_response(), false),
            ],
            Expect {
                actions: vec![Pause, Pause, Continue],
                upstream: Some("127.0.0.1:7000"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(V2_BODY.into()),
                response_headers: vec![("x-mm-replica", Some("r2"))],
                in_flight: Some(vec![("linear", "r2")]),
                table_has: vec![("linear", true)],
                ..Expect::default()
            },
        ),
        row(
            "cold V2: the answer comes before the body",
            vec![],
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Answer(Some(200), route_answer("r2", 7000, false)),
                Body(V2_BODY.into(), true),
            ],
            Expect {
                actions: vec![Pause, Continue],
                upstream: Some("127.0.0.1:7000"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(V2_BODY.into()),
                ..Expect::default()
            },
        ),
        row(
            "cold V2: the pool-manager refuses (unknown model)",
            vec![],
            vec![
                Headers(post("/v2/models/nope/infer"), false),
                Answer(Some(404), r#"{"error":"unknown model 'nope'"}"#.into()),
                Body(V2_BODY.into(), true),
            ],
            Expect {
                actions: vec![Pause, Pause],
                reply: Some((404, "unknown model 'nope'")),
                route_calls: vec!["/internal/v1/route/nope"],
                forwarded: Some("".into()),
                ..Expect::default()
            },
        ),
        row(
            "cold V2: the model failed to load",
            vec![],
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Answer(
                    Some(503),
                    r#"{"error":"model 'linear' failed to load"}"#.into(),
                ),
            ],
            Expect {
                reply: Some((503, "failed to load")),
                route_calls: vec!["/internal/v1/route/linear"],
                ..Expect::default()
            },
        ),
        row(
            "cold V2: the route call timed out (no answer)",
            vec![],
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Body(V2_BODY.into(), true),
                Answer(None, String::new()),
            ],
            Expect {
                actions: vec![Pause, Pause],
                reply: Some((503, "pool-manager unreachable")),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some("".into()),
                ..Expect::default()
            },
        ),
        row(
            "cold V2: an answer that is not a usable route",
            vec![],
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Answer(
                    Some(200),
                    r#"{"replica":"r0","address":"localhost:1"}"#.into(),
                ),
            ],
            Expect {
                reply: Some((502, "invalid route")),
                route_calls: vec!["/internal/v1/route/linear"],
                ..Expect::default()
            },
        ),
        row(
            "server path: any replica, by a route call",
            warm_table(),
            vec![
                Headers(get("/v2/health/ready"), true),
                Answer(
                    Some(200),
                    r#"{"replica":"r1","address":"127.0.0.1:9000"}"#.into(),
                ),
                ResponseHeaders(vec![(":status", "200")], true),
            ],
            Expect {
                actions: vec![Pause, Continue],
                upstream: Some("127.0.0.1:9000"),
                route_calls: vec!["/internal/v1/route"],
                response_headers: vec![("x-mm-replica", Some("r1"))],
                in_flight: Some(vec![]),
                ..Expect::default()
            },
        ),
        row(
            "server path with the pool-manager away: a replica from the table",
            warm_table(),
            vec![
                Headers(get("/v2/health/live"), true),
                Answer(None, String::new()),
            ],
            Expect {
                upstream: Some("127.0.0.1:8000"),
                route_calls: vec!["/internal/v1/route"],
                ..Expect::default()
            },
        ),
        row(
            "model configuration over HTTP: routed to the model's replica",
            warm_table(),
            vec![
                Headers(get("/v2/models/linear/config"), true),
                ResponseHeaders(vec![(":status", "404")], false),
                ResponseBody(
                    br#"{"error":"Request for unknown model: 'linear' is not found"}"#.to_vec(),
                    true,
                ),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8000"),
                failures: vec![("linear", "r0", FailureKind::ModelMissing)],
                ..Expect::default()
            },
        ),
        row(
            "unknown path",
            warm_table(),
            vec![Headers(get("/v2/repository/index"), true)],
            Expect {
                actions: vec![Pause],
                reply: Some((404, "no route for this path")),
                ..Expect::default()
            },
        ),
        row(
            "invalid model name",
            warm_table(),
            vec![Headers(get("/v2/models/..%2f/ready"), true)],
            Expect {
                reply: Some((400, "invalid model name")),
                ..Expect::default()
            },
        ),
        row(
            "trailers of a routed request go on with it",
            warm_table(),
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Body(V2_BODY.into(), false),
                Trailers(vec![("x-checksum", "1")]),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8000"),
                forwarded: Some(V2_BODY.into()),
                ..Expect::default()
            },
        ),
        row(
            "client routing headers are removed",
            warm_table(),
            vec![Headers(
                {
                    let mut h = post("/v2/models/linear/infer");
                    h.push(("x-envoy-original-dst-host", "10.0.0.1:22"));
                    h.push(("X-MM-Replica", "r9"));
                    h
                },
                false,
            )],
            Expect {
                upstream: Some("127.0.0.1:8000"),
                request_headers: vec![
                    ("x-envoy-original-dst-host", None),
                    ("X-MM-Replica", None),
                    (":path", Some("/v2/models/linear/infer")),
                ],
                ..Expect::default()
            },
        ),
    ];
    for r in rows {
        check(r);
    }
}

// ---- replica failures seen on the response ----

#[test]
fn response_rows() {
    let two_copies = || {
        vec![TableEntry {
            model: "linear".into(),
            replicas: vec![
                endpoint("r0", 8000, Some(8001)),
                endpoint("r1", 9000, Some(9001)),
            ],
            inputs: None,
            watch: false,
            upstream: None,
        }]
    };
    let rows = vec![
        row(
            "unreachable replica: Envoy's 503 becomes the gateway's, the replica leaves the table",
            two_copies(),
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Property(
                    "response.code_details",
                    b"upstream_reset_before_response_started{connection_failure}".to_vec(),
                ),
                Property("response.flags", 0x20u64.to_le_bytes().to_vec()),
                ResponseHeaders(
                    vec![
                        (":status", "503"),
                        ("content-type", "text/plain"),
                        ("content-length", "91"),
                    ],
                    false,
                ),
                ResponseBody(
                    b"upstream connect error or disconnect/reset before headers".to_vec(),
                    true,
                ),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8000"),
                delivered: Some(r#"{"error":"replica r0 unreachable; retry"}"#.into()),
                response_headers: vec![
                    ("content-type", Some("application/json")),
                    ("content-length", Some("41")),
                ],
                failures: vec![("linear", "r0", FailureKind::Unreachable)],
                table_has: vec![("linear", true)],
                ..Expect::default()
            },
        ),
        row(
            "model missing on the replica: that copy leaves the table",
            two_copies(),
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                ResponseHeaders(
                    vec![(":status", "404"), ("content-type", "application/json")],
                    false,
                ),
                ResponseBody(
                    br#"{"error":"Request for unknown model: 'linear' is not found"}"#.to_vec(),
                    true,
                ),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8000"),
                delivered: Some(
                    r#"{"error":"Request for unknown model: 'linear' is not found"}"#.into(),
                ),
                failures: vec![("linear", "r0", FailureKind::ModelMissing)],
                table_has: vec![("linear", true)],
                ..Expect::default()
            },
        ),
        row(
            "a 404 for a version is the client's: nothing dropped",
            two_copies(),
            vec![
                Headers(post("/v2/models/linear/versions/9/infer"), false),
                ResponseHeaders(vec![(":status", "404")], false),
                ResponseBody(
                    br#"{"error":"Request for unknown model: 'linear' version 9 is not found"}"#
                        .to_vec(),
                    true,
                ),
            ],
            Expect {
                upstream: Some("127.0.0.1:8000"),
                ..Expect::default()
            },
        ),
        row(
            "gRPC NOT_FOUND in the trailers: model missing",
            two_copies(),
            vec![
                Headers(
                    grpc_call(
                        "/inference.GRPCInferenceService/ModelInfer",
                        &[("mm-model-id", "linear")],
                    ),
                    false,
                ),
                ResponseHeaders(
                    vec![(":status", "200"), ("content-type", "application/grpc")],
                    false,
                ),
                ResponseTrailers(vec![
                    ("grpc-status", "5"),
                    (
                        "grpc-message",
                        "Request for unknown model: 'linear' is not found",
                    ),
                ]),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8001"),
                failures: vec![("linear", "r0", FailureKind::ModelMissing)],
                ..Expect::default()
            },
        ),
    ];
    for r in rows {
        check(r);
    }
}

// ---- KServe V1 ----

#[test]
fn v1_rows() {
    let v1_headers = || post("/v1/models/linear:predict");
    let rows = vec![
        row(
            "warm V1: the body is translated at its end, the answer back to V1",
            warm_table(),
            vec![
                Headers(v1_headers(), false),
                Body(V1_BODY[..10].into(), false),
                Body(V1_BODY[10..].into(), true),
                ResponseHeaders(ok_response(), false),
                ResponseBody(V2_ANSWER[..20].into(), false),
                ResponseBody(V2_ANSWER[20..].into(), true),
            ],
            Expect {
                actions: vec![Continue, Pause, Continue, Pause, Pause, Continue],
                upstream: Some("127.0.0.1:8000"),
                forwarded: Some(V1_TRANSLATED.into()),
                delivered: Some(V1_ANSWER.into()),
                request_headers: vec![
                    (":path", Some("/v2/models/linear/infer")),
                    ("content-length", None),
                    ("content-type", Some("application/json")),
                ],
                response_headers: vec![("content-length", None), ("x-mm-replica", Some("r0"))],
                in_flight: Some(vec![("linear", "r0")]),
                ..Expect::default()
            },
        ),
        row(
            "cold V1, body whole before the answer: translated when the answer comes",
            vec![],
            vec![
                Headers(v1_headers(), false),
                Body(V1_BODY.into(), true),
                Answer(Some(200), route_answer("r2", 7000, true)),
            ],
            Expect {
                actions: vec![Pause, Pause],
                upstream: Some("127.0.0.1:7000"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(V1_TRANSLATED.into()),
                ..Expect::default()
            },
        ),
        row(
            "cold V1, body after the answer: translated at its end",
            vec![],
            vec![
                Headers(v1_headers(), false),
                Answer(Some(200), route_answer("r2", 7000, true)),
                Body(V1_BODY.into(), true),
            ],
            Expect {
                actions: vec![Pause, Continue],
                upstream: Some("127.0.0.1:7000"),
                forwarded: Some(V1_TRANSLATED.into()),
                route_calls: vec!["/internal/v1/route/linear"],
                ..Expect::default()
            },
        ),
        row(
            "V1 with Accept-Encoding: the replica is not asked to compress",
            warm_table(),
            vec![
                Headers(
                    {
                        let mut h = v1_headers();
                        h.push(("accept-encoding", "gzip, deflate, br, zstd"));
                        h
                    },
                    false,
                ),
                Body(V1_BODY.into(), true),
                ResponseHeaders(ok_response(), false),
                ResponseBody(V2_ANSWER.into(), true),
            ],
            Expect {
                actions: vec![Continue, Continue, Pause, Continue],
                upstream: Some("127.0.0.1:8000"),
                forwarded: Some(V1_TRANSLATED.into()),
                delivered: Some(V1_ANSWER.into()),
                request_headers: vec![("accept-encoding", None)],
                ..Expect::default()
            },
        ),
        row(
            "V1 answer compressed anyway: a 502 that claims no encoding",
            warm_table(),
            vec![
                Headers(v1_headers(), false),
                Body(V1_BODY.into(), true),
                ResponseHeaders(
                    vec![
                        (":status", "200"),
                        ("content-type", "application/json"),
                        ("content-encoding", "gzip"),
                    ],
                    false,
                ),
                ResponseBody(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0], true),
            ],
            Expect {
                actions: vec![Continue, Continue, Pause, Continue],
                upstream: Some("127.0.0.1:8000"),
                response_headers: vec![(":status", Some("502")), ("content-encoding", None)],
                ..Expect::default()
            },
        ),
        row(
            "V1 without a body",
            warm_table(),
            vec![Headers(v1_headers(), true)],
            Expect {
                reply: Some((400, "needs a JSON body")),
                ..Expect::default()
            },
        ),
        row(
            "V1 for a model whose inputs are unknown",
            warm_table(),
            vec![Headers(post("/v1/models/xor:predict"), false)],
            Expect {
                reply: Some((503, "metadata not available")),
                ..Expect::default()
            },
        ),
        row(
            "V1 body that is not instances",
            warm_table(),
            vec![
                Headers(v1_headers(), false),
                Body(br#"{"inputs":[]}"#.to_vec(), true),
            ],
            Expect {
                actions: vec![Continue, Pause],
                upstream: Some("127.0.0.1:8000"),
                reply: Some((400, "instances")),
                forwarded: Some("".into()),
                ..Expect::default()
            },
        ),
        row(
            "V1 answer that is not a V2 response: 502 with the gateway's JSON",
            warm_table(),
            vec![
                Headers(v1_headers(), false),
                Body(V1_BODY.into(), true),
                ResponseHeaders(ok_response(), false),
                ResponseBody(b"not json".to_vec(), true),
            ],
            Expect {
                actions: vec![Continue, Continue, Pause, Continue],
                upstream: Some("127.0.0.1:8000"),
                response_headers: vec![(":status", Some("502"))],
                ..Expect::default()
            },
        ),
    ];
    for r in rows {
        check(r);
    }
}

// ---- gRPC ----

#[test]
fn grpc_rows() {
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    let message = frame(&[field(1, b"linear"), field(5, b"\x0a\x01x")]);
    let rows = vec![
        row(
            "gRPC with a model header: routed to the gRPC address at once",
            warm_table(),
            vec![
                Headers(grpc_call(infer, &[("mm-model-id", "linear")]), false),
                Body(message.clone(), true),
            ],
            Expect {
                actions: vec![Continue, Continue],
                upstream: Some("127.0.0.1:8001"),
                in_flight: Some(vec![("linear", "r0")]),
                ..Expect::default()
            },
        ),
        row(
            "gRPC without a header: the model is field 1 of the first message",
            warm_table(),
            vec![
                Headers(grpc_call(infer, &[]), false),
                Body(message[..4].to_vec(), false),
                Body(message[4..].to_vec(), true),
            ],
            Expect {
                actions: vec![Pause, Pause, Continue],
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some(message.clone()),
                ..Expect::default()
            },
        ),
        row(
            "gRPC, model from the message, not warm: a route call",
            vec![],
            vec![
                Headers(grpc_call(infer, &[]), false),
                Body(message.clone(), true),
                Answer(Some(200), route_answer("r2", 7000, false)),
            ],
            Expect {
                actions: vec![Pause, Pause],
                upstream: Some("127.0.0.1:7001"),
                route_calls: vec!["/internal/v1/route/linear"],
                ..Expect::default()
            },
        ),
        row(
            "gRPC header names one model, the message another",
            warm_table(),
            vec![
                Headers(grpc_call(infer, &[("mm-model-id", "linear")]), false),
                Body(frame(&[field(1, b"xor")]), true),
            ],
            Expect {
                actions: vec![Continue, Pause],
                upstream: Some("127.0.0.1:8001"),
                reply: Some((
                    3,
                    "names model xor, but the call was routed to model linear",
                )),
                forwarded: Some(vec![]),
                ..Expect::default()
            },
        ),
        row(
            "gRPC message naming its model twice, differently",
            warm_table(),
            vec![
                Headers(grpc_call(infer, &[]), false),
                Body(frame(&[field(1, b"linear"), field(1, b"xor")]), true),
            ],
            Expect {
                actions: vec![Pause, Pause],
                reply: Some((3, "names model xor")),
                ..Expect::default()
            },
        ),
        row(
            "gRPC stream: a later message names another model",
            warm_table(),
            vec![
                Headers(
                    grpc_call("/inference.GRPCInferenceService/ModelStreamInfer", &[]),
                    false,
                ),
                Body(message.clone(), false),
                ResponseHeaders(
                    vec![(":status", "200"), ("content-type", "application/grpc")],
                    false,
                ),
                Body(frame(&[field(1, b"lin")])[..4].to_vec(), false),
                Body(frame(&[field(1, b"xor")])[4..].to_vec(), false),
            ],
            Expect {
                // The next message's first bytes go on: they name no model yet, and the
                // chunk that completes it (with the wrong model) never does.
                actions: vec![Pause, Continue, Continue, Continue, Pause],
                upstream: Some("127.0.0.1:8001"),
                reply: Some((3, "names model xor")),
                forwarded: Some(
                    [message.clone(), frame(&[field(1, b"xor")])[..4].to_vec()].concat(),
                ),
                ..Expect::default()
            },
        ),
        row(
            "gRPC stream: later messages naming the model go on",
            warm_table(),
            vec![
                Headers(
                    grpc_call(
                        "/inference.GRPCInferenceService/ModelStreamInfer",
                        &[("mm-model-id", "linear")],
                    ),
                    false,
                ),
                Body(message.clone(), false),
                Body(message.clone(), true),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some([message.clone(), message.clone()].concat()),
                ..Expect::default()
            },
        ),
        row(
            "gRPC compressed message, even with a header",
            warm_table(),
            vec![
                Headers(grpc_call(infer, &[("mm-model-id", "linear")]), false),
                Body(
                    {
                        let mut m = message.clone();
                        m[0] = 1;
                        m
                    },
                    true,
                ),
            ],
            Expect {
                actions: vec![Continue, Pause],
                upstream: Some("127.0.0.1:8001"),
                reply: Some((3, "compressed")),
                ..Expect::default()
            },
        ),
        row(
            "gRPC, model from the message while the route call is out: later bytes checked too",
            vec![],
            vec![
                Headers(grpc_call(infer, &[]), false),
                Body(message.clone(), false),
                Body(frame(&[field(1, b"xor")]), false),
            ],
            Expect {
                actions: vec![Pause, Pause, Pause],
                route_calls: vec!["/internal/v1/route/linear"],
                reply: Some((3, "names model xor")),
                ..Expect::default()
            },
        ),
        row(
            "gRPC message without field 1",
            warm_table(),
            vec![
                Headers(grpc_call(infer, &[]), false),
                Body(frame(&[field(2, b"1")]), true),
            ],
            Expect {
                reply: Some((3, "does not name a model")),
                ..Expect::default()
            },
        ),
        row(
            "gRPC with no message and no header",
            warm_table(),
            vec![Headers(grpc_call(infer, &[]), true)],
            Expect {
                reply: Some((3, "does not name a model")),
                ..Expect::default()
            },
        ),
        row(
            "gRPC invalid model header",
            warm_table(),
            vec![Headers(grpc_call(infer, &[("mm-model-id", "../x")]), false)],
            Expect {
                reply: Some((3, "invalid model name in header mm-model-id")),
                ..Expect::default()
            },
        ),
        row(
            "gRPC method the gateway never forwards",
            warm_table(),
            vec![Headers(
                grpc_call("/inference.GRPCInferenceService/RepositoryModelLoad", &[]),
                false,
            )],
            Expect {
                reply: Some((7, "RepositoryModelLoad is not served")),
                ..Expect::default()
            },
        ),
        row(
            "gRPC for a model with no gRPC endpoint",
            warm_table(),
            vec![Headers(grpc_call(infer, &[("mm-model-id", "xor")]), false)],
            Expect {
                reply: Some((14, "no gRPC endpoint serves model xor")),
                ..Expect::default()
            },
        ),
        row(
            "gRPC server method: any replica",
            warm_table(),
            vec![
                Headers(
                    grpc_call("/inference.GRPCInferenceService/ServerLive", &[]),
                    false,
                ),
                Answer(
                    Some(200),
                    r#"{"replica":"r0","address":"127.0.0.1:8000","grpcAddress":"127.0.0.1:8001"}"#
                        .into(),
                ),
            ],
            Expect {
                upstream: Some("127.0.0.1:8001"),
                route_calls: vec!["/internal/v1/route"],
                ..Expect::default()
            },
        ),
    ];
    for r in rows {
        check(r);
    }
}

// ---- limits ----

#[test]
fn limit_rows() {
    let config = r#"{"max_request_bytes":1024}"#;
    let big = |n| vec![b'a'; n];
    let rows = vec![
        Row {
            name: "declared body over the limit: 413 before anything is read",
            config,
            table: warm_table(),
            steps: vec![Headers(
                vec![
                    (":method", "POST"),
                    (":path", "/v2/models/linear/infer"),
                    ("content-length", "1025"),
                ],
                false,
            )],
            expect: Expect {
                actions: vec![Pause],
                reply: Some((413, "larger than the gateway's limit of 1024 bytes")),
                ..Expect::default()
            },
        },
        Row {
            name: "streamed body over the limit: 413 when it crosses it",
            config,
            table: warm_table(),
            steps: vec![
                Headers(
                    vec![(":method", "POST"), (":path", "/v2/models/linear/infer")],
                    false,
                ),
                Body(big(1000), false),
                Body(big(25), true),
            ],
            expect: Expect {
                actions: vec![Continue, Continue, Pause],
                upstream: Some("127.0.0.1:8000"),
                reply: Some((413, "limit of 1024 bytes")),
                forwarded: Some(big(1000)),
                ..Expect::default()
            },
        },
        Row {
            name: "held body over the limit while the route call is out",
            config,
            table: vec![],
            steps: vec![
                Headers(
                    vec![(":method", "POST"), (":path", "/v2/models/linear/infer")],
                    false,
                ),
                Body(big(600), false),
                Body(big(600), false),
            ],
            expect: Expect {
                actions: vec![Pause, Pause, Pause],
                reply: Some((413, "limit of 1024 bytes")),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some("".into()),
                ..Expect::default()
            },
        },
    ];
    for r in rows {
        check(r);
    }
}

#[test]
fn content_type_rows() {
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h = vec![(":method", "POST"), (":path", "/v2/models/linear/infer")];
        h.extend_from_slice(extra);
        h
    };
    let rows = vec![
        row(
            "a form-encoded body reaches the replica as JSON",
            warm_table(),
            vec![Headers(
                with(&[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("content-length", "74"),
                ]),
                false,
            )],
            Expect {
                actions: vec![Continue],
                upstream: Some("127.0.0.1:8000"),
                request_headers: vec![("content-type", Some("application/json"))],
                ..Expect::default()
            },
        ),
        row(
            "no content type at all: JSON",
            warm_table(),
            vec![Headers(with(&[]), false)],
            Expect {
                upstream: Some("127.0.0.1:8000"),
                request_headers: vec![("content-type", Some("application/json"))],
                ..Expect::default()
            },
        ),
        row(
            "binary tensor extension: octet-stream",
            warm_table(),
            vec![Headers(
                with(&[
                    ("content-type", "text/plain"),
                    ("content-length", "116"),
                    ("inference-header-content-length", "100"),
                ]),
                false,
            )],
            Expect {
                upstream: Some("127.0.0.1:8000"),
                request_headers: vec![("content-type", Some("application/octet-stream"))],
                ..Expect::default()
            },
        ),
        row(
            "Inference-Header-Content-Length larger than the body",
            warm_table(),
            vec![Headers(
                with(&[
                    ("content-length", "99"),
                    ("inference-header-content-length", "100"),
                ]),
                false,
            )],
            Expect {
                reply: Some((400, "Inference-Header-Content-Length")),
                ..Expect::default()
            },
        ),
        row(
            "Inference-Header-Content-Length that is not a number",
            warm_table(),
            vec![Headers(
                with(&[("inference-header-content-length", "-1")]),
                false,
            )],
            Expect {
                reply: Some((400, "Inference-Header-Content-Length")),
                ..Expect::default()
            },
        ),
        row(
            "chunked binary body shorter than its JSON part: refused at its end",
            warm_table(),
            vec![
                Headers(with(&[("inference-header-content-length", "100")]), false),
                Body(vec![b'{'; 60], false),
                Body(vec![b'{'; 30], true),
            ],
            Expect {
                actions: vec![Continue, Continue, Pause],
                upstream: Some("127.0.0.1:8000"),
                reply: Some((400, "Inference-Header-Content-Length")),
                forwarded: Some(vec![b'{'; 60]),
                ..Expect::default()
            },
        ),
        row(
            "server paths get JSON too",
            warm_table(),
            vec![Headers(
                vec![
                    (":method", "GET"),
                    (":path", "/v2/health/ready"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                true,
            )],
            Expect {
                route_calls: vec!["/internal/v1/route"],
                request_headers: vec![("content-type", Some("application/json"))],
                ..Expect::default()
            },
        ),
    ];
    for r in rows {
        check(r);
    }
}

// ---- without bodies while paused (Istio's WasmPlugin) ----

#[test]
fn istio_rows() {
    let config = r#"{"bodies_while_paused":false}"#;
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    let rows = vec![
        Row {
            name: "gRPC without a model header: refused at once, not held",
            config,
            table: warm_table(),
            steps: vec![
                Headers(grpc_call(infer, &[]), false),
                Body(frame(&[field(1, b"linear")]), true),
            ],
            expect: Expect {
                actions: vec![Pause],
                reply: Some((12, "mm-model-id")),
                ..Expect::default()
            },
        },
        Row {
            name: "gRPC with a header: routed as usual",
            config,
            table: warm_table(),
            steps: vec![
                Headers(grpc_call(infer, &[("mm-model-id", "linear")]), false),
                Body(frame(&[field(1, b"linear")]), true),
            ],
            expect: Expect {
                actions: vec![Continue, Continue],
                upstream: Some("127.0.0.1:8001"),
                ..Expect::default()
            },
        },
        Row {
            name: "cold V1: the headers go at the answer, the body is translated after them",
            config,
            table: vec![],
            steps: vec![
                Headers(post("/v1/models/linear:predict"), false),
                Body(V1_BODY.into(), true),
                Answer(Some(200), route_answer("r2", 7000, true)),
            ],
            expect: Expect {
                actions: vec![Pause, Continue],
                upstream: Some("127.0.0.1:7000"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(V1_TRANSLATED.into()),
                ..Expect::default()
            },
        },
        Row {
            name: "V1 answer: the headers go on, the body is translated at its end",
            config,
            table: warm_table(),
            steps: vec![
                Headers(post("/v1/models/linear:predict"), false),
                Body(V1_BODY.into(), true),
                ResponseHeaders(ok_response(), false),
                ResponseBody(V2_ANSWER[..9].into(), false),
                ResponseBody(V2_ANSWER[9..].into(), true),
            ],
            expect: Expect {
                actions: vec![Continue, Continue, Continue, Pause, Continue],
                upstream: Some("127.0.0.1:8000"),
                delivered: Some(V1_ANSWER.into()),
                response_headers: vec![("content-length", None)],
                ..Expect::default()
            },
        },
        Row {
            name: "V1 answer not translatable: the body says so (the status went already)",
            config,
            table: warm_table(),
            steps: vec![
                Headers(post("/v1/models/linear:predict"), false),
                Body(V1_BODY.into(), true),
                ResponseHeaders(ok_response(), false),
                ResponseBody(b"nope".to_vec(), true),
            ],
            expect: Expect {
                actions: vec![Continue, Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8000"),
                response_headers: vec![(":status", Some("200"))],
                ..Expect::default()
            },
        },
        Row {
            name: "cold V2: the held body goes with the request",
            config,
            table: vec![],
            steps: vec![
                Headers(post("/v2/models/linear/infer"), false),
                Body(V2_BODY.into(), true),
                Answer(Some(200), route_answer("r2", 7000, false)),
            ],
            expect: Expect {
                actions: vec![Pause, Continue],
                upstream: Some("127.0.0.1:7000"),
                forwarded: Some(V2_BODY.into()),
                route_calls: vec!["/internal/v1/route/linear"],
                ..Expect::default()
            },
        },
    ];
    for r in rows {
        check(r);
    }
}

// ---- request trailers ----

#[test]
fn trailer_rows() {
    let trailers = || vec![("x-checksum", "1")];
    let rows = vec![
        row(
            "cold V2 with trailers: held until the route answer, not let go by them",
            vec![],
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Body(V2_BODY.into(), false),
                Trailers(trailers()),
                Answer(Some(200), route_answer("r2", 7000, false)),
            ],
            Expect {
                actions: vec![Pause, Pause, Pause],
                upstream: Some("127.0.0.1:7000"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(V2_BODY.into()),
                ..Expect::default()
            },
        ),
        row(
            "cold V2 with trailers, the route refused: answered, never let go",
            vec![],
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Trailers(trailers()),
                Answer(None, String::new()),
            ],
            Expect {
                actions: vec![Pause, Pause],
                reply: Some((503, "pool-manager unreachable")),
                route_calls: vec!["/internal/v1/route/linear"],
                ..Expect::default()
            },
        ),
        row(
            "warm V1 whose body ends with trailers: translated then",
            warm_table(),
            vec![
                Headers(post("/v1/models/linear:predict"), false),
                Body(V1_BODY.into(), false),
                Trailers(trailers()),
            ],
            Expect {
                actions: vec![Continue, Pause, Continue],
                upstream: Some("127.0.0.1:8000"),
                forwarded: Some(V1_TRANSLATED.into()),
                ..Expect::default()
            },
        ),
        row(
            "cold V1 whose body ends with trailers: translated when the answer comes",
            vec![],
            vec![
                Headers(post("/v1/models/linear:predict"), false),
                Body(V1_BODY.into(), false),
                Trailers(trailers()),
                Answer(Some(200), route_answer("r2", 7000, true)),
            ],
            Expect {
                actions: vec![Pause, Pause, Pause],
                upstream: Some("127.0.0.1:7000"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(V1_TRANSLATED.into()),
                ..Expect::default()
            },
        ),
        row(
            "gRPC whose body ends with trailers before naming a model",
            warm_table(),
            vec![
                Headers(
                    grpc_call("/inference.GRPCInferenceService/ModelInfer", &[]),
                    false,
                ),
                Body(frame(&[field(1, b"linear")])[..3].to_vec(), false),
                Trailers(trailers()),
            ],
            Expect {
                actions: vec![Pause, Pause, Pause],
                reply: Some((3, "does not name a model")),
                ..Expect::default()
            },
        ),
        row(
            "binary body ended by trailers, shorter than its JSON part",
            warm_table(),
            vec![
                Headers(
                    vec![
                        (":method", "POST"),
                        (":path", "/v2/models/linear/infer"),
                        ("inference-header-content-length", "100"),
                    ],
                    false,
                ),
                Body(vec![b'{'; 10], false),
                Trailers(trailers()),
            ],
            Expect {
                actions: vec![Continue, Continue, Pause],
                upstream: Some("127.0.0.1:8000"),
                reply: Some((400, "Inference-Header-Content-Length")),
                ..Expect::default()
            },
        ),
    ];
    for r in rows {
        check(r);
    }
}

// ---- the host-call budget of a warm request ----

/// The host calls of one warm V2 infer under plugin configuration `config`, from the
/// request headers to the end of the response, at Envoy's default `info` log level.
fn warm_request_ops(config: &str) -> Vec<Op> {
    let mut sim = Sim::new(config, warm_table());
    sim.host.level = Level::Info;
    sim.run(&[
        Headers(post("/v2/models/linear/infer"), false),
        Body(V2_BODY.into(), true),
        ResponseHeaders(ok_response(), false),
        ResponseBody(V2_ANSWER.into(), true),
    ]);
    let (host, worker) = (&mut sim.host, &mut sim.worker);
    sim.stream.on_log(host, worker);
    assert_eq!(sim.upstreams(), vec!["127.0.0.1:8000"]);
    sim.host.take_ops()
}

#[test]
fn a_warm_request_stays_within_its_host_call_budget() {
    let ops = warm_request_ops("");
    assert!(
        !ops.iter().any(|op| matches!(
            op,
            Op::Dispatch(_) | Op::Shared(_) | Op::SetShared(..) | Op::Log(..) | Op::Increment(..)
        )),
        "a warm request calls out, touches shared data, logs or counts through the host: {ops:#?}"
    );
    // 9 before the warm path was cut (headers listed, then read one by one: content
    // length, path, binary header, content type; the table-hit counter; the upstream; on
    // the response the replica header and the status). Now the request headers are read
    // once and the counter is kept in worker memory until the tick.
    assert_eq!(
        ops,
        vec![
            Op::Headers(Map::RequestHeaders),
            Op::SetUpstream("127.0.0.1:8000".into()),
            Op::SetHeader(Map::ResponseHeaders, "x-mm-replica".into(), "r0".into()),
            Op::Header(Map::ResponseHeaders, ":status".into()),
        ]
    );
    // Each host call costs Envoy 5k to 11k instructions (callgrind, BENCHMARKS.md): the
    // replica header is the one a deployment can turn off.
    assert_eq!(
        warm_request_ops(r#"{"replica_header": false}"#),
        vec![
            Op::Headers(Map::RequestHeaders),
            Op::SetUpstream("127.0.0.1:8000".into()),
            Op::Header(Map::ResponseHeaders, ":status".into()),
        ]
    );
}

#[test]
fn counts_go_to_the_host_on_the_tick() {
    let mut sim = Sim::new("", warm_table());
    sim.run(&[Headers(post("/v2/models/linear/infer"), false)]);
    assert_eq!(sim.worker.counted(Metric::TableHits), 1);
    sim.host.take_ops();
    sim.worker.on_tick(&mut sim.host);
    assert!(sim.host.ops.contains(&Op::Increment(Metric::TableHits, 1)));
    assert_eq!(sim.worker.counted(Metric::TableHits), 0);
}

// ---- metadata and readiness without loading ----

fn standby(extra: serde_json::Value) -> String {
    let mut standby = serde_json::json!({"ready": true});
    if let (Some(s), Some(e)) = (standby.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::json!({ "standby": standby }).to_string()
}

#[test]
fn http_metadata_and_ready_of_a_model_loaded_nowhere_make_the_metadata_call() {
    let metadata = serde_json::json!({"name": "cold", "versions": ["1"]});
    let rows: Vec<(&'static str, &str, String, u16, Option<String>)> = vec![
        (
            "/v2/models/cold/ready",
            "/internal/v1/metadata/cold?for=ready",
            standby(serde_json::json!({})),
            200,
            None,
        ),
        (
            "/v2/models/cold/versions/1",
            "/internal/v1/metadata/cold?for=metadata&version=1",
            standby(serde_json::json!({ "body": metadata })),
            200,
            Some(metadata.to_string()),
        ),
        (
            "/v1/models/cold",
            "/internal/v1/metadata/cold?for=ready",
            standby(serde_json::json!({})),
            200,
            Some(r#"{"name":"cold","ready":true}"#.to_owned()),
        ),
    ];
    for (path, call, answer, status, body) in rows {
        let mut sim = Sim::new("", warm_table());
        sim.run(&[Step::Headers(get(path), true)]);
        assert_eq!(sim.route_calls(), vec![call.to_owned()], "{path}");
        sim.run(&[Step::Answer(Some(200), answer)]);
        let reply = sim.reply().expect("answered by the gateway");
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.header("x-mm-model-state"), Some("standby"), "{path}");
        assert_eq!(
            reply.body.clone().map(|b| String::from_utf8(b).unwrap()),
            body
        );
        assert!(sim.upstreams().is_empty(), "{path}: nothing forwarded");
    }
}

#[test]
fn kserve_v1_readiness_of_a_loaded_model_is_answered_from_the_table() {
    let mut sim = Sim::new("", warm_table());
    sim.run(&[Step::Headers(get("/v1/models/linear"), true)]);
    assert!(sim.route_calls().is_empty());
    let reply = sim.reply().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-mm-model-state"), None);
    assert_eq!(
        reply.body.as_deref(),
        Some(&br#"{"name":"linear","ready":true}"#[..])
    );
}

#[test]
fn a_loaded_model_found_by_the_metadata_call_is_forwarded() {
    let mut sim = Sim::new("", warm_table());
    sim.run(&[Step::Headers(get("/v2/models/linear2"), true)]);
    let route: serde_json::Value = serde_json::from_str(&route_answer("r1", 9000, false)).unwrap();
    let answer = serde_json::json!({ "route": route }).to_string();
    sim.run(&[Step::Answer(Some(200), answer)]);
    assert_eq!(sim.upstreams(), vec!["127.0.0.1:9000"]);
    assert!(sim.reply().is_none());
}

#[test]
fn grpc_answers_for_a_model_loaded_nowhere_ride_on_server_live() {
    for (method, asked) in [
        ("/inference.GRPCInferenceService/ModelMetadata", "metadata"),
        ("/inference.GRPCInferenceService/ModelConfig", "config"),
    ] {
        grpc_answer_rides_on_server_live(method, asked);
    }
}

/// A gRPC `method` asking `asked` of a model loaded nowhere.
fn grpc_answer_rides_on_server_live(method: &'static str, asked: &str) {
    let mut sim = Sim::new("", warm_table());
    sim.run(&[Step::Headers(
        grpc_call(method, &[("mm-model-id", "cold")]),
        false,
    )]);
    assert_eq!(
        sim.route_calls(),
        vec![format!("/internal/v1/metadata/cold?for={asked}&grpc=true")]
    );
    let carrier: serde_json::Value =
        serde_json::from_str(&route_answer("r1", 9000, false)).unwrap();
    let answer = standby(serde_json::json!({"grpcMessage": "CgRjb2xk", "carrier": carrier}));
    sim.run(&[Step::Answer(Some(200), answer)]);
    assert_eq!(
        sim.upstreams(),
        vec!["127.0.0.1:9001"],
        "the carrier's gRPC port"
    );
    assert_eq!(
        sim.host.header(Map::RequestHeaders, ":path").as_deref(),
        Some(&b"/inference.GRPCInferenceService/ServerLive"[..])
    );
    sim.run(&[
        Step::ResponseHeaders(
            vec![(":status", "200"), ("content-type", "application/grpc")],
            false,
        ),
        Step::ResponseBody(vec![0, 0, 0, 0], false),
        Step::ResponseBody(vec![2, 0x08, 0x01], false),
        Step::ResponseTrailers(vec![("grpc-status", "0")]),
    ]);
    // ServerLive's own `live: true` is replaced by the kept answer.
    assert_eq!(
        sim.delivered,
        b"\0\0\0\0\x06\x0a\x04cold".to_vec(),
        "{method}"
    );
    assert!(sim.in_flight().is_empty(), "not counted on the carrier");
    assert!(sim.reply().is_none());
}

// ---- models served under another Triton-side name (an update's new version) ----

const RENAMED: &str = "linear--0123abcd";

/// `linear` on r0, known to Triton as [`RENAMED`].
fn renamed_table() -> Vec<TableEntry> {
    let mut table = warm_table();
    table[0].upstream = Some(RENAMED.into());
    table
}

fn renamed_answer() -> String {
    let mut answer: serde_json::Value =
        serde_json::from_str(&route_answer("r2", 7000, true)).unwrap();
    answer["upstream"] = RENAMED.into();
    answer.to_string()
}

#[test]
fn rename_rows() {
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    let message = frame(&[field(1, b"linear"), field(5, b"\x0a\x01x")]);
    let renamed = frame(&[field(1, RENAMED.as_bytes()), field(5, b"\x0a\x01x")]);
    let served = || {
        vec![
            ("x-mm-replica", Some("r0")),
            ("x-mm-served-model", Some("linear")),
            ("x-mm-served-version", Some(RENAMED)),
        ]
    };
    let rows = vec![
        row(
            "warm V2 infer: the path names the Triton-side name; the answer says who served",
            renamed_table(),
            vec![
                Headers(post("/v2/models/linear/versions/1/infer?a=b"), false),
                Body(V2_BODY.into(), true),
                ResponseHeaders(ok_response(), false),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8000"),
                forwarded: Some(V2_BODY.into()),
                request_headers: vec![(
                    ":path",
                    Some("/v2/models/linear--0123abcd/versions/1/infer?a=b"),
                )],
                response_headers: served(),
                in_flight: Some(vec![(RENAMED, "r0")]),
                ..Expect::default()
            },
        ),
        row(
            "an ordinary model gets no served-model headers",
            warm_table(),
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                ResponseHeaders(ok_response(), false),
            ],
            Expect {
                upstream: Some("127.0.0.1:8000"),
                request_headers: vec![(":path", Some("/v2/models/linear/infer"))],
                response_headers: vec![("x-mm-served-model", None), ("x-mm-served-version", None)],
                in_flight: Some(vec![("linear", "r0")]),
                ..Expect::default()
            },
        ),
        row(
            "V1 predict: the V2 path of the translation names the Triton-side name",
            renamed_table(),
            vec![
                Headers(post("/v1/models/linear:predict"), false),
                Body(V1_BODY.into(), true),
            ],
            Expect {
                actions: vec![Continue, Continue],
                upstream: Some("127.0.0.1:8000"),
                forwarded: Some(V1_TRANSLATED.into()),
                request_headers: vec![(":path", Some("/v2/models/linear--0123abcd/infer"))],
                ..Expect::default()
            },
        ),
        row(
            "cold V2: the route answer's upstream name renames the request and enters the table",
            vec![],
            vec![
                Headers(post("/v2/models/linear/infer"), false),
                Body(V2_BODY.into(), true),
                Answer(Some(200), renamed_answer()),
            ],
            Expect {
                actions: vec![Pause, Pause],
                upstream: Some("127.0.0.1:7000"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(V2_BODY.into()),
                request_headers: vec![(":path", Some("/v2/models/linear--0123abcd/infer"))],
                in_flight: Some(vec![(RENAMED, "r2")]),
                table_has: vec![("linear", true)],
                ..Expect::default()
            },
        ),
        row(
            "gRPC with a model header: the messages are held to the end, then renamed",
            renamed_table(),
            vec![
                Headers(
                    grpc_call(infer, &[("mm-model-id", "linear"), ("content-length", "9")]),
                    false,
                ),
                Body(message[..9].to_vec(), false),
                Body(message[9..].to_vec(), true),
            ],
            Expect {
                actions: vec![Continue, Pause, Continue],
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some(renamed.clone()),
                request_headers: vec![("content-length", None)],
                in_flight: Some(vec![(RENAMED, "r0")]),
                ..Expect::default()
            },
        ),
        row(
            "gRPC, model from the message: routed from the table, then renamed at the end",
            renamed_table(),
            vec![
                Headers(grpc_call(infer, &[]), false),
                Body(message[..4].to_vec(), false),
                Body(message[4..12].to_vec(), false),
                Body(message[12..].to_vec(), true),
            ],
            Expect {
                actions: vec![Pause, Pause, Pause, Continue],
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some(renamed.clone()),
                ..Expect::default()
            },
        ),
        row(
            "gRPC, cold, whole body held: the route answer renames it and lets it go",
            vec![],
            vec![
                Headers(grpc_call(infer, &[]), false),
                Body(message.clone(), true),
                Answer(Some(200), renamed_answer()),
            ],
            Expect {
                actions: vec![Pause, Pause],
                upstream: Some("127.0.0.1:7001"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(renamed.clone()),
                ..Expect::default()
            },
        ),
        row(
            "gRPC, cold, answer before the body's end: renamed when the body ends",
            vec![],
            vec![
                Headers(grpc_call(infer, &[("mm-model-id", "linear")]), false),
                Answer(Some(200), renamed_answer()),
                Body(message[..9].to_vec(), false),
                Body(message[9..].to_vec(), true),
            ],
            Expect {
                actions: vec![Pause, Pause, Continue],
                upstream: Some("127.0.0.1:7001"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(renamed.clone()),
                ..Expect::default()
            },
        ),
    ];
    for r in rows {
        check(r);
    }
}

#[test]
fn renamed_stream_rows() {
    let stream = "/inference.GRPCInferenceService/ModelStreamInfer";
    let first = frame(&[field(1, b"linear"), field(5, b"\x0a\x01x")]);
    let second = frame(&[field(5, b"\x0a\x01y"), field(1, b"linear")]);
    let renamed_first = frame(&[field(1, RENAMED.as_bytes()), field(5, b"\x0a\x01x")]);
    let renamed_second = frame(&[field(5, b"\x0a\x01y"), field(1, RENAMED.as_bytes())]);
    let both = [renamed_first.clone(), renamed_second.clone()].concat();
    // The second message, cut after its prefix and part of its first field.
    let (head, tail) = second.split_at(7);
    let rows = vec![
        row(
            "a stream with a model header: each message goes renamed as soon as it is whole",
            renamed_table(),
            vec![
                Headers(grpc_call(stream, &[("mm-model-id", "linear")]), false),
                Body(first[..9].to_vec(), false),
                Body([&first[9..], head].concat(), false),
                Body(tail.to_vec(), false),
                ResponseHeaders(
                    vec![(":status", "200"), ("content-type", "application/grpc")],
                    false,
                ),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some(both.clone()),
                in_flight: Some(vec![(RENAMED, "r0")]),
                response_headers: vec![
                    ("x-mm-served-model", Some("linear")),
                    ("x-mm-served-version", Some(RENAMED)),
                ],
                ..Expect::default()
            },
        ),
        row(
            "a stream, model from its first message: routed from the table, renamed, not held",
            renamed_table(),
            vec![
                Headers(grpc_call(stream, &[]), false),
                Body(first[..4].to_vec(), false),
                Body([&first[4..], head].concat(), false),
                Body(tail.to_vec(), false),
                Body(first.clone(), true),
            ],
            Expect {
                actions: vec![Pause, Pause, Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some([both.clone(), renamed_first.clone()].concat()),
                ..Expect::default()
            },
        ),
        row(
            "a cold stream: the route answer renames what was held and lets the stream go",
            vec![],
            vec![
                Headers(grpc_call(stream, &[("mm-model-id", "linear")]), false),
                Body([first.as_slice(), head].concat(), false),
                Answer(Some(200), renamed_answer()),
                Body(tail.to_vec(), true),
            ],
            Expect {
                actions: vec![Pause, Pause, Continue],
                upstream: Some("127.0.0.1:7001"),
                route_calls: vec!["/internal/v1/route/linear"],
                forwarded: Some(both.clone()),
                in_flight: Some(vec![(RENAMED, "r2")]),
                ..Expect::default()
            },
        ),
        row(
            "a stream half-closed by an empty chunk ends normally",
            renamed_table(),
            vec![
                Headers(grpc_call(stream, &[("mm-model-id", "linear")]), false),
                Body(first.clone(), false),
                Body(Vec::new(), true),
            ],
            Expect {
                actions: vec![Continue, Continue, Continue],
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some(renamed_first.clone()),
                ..Expect::default()
            },
        ),
        row(
            "a stream whose later message names another model is refused",
            renamed_table(),
            vec![
                Headers(grpc_call(stream, &[("mm-model-id", "linear")]), false),
                Body(first.clone(), false),
                Body(frame(&[field(1, b"other")]), false),
            ],
            Expect {
                actions: vec![Continue, Continue, Pause],
                reply: Some((3, "names model other")),
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some(renamed_first.clone()),
                ..Expect::default()
            },
        ),
        row(
            "a stream that ends inside a message is refused, and the cut message never goes",
            renamed_table(),
            vec![
                Headers(grpc_call(stream, &[("mm-model-id", "linear")]), false),
                Body([first.as_slice(), head].concat(), true),
            ],
            Expect {
                actions: vec![Continue, Pause],
                reply: Some((3, "malformed protobuf request")),
                upstream: Some("127.0.0.1:8001"),
                forwarded: Some(Vec::new()),
                ..Expect::default()
            },
        ),
        row(
            "a compressed message in a stream is refused",
            renamed_table(),
            vec![
                Headers(grpc_call(stream, &[("mm-model-id", "linear")]), false),
                Body([&[1u8][..], &first[1..]].concat(), false),
            ],
            Expect {
                actions: vec![Continue, Pause],
                reply: Some((3, "compressed")),
                upstream: Some("127.0.0.1:8001"),
                ..Expect::default()
            },
        ),
    ];
    for r in rows {
        check(r);
    }
}

#[test]
fn the_old_versions_last_request_is_reported_at_once() {
    let mut sim = Sim::new("", renamed_table());
    sim.run(&[Headers(post("/v2/models/linear/infer"), true)]);
    // The pool-manager was told the old version has a request in flight.
    let (report, _pending) = sim.worker.usage.take_report("test").unwrap();
    assert_eq!(report.entries[0].model, RENAMED);
    // The update moves on: the table now routes linear to yet another version.
    let mut newer = renamed_table();
    newer[0].upstream = Some("linear--ffff0000".into());
    let (table, _) = Table::from_wire(RoutingTable {
        aliases: vec![],
        epoch: "e".into(),
        generation: 2,
        models: newer,
    });
    assert!(sim.worker.table.replace(table));
    sim.host.take_ops();
    let (host, worker) = (&mut sim.host, &mut sim.worker);
    sim.stream.on_log(host, worker);
    assert!(
        sim.host
            .ops
            .iter()
            .any(|op| matches!(op, Op::SetTickPeriod(_))),
        "{:?}",
        sim.host.ops
    );
}

// ---- aliases ----

fn canary(targets: &[(&str, u32)]) -> mm_wire::AliasEntry {
    mm_wire::AliasEntry {
        name: "canary".into(),
        targets: targets
            .iter()
            .map(|(m, w)| mm_wire::AliasTarget {
                model: (*m).into(),
                weight: *w,
            })
            .collect(),
    }
}

#[test]
fn alias_rows() {
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    let message = frame(&[field(1, b"canary"), field(5, b"\x0a\x01x")]);
    let renamed = frame(&[field(1, b"linear"), field(5, b"\x0a\x01x")]);
    let served = |replica| {
        vec![
            ("x-mm-replica", Some(replica)),
            ("x-mm-served-model", Some("linear")),
            ("x-mm-served-version", Some("linear")),
        ]
    };
    let rows: Vec<(Row, Vec<(&str, u32)>)> = vec![
        (
            row(
                "warm alias: resolved in the table, renamed to the model, no route call",
                warm_table(),
                vec![
                    Headers(post("/v2/models/canary/infer"), false),
                    Body(V2_BODY.into(), true),
                    ResponseHeaders(ok_response(), false),
                ],
                Expect {
                    actions: vec![Continue, Continue, Continue],
                    upstream: Some("127.0.0.1:8000"),
                    request_headers: vec![(":path", Some("/v2/models/linear/infer"))],
                    response_headers: served("r0"),
                    in_flight: Some(vec![("linear", "r0")]),
                    ..Expect::default()
                },
            ),
            vec![("linear", 1)],
        ),
        (
            row(
                "alias to a cold model: the route call asks for the model, not the alias",
                vec![],
                vec![
                    Headers(post("/v2/models/canary/infer"), false),
                    Answer(Some(200), route_answer("r2", 7000, false)),
                    ResponseHeaders(ok_response(), false),
                ],
                Expect {
                    upstream: Some("127.0.0.1:7000"),
                    route_calls: vec!["/internal/v1/route/linear"],
                    request_headers: vec![(":path", Some("/v2/models/linear/infer"))],
                    response_headers: served("r2"),
                    table_has: vec![("linear", true), ("canary", false)],
                    ..Expect::default()
                },
            ),
            vec![("linear", 1)],
        ),
        (
            row(
                "alias the table does not know: the pool-manager resolves it",
                vec![],
                vec![
                    Headers(post("/v2/models/canary/infer"), false),
                    Answer(Some(200), route_answer("r2", 7000, false)),
                    ResponseHeaders(ok_response(), false),
                ],
                Expect {
                    upstream: Some("127.0.0.1:7000"),
                    route_calls: vec!["/internal/v1/route/canary"],
                    request_headers: vec![(":path", Some("/v2/models/linear/infer"))],
                    response_headers: served("r2"),
                    table_has: vec![("linear", false), ("canary", false)],
                    ..Expect::default()
                },
            ),
            vec![],
        ),
        (
            row(
                "gRPC by ModelMesh's vmodel header: the messages name the alias, then the model",
                warm_table(),
                vec![
                    Headers(grpc_call(infer, &[("mm-vmodel-id", "canary")]), false),
                    Body(message.clone(), true),
                ],
                Expect {
                    actions: vec![Continue, Continue],
                    upstream: Some("127.0.0.1:8001"),
                    forwarded: Some(renamed.clone()),
                    ..Expect::default()
                },
            ),
            vec![("linear", 1)],
        ),
        (
            row(
                "gRPC, alias only in the message: resolved once the message names it",
                warm_table(),
                vec![
                    Headers(grpc_call(infer, &[]), false),
                    Body(message.clone(), true),
                ],
                Expect {
                    actions: vec![Pause, Continue],
                    upstream: Some("127.0.0.1:8001"),
                    forwarded: Some(renamed.clone()),
                    ..Expect::default()
                },
            ),
            vec![("linear", 1)],
        ),
    ];
    for (row, targets) in rows {
        let aliases = if targets.is_empty() {
            vec![]
        } else {
            vec![canary(&targets)]
        };
        check_with_aliases(row, aliases);
    }
}

/// A route call's round trip, as the filter sees it (dispatch to answer on the host's
/// clock), is summed into `mm_filter_route_call_micros`; a table hit adds nothing.
#[test]
fn route_call_round_trip_is_counted_in_micros() {
    let mut sim = Sim::new("", vec![]);
    sim.step(Headers(post("/v2/models/linear/infer"), false));
    assert_eq!(sim.route_calls(), vec!["/internal/v1/route/linear"]);
    sim.host.now += 2_500_000;
    sim.step(Answer(Some(200), route_answer("r0", 8000, true)));
    assert_eq!(sim.upstreams(), vec!["127.0.0.1:8000"]);
    assert_eq!(sim.worker.counted(Metric::RouteCallMicros), 2_500);
    assert_eq!(sim.worker.counted(Metric::RouteCalls), 1);

    let mut warm = Sim::new("", warm_table());
    warm.step(Headers(post("/v2/models/linear/infer"), false));
    assert_eq!(warm.worker.counted(Metric::RouteCallMicros), 0);
}
