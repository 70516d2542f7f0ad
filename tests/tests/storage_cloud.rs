//! Every store type and the named-store selection end to end (issue 16): Azure Blob on a
//! real Azurite (`az://`, `https://<account>.blob.core.windows.net`, a named azure store),
//! GCS on a real fake-gcs-server (a named gcs store, and the `[gcs]` defaults), a named
//! S3 store on moto, a named http store; each model pulled, loaded by real Triton and
//! answered through the gateway. Store credentials never show in a view or the log; the
//! storage settings are reloaded when the file changes, and a broken file keeps the old.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{assert_close, example};
use mm_tests::paths::example_model;
use mm_tests::servers::{archives, AzuriteServer, FileServer, GcsServer, S3Server};
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use reqwest::Method;
use serde_json::{json, Value};

const S3_SECRET: &str = "named-s3-secret-value";
const LATE_SECRET: &str = "late-store-secret-value";

/// Writes `storage.toml` into `mount` the way the kubelet updates a mounted Secret: the
/// contents in a new timestamped directory, then the `..data` symlink swapped to it in one
/// rename, with `storage.toml -> ..data/storage.toml` never changing.
fn write_secret(mount: &Path, version: u32, text: &str) {
    let dir = mount.join(format!("..2026_v{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("storage.toml"), text).unwrap();
    let tmp = mount.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, mount.join("..data")).unwrap();
    let link = mount.join("storage.toml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/storage.toml", &link).unwrap();
    }
}

async fn put(stack: &Stack, name: &str, spec: &Value) -> (u16, Value) {
    stack
        .admin_call(
            Method::PUT,
            &format!("/api/v1/models/{name}"),
            Some(spec.to_string()),
        )
        .await
        .unwrap()
}

async fn register_and_infer(stack: &Stack, name: &str, spec: Value, example_name: &str) {
    let (status, view) = put(stack, name, &spec).await;
    assert_eq!(status, 201, "{name}: {view}");
    let (body, output, want) = example(example_name);
    let r = stack.infer(name, &body).await.unwrap();
    assert_eq!(r.status, 200, "{name}: {}", r.text);
    assert_close(&r.output(output).unwrap(), &want, name);
}

