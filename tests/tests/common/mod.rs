//! Requests and answers for the example models in `models/` (see models/README.md).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub const EXAMPLES: [(&str, &str); 3] =
    [("linear", "32Mi"), ("xor_mlp", "64Mi"), ("anomaly", "48Mi")];

/// A V2 infer body for `model` and the expected `(output name, values)`.
pub fn example(model: &str) -> (Value, &'static str, Vec<f64>) {
    match model {
        "linear" => (
            json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 0, 0, 0, 0]}]}),
            "y",
            vec![7.0, 1.5],
        ),
        "xor_mlp" => (
            json!({"inputs": [{"name": "x", "shape": [4, 2], "datatype": "FP32", "data": [0, 0, 0, 1, 1, 0, 1, 1]}]}),
            "probability",
            vec![0.006_692_851, 0.993_307_2, 0.993_307_2, 0.006_692_851],
        ),
        "anomaly" => (
            json!({"inputs": [{"name": "readings", "shape": [3, 3], "datatype": "FP32",
                               "data": [21, 55, 1013, 28, 50, 1013, 20, 15, 1013]}]}),
            "score",
            vec![0.5, 4.0, 3.5],
        ),
        other => panic!("no example for {other}"),
    }
}

pub fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{what}: got {got:?}, want {want:?}");
    }
}

/// What one `mmctl` run printed, and its exit code.
#[derive(Debug)]
pub struct MmctlRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `mmctl` against the admin API at `url` (bounded: 60 s), feeding `stdin`.
pub async fn mmctl(url: &str, args: &[&str], stdin: Option<&str>) -> MmctlRun {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(mm_tests::paths::mmctl());
    cmd.args(args)
        .env_remove("MMCTL_TOKEN")
        .env("MMCTL_URL", url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("mmctl starts (built by make test)");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.unwrap_or("").to_owned();
    let feed = async move {
        let _ = input.write_all(text.as_bytes()).await;
        drop(input);
    };
    let (_, out) = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        tokio::join!(feed, child.wait_with_output())
    })
    .await
    .unwrap_or_else(|_| panic!("mmctl {args:?} did not finish"));
    let out = out.expect("mmctl output");
    MmctlRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits (bounded) until the pool-manager has the gateway's usage report for the `count`th
/// request to `model` and sees nothing in flight. Reports come once a second per Envoy
/// worker; until then a finished request still counts as in flight (protecting its model
/// from eviction) and its recency is not known, so a scenario about eviction order waits.
pub async fn wait_reported(stack: &mm_tests::Stack, model: &str, count: f64) {
    let label = format!("model=\"{model}\"");
    mm_tests::stack::eventually(
        "the request reported and nothing in flight",
        std::time::Duration::from_secs(5),
        || {
            let label = label.clone();
            async move {
                let counted = stack
                    .pool_manager
                    .metric_where("mm_model_requests_total", &label)
                    .await?;
                let (_, models) = stack
                    .admin_call(reqwest::Method::GET, "/api/v1/models", None)
                    .await?;
                let busy = models["models"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["inFlight"].as_u64().unwrap_or(0) > 0);
                Ok((counted >= count && !busy).then_some(()))
            }
        },
    )
    .await
    .unwrap();
}

/// A copy of the `linear` example under `dir/name`, with bias `b`.
pub fn linear_version(dir: &Path, name: &str, b: f64) -> PathBuf {
    let target = dir.join(name);
    copy_dir(&mm_tests::paths::example_model("linear"), &target);
    let weights = json!({"w": [0.5, -1.0, 2.0, 0.25], "b": b});
    std::fs::write(target.join("1/weights.json"), weights.to_string()).unwrap();
    target
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// An inference answer through the gateway, read whole.
pub struct Answer {
    pub status: u16,
    /// `x-mm-served-model`: the model that served a renamed (aliased, updated) request.
    pub served: Option<String>,
    pub text: String,
    /// Output 0's numbers, if the body has them.
    pub y: Option<Vec<f64>>,
}

pub async fn read_answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let served = response
        .headers()
        .get("x-mm-served-model")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    let y = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
        v["outputs"][0]["data"]
            .as_array()
            .map(|d| d.iter().filter_map(Value::as_f64).collect())
    });
    Answer {
        status,
        served,
        text,
        y,
    }
}

/// Runs a Python client script from tests/clients against the Envoy listening on `port`
/// (its first argument, `127.0.0.1:port`), then `args`; returns the JSON line it printed.
pub fn python_client_at(script: &str, port: u16, args: &[&str]) -> Value {
    let output = std::process::Command::new("python3")
        .env("PYTHONPATH", mm_tests::paths::python_lib())
        .arg(mm_tests::paths::client_script(script))
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
