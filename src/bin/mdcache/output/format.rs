//! How numbers and URLs read on screen and in reports: durations with units, thousands separators, ratios, whole milliseconds, URLs without credentials.

use std::time::Duration;

/// `850 ns`, `12.3 µs`, `4.56 ms`, `1.20 s`.
pub(crate) fn fmt_nanos(ns: u64) -> String {
    let ns_f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns_f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns_f / 1e6)
    } else {
        format!("{:.2} s", ns_f / 1e9)
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `part / whole`, 0 when `whole` is 0.
pub(crate) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Whole milliseconds, saturating (a TTL or age as the JSON outputs print it).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The URL with any user and password replaced by `***`, for printing. The user info runs to
/// the last `@` (a password may hold an unencoded `@` or `/`); a query that may carry a
/// password (`?pass=`, `?password=`) is hidden whole; in a libpq `key=value` string,
/// everything from `password=` on is hidden.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return match find_ignore_case(url, "password") {
            Some(at) => format!("{}password=***", &url[..at]),
            None => url.to_owned(),
        };
    };
    let (userinfo, host) = match rest.rfind('@') {
        Some(at) => ("***@", &rest[at + 1..]),
        None => ("", rest),
    };
    let host = match host.split_once('?') {
        Some((path, query)) if find_ignore_case(query, "pass").is_some() => format!("{path}?***"),
        _ => host.to_owned(),
    };
    format!("{scheme}://{userinfo}{host}")
}

/// Where `needle` (ASCII) first occurs in `s`, ignoring ASCII case.
fn find_ignore_case(s: &str, needle: &str) -> Option<usize> {
    s.to_ascii_lowercase().find(needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            redact("rediss://user:p%40ss@cache:6380/0"),
            "rediss://***@cache:6380/0"
        );
        assert_eq!(redact("redis://:secret@h/"), "redis://***@h/");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(redact("redis://u:pa/ss@h:1/0"), "redis://***@h:1/0");
        assert_eq!(
            redact("redis+unix:///r.sock?db=1&pass=pw"),
            "redis+unix:///r.sock?***"
        );
        assert_eq!(
            redact("redis://h/0?protocol=resp3"),
            "redis://h/0?protocol=resp3"
        );
        assert_eq!(
            redact("host=db user=u password='p w' dbname=x"),
            "host=db user=u password=***"
        );
    }

    #[test]
    fn durations_format_with_units() {
        assert_eq!(fmt_nanos(850), "850 ns");
        assert_eq!(fmt_nanos(12_345), "12.3 µs");
        assert_eq!(fmt_nanos(4_560_000), "4.56 ms");
        assert_eq!(fmt_nanos(1_200_000_000), "1.20 s");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn ratios_and_millis() {
        assert_eq!(ratio(1, 4), 0.25);
        assert_eq!(ratio(1, 0), 0.0);
        assert_eq!(millis(Duration::from_micros(2_999)), 2);
    }
}
