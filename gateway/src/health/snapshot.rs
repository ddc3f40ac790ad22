//! The gateway's health as it is published: the `status.json` format ([`Snapshot`] and its
//! parts), and the judgement read from it (why the gateway is degraded, the `STATUS=`
//! line). [`super::Health`] records what happens and takes a snapshot; this is what a
//! snapshot says, apart from the recording: `hermes-gateway status`, which only reads the
//! file, meets these types and none of the recording's.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::circuit::CircuitState;
use crate::clock::{format_unix, unix_now};
use crate::sandbox::Report;

/// What the tool sandbox can apply here, and which tools run without it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxStatus {
    pub report: Report,
    /// `[[tools.mcp]]` entries with `sandbox = false`.
    pub unsandboxed: Vec<String>,
}

/// Whether Telegram polling works, as `status.json` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollingState {
    /// Telegram has not answered yet (`getMe` still on its way, or no call made).
    Starting,
    /// The last call to Telegram succeeded; a long poll may be open since.
    Ok,
    /// The last call to Telegram failed.
    Failing,
}

impl fmt::Display for PollingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PollingState::Starting => "starting",
            PollingState::Ok => "ok",
            PollingState::Failing => "failing",
        })
    }
}

/// In the `STATUS=` line, before a reason the gateway is degraded that the line does not
/// otherwise show (Telegram failing and an open quota circuit have words of their own), so
/// `status` can judge health from systemd's copy of the line alone.
pub const DEGRADED_MARK: &str = "degraded: ";

/// Why and when the previous run ended, as it recorded on its way out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShutdownRecord {
    pub run_id: String,
    pub at_unix: u64,
    pub reason: String,
}

/// The published state; also the format of `status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub pid: u32,
    pub run_id: String,
    pub mode: String,
    pub started_at_unix: u64,
    pub uptime_secs: u64,
    pub written_at_unix: u64,
    pub polling: Polling,
    pub workers: Workers,
    pub providers: Vec<ProviderStatus>,
    pub jobs: Jobs,
    pub previous_shutdown: Option<ShutdownRecord>,
    /// None until the probe has answered (and in files of older versions).
    #[serde(default)]
    pub sandbox: Option<SandboxStatus>,
    /// Replies committed and not yet delivered.
    #[serde(default)]
    pub outbox: OutboxStatus,
    #[serde(default)]
    pub strangers: StrangersStatus,
    /// Whether the state store takes writes.
    #[serde(default)]
    pub store: StoreStatus,
    /// Messages stored and not answered yet: waiting for their turn or being answered.
    #[serde(default)]
    pub queue: usize,
    /// Reminders and scheduled tasks, and what became of their runs.
    #[serde(default)]
    pub schedules: SchedulesStatus,
}

/// The schedules (`crate::schedules`): how many are active, and their runs: fired,
/// delivered (Telegram took the answer) and failed (the chat was told why), counted from
/// the store every few seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SchedulesStatus {
    pub active: u64,
    pub runs_fired: u64,
    pub runs_delivered: u64,
    pub runs_failed: u64,
    pub last_failure: Option<String>,
}

/// The state store: failing (since when, with which error) or not (both None).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreStatus {
    /// From its first failed write until a commit succeeds again.
    pub failing_since_unix: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Polling {
    pub state: PollingState,
    pub last_ok_unix: Option<u64>,
    /// When the `getUpdates` Telegram is holding now was sent (it answers at its timeout,
    /// or as soon as a message comes).
    #[serde(default)]
    pub long_poll_open_since_unix: Option<u64>,
    pub failing_since_unix: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workers {
    pub idle: usize,
    pub busy: usize,
    pub started: u64,
    pub faults: u64,
    pub start_failures: u64,
    pub slots_backing_off: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderStatus {
    pub name: String,
    pub model: String,
    pub circuit: CircuitState,
    pub open_for_secs: Option<u64>,
}

/// The outbox: what waits to be sent, and what this run had to give up on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Pieces waiting.
    pub depth: usize,
    /// Age of the oldest piece waiting, in seconds.
    pub oldest_age_secs: Option<u64>,
    /// Pieces Telegram refused for good (bot blocked, chat gone).
    pub refused: u64,
    /// Pieces dropped undelivered after `telegram.outbox_max_age_secs`.
    pub expired: u64,
}

/// People not in `telegram.allowed_users` who wrote in this run: each gets at most one
/// reply an hour, so a crowd of them cannot fill the chats' queues.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StrangersStatus {
    /// Messages answered with the stranger reply.
    pub answered: u64,
    /// Messages left without a reply: their writer had one within the hour.
    pub dropped: u64,
}

/// A reply waiting longer than this makes the gateway degraded: Telegram is not taking
/// what it sends.
const OUTBOX_STUCK_SECS: u64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jobs {
    pub answered: u64,
    pub failed: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Healthy: polling works, the state store takes writes, no worker slot is backing
    /// off, no provider circuit open, no reply stuck.
    pub fn degraded_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(why) = self.store_trouble() {
            reasons.push(why);
        }
        if self.polling.state != PollingState::Ok {
            reasons.push(format!("Telegram polling is {}", self.polling.state));
        }
        if self.workers.slots_backing_off > 0 {
            reasons.push(format!(
                "{} worker slot(s) backing off after start failures",
                self.workers.slots_backing_off
            ));
        }
        for p in &self.providers {
            if p.circuit != CircuitState::Closed {
                reasons.push(format!("provider {} quota circuit {}", p.name, p.circuit));
            }
        }
        if let Some(age) = self
            .outbox
            .oldest_age_secs
            .filter(|age| *age >= OUTBOX_STUCK_SECS)
        {
            reasons.push(format!(
                "{} repl{} waiting to be sent, the oldest for {age} s",
                self.outbox.depth,
                if self.outbox.depth == 1 { "y" } else { "ies" }
            ));
        }
        reasons
    }

    /// Why the store is failing, in words, when it is.
    fn store_trouble(&self) -> Option<String> {
        let since = self.store.failing_since_unix?;
        Some(format!(
            "the state store cannot save since {}: {}",
            format_unix(since),
            self.store.last_error.as_deref().unwrap_or("unknown error")
        ))
    }

    /// One line for systemd's `STATUS=`.
    pub fn status_line(&self) -> String {
        let polling = match self.polling.state {
            PollingState::Ok => "polling ok".to_string(),
            PollingState::Starting => "polling: starting".to_string(),
            PollingState::Failing => format!(
                "Telegram unreachable since {}",
                self.polling
                    .failing_since_unix
                    .map(format_unix)
                    .unwrap_or_else(|| "?".into())
            ),
        };
        let mut line = format!(
            "{polling}; workers {} idle {} busy; {} answered, {} failed",
            self.workers.idle,
            self.workers.busy,
            self.jobs.answered,
            self.jobs.failed.values().sum::<u64>()
        );
        if let Some(why) = self.store_trouble() {
            line.push_str(&format!("; {DEGRADED_MARK}{why}"));
        }
        if self.workers.slots_backing_off > 0 {
            line.push_str(&format!(
                "; {DEGRADED_MARK}{} worker slot(s) backing off",
                self.workers.slots_backing_off
            ));
        }
        for p in &self.providers {
            if let (CircuitState::Open, Some(secs)) = (p.circuit, p.open_for_secs) {
                line.push_str(&format!(
                    "; provider {} quota-open until {}",
                    p.name,
                    format_unix(unix_now() + secs)
                ));
            }
        }
        line
    }
}
