"""A real KServe V2 gRPC client (NVIDIA tritonclient) for the integration tests.

Usage: grpc_infer.py HOST:PORT MODEL [--header NAME] [--stream N]

Sends ModelReady and ModelInfer for the `linear` example model's input (x: FP32 [2, 4])
through the gateway, optionally naming the model in a routing header as ModelMesh
clients do (otherwise the gateway must read it from the protobuf body), and prints one
JSON line: {"ready": bool, "y": [...]} or {"error": "...", "status": "..."}.

With --stream N it then sends N requests at once on one ModelStreamInfer stream, the i-th
with 2 + 1024 * i rows (so later messages span several HTTP/2 frames and arrive in several
pieces), and adds "stream": one {"id", "model_name", "rows", "y"} per answer (y: the
distinct values), or {"error"} for an error on the stream.
"""

import argparse
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("model")
    parser.add_argument("--header", help="send the model name in this request header too")
    parser.add_argument("--stream", type=int, default=0, help="requests to stream after")
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
        out = {"ready": bool(ready), "y": y.reshape(-1).tolist()}
        if args.stream:
            out["stream"] = stream(client, args.model, headers, args.stream)
        print(json.dumps(out))
    except InferenceServerException as e:
        print(json.dumps({"error": e.message(), "status": str(e.status())}))
    finally:
        client.close()
    return 0


def stream(client, model, headers, count):
    """Sends `count` requests on one stream; the answers, in the order they came."""
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)),
                        headers=headers, stream_timeout=60)
    try:
        for i in range(count):
            rows = 2 + 1024 * i
            x = np.tile(np.array([[1, 2, 3, 4], [0, 0, 0, 0]], dtype=np.float32), (rows // 2, 1))
            inp = grpcclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer(model, [inp], request_id=str(i))
        out = []
        for _ in range(count):
            result, error = answers.get(timeout=60)
            if error is not None:
                out.append({"error": str(error)})
                continue
            y = result.as_numpy("y").reshape(-1)
            response = result.get_response()
            out.append({"id": response.id, "model_name": response.model_name,
                        "rows": len(y), "y": sorted(set(y.tolist()))})
        return out
    finally:
        client.stop_stream()


if __name__ == "__main__":
    sys.exit(main())
