//! Where the harness finds the tools the Makefile installed and the binaries it built.

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

pub fn tritonserver() -> PathBuf {
    from_env_or("MM_TRITONSERVER", root().join(".tools/bin/tritonserver"))
}

pub fn envoy() -> PathBuf {
    from_env_or("MM_ENVOY", root().join(".tools/bin/envoy"))
}

pub fn pool_manager() -> PathBuf {
    from_env_or(
        "MM_POOL_MANAGER_BIN",
        root().join("target/debug/pool-manager"),
    )
}

/// The `mmctl` client (built with the pool-manager by `make test`).
pub fn mmctl() -> PathBuf {
    from_env_or("MM_MMCTL_BIN", root().join("target/debug/mmctl"))
}

/// Debian's headless-capable Chromium (installed by install-deps.sh).
pub fn chromium() -> PathBuf {
    from_env_or("MM_CHROMIUM", PathBuf::from("/usr/bin/chromium"))
}

pub fn filter_wasm() -> PathBuf {
    from_env_or(
        "MM_FILTER_WASM",
        root().join("target/wasm32-wasip1/release/mm_filter.wasm"),
    )
}

pub fn envoy_template() -> PathBuf {
    root().join("envoy/gateway.yaml.tmpl")
}

/// An example model shipped in `models/`.
pub fn example_model(name: &str) -> PathBuf {
    root().join("models").join(name)
}

/// Where install-deps.sh put the Python test clients' packages (tritonclient).
pub fn python_lib() -> PathBuf {
    root().join(".tools/pylib")
}

/// A Python test client under `tests/clients/`.
pub fn client_script(name: &str) -> PathBuf {
    root().join("tests/clients").join(name)
}

/// Azurite's Blob service (installed by install-deps.sh from npm).
pub fn azurite_blob() -> PathBuf {
    from_env_or(
        "MM_AZURITE_BLOB",
        root().join(".tools/azurite/node_modules/.bin/azurite-blob"),
    )
}

/// fake-gcs-server, the GCS emulator (installed by install-deps.sh from its PyPI wheel).
pub fn fake_gcs_server() -> PathBuf {
    from_env_or(
        "MM_FAKE_GCS_SERVER",
        root().join(".tools/fake-gcs-server/bin/fake-gcs-server"),
    )
}
