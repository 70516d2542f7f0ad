//! One client request, as a state machine over [`Host`]: the glue forwards each Proxy-Wasm
//! callback of the request to the matching `on_*` method, with the worker's shared state.
//!
//! Phases ([`Phase`]): a request starts [`Phase::New`]; its headers classify it (HTTP by
//! path, or a gRPC method) and either answer it ([`Phase::Replied`]), route it from the
//! worker's table ([`Phase::Routed`]), hold it for the route call ([`Phase::Routing`]) or,
//! for a gRPC call that names its model only in its first message, hold it until that
//! message has arrived ([`Phase::AwaitingModel`]). A routed request may still hold its body
//! (KServe V1, translated to V2 once whole). The response is then watched for replica
//! failures ([`response`]) and, for V1, translated back.

mod head;
mod metadata;
mod rename;
mod response;

use std::rc::Rc;

use mm_wire::TensorSpec;

use crate::decision::{self, Decision};
use crate::grpc::{self, GrpcError, GrpcRoute, MessageScan};
use crate::host::{Action, Buffer, Host, Map};
use crate::metrics::Metric;
use crate::reply::Reply;
use crate::route::{self, ModelApi, Route};
use crate::table::Target;
use crate::v1;
use crate::worker::Worker;
use crate::{control, debug, error, info, warn};

use head::RequestHead;
use response::ResponseBody;

/// Most bytes of a gRPC request body read in one host call while checking its messages;
/// the bytes of fields other than the model name are passed over without being read.
const GRPC_READ_BYTES: usize = 16 * 1024;

/// Header of Triton's binary tensor extension: the length of the JSON part of the body.
const INFERENCE_HEADER_LENGTH: &str = "inference-header-content-length";

/// Where a request is in its life. See the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No headers seen yet.
    New,
    /// A gRPC call held until its first message names the model.
    AwaitingModel,
    /// Held while the route call is out.
    Routing,
    /// The upstream is set: the request goes to its replica (a KServe V1 body once
    /// translated).
    Routed,
    /// Answered by the gateway itself; nothing more is done.
    Replied,
}

/// What a request is, as far as routing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Not classified yet.
    Unknown,
    /// An HTTP (KServe V2 or V1) request: the endpoint it calls when it names a model
    /// (`None` for a server-level path), and whether it names a version.
    Http {
        api: Option<ModelApi>,
        versioned: bool,
    },
    /// A call of the KServe V2 gRPC service; `per_model` when it needs a replica with the
    /// model (else any replica will do).
    Grpc { per_model: bool },
}

/// Progress of a KServe V1 `:predict` request, which is translated to V2 once both its
/// body and its model's inputs are known.
#[derive(Debug, Default)]
struct V1Request {
    /// The model's inputs, once the table or the route call gave them.
    inputs: Option<Rc<[TensorSpec]>>,
    /// The body's size once it has all arrived (Envoy buffers it).
    body_end: Option<usize>,
}

/// One client request. See the module doc.
#[derive(Debug)]
pub struct Stream {
    /// The context id, for logs.
    id: u32,
    phase: Phase,
    kind: Kind,
    /// The model the request names, once known.
    model: Option<String>,
    /// Where the request was sent, once routed.
    target: Option<Rc<Target>>,
    /// Whether the request is counted in flight under (model, target): finished exactly
    /// once, by `on_log` (or, should Envoy never call it, by the glue's drop).
    counted: bool,
    /// Set for a KServe V1 `:predict` request.
    v1: Option<V1Request>,
    /// What to do with the response body.
    response: ResponseBody,
    /// Request body bytes already passed on upstream (Envoy hands the filter only what it
    /// buffered since the last `Continue`).
    body_passed: u64,
    /// The request's `content-length`, when it has one.
    declared: Option<u64>,
    /// `Inference-Header-Content-Length` still to check against the body's size, once the
    /// body has all arrived (a request without `content-length`).
    binary_header: Option<u64>,
    /// Request body bytes Envoy holds for the filter (the size of the last chunk callback
    /// answered `Pause`): they go upstream on a resume.
    held: usize,
    /// For a per-model gRPC call: the check that every message names the routed model,
    /// and how many bytes of the held body it has read.
    messages: Option<(MessageScan, usize)>,
    /// Set for a metadata or readiness request: what it asks (a miss makes the metadata
    /// call, which never loads for readiness, instead of the route call).
    asked: Option<crate::metadata::Asked>,
    /// The version an HTTP request's path names.
    version: Option<String>,
    /// The model's Triton-side name when the table or the route call gave one: the
    /// request goes out renamed to it (see [`rename`]).
    upstream: Option<Rc<str>>,
    /// A gRPC call of `ModelStreamInfer`.
    streaming: bool,
    /// The alias the request named, when it did: `model` is then the model it was
    /// resolved to.
    alias: Option<String>,
    /// The request body has ended (end of stream or trailers seen).
    body_ended: bool,
    /// For a renamed `ModelStreamInfer` call: its messages renamed as they pass.
    frames: rename::FrameRename,
    /// When the route call was dispatched (host clock, ns): its round trip is counted
    /// into [`Metric::RouteCallMicros`] when the answer comes.
    route_sent: Option<u64>,
}

