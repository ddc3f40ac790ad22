//! `hermes-gateway status`: finds the running gateway's published state and says what it
//! shows, exiting like an LSB init script: 0 healthy, 1 degraded, 3 not running.
//!
//! `status` must find the running gateway wherever its state is, or it tells an operator
//! the bot is down while it is up. Without `state.dir` in the configuration, the gateway
//! under systemd keeps its state in the unit's `StateDirectory=` (`$STATE_DIRECTORY`,
//! which the operator's shell does not have), so `status` looks there too
//! ([`state_candidates`]); and where that state is not readable (a `DynamicUser=` unit's
//! private state, for a user who is not root) it asks systemd for the unit's main pid and
//! status line ([`super::unit`]) rather than report "not running". Everyone's usage (today and this
//! month) is read from the store beside it (`usage::report`).

use std::path::{Path, PathBuf};

use hermes_config::{Config, EXIT_CONFIG};

use crate::circuit::CircuitState;
use crate::clock::format_unix;
use crate::health::Snapshot;
use crate::setup;
use crate::usage;

use super::unit::UnitState;
use super::{STATUS_FILE, previous_shutdown};

/// Exit statuses of `hermes-gateway status` (LSB).
pub(super) const HEALTHY: i32 = 0;
pub(super) const DEGRADED: i32 = 1;
pub(super) const NOT_RUNNING: i32 = 3;

/// The configuration `status` reads when given none: `$HERMES_CONFIG` (clap reads it into
/// `config`), else the one the installed unit runs with.
pub fn default_config(user: bool) -> PathBuf {
    if user {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from(".config"));
        base.join("hermes/hermes.toml")
    } else {
        PathBuf::from(crate::service::SYSTEM_CONFIG)
    }
}

/// Where the running gateway's state may be, in the order `status` looks: the
/// configuration's `state.dir` alone when it has one; else `$STATE_DIRECTORY` alone when
/// set (`status` run from the unit itself); else the unit's state directory (system:
/// `/var/lib/hermes`; user: `$XDG_CONFIG_HOME/hermes` under systemd 252,
/// `$XDG_STATE_HOME/hermes` under newer ones), then `./state` (a gateway run by hand).
pub fn state_candidates(
    configured: Option<&Path>,
    user: bool,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<PathBuf> {
    if let Some(dir) = configured {
        return vec![dir.to_path_buf()];
    }
    if let Some(dir) = var("STATE_DIRECTORY") {
        return vec![PathBuf::from(setup::first_path(&dir.to_string_lossy()))];
    }
    let mut dirs = Vec::new();
    if user {
        let home = var("HOME").map(PathBuf::from);
        let config = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".config")));
        let state = var("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".local/state")));
        dirs.extend(
            [config, state]
                .into_iter()
                .flatten()
                .map(|d| d.join("hermes")),
        );
    } else {
        dirs.push(PathBuf::from(crate::service::SYSTEM_STATE));
    }
    dirs.push(PathBuf::from("state"));
    dirs
}

pub fn status_command(config_path: Option<&Path>, user: bool, json: bool) -> i32 {
    let path = config_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_config(user));
    let target = Target {
        config: path,
        unit: "hermes-gateway".to_string(),
        instance: None,
    };
    show(&target, user, json)
}

/// Which gateway `status` reports on: its configuration, its unit, and its instance name
/// when it is one of several bots (`hermes-gateway@NAME`).
pub struct Target {
    pub config: PathBuf,
    pub unit: String,
    pub instance: Option<String>,
}

impl Target {
    /// Instance `name` of the template unit.
    pub fn instance(user: bool, name: &str) -> Target {
        Target {
            config: crate::instances::config_path(user, name),
            unit: crate::instances::unit_name(name),
            instance: Some(name.to_string()),
        }
    }

