//! Units users type and read: durations (`30s`, `5m`, `1h`, `7d`, `2w`)
//! and sizes (`10K`, `512M`, `2GiB`), parsed and formatted in one place.

use std::time::Duration;

/// Parse `30s`, `5m`, `1h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86400),
        (i, 'w') => (&s[..i], 7 * 86400),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .map(Duration::from_secs)
}

/// Parse `1024`, `10K`, `512M`, `2G`, `1T` (powers of 1024; an optional `B`/`iB`).
pub fn parse_size(s: &str) -> Option<u64> {
    let u = s.trim().to_ascii_uppercase();
    let u = u
        .strip_suffix("IB")
        .or_else(|| u.strip_suffix('B'))
        .unwrap_or(&u);
    let (num, shift) = match u.chars().last()? {
        'K' => (&u[..u.len() - 1], 10),
        'M' => (&u[..u.len() - 1], 20),
        'G' => (&u[..u.len() - 1], 30),
        'T' => (&u[..u.len() - 1], 40),
        _ => (u, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s % 86400 == 0 && s > 0 {
        format!("{}d", s / 86400)
    } else if s % 3600 == 0 && s > 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_size("10K"), Some(10240));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("lots"), None);
    }
}
