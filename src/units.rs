//! Numbers as people type them, one parser each for every flag and file that takes them:
//! message counts (`5k`, `1m`), rates (`5000/s`, `2k/s`, `5k`), byte sizes (`128MiB`) and
//! ratios (`0.05`). Each returns [`UnitError`], so it can be a clap `value_parser` as it is.

/// A number that does not read as the unit asked for; the message says what would.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("count {0:?} is not a whole number with an optional k, m or g suffix (10k, 1m)")]
    Count(String),
    #[error("count must be at least 1")]
    ZeroCount,
    #[error(
        "unknown rate {0:?}: write messages per second (5000/s, 5000, 2k/s, 5k), at least 0.001"
    )]
    Rate(String),
    #[error("{0:?} is not a percentage >= 0")]
    Percent(String),
    #[error("{0:?} is not a length of time above zero (30s, 5m, 1h 30m)")]
    Duration(String),
    #[error("{0:?} is not a length of time (30s, 5m, 1h 30m; 0 for never)")]
    DurationOrNever(String),
    #[error("{0:?}: expected a size such as 128MiB")]
    Size(String),
    #[error("{0:?}: unknown unit (use KiB, MiB or GiB)")]
    SizeUnit(String),
    #[error("{0:?}: too large")]
    TooLarge(String),
    #[error("ratio {0:?} is not a number")]
    NotARatio(String),
    #[error("ratio {0} is not between 0 and 1")]
    Ratio(f64),
}

/// The number before a `k`, `m` or `g` suffix (decimal: 1k = 1,000) and its multiplier.
fn suffixed(t: &str) -> (&str, u64) {
    match t.as_bytes().last().map(u8::to_ascii_lowercase) {
        Some(b'k') => (&t[..t.len() - 1], 1_000),
        Some(b'm') => (&t[..t.len() - 1], 1_000_000),
        Some(b'g') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    }
}

/// A message count: a whole number with an optional `k`, `m` or `g` suffix (`10k`, `1m`,
/// `2500`). Zero is refused: no command is asked for nothing.
pub fn parse_count(s: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::Count(s.to_string());
    let (digits, scale) = suffixed(s.trim());
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(bad)?;
    if n == 0 {
        return Err(UnitError::ZeroCount);
    }
    Ok(n)
}

/// Messages per second: `5000`, `5000/s`, `2k/s`, `5k`, `1.5k`; positive and finite.
pub fn parse_rate(s: &str) -> Result<f64, UnitError> {
    let t = s.trim();
    let (number, scale) = suffixed(t.strip_suffix("/s").unwrap_or(t));
    match number.parse::<f64>() {
        // Below one message in ~17 minutes a schedule's times leave what a Duration holds.
        Ok(v) if v.is_finite() && v * scale as f64 >= MIN_RATE => Ok(v * scale as f64),
        _ => Err(UnitError::Rate(s.to_string())),
    }
}

/// The slowest rate any flag takes, messages per second.
pub const MIN_RATE: f64 = 0.001;

/// A length of time (`30s`, `5m`, `1h 30m`) that is not zero: a run of no time runs nothing.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, UnitError> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(UnitError::Duration(s.trim().to_string())),
    }
}

/// A length of time where 0 (`0`, `0s`) means "never" (a timeout that is off): the flags
/// whose help says so must not refuse it as [`parse_duration`] does.
pub fn parse_duration_or_never(s: &str) -> Result<std::time::Duration, UnitError> {
    humantime::parse_duration(s.trim())
        .map_err(|_| UnitError::DurationOrNever(s.trim().to_string()))
}

/// A percentage (`10`, `2.5`): finite and not negative.
pub fn parse_percent(s: &str) -> Result<f64, UnitError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(UnitError::Percent(s.trim().to_string())),
    }
}

/// Bytes: `5242880`, `512KiB`, `128MiB`, `1GiB` (also `k`/`KB`, `M`/`MB`, `G`/`GB`, all binary).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number.parse().map_err(|_| UnitError::Size(s.to_string()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(UnitError::SizeUnit(s.to_string())),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| UnitError::TooLarge(s.to_string()))
}

/// Bytes as people read them: `128 MiB`, `5 MiB`, `1536 KiB`, `700 bytes`.
pub fn show_size(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// A share between 0 and 1 (`0.05`).
pub fn parse_ratio(s: &str) -> Result<f64, UnitError> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| UnitError::NotARatio(s.trim().to_string()))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(UnitError::Ratio(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let ok = [
            ("1", 1),
            ("10k", 10_000),
            ("5K", 5_000),
            ("1m", 1_000_000),
            ("1M", 1_000_000),
            ("2g", 2_000_000_000),
            (" 42 ", 42),
        ];
        for (s, want) in ok {
            assert_eq!(parse_count(s), Ok(want), "{s}");
        }
        for bad in [
            "0",
            "0k",
            "",
            "k",
            "1x",
            "1.5m",
            "-1",
            "1kk",
            "99999999999999999999",
            "18446744073709551615k",
        ] {
            assert!(parse_count(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_count("0"), Err(UnitError::ZeroCount));
    }

    #[test]
    fn rates() {
        let ok = [
            ("5000", 5000.0),
            ("5000/s", 5000.0),
            ("2k/s", 2000.0),
            ("5k", 5000.0),
            ("1.5k", 1500.0),
            ("1m/s", 1e6),
            ("0.5", 0.5),
        ];
        for (s, want) in ok {
            assert_eq!(parse_rate(s), Ok(want), "{s}");
        }
        for bad in ["", "0/s", "fast", "-1", "k", "inf", "5/m"] {
            let err = parse_rate(bad).unwrap_err().to_string();
            assert!(err.contains("unknown rate"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("0").is_err());
        // A timeout's 0 is "never", not a typo.
        for zero in ["0", "0s", " 0ms "] {
            assert_eq!(
                parse_duration_or_never(zero),
                Ok(Duration::ZERO),
                "{zero:?}"
            );
        }
        assert_eq!(parse_duration_or_never("1m"), Ok(Duration::from_secs(60)));
        let err = parse_duration_or_never("soon").unwrap_err().to_string();
        assert!(err.contains("0 for never"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5242880"), Ok(5 * 1024 * 1024));
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(show_size(128 << 20), "128 MiB");
        assert_eq!(show_size(1536 << 10), "1536 KiB");
        assert_eq!(show_size(700), "700 bytes");
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_ratio("0.05"), Ok(0.05));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert_eq!(
            parse_ratio("2").unwrap_err().to_string(),
            "ratio 2 is not between 0 and 1"
        );
        assert_eq!(
            parse_ratio("lots").unwrap_err().to_string(),
            "ratio \"lots\" is not a number"
        );
    }
}
