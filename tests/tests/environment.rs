//! What each process of the stack gets from its environment. The shell a user starts the
//! stack from does not reach the replicas: with a Python virtual environment activated, or
//! `PYTHONPATH`/`PYTHONHOME` pointing somewhere wrong, Triton's Python backend still runs
//! the interpreter and packages install-deps.sh set up, and every example model answers
//! through the gateway (issue 12 item 1). Envoy gets the gateway token in
//! `MM_GATEWAY_TOKEN` (issue 12 item 5), restarts included.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_close, example, EXAMPLES};
use mm_tests::paths::example_model;
use mm_tests::{Stack, StackOptions};

/// A throwaway venv (no pip: nothing is installed into it, as in a fresh project venv),
/// made by the same `python3 -m venv` a user would run.
fn make_venv(dir: &Path) -> std::path::PathBuf {
    let venv = dir.join("venv");
    let out = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3 -m venv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(venv.join("bin/python3").exists() && venv.join("pyvenv.cfg").exists());
    venv
}

/// A directory whose `numpy` fails on import: what a stray `PYTHONPATH` can shadow.
fn shadowing_pythonpath(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("pythonpath");
    std::fs::create_dir_all(path.join("numpy")).unwrap();
    std::fs::write(
        path.join("numpy/__init__.py"),
        "raise ImportError('numpy shadowed by the caller PYTHONPATH')\n",
    )
    .unwrap();
    path
}

