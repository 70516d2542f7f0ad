//! Remote storage URIs (`s3://`, `gs://`, `az://`, `https://<account>.blob.core.windows.net`,
//! `http(s)://` archives) and named-store paths, parsed and checked without any network
//! I/O: registration stays fast, and the pull happens on the model's first load.
//!
//! Invariants: a parsed location names a bucket and a key (or an archive URL) whose every
//! path segment is an ordinary name (no `.`, `..`, backslash or NUL, encoded or not); a
//! source's `Display` never shows credentials (user info, query strings).

use std::fmt;

use crate::spec::SpecError;

/// The object stores `object_store` reaches for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectScheme {
    /// Amazon S3 and S3-compatible stores (MinIO, Ceph RGW, R2, moto...).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

impl ObjectScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectScheme::S3 => "s3",
            ObjectScheme::Gcs => "gs",
            ObjectScheme::Azure => "az",
        }
    }
}

/// The archive formats a model may be packed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveKind {
    /// `.tar.gz` / `.tgz`.
    TarGz,
    /// `.zip`.
    Zip,
}

impl fmt::Display for ArchiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArchiveKind::TarGz => "tar.gz",
            ArchiveKind::Zip => "zip",
        })
    }
}

/// The archive kind a file name announces, by its extension (case-insensitive).
pub fn archive_kind(name: &str) -> Option<ArchiveKind> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        Some(ArchiveKind::TarGz)
    } else if lower.ends_with(".zip") {
        Some(ArchiveKind::Zip)
    } else {
        None
    }
}

/// Where a remote model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteLocation {
    /// An object store: either a "directory" (`key` is a prefix holding the Triton model
    /// layout) or one archive object.
    Object {
        scheme: ObjectScheme,
        /// The Azure storage account a `https://<account>.blob.core.windows.net` URI names
        /// (`az://` takes it from the store's settings).
        account: Option<String>,
        /// The bucket (S3, GCS) or container (Azure).
        bucket: String,
        /// Decoded key, no leading or trailing `/`; empty for the bucket's root.
        key: String,
        archive: Option<ArchiveKind>,
    },
    /// An archive of the model directory on a web server.
    Http { url: url::Url, archive: ArchiveKind },
}

impl RemoteLocation {
    /// The archive format, if the location is one file to unpack.
    pub fn archive(&self) -> Option<ArchiveKind> {
        match self {
            RemoteLocation::Object { archive, .. } => *archive,
            RemoteLocation::Http { archive, .. } => Some(*archive),
        }
    }

    /// A bounded label for metrics: `s3`, `gs`, `http` or `https`.
    pub fn scheme_label(&self) -> &'static str {
        match self {
            RemoteLocation::Object { scheme, .. } => scheme.as_str(),
            RemoteLocation::Http { url, .. } if url.scheme() == "https" => "https",
            RemoteLocation::Http { .. } => "http",
        }
    }
}

/// The key of a named store (`[stores.<key>]` in `--storage-config`; `storage.key` in a
/// spec, as in ModelMesh's `storage-config` secret): 1 to 63 of `[A-Za-z0-9_.-]`, starting
/// with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey(String);

