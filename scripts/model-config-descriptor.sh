#!/usr/bin/env bash
# Regenerates pool-manager/src/storage/model_config.binpb: the FileDescriptorSet of
# Triton's model_config.proto (package `inference`), taken from the tritonclient wheel that
# install-deps.sh puts in .tools/pylib (its version matches the Triton we run, 2.51). The
# pool-manager uses it to turn config.pbtxt into the JSON Triton's load request takes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$root/.tools/pylib" python3 - "$root/pool-manager/src/storage/model_config.binpb" <<'PY'
import sys
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2

proto = descriptor_pb2.FileDescriptorProto.FromString(model_config_pb2.DESCRIPTOR.serialized_pb)
with open(sys.argv[1], "wb") as out:
    out.write(descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString())
PY
