//! The budgets, checked before a job starts: what the user used today and this month, and
//! what everyone did, against `[budgets]`. A cap reached is a [`Failure::OverBudget`],
//! answered at once, before any file is fetched, worker started or provider called (the
//! same place the quota circuit refuses a job, `chats::prepare`). Used is compared with
//! the cap as it stands before the job: a job may cross a cap, and then the next is
//! refused.
//!
//! A store that cannot be read lets the job through (with a warning): a budget is a brake
//! on spending, and a failing disk is already the status's business; refusing everyone
//! for it would make a passing fault a silent bot.

use hermes_config::{BudgetsConfig, Caps};
use hermes_protocol::{BudgetPeriod, Failure, format_money};

use super::calendar::{self, Periods};
use crate::store::{Days, Store, Totals};

/// Ok when `user` may start a job at `now` (Unix seconds); else the cap that stops them.
/// Of several caps reached, the one that lasts longest is named: waiting for the others
/// would not help.
pub fn check(store: &Store, budgets: &BudgetsConfig, user: u64, now: u64) -> Result<(), Failure> {
    if budgets.is_unlimited() {
        return Ok(());
    }
    let periods = calendar::periods(&budgets.zone, now);
    let mut reached: Option<Failure> = None;
    for (everyone, caps) in [(false, &budgets.per_user), (true, &budgets.global)] {
        let who = (!everyone).then_some(user);
        for (period, tokens, cost) in limits(caps) {
            let (days, left) = span(&periods, period);
            let used = match store.usage_sum(who, days) {
                Ok(used) => used,
                Err(e) => {
                    tracing::warn!(
                        user_id = user,
                        "cannot read the usage for the budgets, letting the job through: {e}"
                    );
                    return Ok(());
                }
            };
            let Some(cap) = over(&used, tokens, cost) else {
                continue;
            };
            let longer = match &reached {
                Some(Failure::OverBudget { resets_in_secs, .. }) => left > *resets_in_secs,
                _ => true,
            };
            if longer {
                reached = Some(Failure::OverBudget {
                    everyone,
                    period,
                    cap,
                    resets_in_secs: left,
                    time_zone: budgets.time_zone.clone(),
                });
            }
        }
    }
    match reached {
        None => Ok(()),
        Some(failure) => {
            tracing::info!(user_id = user, "refused without a worker: {failure}");
            Err(failure)
        }
    }
}

/// The budgets in one line, for `check-config`: `per user: daily 200000 tokens, monthly
/// $20.00; everyone: daily $10.00 (days in Europe/Berlin)`, or `none`.
pub fn describe(budgets: &BudgetsConfig) -> String {
    if budgets.is_unlimited() {
        return "none".into();
    }
    let scopes: Vec<String> = [
        ("per user", &budgets.per_user),
        ("everyone", &budgets.global),
    ]
    .into_iter()
    .filter(|(_, caps)| !caps.is_empty())
    .map(|(name, caps)| {
        let caps: Vec<String> = limits(caps)
            .flat_map(|(period, tokens, cost)| {
                let name = period.as_str();
                tokens
                    .map(|t| format!("{name} {t} tokens"))
                    .into_iter()
                    .chain(cost.map(|c| format!("{name} {}", format_money(c))))
            })
            .collect();
        format!("{name}: {}", caps.join(", "))
    })
    .collect();
    format!("{} (days in {})", scopes.join("; "), budgets.time_zone)
}

/// The caps of `caps` by period, those that have any.
fn limits(caps: &Caps) -> impl Iterator<Item = (BudgetPeriod, Option<u64>, Option<u64>)> {
    [
        (BudgetPeriod::Day, caps.daily_tokens, caps.daily_cost_micros),
        (
            BudgetPeriod::Month,
            caps.monthly_tokens,
            caps.monthly_cost_micros,
        ),
    ]
    .into_iter()
    .filter(|(_, tokens, cost)| tokens.is_some() || cost.is_some())
}

/// The days `period` spans now, and how long until it starts again.
fn span(periods: &Periods, period: BudgetPeriod) -> (Days<'_>, u64) {
    match period {
        BudgetPeriod::Day => (periods.today(), periods.day_left_secs),
        BudgetPeriod::Month => (periods.this_month(), periods.month_left_secs),
    }
}

/// The cap `used` has reached, as people read it.
fn over(used: &Totals, tokens: Option<u64>, cost: Option<u64>) -> Option<String> {
    if let Some(cap) = tokens.filter(|&cap| used.tokens() >= cap) {
        return Some(format!("{cap} tokens"));
    }
    cost.filter(|&cap| used.cost_micros >= cap)
        .map(format_money)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Totals;
    use hermes_protocol::Usage;

    fn used(store: &Store, user: u64, day: &str, tokens: u64, cost: u64) {
        let mut t = Totals::default();
        t.add(&Usage {
            prompt_tokens: tokens,
            completion_tokens: 0,
            cached_tokens: 0,
            cost_micros: Some(cost),
        });
        store.add_usage(user, 1, day, &[("p".into(), t)]);
        store.record_left().unwrap();
    }

    /// 2026-12-05 12:00 UTC.
    const NOON: u64 = 1_796_472_000;

    #[test]
    fn caps_refuse_once_reached_per_user_and_for_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut budgets = BudgetsConfig::default();
        assert!(check(&store, &budgets, 1, NOON).is_ok(), "no caps");
        budgets.per_user.daily_tokens = Some(100);
        budgets.per_user.monthly_cost_micros = Some(1_000_000);

        used(&store, 1, "2026-12-05", 99, 0);
        assert!(check(&store, &budgets, 1, NOON).is_ok(), "under the cap");
        used(&store, 1, "2026-12-05", 1, 0);
        match check(&store, &budgets, 1, NOON) {
            Err(Failure::OverBudget {
                everyone: false,
                period: BudgetPeriod::Day,
                cap,
                resets_in_secs,
                ..
            }) => {
                assert_eq!(cap, "100 tokens");
                assert_eq!(resets_in_secs, 12 * 3600);
            }
            other => panic!("{other:?}"),
        }
        assert!(check(&store, &budgets, 2, NOON).is_ok(), "another user");
        assert!(
            check(&store, &budgets, 1, NOON + 12 * 3600).is_ok(),
            "a new day"
        );

        // Yesterday's spending counts for the month, and the month's cap lasts longer.
        used(&store, 1, "2026-12-04", 0, 1_000_000);
        match check(&store, &budgets, 1, NOON) {
            Err(Failure::OverBudget { period, cap, .. }) => {
                assert_eq!((period, cap.as_str()), (BudgetPeriod::Month, "$1.00"));
            }
            other => panic!("{other:?}"),
        }

        assert_eq!(
            describe(&budgets),
            "per user: daily 100 tokens, monthly $1.00 (days in UTC)"
        );
        budgets.per_user = Caps::default();
        budgets.global.daily_tokens = Some(150);
        used(&store, 2, "2026-12-05", 50, 0);
        assert!(matches!(
            check(&store, &budgets, 3, NOON),
            Err(Failure::OverBudget { everyone: true, .. })
        ));
    }
}
