//! Resolving replica host names to the IP literals Envoy's ORIGINAL_DST cluster needs.
//! Names are resolved again on every probe, so a replica whose pod came back with a new IP
//! (or a StatefulSet pod that did not exist yet) is followed without a restart.
//!
//! `--hosts-file` puts a hosts-format file in front of the system resolver. It is re-read
//! on every lookup; that is how the tests add and remove replicas by name locally, and it
//! also suits environments where names are managed by a file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Resolves `host:port`.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    pub hosts_file: Option<PathBuf>,
}

/// Bound on one system lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

impl Resolver {
    /// The address of `host:port`: an IP literal as is; else the hosts file's entry, if it
    /// has one; else the system resolver's first IPv4 address (or first address).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if let Some(path) = &self.hosts_file {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            if let Some(ip) = lookup_hosts(&text, host) {
                return Ok(SocketAddr::new(ip, port));
            }
        }
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("resolving {host} timed out"))?
            .map_err(|e| format!("resolving {host}: {e}"))?;
        let addrs: Vec<SocketAddr> = found.collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{host} has no address"))
    }
}

/// The first address `host` has in a hosts-format text (`IP name [alias...]`, `#` comments).
fn lookup_hosts(text: &str, host: &str) -> Option<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let ip = fields.next()?.parse::<IpAddr>().ok()?;
            fields
                .any(|name| name.eq_ignore_ascii_case(host))
                .then_some(ip)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hosts_format() {
        let text = "# comment\n127.0.0.2 triton-0.pool.test t0\n\n127.0.0.3\ttriton-1.pool.test # c\nbad line\n";
        assert_eq!(
            lookup_hosts(text, "triton-0.pool.test"),
            "127.0.0.2".parse().ok()
        );
        assert_eq!(lookup_hosts(text, "T0"), "127.0.0.2".parse().ok());
        assert_eq!(
            lookup_hosts(text, "triton-1.pool.test"),
            "127.0.0.3".parse().ok()
        );
        assert_eq!(lookup_hosts(text, "triton-2.pool.test"), None);
    }

    #[tokio::test]
    async fn follows_the_hosts_file_and_falls_back_to_the_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.5 r.test\n").unwrap();
        let r = Resolver {
            hosts_file: Some(path.clone()),
        };
        assert_eq!(
            r.resolve("r.test", 80).await.unwrap(),
            "127.0.0.5:80".parse().unwrap()
        );
        std::fs::write(&path, "127.0.0.6 r.test\n").unwrap();
        assert_eq!(
            r.resolve("r.test", 80).await.unwrap(),
            "127.0.0.6:80".parse().unwrap()
        );
        assert!(r.resolve("localhost", 1).await.unwrap().ip().is_loopback());
        assert_eq!(
            r.resolve("10.1.2.3", 9).await.unwrap(),
            "10.1.2.3:9".parse().unwrap()
        );
        std::fs::write(&path, "").unwrap();
        assert!(r.resolve("r.test", 80).await.is_err());
    }
}
