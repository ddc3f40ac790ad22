//! The gateway's published state: the running gateway rewrites `status.json` in its state
//! directory every second (atomically: write, then rename) from [`Health`], and on a clean
//! stop writes `last-shutdown.json` with the exact reason (for a signal: which one, and who
//! sent it). A run that ends without that record (SIGKILL, OOM kill, power loss) is
//! recognised by the next run, which reports it as unclean with the last time the old run
//! was seen alive. [`report`] is `hermes-gateway status`, which reads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::circuit::{Circuits, View};
use crate::clock::{format_unix, unix_now};
use crate::health::{Health, ProviderStatus, ShutdownRecord, Snapshot};
use crate::settings::LiveSettings;
use crate::signals::StopReason;
use crate::systemd::Notifier;

pub const STATUS_FILE: &str = "status.json";
pub const SHUTDOWN_FILE: &str = "last-shutdown.json";

/// How the previous run ended, read before this run overwrites its status file.
pub fn previous_shutdown(state_dir: &Path) -> Option<ShutdownRecord> {
    let recorded: Option<ShutdownRecord> = read_json(&state_dir.join(SHUTDOWN_FILE));
    let last_status: Option<Snapshot> = read_json(&state_dir.join(STATUS_FILE));
    match (recorded, last_status) {
        (Some(record), Some(status)) if record.run_id != status.run_id => Some(unclean(status)),
        (Some(record), _) => Some(record),
        (None, Some(status)) => Some(unclean(status)),
        (None, None) => None,
    }
}

/// The record of a run that left a status file and no shutdown record of its own.
fn unclean(last_status: Snapshot) -> ShutdownRecord {
    ShutdownRecord {
        run_id: last_status.run_id,
        at_unix: last_status.written_at_unix,
        reason: format!(
            "unclean: the process ended without shutting down (SIGKILL, OOM kill or crash); last seen alive at {}",
            format_unix(last_status.written_at_unix)
        ),
    }
}

pub fn record_shutdown(state_dir: &Path, run_id: &str, reason: &StopReason) {
    let record = ShutdownRecord {
        run_id: run_id.to_string(),
        at_unix: unix_now(),
        reason: reason.to_string(),
    };
    if let Err(e) = write_json(&state_dir.join(SHUTDOWN_FILE), &record) {
        tracing::warn!("cannot record the shutdown reason: {e}");
    }
}

#[derive(Clone)]
pub struct Publisher {
    pub health: Arc<Health>,
    pub circuits: Arc<Circuits>,
    /// The providers to report, from the live settings.
    pub settings: LiveSettings,
    pub state_dir: PathBuf,
    pub notifier: Arc<Notifier>,
    /// Counted once a second for the queue (messages not answered yet).
    pub store: Arc<crate::store::Store>,
}

impl Publisher {
    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let settings = self.settings.get();
        let providers = settings
            .providers
            .iter()
            .map(|p| {
                let view = self.circuits.view(&p.name, now);
                ProviderStatus {
                    name: p.name.clone(),
                    model: p.model.clone(),
                    circuit: view.state(),
                    open_for_secs: match view {
                        View::Open { remaining } => Some(remaining.as_secs()),
                        View::Closed | View::Probing => None,
                    },
                }
            })
            .collect();
        self.health.snapshot(providers)
    }

    /// Publishes until `stop`: the status file every second, `STATUS=` on change, and the
    /// watchdog ping while polling makes progress and the store is not stuck.
    pub async fn run(self, stop: CancellationToken) {
        let watchdog = self.notifier.watchdog_period();
        let tick = watchdog
            .map(|w| (w / 4).min(Duration::from_secs(1)))
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(50));
        let mut interval = tokio::time::interval(tick);
        let mut last_line = String::new();
        let mut last_file = Instant::now() - Duration::from_secs(10);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let snapshot = self.snapshot();
            if last_file.elapsed() >= Duration::from_secs(1) {
                last_file = Instant::now();
                // Counted for the next snapshot: a busy store keeps the last count.
                if let Some(queue) = self.store.try_count_unanswered() {
                    self.health.set_queue(queue);
                }
                if let Err(e) = write_json(&self.state_dir.join(STATUS_FILE), &snapshot) {
                    tracing::warn!("cannot write the status file: {e}");
                }
            }
            let line = snapshot.status_line();
            if line != last_line {
                self.notifier.status(&line);
                last_line = line;
            }
            if let Some(period) = watchdog
                && self.health.alive_within(period)
            {
                self.notifier.watchdog();
            }
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

mod list;
pub mod report;
mod unit;
pub use report::status_command;

/// `hermes-gateway status [NAME]`: instance `NAME`'s full report; with no name and no
/// configuration named, every instance on the host, a line each, where the host has
/// instances, else the single gateway's report as before.
pub fn status_of(name: Option<&str>, config: Option<&Path>, user: bool, json: bool) -> i32 {
    if let Some(name) = name {
        if let Err(e) = crate::instances::check_name(name) {
            eprintln!("{e}");
            return hermes_config::EXIT_CONFIG;
        }
        return report::show(&report::Target::instance(user, name), user, json);
    }
    let instances = if config.is_none() {
        crate::instances::discover(user)
    } else {
        Vec::new()
    };
    if instances.is_empty() {
        status_command(config, user, json)
    } else {
        list::list(&instances, user, json)
    }
}
