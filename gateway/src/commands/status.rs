//! `/status`: the same facts as `hermes-gateway status`, in a few lines, and which
//! provider and model answer in this chat now.

use std::time::Instant;

use super::{Context, model};
use crate::circuit::View;

pub fn run(ctx: &Context) -> String {
    let snapshot = ctx.health.snapshot(Vec::new());
    let now = Instant::now();
    let providers = model::chain_for_chat(ctx);
    let answering = providers
        .iter()
        .find(|(name, _)| matches!(ctx.circuits.view(name, now), View::Closed | View::Probing));
    let mut lines = vec![if snapshot.degraded_reasons().is_empty() {
        "✅ All good.".to_string()
    } else {
        format!("⚠️ Degraded: {}.", snapshot.degraded_reasons().join("; "))
    }];
    match answering {
        Some((name, model)) => lines.push(format!("Answering now: {name} ({model}).")),
        None => lines.push("No provider is answering now (quota exhausted everywhere).".into()),
    }
    lines.push(format!(
        "Up {} min; {} answered, {} failed.",
        snapshot.uptime_secs / 60,
        snapshot.jobs.answered,
        snapshot.jobs.failed.values().sum::<u64>()
    ));
    lines.join("\n")
}
