//! `perf record` of a running Envoy for the length of one load run (`--perf-dir`), so the
//! warm targets can be profiled in the very runs that measure them. Envoy's binary is
//! stripped and V8 cannot be told to write a perf map (its flags are fixed at build time in
//! proxy-wasm-cpp-host), so the profile attributes samples to the Envoy binary, the kernel,
//! libc and the anonymous memory of V8's compiled Wasm code: scripts/profile-warm.sh
//! reads them by shared object.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// A `perf record` in progress.
pub struct Recording {
    child: Child,
    file: String,
}

/// Starts `perf record -g` on every thread of `pid` for `seconds` (perf stops when its
/// `sleep` does). Timer-based sampling (`cpu-clock`): this machine's VM exposes no hardware
/// counters.
pub fn record(pid: u32, seconds: u64, file: &Path) -> anyhow::Result<Recording> {
    let child = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-q", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(file)
        .args(["--", "sleep"])
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf (apt-get install linux-perf)")?;
    Ok(Recording {
        child,
        file: file.display().to_string(),
    })
}

impl Recording {
    /// Waits for perf to write its file.
    pub fn finish(self) -> anyhow::Result<()> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "perf record into {} failed: {}",
                self.file,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Appends one recorded run to `dir/runs.tsv` (file, target, round, Envoy CPU µs per
/// request, requests), which scripts/profile-warm.sh joins with the profiles.
pub fn note_run(
    dir: &Path,
    file: &Path,
    label: &str,
    round: usize,
    cpu_us: Option<f64>,
    requests: u64,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut tsv = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("runs.tsv"))?;
    let name = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpu = cpu_us.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    writeln!(tsv, "{name}\t{label}\t{round}\t{cpu}\t{requests}")?;
    Ok(())
}
