//! Storage servers for the model-storage scenarios, each a real implementation on a free
//! loopback port, killed on drop: an S3-compatible object store (moto in server mode,
//! installed into `.tools/pylib` by install-deps.sh), Azure Blob (Azurite, from npm), GCS
//! (gcp-storage-emulator, from PyPI), a plain HTTP file server (Python's `http.server`)
//! serving model archives and a server that only redirects. Plus the archives themselves,
//! good and malicious, built in memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::paths;
use crate::process::{free_port, Process};

const START_TIMEOUT: Duration = Duration::from_secs(30);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap_or_default()
}

async fn wait_http(process: &mut Process, url: &str, what: &str) -> anyhow::Result<()> {
    wait_answer(process, url, what, true).await
}

/// Waits until `url` answers (with a success status if `success`).
async fn wait_answer(
    process: &mut Process,
    url: &str,
    what: &str,
    success: bool,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        process.check_alive()?;
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() || !success {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{what} not ready after {START_TIMEOUT:?}\n{}",
                process.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// moto's S3 in server mode: accepts any credentials, no signature checks.
pub struct S3Server {
    pub port: u16,
    pub process: Process,
    http: reqwest::Client,
}

impl S3Server {
    pub async fn start(logs: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .env("PYTHONPATH", paths::python_lib());
        let mut process = Process::spawn("moto", cmd, &logs.join("moto.log"))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_http(&mut process, &format!("{endpoint}/"), "moto").await?;
        Ok(Self {
            port,
            process,
            http: client(),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The pool-manager's `--storage-config` for this server.
    pub fn storage_config(&self) -> String {
        format!(
            "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\nallow_http = true\n",
            self.endpoint()
        )
    }

    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let r = self
            .http
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("creating bucket {bucket}: HTTP {}", r.status());
        }
        Ok(())
    }

    pub async fn put(&self, bucket: &str, key: &str, data: Vec<u8>) -> anyhow::Result<()> {
        let r = self
            .http
            .put(format!("{}/{bucket}/{key}", self.endpoint()))
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("putting {bucket}/{key}: HTTP {}", r.status());
        }
        Ok(())
    }

    /// Uploads every file below `dir` under `prefix/`.
    pub async fn put_dir(&self, bucket: &str, prefix: &str, dir: &Path) -> anyhow::Result<()> {
        for (relative, path) in files_below(dir)? {
            self.put(
                bucket,
                &format!("{prefix}/{relative}"),
                std::fs::read(&path)?,
            )
            .await?;
        }
        Ok(())
    }
}

/// Python's `http.server` serving one directory.
pub struct FileServer {
    pub port: u16,
    pub dir: PathBuf,
    pub process: Process,
}

impl FileServer {
    pub async fn start(dir: &Path, logs: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir);
        let mut process = Process::spawn("http.server", cmd, &logs.join("http-server.log"))?;
        wait_http(
            &mut process,
            &format!("http://127.0.0.1:{port}/"),
            "http.server",
        )
        .await?;
        Ok(Self {
            port,
            dir: dir.to_path_buf(),
            process,
        })
    }

    /// Writes `data` as `name` in the served directory and returns its URL.
    pub fn publish(&self, name: &str, data: &[u8]) -> anyhow::Result<String> {
        std::fs::write(self.dir.join(name), data)?;
        Ok(self.url(name))
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

/// Azurite's Blob service with the emulator's well-known account; requests are signed with
/// its published key (Shared Key), as any Azure client does.
pub struct AzuriteServer {
    pub port: u16,
    pub process: Process,
    http: reqwest::Client,
}

impl AzuriteServer {
    pub const ACCOUNT: &'static str = "devstoreaccount1";
    /// Azurite's published development key (not a secret).
    pub const KEY: &'static str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    const VERSION: &'static str = "2021-08-06";

    pub async fn start(logs: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let data = logs.join("azurite");
        std::fs::create_dir_all(&data)?;
        let mut cmd = Command::new(paths::azurite_blob());
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(&data)
            .args(["--skipApiVersionCheck", "--silent"]);
        let mut process = Process::spawn("azurite", cmd, &logs.join("azurite.log"))?;
        // Any answer (403 without credentials) means it listens.
        let url = format!("http://127.0.0.1:{port}/{}", Self::ACCOUNT);
        wait_answer(&mut process, &url, "azurite", false).await?;
        Ok(Self {
            port,
            process,
            http: client(),
        })
    }

    /// The account's Blob endpoint, path-style as Azurite serves it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, Self::ACCOUNT)
    }

    /// A Shared Key signed request (`resource` is `/container[/blob]`).
    async fn signed(
        &self,
        method: reqwest::Method,
        resource: &str,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
        body: Vec<u8>,
    ) -> anyhow::Result<()> {
        use base64::Engine;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let mut headers: Vec<(String, String)> = vec![
            ("x-ms-date".into(), date),
            ("x-ms-version".into(), Self::VERSION.into()),
        ];
        headers.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        headers.sort();
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let mut to_sign = format!("{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n");
        for (k, v) in &headers {
            to_sign.push_str(&format!("{k}:{v}\n"));
        }
        to_sign.push_str(&format!("/{0}/{0}{resource}", Self::ACCOUNT));
        let mut sorted = query.to_vec();
        sorted.sort();
        for (k, v) in sorted {
            to_sign.push_str(&format!("\n{k}:{v}"));
        }
        let key = base64::engine::general_purpose::STANDARD.decode(Self::KEY)?;
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            to_sign.as_bytes(),
        );
        let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        let mut request = self
            .http
            .request(method.clone(), format!("{}{resource}", self.endpoint()))
            .query(query)
            .header(
                "authorization",
                format!("SharedKey {}:{signature}", Self::ACCOUNT),
            )
            .body(body);
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let r = request.send().await?;
        if !r.status().is_success() {
            let status = r.status();
            bail!(
                "azurite {method} {resource}: HTTP {status}: {}",
                r.text().await?
            );
        }
        Ok(())
    }

    pub async fn create_container(&self, name: &str) -> anyhow::Result<()> {
        let query = [("restype", "container")];
        self.signed(
            reqwest::Method::PUT,
            &format!("/{name}"),
            &query,
            &[],
            Vec::new(),
        )
        .await
    }

    pub async fn put(&self, container: &str, blob: &str, data: Vec<u8>) -> anyhow::Result<()> {
        let extra = [("x-ms-blob-type", "BlockBlob")];
        self.signed(
            reqwest::Method::PUT,
            &format!("/{container}/{blob}"),
            &[],
            &extra,
            data,
        )
        .await
    }

    /// Uploads every file below `dir` under `prefix/`.
    pub async fn put_dir(&self, container: &str, prefix: &str, dir: &Path) -> anyhow::Result<()> {
        for (relative, path) in files_below(dir)? {
            self.put(
                container,
                &format!("{prefix}/{relative}"),
                std::fs::read(&path)?,
            )
            .await?;
        }
        Ok(())
    }
}

/// fake-gcs-server: the GCS JSON API and, with `-public-host` set to its own address, the
/// XML API that object_store's GCS client speaks (list with `list-type=2`, object GETs
/// with `Last-Modified`); no authentication, data in memory. (gcp-storage-emulator serves
/// neither of those two, so object_store cannot use it.)
pub struct GcsServer {
    pub port: u16,
    pub process: Process,
    http: reqwest::Client,
}

impl GcsServer {
    pub async fn start(logs: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(paths::fake_gcs_server());
        cmd.args([
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            &port.to_string(),
        ])
        .args([
            "-backend",
            "memory",
            "-public-host",
            &address,
            "-log-level",
            "warn",
        ]);
        let mut process =
            Process::spawn("fake-gcs-server", cmd, &logs.join("fake-gcs-server.log"))?;
        let url = format!("http://{address}/storage/v1/b?project=test");
        wait_http(&mut process, &url, "fake-gcs-server").await?;
        Ok(Self {
            port,
            process,
            http: client(),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/storage/v1/b?project=test", self.endpoint()))
            .json(&serde_json::json!({ "name": bucket }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("creating bucket {bucket}: HTTP {}", r.status());
        }
        Ok(())
    }

    pub async fn put(&self, bucket: &str, name: &str, data: Vec<u8>) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!(
                "{}/upload/storage/v1/b/{bucket}/o",
                self.endpoint()
            ))
            .query(&[("uploadType", "media"), ("name", name)])
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("uploading {bucket}/{name}: HTTP {}", r.status());
        }
        Ok(())
    }
}

impl GcsServer {
    /// Uploads every file below `dir` under `prefix/`.
    pub async fn put_dir(&self, bucket: &str, prefix: &str, dir: &Path) -> anyhow::Result<()> {
        for (relative, path) in files_below(dir)? {
            self.put(
                bucket,
                &format!("{prefix}/{relative}"),
                std::fs::read(&path)?,
            )
            .await?;
        }
        Ok(())
    }
}

/// A server that answers every request with `302 Location: <location>`.
pub struct RedirectServer {
    pub port: u16,
    pub process: Process,
}

impl RedirectServer {
    pub async fn start(location: &str, logs: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new("python3");
        cmd.arg(paths::client_script("redirect_server.py"))
            .arg(port.to_string())
            .arg(location);
        let mut process = Process::spawn("redirect", cmd, &logs.join("redirect.log"))?;
        let url = format!("http://127.0.0.1:{port}/");
        wait_answer(&mut process, &url, "redirect server", false).await?;
        Ok(Self { port, process })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

/// Every regular file below `dir`, as (`/`-separated relative path, path), sorted.
pub fn files_below(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| d.display().to_string())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.file_type()?.is_dir() {
                stack.push((entry.path(), relative));
            } else {
                out.push((relative, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Model archives for the scenarios.
pub mod archives {
    use super::*;

    type TarGz = tar::Builder<flate2::write::GzEncoder<Vec<u8>>>;

    fn tar_gz(build: impl FnOnce(&mut TarGz) -> anyhow::Result<()>) -> anyhow::Result<Vec<u8>> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        build(&mut builder)?;
        Ok(builder.into_inner()?.finish()?)
    }

    fn header(size: u64, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(kind);
        h
    }

    fn add_dir(b: &mut TarGz, dir: &Path, top: Option<&str>) -> anyhow::Result<()> {
        for (relative, path) in files_below(dir)? {
            let data = std::fs::read(&path)?;
            let name = match top {
                Some(top) => format!("{top}/{relative}"),
                None => relative,
            };
            b.append_data(
                &mut header(data.len() as u64, tar::EntryType::Regular),
                name,
                &data[..],
            )?;
        }
        Ok(())
    }

    /// A `.tar.gz` of the model directory `dir`, its files under `top/` (as
    /// `tar -C parent top` makes it) or at the archive's root.
    pub fn tar_gz_of(dir: &Path, top: Option<&str>) -> anyhow::Result<Vec<u8>> {
        tar_gz(|b| add_dir(b, dir, top))
    }

    /// A `.zip` of the model directory `dir`, its files at the archive's root.
    pub fn zip_of(dir: &Path) -> anyhow::Result<Vec<u8>> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        for (relative, path) in files_below(dir)? {
            w.start_file(relative, opts)?;
            w.write_all(&std::fs::read(&path)?)?;
        }
        Ok(w.finish()?.into_inner())
    }

    /// A tar.gz of `dir` plus one entry whose name is written raw (the tar crate's own
    /// path setter refuses `..` and absolute names, which is what these archives carry).
    pub fn tar_gz_with_raw_entry(dir: &Path, raw_name: &str) -> anyhow::Result<Vec<u8>> {
        tar_gz(|b| {
            add_dir(b, dir, None)?;
            let mut h = header(4, tar::EntryType::Regular);
            let field = &mut h.as_old_mut().name;
            field[..raw_name.len()].copy_from_slice(raw_name.as_bytes());
            h.set_cksum();
            b.append(&h, &b"evil"[..])?;
            Ok(())
        })
    }

    /// A tar.gz of `dir` plus a symbolic link `1/leak` to `/etc/passwd`.
    pub fn tar_gz_with_symlink(dir: &Path) -> anyhow::Result<Vec<u8>> {
        tar_gz(|b| {
            add_dir(b, dir, None)?;
            let mut h = header(0, tar::EntryType::Symlink);
            b.append_link(&mut h, "1/leak", "/etc/passwd")?;
            Ok(())
        })
    }

    /// A zip of `dir` plus a symbolic link `1/leak` to `/etc/passwd`.
    pub fn zip_with_symlink(dir: &Path) -> anyhow::Result<Vec<u8>> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        for (relative, path) in files_below(dir)? {
            w.start_file(relative, opts)?;
            w.write_all(&std::fs::read(&path)?)?;
        }
        w.add_symlink("1/leak", "/etc/passwd", opts)?;
        Ok(w.finish()?.into_inner())
    }

    /// A tar.gz of `dir` plus `bytes` of zeros in one file: a few KiB compressed.
    pub fn tar_gz_bomb(dir: &Path, bytes: usize) -> anyhow::Result<Vec<u8>> {
        tar_gz(|b| {
            add_dir(b, dir, None)?;
            let zeros = vec![0u8; bytes];
            b.append_data(
                &mut header(bytes as u64, tar::EntryType::Regular),
                "1/zeros.bin",
                &zeros[..],
            )?;
            Ok(())
        })
    }

    /// A zip of `dir` plus `count` one-byte files.
    pub fn zip_with_many_files(dir: &Path, count: usize) -> anyhow::Result<Vec<u8>> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        for (relative, path) in files_below(dir)? {
            w.start_file(relative, opts)?;
            w.write_all(&std::fs::read(&path)?)?;
        }
        for i in 0..count {
            w.start_file(format!("1/extra-{i}.txt"), opts)?;
            w.write_all(b"x")?;
        }
        Ok(w.finish()?.into_inner())
    }

    /// A tar.gz holding only `config.pbtxt` and a `weights/` folder: no version directory.
    pub fn tar_gz_without_version(dir: &Path) -> anyhow::Result<Vec<u8>> {
        tar_gz(|b| {
            let config = std::fs::read(dir.join("config.pbtxt"))?;
            b.append_data(
                &mut header(config.len() as u64, tar::EntryType::Regular),
                "config.pbtxt",
                &config[..],
            )?;
            b.append_data(
                &mut header(2, tar::EntryType::Regular),
                "weights/w.json",
                &b"{}"[..],
            )?;
            Ok(())
        })
    }
}
