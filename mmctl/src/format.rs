//! Human forms of the admin API's numbers: bytes in binary units, durations, percentages.

/// `67108864` -> `64Mi`; `1536` -> `1.5Ki`; below 1 KiB in plain bytes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return n.to_string();
    }
    let text = if value >= 100.0 || (value - value.round()).abs() < 0.05 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    format!("{text}{}", UNITS[unit])
}

/// `0.25` -> `250ms`, `75` -> `1m15s`, `7300` -> `2h1m`.
pub fn seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    if s < 1.0 {
        return format!("{}ms", (s * 1000.0).round() as u64);
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let whole = s.round() as u64;
    if whole < 3600 {
        format!("{}m{}s", whole / 60, whole % 60)
    } else if whole < 86_400 {
        format!("{}h{}m", whole / 3600, (whole % 3600) / 60)
    } else {
        format!("{}d{}h", whole / 86_400, (whole % 86_400) / 3600)
    }
}

/// `used` of `capacity` as `64Mi/1Gi (6%)`, or `-` without capacity.
pub fn usage(used: u64, capacity: u64) -> String {
    if capacity == 0 {
        return "-".into();
    }
    let pct = used as f64 / capacity as f64 * 100.0;
    format!("{}/{} ({pct:.0}%)", bytes(used), bytes(capacity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes_durations_and_usage() {
        assert_eq!(bytes(512), "512");
        assert_eq!(bytes(1536), "1.5Ki");
        assert_eq!(bytes(64 << 20), "64Mi");
        assert_eq!(bytes(1 << 30), "1Gi");
        assert_eq!(seconds(0.25), "250ms");
        assert_eq!(seconds(2.04), "2.0s");
        assert_eq!(seconds(75.0), "1m15s");
        assert_eq!(seconds(7300.0), "2h1m");
        assert_eq!(seconds(-1.0), "-");
        assert_eq!(usage(96 << 20, 1 << 30), "96Mi/1Gi (9%)");
        assert_eq!(usage(0, 0), "-");
    }
}
