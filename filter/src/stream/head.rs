//! The request headers, read from the host in one call: a warm request's classification
//! (path, content length and type, the binary-tensor and gRPC model headers, the headers a
//! client may not send) needs no other header read.

use crate::host::{Host, HostError, Map};
use crate::pairs::HeaderPairs;
use crate::route;

/// The request headers as Envoy holds them (names in lowercase).
#[derive(Debug, Default)]
pub(super) struct RequestHead {
    headers: HeaderPairs,
}

impl RequestHead {
    /// Every request header, in one host call.
    pub(super) fn read(host: &mut impl Host) -> Result<RequestHead, HostError> {
        Ok(RequestHead {
            headers: host.headers(Map::RequestHeaders)?,
        })
    }

    /// A header's value (the first, if repeated).
    pub(super) fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }

    /// A header's value, if it is UTF-8.
    pub(super) fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `:path` (empty if absent).
    pub(super) fn path(&self) -> &[u8] {
        self.get(":path").unwrap_or_default()
    }

    /// `content-length`, when present and a number.
    pub(super) fn content_length(&self) -> Option<u64> {
        self.text("content-length")?.trim().parse().ok()
    }

    /// The headers a client may not send (see [`route::is_reserved_header`]); a name that
    /// is not UTF-8 is none of them.
    pub(super) fn reserved(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter_map(|(n, _)| std::str::from_utf8(n).ok())
            .filter(|n| route::is_reserved_header(n))
    }
}
