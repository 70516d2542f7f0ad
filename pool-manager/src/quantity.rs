//! Memory quantities as users write them: plain bytes (`1048576`) or Kubernetes-style
//! suffixes (`64Mi`, `1.5Gi`, `500M`). Parsing is strict: anything ambiguous is refused
//! rather than guessed, because a wrong size silently breaks capacity accounting.

use serde::{Deserialize, Deserializer};

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Nothing but (possibly) a suffix, or an empty string.
    #[error("quantity {0:?} has no number")]
    NoNumber(String),
    /// Characters that are neither digits, one decimal point, nor a known suffix.
    #[error("quantity {0:?} is not a number with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E)")]
    Malformed(String),
    /// Larger than 2^64 - 1 bytes.
    #[error("quantity {0:?} is too large")]
    Overflow(String),
}

const SUFFIXES: [(&str, u128); 12] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

/// Parses a byte quantity. A fractional result is rounded up to the next byte, as
/// Kubernetes does, so a declared size is never under-counted.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let malformed = || QuantityError::Malformed(text.to_owned());
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, mult)| text.strip_suffix(suffix).map(|n| (n, *mult)))
        .unwrap_or((text, 1));
    if number.is_empty() {
        return Err(QuantityError::NoNumber(text.to_owned()));
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(int_part)
        || !digits_only(frac_part)
        || (int_part.is_empty() && frac_part.is_empty())
        || (number.contains('.') && frac_part.is_empty())
    {
        return Err(malformed());
    }
    let overflow = || QuantityError::Overflow(text.to_owned());
    // 39 digits overflow u128 anyway; refuse early so the arithmetic below cannot.
    if int_part.len() > 38 || frac_part.len() > 18 {
        return Err(overflow());
    }
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| malformed())?
    };
    let mut total = int.checked_mul(multiplier).ok_or_else(overflow)?;
    if !frac_part.is_empty() {
        let frac: u128 = frac_part.parse().map_err(|_| malformed())?;
        let scale = 10u128.pow(frac_part.len() as u32);
        let frac_bytes = (frac * multiplier).div_ceil(scale);
        total = total.checked_add(frac_bytes).ok_or_else(overflow)?;
    }
    u64::try_from(total).map_err(|_| overflow())
}

/// The OpenAPI schema of an optional quantity: a number of bytes, a string such as `64Mi`,
/// or null.
pub fn schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::new(Type::Integer))
                .minimum(Some(0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::new(Type::String))
                .pattern(Some(r"^[0-9]*\.?[0-9]*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")),
        )
        .item(ObjectBuilder::new().schema_type(SchemaType::new(Type::Null)))
        .description(Some(
            "bytes, or a Kubernetes quantity such as 64Mi; absent or null: estimated",
        ))
        .build()
        .into()
}

/// Formats bytes with the largest binary suffix that keeps the number whole, for messages.
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, mult) in SUFFIXES[..6].iter().rev() {
        let mult = *mult as u64;
        if bytes >= mult && bytes % mult == 0 {
            return format!("{}{suffix}", bytes / mult);
        }
    }
    bytes.to_string()
}

/// A byte quantity in JSON: a non-negative integer, or a string accepted by [`parse_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Int(n)) => Ok(Bytes(n)),
            Ok(Raw::Text(s)) => parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "a quantity must be a non-negative integer of bytes or a string like \"64Mi\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_plain_and_suffixed_quantities() {
        let cases = [
            ("0", 0),
            ("1048576", 1 << 20),
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("0.1Ki", 103), // 102.4 rounded up
            ("500M", 500_000_000),
            ("2k", 2_000),
            (".5Mi", 1 << 19),
            ("15Ei", 15 << 60),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_malformed_quantities() {
        for text in [
            "", "Mi", "-1", "1 Mi", " 1", "1e3", "1.2.3", "1.", "abc", "1mi", "1KiB", "１",
        ] {
            assert!(parse_bytes(text).is_err(), "{text:?} should be refused");
        }
        assert!(matches!(
            parse_bytes("16Ei"),
            Err(QuantityError::Overflow(_))
        ));
        assert!(matches!(
            parse_bytes("99999999999999999999999999999999999999999"),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn formats_whole_binary_units() {
        assert_eq!(format_bytes(64 << 20), "64Mi");
        assert_eq!(format_bytes(1536), "1536");
        assert_eq!(format_bytes(3 << 30), "3Gi");
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        let b: Bytes = serde_json::from_str("1024").unwrap();
        assert_eq!(b, Bytes(1024));
        let b: Bytes = serde_json::from_str("\"2Ki\"").unwrap();
        assert_eq!(b, Bytes(2048));
        assert!(serde_json::from_str::<Bytes>("-5").is_err());
        assert!(serde_json::from_str::<Bytes>("1.5").is_err());
        assert!(serde_json::from_str::<Bytes>("\"lots\"").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,40}") {
            let _ = parse_bytes(&text);
        }

        #[test]
        fn round_trips_binary_units(n in 0u64..1_000_000, unit in 0usize..4) {
            let (suffix, mult) = SUFFIXES[unit];
            prop_assert_eq!(parse_bytes(&format!("{n}{suffix}")), Ok(n * mult as u64));
        }
    }
}
