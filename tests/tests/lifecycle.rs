//! Model lifecycle end to end (real Envoy, filter, pool-manager and two Triton replicas):
//! a new spec for a loaded model loads alongside the old version and takes over with no
//! failed request under load, then answers every protocol, gRPC streams included; a version
//! that cannot load leaves the old one answering and says why; a model loaded nowhere just
//! takes its new spec; a retire grace out of range stops the pool-manager's start.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_close, copy_dir, example, linear_version, mmctl, read_answer, Answer};
use mm_tests::paths::{client_script, example_model, pool_manager, python_lib};
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// Clients sending requests at once during an update.
const CLIENTS: usize = 3;

/// `linear`'s answer to the example input with its shipped weights (b = 1.5), and with
/// the bias [`V2_BIAS`] of the second version.
const V1_ANSWER: [f64; 2] = [7.0, 1.5];
const V2_BIAS: f64 = 11.5;
const V2_ANSWER: [f64; 2] = [17.0, 11.5];

/// A copy of `linear` that Triton cannot load (its Python model fails at start-up).
fn broken_version(dir: &Path) -> PathBuf {
    let target = dir.join("broken");
    copy_dir(&example_model("linear"), &target);
    std::fs::write(
        target.join("1/model.py"),
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('broken on purpose')\n",
    )
    .unwrap();
    target
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    ok_old: AtomicU64,
    ok_new: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the assertion message.
    samples: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut samples = self.samples.lock().unwrap();
        if samples.len() < 5 {
            samples.push(what);
        }
    }
}

/// One client: infers `model` in a loop until `stop`, checking every answer is one of
/// the two versions' (and that the new one says which model served).
async fn client(stack: Arc<Stack>, model: &'static str, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let (body, _, _) = example("linear");
    while !stop.load(Ordering::SeqCst) {
        let response = stack
            .http
            .post(stack.envoy.url(&format!("/v2/models/{model}/infer")))
            .json(&body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                tally.fail(format!("transport: {e}"));
                continue;
            }
        };
        let Answer {
            status,
            served,
            text,
            y,
        } = read_answer(response).await;
        match (status, y) {
            (200, Some(y)) if y == V1_ANSWER => {
                tally.ok_old.fetch_add(1, Ordering::SeqCst);
            }
            (200, Some(y)) if y == V2_ANSWER && served.as_deref() == Some(model) => {
                tally.ok_new.fetch_add(1, Ordering::SeqCst);
            }
            _ => tally.fail(format!("{status} served={served:?}: {text}")),
        }
    }
}

