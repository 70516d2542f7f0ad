//! Model storage end to end: models registered by `s3://` (a real S3-compatible server,
//! moto) and `http://` archive URIs (a real HTTP server) are pulled by the pool-manager on
//! their first request and served through the real gateway; cached files are evicted from
//! disk when the cache passes its watermark and pulled again when needed; bad archives are
//! refused with a clear reason and leave nothing behind; and replicas that share no disk
//! get the files inside Triton's load request.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_close, example};
use mm_tests::paths::example_model;
use mm_tests::servers::{archives, FileServer, S3Server};
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::{json, Value};

/// The S3 and HTTP servers, the directory the HTTP server serves, the pool-manager's
/// storage settings and cache directory.
struct Storage {
    s3: S3Server,
    web: FileServer,
    cache_dir: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

async fn storage() -> Storage {
    let dir = tempfile::Builder::new()
        .prefix("mm-storage-")
        .tempdir()
        .unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    let (s3, web) = tokio::join!(
        S3Server::start(dir.path()),
        FileServer::start(&served, dir.path())
    );
    let (s3, web) = (s3.unwrap(), web.unwrap());
    s3.create_bucket("models").await.unwrap();
    let config = dir.path().join("storage.toml");
    std::fs::write(&config, s3.storage_config()).unwrap();
    Storage {
        s3,
        web,
        cache_dir: dir.path().join("cache"),
        config,
        _dir: dir,
    }
}

impl Storage {
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--storage-config".to_owned(),
            self.config.display().to_string(),
            "--cache-dir".to_owned(),
            self.cache_dir.display().to_string(),
            // The test servers are on loopback.
            "--allow-private-storage".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Names of the complete entries in the cache directory, sorted.
    fn cached(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.cache_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    fn cached_models(&self) -> Vec<String> {
        self.cached()
            .iter()
            .filter_map(|n| n.split_once('@').map(|(m, _)| m.to_owned()))
            .collect()
    }

    fn partial_is_empty(&self) -> bool {
        std::fs::read_dir(self.cache_dir.join(".partial"))
            .unwrap()
            .next()
            .is_none()
    }
}

async fn register(stack: &Stack, name: &str, spec: Value) -> Value {
    let (status, body) = stack
        .admin_call(
            Method::PUT,
            &format!("/api/v1/models/{name}"),
            Some(spec.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{name}: {body}");
    body
}

async fn model_view(stack: &Stack, name: &str) -> Value {
    stack
        .admin_call(Method::GET, &format!("/api/v1/models/{name}"), None)
        .await
        .unwrap()
        .1
}

/// Infers `example`'s request on `name` through the gateway and checks the answer.
async fn infer_ok(stack: &Stack, name: &str, example_model_name: &str) {
    let (body, output, want) = example(example_model_name);
    let r = stack.infer(name, &body).await.unwrap();
    assert_eq!(r.status, 200, "{name}: {}", r.text);
    assert_close(&r.output(output).unwrap(), &want, name);
}

fn sha256_hex(data: &[u8]) -> String {
    // The test crate has no SHA-256 of its own: sha256sum is part of coreutils.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn repository_has(repository: &Path, name: &str) -> bool {
    repository.join(name).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_models_are_pulled_on_first_request_cached_evicted_and_pulled_again() {
    let storage = storage().await;
    storage
        .s3
        .put_dir("models", "linear", &example_model("linear"))
        .await
        .unwrap();
    let tgz = archives::tar_gz_of(&example_model("xor_mlp"), Some("xor_mlp")).unwrap();
    let tgz_sha = sha256_hex(&tgz);
    let tgz_url = storage.web.publish("xor_mlp.tar.gz", &tgz).unwrap();
    let zip_url = storage
        .web
        .publish(
            "anomaly.zip",
            &archives::zip_of(&example_model("anomaly")).unwrap(),
        )
        .unwrap();

    // One replica with room for one of these models at a time (48Mi each; 80% of 100Mi),
    // and a cache of 10,000 bytes: two of the three models (2.7 to 3.7 KB each) fit under
    // its high watermark (90%), three do not.
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "100Mi".into(),
        pool_manager_args: storage.args(&[
            "--cache-size",
            "10000",
            "--cache-high-watermark",
            "0.9",
            "--cache-low-watermark",
            "0.7",
            "--min-age",
            "0s",
            "--max-model-files",
            "50",
        ]),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let pm = &stack.pool_manager;

    let view = register(
        &stack,
        "s3-linear",
        json!({"storageUri": "s3://models/linear", "memory": "48Mi"}),
    )
    .await;
    assert_eq!(view["state"], "Pending");
    register(
        &stack,
        "tgz-xor",
        json!({"storageUri": tgz_url, "memory": "48Mi", "sha256": tgz_sha}),
    )
    .await;
    register(
        &stack,
        "zip-anomaly",
        json!({"storageUri": zip_url, "memory": "48Mi"}),
    )
    .await;
    assert!(storage.cached().is_empty(), "registration pulls nothing");

    // First requests, two at once: one pull, one load, both answered.
    let (body, output, want) = example("linear");
    let (a, b) = tokio::join!(
        stack.infer("s3-linear", &body),
        stack.infer("s3-linear", &body)
    );
    for r in [a.unwrap(), b.unwrap()] {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_close(&r.output(output).unwrap(), &want, "s3-linear");
    }
    let linear_bytes: u64 = ["config.pbtxt", "1/model.py", "1/weights.json"]
        .iter()
        .map(|f| {
            std::fs::metadata(example_model("linear").join(f))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        pm.metric_where("mm_storage_download_bytes_total", "scheme=\"s3\"")
            .await
            .unwrap(),
        linear_bytes as f64,
        "downloaded once"
    );
    assert_eq!(
        pm.metric_where("mm_storage_cache_requests_total", "outcome=\"miss\"")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        pm.metric("mm_storage_download_seconds_count")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        pm.metric("mm_storage_cache_bytes").await.unwrap(),
        linear_bytes as f64
    );
    assert_eq!(
        pm.metric("mm_model_load_duration_seconds_count")
            .await
            .unwrap(),
        1.0
    );
    assert!(
        pm.metric("mm_cold_request_wait_seconds_count")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(storage.cached_models(), ["s3-linear"]);
    assert!(
        repository_has(&stack.repository, "s3-linear"),
        "staged in the shared repository"
    );

    // The archives: tar.gz (checked against its sha256) and zip. Each load evicts the
    // previous model from the replica.
    infer_ok(&stack, "tgz-xor", "xor_mlp").await;
    assert_eq!(
        model_view(&stack, "s3-linear").await["state"],
        "Pending",
        "evicted"
    );
    assert_eq!(storage.cached_models(), ["s3-linear", "tgz-xor"]);
    infer_ok(&stack, "zip-anomaly", "anomaly").await;
    assert!(
        pm.metric_where("mm_storage_download_bytes_total", "scheme=\"http\"")
            .await
            .unwrap()
            > 0.0
    );
    // Three models passed the cache's high watermark: the least recently used one that is
    // loaded nowhere (s3-linear) left the disk; tgz-xor was still loaded when it was checked.
    assert_eq!(
        pm.metric("mm_storage_cache_evictions_total").await.unwrap(),
        1.0
    );
    assert_eq!(storage.cached_models(), ["tgz-xor", "zip-anomaly"]);

    // Needed again: pulled again, served again; now tgz-xor (loaded nowhere) leaves.
    infer_ok(&stack, "s3-linear", "linear").await;
    assert_eq!(
        pm.metric_where("mm_storage_download_bytes_total", "scheme=\"s3\"")
            .await
            .unwrap(),
        2.0 * linear_bytes as f64,
        "pulled again after its eviction"
    );
    assert_eq!(
        pm.metric("mm_storage_cache_evictions_total").await.unwrap(),
        2.0
    );
    assert_eq!(storage.cached_models(), ["s3-linear", "zip-anomaly"]);
    assert!(pm.metric("mm_storage_cache_bytes").await.unwrap() > 0.0);
    assert!(storage.partial_is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_and_sources_are_refused_with_a_reason_and_leave_nothing_behind() {
    let storage = storage().await;
    let linear = example_model("linear");
    let web = &storage.web;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "bad-dotdot",
            json!({"storageUri": web.publish("dotdot.tar.gz", &archives::tar_gz_with_raw_entry(&linear, "../evil.txt").unwrap()).unwrap()}),
            "archive entry \"../evil.txt\" escapes the model directory",
        ),
        (
            "bad-absolute",
            json!({"storageUri": web.publish("absolute.tar.gz", &archives::tar_gz_with_raw_entry(&linear, "/tmp/evil.txt").unwrap()).unwrap()}),
            "archive entry \"/tmp/evil.txt\" is an absolute path",
        ),
        (
            "bad-symlink",
            json!({"storageUri": web.publish("symlink.tar.gz", &archives::tar_gz_with_symlink(&linear).unwrap()).unwrap()}),
            "archive entry \"1/leak\" is a link",
        ),
        (
            "bad-zip-symlink",
            json!({"storageUri": web.publish("symlink.zip", &archives::zip_with_symlink(&linear).unwrap()).unwrap()}),
            "archive entry \"1/leak\" is a link",
        ),
        (
            // 4 MiB of zeros, a few KiB compressed: stopped while unpacking.
            "bad-bomb",
            json!({"storageUri": web.publish("bomb.tar.gz", &archives::tar_gz_bomb(&linear, 4 << 20).unwrap()).unwrap()}),
            "model files are larger than 1048576 bytes",
        ),
        (
            "bad-many-files",
            json!({"storageUri": web.publish("many.zip", &archives::zip_with_many_files(&linear, 60).unwrap()).unwrap()}),
            "model has more than 50 files",
        ),
        (
            "bad-sha256",
            json!({"storageUri": web.publish("linear.zip", &archives::zip_of(&linear).unwrap()).unwrap(),
                   "sha256": "0".repeat(64)}),
            "sha256 mismatch: the spec says 0000",
        ),
        (
            "bad-layout",
            json!({"storageUri": web.publish("flat.tar.gz", &archives::tar_gz_without_version(&linear).unwrap()).unwrap()}),
            "no numeric version subdirectory",
        ),
        (
            "bad-missing",
            json!({"storageUri": web.url("no-such-model.zip")}),
            "the server answered HTTP 404",
        ),
        (
            "bad-empty-prefix",
            json!({"storageUri": "s3://models/nothing-here"}),
            "no objects under the prefix",
        ),
    ];

    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "1Gi".into(),
        pool_manager_args: storage.args(&["--max-model-bytes", "1Mi", "--max-model-files", "50"]),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let (body, _, _) = example("linear");
    for (name, mut spec, want) in cases {
        spec["memory"] = json!("32Mi");
        register(&stack, name, spec).await;
        let r = stack.infer(name, &body).await.unwrap();
        assert_eq!(r.status, 503, "{name}: {}", r.text);
        let error = r.json["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("model '{name}' failed to load: pulling "))
                && error.contains(want),
            "{name}: {error:?} lacks {want:?}"
        );
        let view = model_view(&stack, name).await;
        assert_eq!(view["state"], "Failed", "{name}: {view}");
        let last = view["lastError"].as_str().unwrap_or_default();
        assert!(
            last.contains(want),
            "{name}: lastError {last:?} lacks {want:?}"
        );
        assert!(
            !repository_has(&stack.repository, name),
            "{name} reached the repository"
        );
    }
    assert!(storage.cached().is_empty(), "{:?}", storage.cached());
    assert!(storage.partial_is_empty());
    let failures = stack
        .pool_manager
        .metric("mm_storage_pull_failures_total")
        .await
        .unwrap();
    assert_eq!(failures, 10.0);
    for reason in [
        "unsafe_archive",
        "too_large",
        "checksum",
        "layout",
        "download",
    ] {
        let n = stack
            .pool_manager
            .metric_where(
                "mm_storage_pull_failures_total",
                &format!("reason=\"{reason}\""),
            )
            .await
            .unwrap();
        assert!(n >= 1.0, "no pull failure counted as {reason}");
    }
    // Nothing was loaded anywhere.
    assert_eq!(
        stack
            .pool_manager
            .metric("mm_model_loads_total")
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_without_a_shared_disk_get_the_files_in_the_load_request() {
    let storage = storage().await;
    storage
        .s3
        .put_dir("models", "linear", &example_model("linear"))
        .await
        .unwrap();
    // A model whose files are more than a load request may carry here (8Ki).
    storage
        .s3
        .put_dir("models", "big", &example_model("linear"))
        .await
        .unwrap();
    storage
        .s3
        .put("models", "big/1/blob.bin", vec![7u8; 16 << 10])
        .await
        .unwrap();

    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "1Gi".into(),
        pool_manager_args: storage.args(&[
            "--file-transfer",
            "load-request",
            "--max-inline-bytes",
            "8Ki",
            "--reconcile-interval",
            "500ms",
        ]),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    register(
        &stack,
        "s3-linear",
        json!({"storageUri": "s3://models/linear"}),
    )
    .await;
    register(
        &stack,
        "file-xor",
        json!({"storageUri": format!("file://{}", example_model("xor_mlp").display())}),
    )
    .await;
    register(&stack, "big", json!({"storageUri": "s3://models/big"})).await;

    infer_ok(&stack, "s3-linear", "linear").await;
    infer_ok(&stack, "file-xor", "xor_mlp").await;
    // Nothing went through the shared repository directory.
    let staged: Vec<_> = std::fs::read_dir(&stack.repository).unwrap().collect();
    assert!(staged.is_empty(), "{staged:?}");
    // An undeclared size is estimated from the pulled files (1.25x), as for file:// URIs.
    let view = model_view(&stack, "s3-linear").await;
    assert_eq!(view["memoryDeclared"], false);
    assert!(view["memory"].as_u64().unwrap() > 3000, "{view}");

    // Triton's repository index does not list models loaded from request files; the
    // reconciliation (every 500 ms here) must not take them for lost.
    let passes = stack
        .pool_manager
        .metric("mm_reconciliations_total")
        .await
        .unwrap();
    eventually(
        "two more reconciliations",
        Duration::from_secs(10),
        || async {
            let now = stack
                .pool_manager
                .metric("mm_reconciliations_total")
                .await?;
            Ok((now >= passes + 2.0).then_some(()))
        },
    )
    .await
    .unwrap();
    let view = model_view(&stack, "s3-linear").await;
    assert_eq!(view["state"], "Loaded", "{view}");
    infer_ok(&stack, "s3-linear", "linear").await;
    assert_eq!(
        stack
            .pool_manager
            .metric("mm_model_loads_total")
            .await
            .unwrap(),
        2.0
    );

    let (body, _, _) = example("linear");
    let r = stack.infer("big", &body).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        r.text.contains("more than a load request may carry"),
        "{}",
        r.text
    );

    // Deleting unloads the model from the replica.
    let (status, _) = stack
        .admin_call(Method::DELETE, "/api/v1/models/s3-linear", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let ready = format!(
        "{}/v2/models/s3-linear/ready",
        stack.replica("r0").unwrap().url()
    );
    eventually("s3-linear unloaded", Duration::from_secs(10), || async {
        let status = stack.http.get(&ready).send().await?.status();
        Ok((!status.is_success()).then_some(()))
    })
    .await
    .unwrap();
}
