//! The response side of a routed request: which replica served it (a header for operators
//! and tests), whether the replica failed (unreachable, or without the model: the worker's
//! table drops it and a failure report goes to the pool-manager), and the KServe V1
//! translation of a V2 answer.

use mm_wire::FailureKind;

use super::{Kind, Phase, Stream};
use crate::decision::{parse_status, render_error_body};
use crate::failure;
use crate::grpc;
use crate::host::{Action, Buffer, Host, Map};
use crate::metrics::Metric;
use crate::route::{self, ModelApi};
use crate::table::Target;
use crate::v1;
use crate::worker::Worker;
use crate::{error, warn};

/// What the filter does with the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ResponseBody {
    /// Nothing: it streams through.
    Pass,
    /// Read it (it is small) to see whether the replica says the model is missing.
    Inspect { status: u16, api: ModelApi },
    /// Envoy's own connect-failure reply: replace its text with this JSON.
    Replace(Vec<u8>),
    /// A carrier's `ServerLive` answer: replace its message with this gRPC frame (the
    /// answer for a model loaded nowhere, see [`crate::metadata`]).
    Carry(Vec<u8>),
    /// A V2 infer response to a KServe V1 request: translate it to V1. `headers_held`: the
    /// response headers wait for the translation (which can then turn the answer into a
    /// 502); without bodies while paused they go first, and a failed translation can only
    /// replace the body.
    V1Translate { headers_held: bool },
}

impl Stream {
    /// The response headers: names the replica, watches for its failures, and holds the
    /// headers of a V1 answer until its body is translated.
    pub fn on_response_headers(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        end_of_stream: bool,
    ) -> Action {
        if self.phase == Phase::Replied {
            return Action::Continue;
        }
        let Some(target) = self.target.clone() else {
            return Action::Continue;
        };
        if worker.config().replica_header {
            self.name_replica(host, &target);
        }
        if let (Some(upstream), Some(model)) = (&self.upstream, &self.model) {
            // Only renamed requests say so: the body's `model_name` is the Triton-side name.
            for (name, value) in [
                (route::SERVED_MODEL_HEADER, &**model),
                (route::SERVED_VERSION_HEADER, &**upstream),
            ] {
                if let Err(err) = host.set_header(Map::ResponseHeaders, name, value) {
                    warn!(host, "[{}] cannot add {name}: {err}", self.id);
                }
            }
        }
        self.watch_response(host, worker, target.replica(), end_of_stream);
        // A V1 translation may turn the answer into a 502: hold the headers until then
        // (Envoy hands the body over while they are held only with
        // `allow_on_headers_stop_iteration`).
        if self.response == (ResponseBody::V1Translate { headers_held: true }) {
            return Action::Pause;
        }
        Action::Continue
    }

    /// Names the replica that served the request in the response headers.
    fn name_replica(&self, host: &mut impl Host, target: &Target) {
        let header = route::REPLICA_HEADER;
        if let Err(err) = host.set_header(Map::ResponseHeaders, header, target.replica()) {
            warn!(host, "[{}] cannot add {header}: {err}", self.id);
        }
    }

