#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*):
valid and refused inputs taken from the parsers' unit tests, so each fuzzer starts from
inputs that reach deep into its parser. Run it again after changing a seed here; the
fuzzers' own finds go to fuzz/target/corpus (not committed), crash inputs worth keeping
are copied into fuzz/corpus/<target>/crash-* by hand (this script leaves them alone):
- v1_response/crash-invalid-utf8-in-ignored-field: the translation skips a key it does not
  read without checking its string is UTF-8 (harmless: it never copies it), which broke
  the target's own check; kept so the target keeps reading such bodies leniently."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    path = os.path.join(HERE, "corpus", target)
    os.makedirs(path, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(path, "seed-" + name), "wb") as f:
        f.write(data)


# route_path: every shape of path the router knows, and refused ones.
for i, path in enumerate([
    "/v2", "/v2/health/live", "/v2/health/ready?x=1", "/v2/models/linear",
    "/v2/models/linear/ready", "/v2/models/linear/infer", "/v2/models/llm/generate_stream",
    "/v2/models/mlp_2/versions/42/infer", "/v2/models/mlp_2/versions/1",
    "/v1/models/linear", "/v1/models/linear:predict", "/v1/models/x:explain",
    "/v2/models/stats", "/v2/models/../infer", "/v2/models/a%2fb/infer",
    "/v2/models/linear/versions/x/infer", "/v2/repository/index",
    "/v2/models/x/infer/extra/segments/here", "/v2/models/mod\u00e8le/infer",
    "/inference.GRPCInferenceService/ModelInfer",
]):
    write("route_path", f"{i:02}", path)

# v1_request: datatype index, rank, dims (i8, 0xff = -1), then the V1 body.
DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
             "UINT64", "FP16", "FP32", "FP64", "BYTES", "BF16"]


def v1_request(datatype, shape, body):
    head = bytes([DATATYPES.index(datatype), len(shape)])
    head += bytes(d & 0xff for d in shape)
    return head + (json.dumps(body) if not isinstance(body, str) else body).encode()


for name, (datatype, shape, body) in {
    "linear-rows": ("FP32", [-1, 4], {"instances": [[1, 2, 3, 4], [0, 0, 0, 0]]}),
    "linear-whole": ("FP32", [-1, 4], {"instances": [[[1, 2, 3, 4], [5, 6, 7, 8]]]}),
    "nobatch-whole": ("FP32", [4], {"instances": [[1, 2, 3, 4]]}),
    "nobatch-rows": ("FP64", [4], {"instances": [1, 2, 3, 4]}),
    "nobatch-two-whole": ("FP32", [4], {"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}),
    "bool-fixed": ("BOOL", [2, 2], {"instances": [[True, False], [False, True]]}),
    "int8-range": ("INT8", [-1, 2], {"instances": [[-128, 127], [3, 128]]}),
    "uint64-max": ("UINT64", [-1], {"instances": [18446744073709551615]}),
    "variable-dims": ("INT32", [-1, -1, 3], {"instances": [[[1, 2, 3]], [[4, 5, 6]]]}),
    "empty-inner": ("FP32", [-1, -1, -1], {"instances": [[[]]]}),
    "ragged": ("FP32", [-1, -1, -1], {"instances": [[[1, 2], [3]]]}),
    "rank0": ("INT32", [], {"instances": [5]}),
    "fp16": ("FP16", [-1], {"instances": [65504, -65504, 1.5e-3]}),
    "not-instances": ("FP32", [-1, 4], {"inputs": [[1, 2, 3, 4]]}),
    "bytes": ("BYTES", [-1], {"instances": ["a"]}),
    "bad-json": ("FP32", [-1], '{"instances":[1,,2]}'),
    "strings-inside": ("FP32", [-1, 4], '{"instances":[[1,2,"[{",4]]}'),
}.items():
    write("v1_request", name, v1_request(datatype, shape, body))

# v1_response: Triton's answers and broken ones.
for name, body in {
    "linear": {"model_name": "linear", "model_version": "1", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [2, 1], "data": [7.0, 1.5]}]},
    "anomaly": {"outputs": [
        {"name": "score", "datatype": "FP32", "shape": [3, 1], "data": [0.1, 0.9, 0.5]},
        {"name": "is_anomaly", "datatype": "BOOL", "shape": [3, 1],
         "data": [False, True, False]}]},
    "nested": {"outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2],
                            "data": [[1, 2], [3, 4]]}]},
    "bytes": {"outputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]},
    "whole": {"id": "mm-v1-whole-tensor", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [4], "data": [1, 3, 6, 10]}]},
    "whole-rank0": {"id": "mm-v1-whole-tensor", "outputs": [
        {"name": "s", "datatype": "FP64", "shape": [], "data": [5]}]},
    "batch-mismatch": {"outputs": [{"name": "a", "shape": [3, 1], "data": [1, 2, 3]},
                                   {"name": "b", "shape": [2, 1], "data": [1, 2]}]},
    "huge-shape": {"outputs": [{"name": "a", "shape": [1000000000, 0], "data": []}]},
    "error": {"error": "model not found"},
}.items():
    write("v1_response", name, json.dumps(body))


