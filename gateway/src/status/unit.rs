//! What systemd says of a gateway's unit (`systemctl show`), for `status` when the
//! gateway's own published state cannot be read: a `DynamicUser=` unit's private state,
//! for a user who is not root.

use std::path::PathBuf;

use crate::health::DEGRADED_MARK;

use super::report::{DEGRADED, HEALTHY};

/// What systemd says of the unit (`systemctl show`), for when the state cannot be read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnitState {
    load_state: String,
    active_state: String,
    sub_state: String,
    result: String,
    pub main_pid: u32,
    status_text: String,
    n_restarts: String,
    exec_main_status: String,
}

impl UnitState {
    const PROPERTIES: &str =
        "LoadState,ActiveState,SubState,Result,MainPID,StatusText,NRestarts,ExecMainStatus";

    pub(super) fn ask(user: bool, unit: &str) -> Option<UnitState> {
        let mut command = std::process::Command::new("systemctl");
        if user {
            command.arg("--user");
        }
        let output = command
            .args(["show", unit, "-p", Self::PROPERTIES])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| UnitState::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    fn parse(text: &str) -> UnitState {
        let mut unit = UnitState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.to_string();
            match key {
                "LoadState" => unit.load_state = value,
                "ActiveState" => unit.active_state = value,
                "SubState" => unit.sub_state = value,
                "Result" => unit.result = value,
                "MainPID" => unit.main_pid = value.parse().unwrap_or(0),
                "StatusText" => unit.status_text = value,
                "NRestarts" => unit.n_restarts = value,
                "ExecMainStatus" => unit.exec_main_status = value,
                _ => {}
            }
        }
        unit
    }

    pub(super) fn loaded(&self) -> bool {
        self.load_state == "loaded"
    }

    pub(super) fn running(&self) -> bool {
        self.active_state == "active" && self.main_pid != 0
    }

    pub fn summary(&self) -> String {
        format!(
            "ActiveState={} SubState={} Result={} ExecMainStatus={} NRestarts={}",
            self.active_state, self.sub_state, self.result, self.exec_main_status, self.n_restarts
        )
    }

    /// The gateway's own status line says whether it is healthy: `polling ok` first, and
    /// nothing it adds when degraded (see
    /// [`Snapshot::status_line`](crate::health::Snapshot::status_line)).
    pub fn healthy(&self) -> bool {
        self.status_text.starts_with("polling ok")
            && !self.status_text.contains("quota-open")
            && !self.status_text.contains(DEGRADED_MARK)
    }

    pub(super) fn report(&self, unreadable: &[PathBuf]) -> i32 {
        let health = if self.healthy() {
            "healthy".to_string()
        } else if self.status_text.is_empty() {
            "degraded: no status line yet".to_string()
        } else {
            format!("degraded: {}", self.status_text)
        };
        println!(
            "hermes-gateway pid {} ({health}), as systemd reports it",
            self.main_pid
        );
        println!("  status: {}", self.status_text);
        println!("  restarts: {}", self.n_restarts);
        for dir in unreadable {
            println!(
                "  (the full report is in {}, which this user cannot read: run as root)",
                dir.display()
            );
        }
        if self.healthy() { HEALTHY } else { DEGRADED }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_is_asked_when_the_state_is_private() {
        let unit = UnitState::parse(
            "LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\nMainPID=4242\nStatusText=polling ok; workers 2 idle 0 busy; 0 answered, 0 failed\nNRestarts=0\nExecMainStatus=0\n",
        );
        assert!(unit.running());
        assert!(unit.healthy());
        assert_eq!(unit.main_pid, 4242);
        let failing = UnitState {
            status_text: "Telegram unreachable since 10:00:00 UTC; workers 2 idle 0 busy".into(),
            ..UnitState::parse("ActiveState=active\nMainPID=1\n")
        };
        assert!(failing.running() && !failing.healthy());
        let backing_off = UnitState {
            status_text: format!(
                "polling ok; workers 0 idle 0 busy; {DEGRADED_MARK}1 worker slot(s) backing off"
            ),
            ..UnitState::parse("ActiveState=active\nMainPID=1\n")
        };
        assert!(!backing_off.healthy());
        assert!(!UnitState::parse("ActiveState=failed\nMainPID=0\n").running());
    }
}
