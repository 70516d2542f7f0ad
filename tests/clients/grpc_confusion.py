"""Model-name confusion over the KServe V2 gRPC service, with grpcio and tritonclient's
generated messages: requests whose messages name another model than the one routed.

Usage: grpc_confusion.py HOST:PORT

Sends, through the gateway:
- ok: a ModelInfer for `linear` (control);
- header_mismatch: mm-model-id: linear, the message an `anomaly` request;
- field_twice: a message naming `linear`, then `anomaly` again in field 1 (protobuf
  keeps the last, which is what Triton runs);
- stream_together: a ModelStreamInfer whose first message names `linear` and second
  `anomaly`, sent at once (grpcio writes them as two DATA frames, so whether the
  filter sees the second before the answer started is a race; the test sends the
  single-frame case with raw HTTP/2);
- stream_later: the same, the second message sent once the first one's answer came.
Prints one JSON line: for each, the gRPC status code name and details, and how many
answers came back.
"""

import json
import struct
import sys
import threading

import grpc
from tritonclient.grpc import service_pb2

SERVICE = "/inference.GRPCInferenceService/"


def request(model, name, values):
    req = service_pb2.ModelInferRequest(model_name=model)
    tensor = req.inputs.add()
    tensor.name = name
    tensor.datatype = "FP32"
    tensor.shape.extend([1, len(values)])
    req.raw_input_contents.append(struct.pack("<%df" % len(values), *values))
    return req.SerializeToString()


LINEAR = request("linear", "x", [1, 2, 3, 4])
ANOMALY = request("anomaly", "readings", [21, 55, 1013])


def outcome(fn):
    try:
        answers = fn()
        return {"code": "OK", "answers": answers}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details() or ""}


def main() -> int:
    channel = grpc.insecure_channel(sys.argv[1])
    infer = channel.unary_unary(SERVICE + "ModelInfer", request_serializer=None,
                                response_deserializer=service_pb2.ModelInferResponse.FromString)
    stream = channel.stream_stream(SERVICE + "ModelStreamInfer", request_serializer=None,
                                   response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
    out = {}
    out["ok"] = outcome(lambda: len([infer(LINEAR, timeout=60)]))
    out["header_mismatch"] = outcome(
        lambda: len([infer(ANOMALY, metadata=[("mm-model-id", "linear")], timeout=60)]))
    twice = LINEAR + service_pb2.ModelInferRequest(model_name="anomaly").SerializeToString()
    out["field_twice"] = outcome(lambda: len([infer(twice, timeout=60)]))

    def together():
        answers = list(stream(iter([LINEAR, ANOMALY]), timeout=60))
        if any(a.error_message for a in answers):
            raise RuntimeError([a.error_message for a in answers])
        return len(answers)
    out["stream_together"] = outcome(together)

    first_answer = threading.Event()
    def later_requests():
        yield LINEAR
        first_answer.wait(60)
        yield ANOMALY

    def later():
        answers = 0
        for answer in stream(later_requests(), timeout=60):
            answers += 1
            first_answer.set()
        return answers
    out["stream_later"] = outcome(later)
    print(json.dumps(out))
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