# grpc_message: length-prefixed protobuf messages.
def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7f) | 0x80])
        v >>= 7
    return out + bytes([v])


def field(number, wire_type, payload=b""):
    return varint((number << 3) | wire_type) + payload


def string(number, data):
    return field(number, 2, varint(len(data)) + data)


def frame(msg, flag=0):
    return bytes([flag]) + struct.pack(">I", len(msg)) + msg


INPUT = string(5, b"\x0a\x05input\x12\x04FP32")
for name, data in {
    "infer": frame(string(1, b"linear") + INPUT),
    "after-version": frame(string(2, b"3") + string(1, b"linear") + INPUT),
    "after-id-params": frame(string(3, b"request-42") + string(4, b"\x0a\x01k\x12\x02\x10\x01")
                             + string(1, b"linear") + INPUT),
    "wire-types": frame(field(9, 0, varint(2**64 - 1)) + field(10, 1, b"\xff" * 8)
                        + field(11, 5, b"\xff" * 4) + field(536870911, 0, varint(0))
                        + string(1, b"linear")),
    "stream-two": frame(string(1, b"a") + INPUT) + frame(string(1, b"b") + INPUT),
    "compressed": frame(string(1, b"linear"), flag=1),
    "no-model": frame(string(2, b"1")),
    "truncated": frame(string(1, b"linear") + INPUT)[:9],
    "group": frame(field(2, 3) + string(1, b"m")),
    "bad-name": frame(string(1, b"../etc")),
    "path": b"/inference.GRPCInferenceService/RepositoryModelLoad",
}.items():
    write("grpc_message", name, data)

# grpc_scan: a chunking seed byte, a flags byte (odd: the model is in a header), the body.
for name, (flags, data) in {
    "stream-same": (0, frame(string(1, b"linear") + INPUT) * 3),
    "stream-other": (0, frame(string(1, b"linear") + INPUT) + frame(string(1, b"other"))),
    "header-same": (1, frame(string(1, b"linear") + INPUT) * 2),
    "header-other": (1, frame(string(1, b"mlp") + INPUT)),
    "repeated-field": (0, frame(string(1, b"linear") + INPUT + string(1, b"linear"))),
    "repeated-other": (0, frame(string(1, b"linear") + string(1, b"evil"))),
    "large-skip": (1, frame(string(1, b"linear") + string(6, b"\0" * 5000))),
    "end-inside": (1, frame(string(1, b"linear") + INPUT)[:-3]),
    "empty-message": (1, frame(b"")),
}.items():
    write("grpc_scan", name, bytes([37, flags]) + data)
