//! Where the store is and how to reach it: the pool-manager's `--store*`, `--etcd-*` and
//! cluster flags, checked and turned into [`EtcdOptions`] and this instance's [`Member`].
//! Secrets come from files (or the environment variables naming those files), are read
//! once here and never logged.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use super::etcd::EtcdOptions;
use crate::election::Member;

/// Why the store flags are unusable.
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    #[error("--store '{0}': expected etcd://host:port[,host:port...] or etcds://... (TLS)")]
    Location(String),
    #[error("--store: endpoint '{0}' is not host:port")]
    Endpoint(String),
    #[error("--store-prefix '{0}': it must start and end with '/' and hold no spaces")]
    Prefix(String),
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--etcd-cert-file and --etcd-key-file go together")]
    HalfIdentity,
    #[error("--etcd-user needs --etcd-password-file (the password is only read from a file)")]
    NoPassword,
    #[error("the etcd password file {0} is empty")]
    EmptyPassword(PathBuf),
    #[error("--lease-ttl must be at least 2s (etcd's lease granularity is one second)")]
    LeaseTtl,
    #[error("--instance-id '{0}': 1-128 characters of [A-Za-z0-9_.:-]")]
    InstanceId(String),
}

/// Where the records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded redb database in the data directory (one pool-manager).
    Embedded,
    /// etcd, at these `http(s)://host:port` endpoints.
    Etcd { endpoints: Vec<String>, tls: bool },
}

impl FromStr for Location {
    type Err = StoreConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "embedded" {
            return Ok(Location::Embedded);
        }
        let (scheme, tls, rest) = if let Some(rest) = s.strip_prefix("etcd://") {
            ("http", false, rest)
        } else if let Some(rest) = s.strip_prefix("etcds://") {
            ("https", true, rest)
        } else {
            return Err(StoreConfigError::Location(s.to_owned()));
        };
        let mut endpoints = Vec::new();
        for endpoint in rest.trim_end_matches('/').split(',') {
            let valid = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(['/', '@', '?', '#', ' '])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(StoreConfigError::Endpoint(endpoint.to_owned()));
            }
            endpoints.push(format!("{scheme}://{endpoint}"));
        }
        Ok(Location::Etcd { endpoints, tls })
    }
}

/// The store and cluster flags of the pool-manager binary.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Where the registry lives. Unset (or `embedded`): a database in --data-dir, for one
    /// pool-manager. `etcd://host:2379[,host:2379...]` (`etcds://` for TLS): etcd, shared
    /// by several pool-managers of which one leads (see README, High availability).
    #[arg(long, env = "MM_STORE", value_parser = Location::from_str)]
    pub store: Option<Location>,
    /// Prefix of every key this pool keeps in etcd (one per pool: pools can share an etcd).
    #[arg(long, env = "MM_STORE_PREFIX", default_value = "/mm/default/")]
    pub store_prefix: String,
    /// PEM bundle of the CAs that sign etcd's certificates (etcds://; default: the
    /// system's roots).
    #[arg(long, env = "MM_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate, when etcd asks for one (with --etcd-key-file).
    #[arg(long, env = "MM_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of --etcd-cert-file.
    #[arg(long, env = "MM_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user (etcd's own authentication; with --etcd-password-file).
    #[arg(long, env = "MM_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (read once, never logged).
    #[arg(long, env = "MM_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// Bound on every call to etcd.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,
    /// The leader's lease: when the leader dies, another instance takes over within
    /// about this long; the leader stops acting a fifth of it before it could.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// This instance's name among those sharing the store (default: host name and the
    /// --listen port).
    #[arg(long, env = "MM_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// URL where the other instances reach this one (default: http://<--listen>).
    #[arg(long, env = "MM_ADVERTISE_URL")]
    pub advertise_url: Option<Url>,
}

