//! `/usage`: what the user asking used at the providers today, this month and in total
//! (tokens, and the cost where it is known), and how much of each budget that applies to
//! them is spent. Everyone's usage is the operator's (`hermes-gateway usage`).

use hermes_config::Caps;
use hermes_protocol::format_money;

use super::Context;
use crate::clock::unix_now;
use crate::replies::usage as words;
use crate::store::{Days, Totals};
use crate::usage::calendar;

pub fn run(ctx: &Context) -> String {
    let budgets = &ctx.settings.budgets;
    let periods = calendar::periods(&budgets.zone, unix_now());
    let read = |who: Option<u64>, days: Days| {
        ctx.store.usage_sum(who, days).map_err(|e| {
            tracing::warn!(chat_id = ctx.chat, "cannot read the usage for /usage: {e}");
        })
    };
    let me = Some(ctx.user);
    let (Ok(today), Ok(month), Ok(total)) = (
        read(me, periods.today()),
        read(me, periods.this_month()),
        read(me, Days::ALL),
    ) else {
        return words::FAILED.into();
    };
    let mut lines = caps_lines(false, &budgets.per_user, &today, &month);
    if !budgets.global.is_empty() {
        let (Ok(all_today), Ok(all_month)) = (
            read(None, periods.today()),
            read(None, periods.this_month()),
        ) else {
            return words::FAILED.into();
        };
        lines.extend(caps_lines(true, &budgets.global, &all_today, &all_month));
    }
    words::yours(
        &budgets.time_zone,
        &[("Today", today), ("This month", month), ("In total", total)],
        &lines,
    )
}

/// A line for each cap of `caps`, with what `today` and `month` used of it.
fn caps_lines(everyone: bool, caps: &Caps, today: &Totals, month: &Totals) -> Vec<String> {
    let mut lines = Vec::new();
    for (period, used, tokens, cost) in [
        ("daily", today, caps.daily_tokens, caps.daily_cost_micros),
        (
            "monthly",
            month,
            caps.monthly_tokens,
            caps.monthly_cost_micros,
        ),
    ] {
        if let Some(cap) = tokens {
            lines.push(words::budget_line(
                everyone,
                period,
                &used.tokens().to_string(),
                &format!("{cap} tokens"),
            ));
        }
        if let Some(cap) = cost {
            lines.push(words::budget_line(
                everyone,
                period,
                &format_money(used.cost_micros),
                &format_money(cap),
            ));
        }
    }
    lines
}
