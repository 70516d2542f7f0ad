//! Which addresses a model pull may connect to, so a storage URI cannot turn the
//! pool-manager into a proxy for the cloud metadata service (169.254.169.254), the
//! pool-manager's own admin port, or anything else on the inside network (SSRF).
//!
//! The check is on the address actually connected: host names are resolved by
//! [`GuardedResolver`], which refuses the whole name if any of its addresses is refused
//! (so DNS rebinding between a check and the connection cannot slip through: there is no
//! separate check), and IP literals, which reqwest connects to without resolving, are
//! checked by [`EgressPolicy::check_url`] before the request. Redirects are followed only
//! to the same host and port ([`same_host_redirects`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 169.254.0.0/16, fe80::/10: cloud metadata services live here. Always refused.
    LinkLocal,
    /// 0.0.0.0/8, ::, multicast, broadcast, 240.0.0.0/4 and other ranges nothing serves
    /// models from. Always refused.
    Reserved,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, 100.64.0.0/10 (carrier-grade NAT), fc00::/7 (unique local), and the
    /// other special-purpose ranges of a private network.
    Private,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::LinkLocal => {
                "a link-local address (where cloud metadata services answer)"
            }
            AddressClass::Reserved => "a reserved address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
        }
    }
}

/// The class of `ip` if it is not an ordinary public address. IPv4 addresses embedded in
/// IPv6 (mapped, NAT64, 6to4) are judged as the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    if ip.is_link_local() {
        Some(AddressClass::LinkLocal)
    } else if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if a == 0 || ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some(AddressClass::Reserved)
    } else if ip.is_private()
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15, benchmarking
        || ip.is_documentation()
    {
        Some(AddressClass::Private)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    let first = ip.segments()[0];
    if (first & 0xffc0) == 0xfe80 {
        Some(AddressClass::LinkLocal)
    } else if ip.is_loopback() {
        Some(AddressClass::Loopback)
    } else if ip.is_unspecified() || ip.is_multicast() || (first & 0xffc0) == 0xfec0 {
        // fec0::/10: the deprecated site-local range.
        Some(AddressClass::Reserved)
    } else if (first & 0xfe00) == 0xfc00 || first == 0x2001 && ip.segments()[1] == 0xdb8 {
        // fc00::/7 unique local; 2001:db8::/32 documentation.
        Some(AddressClass::Private)
    } else {
        None
    }
}

/// The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) or 6to4
/// (2002::/16) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if let Some(mapped) = ip.to_ipv4_mapped() {
        Some(mapped)
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        Some(v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else {
        None
    }
}

/// Which addresses pulls may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Loopback and private addresses too (`--allow-private-storage`): for stores inside
    /// the cluster (MinIO, an artifact server) and for tests. Link-local and reserved
    /// addresses stay refused.
    pub allow_private: bool,
}

/// A refused connection, with the reason an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} is {address}, {}{}", class.describe(), hint(*class))]
pub struct Refused {
    pub host: String,
    pub address: IpAddr,
    pub class: AddressClass,
}

fn hint(class: AddressClass) -> &'static str {
    match class {
        AddressClass::Loopback | AddressClass::Private => {
            "; model pulls may not reach it unless the pool-manager runs with --allow-private-storage"
        }
        AddressClass::LinkLocal | AddressClass::Reserved => "; model pulls never reach it",
    }
}

impl EgressPolicy {
    /// Refuses `ip` (reached as `host`) if the policy does not allow its class.
    pub fn check(self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        match classify(ip) {
            None => Ok(()),
            Some(AddressClass::Loopback | AddressClass::Private) if self.allow_private => Ok(()),
            Some(class) => Err(Refused {
                host: host.to_owned(),
                address: ip,
                class,
            }),
        }
    }

    /// Checks a URL whose host is an IP literal (reqwest connects to those without asking
    /// the resolver); host names are checked by [`GuardedResolver`] when resolved.
    pub fn check_url(self, url: &url::Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        self.check(url.host_str().unwrap_or_default(), ip)
    }
}