impl Stream {
    /// A request of context `id`, before its headers.
    pub fn new(id: u32) -> Stream {
        Stream {
            id,
            phase: Phase::New,
            kind: Kind::Unknown,
            model: None,
            target: None,
            counted: false,
            v1: None,
            response: ResponseBody::Pass,
            body_passed: 0,
            declared: None,
            binary_header: None,
            held: 0,
            messages: None,
            asked: None,
            version: None,
            upstream: None,
            streaming: false,
            alias: None,
            body_ended: false,
            frames: rename::FrameRename::default(),
            route_sent: None,
        }
    }

    /// Where the request is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the request is still counted in flight.
    pub fn is_counted(&self) -> bool {
        self.counted
    }

    /// The request headers: classify and route (or answer, or hold) the request.
    pub fn on_request_headers(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        end_of_stream: bool,
    ) -> Action {
        let head = match RequestHead::read(host) {
            Ok(head) => head,
            Err(err) => {
                error!(host, "[{}] cannot read the request headers: {err}", self.id);
                return self.refuse(host, worker, Reply::CannotSanitize);
            }
        };
        if let Err(err) = self.strip_reserved_headers(host, &head) {
            error!(
                host,
                "[{}] cannot remove client routing headers: {err}", self.id
            );
            return self.refuse(host, worker, Reply::CannotSanitize);
        }
        self.declared = head.content_length();
        if self.body_too_large(host, worker, self.declared.unwrap_or(0)) {
            return Action::Pause;
        }
        if let Some(route) = grpc::parse_path(head.path()) {
            // Only a gRPC request is one (Envoy's gRPC route needs the content type too).
            let is_grpc = head
                .content_type()
                .is_some_and(|ct| ct.starts_with(b"application/grpc"));
            if is_grpc {
                return self.grpc_request_headers(host, worker, &head, route, end_of_stream);
            }
        }
        self.http_request_headers(host, worker, &head, end_of_stream)
    }

    /// A chunk of the request body (`body_size` bytes buffered since the request last went
    /// on).
    pub fn on_request_body(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if self.phase == Phase::Replied {
            return Action::Pause;
        }
        self.body_ended |= end_of_stream;
        // Bodies without a content-length are counted as they stream.
        let total = self.body_passed.saturating_add(body_size as u64);
        if self.body_too_large(host, worker, total) {
            return Action::Pause;
        }
        if end_of_stream && self.binary_header.is_some_and(|json| json > total) {
            return self.refuse(host, worker, Reply::BadInferenceHeaderLength);
        }
        let action = self.request_body(host, worker, body_size, end_of_stream);
        match action {
            Action::Continue => self.body_let_go(total),
            Action::Pause => self.held = body_size,
        }
        action
    }

    /// The held body went upstream: `total` bytes have now passed.
    fn body_let_go(&mut self, total: u64) {
        self.body_passed = total;
        self.held = 0;
        if let Some((_, read)) = &mut self.messages {
            *read = 0;
        }
    }

