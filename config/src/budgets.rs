//! `[budgets]`: caps on what the bot may spend at the provider, per user and for everyone
//! together, by day and by month, in tokens or in cost. The gateway checks them before a
//! job starts (a user over a cap is told so at once; no worker starts and no provider is
//! called), and the days and months they count begin at midnight in `time_zone`.
//!
//! Costs are in the currency the provider bills in (the cost providers report, such as
//! OpenRouter's, is in US dollars), kept as whole millionths so sums stay exact. What a
//! call cost comes from the provider, or from the prices of its `[[providers]]` entry
//! (`input_price_per_mtok` and its siblings, read with [`Doc::money`]).

use jiff::tz::TimeZone;

use crate::report::Problem;
use crate::section::{Doc, Section, Table};

/// The most a price or a cost cap may be, in currency units: far above any real one, low
/// enough that its millionths fit every sum.
const MAX_MONEY: f64 = 1e9;

#[derive(Debug, Clone)]
pub struct BudgetsConfig {
    /// The IANA name days and months are counted in (`UTC` by default).
    pub time_zone: String,
    pub zone: TimeZone,
    /// What each user may use (`[budgets.per_user]`).
    pub per_user: Caps,
    /// What all users together may use (`[budgets.global]`).
    pub global: Caps,
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        BudgetsConfig {
            time_zone: "UTC".into(),
            zone: TimeZone::UTC,
            per_user: Caps::default(),
            global: Caps::default(),
        }
    }
}

impl BudgetsConfig {
    /// No cap is set anywhere: nothing to check before a job.
    pub fn is_unlimited(&self) -> bool {
        self.per_user.is_empty() && self.global.is_empty()
    }
}

/// The caps of one scope; `None`: no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Prompt and completion tokens in a day.
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
    /// Cost in a day, in millionths of the currency unit.
    pub daily_cost_micros: Option<u64>,
    pub monthly_cost_micros: Option<u64>,
}

impl Caps {
    pub fn is_empty(&self) -> bool {
        *self == Caps::default()
    }
}