async fn model_view(stack: &Stack, model: &str) -> Value {
    let (status, view) = stack
        .admin_call(Method::GET, &format!("/api/v1/models/{model}"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{view}");
    view
}

/// Whether any replica has a model named `name` READY.
async fn ready_anywhere(stack: &Stack, name: &str) -> bool {
    for r in &stack.replicas {
        if r.has_ready(name).await.unwrap() {
            return true;
        }
    }
    false
}

/// `tests/clients/grpc_infer.py`: ModelReady, ModelInfer, then `stream` requests on one
/// ModelStreamInfer stream.
fn grpc_infer(stack: &Stack, model: &str, header: Option<&str>, stream: usize) -> Value {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", python_lib())
        .arg(client_script("grpc_infer.py"))
        .arg(format!("127.0.0.1:{}", stack.envoy.port))
        .arg(model)
        .arg("--stream")
        .arg(stream.to_string());
    if let Some(h) = header {
        cmd.arg("--header").arg(h);
    }
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "grpc client failed: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_under_load_fails_no_request() {
    // A grace shorter than the default (2s), still longer than the 1s usage report.
    let options = StackOptions {
        pool_manager_args: ["--retire-grace", "1500ms"].map(String::from).to_vec(),
        ..StackOptions::default()
    };
    let stack = Arc::new(Stack::start(options).await.unwrap());
    let v1 = linear_version(stack.dir.path(), "upd-v1", 1.5);
    let v2 = linear_version(stack.dir.path(), "upd-v2", V2_BIAS);
    let (status, view) = stack.register("upd", &v1, "32Mi").await.unwrap();
    assert_eq!(status, 201, "{view}");
    let (body, out, _) = example("linear");
    let first = stack
        .infer_until_ok("upd loads", "upd", &body, Duration::from_secs(60))
        .await
        .unwrap();
    assert_close(&first.output(out).unwrap(), &V1_ANSWER, "first version");
    stack
        .wait_warm("upd", &body, Duration::from_secs(30))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(stack.clone(), "upd", stop.clone(), tally.clone())))
        .collect();
    eventually("the clients run", Duration::from_secs(30), || async {
        Ok((tally.ok_old.load(Ordering::SeqCst) >= 30).then_some(()))
    })
    .await
    .unwrap();

    let (status, view) = stack.register("upd", &v2, "32Mi").await.unwrap();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["transition"]["state"], "Loading", "{view}");
    let version = view["transition"]["version"].as_str().unwrap().to_owned();
    assert!(version.starts_with("upd--"), "{view}");
    // The switch: the model serves its new version, and the old one goes once idle.
    let switched = eventually("the switch", Duration::from_secs(90), || async {
        let view = model_view(&stack, "upd").await;
        Ok((view["version"] == version.as_str() && view["transition"].is_null()).then_some(view))
    })
    .await
    .unwrap();
    assert_eq!(switched["state"], "Loaded", "{switched}");
    eventually(
        "answers from the new version",
        Duration::from_secs(30),
        || async { Ok((tally.ok_new.load(Ordering::SeqCst) >= 30).then_some(())) },
    )
    .await
    .unwrap();
    eventually(
        "the old version unloaded",
        Duration::from_secs(60),
        || async { Ok((!ready_anywhere(&stack, "upd").await).then_some(())) },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failed = tally.failed.load(Ordering::SeqCst);
    let (old, new) = (
        tally.ok_old.load(Ordering::SeqCst),
        tally.ok_new.load(Ordering::SeqCst),
    );
    assert_eq!(
        failed,
        0,
        "{failed} failed of {} ({old} old, {new} new): {:?}",
        failed + old + new,
        tally.samples.lock().unwrap()
    );
    println!("update under load: {old} answers from the old version, {new} from the new, 0 failed");
    assert!(ready_anywhere(&stack, &version).await, "{version} READY");

    // gRPC reaches the new version too: by the message's model_name and by header, unary
    // and streaming (each message renamed as it passes, also those cut in pieces).
    for header in [None, Some("mm-model-id")] {
        let answer = tokio::task::block_in_place(|| grpc_infer(&stack, "upd", header, 3));
        assert_eq!(answer["ready"], true, "{header:?}: {answer}");
        let y: Vec<f64> = serde_json::from_value(answer["y"].clone()).unwrap();
        assert_close(&y, &V2_ANSWER, "gRPC after the update");
        let mut stream = answer["stream"].as_array().cloned().unwrap_or_default();
        stream.sort_by_key(|a| a["id"].as_str().map(str::to_owned));
        assert_eq!(stream.len(), 3, "{header:?}: {answer}");
        for (i, a) in stream.iter().enumerate() {
            assert_eq!(a["id"], i.to_string(), "{header:?}: {answer}");
            assert_eq!(a["rows"], 2 + 1024 * i, "{header:?}: {answer}");
            let y: Vec<f64> = serde_json::from_value(a["y"].clone()).unwrap();
            assert_close(
                &y,
                &[V2_ANSWER[1], V2_ANSWER[0]],
                "streamed after the update",
            );
            // As in a unary answer's body, the model is named as its replica knows it.
            assert_eq!(a["model_name"], version.as_str(), "{header:?}: {answer}");
        }
    }
    // KServe V1 too.
    let v1_answer = stack
        .gateway_call(
            Method::POST,
            "/v1/models/upd:predict",
            Some(&json!({"instances": [[1, 2, 3, 4]]})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(v1_answer.status, 200, "{}", v1_answer.text);
    assert_eq!(v1_answer.json["predictions"][0][0].as_f64(), Some(17.0));
    // The version's name is not a model clients can call.
    let direct = stack.infer(&version, &body).await.unwrap();
    assert_eq!(direct.status, 404, "{}", direct.text);

    // Deleting the model removes the version it serves under.
    let (status, _) = stack
        .admin_call(Method::DELETE, "/api/v1/models/upd", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    eventually(
        "every version unloaded",
        Duration::from_secs(30),
        || async { Ok((!ready_anywhere(&stack, &version).await).then_some(())) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_update_leaves_the_old_version_answering() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let v1 = linear_version(stack.dir.path(), "v1", 1.5);
    let broken = broken_version(stack.dir.path());
    stack.register("keep", &v1, "32Mi").await.unwrap();
    let (body, out, _) = example("linear");
    stack
        .infer_until_ok("keep loads", "keep", &body, Duration::from_secs(60))
        .await
        .unwrap();

    let (status, view) = stack.register("keep", &broken, "32Mi").await.unwrap();
    assert_eq!(status, 200, "{view}");
    let failed = eventually("the update fails", Duration::from_secs(90), || async {
        let view = model_view(&stack, "keep").await;
        Ok((view["transition"]["state"] == "Failed").then_some(view))
    })
    .await
    .unwrap();
    let reason = failed["transition"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("broken on purpose"), "{failed}");
    assert_eq!(failed["state"], "Loaded", "{failed}");
    assert!(failed["version"].is_null(), "{failed}");
    // The old version answers, under its own name.
    for _ in 0..10 {
        let r = stack.infer("keep", &body).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        assert_close(&r.output(out).unwrap(), &V1_ANSWER, "old version");
    }
    let version = failed["transition"]["version"].as_str().unwrap().to_owned();
    assert!(!ready_anywhere(&stack, &version).await);
    // mmctl shows it.
    let run = mmctl(
        &stack.pool_manager.url(""),
        &["models", "get", "keep"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("Failed keep--"), "{}", run.stdout);
    assert!(run.stdout.contains("broken on purpose"), "{}", run.stdout);
    let run = mmctl(&stack.pool_manager.url(""), &["models", "list"], None).await;
    assert!(
        run.stdout.contains("Loaded, update failed"),
        "{}",
        run.stdout
    );

    // Until the spec changes again: back to the one that serves clears it.
    let (status, view) = stack.register("keep", &v1, "32Mi").await.unwrap();
    assert_eq!(status, 200, "{view}");
    assert!(view["transition"].is_null(), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_a_cold_model_is_only_a_spec_change() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let v1 = linear_version(stack.dir.path(), "c1", 1.5);
    let v2 = linear_version(stack.dir.path(), "c2", V2_BIAS);
    stack.register("cold", &v1, "32Mi").await.unwrap();
    let (status, view) = stack.register("cold", &v2, "32Mi").await.unwrap();
    assert_eq!(status, 200, "{view}");
    assert!(view["transition"].is_null(), "{view}");
    assert_eq!(view["state"], "Pending", "{view}");
    assert!(!ready_anywhere(&stack, "cold").await);
    let (body, out, _) = example("linear");
    let r = stack
        .infer_until_ok("cold loads", "cold", &body, Duration::from_secs(60))
        .await
        .unwrap();
    assert_close(&r.output(out).unwrap(), &V2_ANSWER, "the new spec");
    // Served under its own name: nothing renamed.
    assert_eq!(r.json["model_name"], "cold", "{}", r.text);
    assert!(ready_anywhere(&stack, "cold").await);
}

#[test]
fn a_retire_grace_out_of_range_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let rows: [(&[&str], Option<&str>, &str); 3] = [
        (
            &["--retire-grace", "0s"],
            None,
            "retire grace 0s is out of range",
        ),
        (&[], Some("2h"), "retire grace 2h is out of range"),
        (&["--retire-grace", "soon"], None, "invalid value 'soon'"),
    ];
    for (args, env, want) in rows {
        let mut cmd = Command::new(pool_manager());
        cmd.arg("--model-repository")
            .arg(dir.path())
            .arg("--replica")
            .arg("name=r0,url=http://127.0.0.1:1,memory=1Gi")
            .args(args)
            .env_remove("MM_RETIRE_GRACE");
        if let Some(env) = env {
            cmd.env("MM_RETIRE_GRACE", env);
        }
        let output = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?} {env:?}: {stderr}");
    }
}
