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
    let shells: [(&str, Vec<(&str, &str)>); 2] = [
        // `source venv/bin/activate`, as most ML users have it.
        (
            "activated venv",
            vec![("PATH", &path), ("VIRTUAL_ENV", &venv)],
        ),
        // Everything at once, conda's variable included, and interpreter variables that
        // break any Python that honours them.
        (
            "venv, conda, PYTHONPATH and PYTHONHOME",
            vec![
                ("PATH", &path),
                ("VIRTUAL_ENV", &venv),
                ("CONDA_PREFIX", &venv),
                ("PYTHONPATH", &pythonpath),
                ("PYTHONHOME", &nowhere),
                ("PYTHONNOUSERSITE", ""),
            ],
        ),
    ];
    for (shell, env) in shells {
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
        every_example_answers(&stack, shell).await;
    }
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