    fn state_candidates(&self, configured: Option<&Path>, user: bool) -> Vec<PathBuf> {
        match (&self.instance, configured) {
            (Some(_), Some(dir)) => vec![dir.to_path_buf()],
            (Some(name), None) => {
                crate::instances::state_candidates(user, name, |n| std::env::var_os(n))
            }
            (None, configured) => state_candidates(configured, user, |n| std::env::var_os(n)),
        }
    }
}

/// What `status` found of a gateway.
pub enum Found {
    /// Its published state, from a running gateway, and everyone's usage when its store
    /// could be read.
    Running(Box<Snapshot>, Option<Box<usage::report::Report>>),
    /// Running as systemd says, its state unreadable to this user (in these directories).
    Systemd(UnitState, Vec<PathBuf>),
    /// Not running: where its state was looked for, systemd's word on the unit, and how
    /// the last run ended.
    NotRunning {
        looked: Vec<PathBuf>,
        unit: Option<UnitState>,
        last: Option<crate::health::ShutdownRecord>,
    },
}

/// Finds `target`'s gateway, or says why not (an invalid configuration is an error).
pub fn locate(target: &Target, user: bool) -> Result<Found, String> {
    // A configuration this user cannot read (root's, 0600) still leaves the default places
    // and systemd to ask; an invalid one is an error.
    let (configured, budgets) = match Config::load(&target.config) {
        Ok(config) => (config.state.dir, config.budgets),
        Err(e @ hermes_config::ConfigError::Invalid { .. }) => return Err(e.to_string()),
        Err(e) => {
            if target.instance.is_none() {
                eprintln!("{e}; looking in the unit's state directory");
            }
            (None, hermes_config::BudgetsConfig::default())
        }
    };
    let candidates = target.state_candidates(configured.as_deref(), user);
    let mut unreadable = Vec::new();
    for dir in &candidates {
        match std::fs::read_to_string(dir.join(STATUS_FILE)) {
            Ok(text) => {
                if let Ok(snapshot) = serde_json::from_str::<Snapshot>(&text)
                    && is_gateway(snapshot.pid)
                {
                    let usage = usage::report::for_status(dir, &budgets.zone, &budgets.time_zone);
                    return Ok(Found::Running(Box::new(snapshot), usage.map(Box::new)));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                unreadable.push(dir.clone())
            }
            Err(_) => {}
        }
    }
    let unit = UnitState::ask(user, &target.unit);
    if let Some(unit) = unit.as_ref()
        && unit.running()
    {
        return Ok(Found::Systemd(unit.clone(), unreadable));
    }
    Ok(Found::NotRunning {
        last: candidates.iter().find_map(|dir| previous_shutdown(dir)),
        looked: candidates,
        unit: unit.filter(|u| u.loaded()),
    })
}

/// `status` of one gateway: its whole report.
pub fn show(target: &Target, user: bool, json: bool) -> i32 {
    let found = match locate(target, user) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    match found {
        Found::Running(snapshot, usage) => report(&snapshot, usage.as_deref(), json),
        Found::Systemd(unit, unreadable) => unit.report(&unreadable),
        Found::NotRunning { looked, unit, last } => {
            let looked: Vec<String> = looked.iter().map(|d| d.display().to_string()).collect();
            let what = match &target.instance {
                Some(name) => format!("hermes-gateway instance {name}"),
                None => "hermes-gateway".to_string(),
            };
            println!(
                "{what} is not running (state looked for in: {})",
                looked.join(", ")
            );
            if let Some(unit) = unit {
                println!("  systemd: {}", unit.summary());
            }
            match last {
                Some(record) => println!(
                    "last shutdown: {} at {} (run {})",
                    record.reason,
                    format_unix(record.at_unix),
                    record.run_id
                ),
                None => println!("no previous run recorded"),
            }
            NOT_RUNNING
        }
    }
}

/// The exit status of a gateway whose published state is `snapshot`.
pub fn exit_of(snapshot: &Snapshot) -> i32 {
    if snapshot.degraded_reasons().is_empty() {
        HEALTHY
    } else {
        DEGRADED
    }
}

/// Prints `snapshot` and, when the store could be read, everyone's `usage` (under the
/// `usage` key of the JSON).
fn report(snapshot: &Snapshot, usage: Option<&usage::report::Report>, json: bool) -> i32 {
    let reasons = snapshot.degraded_reasons();
    if json {
        let mut value = serde_json::to_value(snapshot).unwrap_or_default();
        if let (Some(object), Some(usage)) = (value.as_object_mut(), usage) {
            object.insert(
                "usage".into(),
                serde_json::to_value(usage).unwrap_or_default(),
            );
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print_status(snapshot, &reasons);
        if let Some(usage) = usage {
            print_usage(usage);
        }
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
    let when = match (s.polling.long_poll_open_since_unix, s.polling.last_ok_unix) {
        (Some(open), _) => format!("long poll open since {}", format_unix(open)),
        (None, Some(ok)) => format!("last successful call {}", format_unix(ok)),
        (None, None) => "no answer from Telegram yet".into(),
    };
    println!(
        "  polling: {}, {when}{}",
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
    println!(
        "  strangers: {} answered, {} dropped (one reply per stranger an hour)",
        s.strangers.answered, s.strangers.dropped
    );
    let runs = &s.schedules;
    println!(
        "  schedules: {} active; runs {} fired, {} delivered, {} failed{}",
        runs.active,
        runs.runs_fired,
        runs.runs_delivered,
        runs.runs_failed,
        runs.last_failure
            .as_deref()
            .map(|why| format!(" (last: {why})"))
            .unwrap_or_default()
    );
    if let Some(record) = &s.previous_shutdown {
        println!(
            "  previous run: {} at {}",
            record.reason,
            format_unix(record.at_unix)
        );
    }
    match &s.sandbox {
        Some(sandbox) => {
            println!("  {}", sandbox.report.summary());
            for line in sandbox.report.warnings() {
                println!("    {line}");
            }
            if !sandbox.unsandboxed.is_empty() {
                println!(
                    "    without the sandbox (sandbox = false): {}",
                    sandbox.unsandboxed.join(", ")
                );
            }
        }
        None => println!("  tool sandbox: not probed yet"),
    }
}

/// Everyone's usage today and this month, and who used the most today.
fn print_usage(usage: &usage::report::Report) {
    use crate::replies::usage::describe;
    println!(
        "  usage (days in {}): today {}; this month {}",
        usage.time_zone,
        describe(&usage.everyone.today),
        describe(&usage.everyone.this_month)
    );
    let mut today: Vec<_> = usage
        .users
        .iter()
        .filter(|u| u.usage.today.calls > 0)
        .collect();
    today.sort_by_key(|u| std::cmp::Reverse(u.usage.today.tokens()));
    for u in today.iter().take(5) {
        println!("    user {} today: {}", u.user_id, describe(&u.usage.today));
    }
    if today.len() > 5 {
        println!(
            "    … and {} more users today (hermes-gateway usage lists everyone)",
            today.len() - 5
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_state_dir_status_looks_where_the_unit_keeps_state() {
        let none = |_: &str| None;
        assert_eq!(
            state_candidates(Some(Path::new("/srv/s")), false, none),
            [PathBuf::from("/srv/s")]
        );
        assert_eq!(
            state_candidates(None, false, none),
            [PathBuf::from("/var/lib/hermes"), PathBuf::from("state")]
        );
        let unit = |n: &str| (n == "STATE_DIRECTORY").then(|| "/var/lib/hermes:/x".into());
        assert_eq!(
            state_candidates(None, false, unit),
            [PathBuf::from("/var/lib/hermes")]
        );
        let home = |n: &str| (n == "HOME").then(|| "/home/ann".into());
        assert_eq!(
            state_candidates(None, true, home),
            [
                PathBuf::from("/home/ann/.config/hermes"),
                PathBuf::from("/home/ann/.local/state/hermes"),
                PathBuf::from("state")
            ]
        );
    }
}
