//! git-annex branch logs (annex-spec §3): their line formats, parsed and written
//! byte for byte as git-annex does, and their merge.
//!
//! Every log is a set of lines; git-annex merges two versions of a file by the
//! union of their lines and resolves "newest per field" when reading. That makes
//! each log a state-based CRDT, which is how annexmesh gossips them.

pub mod authorize;
pub mod catalog;
pub mod members;
pub mod presence;
pub mod uuid_based;
pub mod view;

use std::fmt;

/// A log timestamp (`VectorClock`): POSIX seconds, possibly fractional in old lines.
/// Compared by value; the exact text read is kept only when it is not the
/// canonical `<seconds>s`, so lines round-trip without a string per clock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Clock {
    seconds: i64,
    nanos: u32,
    text: Option<Box<str>>,
}

impl Clock {
    /// A clock of whole seconds, as current git-annex writes them (`1700000000s`).
    pub fn from_seconds(seconds: i64) -> Clock {
        Clock {
            seconds,
            nanos: 0,
            text: None,
        }
    }

    /// Parses `1700000000s`, `1317929189.157237s`, `-5s`, and the same without `s`.
    pub fn parse(s: &str) -> Option<Clock> {
        let body = s.strip_suffix('s').unwrap_or(s);
        let (neg, body) = match body.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut seconds: i64 = whole.parse().ok()?;
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        let mut nanos: u32 = digits.parse().ok()?;
        if neg {
            seconds = -seconds;
            if nanos > 0 {
                seconds -= 1;
                nanos = 1_000_000_000 - nanos;
            }
        }
        let canonical = nanos == 0 && *s == *format!("{seconds}s");
        Some(Clock {
            seconds,
            nanos,
            text: (!canonical).then(|| s.into()),
        })
    }

    pub fn seconds(&self) -> i64 {
        self.seconds
    }

    /// The clock a writer uses for a new entry of a field whose newest entry is
    /// `newest` (`advanceVectorClock`): `now`, or one second past `newest` when
    /// that is not older than `now`.
    pub fn advance(now: i64, newest: Option<&Clock>) -> Clock {
        match newest {
            Some(c) if (c.seconds, c.nanos) >= (now, 0) => Clock::from_seconds(c.seconds + 1),
            _ => Clock::from_seconds(now),
        }
    }
}

impl PartialOrd for Clock {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Clock {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.seconds, self.nanos)
            .cmp(&(other.seconds, other.nanos))
            .then_with(|| match (&self.text, &other.text) {
                (None, None) => std::cmp::Ordering::Equal,
                _ => self.to_string().cmp(&other.to_string()),
            })
    }
}

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.text {
            Some(t) => f.write_str(t),
            None => write!(f, "{}s", self.seconds),
        }
    }
}

/// Splits log file content into lines the way git-annex does: any mix of `\r`
/// and `\n` ends a line; empty lines vanish.
pub fn lines(content: &[u8]) -> impl Iterator<Item = &str> {
    content
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|l| !l.is_empty())
        .filter_map(|l| std::str::from_utf8(l).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_parse_and_order() {
        let old = Clock::parse("1317929189.157237s").unwrap();
        let new = Clock::parse("1700000000s").unwrap();
        assert!(old < new);
        assert_eq!(old.to_string(), "1317929189.157237s");
        assert_eq!(Clock::parse("12").unwrap().seconds(), 12);
        assert!(Clock::parse("-1.5s").unwrap() < Clock::parse("-1s").unwrap());
        assert!(Clock::parse("x").is_none());
        assert!(Clock::parse("1.2.3s").is_none());
        assert!(Clock::parse("s").is_none());
    }

    #[test]
    fn advance_never_goes_back() {
        let newest = Clock::from_seconds(100);
        assert_eq!(Clock::advance(50, Some(&newest)), Clock::from_seconds(101));
        assert_eq!(Clock::advance(100, Some(&newest)), Clock::from_seconds(101));
        assert_eq!(Clock::advance(200, Some(&newest)), Clock::from_seconds(200));
        assert_eq!(Clock::advance(7, None), Clock::from_seconds(7));
    }
}
