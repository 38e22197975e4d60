//! Deadlines on peers: the durations they are configured with
//! (`annexmesh.authtimeout`, `annexmesh.idletimeout`). Pure: the node crate
//! reads the settings and the clock.

use std::time::Duration;

/// How long a stream may stay unauthenticated (no `AUTH`, or no `TARGET`
/// line) before it is closed and its slot freed.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an authenticated session may wait for its client's next bytes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Parses a duration as git-annex writes them: plain seconds (`10`), or
/// numbers with units `s`, `m`, `h`, `d`, concatenated (`90s`, `15m`,
/// `1h30m`). `None` for anything else, zero included.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return (n > 0).then(|| Duration::from_secs(n));
    }
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(d))?,
            );
            continue;
        }
        let mult = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(num.take()?.checked_mul(mult)?)?;
    }
    if num.is_some() || total == 0 {
        return None;
    }
    Some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "10x",
            "1m30",
            "-5",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
