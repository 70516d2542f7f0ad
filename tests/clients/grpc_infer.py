"""A real KServe V2 gRPC client (NVIDIA tritonclient) for the integration tests.

Usage: grpc_infer.py HOST:PORT MODEL [--header NAME] [--ready]

Sends ModelReady and ModelInfer for the `linear` example model's input (x: FP32 [2, 4])
through the gateway, optionally naming the model in a routing header as ModelMesh
clients do (otherwise the gateway must read it from the protobuf body), and prints one
JSON line: {"ready": bool, "y": [...]} or {"error": "...", "status": "..."}.
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("model")
    parser.add_argument("--header", help="send the model name in this request header too")
    args = parser.parse_args()

    headers = {args.header: args.model} if args.header else None
    client = grpcclient.InferenceServerClient(url=args.url)
    try:
        ready = client.is_model_ready(args.model, headers=headers, client_timeout=60)
        x = np.array([[1, 2, 3, 4], [0, 0, 0, 0]], dtype=np.float32)
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(args.model, [inp], headers=headers, client_timeout=60)
        y = result.as_numpy("y")
        print(json.dumps({"ready": bool(ready), "y": y.reshape(-1).tolist()}))
    except InferenceServerException as e:
        print(json.dumps({"error": e.message(), "status": str(e.status())}))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
