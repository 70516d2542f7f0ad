//! The request headers, read from the host in one call: a warm request's classification
//! (path, content length and type, the binary-tensor and gRPC model headers, the headers a
//! client may not send) needs no other header read. The headers every request looks at
//! are found in one pass when they are read, not by a scan of the map each.

use std::ops::Range;

use super::INFERENCE_HEADER_LENGTH;
use crate::host::{Host, HostError, Map};
use crate::pairs::HeaderPairs;
use crate::route;

/// The headers every request reads, found in the one pass.
const KNOWN: [&str; 4] = [
    ":path",
    "content-length",
    "content-type",
    INFERENCE_HEADER_LENGTH,
];

/// Which of [`KNOWN`] `name` is, if one (a `match`: the compiler compares lengths first
/// and inlines the short comparisons; measured faster than a loop over [`KNOWN`]).
fn known(name: &[u8]) -> Option<usize> {
    match name {
        b":path" => Some(PATH),
        b"content-length" => Some(CONTENT_LENGTH),
        b"content-type" => Some(CONTENT_TYPE),
        _ if name == INFERENCE_HEADER_LENGTH.as_bytes() => Some(BINARY_LENGTH),
        _ => None,
    }
}

// Their places in [`KNOWN`].
const PATH: usize = 0;
const CONTENT_LENGTH: usize = 1;
const CONTENT_TYPE: usize = 2;
const BINARY_LENGTH: usize = 3;

/// The request headers as Envoy holds them (names in lowercase).
#[derive(Debug, Default)]
pub(super) struct RequestHead {
    headers: HeaderPairs,
    /// Where the first value of each [`known`] header is.
    known: [Option<Range<usize>>; KNOWN.len()],
    /// Whether any header is one a client may not send.
    reserved: bool,
}

impl RequestHead {
    /// Every request header, in one host call.
    pub(super) fn read(host: &mut impl Host) -> Result<RequestHead, HostError> {
        let headers = host.headers(Map::RequestHeaders)?;
        let mut known: [Option<Range<usize>>; KNOWN.len()] = Default::default();
        let mut reserved = false;
        for (name, value) in headers.spans() {
            match self::known(name).and_then(|i| known.get_mut(i)) {
                Some(slot) => {
                    slot.get_or_insert(value);
                }
                None => reserved |= route::is_reserved_header(name),
            }
        }
        Ok(RequestHead {
            headers,
            known,
            reserved,
        })
    }

    /// A header's value (the first, if repeated).
    pub(super) fn get(&self, name: &str) -> Option<&[u8]> {
        match known(name.as_bytes()) {
            Some(i) => self.known_value(i),
            None => self.headers.get(name),
        }
    }

    /// The first value of [`KNOWN`] header `i`, found when the headers were read.
    fn known_value(&self, i: usize) -> Option<&[u8]> {
        let span = self.known.get(i)?.clone()?;
        Some(self.headers.at(span))
    }

    /// `content-type`, as the client sent it.
    pub(super) fn content_type(&self) -> Option<&[u8]> {
        self.known_value(CONTENT_TYPE)
    }

    /// `inference-header-content-length` (the binary tensor extension), as sent.
    pub(super) fn binary_header_length(&self) -> Option<&[u8]> {
        self.known_value(BINARY_LENGTH)
    }

    /// A header's value, if it is UTF-8.
    pub(super) fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `:path` (empty if absent).
    pub(super) fn path(&self) -> &[u8] {
        self.known_value(PATH).unwrap_or_default()
    }

    /// `content-length`, when present and a number.
    pub(super) fn content_length(&self) -> Option<u64> {
        let value = self.known_value(CONTENT_LENGTH)?;
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    }

    /// The headers a client may not send (see [`route::is_reserved_header`]); a name that
    /// is not UTF-8 is none of them.
    pub(super) fn reserved(&self) -> impl Iterator<Item = &str> {
        // Nearly every request has none: then the map is not walked again.
        let any = if self.reserved { self.headers.len() } else { 0 };
        self.headers
            .iter()
            .take(any)
            .filter(|(n, _)| route::is_reserved_header(n))
            .filter_map(|(n, _)| std::str::from_utf8(n).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        let mut host = FakeHost::new();
        host.set_map(Map::RequestHeaders, headers);
        RequestHead::read(&mut host).unwrap()
    }

    #[test]
    fn the_headers_found_in_one_pass_read_as_a_scan_would() {
        let h = head(&[
            (":path", "/v2/models/m/infer"),
            ("content-type", "text/plain"),
            ("content-type", "application/json"),
            ("content-length", " 42 "),
            ("inference-header-content-length", "7"),
            ("x-other", "o"),
            ("x-empty", ""),
        ]);
        assert_eq!(h.path(), b"/v2/models/m/infer");
        // The first value of a repeated header, as `HeaderPairs::get`.
        assert_eq!(h.get("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(h.content_length(), Some(42));
        assert_eq!(h.text(INFERENCE_HEADER_LENGTH), Some("7"));
        assert_eq!(h.binary_header_length(), Some(&b"7"[..]));
        assert_eq!(h.content_type(), h.get("content-type"));
        assert_eq!(h.get("x-other"), Some(&b"o"[..]));
        assert_eq!(h.get("x-empty"), Some(&b""[..]));
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.reserved().count(), 0);

        let bare = head(&[("x-other", "o")]);
        assert_eq!(bare.path(), b"");
        assert_eq!(
            (bare.get("content-type"), bare.content_length()),
            (None, None)
        );
        assert_eq!(
            (bare.content_type(), bare.binary_header_length()),
            (None, None)
        );
    }

    #[test]
    fn known_headers_are_told_by_name() {
        for (i, name) in KNOWN.iter().enumerate() {
            assert_eq!(known(name.as_bytes()), Some(i), "{name}");
        }
        for name in [":paths", "content-lengtx", "Content-Type", "", "x-mm-a"] {
            assert_eq!(known(name.as_bytes()), None, "{name}");
        }
    }

    #[test]
    fn reserved_headers_are_listed_in_order_and_only_they() {
        let h = head(&[
            ("x-mm-replica", "r9"),
            (":path", "/v2"),
            ("x-envoy-original-dst-host", "10.0.0.1:22"),
            ("x-mm-\u{e9}", "not ascii but UTF-8"),
            ("x-mmm", "not reserved"),
        ]);
        let names: Vec<&str> = h.reserved().collect();
        assert_eq!(
            names,
            ["x-mm-replica", "x-envoy-original-dst-host", "x-mm-\u{e9}"]
        );
    }
}
