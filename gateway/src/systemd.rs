//! Telling systemd how the service is doing, over `$NOTIFY_SOCKET` (`Type=notify`).
//!
//! - `READY=1` once local start-up is done (configuration, state, worker socket, first
//!   worker), not once Telegram answers, so a Telegram outage at boot is not a restart loop;
//! - `STATUS=…`, the line `systemctl status` shows, whenever it changes;
//! - `WATCHDOG=1` only while the poll loop makes progress (a `getUpdates` round trip,
//!   success or error, within the watchdog period) and the state store has not refused
//!   every write for a whole period, so a poller that silently stalls, or a store that
//!   stays stuck, gets the unit restarted by systemd (`Health::alive_within`);
//! - `STOPPING=1` when a stop begins.
//!
//! Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op. Workers never see these
//! variables: their environment is cleared before exec.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// The watchdog period systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn send(&self, state: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(state) {
            tracing::debug!("sd_notify failed: {e}");
        }
    }
}
