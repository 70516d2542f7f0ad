//! A header map as the host serialises it (Proxy-Wasm's map format), read in place: the
//! warm path reads every request header in one host call, and this keeps them as the one
//! buffer the host wrote instead of one `String` and one `Vec` per header, which the
//! SDK's `get_map_bytes` allocates (two thirds of the filter's own instructions per warm
//! request went to those allocations and their frees).
//!
//! The format: the number of pairs (u32, little-endian), then each pair's name and value
//! lengths (two u32), then each name and value in order, each followed by a NUL byte.
//! Every offset is checked once when the buffer is taken; a buffer that does not hold
//! what its counts say is refused, never read out of bounds.

use std::ops::Range;

/// Most pairs a map may declare: far above any header count Envoy lets through (its
/// default limit is 100), and small enough that the length table is bounded.
const MAX_PAIRS: usize = 65_536;

/// A serialised header map, checked. Names come as the host holds them (Envoy: lowercase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderPairs {
    raw: Vec<u8>,
    /// How many pairs `raw` holds (0 for an empty buffer).
    count: usize,
}

/// Why a serialised map was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    /// The buffer ends before what its counts and lengths say it holds.
    #[error("header map ends early")]
    Truncated,
    /// A name or value is not followed by its NUL byte, or bytes are left over.
    #[error("header map is malformed")]
    Malformed,
    /// The map declares more than [`MAX_PAIRS`] pairs.
    #[error("header map declares too many pairs")]
    TooMany,
}

fn read_u32(raw: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = raw.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

impl HeaderPairs {
    /// Takes the host's buffer (empty: no headers) after checking that it holds exactly
    /// the pairs it declares.
    pub fn from_raw(raw: Vec<u8>) -> Result<HeaderPairs, PairsError> {
        if raw.is_empty() {
            return Ok(HeaderPairs::default());
        }
        let count = read_u32(&raw, 0).ok_or(PairsError::Truncated)?;
        if count > MAX_PAIRS {
            return Err(PairsError::TooMany);
        }
        let mut data = count
            .checked_mul(8)
            .and_then(|table| table.checked_add(4))
            .ok_or(PairsError::TooMany)?;
        for i in 0..count {
            for length in [read_u32(&raw, 4 + i * 8), read_u32(&raw, 8 + i * 8)] {
                let length = length.ok_or(PairsError::Truncated)?;
                let end = data.checked_add(length).ok_or(PairsError::Truncated)?;
                match raw.get(end) {
                    Some(0) => data = end + 1,
                    Some(_) => return Err(PairsError::Malformed),
                    None => return Err(PairsError::Truncated),
                }
            }
        }
        if data != raw.len() {
            return Err(PairsError::Malformed);
        }
        Ok(HeaderPairs { raw, count })
    }

    /// Serialises `pairs` the way the host does (for the fake host and tests).
    pub fn encode<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
        let mut out = Vec::new();
        let u32_le = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        out.extend_from_slice(&u32_le(pairs.len()));
        for (name, value) in pairs {
            out.extend_from_slice(&u32_le(name.as_ref().len()));
            out.extend_from_slice(&u32_le(value.as_ref().len()));
        }
        for (name, value) in pairs {
            out.extend_from_slice(name.as_ref());
            out.push(0);
            out.extend_from_slice(value.as_ref());
            out.push(0);
        }
        out
    }

    /// Every (name, value), in the host's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans().map(|(name, value)| (name, self.at(value)))
    }

    /// Every (name, where its value is), in the host's order: for a reader that finds
    /// several headers in one pass and reads their values later with [`HeaderPairs::at`].
    pub fn spans(&self) -> impl Iterator<Item = (&[u8], Range<usize>)> + '_ {
        let raw = self.raw.as_slice();
        let mut data = 4 + self.count * 8;
        (0..self.count).map_while(move |i| {
            // Checked in `from_raw`; `get` keeps a mistake here from ever panicking.
            let name_len = read_u32(raw, 4 + i * 8)?;
            let value_len = read_u32(raw, 8 + i * 8)?;
            let name = raw.get(data..data + name_len)?;
            let start = data + name_len + 1;
            let value = start..start + value_len;
            raw.get(value.clone())?;
            data = value.end + 1;
            Some((name, value))
        })
    }

    /// The value at `span` (from [`HeaderPairs::spans`] of this map; empty otherwise).
    pub fn at(&self, span: Range<usize>) -> &[u8] {
        self.raw.get(span).unwrap_or_default()
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// How many pairs the map holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the map holds no pair.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_encodes() {
        let pairs = [
            (":path", "/v2/models/linear/infer"),
            ("content-type", "application/json"),
            ("x-empty", ""),
            ("x-repeated", "1"),
            ("x-repeated", "2"),
        ];
        let map = HeaderPairs::from_raw(HeaderPairs::encode(&pairs)).unwrap();
        assert_eq!(map.len(), 5);
        let read: Vec<(&[u8], &[u8])> = map.iter().collect();
        let want: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(read, want);
        assert_eq!(map.get("x-repeated"), Some(&b"1"[..]));
        assert_eq!(map.get("x-empty"), Some(&b""[..]));
        assert_eq!(map.get("missing"), None);
        let spans: Vec<(&[u8], &[u8])> = map.spans().map(|(n, v)| (n, map.at(v))).collect();
        assert_eq!(spans, want);
        assert_eq!(map.at(0..usize::MAX), b"");
        let empty = HeaderPairs::from_raw(Vec::new()).unwrap();
        assert!(empty.is_empty() && empty.iter().next().is_none());
        let none: [(&str, &str); 0] = [];
        assert!(HeaderPairs::from_raw(HeaderPairs::encode(&none))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn refuses_buffers_that_do_not_hold_what_they_declare() {
        let good = HeaderPairs::encode(&[("a", "bc"), ("de", "")]);
        // Every cut short of the whole buffer is refused.
        for cut in 1..good.len() {
            assert!(
                HeaderPairs::from_raw(good[..cut].to_vec()).is_err(),
                "{cut}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(HeaderPairs::from_raw(extra), Err(PairsError::Malformed));
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert_eq!(HeaderPairs::from_raw(no_nul), Err(PairsError::Malformed));
        let mut huge_length = good.clone();
        huge_length[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            HeaderPairs::from_raw(huge_length),
            Err(PairsError::Truncated)
        );
        let too_many = (MAX_PAIRS as u32 + 1).to_le_bytes().to_vec();
        assert_eq!(HeaderPairs::from_raw(too_many), Err(PairsError::TooMany));
    }
}
