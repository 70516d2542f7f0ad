//! Where one copy of a model can be reached, checked once when it enters the filter (from
//! a routing table or a route-call answer): a value of [`Target`] is always safe to forward
//! to and to show in a header, so nothing downstream re-checks or re-parses it.

use crate::decision::{canonical_address, is_valid_replica_name};

/// A replica's endpoints. Built only by [`Target::new`]; shared (`Rc`) between the table
/// and the requests routed to it, so a pick copies no string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    replica: String,
    address: String,
    grpc_address: Option<String>,
}

impl Target {
    /// A target from the pool-manager's words, or `None` if the replica name is not a safe
    /// header value or the HTTP address is not a usable `IP:PORT`. An unusable gRPC
    /// address only drops the gRPC address (the replica still serves HTTP).
    pub fn new(replica: &str, address: &str, grpc_address: Option<&str>) -> Option<Target> {
        if !is_valid_replica_name(replica) {
            return None;
        }
        Some(Target {
            replica: replica.to_owned(),
            address: canonical_address(address)?,
            grpc_address: grpc_address.and_then(canonical_address),
        })
    }

    /// The replica's name: 1 to 253 printable ASCII characters.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// HTTP `IP:PORT`, canonical (IPv6 in brackets), as Envoy's ORIGINAL_DST expects it.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// gRPC `IP:PORT`, canonical, when the replica has one.
    pub fn grpc_address(&self) -> Option<&str> {
        self.grpc_address.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_canonicalises_once() {
        let t = Target::new("r0", "[0:0::1]:8000", Some("127.0.0.1:8001")).unwrap();
        assert_eq!(
            (t.replica(), t.address(), t.grpc_address()),
            ("r0", "[::1]:8000", Some("127.0.0.1:8001"))
        );
        let http_only = Target::new("r1", "10.0.0.1:8000", Some("grpc.local:8001")).unwrap();
        assert_eq!(http_only.grpc_address(), None);
        for (replica, address) in [
            ("", "127.0.0.1:1"),
            ("r 0", "127.0.0.1:1"),
            ("r\n", "127.0.0.1:1"),
            ("r0", "localhost:8000"),
            ("r0", "0.0.0.0:8000"),
            ("r0", "127.0.0.1:0"),
        ] {
            assert_eq!(
                Target::new(replica, address, None),
                None,
                "{replica} {address}"
            );
        }
    }
}
