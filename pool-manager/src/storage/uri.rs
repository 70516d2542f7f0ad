//! Remote storage URIs (`s3://`, `gs://`, `http(s)://`), parsed and checked without any
//! network I/O: registration stays fast, and the pull happens on the model's first load.
//!
//! Invariant: a parsed location names a bucket and a key (or an archive URL) whose every
//! path segment is an ordinary name (no `.`, `..`, backslash or NUL, encoded or not).

use std::fmt;

use crate::spec::SpecError;

/// The object stores `object_store` reaches for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectScheme {
    /// Amazon S3 and S3-compatible stores (MinIO, Ceph RGW, R2, moto...).
    S3,
    /// Google Cloud Storage.
    Gcs,
}

impl ObjectScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectScheme::S3 => "s3",
            ObjectScheme::Gcs => "gs",
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

/// Parses a remote URI already known to be a valid URL with scheme `s3`, `gs`, `http` or
/// `https`. `raw` is checked as typed, because the `url` crate normalises `..` away.
pub fn parse_remote(raw: &str, url: &url::Url) -> Result<RemoteLocation, SpecError> {
    match url.scheme() {
        "s3" => parse_object(raw, url, ObjectScheme::S3),
        "gs" => parse_object(raw, url, ObjectScheme::Gcs),
        "http" | "https" => parse_http(raw, url),
        other => Err(SpecError::UnsupportedScheme(other.to_owned())),
    }
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
    if !valid_bucket(bucket) {
        return Err(SpecError::BucketName(bucket.to_owned()));
    }
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
    let archive = segments.last().and_then(|s| archive_kind(s));
    Ok(RemoteLocation::Object {
        scheme,
        bucket: bucket.to_owned(),
        key: segments.join("/"),
        archive,
    })
}

fn parse_http(raw: &str, url: &url::Url) -> Result<RemoteLocation, SpecError> {
    if url.host_str().is_none_or(str::is_empty)
        || !url.username().is_empty()
        || url.password().is_some()
        || url.fragment().is_some()
    {
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
/// and `_`, starting and ending with a letter or digit (GCS allows longer dotted names;
/// those are refused here rather than guessed at).
fn valid_bucket(bucket: &str) -> bool {
    let bytes = bucket.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
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
                bucket: "models-eu".into(),
                key: "fraud/v3".into(),
                archive: None,
            }
        );
        assert_eq!(
            parse("gs://b-1/a%20b/m.TGZ").unwrap(),
            RemoteLocation::Object {
                scheme: ObjectScheme::Gcs,
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
            ("https://u:p@example.com/m.zip", "archive"),
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
    fn checks_sha256() {
        let good = "AB".repeat(32);
        assert_eq!(parse_sha256(&good).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("ab").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }
}
