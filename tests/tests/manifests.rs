//! The anchors' manifests through the real stack (issue 16): the shipped examples —
//! ModelMesh InferenceServices in each form, KServe TrainedModels, mmctl specs, and
//! `examples/storage.toml` with its named stores — applied with the real `mmctl` against a
//! real S3 server (moto), real Triton and the real gateway, each model then answering; a
//! file with one document the gateway cannot honour applies nothing and says why; and
//! `mmctl models export` writes documents that apply back unchanged.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, example, mmctl, MmctlRun};
use mm_tests::paths::{example_model, root};
use mm_tests::servers::S3Server;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::Value;

const BUCKET: &str = "modelmesh-example-models";

fn example_file(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

/// `examples/storage.toml` with its endpoints pointed at `s3` and its credentials files
/// in `dir`.
fn storage_config(s3: &S3Server, dir: &Path) -> PathBuf {
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let files = [
        (
            "minio-credentials.json",
            r#"{"access_key_id": "testing", "secret_access_key": "minio-secret-value"}"#,
        ),
        (
            "gcs-key.json",
            r#"{"client_email": "x@example.iam.gserviceaccount.com", "private_key": "none"}"#,
        ),
        (
            "azure-credentials.toml",
            "access_key = \"azure-secret-value\"\n",
        ),
        (
            "artifacts.toml",
            "bearer_token = \"artifacts-secret-value\"\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(creds.join(name), text).unwrap();
    }
    let text = std::fs::read_to_string(example_file("storage.toml"))
        .unwrap()
        .replace("http://minio.storage:9000", &s3.endpoint())
        .replace("/etc/mm/storage/", &format!("{}/", creds.display()))
        // In production the defaults' credentials come from AWS_* variables; here, the
        // file (without any, object_store would ask the cloud metadata service).
        .replace(
            "[s3]\n",
            "[s3]\naccess_key_id = \"testing\"\nsecret_access_key = \"minio-secret-value\"\n",
        );
    let path = dir.join("storage.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn infer_ok(stack: &Stack, name: &str, example_name: &str) {
    let (body, output, want) = example(example_name);
    let r = stack.infer(name, &body).await.unwrap();
    assert_eq!(r.status, 200, "{name}: {}", r.text);
    assert_close(&r.output(output).unwrap(), &want, name);
}

fn results(run: &MmctlRun) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                r["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn registered(stack: &Stack) -> Vec<String> {
    let (_, list) = stack
        .admin_call(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    list["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_manifests_apply_serve_refuse_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(dir.path()).await.unwrap();
    s3.create_bucket(BUCKET).await.unwrap();
    for model in ["linear", "xor_mlp", "anomaly"] {
        s3.put_dir(BUCKET, &format!("triton/{model}"), &example_model(model))
            .await
            .unwrap();
    }
    let config = storage_config(&s3, dir.path());
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "1Gi".into(),
        pool_manager_args: vec!["--storage-config".into(), config.display().to_string()],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let url = stack.pool_manager.url("");
    let file = |name: &str| example_file(name).display().to_string();

    // ModelMesh InferenceServices, every form: created, then each one answers.
    let run = mmctl(
        &url,
        &[
            "-o",
            "json",
            "models",
            "apply",
            "-f",
            &file("models-modelmesh.yaml"),
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        results(&run),
        [
            ("linear-isvc", "created"),
            ("xor-isvc", "created"),
            ("anomaly-isvc", "created")
        ]
        .map(|(n, r)| (n.to_owned(), r.to_owned()))
    );
    infer_ok(&stack, "linear-isvc", "linear").await;
    infer_ok(&stack, "xor-isvc", "xor_mlp").await;
    infer_ok(&stack, "anomaly-isvc", "anomaly").await;
    let (_, xor) = stack
        .admin_call(Method::GET, "/api/v1/models/xor-isvc", None)
        .await
        .unwrap();
    assert_eq!(xor["storage"]["key"], "localMinIO", "{xor}");
    assert_eq!(xor["maxCopies"], 2, "{xor}");
    assert_eq!(xor["modelFormat"]["name"], "triton", "{xor}");

    // TrainedModels from standard input, and mmctl's own specs, as tables.
    let text = std::fs::read_to_string(example_file("models-trainedmodel.yaml")).unwrap();
    let run = mmctl(&url, &["models", "apply", "-f", "-"], Some(&text)).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("TrainedModel") && run.stdout.contains("xor-tm"),
        "{run:?}"
    );
    let run = mmctl(&url, &["models", "apply", "-f", &file("models.yaml")], None).await;
    assert_eq!(run.code, 0, "{run:?}");
    infer_ok(&stack, "linear-tm", "linear").await;
    infer_ok(&stack, "linear-spec", "linear").await;
    let (_, tm) = stack
        .admin_call(Method::GET, "/api/v1/models/linear-tm", None)
        .await
        .unwrap();
    assert_eq!(tm["pool"], "triton-mms", "{tm}");

    // Applying again changes nothing, and says so.
    let run = mmctl(
        &url,
        &[
            "-o",
            "json",
            "models",
            "apply",
            "-f",
            &file("models-modelmesh.yaml"),
        ],
        None,
    )
    .await;
    assert!(
        results(&run).iter().all(|(_, r)| r == "unchanged"),
        "{run:?}"
    );

    // One document the gateway cannot honour: the whole file is refused, with the field.
    let before = registered(&stack).await;
    let bad = format!(
        "{}---\napiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: scaled\n  annotations:\n    serving.kserve.io/deploymentMode: ModelMesh\nspec:\n  predictor:\n    minReplicas: 3\n    model:\n      modelFormat: {{name: onnx}}\n      storageUri: s3://{BUCKET}/triton/linear\n",
        "apiVersion: serving.kserve.io/v1alpha1\nkind: TrainedModel\nmetadata: {name: fine}\nspec:\n  inferenceService: p\n  model: {storageUri: s3://modelmesh-example-models/triton/linear, framework: triton, memory: 32Mi}\n"
    );
    let run = mmctl(&url, &["models", "apply", "-f", "-"], Some(&bad)).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stdout.contains("refused: spec.predictor.minReplicas"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("fine") && run.stdout.contains("not applied"),
        "{run:?}"
    );
    // A framework no Triton replica loads, refused by the server's dry run: nothing applied.
    let sklearn = "apiVersion: serving.kserve.io/v1alpha1\nkind: TrainedModel\nmetadata: {name: fine}\nspec:\n  inferenceService: p\n  model: {storageUri: s3://modelmesh-example-models/triton/linear, framework: triton, memory: 32Mi}\n---\napiVersion: serving.kserve.io/v1alpha1\nkind: TrainedModel\nmetadata: {name: iris}\nspec:\n  inferenceService: p\n  model: {storageUri: s3://modelmesh-example-models/sklearn/iris, framework: sklearn, memory: 32Mi}\n";
    let run = mmctl(&url, &["models", "apply", "-f", "-"], Some(sklearn)).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stdout
            .contains("modelFormat \"sklearn\" is not one a Triton replica loads"),
        "{run:?}"
    );
    // A storage.key the settings do not have.
    let unknown = "name: lost\nstorage: {key: nowhere, path: triton/linear}\n";
    let run = mmctl(&url, &["models", "apply", "-f", "-"], Some(unknown)).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stdout
            .contains("storage.key \"nowhere\" is not a store"),
        "{run:?}"
    );
    assert_eq!(
        registered(&stack).await,
        before,
        "a refused file applied something"
    );

    // Export in each form, and apply it back: nothing changes.
    for format in ["modelmesh", "trainedmodel", "spec"] {
        let run = mmctl(&url, &["models", "export", "--format", format], None).await;
        assert_eq!(run.code, 0, "{format}: {run:?}");
        assert!(run.stderr.is_empty(), "{format}: {run:?}");
        let back = mmctl(
            &url,
            &["-o", "json", "models", "apply", "-f", "-"],
            Some(&run.stdout),
        )
        .await;
        assert_eq!(back.code, 0, "{format}: {back:?}\n{}", run.stdout);
        let got = results(&back);
        assert_eq!(got.len(), before.len(), "{format}: {got:?}");
        if format != "trainedmodel" {
            // (A TrainedModel always carries memory; undeclared sizes become declared.)
            assert!(
                got.iter().all(|(_, r)| r == "unchanged"),
                "{format}: {got:?}\n{}",
                run.stdout
            );
        }
    }
    // Credentials from the storage settings are nowhere to be read.
    let log = std::fs::read_to_string(stack.pool_manager.process.log_path()).unwrap();
    let (_, views) = stack
        .admin_call(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    for secret in [
        "minio-secret-value",
        "azure-secret-value",
        "artifacts-secret-value",
    ] {
        assert!(!log.contains(secret), "the log shows {secret}");
        assert!(!views.to_string().contains(secret), "a view shows {secret}");
    }
}
