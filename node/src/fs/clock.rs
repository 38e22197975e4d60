//! The monotonic clock git-annex uses for `GETTIMESTAMP` and `REMOVE-BEFORE`:
//! seconds since boot, counting suspend (Linux `CLOCK_BOOTTIME`, which is what
//! `/proc/uptime` reports). The value only means something to this machine.

use std::sync::OnceLock;
use std::time::Instant;

/// Whole seconds on the boot-time clock.
pub fn monotonic_seconds() -> i64 {
    if let Ok(text) = std::fs::read_to_string("/proc/uptime")
        && let Some(secs) = text
            .split_whitespace()
            .next()
            .and_then(|s| s.split('.').next())
            .and_then(|s| s.parse::<i64>().ok())
    {
        return secs;
    }
    // No /proc: a process-local monotonic clock is still monotonic.
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs() as i64
}