/// A reqwest resolver that resolves with the system resolver and refuses a name if any of
/// its addresses is refused by the policy.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub policy: EgressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                policy.check(&host, addr.ip())?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// A redirect policy that follows at most 10 redirects, each to the same host and port as
/// the original request (an `http` to `https` upgrade on the same host is allowed); a
/// redirect elsewhere fails the download with a message saying so.
pub fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        let next = attempt.url();
        let same_host = next.host_str() == first.host_str();
        let same_port = next.port_or_known_default() == first.port_or_known_default();
        let upgrade = first.scheme() == "http"
            && next.scheme() == "https"
            && first.port().is_none()
            && next.port().is_none();
        let downgrade = first.scheme() == "https" && next.scheme() == "http";
        if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else if same_host && !downgrade && (same_port || upgrade) {
            attempt.follow()
        } else {
            let to = next.host_str().unwrap_or("?").to_owned();
            let from = first.host_str().unwrap_or("?").to_owned();
            attempt.error(CrossHostRedirect { from, to })
        }
    })
}

/// A redirect to another host (or an https to http downgrade), refused.
#[derive(Debug, thiserror::Error)]
#[error("the server at {from} redirected to {to}: model pulls follow redirects only on the same host and port")]
pub struct CrossHostRedirect {
    from: String,
    to: String,
}

/// The reqwest client for pulls under `policy`: guarded resolver, same-host redirects, and
/// no environment proxy (through a proxy the address connected would be the proxy's, which
/// the policy cannot see).
pub fn http_client(
    policy: EgressPolicy,
    connect_timeout: std::time::Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .redirect(same_host_redirects())
        .no_proxy()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_addresses() {
        use AddressClass::*;
        let cases = [
            ("169.254.169.254", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("2002:a9fe:a9fe::1", Some(LinkLocal)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(Private)),
            ("198.18.0.1", Some(Private)),
            ("fd00::1", Some(Private)),
            ("fc00::1", Some(Private)),
            ("0.0.0.0", Some(Reserved)),
            ("255.255.255.255", Some(Reserved)),
            ("224.0.0.1", Some(Reserved)),
            ("240.0.0.1", Some(Reserved)),
            ("::", Some(Reserved)),
            ("ff02::1", Some(Reserved)),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:8.8.8.8", None),
        ];
        for (addr, want) in cases {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn link_local_is_refused_even_with_private_allowed() {
        let strict = EgressPolicy {
            allow_private: false,
        };
        let open = EgressPolicy {
            allow_private: true,
        };
        let e = strict.check("metadata", ip("169.254.169.254")).unwrap_err();
        assert!(e.to_string().contains("link-local"), "{e}");
        assert!(open.check("metadata", ip("169.254.169.254")).is_err());
        assert!(open.check("x", ip("0.0.0.0")).is_err());
        let e = strict.check("localhost", ip("127.0.0.1")).unwrap_err();
        assert!(e.to_string().contains("--allow-private-storage"), "{e}");
        assert!(open.check("localhost", ip("127.0.0.1")).is_ok());
        assert!(open.check("minio", ip("10.0.0.5")).is_ok());
        assert!(strict.check("example.com", ip("93.184.216.34")).is_ok());
    }

    #[test]
    fn checks_ip_literal_urls_only() {
        let strict = EgressPolicy {
            allow_private: false,
        };
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(strict
            .check_url(&url("http://127.0.0.1:8080/m.zip"))
            .is_err());
        assert!(strict.check_url(&url("http://[::1]/m.zip")).is_err());
        assert!(strict
            .check_url(&url("http://169.254.169.254/m.zip"))
            .is_err());
        // Names are the resolver's job.
        assert!(strict.check_url(&url("http://localhost/m.zip")).is_ok());
        assert!(strict.check_url(&url("https://8.8.8.8/m.zip")).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_with_a_refused_address() {
        use reqwest::dns::Resolve;
        let strict = GuardedResolver {
            policy: EgressPolicy {
                allow_private: false,
            },
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = strict.resolve(name).await.err().unwrap();
        assert!(err.to_string().contains("loopback"), "{err}");
        let open = GuardedResolver {
            policy: EgressPolicy {
                allow_private: true,
            },
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(open.resolve(name).await.is_ok());
    }
}