async fn every_example_answers(stack: &Stack, shell: &str) {
    for (model, memory) in EXAMPLES {
        let (status, body) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201, "{shell}: registering {model}: {body}");
        let (request, output, want) = example(model);
        let r = stack.infer(model, &request).await.unwrap();
        assert_eq!(r.status, 200, "{shell}: {model}: {}", r.text);
        assert_close(&r.output(output).unwrap(), &want, model);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_model_answers_whatever_python_the_callers_shell_has() {
    let scratch = tempfile::tempdir().unwrap();
    let venv = make_venv(scratch.path());
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let venv = venv.display().to_string();
    let pythonpath = shadowing_pythonpath(scratch.path()).display().to_string();
    let nowhere = scratch
        .path()
        .join("no-such-python-home")
        .display()
        .to_string();
    // Everything a shell can carry at once: an activated venv (the common case; `make up`
    // from one is the scenario below), conda's variable, a PYTHONPATH whose numpy fails to
    // import and a PYTHONHOME that does not exist (either breaks any Python honouring it).
    let env = [
        ("PATH", &path),
        ("VIRTUAL_ENV", &venv),
        ("CONDA_PREFIX", &venv),
        ("PYTHONPATH", &pythonpath),
        ("PYTHONHOME", &nowhere),
    ];
    let stack = Stack::start(StackOptions {
        replicas: 1,
        replica_env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    every_example_answers(&stack, "venv, conda, PYTHONPATH and PYTHONHOME").await;
}

/// `MM_GATEWAY_TOKEN` as the process `pid` got it (its environment at exec).
fn token_in_environ(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("MM_GATEWAY_TOKEN="))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gets_the_gateway_token_in_its_environment_across_restarts() {
    use mm_tests::process::free_port;
    use mm_tests::Envoy;
    let dir = tempfile::tempdir().unwrap();
    // Envoy needs no pool-manager to start (its cluster is resolved lazily).
    let unused = free_port().unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    let mut envoy = Envoy::spawn_with_token(unused, dir.path(), Some(token)).unwrap();
    envoy.wait_ready().await.unwrap();
    assert_eq!(
        token_in_environ(envoy.process.pid()).as_deref(),
        Some(token)
    );
    let first = envoy.process.pid();
    envoy.restart(1).await.unwrap();
    assert_ne!(envoy.process.pid(), first);
    assert_eq!(
        token_in_environ(envoy.process.pid()).as_deref(),
        Some(token)
    );
    drop(envoy);

    let without = tempfile::tempdir().unwrap();
    let mut envoy = Envoy::spawn(unused, without.path()).unwrap();
    envoy.wait_ready().await.unwrap();
    assert_eq!(token_in_environ(envoy.process.pid()), None);
}

/// Whether `pid` runs (a zombie does not: stack.sh's servers outlive the script that
/// started them, and whoever adopts them may reap late).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// `scripts/stack.sh` (what `make up`/`down`/`status`/`run` run) on free ports with its own
/// state folder, started from `cwd` with `env` on top of the test's environment. Stops its
/// stack on drop, whatever the test did.
struct ScriptStack {
    run_dir: tempfile::TempDir,
    cwd: std::path::PathBuf,
    env: Vec<(String, String)>,
    gateway_port: u16,
}

impl ScriptStack {
    fn new(cwd: &Path, extra: &[(&str, String)]) -> Self {
        use mm_tests::paths;
        use mm_tests::process::free_port;
        let mut env: Vec<(String, String)> = [
            "GATEWAY_PORT",
            "ENVOY_ADMIN_PORT",
            "POOL_MANAGER_HOP_PORT",
            "POOL_MANAGER_PORT",
            "R0_HTTP_PORT",
            "R0_GRPC_PORT",
            "R0_METRICS_PORT",
            "R1_HTTP_PORT",
            "R1_GRPC_PORT",
            "R1_METRICS_PORT",
        ]
        .iter()
        .map(|var| ((*var).to_owned(), free_port().unwrap().to_string()))
        .collect();
        let run_dir = tempfile::Builder::new()
            .prefix("mm-run-")
            .tempdir()
            .unwrap();
        for (k, v) in [
            ("STACK_RUN_DIR", run_dir.path().to_path_buf()),
            ("POOL_MANAGER_BIN", paths::pool_manager()),
            ("FILTER_WASM", paths::filter_wasm()),
            ("TRITONSERVER", paths::tritonserver()),
            ("ENVOY", paths::envoy()),
        ] {
            env.push((k.to_owned(), v.display().to_string()));
        }
        env.push(("REPLICA_MEMORY".to_owned(), "1Gi".to_owned()));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let gateway_port = env[0].1.parse().unwrap();
        Self {
            run_dir,
            cwd: cwd.to_path_buf(),
            env,
            gateway_port,
        }
    }

    fn port(&self, var: &str) -> u16 {
        let (_, v) = self.env.iter().find(|(k, _)| k == var).unwrap();
        v.parse().unwrap()
    }

    /// Runs `stack.sh <command>` (bounded); returns exit code, stdout and stderr.
    fn run(&self, command: &str) -> (i32, String, String) {
        let script = mm_tests::paths::root().join("scripts/stack.sh");
        let out = Command::new("timeout")
            .arg("300")
            .arg("bash")
            .arg(script)
            .arg(command)
            .current_dir(&self.cwd)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The PIDs `up` recorded, by name.
    fn pid(&self, name: &str) -> u32 {
        let pids = std::fs::read_to_string(self.run_dir.path().join("pids")).unwrap();
        pids.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for ScriptStack {
    fn drop(&mut self) {
        if self.run_dir.path().join("pids").exists() {
            let (code, out, err) = self.run("down");
            if code != 0 || std::thread::panicking() {
                eprintln!("stack.sh down: {code}\n{out}\n{err}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_up_from_a_venv_elsewhere_serves_every_model_and_is_safe_to_repeat() {
    let scratch = tempfile::tempdir().unwrap();
    let venv = make_venv(scratch.path());
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stack = ScriptStack::new(
        scratch.path(),
        &[
            ("PATH", path),
            ("VIRTUAL_ENV", venv.display().to_string()),
            // A token exported in the user's shell must not become the stack's.
            ("MM_GATEWAY_TOKEN", "from-the-shell".to_owned()),
        ],
    );

    let (code, out, err) = stack.run("up");
    assert_eq!(code, 0, "up:\n{out}\n{err}");
    let http = reqwest::Client::new();
    for (model, _) in EXAMPLES {
        let (request, output, want) = example(model);
        let r = http
            .post(format!(
                "http://127.0.0.1:{}/v2/models/{model}/infer",
                stack.gateway_port
            ))
            .json(&request)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let json: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{model}: {json}");
        let got: Vec<f64> = json["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == output)
            .unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_close(&got, &want, model);
    }

    // The gateway token: fresh, readable by this user only, in Envoy's environment (not
    // the shell's), and given to the pool-manager or else loudly reported as missing.
    let token_file = stack.run_dir.path().join("gateway-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim_end();
    assert!(token.len() == 64 && token.bytes().all(|c| c.is_ascii_hexdigit()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(token_in_environ(stack.pid("envoy")).as_deref(), Some(token));
    let pm_cmdline = std::fs::read(format!("/proc/{}/cmdline", stack.pid("pool-manager")))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>();
    let given = pm_cmdline
        .windows(2)
        .any(|w| w[0] == "--gateway-token-file" && Path::new(&w[1]) == token_file);
    assert!(
        given || err.contains("has no --gateway-token-file"),
        "the pool-manager got no token and nothing said so: {pm_cmdline:?}\n{err}"
    );

    // `make up` again: nothing to do, success. `make run` on top of it: a clear refusal.
    let (code, out, err) = stack.run("up");
    assert_eq!(code, 0, "second up:\n{out}\n{err}");
    assert!(out.contains("already up"), "{out}");
    let (code, _, err) = stack.run("run");
    assert_eq!(code, 1);
    assert!(err.contains("already up"), "{err}");
    let (code, out, _) = stack.run("status");
    assert_eq!(code, 0, "{out}");

    // Another stack asking for a port that is taken (by this stack's Envoy): refused up
    // front, naming the port and its variable.
    let busy_port = stack.port("GATEWAY_PORT");
    let other = ScriptStack::new(
        scratch.path(),
        &[("R1_METRICS_PORT", busy_port.to_string())],
    );
    let (code, _, err) = other.run("up");
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{busy_port} (R1_METRICS_PORT)")) && err.contains("already in use"),
        "{err}"
    );
    assert!(!other.run_dir.path().join("logs/r0.log").exists());

    // One part dies: `status` says so, `up` refuses to pile a second stack on top.
    let r1 = stack.pid("r1");
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{r1}")])
        .status()
        .unwrap();
    assert!(killed.success());
    mm_tests::stack::eventually("r1 gone", std::time::Duration::from_secs(10), || async {
        Ok((!alive(r1)).then_some(()))
    })
    .await
    .unwrap();
    let (code, out, _) = stack.run("status");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DEAD"), "{out}");
    let (code, _, err) = stack.run("up");
    assert_eq!(code, 1);
    assert!(err.contains("has died"), "{err}");

    // `make down` twice: everything stops, the token goes, the second one has nothing to do.
    let recorded: Vec<u32> = ["r0", "pool-manager", "envoy"]
        .iter()
        .map(|n| stack.pid(n))
        .collect();
    let (code, out, err) = stack.run("down");
    assert_eq!(code, 0, "down:\n{out}\n{err}");
    for pid in recorded {
        assert!(!alive(pid), "pid {pid} still running");
    }
    assert!(!token_file.exists());
    let (code, out, _) = stack.run("down");
    assert_eq!(code, 0);
    assert!(out.contains("nothing to stop"), "{out}");
}
