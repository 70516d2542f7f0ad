"""Z-score anomaly detector for 3 sensor readings.

z = (readings - mean) / std per feature; score = max |z| over the 3 features;
is_anomaly = score > threshold.

Input  "readings": FP32 [N, 3].
Outputs "score": FP32 [N, 1], "is_anomaly": BOOL [N, 1].
mean, std (3 floats each) and threshold are read from weights.json next to this file.
"""
# Triton's Python backend imports asyncio on a model's first execute() (to tell a
# coroutine from a list of responses): 20-40 ms the first request would wait for.
# Imported here, it is paid while Triton loads the model (models/README.md).
import asyncio  # noqa: F401
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

N_FEATURES = 3


class _BadInput(ValueError):
    """The request's input is missing or has the wrong shape."""


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "weights.json")
        with open(path, "r", encoding="utf-8") as f:
            weights = json.load(f)
        self.mean = np.asarray(weights["mean"], dtype=np.float32).reshape(N_FEATURES)
        self.std = np.asarray(weights["std"], dtype=np.float32).reshape(N_FEATURES)
        if np.any(self.std <= 0):
            raise ValueError("anomaly: every std in weights.json must be > 0")
        self.threshold = np.float32(weights["threshold"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                r = pb_utils.get_input_tensor_by_name(request, "readings")
                if r is None:
                    raise _BadInput("missing input 'readings'")
                r = r.as_numpy()
                if r.ndim != 2 or r.shape[1] != N_FEATURES:
                    raise _BadInput(
                        f"input 'readings' must have shape [N, {N_FEATURES}], got {list(r.shape)}"
                    )
                z = (r.astype(np.float32) - self.mean) / self.std
                score = np.abs(z).max(axis=1, keepdims=True).astype(np.float32)
                is_anomaly = score > self.threshold
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("score", score),
                            pb_utils.Tensor("is_anomaly", is_anomaly.astype(np.bool_)),
                        ]
                    )
                )
            except _BadInput as e:  # HTTP 400 / gRPC INVALID_ARGUMENT
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[],
                        error=pb_utils.TritonError(f"anomaly: {e}", pb_utils.TritonError.INVALID_ARG),
                    )
                )
            except Exception as e:  # report per request, never crash the stub
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"anomaly: {e}")
                    )
                )
        return responses

    def finalize(self):
        self.mean = self.std = self.threshold = None
