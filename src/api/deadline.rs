//! The caller's deadline, from the `grpc-timeout` header (gRPC over HTTP/2 spec).

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

/// `Some(deadline)` when the call carries a valid grpc-timeout.
pub fn from_metadata(md: &MetadataMap, now: Instant) -> Option<Instant> {
    let raw = md.get("grpc-timeout")?.to_str().ok()?;
    parse(raw).map(|d| now + d)
}

/// Parses "<digits><unit>" with unit H, M, S, m (ms), u (us), n (ns); at most 8 digits.
pub fn parse(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse("123456789m"), None);
    }
}
