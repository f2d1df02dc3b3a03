//! Wall-clock time as Unix timestamps, written once. A clock before 1970 reads as 0 and
//! one past `i64` seconds saturates: timestamps label records and responses, they never
//! fail a request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` in whole seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The time `s` seconds after the Unix epoch (negative: the epoch).
pub fn from_unix_secs(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    u64::try_from(unix_secs(SystemTime::now())).unwrap_or(0)
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_saturates() {
        let t = from_unix_secs(1_700_000_000);
        assert_eq!(unix_secs(t), 1_700_000_000);
        assert_eq!(from_unix_secs(-5), UNIX_EPOCH);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let now = unix_now();
        assert!(now > 1_700_000_000);
        assert!(now_ms() / 1000 >= i64::try_from(now).unwrap() - 1);
    }
}
