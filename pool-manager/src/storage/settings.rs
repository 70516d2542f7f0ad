//! The `--storage-config` file: default object-store settings (`[s3]`, `[gcs]`, `[azure]`,
//! applied over the `AWS_*`, `GOOGLE_*` and `AZURE_*` environment) and named stores
//! (`[stores.<key>]`, ModelMesh's `storage-config` secret in TOML), each with its own
//! endpoint and credentials, chosen per model by `storage.key`.
//!
//! Invariant: no value read from the file or a credentials file ever appears in an error,
//! a log line or a `Debug` output: errors name the file, the table and the key only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::gcp::GoogleConfigKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::uri::StoreKey;

/// The kind of a named store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreType {
    S3,
    Gcs,
    Azure,
    /// Archives under a base URL (`endpoint`), with optional basic or bearer credentials.
    Http,
}

impl StoreType {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreType::S3 => "s3",
            StoreType::Gcs => "gcs",
            StoreType::Azure => "azure",
            StoreType::Http => "http",
        }
    }
}

/// Why the storage settings were refused. Never carries a value from the files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SettingsError {
    pub path: String,
    pub reason: String,
}

/// The named stores' keys and types, shared with registration (which refuses an unknown
/// `storage.key`) and updated when the file is reloaded.
#[derive(Debug, Clone, Default)]
pub struct StoreCatalog(Arc<RwLock<BTreeMap<String, StoreType>>>);

impl StoreCatalog {
    pub fn get(&self, key: &str) -> Option<StoreType> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
    }

    pub fn keys(&self) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    pub(crate) fn set(&self, stores: BTreeMap<String, StoreType>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stores;
    }
}

/// Credentials for an `http` store.
#[derive(Clone, Default)]
pub enum HttpAuth {
    #[default]
    None,
    Basic {
        username: String,
        password: Option<String>,
    },
    Bearer(String),
}

/// A named store, resolved into the settings its client is built with.
#[derive(Clone)]
pub enum StoreTarget {
    S3(Vec<(AmazonS3ConfigKey, String)>),
    Gcs(Vec<(GoogleConfigKey, String)>),
    Azure(Vec<(AzureConfigKey, String)>),
    Http { base: url::Url, auth: HttpAuth },
}

/// One `[stores.<key>]` table, resolved.
#[derive(Clone)]
pub struct NamedStore {
    pub kind: StoreType,
    /// The bucket (container) used when a model's spec names none.
    pub bucket: Option<String>,
    pub target: StoreTarget,
}

/// Everything the file (and the environment) says, ready to build clients from. Holds
/// secrets: deliberately not `Debug`.
#[derive(Clone, Default)]
pub struct Settings {
    pub s3: Vec<(AmazonS3ConfigKey, String)>,
    pub gcs: Vec<(GoogleConfigKey, String)>,
    pub azure: Vec<(AzureConfigKey, String)>,
    pub stores: BTreeMap<StoreKey, NamedStore>,
}

impl Settings {
    /// The stores' keys and types, for [`StoreCatalog`].
    pub fn catalog(&self) -> BTreeMap<String, StoreType> {
        self.stores
            .iter()
            .map(|(k, s)| (k.as_str().to_owned(), s.kind))
            .collect()
    }
}

/// The file as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    s3: HashMap<String, toml::Value>,
    #[serde(default)]
    gcs: HashMap<String, toml::Value>,
    #[serde(default)]
    azure: HashMap<String, toml::Value>,
    #[serde(default)]
    stores: BTreeMap<String, StoreTable>,
}

/// `[stores.<key>]`. Field aliases follow ModelMesh's storage-config JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreTable {
    #[serde(rename = "type")]
    kind: StoreType,
    #[serde(default, alias = "endpoint_url")]
    endpoint: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default, alias = "default_bucket", alias = "container")]
    bucket: Option<String>,
    #[serde(default, alias = "account_name")]
    account: Option<String>,
    #[serde(default)]
    credentials: Option<HashMap<String, toml::Value>>,
    #[serde(default)]
    credentials_file: Option<PathBuf>,
    /// Any other `object_store` setting of the store's type.
    #[serde(default)]
    options: HashMap<String, toml::Value>,
}

/// The settings read from disk, with what to watch for changes.
pub struct Loaded {
    pub settings: Settings,
    /// The config file and every credentials file it names.
    pub files: Vec<PathBuf>,
    /// Digest of those files' contents (missing files count as empty).
    pub fingerprint: [u8; 32],
}

