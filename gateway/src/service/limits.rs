//! The limits the installed unit sets and the configuration needs: `TimeoutStopSec=` must
//! outlast the configuration's stop, and `WatchdogSec=` a healthy poll loop's longest
//! quiet stretch. `service install` writes the first from the configuration;
//! `check-config` warns when an installed unit no longer fits either.

use std::path::Path;

use hermes_config::{Config, WorkersConfig};

use super::unit_path;

/// Seconds `TimeoutStopSec=` adds to the drain and the kill grace: after the drain the
/// gateway waits at most `kill_grace_secs` + 5 s for the cancelled jobs' worker groups to
/// end (`run::stop`), and 5 s more covers its exit (the status file, the shutdown record).
pub const STOP_MARGIN_SECS: u64 = 10;

/// The longest a stop of this configuration takes: what `TimeoutStopSec=` must allow.
pub fn stop_timeout_secs(workers: &WorkersConfig) -> u64 {
    workers.shutdown_drain_secs + workers.kill_grace_secs + STOP_MARGIN_SECS
}

/// Seconds `WatchdogSec=` must exceed for a healthy poll loop: one long poll, the HTTP
/// client's margin above it (telegram.rs), and the longest backoff between two calls,
/// which are the longest a healthy loop goes without a round trip.
pub fn watchdog_floor_secs(config: &Config) -> u64 {
    u64::from(config.telegram.poll_timeout_secs) + 15 + config.telegram.retry_max_secs
}

/// What the installed unit of this configuration cannot honour, as warnings for
/// `check-config`: a `TimeoutStopSec=` shorter than the configuration's stop takes
/// (systemd would SIGKILL jobs still draining, and the stop would end `Result=timeout`),
/// and a `WatchdogSec=` a healthy poll loop could outlast (one long poll plus the longest
/// backoff: systemd would kill a gateway that is merely waiting). A unit installed for
/// another configuration file is not this one's business.
pub fn unit_limits_warnings(config: &Config, config_path: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    for user in [false, true] {
        let Ok(path) = unit_path(user) else { continue };
        let Ok(unit) = std::fs::read_to_string(&path) else {
            continue;
        };
        let for_this = std::fs::canonicalize(config_path)
            .is_ok_and(|c| unit.contains(&format!("--config {}", c.display())));
        if !for_this {
            continue;
        }
        let reinstall = format!(
            "hermes-gateway service install{} --config {}",
            if user { " --user" } else { "" },
            config_path.display()
        );
        let stop = stop_timeout_secs(&config.workers);
        if let Some(limit) = seconds_of(&unit, "TimeoutStopSec")
            && limit < stop
        {
            warnings.push(format!(
                "{}: TimeoutStopSec={limit} is shorter than this configuration's stop ({stop} s: shutdown_drain_secs {} + kill_grace_secs {} + {STOP_MARGIN_SECS}); systemd would kill jobs still draining. Fix: {reinstall}",
                path.display(),
                config.workers.shutdown_drain_secs,
                config.workers.kill_grace_secs,
            ));
        }
        let floor = watchdog_floor_secs(config);
        if let Some(watchdog) = seconds_of(&unit, "WatchdogSec")
            && watchdog <= floor
        {
            warnings.push(format!(
                "{}: WatchdogSec={watchdog} does not exceed one long poll and the longest backoff ({floor} s: telegram.poll_timeout_secs {} + 15 + telegram.retry_max_secs {}); systemd would kill a gateway that is only waiting. Fix: lower those, or raise WatchdogSec in a drop-in",
                path.display(),
                config.telegram.poll_timeout_secs,
                config.telegram.retry_max_secs,
            ));
        }
    }
    warnings
}

/// The last `KEY=` of `unit` in plain seconds (`30`, `30s`); other forms are not judged.
pub(super) fn seconds_of(unit: &str, key: &str) -> Option<u64> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .and_then(|v| v.trim().trim_end_matches('s').parse().ok())
}
