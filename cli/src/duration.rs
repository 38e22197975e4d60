//! Durations on the command line.

use anyhow::{Context, bail};

/// `30s`, `10m`, `24h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => bail!("bad duration {s:?}: use s, m, h or d"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("duration {s:?} too long"))
}