    /// A chunk of the response body (`body_size` bytes buffered since it last went on).
    pub fn on_response_body(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        match &self.response {
            ResponseBody::Pass => Action::Continue,
            ResponseBody::Inspect { status, api } => {
                if body_size > failure::MAX_ERROR_BODY_BYTES {
                    self.response = ResponseBody::Pass;
                    return Action::Continue;
                }
                if !end_of_stream {
                    return Action::Pause;
                }
                let (status, api) = (*status, *api);
                self.response = ResponseBody::Pass;
                let body = host
                    .body(Buffer::ResponseBody, 0, body_size)
                    .unwrap_or_default();
                if failure::is_model_missing(status, api, &body) {
                    self.model_missing(host, worker);
                }
                Action::Continue
            }
            ResponseBody::Replace(body) => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = body.clone();
                if let Err(err) = host.set_body(Buffer::ResponseBody, 0, body_size, &body) {
                    warn!(host, "[{}] cannot replace the 503 body: {err}", self.id);
                }
                self.response = ResponseBody::Pass;
                Action::Continue
            }
            ResponseBody::Carry(frame) => {
                let held = host
                    .body(Buffer::ResponseBody, 0, body_size)
                    .unwrap_or_default();
                if !end_of_stream && !crate::metadata::frame_complete(&held) {
                    return Action::Pause;
                }
                let frame = frame.clone();
                if let Err(err) = host.set_body(Buffer::ResponseBody, 0, body_size, &frame) {
                    warn!(host, "[{}] cannot give the kept answer: {err}", self.id);
                }
                self.response = ResponseBody::Pass;
                Action::Continue
            }
            ResponseBody::V1Translate { headers_held } => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let headers_held = *headers_held;
                self.response = ResponseBody::Pass;
                self.translate_v1_response(host, worker, body_size, headers_held);
                Action::Continue
            }
        }
    }

    /// The response trailers: a gRPC status there may say the model is missing.
    pub fn on_response_trailers(&mut self, host: &mut impl Host, worker: &mut Worker) -> Action {
        if !self.is_grpc() || self.target.is_none() || self.model.is_none() {
            return Action::Continue;
        }
        let status = host
            .header(Map::ResponseTrailers, "grpc-status")
            .unwrap_or_default();
        let message = host
            .header(Map::ResponseTrailers, "grpc-message")
            .unwrap_or_default();
        if failure::is_grpc_model_missing(&status, &message) {
            self.model_missing(host, worker);
        }
        Action::Continue
    }

    /// Checks a routed request's response for a replica failure and decides what to do
    /// with its body.
    fn watch_response(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        replica: &str,
        end_of_stream: bool,
    ) {
        let status = host
            .header(Map::ResponseHeaders, ":status")
            .and_then(|raw| parse_status(&raw));
        let Some(status) = status else {
            return;
        };
        let grpc_status = if self.is_grpc() {
            host.header(Map::ResponseHeaders, "grpc-status")
        } else {
            None
        };
        // Envoy answers itself when it cannot connect: 503, or for gRPC 200 with a
        // grpc-status in the headers. Only then are the properties worth reading.
        if status == 503 || grpc_status.is_some() {
            let details = host.property(&["response", "code_details"]);
            let flags = host
                .property(&["response", "flags"])
                .and_then(|b| crate::shared::decode_u64(&b));
            if failure::is_connect_failure(details.as_deref(), flags) {
                self.replica_unreachable(
                    host,
                    worker,
                    replica,
                    details.as_deref(),
                    flags,
                    end_of_stream,
                );
                return;
            }
        }
        if let Some(grpc_status) = grpc_status {
            // A trailers-only gRPC answer: its status is in the headers.
            let message = host
                .header(Map::ResponseHeaders, "grpc-message")
                .unwrap_or_default();
            if failure::is_grpc_model_missing(&grpc_status, &message) {
                self.model_missing(host, worker);
            }
            return;
        }
        if let Kind::Http {
            api: Some(api),
            versioned,
        } = self.kind
        {
            if failure::may_be_model_missing(status, api, versioned) && !end_of_stream {
                self.response = ResponseBody::Inspect { status, api };
                return;
            }
        }
        if self.v1.is_some() && status == 200 && !end_of_stream {
            // The body the client gets is the filter's (a translation or a 502): neither the
            // replica's length nor any encoding it claims applies to it.
            let cleared = host
                .remove_header(Map::ResponseHeaders, "content-length")
                .and_then(|()| host.remove_header(Map::ResponseHeaders, "content-encoding"));
            if let Err(err) = cleared {
                warn!(
                    host,
                    "[{}] cannot clear the V1 answer's headers: {err}", self.id
                );
                return;
            }
            self.response = ResponseBody::V1Translate {
                headers_held: worker.config().bodies_while_paused,
            };
        }
    }

    /// The replica could not be reached: drop it from the worker's table, queue a failure
    /// report, and turn Envoy's answer into the gateway's (JSON body, or gRPC message).
    fn replica_unreachable(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        replica: &str,
        details: Option<&[u8]>,
        flags: Option<u64>,
        end_of_stream: bool,
    ) {
        worker.count(Metric::ErrorsUpstreamUnreachable);
        let removed = worker.table.remove_replica(replica);
        warn!(
            host,
            "[{}] model {}: replica {replica} unreachable (code details {}, flags {flags:?}); {removed} table entries dropped",
            self.id,
            self.model_for_log(),
            String::from_utf8_lossy(details.unwrap_or_default())
        );
        if let Some(served) = self.served() {
            worker
                .failures
                .push(served, replica, FailureKind::Unreachable);
        }
        let message = failure::unreachable_message(replica);
        if self.is_grpc() {
            let encoded = grpc::percent_encode_grpc_message(&message);
            if let Err(err) = host.set_header(Map::ResponseHeaders, "grpc-message", &encoded) {
                warn!(host, "[{}] cannot rewrite grpc-message: {err}", self.id);
            }
            return;
        }
        if end_of_stream {
            return;
        }
        let body = render_error_body(&message);
        let length = body.len().to_string();
        let rewritten = host
            .set_header(Map::ResponseHeaders, "content-type", "application/json")
            .and_then(|()| host.set_header(Map::ResponseHeaders, "content-length", &length));
        match rewritten {
            Ok(()) => self.response = ResponseBody::Replace(body),
            Err(err) => warn!(host, "[{}] cannot rewrite the 503: {err}", self.id),
        }
    }

    /// The replica said it does not have the model: drop that copy and queue a report.
    fn model_missing(&mut self, host: &mut impl Host, worker: &mut Worker) {
        let (Some(model), Some(served), Some(target)) = (&self.model, self.served(), &self.target)
        else {
            return;
        };
        worker.count(Metric::ErrorsModelMissing);
        // A request sent to a version the table no longer routes to says nothing of the
        // copies it routes to now.
        let removed =
            worker.table.serves_as(model, served) && worker.table.remove(model, target.replica());
        warn!(
            host,
            "[{}] model {model} missing on replica {}; dropped from the table: {removed}",
            self.id,
            target.replica()
        );
        worker
            .failures
            .push(served, target.replica(), FailureKind::ModelMissing);
    }

    /// Translates a buffered V2 response to V1 in place; on failure the answer becomes the
    /// gateway's JSON, with a 502 if the headers are still held.
    fn translate_v1_response(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        body_size: usize,
        headers_held: bool,
    ) {
        let body = host
            .body(Buffer::ResponseBody, 0, body_size)
            .unwrap_or_default();
        let (status, new_body) = match v1::v2_response_to_v1(&body) {
            Ok(translated) => (None, translated),
            Err(err) => {
                warn!(
                    host,
                    "[{}] model {}: V2 response not translatable to V1: {err}",
                    self.id,
                    self.model_for_log()
                );
                worker.count(Metric::V1TranslationErrors);
                let message = format!("model server answered an untranslatable response: {err}");
                (Some("502"), render_error_body(&message))
            }
        };
        if let Some(status) = status.filter(|_| headers_held) {
            if let Err(err) = host.set_header(Map::ResponseHeaders, ":status", status) {
                warn!(host, "[{}] cannot set the 502 status: {err}", self.id);
            }
        }
        if let Err(err) = host.set_body(Buffer::ResponseBody, 0, body_size, &new_body) {
            error!(
                host,
                "[{}] cannot replace the response body: {err}", self.id
            );
        }
    }
}
