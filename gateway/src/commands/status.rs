//! `/status`: the same facts as `hermes-gateway status`, in a few lines, and which
//! provider and model answer in this chat now.

use std::time::Instant;

use super::{Context, model};
use crate::circuit::View;
use crate::replies;

pub fn run(ctx: &Context) -> String {
    let snapshot = ctx.health.snapshot(Vec::new());
    let now = Instant::now();
    let chain = model::chain(ctx.settings, ctx.store, ctx.place());
    let answering = chain.providers.iter().find(|p| {
        matches!(
            ctx.circuits.view(&p.name, now),
            View::Closed | View::Probing
        )
    });
    let reasons = snapshot.degraded_reasons();
    let mut lines = vec![if reasons.is_empty() {
        replies::status::ALL_GOOD.to_string()
    } else {
        replies::status::degraded(&reasons)
    }];
    lines.push(match answering {
        Some(p) => replies::status::answering(&p.name, &p.model),
        None => replies::status::NONE_ANSWERING.into(),
    });
    lines.push(replies::status::counts(
        snapshot.uptime_secs / 60,
        snapshot.jobs.answered,
        snapshot.jobs.failed.values().sum::<u64>(),
    ));
    lines.push(replies::status::outbox(
        snapshot.outbox.depth,
        snapshot.outbox.oldest_age_secs,
    ));
    lines.join("\n")
}
