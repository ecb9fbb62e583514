//! Clock helpers. Entries carry their times as Unix milliseconds (the
//! wall clock), so that every process reading an entry agrees on when it
//! expires; intervals within one process use a monotonic clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

/// Milliseconds on a clock that never goes back (a step of the wall clock
/// does not move it), counted from its first reading in the process: for
/// intervals within one process (how long since a warning, since a
/// task's last beat), never for what is stored.
pub(crate) fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    duration_ms(START.get_or_init(std::time::Instant::now).elapsed())
}

/// The longest any entry, stale window or tag is kept: about a century.
/// `Duration::MAX` is how many users write "never expires"; past this bound
/// it would overflow the clock arithmetic here, in moka and in Redis (which
/// refuses an expiry past `i64::MAX` ms from now).
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
