//! Hand-written protobuf encoding of Envoy's `SetEnvoyFilterStateArguments`, the argument of
//! the `set_envoy_filter_state` foreign function. The filter uses it to tell the
//! ORIGINAL_DST cluster where to connect; unlike the `x-envoy-original-dst-host` header, a
//! client cannot forge it.

/// Name of the Envoy foreign function that sets a filter-state object.
pub const SET_FILTER_STATE_FUNCTION: &str = "set_envoy_filter_state";

/// Filter-state key read by the ORIGINAL_DST cluster (with `use_http_header: false`).
pub const ORIGINAL_DST_ADDRESS_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// How long Envoy keeps a filter-state object (`SetEnvoyFilterStateArguments.span`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LifeSpan {
    /// Until the end of the current filter chain.
    FilterChain = 0,
    /// For the current downstream request (what routing a request needs).
    DownstreamRequest = 1,
    /// For the whole downstream connection.
    DownstreamConnection = 2,
}

/// Encodes `SetEnvoyFilterStateArguments { string path = 1; string value = 2;
/// LifeSpan span = 3; }`: `0x0A len path`, `0x12 len value`, `0x18 span`, lengths as
/// varints. The span is always written, even when it is the default 0.
pub fn encode_set_filter_state(path: &str, value: &str, span: LifeSpan) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + value.len() + 24);
    put_length_delimited(&mut out, 1, path.as_bytes());
    put_length_delimited(&mut out, 2, value.as_bytes());
    out.push(tag(3, WIRE_VARINT));
    put_varint(&mut out, span as u64);
    out
}

/// The argument that routes the current request to `address` (`IP:PORT`).
pub fn original_dst_address(address: &str) -> Vec<u8> {
    encode_set_filter_state(
        ORIGINAL_DST_ADDRESS_KEY,
        address,
        LifeSpan::DownstreamRequest,
    )
}

const WIRE_VARINT: u8 = 0;
const WIRE_LEN: u8 = 2;

/// A field key for field numbers below 16 (one byte is enough for this message).
fn tag(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

fn put_length_delimited(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(tag(field, WIRE_LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Base-128 varint, least significant group first, high bit set on all but the last byte.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7F) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_original_dst_address() {
        let got = original_dst_address("10.0.0.7:8000");
        let mut want = vec![0x0A, 51];
        want.extend_from_slice(b"envoy.network.transport_socket.original_dst_address");
        want.extend_from_slice(&[0x12, 13]);
        want.extend_from_slice(b"10.0.0.7:8000");
        want.extend_from_slice(&[0x18, 0x01]);
        assert_eq!(ORIGINAL_DST_ADDRESS_KEY.len(), 51);
        assert_eq!(got, want);
    }

    #[test]
    fn encodes_lengths_above_127_as_multi_byte_varints() {
        let value = "v".repeat(300);
        let got = encode_set_filter_state("k", &value, LifeSpan::DownstreamConnection);
        // 300 = 0b10_0101100 -> 0xAC 0x02
        let mut want = vec![0x0A, 0x01, b'k', 0x12, 0xAC, 0x02];
        want.extend_from_slice(value.as_bytes());
        want.extend_from_slice(&[0x18, 0x02]);
        assert_eq!(got, want);

        let got = encode_set_filter_state(&"p".repeat(128), "", LifeSpan::FilterChain);
        assert_eq!(&got[..3], &[0x0A, 0x80, 0x01]);
        assert_eq!(&got[131..], &[0x12, 0x00, 0x18, 0x00]);
    }

    #[test]
    fn encodes_varint_boundaries() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (
                u64::MAX,
                &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            ),
        ];
        for (value, want) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, *value);
            assert_eq!(&out, want, "{value}");
        }
    }
}