impl StoreKey {
    pub fn new(key: &str) -> Result<Self, SpecError> {
        let bytes = key.as_bytes();
        let ok = (1..=63).contains(&bytes.len())
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(key.to_owned()))
        } else {
            Err(SpecError::StoreKey(key.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a remote model's files are, as registered: a URI (reached with the environment's
/// default settings, or with a named store's), or a path in a named store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteSource {
    /// `storageUri`, optionally with `storage.key` choosing the store settings (endpoint,
    /// credentials) to reach it with. `uri` may hold credentials: never shown.
    Uri {
        uri: String,
        location: RemoteLocation,
        store: Option<StoreKey>,
    },
    /// `storage.key` + `storage.path` (+ `storage.bucket`, else the store's default
    /// bucket): resolved against the store's settings at each pull, so a reloaded
    /// `--storage-config` applies.
    Path {
        store: StoreKey,
        /// Checked, percent-decoded, no leading or trailing `/`.
        path: String,
        bucket: Option<String>,
    },
}

impl RemoteSource {
    /// The named store this source uses, if any.
    pub fn store(&self) -> Option<&StoreKey> {
        match self {
            RemoteSource::Uri { store, .. } => store.as_ref(),
            RemoteSource::Path { store, .. } => Some(store),
        }
    }

    /// The archive format, if the source is one file to unpack.
    pub fn archive(&self) -> Option<ArchiveKind> {
        match self {
            RemoteSource::Uri { location, .. } => location.archive(),
            RemoteSource::Path { path, .. } => path.rsplit('/').next().and_then(archive_kind),
        }
    }

    /// What identifies this version of the files (hashed into the cache key; may hold
    /// secrets, so it is never shown). A URI without a store is the URI itself, as before
    /// named stores existed, so existing cache entries keep their names.
    pub fn identity(&self) -> String {
        match self {
            RemoteSource::Uri {
                uri, store: None, ..
            } => uri.clone(),
            RemoteSource::Uri {
                uri,
                store: Some(key),
                ..
            } => format!("{uri}\nstore={key}"),
            RemoteSource::Path {
                store,
                path,
                bucket,
            } => format!(
                "store={store}\nbucket={}\npath={path}",
                bucket.as_deref().unwrap_or("")
            ),
        }
    }
}

/// Shows the source without credentials: the URI redacted, or the store and path.
impl fmt::Display for RemoteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteSource::Uri { uri, store, .. } => {
                f.write_str(&mm_wire::redact_uri(uri))?;
                match store {
                    Some(key) => write!(f, " (store {key})"),
                    None => Ok(()),
                }
            }
            RemoteSource::Path {
                store,
                path,
                bucket,
            } => {
                write!(f, "store {store} path {path:?}")?;
                match bucket {
                    Some(b) => write!(f, " in bucket {b}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Parses a remote URI already known to be a valid URL with scheme `s3`, `gs`, `http` or
/// `https`. `raw` is checked as typed, because the `url` crate normalises `..` away.
pub fn parse_remote(raw: &str, url: &url::Url) -> Result<RemoteLocation, SpecError> {
    match url.scheme() {
        "s3" => parse_object(raw, url, ObjectScheme::S3),
        "gs" => parse_object(raw, url, ObjectScheme::Gcs),
        "az" => parse_object(raw, url, ObjectScheme::Azure),
        "https" if url.query().is_none() && azure_account(url).is_some() => {
            parse_azure_https(raw, url)
        }
        "http" | "https" => parse_http(raw, url),
        other => Err(SpecError::UnsupportedScheme(other.to_owned())),
    }
}

/// The account of an Azure Blob endpoint `https://<account>.blob.core.windows.net`.
fn azure_account(url: &url::Url) -> Option<&str> {
    url.host_str()?
        .strip_suffix(".blob.core.windows.net")
        .filter(|a| !a.contains('.'))
}

/// `https://<account>.blob.core.windows.net/<container>/<prefix>` without a query string:
/// a blob "directory" or archive reached with the store's credentials. (With a query
/// string, usually a SAS token, it is an archive URL fetched as is: see [`parse_http`].)
fn parse_azure_https(raw: &str, url: &url::Url) -> Result<RemoteLocation, SpecError> {
    let shape = || SpecError::ObjectUriShape("https://<account>.blob.core.windows.net/container");
    if url.fragment().is_some() || !url.username().is_empty() || url.port().is_some() {
        return Err(shape());
    }
    let account = azure_account(url).ok_or_else(shape)?;
    if !(3..=24).contains(&account.len())
        || !account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(SpecError::AzureAccount(account.to_owned()));
    }
    let rest = strip_scheme(raw).ok_or_else(shape)?;
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let (container, key) = path.split_once('/').unwrap_or((path, ""));
    let mut location = object_location(ObjectScheme::Azure, container, key, shape)?;
    if let RemoteLocation::Object { account: a, .. } = &mut location {
        *a = Some(account.to_owned());
    }
    Ok(location)
}

fn parse_object(
    raw: &str,
    url: &url::Url,
    scheme: ObjectScheme,
) -> Result<RemoteLocation, SpecError> {
    let shape = || SpecError::ObjectUriShape(scheme.as_str());
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.port().is_some()
    {
        return Err(shape());
    }
    let rest = strip_scheme(raw).ok_or_else(shape)?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    object_location(scheme, bucket, key, shape)
}

/// A checked object location: a valid bucket (or container) name and a key of ordinary
/// segments; a trailing `/` is allowed, empty segments are not.
fn object_location(
    scheme: ObjectScheme,
    bucket: &str,
    key: &str,
    shape: impl Fn() -> SpecError,
) -> Result<RemoteLocation, SpecError> {
    check_bucket(scheme, bucket)?;
    let key = checked_key(key, shape)?;
    let archive = key.rsplit('/').next().and_then(archive_kind);
    Ok(RemoteLocation::Object {
        scheme,
        account: None,
        bucket: bucket.to_owned(),
        key,
        archive,
    })
}

/// A key (or named-store path) of ordinary, percent-decoded segments joined by `/`.
pub(crate) fn checked_key(key: &str, shape: impl Fn() -> SpecError) -> Result<String, SpecError> {
    let key = key.strip_suffix('/').unwrap_or(key);
    let mut segments = Vec::new();
    if !key.is_empty() {
        for segment in key.split('/') {
            if segment.is_empty() {
                return Err(shape());
            }
            segments.push(checked_segment(segment)?);
        }
    }
    Ok(segments.join("/"))
}

/// Checks a bucket (S3, GCS) or container (Azure) name.
pub(crate) fn check_bucket(scheme: ObjectScheme, bucket: &str) -> Result<(), SpecError> {
    let ok = match scheme {
        ObjectScheme::Azure => valid_container(bucket),
        ObjectScheme::S3 | ObjectScheme::Gcs => valid_bucket(bucket),
    };
    if ok {
        Ok(())
    } else if scheme == ObjectScheme::Azure {
        Err(SpecError::ContainerName(bucket.to_owned()))
    } else {
        Err(SpecError::BucketName(bucket.to_owned()))
    }
}

/// An archive on a web server. User info (`https://user:password@host/...`) is sent as
/// HTTP basic credentials and a query string (a pre-signed URL) is kept; neither is ever
/// shown (see [`mm_wire::redact_uri`]).
fn parse_http(raw: &str, url: &url::Url) -> Result<RemoteLocation, SpecError> {
    if url.host_str().is_none_or(str::is_empty) || url.fragment().is_some() {
        return Err(SpecError::ArchiveUriShape);
    }
    let rest = strip_scheme(raw).ok_or(SpecError::ArchiveUriShape)?;
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    for segment in path.split('/').skip(1) {
        checked_segment(segment)?;
    }
    let last = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    let archive = archive_kind(last).ok_or(SpecError::ArchiveUriShape)?;
    Ok(RemoteLocation::Http {
        url: url.clone(),
        archive,
    })
}

/// The part of `raw` after `scheme://`.
fn strip_scheme(raw: &str) -> Option<&str> {
    let (_, rest) = raw.split_once("://")?;
    Some(rest)
}

/// A percent-decoded path segment that is an ordinary name.
fn checked_segment(segment: &str) -> Result<String, SpecError> {
    let decoded = crate::spec::percent_decode(segment);
    if decoded == "." || decoded == ".." || decoded.contains(['\\', '\0']) {
        return Err(SpecError::Traversal);
    }
    Ok(decoded)
}

/// S3 and GCS bucket names: 3 to 63 characters of lowercase letters, digits, `.`, `-`
/// and `_`, starting and ending with a letter or digit, and not shaped like an IP address
/// (S3 forbids those; with virtual-hosted addressing the bucket becomes a host name).
/// GCS allows longer dotted names; those are refused here rather than guessed at.
fn valid_bucket(bucket: &str) -> bool {
    let bytes = bucket.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bucket.parse::<std::net::Ipv4Addr>().is_err()
}

/// Azure container names: 3 to 63 characters of lowercase letters, digits and single `-`,
/// starting and ending with a letter or digit.
fn valid_container(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("--")
}

/// Checks an optional `sha256` from a spec: 64 hex characters, returned lowercase.
pub fn parse_sha256(text: &str) -> Result<String, SpecError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(SpecError::Sha256Format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<RemoteLocation, SpecError> {
        parse_remote(raw, &url::Url::parse(raw).unwrap())
    }

    #[test]
    fn parses_object_store_prefixes_and_archives() {
        assert_eq!(
            parse("s3://models-eu/fraud/v3/").unwrap(),
            RemoteLocation::Object {
                scheme: ObjectScheme::S3,
                account: None,
                bucket: "models-eu".into(),
                key: "fraud/v3".into(),
                archive: None,
            }
        );
        assert_eq!(
            parse("gs://b-1/a%20b/m.TGZ").unwrap(),
            RemoteLocation::Object {
                scheme: ObjectScheme::Gcs,
                account: None,
                bucket: "b-1".into(),
                key: "a b/m.TGZ".into(),
                archive: Some(ArchiveKind::TarGz),
            }
        );
        assert!(matches!(
            parse("s3://bucket").unwrap(),
            RemoteLocation::Object { ref key, .. } if key.is_empty()
        ));
    }

    #[test]
    fn parses_http_archives() {
        let loc = parse("https://example.com/m/linear.tar.gz?X-Amz-Signature=abc").unwrap();
        assert_eq!(loc.archive(), Some(ArchiveKind::TarGz));
        assert_eq!(loc.scheme_label(), "https");
        assert_eq!(
            parse("http://127.0.0.1:8081/a.zip").unwrap().archive(),
            Some(ArchiveKind::Zip)
        );
    }

    #[test]
    fn refuses_bad_shapes() {
        let cases = [
            ("s3://Bucket/m", "bucket"),
            ("s3://ab/m", "bucket"),
            ("s3://bucket-/m", "bucket"),
            ("s3://bucket/a//b", "s3://bucket/path"),
            ("s3://bucket/m?x=1", "s3://bucket/path"),
            ("s3://user@bucket/m", "s3://bucket/path"),
            ("s3://bucket:9000/m", "s3://bucket/path"),
            ("s3://bucket/a/../b", "'..'"),
            ("gs://bucket/%2E%2E/b", "'..'"),
            ("s3://bucket/a%5Cb", "'..'"),
            ("https://example.com/model", "archive"),
            ("https://example.com/", "archive"),
            ("s3://10.0.0.1/m", "bucket"),
            ("az://Models/m", "container"),
            ("az://a--b/m", "container"),
            ("https://acct.blob.core.windows.net/Bad/m", "container"),
            ("https://ab.blob.core.windows.net/c1c/m", "account"),
            ("https://example.com/m.zip#x", "archive"),
            ("https://example.com/a/../m.zip", "'..'"),
            ("https://example.com/%2e%2e/m.zip", "'..'"),
        ];
        for (raw, want) in cases {
            let err = parse(raw).unwrap_err().to_string();
            assert!(err.contains(want), "{raw}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn parses_azure_uris() {
        assert_eq!(
            parse("az://models/fraud/v3").unwrap(),
            RemoteLocation::Object {
                scheme: ObjectScheme::Azure,
                account: None,
                bucket: "models".into(),
                key: "fraud/v3".into(),
                archive: None,
            }
        );
        assert_eq!(
            parse("https://acct1.blob.core.windows.net/models/m.tar.gz").unwrap(),
            RemoteLocation::Object {
                scheme: ObjectScheme::Azure,
                account: Some("acct1".into()),
                bucket: "models".into(),
                key: "m.tar.gz".into(),
                archive: Some(ArchiveKind::TarGz),
            }
        );
        // With a SAS token it is a pre-signed URL: fetched as is.
        let sas = parse("https://acct1.blob.core.windows.net/models/m.zip?sv=1&sig=x").unwrap();
        assert!(matches!(sas, RemoteLocation::Http { .. }), "{sas:?}");
    }

    #[test]
    fn http_archives_may_carry_credentials_that_display_never_shows() {
        let raw = "https://user:pw@example.com/m.tar.gz?X-Amz-Signature=secret";
        let source = RemoteSource::Uri {
            uri: raw.into(),
            location: parse(raw).unwrap(),
            store: None,
        };
        let shown = source.to_string();
        assert_eq!(shown, "https://REDACTED@example.com/m.tar.gz?REDACTED");
        assert_eq!(source.identity(), raw);
        let keyed = RemoteSource::Path {
            store: StoreKey::new("localMinIO").unwrap(),
            path: "sklearn/m".into(),
            bucket: None,
        };
        assert_eq!(keyed.to_string(), "store localMinIO path \"sklearn/m\"");
        assert!(StoreKey::new("a b").is_err() && StoreKey::new("").is_err());
    }

    #[test]
    fn checks_sha256() {
        let good = "AB".repeat(32);
        assert_eq!(parse_sha256(&good).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("ab").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }
}
