//! Deadlines on peers: the durations they are configured with
//! (`annexmesh.authtimeout`, `annexmesh.idletimeout`), the deadline on a
//! node's reply, and stall detection on transfers with git-annex's
//! `annex.stalldetection` syntax ([`StallRule`], [`StallDetector`]). Pure:
//! the node crate reads the settings and the clock, and feeds times in as
//! milliseconds from any origin.

use std::time::Duration;

/// How long a stream may stay unauthenticated (no `AUTH`, or no `TARGET`
/// line) before it is closed and its slot freed.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an authenticated session may wait for its client's next bytes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How long a node may take to answer a request without payload
/// (`CHECKPRESENT`, `LOCKCONTENT`, `REMOVE`, `PUT`'s first answer, …).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The deadlines on one node: its reply deadline
/// (`annexmesh.replytimeout`, default [`REPLY_TIMEOUT`]) and its stall rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeDeadlines {
    pub stall: StallRule,
    /// `None`: [`REPLY_TIMEOUT`].
    pub reply: Option<Duration>,
}

impl NodeDeadlines {
    /// From the settings (see [`StallRule::configured`]); what does not
    /// parse is the default.
    pub fn configured(
        per_remote_stall: Option<&str>,
        global_stall: Option<&str>,
        reply: Option<&str>,
    ) -> NodeDeadlines {
        NodeDeadlines {
            stall: StallRule::configured(per_remote_stall, global_stall),
            reply: reply.and_then(parse_duration),
        }
    }

    pub fn reply(&self) -> Duration {
        self.reply.unwrap_or(REPLY_TIMEOUT)
    }
}

/// When a transfer counts as stalled: less than `bytes` moved in any
/// `period` (git-annex's `annex.stalldetection`, `1KB/30s`), or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallRule {
    Off,
    Rate { bytes: u64, period_ms: u64 },
}

impl Default for StallRule {
    /// No progress at all for 60 s (also what `true` means here: git-annex
    /// then probes the transfer's own rate, annexmesh takes this floor).
    fn default() -> Self {
        StallRule::Rate {
            bytes: 1,
            period_ms: 60_000,
        }
    }
}

impl StallRule {
    /// git-annex's syntax: `false` (off), `true` (the default), or
    /// `<size>/<duration>` (`1KB/30s`, `10MiB/1m`). `None` if it does not
    /// parse.
    pub fn parse(s: &str) -> Option<StallRule> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "false" | "no" | "off" => return Some(StallRule::Off),
            "true" | "yes" | "on" => return Some(StallRule::default()),
            _ => {}
        }
        let (size, period) = s.split_once('/')?;
        let bytes = crate::preferred::parse_size(size)?;
        let period = parse_duration(period)?;
        if bytes == 0 {
            return None;
        }
        Some(StallRule::Rate {
            bytes,
            period_ms: u64::try_from(period.as_millis()).ok()?,
        })
    }

    /// The rule for remote `remote`: `remote.<name>.annex-stalldetection`,
    /// else `annex.stalldetection`, else the default; a value that does
    /// not parse is skipped (the node logs it).
    pub fn configured(per_remote: Option<&str>, global: Option<&str>) -> StallRule {
        per_remote
            .and_then(StallRule::parse)
            .or_else(|| global.and_then(StallRule::parse))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for StallRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StallRule::Off => write!(f, "off"),
            StallRule::Rate { bytes, period_ms } => {
                write!(f, "{bytes} bytes in {}s", period_ms / 1000)
            }
        }
    }
}

/// Judges a transfer by [`StallRule`]: fed the bytes moved, asked at the
/// deadline it gives whether the last period moved enough.
///
/// Only periods the transfer spent waiting on the peer are judged: a period
/// that ended while the caller was busy elsewhere (its own client slow, a
/// request not started) is restarted when the caller next waits
/// ([`StallDetector::waiting`]).
#[derive(Debug, Clone)]
pub struct StallDetector {
    rule: StallRule,
    start: u64,
    at_start: u64,
    moved: u64,
}

impl StallDetector {
    pub fn new(rule: StallRule, now: u64) -> StallDetector {
        StallDetector {
            rule,
            start: now,
            at_start: 0,
            moved: 0,
        }
    }