/// Per-request bounds applied to every object-store client.
#[derive(Debug, Clone, Copy)]
pub struct ClientBounds {
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl ClientBounds {
    fn pairs(&self) -> [(&'static str, String); 2] {
        [
            (
                "timeout",
                format!("{}s", self.request_timeout.as_secs().max(1)),
            ),
            (
                "connect_timeout",
                format!("{}s", self.connect_timeout.as_secs().max(1)),
            ),
        ]
    }
}

/// Reads `path` (None: no file) and the environment into [`Settings`]. A file that does not
/// exist yet counts as empty (a Kubernetes Secret mounted as optional), and is picked up
/// when it appears (see [`super::StorageWatcher`]).
pub fn load(path: Option<&Path>, bounds: ClientBounds) -> Result<Loaded, SettingsError> {
    let (config, mut files, mut hasher) = match path {
        None => (FileConfig::default(), Vec::new(), Sha256::new()),
        Some(path) => {
            let mut hasher = Sha256::new();
            let text = read_optional(path, &mut hasher)?;
            let config = match text {
                Some(text) => toml::from_str::<FileConfig>(&text).map_err(|e| SettingsError {
                    path: path.display().to_string(),
                    reason: toml_reason(&text, &e),
                })?,
                None => FileConfig::default(),
            };
            (config, vec![path.to_path_buf()], hasher)
        }
    };
    let file_name = path.map_or_else(String::new, |p| p.display().to_string());
    let bad = |reason: String| SettingsError {
        path: file_name.clone(),
        reason,
    };
    let mut settings = Settings {
        s3: bounds_for(bounds, "s3").map_err(&bad)?,
        gcs: bounds_for(bounds, "gcs").map_err(&bad)?,
        azure: bounds_for(bounds, "azure").map_err(&bad)?,
        stores: BTreeMap::new(),
    };
    // The environment, as the builders' from_env read it, then the file: later keys win.
    for (key, value) in std::env::vars() {
        let lower = key.to_ascii_lowercase();
        if key.starts_with("AWS_") {
            if let Ok(k) = lower.parse() {
                settings.s3.push((k, value));
            }
        } else if key.starts_with("GOOGLE_") {
            if let Ok(k) = lower.parse() {
                settings.gcs.push((k, value));
            }
        } else if key.starts_with("AZURE_") {
            if let Ok(k) = lower.parse() {
                settings.azure.push((k, value));
            }
        }
    }
    extend_keys(&mut settings.s3, &config.s3, "[s3]").map_err(&bad)?;
    extend_keys(&mut settings.gcs, &config.gcs, "[gcs]").map_err(&bad)?;
    extend_keys(&mut settings.azure, &config.azure, "[azure]").map_err(&bad)?;
    for (name, table) in config.stores {
        let key = StoreKey::new(&name).map_err(|e| bad(format!("[stores.{name}]: {e}")))?;
        let (store, credentials_file) = resolve_store(table, bounds, &mut hasher)
            .map_err(|reason| bad(format!("[stores.{name}]: {reason}")))?;
        files.extend(credentials_file);
        settings.stores.insert(key, store);
    }
    Ok(Loaded {
        settings,
        files,
        fingerprint: hasher.finalize().into(),
    })
}

/// The digest [`load`] would compute for `files` now, to tell whether they changed.
pub fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for file in files {
        // An unreadable file reads as changed content; `load` then says why.
        match std::fs::read(file) {
            Ok(bytes) => hasher.update(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => hasher.update(e.to_string().as_bytes()),
        }
        hasher.update(b"\0");
    }
    hasher.finalize().into()
}

fn read_optional(path: &Path, hasher: &mut Sha256) -> Result<Option<String>, SettingsError> {
    let result = match std::fs::read_to_string(path) {
        Ok(text) => {
            hasher.update(text.as_bytes());
            Ok(Some(text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SettingsError {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    };
    hasher.update(b"\0");
    result
}

fn bounds_for<K: FromStr>(bounds: ClientBounds, table: &str) -> Result<Vec<(K, String)>, String> {
    bounds
        .pairs()
        .into_iter()
        .map(|(k, v)| Ok((parse_key(k, table)?, v)))
        .collect()
}

fn extend_keys<K: FromStr>(
    into: &mut Vec<(K, String)>,
    table: &HashMap<String, toml::Value>,
    name: &str,
) -> Result<(), String> {
    for (key, value) in table {
        into.push((parse_key(key, name)?, value_text(value)));
    }
    Ok(())
}

fn parse_key<K: FromStr>(key: &str, table: &str) -> Result<K, String> {
    key.to_ascii_lowercase()
        .parse()
        .map_err(|_| format!("{table} key {key:?} is not an object_store setting"))
}

fn value_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A TOML error as line and column plus the parser's message with every quoted value
/// removed (serde quotes the offending value, which may be a secret).
fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    let message = without_quoted(e.message());
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, str::len) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// Credentials from the table and/or the credentials file (JSON or TOML; for `gcs`, a
/// service-account key file). Returns the resolved store and the file to watch.
fn resolve_store(
    t: StoreTable,
    bounds: ClientBounds,
    hasher: &mut Sha256,
) -> Result<(NamedStore, Option<PathBuf>), String> {
    let mut credentials: Vec<(String, toml::Value)> = t.credentials.into_iter().flatten().collect();
    let mut file_text = None;
    if let Some(file) = &t.credentials_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("credentials_file {}: {e}", file.display()))?;
        hasher.update(text.as_bytes());
        hasher.update(b"\0");
        if t.kind != StoreType::Gcs {
            credentials.extend(parse_credentials_file(file, &text)?);
        }
        file_text = Some(text);
    }
    let bucket = t.bucket.clone();
    let target = match t.kind {
        StoreType::S3 => {
            let mut o: Vec<(AmazonS3ConfigKey, String)> = bounds_for(bounds, "s3")?;
            if let Some(endpoint) = &t.endpoint {
                o.push((AmazonS3ConfigKey::Endpoint, endpoint.clone()));
                if endpoint.starts_with("http://") {
                    o.push((
                        AmazonS3ConfigKey::Client(object_store::ClientConfigKey::AllowHttp),
                        "true".into(),
                    ));
                }
            }
            if let Some(region) = &t.region {
                o.push((AmazonS3ConfigKey::Region, region.clone()));
            }
            push_keys(
                &mut o,
                credentials.iter().map(|(k, v)| (k, v)),
                "credentials",
            )?;
            push_keys(&mut o, &t.options, "options")?;
            StoreTarget::S3(o)
        }
        StoreType::Azure => {
            let mut o: Vec<(AzureConfigKey, String)> = bounds_for(bounds, "azure")?;
            if let Some(account) = &t.account {
                o.push((AzureConfigKey::AccountName, account.clone()));
            }
            if let Some(endpoint) = &t.endpoint {
                o.push((AzureConfigKey::Endpoint, endpoint.clone()));
                if endpoint.starts_with("http://") {
                    o.push((
                        AzureConfigKey::Client(object_store::ClientConfigKey::AllowHttp),
                        "true".into(),
                    ));
                }
            }
            no_region(&t.region, "azure")?;
            push_keys(
                &mut o,
                credentials.iter().map(|(k, v)| (k, v)),
                "credentials",
            )?;
            push_keys(&mut o, &t.options, "options")?;
            StoreTarget::Azure(o)
        }
        StoreType::Gcs => {
            let mut o: Vec<(GoogleConfigKey, String)> = bounds_for(bounds, "gcs")?;
            no_region(&t.region, "gcs")?;
            if let Some(key) = gcs_key(&t.endpoint, &credentials, file_text.as_deref())? {
                o.push((GoogleConfigKey::ServiceAccountKey, key));
            } else if let Some(file) = &t.credentials_file {
                o.push((GoogleConfigKey::ServiceAccount, file.display().to_string()));
            }
            push_keys(&mut o, &t.options, "options")?;
            StoreTarget::Gcs(o)
        }
        StoreType::Http => {
            let endpoint = t
                .endpoint
                .as_deref()
                .ok_or("an http store needs endpoint, the base URL of its archives")?;
            let mut base = url::Url::parse(endpoint)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or("endpoint must be an http(s) URL")?;
            if !base.username().is_empty() || base.query().is_some() {
                return Err("endpoint must not hold credentials: put them in credentials".into());
            }
            if !base.path().ends_with('/') {
                base.set_path(&format!("{}/", base.path()));
            }
            no_region(&t.region, "http")?;
            if !t.options.is_empty() || t.bucket.is_some() || t.account.is_some() {
                return Err("an http store takes only endpoint and credentials".into());
            }
            StoreTarget::Http {
                base,
                auth: http_auth(&credentials)?,
            }
        }
    };
    Ok((
        NamedStore {
            kind: t.kind,
            bucket,
            target,
        },
        t.credentials_file,
    ))
}

fn no_region(region: &Option<String>, kind: &str) -> Result<(), String> {
    match region {
        Some(_) => Err(format!("region applies to s3 stores, not {kind}")),
        None => Ok(()),
    }
}

fn push_keys<K: FromStr>(
    into: &mut Vec<(K, String)>,
    pairs: impl IntoIterator<Item = (impl AsRef<str>, impl std::borrow::Borrow<toml::Value>)>,
    what: &str,
) -> Result<(), String> {
    for (key, value) in pairs {
        into.push((parse_key(key.as_ref(), what)?, value_text(value.borrow())));
    }
    Ok(())
}

/// A credentials file: a JSON object or a TOML table of keys.
fn parse_credentials_file(file: &Path, text: &str) -> Result<Vec<(String, toml::Value)>, String> {
    let bad = |reason: String| format!("credentials_file {}: {reason}", file.display());
    if text.trim_start().starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| {
                bad(format!(
                    "not a JSON object (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            })?;
        map.into_iter()
            .map(|(k, v)| {
                let value = match v {
                    serde_json::Value::String(s) => toml::Value::String(s),
                    serde_json::Value::Bool(b) => toml::Value::Boolean(b),
                    serde_json::Value::Number(n) => toml::Value::String(n.to_string()),
                    _ => return Err(bad(format!("key {k:?} must be a string"))),
                };
                Ok((k, value))
            })
            .collect()
    } else {
        let table: HashMap<String, toml::Value> =
            toml::from_str(text).map_err(|e| bad(toml_reason(text, &e)))?;
        Ok(table.into_iter().collect())
    }
}

/// The service-account key to hand to object_store for a `gcs` store whose endpoint is set
/// (object_store takes the endpoint only from the key's `gcs_base_url`), or whose
/// credentials are inline. `None`: use `credentials_file` as a path, or the environment.
fn gcs_key(
    endpoint: &Option<String>,
    inline: &[(String, toml::Value)],
    file: Option<&str>,
) -> Result<Option<String>, String> {
    if endpoint.is_none() && inline.is_empty() {
        return Ok(None);
    }
    let mut key: serde_json::Map<String, serde_json::Value> = match file {
        Some(text) => serde_json::from_str(text).map_err(|_| {
            "credentials_file of a gcs store must be a service-account JSON key".to_owned()
        })?,
        None => serde_json::Map::new(),
    };
    for (k, v) in inline {
        key.insert(k.clone(), serde_json::Value::String(value_text(v)));
    }
    if let Some(endpoint) = endpoint {
        key.insert("gcs_base_url".into(), endpoint.trim_end_matches('/').into());
        if file.is_none() && inline.is_empty() {
            // An endpoint and no credentials: an emulator or a public bucket, no OAuth.
            key.insert("disable_oauth".into(), true.into());
        }
    }
    for field in ["client_email", "private_key", "private_key_id"] {
        key.entry(field).or_insert_with(|| "".into());
    }
    serde_json::to_string(&key)
        .map(Some)
        .map_err(|_| "encoding the service-account key".to_owned())
}

fn http_auth(credentials: &[(String, toml::Value)]) -> Result<HttpAuth, String> {
    let get = |name: &str| {
        credentials
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| value_text(v))
    };
    for (k, _) in credentials {
        if !matches!(k.as_str(), "username" | "password" | "bearer_token") {
            return Err(format!(
                "credentials key {k:?}: an http store takes username and password, or bearer_token"
            ));
        }
    }
    match (get("username"), get("password"), get("bearer_token")) {
        (None, None, None) => Ok(HttpAuth::None),
        (Some(username), password, None) => Ok(HttpAuth::Basic { username, password }),
        (None, None, Some(token)) => Ok(HttpAuth::Bearer(token)),
        _ => Err("credentials: username (and password), or bearer_token, not both".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: ClientBounds = ClientBounds {
        request_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
    };

    fn load_text(text: &str) -> Result<Loaded, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        load_in(dir.path(), text)
    }

    fn load_in(dir: &Path, text: &str) -> Result<Loaded, SettingsError> {
        let path = dir.join("storage.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path), BOUNDS)
    }

    #[test]
    fn reads_defaults_and_named_stores_of_every_type() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("minio.json");
        std::fs::write(
            &creds,
            r#"{"access_key_id": "AK", "secret_access_key": "SK"}"#,
        )
        .unwrap();
        let sa = dir.path().join("sa.json");
        std::fs::write(&sa, r#"{"client_email": "x@y", "private_key": "PK"}"#).unwrap();
        let text = format!(
            r#"
[s3]
region = "us-east-1"

[azure]
account_name = "devstoreaccount1"

[stores.localMinIO]
type = "s3"
endpoint_url = "http://minio:9000"
default_bucket = "models"
credentials_file = "{}"

[stores.gcs-emu]
type = "gcs"
endpoint = "http://127.0.0.1:4443"
bucket = "b1"

[stores.gcs-prod]
type = "gcs"
credentials_file = "{}"

[stores.blob]
type = "azure"
account = "acct"
container = "models"
credentials = {{ access_key = "KEY" }}

[stores.web]
type = "http"
endpoint = "https://artifacts.example.com/models"
credentials = {{ username = "u", password = "p" }}
"#,
            creds.display(),
            sa.display()
        );
        let loaded = load_in(dir.path(), &text).unwrap();
        let s = &loaded.settings;
        assert_eq!(s.stores.len(), 5);
        let store = |k: &str| &s.stores[&StoreKey::new(k).unwrap()];
        assert_eq!(store("localMinIO").bucket.as_deref(), Some("models"));
        let StoreTarget::S3(o) = &store("localMinIO").target else {
            panic!("s3")
        };
        assert!(o.contains(&(AmazonS3ConfigKey::AccessKeyId, "AK".into())));
        assert!(o.contains(&(AmazonS3ConfigKey::Endpoint, "http://minio:9000".into())));
        let StoreTarget::Gcs(o) = &store("gcs-emu").target else {
            panic!("gcs")
        };
        let (_, key) = o
            .iter()
            .find(|(k, _)| *k == GoogleConfigKey::ServiceAccountKey)
            .unwrap();
        let key: serde_json::Value = serde_json::from_str(key).unwrap();
        assert_eq!(key["gcs_base_url"], "http://127.0.0.1:4443");
        assert_eq!(key["disable_oauth"], true);
        let StoreTarget::Gcs(o) = &store("gcs-prod").target else {
            panic!("gcs")
        };
        assert!(o.iter().any(|(k, _)| *k == GoogleConfigKey::ServiceAccount));
        let StoreTarget::Http { base, auth } = &store("web").target else {
            panic!("http")
        };
        assert_eq!(base.as_str(), "https://artifacts.example.com/models/");
        assert!(matches!(auth, HttpAuth::Basic { username, .. } if username == "u"));
        assert_eq!(s.catalog().get("blob").copied(), Some(StoreType::Azure));
        // The config file and both credentials files are watched.
        assert_eq!(loaded.files.len(), 3);
        assert_eq!(fingerprint(&loaded.files), loaded.fingerprint);
    }

    #[test]
    fn errors_name_the_key_and_never_a_value() {
        let cases = [
            (
                "[stores.a]\ntype = \"s3\"\ncredentials = { no_such_key = \"SECRET1\" }\n",
                "no_such_key",
            ),
            (
                "[stores.a]\ntype = \"s3\"\ncredentials = \"SECRET1\"\n",
                "line 3",
            ),
            ("[stores.a]\ntype = \"ftp\"\n", "line 2"),
            ("[stores.a]\ntype = \"http\"\n", "needs endpoint"),
            (
                "[stores.a]\ntype = \"http\"\nendpoint = \"https://u:SECRET1@h/\"\n",
                "must not hold credentials",
            ),
            (
                "[stores.a]\ntype = \"gcs\"\nregion = \"SECRET1\"\n",
                "region applies",
            ),
            ("[stores.\"a b\"]\ntype = \"s3\"\n", "storage.key"),
            (
                "[s3]\naccess_key_id = \"SECRET1\"\nnope = \"SECRET1\"\n",
                "nope",
            ),
            ("[other]\nx = \"SECRET1\"\n", "line 1"),
            ("[stores.a]\ntype = \"s3\"\nsecret = \"SECRET1\n", "line 3"),
        ];
        for (text, want) in cases {
            let e = load_text(text).err().unwrap().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("SECRET1"), "{text}: leaks a value: {e}");
        }
    }

    #[test]
    fn a_missing_file_is_empty_and_changes_when_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.toml");
        let loaded = load(Some(&path), BOUNDS).unwrap();
        assert!(loaded.settings.stores.is_empty());
        assert_eq!(fingerprint(&loaded.files), loaded.fingerprint);
        std::fs::write(&path, "[stores.a]\ntype = \"s3\"\n").unwrap();
        assert_ne!(fingerprint(&loaded.files), loaded.fingerprint);
        assert_eq!(load(Some(&path), BOUNDS).unwrap().settings.stores.len(), 1);
    }
}
