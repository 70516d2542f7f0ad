//! Test-only Triton models written into a test's temporary directory: ones whose
//! behaviour a scenario needs but that are no use as examples (a model that fails to load,
//! a model that takes as long as asked to answer).

use std::path::{Path, PathBuf};

const PYTHON_CONFIG_HEAD: &str =
    "backend: \"python\"\nmax_batch_size: 0\ninstance_group [{ kind: KIND_CPU, count: 1 }]\n";

fn write_model(dir: &Path, name: &str, io: &str, model_py: &str) -> anyhow::Result<PathBuf> {
    let model = dir.join(name);
    std::fs::create_dir_all(model.join("1"))?;
    std::fs::write(
        model.join("config.pbtxt"),
        format!("{PYTHON_CONFIG_HEAD}{io}"),
    )?;
    std::fs::write(model.join("1/model.py"), model_py)?;
    Ok(model)
}

/// A Python-backend model whose initialisation fails, as one with a missing weights file
/// would: `weights.json is missing`.
pub fn broken(dir: &Path) -> anyhow::Result<PathBuf> {
    write_model(
        dir,
        "broken",
        "input [{ name: \"x\", data_type: TYPE_FP32, dims: [-1, 4] }]\noutput [{ name: \"y\", data_type: TYPE_FP32, dims: [-1, 1] }]\n",
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('weights.json is missing')\n",
    )
}

/// A model that sleeps for `seconds` (its one FP32 input, shape [1]) and answers
/// `slept` = seconds: a request that stays in flight as long as a test needs.
pub fn sleepy(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    write_model(
        dir,
        name,
        "input [{ name: \"seconds\", data_type: TYPE_FP32, dims: [1] }]\noutput [{ name: \"slept\", data_type: TYPE_FP32, dims: [1] }]\n",
        r#"import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = pb_utils.get_input_tensor_by_name(request, "seconds").as_numpy()
            time.sleep(float(min(max(seconds[0], 0.0), 30.0)))
            out = pb_utils.Tensor("slept", seconds.astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"#,
    )
}

/// The infer body for [`sleepy`].
pub fn sleep_request(seconds: f32) -> serde_json::Value {
    serde_json::json!({"inputs": [{"name": "seconds", "shape": [1], "datatype": "FP32", "data": [seconds]}]})
}

/// A model without a batch dimension (`max_batch_size: 0`): its one FP32 input `v` has
/// shape [4] and its output `y`, shape [4], is the running sum of `v`. For KServe V1
/// requests whose single instance is the whole tensor.
pub fn running_sum(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    write_model(
        dir,
        name,
        "input [{ name: \"v\", data_type: TYPE_FP32, dims: [4] }]\noutput [{ name: \"y\", data_type: TYPE_FP32, dims: [4] }]\n",
        r#"import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            v = pb_utils.get_input_tensor_by_name(request, "v").as_numpy()
            y = np.cumsum(v).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", y)]))
        return responses
"#,
    )
}

/// A model whose load takes `seconds` (its initialisation sleeps), so a test can act while
/// the pool-manager holds the model's operation lock for the load. Same inputs as [`sleepy`]
/// (it answers at once).
pub fn slow_loading(dir: &Path, name: &str, seconds: u32) -> anyhow::Result<PathBuf> {
    slow_to_load(dir, name, std::time::Duration::from_secs(seconds.into()))
}

/// [`slow_loading`] for any duration (to the millisecond): a model that is costly to load
/// again, for eviction policies that weigh load times.
pub fn slow_to_load(dir: &Path, name: &str, load: std::time::Duration) -> anyhow::Result<PathBuf> {
    let seconds = format!("{:.3}", load.as_secs_f64());
    write_model(
        dir,
        name,
        "input [{ name: \"seconds\", data_type: TYPE_FP32, dims: [1] }]\noutput [{ name: \"slept\", data_type: TYPE_FP32, dims: [1] }]\n",
        &format!(
            r#"import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({seconds})

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("slept", pb_utils.get_input_tensor_by_name(r, "seconds").as_numpy())
            ])
            for r in requests
        ]
"#
        ),
    )
}
