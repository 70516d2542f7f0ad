//! Metadata and readiness requests whose model is in none of the worker's tables: the
//! metadata call instead of the route call, and what its answer makes of the request (see
//! [`crate::metadata`]).

use std::rc::Rc;

use super::response::ResponseBody;
use super::{Phase, Stream};
use crate::control;
use crate::host::{Action, Host, Map};
use crate::metadata::{self, Asked, MetadataDecision};
use crate::metrics::Metric;
use crate::reply::Reply;
use crate::table::Target;
use crate::worker::Worker;
use crate::{debug, error};

impl Stream {
    /// Makes the metadata call for the request's model; answers 503 if it cannot be
    /// dispatched. The request stays held until the answer.
    pub(super) fn metadata_call(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        asked: Asked,
    ) -> Action {
        worker.count(Metric::MetadataCalls);
        let model = self.model.clone().unwrap_or_default();
        let path = metadata::call_path(&model, asked, self.version.as_deref(), self.is_grpc());
        debug!(host, "[{}] model {model}: metadata call to {path}", self.id);
        let timeout = worker.config().route_timeout();
        match control::get(host, worker.config(), &path, timeout) {
            Ok(_) => {
                self.phase = Phase::Routing;
                Action::Pause
            }
            Err(err) => {
                error!(
                    host,
                    "[{}] model {model}: cannot make the metadata call: {err}", self.id
                );
                self.refuse(host, worker, Reply::PoolManagerUnreachable)
            }
        }
    }

    /// The metadata call's answer: forward, answer, carry or refuse the held request.
    pub(super) fn on_metadata_answer(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        asked: Asked,
        body_size: usize,
    ) {
        let status = control::answer_status(host);
        let body = control::answer_body(host, body_size, metadata::MAX_ANSWER_BYTES);
        let model = self.model.clone().unwrap_or_default();
        match metadata::decide(status, &body, &model, asked, self.is_grpc()) {
            MetadataDecision::Forward {
                target,
                inputs,
                upstream,
            } => {
                self.upstream = upstream.clone();
                if let Err(err) =
                    worker
                        .table
                        .insert(&model, Rc::clone(&target), inputs.clone(), upstream)
                {
                    debug!(host, "[{}] route not kept in the table: {err}", self.id);
                }
                if asked == Asked::V1Ready {
                    self.answer_v1_ready(host, false);
                } else {
                    self.forward(host, worker, target, inputs);
                }
            }
            MetadataDecision::Answer { status, body } => {
                worker.count(Metric::StandbyAnswers);
                self.answer_standby(host, status, body.as_deref());
            }
            MetadataDecision::Carry { target, message } => {
                worker.count(Metric::StandbyAnswers);
                self.carry(host, worker, &target, message);
            }
            MetadataDecision::Reply(reply) => self.route_refused(host, worker, reply),
        }
    }

    /// Answers a KServe V1 readiness request for a ready model (`standby`: loaded nowhere).
    pub(super) fn answer_v1_ready(&mut self, host: &mut impl Host, standby: bool) -> Action {
        let model = self.model.clone().unwrap_or_default();
        let body = serde_json::json!({"name": model, "ready": true}).to_string();
        if standby {
            self.answer_standby(host, 200, Some(body.as_bytes()));
        } else {
            self.answer(
                host,
                200,
                &[("content-type", "application/json")],
                Some(body.as_bytes()),
            );
        }
        Action::Pause
    }

    /// Answers for a model loaded nowhere, saying so in a header.
    fn answer_standby(&mut self, host: &mut impl Host, status: u16, body: Option<&[u8]>) {
        let headers = [
            ("content-type", "application/json"),
            (metadata::MODEL_STATE_HEADER, metadata::STANDBY),
        ];
        self.answer(host, status, &headers, body);
    }

    fn answer(
        &mut self,
        host: &mut impl Host,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) {
        self.phase = Phase::Replied;
        if let Err(err) = host.reply(status, headers, body) {
            error!(host, "[{}] cannot send the {status} answer: {err}", self.id);
        }
    }

    /// Sends the gRPC call to `target`'s `ServerLive` (the request message, whose fields
    /// `ServerLiveRequest` does not have, is ignored there) and replaces the answer's
    /// message with `message`. Not counted in flight: the model is not on that replica.
    fn carry(
        &mut self,
        host: &mut impl Host,
        worker: &mut Worker,
        target: &Target,
        message: Vec<u8>,
    ) {
        let Some(address) = target.grpc_address() else {
            let reply = Reply::ReplicaWithoutGrpc(target.replica().to_owned());
            self.refuse(host, worker, reply);
            return;
        };
        let set = host
            .set_header(Map::RequestHeaders, ":path", metadata::CARRIER_PATH)
            .and_then(|()| host.set_upstream(address));
        if let Err(err) = set {
            error!(
                host,
                "[{}] cannot send the gRPC answer's carrier: {err}", self.id
            );
            self.refuse(host, worker, Reply::CannotSetUpstream);
            return;
        }
        self.response = ResponseBody::Carry(message);
        self.phase = Phase::Routed;
        self.resume(host);
    }
}