/// The storage settings: defaults for Azure (Azurite) and GCS (the emulator), and named
/// stores of each type; `late` only when `with_late`.
fn settings(
    dir: &Path,
    azurite: &AzuriteServer,
    gcs: &GcsServer,
    s3: &S3Server,
    web: &FileServer,
    with_late: bool,
) -> String {
    let sa = dir.join("gcs-emulator-key.json");
    std::fs::write(
        &sa,
        json!({"gcs_base_url": gcs.endpoint(), "disable_oauth": true,
               "client_email": "", "private_key": "", "private_key_id": ""})
        .to_string(),
    )
    .unwrap();
    let late_creds = dir.join("late.toml");
    std::fs::write(
        &late_creds,
        format!("access_key = \"{}\"\n", AzuriteServer::KEY),
    )
    .unwrap();
    let mut text = format!(
        r#"
[azure]
account_name = "{account}"
access_key = "{key}"
endpoint = "{azure}"
allow_http = true

[gcs]
service_account_path = "{sa}"

[stores.blob]
type = "azure"
endpoint = "{azure}"
account = "{account}"
container = "models"
credentials = {{ access_key = "{key}" }}

[stores.gcs-emu]
type = "gcs"
endpoint = "{gcs}"
bucket = "gmodels"

[stores.minio]
type = "s3"
endpoint = "{s3}"
region = "us-east-1"
bucket = "smodels"
credentials = {{ access_key_id = "testing", secret_access_key = "{S3_SECRET}" }}

[stores.web]
type = "http"
endpoint = "http://127.0.0.1:{web}/archives"
"#,
        account = AzuriteServer::ACCOUNT,
        key = AzuriteServer::KEY,
        azure = azurite.endpoint(),
        sa = sa.display(),
        gcs = gcs.endpoint(),
        s3 = s3.endpoint(),
        web = web.port,
    );
    if with_late {
        text.push_str(&format!(
            "\n[stores.late]\ntype = \"azure\"\nendpoint = \"{}\"\naccount = \"{}\"\ncontainer = \"models\"\ncredentials_file = \"{}\"\n\n# {LATE_SECRET}\n",
            azurite.endpoint(),
            AzuriteServer::ACCOUNT,
            late_creds.display()
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_gcs_s3_and_http_stores_serve_models_chosen_by_key_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(served.join("archives")).unwrap();
    let (azurite, gcs, s3, web) = tokio::join!(
        AzuriteServer::start(dir.path()),
        GcsServer::start(dir.path()),
        S3Server::start(dir.path()),
        FileServer::start(&served, dir.path()),
    );
    let (azurite, gcs, s3, web) = (azurite.unwrap(), gcs.unwrap(), s3.unwrap(), web.unwrap());
    let xor_tgz = archives::tar_gz_of(&example_model("xor_mlp"), Some("xor_mlp")).unwrap();
    let anomaly_tgz = archives::tar_gz_of(&example_model("anomaly"), None).unwrap();
    azurite.create_container("models").await.unwrap();
    azurite
        .put_dir("models", "linear", &example_model("linear"))
        .await
        .unwrap();
    azurite
        .put("models", "archives/xor.tar.gz", xor_tgz.clone())
        .await
        .unwrap();
    gcs.create_bucket("gmodels").await.unwrap();
    gcs.put("gmodels", "anomaly.tar.gz", anomaly_tgz)
        .await
        .unwrap();
    s3.create_bucket("smodels").await.unwrap();
    s3.put_dir("smodels", "team-a/linear", &example_model("linear"))
        .await
        .unwrap();
    std::fs::write(served.join("archives/xor.tar.gz"), &xor_tgz).unwrap();

    // Mounted as a Kubernetes Secret volume is.
    let mount = dir.path().join("secret");
    std::fs::create_dir_all(&mount).unwrap();
    let config = mount.join("storage.toml");
    write_secret(
        &mount,
        1,
        &settings(dir.path(), &azurite, &gcs, &s3, &web, false),
    );
    // No --allow-private-storage: object stores and named stores are the operator's, so
    // the egress policy (for URIs from specs) does not stop them.
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_memory: "2Gi".into(),
        pool_manager_args: vec![
            "--storage-config".into(),
            config.display().to_string(),
            "--storage-config-poll".into(),
            "200ms".into(),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();

    // Azure Blob: a prefix with the [azure] defaults, an archive by its https URL (the
    // account from the URL, the endpoint from the settings), and a named store's path.
    register_and_infer(
        &stack,
        "az-linear",
        json!({"storageUri": "az://models/linear", "memory": "32Mi"}),
        "linear",
    )
    .await;
    let https = format!(
        "https://{}.blob.core.windows.net/models/archives/xor.tar.gz",
        AzuriteServer::ACCOUNT
    );
    register_and_infer(
        &stack,
        "az-https-xor",
        json!({"storageUri": https, "memory": "64Mi"}),
        "xor_mlp",
    )
    .await;
    register_and_infer(
        &stack,
        "az-named",
        json!({"storage": {"key": "blob", "path": "linear"}, "memory": "32Mi"}),
        "linear",
    )
    .await;
    // GCS: a named store pointed at the emulator, and the [gcs] defaults with a key file
    // naming the emulator. (Archive objects: object_store lists a GCS prefix with the XML
    // API, which the emulator does not serve; see README "Model storage".)
    register_and_infer(
        &stack,
        "gcs-named",
        json!({"storage": {"key": "gcs-emu", "path": "anomaly.tar.gz"}, "memory": "48Mi"}),
        "anomaly",
    )
    .await;
    register_and_infer(
        &stack,
        "gcs-default",
        json!({"storageUri": "gs://gmodels/anomaly.tar.gz", "memory": "48Mi"}),
        "anomaly",
    )
    .await;
    // S3 with the store's own credentials, in a bucket other than its default one, and by
    // URI with the store's settings.
    register_and_infer(
        &stack,
        "s3-named",
        json!({"storage": {"key": "minio", "path": "team-a/linear"}, "memory": "32Mi"}),
        "linear",
    )
    .await;
    register_and_infer(&stack, "s3-keyed-uri", json!({"storageUri": "s3://smodels/team-a/linear", "storage": {"key": "minio"}, "memory": "32Mi"}), "linear").await;
    // An http store: the base URL is the operator's (loopback here, allowed for it).
    register_and_infer(
        &stack,
        "web-named",
        json!({"storage": {"key": "web", "path": "xor.tar.gz"}, "memory": "64Mi"}),
        "xor_mlp",
    )
    .await;
    for scheme in ["az", "gs", "s3", "http"] {
        let n = stack
            .pool_manager
            .metric_where(
                "mm_storage_download_bytes_total",
                &format!("scheme=\"{scheme}\""),
            )
            .await
            .unwrap();
        assert!(n > 0.0, "nothing downloaded over {scheme}");
    }
    let (_, view) = stack
        .admin_call(Method::GET, "/api/v1/models/s3-named", None)
        .await
        .unwrap();
    assert_eq!(
        view["storage"],
        json!({"key": "minio", "path": "team-a/linear"})
    );

    // A key the settings do not have yet: refused; then the file gains it and it works.
    let late = json!({"storage": {"key": "late", "path": "linear"}, "memory": "32Mi"});
    let (status, refused) = put(&stack, "late-linear", &late).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("storage.key \"late\" is not a store"),
        "{refused}"
    );
    write_secret(
        &mount,
        2,
        &settings(dir.path(), &azurite, &gcs, &s3, &web, true),
    );
    eventually(
        "the reloaded settings to know store late",
        Duration::from_secs(10),
        || async {
            let (status, _) = stack
                .admin_call(
                    Method::PUT,
                    "/api/v1/models/late-linear?dryRun=true",
                    Some(late.to_string()),
                )
                .await?;
            Ok((status == 200).then_some(()))
        },
    )
    .await
    .unwrap();
    register_and_infer(&stack, "late-linear", late.clone(), "linear").await;
    // A broken file: the previous settings stay in force.
    write_secret(&mount, 3, "[stores.late\ntype = \"azure\"\n");
    let log = stack.pool_manager.process.log_path().to_path_buf();
    eventually(
        "the refused reload in the log",
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&log)?;
            Ok(text.contains("storage settings not reloaded").then_some(()))
        },
    )
    .await
    .unwrap();
    let (status, body) = stack
        .admin_call(
            Method::PUT,
            "/api/v1/models/late-2?dryRun=true",
            Some(late.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "the old settings were dropped: {body}");

    // Credentials are in no view and no log line.
    let (_, views) = stack
        .admin_call(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap();
    for secret in [S3_SECRET, LATE_SECRET, AzuriteServer::KEY] {
        assert!(!views.to_string().contains(secret), "a view shows {secret}");
        assert!(!log_text.contains(secret), "the log shows {secret}");
    }
}
