//! Times and durations the way people read them: "in 15m", "12m left", local time.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A span of seconds, short and rounded to what matters: `45s`, `4m30s`, `15m`, `2h5m`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    if s >= 600 {
        // Whole minutes, rounded to the nearest: seconds no longer matter.
        let m = (s + 30) / 60;
        match (m / 60, m % 60) {
            (0, m) => format!("{m}m"),
            (h, 0) => format!("{h}h"),
            (h, m) => format!("{h}h{m}m"),
        }
    } else if s >= 60 {
        let (m, s) = (s / 60, s % 60);
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else {
        format!("{s}s")
    }
}

/// How long until `at`: "in 15m", or "now" once it has passed.
pub fn until(at: Timestamp, now: Timestamp) -> String {
    let secs = at.as_second() - now.as_second();
    if secs <= 0 {
        "now".to_string()
    } else {
        format!("in {}", span(secs))
    }
}

/// What is left of a grant: "12m left", or "expired" once `at` has passed.
pub fn left(at: Timestamp, now: Timestamp) -> String {
    let secs = at.as_second() - now.as_second();
    if secs <= 0 {
        "expired".to_string()
    } else {
        format!("{} left", span(secs))
    }
}

/// How long ago `at` was: "3m ago".
pub fn ago(at: Timestamp, now: Timestamp) -> String {
    format!("{} ago", span(now.as_second() - at.as_second()))
}

/// `at` in this machine's time zone: `2026-05-01 14:32:10 CEST`.
pub fn local_time(at: Timestamp) -> String {
    local_time_in(at, &TimeZone::system())
}

/// `at` in time zone `tz`.
pub fn local_time_in(at: Timestamp, tz: &TimeZone) -> String {
    at.to_zoned(tz.clone())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_naturally() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (270, "4m30s"),
            (599, "9m59s"),
            (899, "15m"),
            (3540, "59m"),
            (3599, "1h"),
            (3600, "1h"),
            (7500, "2h5m"),
            (-5, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(span(secs), want, "{secs}");
        }
    }

    #[test]
    fn relative_and_local_times() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let later = Timestamp::from_second(1_700_000_000 + 899).unwrap();
        assert_eq!(until(later, now), "in 15m");
        assert_eq!(left(later, now), "15m left");
        assert_eq!(left(now, later), "expired");
        assert_eq!(ago(now, later), "15m ago");
        assert_eq!(
            local_time_in(now, &TimeZone::UTC),
            "2023-11-14 22:13:20 UTC"
        );
    }
}