impl Doc<'_> {
    pub(crate) fn budgets(&mut self, table: Option<&Table>) -> BudgetsConfig {
        let mut s = Section::new("budgets", table.cloned());
        let line = s.raw_line("time_zone", self);
        let time_zone = s.take_or("time_zone", "UTC".to_string(), self);
        // UTC, the default, needs no look through the time zone database (which reads
        // every directory of the system's zoneinfo, on the way to the first poll).
        let zone = match if time_zone == "UTC" {
            Ok(TimeZone::UTC)
        } else {
            TimeZone::get(&time_zone)
        } {
            Ok(zone) => zone,
            Err(e) => {
                self.problems.push(Problem {
                    line,
                    key: "budgets.time_zone".into(),
                    message: format!(
                        "{time_zone:?} is not a time zone this machine knows ({e}); use an IANA name such as \"Europe/Berlin\" or \"UTC\""
                    ),
                });
                TimeZone::UTC
            }
        };
        let per_user = s.table("per_user", self);
        let per_user = self.caps("budgets.per_user", per_user);
        let global = s.table("global", self);
        let global = self.caps("budgets.global", global);
        s.finish(self);
        BudgetsConfig {
            time_zone,
            zone,
            per_user,
            global,
        }
    }

    fn caps(&mut self, path: &str, table: Option<Table>) -> Caps {
        let mut s = Section::new(path, table);
        let positive = |value: Option<u64>, s: &Section, key: &str, doc: &mut Doc| match value {
            Some(0) => {
                doc.problems.push(Problem {
                    line: s.raw_line(key, doc),
                    key: s.key_path(key),
                    message: "0 would refuse every message; leave the key out for no cap".into(),
                });
                None
            }
            other => other,
        };
        let daily_tokens = s.take("daily_tokens", self);
        let daily_tokens = positive(daily_tokens, &s, "daily_tokens", self);
        let monthly_tokens = s.take("monthly_tokens", self);
        let monthly_tokens = positive(monthly_tokens, &s, "monthly_tokens", self);
        let daily_cost = self.money(&mut s, "daily_cost");
        let daily_cost_micros = positive(daily_cost, &s, "daily_cost", self);
        let monthly_cost = self.money(&mut s, "monthly_cost");
        let monthly_cost_micros = positive(monthly_cost, &s, "monthly_cost", self);
        s.finish(self);
        Caps {
            daily_tokens,
            monthly_tokens,
            daily_cost_micros,
            monthly_cost_micros,
        }
    }

    /// An amount of money (`1.5`, `20`) as millionths of the currency unit; absent: None.
    pub(crate) fn money(&mut self, s: &mut Section, key: &'static str) -> Option<u64> {
        let line = s.raw_line(key, self);
        let value: f64 = s.take(key, self)?;
        if !(0.0..=MAX_MONEY).contains(&value) {
            self.problems.push(Problem {
                line,
                key: s.key_path(key),
                message: format!("{value} is out of range (0..={MAX_MONEY})"),
            });
            return None;
        }
        // In range, so the product is finite and fits.
        Some((value * 1e6).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{MINIMAL, parse, problem_lines};

    #[test]
    fn budgets_default_to_none_in_utc() {
        let config = parse(MINIMAL).unwrap();
        assert!(config.budgets.is_unlimited());
        assert_eq!(config.budgets.time_zone, "UTC");
    }

    /// The example's `[budgets]` and prices, uncommented, are valid as they stand.
    #[test]
    fn the_examples_budgets_and_prices_are_valid() {
        let example = include_str!("../../deploy/hermes.example.toml");
        let uncommented: String = example
            .lines()
            .map(|line| {
                let budget = [
                    "[budgets",
                    "time_zone",
                    "daily_",
                    "monthly_",
                    "input_price",
                    "output_price",
                    "cached_price",
                ]
                .iter()
                .any(|key| line.starts_with(&format!("# {key}")));
                if budget { &line[2..] } else { line }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = parse(&uncommented).unwrap_or_else(|p| panic!("{p:#?}"));
        let b = &config.budgets;
        assert_eq!(b.per_user.daily_tokens, Some(200_000));
        assert_eq!(b.global.daily_cost_micros, Some(10_000_000));
        let prices = config.providers[0].prices.expect("prices");
        assert_eq!(
            (
                prices.input_micros_per_mtok,
                prices.output_micros_per_mtok,
                prices.cached_micros_per_mtok
            ),
            (150_000, 600_000, 75_000)
        );
        let half = MINIMAL.replace("model = \"m\"", "model = \"m\"\ninput_price_per_mtok = 1");
        assert!(
            problem_lines(&half)
                .iter()
                .any(|l| l.contains("providers[0].output_price_per_mtok: missing")),
            "{:#?}",
            problem_lines(&half)
        );
    }

    #[test]
    fn caps_and_the_time_zone_are_read_and_checked() {
        let text = format!(
            "{MINIMAL}\n[budgets]\ntime_zone = \"Europe/Berlin\"\n[budgets.per_user]\ndaily_tokens = 1000\nmonthly_cost = 2.5\n[budgets.global]\ndaily_cost = 10\n"
        );
        let b = parse(&text).unwrap_or_else(|p| panic!("{p:#?}")).budgets;
        assert_eq!(b.zone.iana_name(), Some("Europe/Berlin"));
        assert_eq!(b.per_user.daily_tokens, Some(1000));
        assert_eq!(b.per_user.monthly_cost_micros, Some(2_500_000));
        assert_eq!(b.per_user.monthly_tokens, None);
        assert_eq!(b.global.daily_cost_micros, Some(10_000_000));
        assert!(!b.is_unlimited());

        let bad = format!(
            "{MINIMAL}\n[budgets]\ntime_zone = \"Mars/Olympus\"\n[budgets.per_user]\ndaily_tokens = 0\ndaily_cost = -1\nweekly_tokens = 5\n"
        );
        let lines = problem_lines(&bad);
        for expected in [
            "budgets.time_zone",
            "budgets.per_user.daily_tokens",
            "budgets.per_user.daily_cost",
            "budgets.per_user.weekly_tokens: unknown key",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(expected)),
                "{expected}: {lines:#?}"
            );
        }
    }
}
