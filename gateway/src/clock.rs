//! Time as the gateway uses it: Unix seconds for what it records (the store, the status
//! file), their `HH:MM:SS UTC` for people, and waiting for a moment that may not be set.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Now, in whole seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `HH:MM:SS UTC` of a Unix time: enough for a status line read the same day.
pub fn format_unix(secs: u64) -> String {
    let s = secs % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s / 60) % 60, s % 60)
}

/// Sleeps until `at`; with no `at`, forever: for a `select!` branch whose timer is not
/// always armed.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
