//! `hermes-gateway status` on a host with several bots: one line per instance (its name,
//! state, pid, uptime, queue and outbox depth), or `--json`, found each the way `status
//! NAME` finds one ([`super::report::locate`]). An operator with five bots reads one
//! screen, not five reports; the exit status is the worst of them (0 all healthy, 1 one
//! degraded, 3 one not running), so a script need not parse the lines.

use serde::Serialize;

use super::report::{DEGRADED, Found, HEALTHY, NOT_RUNNING, Target, exit_of, locate};
use crate::health::Snapshot;

/// One instance's line.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub unit: String,
    /// `healthy`, `degraded`, `not running`, or `invalid configuration`.
    pub state: String,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    pub queue: Option<usize>,
    pub outbox_depth: Option<usize>,
    /// Why it is degraded, systemd's word, or how its last run ended.
    pub note: String,
    /// The full published status, when this user could read it.
    pub status: Option<Snapshot>,
    #[serde(skip)]
    exit: i32,
}

fn row(user: bool, name: &str) -> Row {
    let target = Target::instance(user, name);
    let mut row = Row {
        name: name.to_string(),
        unit: target.unit.clone(),
        state: String::new(),
        pid: None,
        uptime_secs: None,
        queue: None,
        outbox_depth: None,
        note: String::new(),
        status: None,
        exit: NOT_RUNNING,
    };
    match locate(&target, user) {
        Err(e) => {
            row.state = "invalid configuration".into();
            row.note = e.lines().next().unwrap_or_default().to_string();
            row.exit = hermes_config::EXIT_CONFIG;
        }
        Ok(Found::Running(snapshot, _)) => {
            let reasons = snapshot.degraded_reasons();
            row.exit = exit_of(&snapshot);
            row.state = if row.exit == HEALTHY {
                "healthy".into()
            } else {
                "degraded".into()
            };
            row.note = reasons.join("; ");
            row.pid = Some(snapshot.pid);
            row.uptime_secs = Some(snapshot.uptime_secs);
            row.queue = Some(snapshot.queue);
            row.outbox_depth = Some(snapshot.outbox.depth);
            row.status = Some(*snapshot);
        }
        Ok(Found::Systemd(unit, _)) => {
            let healthy = unit.healthy();
            row.exit = if healthy { HEALTHY } else { DEGRADED };
            row.state = if healthy { "healthy" } else { "degraded" }.into();
            row.pid = Some(unit.main_pid);
            row.note = "as systemd reports it (run as root for the queue and outbox)".into();
        }
        Ok(Found::NotRunning { unit, last, .. }) => {
            row.state = "not running".into();
            row.note = match (unit, last) {
                (Some(unit), _) => format!("systemd: {}", unit.summary()),
                (None, Some(record)) => format!("last run: {}", record.reason),
                (None, None) => "never ran".into(),
            };
        }
    }
    row
}

fn cell<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Lists every instance on the host; the exit status is the worst of theirs.
pub fn list(names: &[String], user: bool, json: bool) -> i32 {
    let rows: Vec<Row> = names.iter().map(|name| row(user, name)).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        let width = names.iter().map(String::len).max().unwrap_or(0).max(4);
        println!(
            "{:<width$}  {:<11}  {:>7}  {:>9}  {:>5}  {:>6}  note",
            "bot", "state", "pid", "uptime", "queue", "outbox"
        );
        for r in &rows {
            println!(
                "{:<width$}  {:<11}  {:>7}  {:>9}  {:>5}  {:>6}  {}",
                r.name,
                r.state,
                cell(r.pid),
                cell(r.uptime_secs.map(|s| format!("{s} s"))),
                cell(r.queue),
                cell(r.outbox_depth),
                r.note
            );
        }
    }
    rows.iter()
        .map(|r| r.exit)
        .max_by_key(|code| match *code {
            HEALTHY => 0,
            DEGRADED => 1,
            NOT_RUNNING => 2,
            _ => 3,
        })
        .unwrap_or(NOT_RUNNING)
}
