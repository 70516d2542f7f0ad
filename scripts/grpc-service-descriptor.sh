#!/usr/bin/env bash
# Regenerates pool-manager/src/metadata/grpc_service.binpb: the FileDescriptorSet of
# Triton's grpc_service.proto (package `inference`, the KServe V2 gRPC service) and the
# model_config.proto it imports, taken from the tritonclient wheel that install-deps.sh
# puts in .tools/pylib (its version matches the Triton we run, 2.51). The pool-manager
# uses it to encode the ModelMetadataResponse and ModelReadyResponse messages the gateway
# answers for a model loaded nowhere.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$root/.tools/pylib" python3 - "$root/pool-manager/src/metadata/grpc_service.binpb" <<'PY'
import sys
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2

files = [
    descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    for module in (model_config_pb2, service_pb2)
]
with open(sys.argv[1], "wb") as out:
    out.write(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
PY
