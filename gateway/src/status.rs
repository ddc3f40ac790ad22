//! The gateway's published state, and `hermes-gateway status`, which reads it.
//!
//! The running gateway rewrites `status.json` in its state directory every second
//! (atomically: write, then rename) from [`Health`], and on a clean stop writes
//! `last-shutdown.json` with the exact reason (for a signal: which one, and who sent it).
//! A run that ends without that record (SIGKILL, OOM kill, power loss) is recognised by the
//! next run, which reports it as unclean with the last time the old run was seen alive.
//! `hermes-gateway status` exits like an LSB init script: 0 healthy, 1 degraded, 3 not
//! running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermes_config::{Config, EXIT_CONFIG};
use tokio_util::sync::CancellationToken;

use crate::circuit::{CircuitState, Circuits, View};
use crate::clock::{format_unix, unix_now};
use crate::health::{Health, ProviderStatus, ShutdownRecord, Snapshot};
use crate::settings::LiveSettings;
use crate::setup;
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

pub struct Publisher {
    pub health: Arc<Health>,
    pub circuits: Arc<Circuits>,
    /// The providers to report, from the live settings.
    pub settings: LiveSettings,
    pub state_dir: PathBuf,
    pub notifier: Arc<Notifier>,
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
    /// watchdog ping while polling makes progress.
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
                && self.health.polled_within(period)
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

/// Exit statuses of `hermes-gateway status` (LSB).
const HEALTHY: i32 = 0;
const DEGRADED: i32 = 1;
const NOT_RUNNING: i32 = 3;

pub fn status_command(config_path: &Path, json: bool) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    let state_dir = setup::state_dir(&config);
    let snapshot: Option<Snapshot> = read_json(&state_dir.join(STATUS_FILE));
    let running = snapshot.as_ref().filter(|s| is_gateway(s.pid));
    let Some(snapshot) = running else {
        println!(
            "hermes-gateway is not running (state: {})",
            state_dir.display()
        );
        let last = previous_shutdown(&state_dir);
        match last {
            Some(record) => println!(
                "last shutdown: {} at {} (run {})",
                record.reason,
                format_unix(record.at_unix),
                record.run_id
            ),
            None => println!("no previous run recorded"),
        }
        return NOT_RUNNING;
    };
    let reasons = snapshot.degraded_reasons();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(snapshot).unwrap_or_default()
        );
    } else {
        print_status(snapshot, &reasons);
    }
    if reasons.is_empty() {
        HEALTHY
    } else {
        DEGRADED
    }
}

fn print_status(s: &Snapshot, reasons: &[String]) {
    let health = if reasons.is_empty() {
        "healthy".to_string()
    } else {
        format!("degraded: {}", reasons.join("; "))
    };
    println!("hermes-gateway pid {} ({health})", s.pid);
    println!("  run {} up {} s, {} mode", s.run_id, s.uptime_secs, s.mode);
    let last_ok = s
        .polling
        .last_ok_unix
        .map(format_unix)
        .unwrap_or_else(|| "never".into());
    println!(
        "  polling: {}, last successful getUpdates {last_ok}{}",
        s.polling.state,
        s.polling
            .last_error
            .as_ref()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    );
    println!(
        "  workers: {} idle, {} busy; {} started, {} faults, {} failed starts",
        s.workers.idle,
        s.workers.busy,
        s.workers.started,
        s.workers.faults,
        s.workers.start_failures
    );
    for p in &s.providers {
        let circuit = match (p.circuit, p.open_for_secs) {
            (CircuitState::Open, Some(secs)) => format!("quota circuit open for {secs} s more"),
            (state, _) => format!("quota circuit {state}"),
        };
        println!("  provider {} (model {}): {circuit}", p.name, p.model);
    }
    let failed: Vec<String> = s
        .jobs
        .failed
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "  jobs: {} answered, failed: {}",
        s.jobs.answered,
        if failed.is_empty() {
            "none".into()
        } else {
            failed.join(", ")
        }
    );
    println!("  outbox: {}", describe_outbox(&s.outbox));
    if let Some(record) = &s.previous_shutdown {
        println!(
            "  previous run: {} at {}",
            record.reason,
            format_unix(record.at_unix)
        );
    }
}

/// `3 waiting, oldest 12 s; 1 refused, 0 expired`.
fn describe_outbox(o: &crate::health::OutboxStatus) -> String {
    let waiting = match o.oldest_age_secs {
        Some(age) if o.depth > 0 => format!("{} waiting, oldest {age} s", o.depth),
        _ => "empty".to_string(),
    };
    format!(
        "{waiting}; {} refused by Telegram, {} expired",
        o.refused, o.expired
    )
}

/// The pid is alive and is a hermes-gateway (not a process that reused the pid).
fn is_gateway(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| String::from_utf8_lossy(&cmd).contains("hermes-gateway"))
        .unwrap_or(false)
}
