//! Everyone's usage, for the operator: `hermes-gateway usage` (text or `--json`), and the
//! usage lines `hermes-gateway status` adds. Both read the store of the running gateway
//! read-only ([`UsageReader`]), as the operator's commands find it (the configuration's
//! `state.dir`, else where the unit keeps its state: `status::report::state_candidates`),
//! so they work whether the gateway runs or not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hermes_config::{Config, EXIT_CONFIG};
use jiff::tz::TimeZone;
use serde::Serialize;

use super::calendar;
use crate::clock::unix_now;
use crate::replies::usage::brief;
use crate::status::report::{default_config, state_candidates};
use crate::store::{Days, Totals, UsageReader};

/// Today, this month and all the time, of one user, one provider, or everyone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub today: Totals,
    pub this_month: Totals,
    pub total: Totals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserUsage {
    pub user_id: i64,
    #[serde(flatten)]
    pub usage: Summary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderUsage {
    pub provider: String,
    #[serde(flatten)]
    pub usage: Summary,
}

/// Everyone's usage as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The zone days and months are counted in (`budgets.time_zone`).
    pub time_zone: String,
    /// Today there, `YYYY-MM-DD`.
    pub today: String,
    pub everyone: Summary,
    pub users: Vec<UserUsage>,
    pub providers: Vec<ProviderUsage>,
}

impl Report {
    /// Reads the report from `reader`, today being `now`'s day in `zone`.
    pub fn read(
        reader: &UsageReader,
        zone: &TimeZone,
        zone_name: &str,
        now: u64,
    ) -> rusqlite::Result<Report> {
        let periods = calendar::periods(zone, now);
        let spans = [periods.today(), periods.this_month(), Days::ALL];
        let mut everyone = Summary::default();
        let mut users: BTreeMap<i64, Summary> = BTreeMap::new();
        let mut providers: BTreeMap<String, Summary> = BTreeMap::new();
        for (i, days) in spans.into_iter().enumerate() {
            *slot(&mut everyone, i) = reader.sum(None, days)?;
            for (user, totals) in reader.by_user(days)? {
                *slot(users.entry(user).or_default(), i) = totals;
            }
            for (provider, totals) in reader.by_provider(days)? {
                *slot(providers.entry(provider).or_default(), i) = totals;
            }
        }
        Ok(Report {
            time_zone: zone_name.to_string(),
            today: periods.day,
            everyone,
            users: users
                .into_iter()
                .map(|(user_id, usage)| UserUsage { user_id, usage })
                .collect(),
            providers: providers
                .into_iter()
                .map(|(provider, usage)| ProviderUsage { provider, usage })
                .collect(),
        })
    }

    /// The lines of `hermes-gateway usage`: a table of everyone, each user and each
    /// provider by today, this month and in total, a cell being `tokens, cost`.
    pub fn lines(&self) -> Vec<String> {
        let mut rows: Vec<[String; 4]> = vec![[
            String::new(),
            "today".into(),
            "this month".into(),
            "in total".into(),
        ]];
        let row = |name: String, s: &Summary| {
            [name, brief(&s.today), brief(&s.this_month), brief(&s.total)]
        };
        rows.push(row("everyone".into(), &self.everyone));
        rows.extend(
            self.users
                .iter()
                .map(|u| row(format!("user {}", u.user_id), &u.usage)),
        );
        rows.extend(
            self.providers
                .iter()
                .map(|p| row(format!("provider {}", p.provider), &p.usage)),
        );
        let widths: Vec<usize> = (0..4)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut lines = vec![format!(
            "usage (days in {}; today is {})",
            self.time_zone, self.today
        )];
        lines.extend(rows.iter().map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("   ").trim_end().to_string()
        }));
        lines.push(
            "(tokens are prompt + completion; --json has the cached tokens and the calls)".into(),
        );
        lines
    }
}

fn slot(summary: &mut Summary, i: usize) -> &mut Totals {
    match i {
        0 => &mut summary.today,
        1 => &mut summary.this_month,
        _ => &mut summary.total,
    }
}

/// The report of the store in `dir`, for `status`: `None` when there is none to read (no
/// store, one from before usage was kept, or one this user may not read; the last is
/// logged on stderr).
pub fn for_status(dir: &Path, zone: &TimeZone, zone_name: &str) -> Option<Report> {
    let reader = match UsageReader::open(dir) {
        Ok(reader) => reader?,
        Err(e) => {
            eprintln!("usage: {e}");
            return None;
        }
    };
    Report::read(&reader, zone, zone_name, unix_now())
        .map_err(|e| eprintln!("usage: cannot read it: {e}"))
        .ok()
}

/// `hermes-gateway usage`: everyone's usage from the store the configuration names (or
/// the unit's). Exit 0 with a report, 1 when there is no store to read, 78 for an
/// invalid configuration.
pub fn usage_command(config_path: Option<&Path>, user: bool, json: bool) -> i32 {
    let path = config_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_config(user));
    let (dir, budgets) = match Config::load(&path) {
        Ok(config) => (config.state.dir, config.budgets),
        Err(e @ hermes_config::ConfigError::Invalid { .. }) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
        Err(e) => {
            eprintln!("{e}; looking in the unit's state directory, days in UTC");
            (None, hermes_config::BudgetsConfig::default())
        }
    };
    let candidates = state_candidates(dir.as_deref(), user, |n| std::env::var_os(n));
    let mut looked: Vec<PathBuf> = Vec::new();
    for dir in &candidates {
        let reader = match UsageReader::open(dir) {
            Ok(Some(reader)) => reader,
            Ok(None) => {
                looked.push(dir.clone());
                continue;
            }
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        };
        let report = match Report::read(&reader, &budgets.zone, &budgets.time_zone, unix_now()) {
            Ok(report) => report,
            Err(e) => {
                eprintln!("cannot read the usage in {}: {e}", dir.display());
                return 1;
            }
        };
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            for line in report.lines() {
                println!("{line}");
            }
        }
        return 0;
    }
    let looked: Vec<String> = looked.iter().map(|d| d.display().to_string()).collect();
    eprintln!(
        "no usage recorded: no state store with usage in {}",
        looked.join(", ")
    );
    1
}
