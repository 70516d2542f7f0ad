"""A real KServe V2 HTTP client (NVIDIA tritonclient.http) for the integration tests.

Usage: http_client.py HOST:PORT MODEL

Asks the gateway whether MODEL is ready, for its metadata and its configuration (Triton's
`/v2/models/{m}/config`, what `get_model_config` reads), and infers once with the `linear`
example model's input (x: FP32 [2, 4]); prints one JSON line:
{"ready": bool, "metadata": {...}, "config": {...}, "y": [...]} or
{"error": "...", "status": "..."}.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main() -> int:
    url, model = sys.argv[1], sys.argv[2]
    client = httpclient.InferenceServerClient(url=url, connection_timeout=60, network_timeout=60)
    try:
        ready = client.is_model_ready(model)
        metadata = client.get_model_metadata(model)
        config = client.get_model_config(model)
        x = np.array([[1, 2, 3, 4], [0, 0, 0, 0]], dtype=np.float32)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp])
        y = result.as_numpy("y")
        print(json.dumps({"ready": bool(ready), "metadata": metadata, "config": config,
                          "y": y.reshape(-1).tolist()}))
    except InferenceServerException as e:
        print(json.dumps({"error": e.message(), "status": str(e.status())}))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
