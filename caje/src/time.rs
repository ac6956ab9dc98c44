//! Clock helpers every module may use. A leaf: it depends on nothing else in caje.

use std::time::SystemTime;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
