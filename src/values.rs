//! Parsers for command-line values that several commands share (durations, `KEY=VALUE`
//! variables): a leaf module, so argument definitions in any file can name them.

use std::time::Duration;

/// Parses a `--var KEY=VALUE` argument.
pub fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.is_empty() {
        return Err("the variable name is empty".into());
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses a duration: `250ms`, `10s`, `2m`, `1h 30m` (humantime's syntax), or a bare number of
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(Duration::from_secs).map_err(|e| format!("invalid duration {s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e}; try 500ms, 10s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