    pub fn rule(&self) -> StallRule {
        self.rule
    }

    fn period(&self) -> Option<u64> {
        match self.rule {
            StallRule::Off => None,
            StallRule::Rate { period_ms, .. } => Some(period_ms),
        }
    }

    /// Starts a new period now (a new request).
    pub fn restart(&mut self, now: u64) {
        self.start = now;
        self.at_start = self.moved;
    }

    /// `n` bytes moved at `now`. A period that is over rolls over.
    pub fn moved(&mut self, n: u64, now: u64) {
        self.moved = self.moved.saturating_add(n);
        if let Some(p) = self.period()
            && now >= self.start.saturating_add(p)
        {
            self.restart(now);
        }
    }

    /// The caller starts waiting on the peer at `now`: a period already
    /// over (nobody waited for its end) starts afresh.
    pub fn waiting(&mut self, now: u64) {
        if let Some(p) = self.period()
            && now >= self.start.saturating_add(p)
        {
            self.restart(now);
        }
    }

    /// When to ask [`StallDetector::stalled`] next; `None`: never.
    pub fn deadline(&self) -> Option<u64> {
        self.period().map(|p| self.start.saturating_add(p))
    }

    /// Whether the period that is over at `now` moved too little; if it
    /// moved enough, the next period starts.
    pub fn stalled(&mut self, now: u64) -> bool {
        let StallRule::Rate { bytes, period_ms } = self.rule else {
            return false;
        };
        if now < self.start.saturating_add(period_ms) {
            return false;
        }
        if self.moved - self.at_start < bytes {
            return true;
        }
        self.restart(now);
        false
    }
}

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
    fn stall_rules() {
        assert_eq!(
            StallRule::parse("1KB/30s"),
            Some(StallRule::Rate {
                bytes: 1000,
                period_ms: 30_000
            })
        );
        assert_eq!(
            StallRule::parse("10MiB/1m"),
            Some(StallRule::Rate {
                bytes: 10 << 20,
                period_ms: 60_000
            })
        );
        assert_eq!(StallRule::parse("false"), Some(StallRule::Off));
        assert_eq!(StallRule::parse("true"), Some(StallRule::default()));
        for bad in ["", "1KB", "/30s", "0/30s", "1KB/0s", "1XB/30s", "maybe"] {
            assert_eq!(StallRule::parse(bad), None, "{bad}");
        }
        assert_eq!(
            StallRule::configured(Some("false"), Some("1KB/30s")),
            StallRule::Off
        );
        assert_eq!(
            StallRule::configured(Some("junk"), Some("false")),
            StallRule::Off
        );
        assert_eq!(StallRule::configured(None, None), StallRule::default());
    }

    #[test]
    fn a_transfer_moving_too_little_stalls() {
        let rule = StallRule::parse("1KB/30s").unwrap();
        let mut d = StallDetector::new(rule, 0);
        assert_eq!(d.deadline(), Some(30_000));
        d.moved(600, 10_000);
        assert!(!d.stalled(29_999), "not judged before the period ends");
        d.moved(600, 20_000);
        assert!(!d.stalled(30_000), "1200 bytes in the first period");
        assert_eq!(d.deadline(), Some(60_000));
        d.moved(999, 50_000);
        assert!(d.stalled(60_000), "999 bytes in the second");
    }

    #[test]
    fn periods_nobody_waited_on_start_afresh() {
        let mut d = StallDetector::new(StallRule::default(), 0);
        // Idle between requests for ten minutes, then waiting.
        d.waiting(600_000);
        assert_eq!(d.deadline(), Some(660_000));
        assert!(!d.stalled(630_000));
        assert!(d.stalled(660_000), "a minute waiting without a byte");
        // A trickle while waiting is judged, not restarted.
        let mut d = StallDetector::new(StallRule::parse("1KB/30s").unwrap(), 0);
        d.waiting(0);
        d.moved(10, 20_000);
        d.waiting(20_000);
        assert!(d.stalled(30_000));
        // Off never stalls.
        let mut d = StallDetector::new(StallRule::Off, 0);
        assert_eq!(d.deadline(), None);
        assert!(!d.stalled(u64::MAX));
    }

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
