//! `mmctl` against a running stack (real pool-manager with an admin token, real Triton,
//! real Envoy): apply a YAML file, list and get in table and JSON form, follow events,
//! drain and undrain a replica, delete; and the exit codes scripts rely on.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::example;
use mm_tests::paths::{self, example_model};
use mm_tests::process::free_port;
use mm_tests::stack::eventually;
use mm_tests::{Stack, StackOptions};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const TOKEN: &str = "s3cret-token";

/// What one mmctl run left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

fn command(url: &str, token: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(paths::mmctl());
    cmd.args(args)
        .env_remove("MMCTL_TOKEN")
        .env("MMCTL_URL", url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(token) = token {
        cmd.env("MMCTL_TOKEN", token);
    }
    cmd
}

/// Runs mmctl with `MMCTL_URL=url` (and `MMCTL_TOKEN=token` if given).
async fn mmctl(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), command(url, token, args).output())
        .await
        .unwrap_or_else(|_| panic!("mmctl {args:?} did not finish"))
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (`make pool-manager` builds it)",
                paths::mmctl().display()
            )
        });
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mmctl_manages_models_and_replicas_of_a_running_pool_manager() {
    let files = tempfile::tempdir().unwrap();
    let token_file = write(files.path(), "token", &format!("{TOKEN}\n"));
    let stack = Stack::start(StackOptions {
        pool_manager_args: vec!["--admin-token-file".into(), token_file],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let url = stack.pool_manager.url("");
    let url = url.as_str();
    let admin = Some(TOKEN);

    // Apply: a YAML list of two models; a second apply changes nothing.
    let models_yaml = write(
        files.path(),
        "models.yaml",
        &format!(
            "# two example models\n- name: linear\n  storageUri: file://{}\n  memory: 32Mi\n- name: xor_mlp\n  storageUri: file://{}\n  memory: 64Mi\n  maxCopies: 2\n",
            example_model("linear").display(),
            example_model("xor_mlp").display()
        ),
    );
    let run = mmctl(url, admin, &["models", "apply", "-f", &models_yaml])
        .await
        .ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].contains("NAME") && lines[0].contains("RESULT"),
        "{run:?}"
    );
    assert!(
        lines[1].contains("Spec") && lines[1].contains("linear") && lines[1].contains("created"),
        "{run:?}"
    );
    assert!(
        lines[2].contains("xor_mlp") && lines[2].contains("created"),
        "{run:?}"
    );
    let run = mmctl(
        url,
        admin,
        &["-o", "json", "models", "apply", "-f", &models_yaml],
    )
    .await
    .ok();
    let results = run.json();
    assert_eq!(results[0]["result"], "unchanged", "{results}");
    assert_eq!(results[1]["model"]["maxCopies"], 2, "{results}");

    // List and get, as a table and as JSON.
    let run = mmctl(url, None, &["models", "list"]).await.ok();
    let header = run.stdout.lines().next().unwrap();
    for column in ["NAME", "STATE", "REPLICAS", "MEMORY", "IDLE", "LAST-ERROR"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        run.stdout.contains("linear") && run.stdout.contains("Pending"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("32Mi") && run.stdout.contains("64Mi"),
        "{run:?}"
    );
    let list = mmctl(url, None, &["-o", "json", "models", "ls"])
        .await
        .ok()
        .json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["linear", "xor_mlp"]);

    let (body, _, _) = example("linear");
    let response = stack.infer("linear", &body).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text);
    let placed = response.replica.clone().unwrap();
    let other = if placed == "r0" { "r1" } else { "r0" };

    let run = mmctl(url, None, &["models", "get", "linear"]).await.ok();
    assert!(run.stdout.contains("State:        Loaded"), "{run:?}");
    assert!(
        run.stdout.contains(&format!("Replicas:     {placed}")),
        "{run:?}"
    );
    let model = mmctl(url, None, &["models", "get", "linear", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(model["state"], "Loaded");
    assert_eq!(model["replicas"], serde_json::json!([placed]));

    let run = mmctl(url, None, &["replicas", "list"]).await.ok();
    assert!(run.stdout.starts_with("NAME"), "{run:?}");
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with(placed.as_str()))
        .unwrap();
    assert!(
        row.contains("yes") && row.contains("32Mi/1Gi") && row.contains("linear"),
        "{row}"
    );

    let run = mmctl(url, None, &["events"]).await.ok();
    for kind in ["registered", "placed", "loaded"] {
        assert!(run.stdout.contains(kind), "{kind}: {run:?}");
    }
    let events = mmctl(url, None, &["-o", "json", "events", "--limit", "2"])
        .await
        .ok()
        .json();
    assert_eq!(events.as_array().unwrap().len(), 2, "{events}");

    // Follow the events while draining the replica that holds `linear`: it was just used,
    // so it moves to the other replica before it leaves.
    let mut follow = command(
        url,
        None,
        &["-o", "json", "events", "--follow", "--limit", "1"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut followed = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), followed.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with('{'), "{first}");

    let run = mmctl(url, None, &["--token", TOKEN, "replicas", "drain", &placed])
        .await
        .ok();
    assert!(run.stdout.contains("draining"), "{run:?}");
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        let mut kinds = Vec::new();
        while let Some(line) = followed.next_line().await.unwrap() {
            let event: Value = serde_json::from_str(&line).unwrap();
            kinds.push(event["kind"].as_str().unwrap().to_owned());
            if event["kind"] == "unloaded" && event["model"] == "linear" {
                assert_eq!(event["reason"], "drained", "{line}");
                break;
            }
        }
        kinds
    })
    .await
    .expect("the drain's events within 30 s");
    assert!(seen.contains(&"drained".to_owned()), "{seen:?}");
    assert!(seen.contains(&"loaded".to_owned()), "moved first: {seen:?}");
    drop(followed);
    follow.kill().await.unwrap();

    let model = mmctl(url, None, &["-o", "json", "models", "get", "linear"])
        .await
        .ok()
        .json();
    assert_eq!(model["replicas"], serde_json::json!([other]), "{model}");
    assert!(!stack
        .replica(&placed)
        .unwrap()
        .has_ready("linear")
        .await
        .unwrap());
    assert!(stack
        .replica(other)
        .unwrap()
        .has_ready("linear")
        .await
        .unwrap());
    let replicas = mmctl(url, None, &["-o", "json", "replicas", "list"])
        .await
        .ok()
        .json();
    let drained = replicas
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == placed.as_str())
        .unwrap();
    assert_eq!(drained["draining"], true, "{replicas}");
    // A draining replica takes no new copies: xor_mlp loads on the other one.
    let (body, _, _) = example("xor_mlp");
    let response = stack.infer("xor_mlp", &body).await.unwrap();
    assert_eq!(
        response.replica.as_deref(),
        Some(other),
        "{}",
        response.text
    );

    let run = mmctl(url, admin, &["replicas", "undrain", &placed])
        .await
        .ok();
    assert!(run.stdout.contains("takes new copies again"), "{run:?}");
    let view = mmctl(url, admin, &["-o", "json", "replicas", "undrain", &placed])
        .await
        .ok()
        .json();
    assert_eq!(view["draining"], false);

    // Delete.
    let run = mmctl(url, admin, &["models", "delete", "xor_mlp"])
        .await
        .ok();
    assert_eq!(run.stdout.trim(), "model xor_mlp deleted");
    eventually("xor_mlp unloaded", Duration::from_secs(10), || async {
        Ok((!stack.replica(other)?.has_ready("xor_mlp").await?).then_some(()))
    })
    .await
    .unwrap();

    // Exit codes: 3 not found.
    for args in [
        vec!["models", "get", "xor_mlp"],
        vec!["models", "delete", "nope"],
        vec!["replicas", "drain", "r9"],
    ] {
        let run = mmctl(url, admin, &args).await;
        assert_eq!(run.code, 3, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("mmctl: not found:"), "{run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
    }
    // 4: a spec the server refuses, a file that is no spec, YAML that does not parse.
    let bad_spec = write(
        files.path(),
        "bad.json",
        r#"[{"name": "ghost", "storageUri": "file:///no/such/model", "memory": "1Mi"}]"#,
    );
    let run = mmctl(url, admin, &["models", "apply", "-f", &bad_spec]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stdout.contains("ghost") && run.stdout.contains("refused: storageUri"),
        "{run:?}"
    );
    let no_name = write(files.path(), "noname.yaml", "storageUri: file:///x\n");
    let broken = write(files.path(), "broken.yaml", "- name: [unclosed\n");
    for file in [&no_name, &broken] {
        let run = mmctl(url, admin, &["models", "apply", "-f", file]).await;
        assert_eq!(run.code, 4, "{file}: {run:?}");
    }
    let run = mmctl(url, admin, &["models", "apply", "-f", "/no/such/file.yaml"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    // 5: a wrong token, or none, for a call that changes something; reads need none.
    let run = mmctl(url, Some("wrong"), &["models", "delete", "linear"]).await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("unauthorized"), "{run:?}");
    let run = mmctl(url, None, &["replicas", "drain", "r0"]).await;
    assert_eq!(run.code, 5, "{run:?}");
    let run = mmctl(url, Some("wrong"), &["models", "get", "linear"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    // Nothing above changed `linear`.
    let model = mmctl(url, None, &["-o", "json", "models", "get", "linear"])
        .await
        .ok()
        .json();
    assert_eq!(model["state"], "Loaded");

    let status = mmctl(url, None, &["status"]).await.ok();
    assert!(status.stdout.contains("Hit rate:"), "{status:?}");
    assert!(status.stdout.contains("2/2 healthy"), "{status:?}");
}

#[tokio::test]
async fn mmctl_exits_7_when_nothing_listens_and_2_on_bad_usage() {
    let url = format!("http://127.0.0.1:{}", free_port().unwrap());
    for args in [
        vec!["models", "list"],
        vec!["--url", url.as_str(), "events"],
    ] {
        let run = mmctl(&url, None, &args).await;
        assert_eq!(run.code, 7, "{args:?}: {run:?}");
        assert!(run.stderr.contains("cannot connect"), "{run:?}");
    }
    for args in [
        vec!["models", "get"],
        vec!["-o", "yaml", "models", "list"],
        vec!["frobnicate"],
    ] {
        let run = mmctl(&url, None, &args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
    let help = mmctl(&url, None, &["--help"]).await.ok();
    assert!(help.stdout.contains("Exit codes:"), "{help:?}");
}
