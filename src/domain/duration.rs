//! Kubernetes-style durations (`30s`, `5m`, `1h30m`).
//!
//! Hand-written: the accepted grammar is the CRD pattern `^([0-9]+(h|m|s))+$`, a few lines,
//! and the crates that parse Go durations accept more than the API server lets through.

use std::time::Duration;

/// Parses `1h30m`-style durations. Errors say what is wrong in words.
pub fn parse(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("is empty; write a duration such as 30s, 5m or 1h30m".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        match ch {
            '0'..='9' => digits.push(ch),
            'h' | 'm' | 's' => {
                if digits.is_empty() {
                    return Err(format!("{text:?} has a unit without a number"));
                }
                let n: u64 = digits
                    .parse()
                    .map_err(|_| format!("{text:?} has a number too large"))?;
                let unit = match ch {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total = n
                    .checked_mul(unit)
                    .and_then(|s| total.checked_add(s))
                    .ok_or_else(|| format!("{text:?} is too long"))?;
                digits.clear();
            }
            _ => {
                return Err(format!(
                    "{text:?} is not a duration; write one such as 30s, 5m or 1h30m"
                ));
            }
        }
    }
    if !digits.is_empty() {
        return Err(format!("{text:?} ends without a unit (h, m or s)"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse`] reads it (`1h30m`, `45s`).
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_forms_people_write() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse("").is_err());
        assert!(parse("1 h").is_err());
        assert!(parse("h").is_err());
        assert!(parse("10").is_err());
        assert!(parse("1d").is_err());
        assert!(parse("99999999999999999999h").is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in 0u64..10_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }
    }
}