    /// The request trailers: the body has ended (without an end-of-stream chunk). A held
    /// request stays held (going on here would send it upstream with no address); the
    /// checks due at the body's end run now.
    pub fn on_request_trailers(&mut self, host: &mut impl Host, worker: &mut Worker) -> Action {
        let held = self.held;
        let total = self.body_passed.saturating_add(held as u64);
        self.body_ended = true;
        match self.phase {
            Phase::Replied => return Action::Pause,
            Phase::New => return Action::Continue,
            Phase::AwaitingModel | Phase::Routing | Phase::Routed => {}
        }
        if self.binary_header.is_some_and(|json| json > total) {
            return self.refuse(host, worker, Reply::BadInferenceHeaderLength);
        }
        if self.messages.is_some() {
            // Everything held was read by the body callbacks; the calls ends here.
            let action = self.grpc_request_body(host, worker, held, true);
            if action == Action::Pause || self.phase != Phase::Routed {
                return Action::Pause;
            }
            return Action::Continue;
        }
        if self.phase == Phase::Routing {
            // The route call's answer translates a V1 body, and lets the request go.
            if let Some(v1) = &mut self.v1 {
                v1.body_end = Some(held);
            }
            return Action::Pause;
        }
        if self.v1.as_ref().is_some_and(|v1| v1.body_end.is_none()) {
            if let Some(v1) = &mut self.v1 {
                v1.body_end = Some(held);
            }
            if !self.translate_v1_request(host, worker, held) {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    /// The answer to the route call: forward the held request, or answer it.
    pub fn on_route_answer(&mut self, host: &mut impl Host, worker: &mut Worker, body_size: usize) {
        if self.phase != Phase::Routing {
            debug!(
                host,
                "[{}] route answer after the request moved on", self.id
            );
            return;
        }
        if let Some(asked) = self.asked {
            return self.on_metadata_answer(host, worker, asked, body_size);
        }
        if let Some(sent) = self.route_sent.take() {
            let micros = host.now().saturating_sub(sent) / 1_000;
            worker.count_n(Metric::RouteCallMicros, micros);
        }
        let status = control::answer_status(host);
        let body = control::answer_body(host, body_size, decision::MAX_ROUTE_BODY_BYTES);
        debug!(
            host,
            "[{}] route call answered: status {status:?}, {body_size} body bytes", self.id
        );
        match decision::decide(status, &body) {
            Decision::Forward {
                target,
                inputs,
                upstream,
                model,
            } => {
                let mut inputs = inputs;
                if let Some(chosen) = model.filter(|m| Some(m) != self.model.as_ref()) {
                    // The pool-manager resolved an alias: the request goes to the model
                    // it chose, renamed; the table keeps routing the alias by weight.
                    self.upstream = upstream.or_else(|| Some(Rc::from(chosen.as_str())));
                    self.alias = self.model.take();
                    self.model = Some(chosen);
                    self.forward(host, worker, target, inputs);
                    return;
                }
                self.upstream = match &self.alias {
                    Some(_) => upstream
                        .clone()
                        .or_else(|| self.model.as_deref().map(Rc::from)),
                    None => upstream.clone(),
                };
                if let Some(model) = &self.model {
                    if let Err(err) =
                        worker
                            .table
                            .insert(model, Rc::clone(&target), inputs.clone(), upstream)
                    {
                        debug!(host, "[{}] route not kept in the table: {err}", self.id);
                    }
                    if inputs.is_none() {
                        inputs = worker.table.inputs(model);
                    }
                }
                self.forward(host, worker, target, inputs);
            }
            Decision::Reply(reply) => self.route_refused(host, worker, reply),
        }
    }

    /// The end of the request's life (Envoy's `on_log`): it is no longer in flight.
    pub fn on_log(&mut self, host: &mut impl Host, worker: &mut Worker) {
        self.count_finish(host, worker);
    }

    // ---- classification ----

    /// Removes every header a client may not set (see [`route::is_reserved_header`]).
    fn strip_reserved_headers(
        &self,
        host: &mut impl Host,
        head: &RequestHead,
    ) -> Result<(), crate::host::HostError> {
        for name in head.reserved() {
            debug!(host, "[{}] removing client header {name}", self.id);
            host.remove_header(Map::RequestHeaders, name)?;
        }
        Ok(())
    }

    /// Routes an HTTP request by its path.
    fn http_request_headers(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        head: &RequestHead,
        end_of_stream: bool,
    ) -> Action {
        let route = match route::parse(head.path()) {
            Ok(route) => route,
            Err(err) => {
                debug!(host, "[{}] refused with {}: {err}", self.id, err.status());
                return self.refuse(host, worker, Reply::BadPath(err));
            }
        };
        let (name, version, api) = match route {
            Route::Server => {
                self.kind = Kind::Http {
                    api: None,
                    versioned: false,
                };
                if let Err(reply) = self.set_content_type(host, head) {
                    return self.refuse(host, worker, reply);
                }
                return self.route_call(host, worker);
            }
            Route::Model {
                name,
                version,
                kind,
            } => (name, version, kind),
        };
        self.kind = Kind::Http {
            api: Some(api),
            versioned: version.is_some(),
        };
        self.model = Some(name);
        self.asked = crate::metadata::Asked::of_http(api);
        self.version = version;
        if api == ModelApi::V1Predict {
            if end_of_stream {
                return self.refuse(host, worker, Reply::V1BodyRequired);
            }
            if let Err(err) = self.prepare_v1(host) {
                error!(host, "[{}] cannot rewrite the V1 request: {err}", self.id);
                return self.refuse(host, worker, Reply::CannotTranslate);
            }
        } else if let Err(reply) = self.set_content_type(host, head) {
            return self.refuse(host, worker, reply);
        }
        self.route_model(host, worker)
    }

    /// Gives the request the content type of what it is, whatever the client said, so no
    /// client reaches Triton's form parser (which crashes a replica on a large
    /// `application/x-www-form-urlencoded` body): `application/octet-stream` for the binary
    /// tensor extension (`Inference-Header-Content-Length`, which must then be a number no
    /// larger than the body), `application/json` otherwise.
    fn set_content_type(&mut self, host: &mut impl Host, head: &RequestHead) -> Result<(), Reply> {
        let wanted = match head.binary_header_length() {
            Some(value) => {
                let json = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or(Reply::BadInferenceHeaderLength)?;
                match self.declared {
                    Some(body) if json > body => return Err(Reply::BadInferenceHeaderLength),
                    Some(_) => {}
                    None => self.binary_header = Some(json),
                }
                "application/octet-stream"
            }
            None => "application/json",
        };
        if head.content_type() != Some(wanted.as_bytes()) {
            if let Err(err) = host.set_header(Map::RequestHeaders, "content-type", wanted) {
                error!(host, "[{}] cannot set the content type: {err}", self.id);
                return Err(Reply::CannotSanitize);
            }
        }
        Ok(())
    }

    /// Rewrites a KServe V1 `:predict` request's headers for its V2 translation: `:path`
    /// becomes the model's V2 infer path, `content-length` goes (the body changes), and so
    /// does `accept-encoding`: the answer must come back as JSON the filter can translate
    /// (python-requests and httpx ask for gzip by default, and Triton then compresses).
    fn prepare_v1(&mut self, host: &mut impl Host) -> Result<(), crate::host::HostError> {
        let model = self.model.as_deref().unwrap_or_default();
        let path = format!("/v2/models/{model}/infer");
        host.set_header(Map::RequestHeaders, ":path", &path)?;
        host.remove_header(Map::RequestHeaders, "content-length")?;
        host.remove_header(Map::RequestHeaders, "accept-encoding")?;
        host.remove_header(Map::RequestHeaders, INFERENCE_HEADER_LENGTH)?;
        host.set_header(Map::RequestHeaders, "content-type", "application/json")?;
        self.v1 = Some(V1Request::default());
        Ok(())
    }

    /// Routes a call of the KServe V2 gRPC service: any replica for server methods; for
    /// per-model methods the model from a header, else from the request message (the
    /// request stays held until enough of the body has arrived).
    fn grpc_request_headers(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        head: &RequestHead,
        route: GrpcRoute,
        end_of_stream: bool,
    ) -> Action {
        worker.count(Metric::GrpcRequests);
        let per_model = match route {
            GrpcRoute::Refused(method) => {
                self.kind = Kind::Grpc { per_model: false };
                debug!(host, "[{}] gRPC method {method} refused", self.id);
                return self.refuse(host, worker, Reply::MethodRefused(method));
            }
            GrpcRoute::AnyReplica(_) => false,
            GrpcRoute::Model(method) => {
                self.asked = crate::metadata::Asked::of_grpc(method);
                self.streaming = method == grpc::GrpcMethod::ModelStreamInfer;
                true
            }
        };
        self.kind = Kind::Grpc { per_model };
        if !per_model {
            return self.route_call(host, worker);
        }
        match grpc::model_from_headers(|name| head.text(name).map(str::to_owned)) {
            Ok(Some(model)) => {
                self.messages = Some((MessageScan::new(Some(model.clone())), 0));
                self.model = Some(model);
                self.route_model(host, worker)
            }
            // No message: the model can only come from a header.
            Ok(None) if end_of_stream => {
                self.refuse(host, worker, Reply::Grpc(GrpcError::MissingModel))
            }
            // The model is in the first message, which Envoy hands over while the request
            // is held only with allow_on_headers_stop_iteration: without it the call would
            // wait for the route timeout.
            Ok(None) if !worker.config().bodies_while_paused => {
                self.refuse(host, worker, Reply::BodyUnavailable)
            }
            Ok(None) => {
                self.messages = Some((MessageScan::new(None), 0));
                self.phase = Phase::AwaitingModel;
                Action::Pause
            }
            Err(err) => self.refuse(host, worker, Reply::Grpc(err)),
        }
    }

    // ---- routing ----

    /// Routes a request whose model is known: from the table, else with a route call.
    fn route_model(&mut self, host: &mut impl Host, worker: &mut Worker) -> Action {
        let grpc = self.is_grpc();
        let Some(model) = self.model.as_deref() else {
            return self.route_call(host, worker);
        };
        let Some(route) = worker.table.route(model, grpc) else {
            if self.alias.is_none() {
                if let Some(chosen) = worker.table.pick_alias(model) {
                    let chosen = chosen.to_string();
                    debug!(host, "[{}] alias {model} -> model {chosen}", self.id);
                    self.alias = Some(model.to_string());
                    self.model = Some(chosen);
                    return self.route_model(host, worker);
                }
            }
            if let Some(asked) = self.asked {
                return self.metadata_call(host, worker, asked);
            }
            return self.route_call(host, worker);
        };
        worker.count(Metric::TableHits);
        if self.asked == Some(crate::metadata::Asked::V1Ready) {
            // Triton has no V1 API: the table says the model is loaded, so it is ready.
            return self.answer_v1_ready(host, false);
        }
        let Some(target) = route.target else {
            // Only for gRPC: the model's copies have no gRPC endpoint.
            let reply = Reply::NoGrpcEndpoint(model.to_owned());
            return self.refuse(host, worker, reply);
        };
        if let Some(v1) = &mut self.v1 {
            let Some(inputs) = route.inputs else {
                return self.refuse(host, worker, Reply::NoMetadata);
            };
            v1.inputs = Some(inputs);
        }
        // A request that named an alias goes out renamed to the chosen model.
        self.upstream = route.upstream.or_else(|| {
            self.alias
                .as_ref()
                .and_then(|_| self.model.as_deref().map(Rc::from))
        });
        if !self.set_upstream(host, worker, target) {
            return Action::Pause;
        }
        Action::Continue
    }

    /// Makes the route call for the request's model (or for any replica); answers 503 if
    /// it cannot be dispatched. The request stays held until the answer.
    fn route_call(&mut self, host: &mut impl Host, worker: &mut Worker) -> Action {
        worker.count(Metric::RouteCalls);
        let path = route::pool_manager_path_for(self.model.as_deref());
        debug!(
            host,
            "[{}] model {}: route call to {path}",
            self.id,
            self.model_for_log()
        );
        let timeout = worker.config().route_timeout();
        match control::get(host, worker.config(), &path, timeout) {
            Ok(token) => {
                debug!(host, "[{}] route call {token} dispatched", self.id);
                self.phase = Phase::Routing;
                self.route_sent = Some(host.now());
                Action::Pause
            }
            Err(err) => {
                error!(
                    host,
                    "[{}] model {}: cannot call cluster {}: {err}",
                    self.id,
                    self.model_for_log(),
                    worker.config().pool_manager_cluster
                );
                self.refuse(host, worker, Reply::PoolManagerUnreachable)
            }
        }
    }

    /// Applies a forward decision and lets the request go (a V1 request whose body is still
    /// coming goes when `on_request_body` has translated it).
    fn forward(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        target: Rc<Target>,
        inputs: Option<Rc<[TensorSpec]>>,
    ) {
        if let Some(v1) = &mut self.v1 {
            let Some(inputs) = inputs else {
                self.refuse(host, worker, Reply::NoMetadata);
                return;
            };
            v1.inputs = Some(inputs);
        }
        if !self.set_upstream(host, worker, target) {
            return;
        }
        match &self.v1 {
            // The body is all here (buffered by Envoy): translate it now, then go.
            Some(V1Request {
                body_end: Some(size),
                ..
            }) => {
                let size = *size;
                if self.translate_v1_request(host, worker, size) {
                    self.resume(host);
                }
            }
            // The body is still coming: on_request_body translates it at its end and lets
            // the request go then...
            Some(_) if worker.config().bodies_while_paused => {}
            // A renamed stream goes now, with the frames held so far renamed.
            None if self.renames_messages() && self.streaming => {
                let (held, ended) = (self.held, self.body_ended);
                if held == 0 || self.rename_frames(host, worker, held, ended) {
                    self.resume(host);
                }
            }
            // A renamed gRPC call goes once its held messages are renamed: now if the body
            // is all here, else at its end (nothing held yet: the headers go now).
            None if self.renames_messages() => {
                if self.body_ended {
                    if self.rename_messages(host, worker, self.held) {
                        self.resume(host);
                    }
                } else if self.held == 0 || !worker.config().bodies_while_paused {
                    self.resume(host);
                }
            }
            // ...unless Envoy hands the body over only once the request goes: then the
            // headers go now and the body is held and translated after them.
            Some(_) | None => self.resume(host),
        }
    }

    /// The route call gave no route: answer, except that a request for any replica falls
    /// back to an endpoint of the table when the pool-manager cannot be reached.
    fn route_refused(&mut self, host: &mut impl Host, worker: &mut Worker, reply: Reply) {
        if reply == Reply::PoolManagerUnreachable && self.model.is_none() {
            if let Some(target) = worker.table.any(self.is_grpc()) {
                worker.count(Metric::ErrorsPoolManagerUnreachable);
                info!(
                    host,
                    "[{}] pool-manager unreachable: server request to replica {} from the table",
                    self.id,
                    target.replica()
                );
                self.forward(host, worker, target, None);
                return;
            }
        }
        info!(
            host,
            "[{}] model {}: replying {}: {reply}",
            self.id,
            self.model_for_log(),
            reply.status()
        );
        self.refuse(host, worker, reply);
    }

    /// Points the ORIGINAL_DST cluster at `target` (its gRPC address for a gRPC call) and
    /// counts the request. Returns false, after answering, if that is not possible.
    fn set_upstream(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        target: Rc<Target>,
    ) -> bool {
        let address = if self.is_grpc() {
            match target.grpc_address() {
                Some(address) => address,
                None => {
                    warn!(
                        host,
                        "[{}] model {}: replica {} has no gRPC endpoint",
                        self.id,
                        self.model_for_log(),
                        target.replica()
                    );
                    let reply = Reply::ReplicaWithoutGrpc(target.replica().to_owned());
                    self.refuse(host, worker, reply);
                    return false;
                }
            }
        } else {
            target.address()
        };
        if let Err(err) = host.set_upstream(address) {
            error!(
                host,
                "[{}] model {} replica {}: set_envoy_filter_state({address}) failed: {err}",
                self.id,
                self.model_for_log(),
                target.replica()
            );
            self.refuse(host, worker, Reply::CannotSetUpstream);
            return false;
        }
        debug!(
            host,
            "[{}] model {} -> replica {} at {address}",
            self.id,
            self.model_for_log(),
            target.replica()
        );
        if let Some(upstream) = self.upstream.clone() {
            if !self.rename_request(host, worker, &upstream) {
                return false;
            }
        }
        if let Some(served) = self.served() {
            worker.usage.start(served, target.replica());
            self.counted = true;
        }
        self.target = Some(target);
        self.phase = Phase::Routed;
        true
    }

    /// Renames the request to the model's Triton-side name: the HTTP path now; for gRPC,
    /// the messages (a unary call's once all held, see [`Stream::rename_messages`]; a
    /// stream's as they pass, see [`Stream::rename_frames`]), and the content length goes
    /// (the body changes). Returns false, after answering, if that is not possible.
    fn rename_request(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        upstream: &str,
    ) -> bool {
        if self.is_grpc() {
            if let Err(err) = host.remove_header(Map::RequestHeaders, "content-length") {
                debug!(host, "[{}] content-length kept: {err}", self.id);
            }
            return true;
        }
        let path = host
            .header(Map::RequestHeaders, ":path")
            .unwrap_or_default();
        let renamed = match rename::http_path(&path, upstream) {
            Some(p) => host
                .set_header(Map::RequestHeaders, ":path", &p)
                .map_err(|e| e.to_string()),
            None => Err("the path has no model segment".to_owned()),
        };
        if let Err(err) = renamed {
            error!(
                host,
                "[{}] cannot rename the request to {upstream}: {err}", self.id
            );
            self.refuse(host, worker, Reply::CannotRename);
            return false;
        }
        true
    }

    /// Whether the request's gRPC messages are to be renamed before they go.
    fn renames_messages(&self) -> bool {
        self.upstream.is_some() && self.messages.is_some()
    }

    /// Renames the `body_size` held bytes of a gRPC call (all its messages). Returns false,
    /// after answering, if that is not possible.
    fn rename_messages(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        body_size: usize,
    ) -> bool {
        let Some(upstream) = self.upstream.clone() else {
            return true;
        };
        let renamed = host
            .body(Buffer::RequestBody, 0, body_size)
            .map_err(|err| err.to_string())
            .and_then(|body| rename::grpc_body(&body, &upstream).map_err(|e| e.to_string()))
            .and_then(|renamed| {
                host.set_body(Buffer::RequestBody, 0, body_size, &renamed)
                    .map_err(|e| e.to_string())
            });
        if let Err(err) = renamed {
            error!(host, "[{}] cannot rename the gRPC messages: {err}", self.id);
            self.refuse(host, worker, Reply::CannotRename);
            return false;
        }
        true
    }

    /// Renames the frames that the `body_size` held bytes of a streaming call complete,
    /// and lets them go; the start of a cut frame is kept (out of Envoy's buffer) for the
    /// next chunk. An empty chunk (a half-close) costs no host call. Returns false, after
    /// answering, if that is not possible.
    fn rename_frames(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        body_size: usize,
        end_of_stream: bool,
    ) -> bool {
        let Some(upstream) = self.upstream.clone() else {
            return true;
        };
        if body_size > 0 {
            let chunk = match host.body(Buffer::RequestBody, 0, body_size) {
                Ok(chunk) => chunk,
                Err(err) => return self.cannot_rename(host, worker, &err),
            };
            let renamed = match self.frames.chunk(&chunk, &upstream) {
                Ok(renamed) => renamed,
                Err(err) => {
                    self.refuse(host, worker, Reply::Grpc(err));
                    return false;
                }
            };
            if let Err(err) = host.set_body(Buffer::RequestBody, 0, body_size, &renamed) {
                return self.cannot_rename(host, worker, &err);
            }
        }
        if end_of_stream && self.frames.held() > 0 {
            let err = GrpcError::Malformed("the body ends inside a message");
            self.refuse(host, worker, Reply::Grpc(err));
            return false;
        }
        true
    }

    /// The host would not give or take the body of a renamed call: answers 500. Returns false.
    fn cannot_rename(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        err: &crate::host::HostError,
    ) -> bool {
        error!(host, "[{}] cannot rename the gRPC messages: {err}", self.id);
        self.refuse(host, worker, Reply::CannotRename);
        false
    }

    /// The name the request is counted and reported under: the model's Triton-side name
    /// when it has one, else the model the client named.
    fn served(&self) -> Option<&str> {
        self.upstream.as_deref().or(self.model.as_deref())
    }

    /// Lets the held request go, with the body Envoy held for it.
    fn resume(&mut self, host: &mut impl Host) {
        if let Err(err) = host.resume_request() {
            error!(host, "[{}] cannot resume the request: {err}", self.id);
        }
        let total = self.body_passed.saturating_add(self.held as u64);
        self.body_let_go(total);
    }

    // ---- the request body ----

    fn request_body(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if self.messages.is_some() {
            return self.grpc_request_body(host, worker, body_size, end_of_stream);
        }
        let Some(v1) = &mut self.v1 else {
            return if self.phase == Phase::Routing {
                Action::Pause
            } else {
                Action::Continue
            };
        };
        if !end_of_stream {
            // Envoy buffers the body until the end (up to its buffer limit).
            return Action::Pause;
        }
        v1.body_end = Some(body_size);
        if self.phase == Phase::Routing {
            // The route call's answer translates the buffered body.
            return Action::Pause;
        }
        if self.translate_v1_request(host, worker, body_size) {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    /// Checks the new bytes of a per-model gRPC call's body (`body_size` bytes held):
    /// every message must name the routed model. While the model is still to be read from
    /// the first message, routes the call once it is known.
    fn grpc_request_body(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if let Err(err) = self.check_messages(host, body_size, end_of_stream) {
            debug!(host, "[{}] gRPC request refused: {err}", self.id);
            return self.refuse(host, worker, Reply::Grpc(err));
        }
        if self.phase == Phase::AwaitingModel {
            let Some(model) = self.messages.as_ref().and_then(|(m, _)| m.model()) else {
                return Action::Pause;
            };
            let model = model.to_owned();
            debug!(
                host,
                "[{}] gRPC model {model} from the request message", self.id
            );
            self.model = Some(model);
            // Routed from the table: Continue releases the held headers and the body.
            let action = self.route_model(host, worker);
            if action == Action::Pause || !self.renames_messages() {
                return action;
            }
        }
        match self.phase {
            Phase::Routing => Action::Pause,
            // A renamed stream's messages go as they arrive, renamed.
            Phase::Routed if self.renames_messages() && self.streaming => {
                if self.rename_frames(host, worker, body_size, end_of_stream) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            // A renamed unary call's message is held to the end of the body, then renamed.
            Phase::Routed if self.renames_messages() => {
                if !end_of_stream {
                    Action::Pause
                } else if self.rename_messages(host, worker, body_size) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            _ => Action::Continue,
        }
    }

    /// Feeds the held body's bytes not read yet to the message check; bytes of fields it
    /// skips are never read from the host.
    fn check_messages(
        &mut self,
        host: &mut impl Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Result<(), GrpcError> {
        let Some((scan, read)) = &mut self.messages else {
            return Ok(());
        };
        while *read < body_size {
            let left = body_size - *read;
            let skip = usize::try_from(scan.skippable())
                .unwrap_or(usize::MAX)
                .min(left);
            if skip > 0 {
                scan.skip(skip as u64)?;
                *read += skip;
                continue;
            }
            let bytes = host
                .body(Buffer::RequestBody, *read, left.min(GRPC_READ_BYTES))
                .unwrap_or_default();
            if bytes.is_empty() {
                break;
            }
            scan.feed(&bytes)?;
            *read += bytes.len();
        }
        if end_of_stream {
            scan.finish()?;
        }
        Ok(())
    }

    /// Translates the buffered V1 request body (`body_size` bytes) to V2 in place. Answers
    /// 400 (the client's body), 503 (no inputs) or 500 and returns false if it could not.
    fn translate_v1_request(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        body_size: usize,
    ) -> bool {
        let Some(inputs) = self.v1.as_ref().and_then(|v1| v1.inputs.clone()) else {
            self.refuse(host, worker, Reply::NoMetadata);
            return false;
        };
        let body = match host.body(Buffer::RequestBody, 0, body_size) {
            Ok(body) => body,
            Err(err) => {
                error!(host, "[{}] cannot read the V1 request body: {err}", self.id);
                self.refuse(host, worker, Reply::CannotTranslate);
                return false;
            }
        };
        let translated = match v1::v1_request_to_v2(&body, &inputs) {
            Ok(translated) => translated,
            Err(err) => {
                debug!(host, "[{}] V1 request refused: {err}", self.id);
                self.refuse(host, worker, Reply::V1Request(err));
                return false;
            }
        };
        if let Err(err) = host.set_body(Buffer::RequestBody, 0, body_size, &translated) {
            error!(
                host,
                "[{}] cannot replace the V1 request body: {err}", self.id
            );
            self.refuse(host, worker, Reply::CannotTranslate);
            return false;
        }
        worker.count(Metric::V1Translations);
        debug!(
            host,
            "[{}] V1 request translated: {} -> {} bytes",
            self.id,
            body.len(),
            translated.len()
        );
        true
    }

    /// Refuses a request whose body is over `max_request_bytes`, with 413.
    fn body_too_large(&mut self, host: &mut impl Host, worker: &mut Worker, bytes: u64) -> bool {
        let limit = worker.config().max_request_bytes;
        if bytes <= limit {
            return false;
        }
        info!(
            host,
            "[{}] request body of {bytes} bytes refused (limit {limit})", self.id
        );
        self.refuse(host, worker, Reply::TooLarge { limit });
        true
    }

    // ---- answers and accounting ----

    /// Answers the client, at most once per request, and counts the reply's metric.
    /// Returns `Pause`: a refused request goes nowhere.
    fn refuse(&mut self, host: &mut impl Host, worker: &mut Worker, reply: Reply) -> Action {
        if self.phase == Phase::Replied {
            warn!(host, "[{}] second local reply dropped: {reply}", self.id);
            return Action::Pause;
        }
        self.phase = Phase::Replied;
        if let Some(metric) = reply.metric() {
            worker.count(metric);
        }
        let rendered = reply.render(self.is_grpc());
        if let Err(err) = host.reply(
            rendered.status,
            &rendered.headers(),
            rendered.body.as_deref(),
        ) {
            error!(
                host,
                "[{}] cannot send the {} reply: {err}", self.id, rendered.status
            );
        }
        Action::Pause
    }

    /// Counts the end of this request, if it was counted; a second call does nothing.
    fn count_finish(&mut self, host: &mut impl Host, worker: &mut Worker) {
        if !std::mem::take(&mut self.counted) {
            return;
        }
        if let (Some(model), Some(served), Some(target)) =
            (&self.model, self.served(), &self.target)
        {
            if worker.usage.finish(served, target.replica()) {
                worker.ended_last_request(host, model, served);
            }
        }
    }

    fn is_grpc(&self) -> bool {
        matches!(self.kind, Kind::Grpc { .. })
    }

    fn model_for_log(&self) -> &str {
        self.model.as_deref().unwrap_or("-")
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod alloc_tests;
