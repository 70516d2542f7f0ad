"""Linear regression on 4 features: y = x . w + b (numpy only).

Input  "x": FP32 [N, 4].  Output "y": FP32 [N, 1].
Weights (w: 4 floats, b: float) are read from weights.json next to this file.
"""
# Triton's Python backend imports asyncio on a model's first execute() (to tell a
# coroutine from a list of responses): 20-40 ms the first request would wait for.
# Imported here, it is paid while Triton loads the model (models/README.md).
import asyncio  # noqa: F401
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

N_FEATURES = 4


class _BadInput(ValueError):
    """The request's input is missing or has the wrong shape."""


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "weights.json")
        with open(path, "r", encoding="utf-8") as f:
            weights = json.load(f)
        self.w = np.asarray(weights["w"], dtype=np.float32).reshape(N_FEATURES, 1)
        self.b = np.float32(weights["b"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                x = pb_utils.get_input_tensor_by_name(request, "x")
                if x is None:
                    raise _BadInput("missing input 'x'")
                x = x.as_numpy()
                if x.ndim != 2 or x.shape[1] != N_FEATURES:
                    raise _BadInput(
                        f"input 'x' must have shape [N, {N_FEATURES}], got {list(x.shape)}"
                    )
                y = (x.astype(np.float32) @ self.w + self.b).astype(np.float32)
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", y)])
                )
            except _BadInput as e:  # HTTP 400 / gRPC INVALID_ARGUMENT
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[],
                        error=pb_utils.TritonError(f"linear: {e}", pb_utils.TritonError.INVALID_ARG),
                    )
                )
            except Exception as e:  # report per request, never crash the stub
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"linear: {e}")
                    )
                )
        return responses

    def finalize(self):
        self.w = None
        self.b = None
