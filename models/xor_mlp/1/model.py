"""Tiny MLP computing XOR: 2 inputs -> 2 hidden (ReLU) -> 1 output (sigmoid).

Input  "x": FP32 [N, 2].  Output "probability": FP32 [N, 1].
Weights (w1 [2][2], b1 [2], w2 [2][1], b2 [1]) are read from weights.json next to
this file.
"""
# Triton's Python backend imports asyncio on a model's first execute() (to tell a
# coroutine from a list of responses): 20-40 ms the first request would wait for.
# Imported here, it is paid while Triton loads the model (models/README.md).
import asyncio  # noqa: F401
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

N_INPUTS = 2


class _BadInput(ValueError):
    """The request's input is missing or has the wrong shape."""


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "weights.json")
        with open(path, "r", encoding="utf-8") as f:
            weights = json.load(f)
        self.w1 = np.asarray(weights["w1"], dtype=np.float32).reshape(N_INPUTS, 2)
        self.b1 = np.asarray(weights["b1"], dtype=np.float32).reshape(2)
        self.w2 = np.asarray(weights["w2"], dtype=np.float32).reshape(2, 1)
        self.b2 = np.asarray(weights["b2"], dtype=np.float32).reshape(1)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                x = pb_utils.get_input_tensor_by_name(request, "x")
                if x is None:
                    raise _BadInput("missing input 'x'")
                x = x.as_numpy()
                if x.ndim != 2 or x.shape[1] != N_INPUTS:
                    raise _BadInput(
                        f"input 'x' must have shape [N, {N_INPUTS}], got {list(x.shape)}"
                    )
                h = np.maximum(x.astype(np.float32) @ self.w1 + self.b1, np.float32(0))
                logit = h @ self.w2 + self.b2
                prob = (np.float32(1) / (np.float32(1) + np.exp(-logit))).astype(np.float32)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor("probability", prob)]
                    )
                )
            except _BadInput as e:  # HTTP 400 / gRPC INVALID_ARGUMENT
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[],
                        error=pb_utils.TritonError(f"xor_mlp: {e}", pb_utils.TritonError.INVALID_ARG),
                    )
                )
            except Exception as e:  # report per request, never crash the stub
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"xor_mlp: {e}")
                    )
                )
        return responses

    def finalize(self):
        self.w1 = self.b1 = self.w2 = self.b2 = None