impl StoreArgs {
    /// The etcd connection the flags describe, files read; `None` for the embedded store.
    pub fn etcd_options(&self) -> Result<Option<EtcdOptions>, StoreConfigError> {
        let Some(Location::Etcd { endpoints, tls }) = &self.store else {
            return Ok(None);
        };
        let prefix = &self.store_prefix;
        if !prefix.starts_with('/')
            || !prefix.ends_with('/')
            || prefix.contains(char::is_whitespace)
        {
            return Err(StoreConfigError::Prefix(prefix.clone()));
        }
        let ca_pem = self
            .etcd_ca_file
            .as_deref()
            .map(|p| read(p, "--etcd-ca-file"))
            .transpose()?;
        let identity_pem = match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(cert), Some(key)) => Some((
                read(cert, "--etcd-cert-file")?,
                read(key, "--etcd-key-file")?,
            )),
            (None, None) => None,
            _ => return Err(StoreConfigError::HalfIdentity),
        };
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(user), Some(file)) => {
                let raw = read(file, "--etcd-password-file")?;
                let password = String::from_utf8_lossy(&raw).trim().to_owned();
                if password.is_empty() {
                    return Err(StoreConfigError::EmptyPassword(file.clone()));
                }
                Some((user.clone(), password))
            }
            (Some(_), None) => return Err(StoreConfigError::NoPassword),
            (None, _) => None,
        };
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(StoreConfigError::LeaseTtl);
        }
        Ok(Some(EtcdOptions {
            endpoints: endpoints.clone(),
            prefix: prefix.clone(),
            tls: *tls,
            ca_pem,
            identity_pem,
            user,
            timeout: self.store_timeout,
        }))
    }

    /// This instance as the others see it.
    pub fn member(&self, listen: std::net::SocketAddr) -> Result<Member, StoreConfigError> {
        let id = match &self.instance_id {
            Some(id) => id.clone(),
            None => format!("{}:{}", host_name(), listen.port()),
        };
        let valid = (1..=128).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
        if !valid {
            return Err(StoreConfigError::InstanceId(id));
        }
        let url = match &self.advertise_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None => format!("http://{listen}"),
        };
        Ok(Member { id, url })
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, StoreConfigError> {
    std::fs::read(path).map_err(|e| StoreConfigError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pool-manager".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        store: StoreArgs,
    }

    fn args(extra: &[&str]) -> Result<StoreArgs, String> {
        let argv = std::iter::once("pm").chain(extra.iter().copied());
        Flags::try_parse_from(argv)
            .map(|f| f.store)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn locations_parse_or_say_what_is_wrong() {
        let rows: &[(&str, Result<Location, &str>)] = &[
            ("embedded", Ok(Location::Embedded)),
            (
                "etcd://127.0.0.1:2379",
                Ok(Location::Etcd {
                    endpoints: vec!["http://127.0.0.1:2379".into()],
                    tls: false,
                }),
            ),
            (
                "etcds://e1:2379,e2:2379/",
                Ok(Location::Etcd {
                    endpoints: vec!["https://e1:2379".into(), "https://e2:2379".into()],
                    tls: true,
                }),
            ),
            ("etcd://", Err("endpoint '' is not host:port")),
            ("etcd://h:0", Err("endpoint 'h:0' is not host:port")),
            ("etcd://u@h:1", Err("endpoint 'u@h:1'")),
            ("etcd://h", Err("endpoint 'h'")),
            ("redis://h:1", Err("expected etcd://")),
        ];
        for (text, want) in rows {
            match (text.parse::<Location>(), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{text}"),
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn etcd_flags_are_checked_and_secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let p = password.to_str().unwrap();
        let etcd = "--store=etcd://127.0.0.1:2379";

        assert!(args(&[]).unwrap().etcd_options().unwrap().is_none());
        let got = args(&[
            etcd,
            "--etcd-user=pool",
            &format!("--etcd-password-file={p}"),
        ])
        .unwrap()
        .etcd_options()
        .unwrap()
        .unwrap();
        assert_eq!(got.user, Some(("pool".into(), "s3cret".into())));
        assert_eq!(got.prefix, "/mm/default/");

        let refused: &[(&[&str], &str)] = &[
            (&["--etcd-user=pool"], "needs --etcd-password-file"),
            (&["--etcd-cert-file=/x"], "go together"),
            (&["--store-prefix=mm/"], "must start and end with '/'"),
            (&["--store-prefix=/mm"], "must start and end with '/'"),
            (&["--lease-ttl=1s"], "at least 2s"),
            (
                &["--etcd-ca-file=/does/not/exist"],
                "cannot read --etcd-ca-file",
            ),
        ];
        for (extra, want) in refused {
            let mut argv = vec![etcd];
            argv.extend_from_slice(extra);
            let e = args(&argv).unwrap().etcd_options().unwrap_err();
            assert!(e.to_string().contains(want), "{extra:?}: {e}");
        }
    }

    #[test]
    fn members_default_to_the_listen_address() {
        let listen = "127.0.0.1:9191".parse().unwrap();
        let m = args(&["--instance-id=pm-a"])
            .unwrap()
            .member(listen)
            .unwrap();
        assert_eq!(m.id, "pm-a");
        assert_eq!(m.url, "http://127.0.0.1:9191");
        let m = args(&["--advertise-url=http://10.0.0.7:9090/"])
            .unwrap()
            .member(listen)
            .unwrap();
        assert!(m.id.ends_with(":9191"));
        assert_eq!(m.url, "http://10.0.0.7:9090");
        assert!(args(&["--instance-id=a b"])
            .unwrap()
            .member(listen)
            .is_err());
    }
}
