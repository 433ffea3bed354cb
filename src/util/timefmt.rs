//! Timestamps and humane durations, parsed once at the edges.

use jiff::Timestamp;
use std::time::Duration;

/// Parses an RFC 3339 timestamp (`2026-11-20T22:00:00Z`).
pub fn parse_timestamp(s: &str) -> Result<Timestamp, String> {
    s.parse::<Timestamp>()
        .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp like 2026-11-20T22:00:00Z ({e})"))
}

/// Formats a timestamp as RFC 3339 UTC, truncated to the second (never rounded into the future).
pub fn format_timestamp(t: Timestamp) -> String {
    let opts = jiff::TimestampRound::new()
        .smallest(jiff::Unit::Second)
        .mode(jiff::RoundMode::Trunc);
    t.round(opts)
        .unwrap_or(t)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Parses `90s`, `15m`, `1h`, `24h`, `7d` (also `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 1h, 7d"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?} has no valid unit (ms, s, m, h, d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// Converts Unix seconds + nanoseconds (as from `stat`) into a timestamp, clamping nonsense.
pub fn from_unix(secs: i64, nanos: i64) -> Timestamp {
    Timestamp::new(secs, nanos as i32).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("1 hour").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        let t = parse_timestamp("2026-11-20T22:00:00Z").unwrap();
        assert_eq!(format_timestamp(t), "2026-11-20T22:00:00Z");
        assert!(parse_timestamp("2026-11-20 22:00").is_err());
    }
}
