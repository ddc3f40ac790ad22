//! Start-up work that waits for the first `getUpdates` to be on its way, then runs beside
//! it: none of it may stand between exec and the first poll (the bench's start-up rows),
//! and none of it is worth a failed start.

use std::path::Path;
use std::sync::Arc;

use teloxide_core::Bot;
use teloxide_core::prelude::Requester;
use tokio_util::sync::CancellationToken;

use hermes_config::{Config, MetricsListen};

use crate::commands;
use crate::first_poll::FirstPoll;
use crate::health::Health;
use crate::metrics;
use crate::sandbox;
use crate::status::Publisher;

/// What the sandbox can apply here: its probe is a child process, and a worker binary that
/// hangs must not hold start-up up. The answer goes to the log and the status as it comes.
pub fn sandbox_probe(first_poll: &FirstPoll, health: &Arc<Health>, worker: &Path, config: &Config) {
    let (gate, health, worker) = (first_poll.clone(), health.clone(), worker.to_path_buf());
    let tools = !config.tools.mcp.is_empty();
    tokio::spawn(async move {
        gate.passed().await;
        let report = sandbox::probe(&worker).await;
        report.log(tools);
        health.set_sandbox_report(report);
    });
}

/// The metrics endpoint (`metrics.listen`), serving what the status publisher shows until
/// `stop`. Watching is not worth a failed start: a listen that fails is logged, and the
/// gateway runs on.
pub fn metrics(
    first_poll: &FirstPoll,
    listen: MetricsListen,
    view: Publisher,
    stop: CancellationToken,
) {
    let gate = first_poll.clone();
    let render: metrics::server::Render =
        Arc::new(move || view.health.metrics().render(&view.snapshot()));
    tokio::spawn(async move {
        gate.passed().await;
        match metrics::server::start(&listen, render, stop).await {
            Ok(()) => tracing::info!("metrics at {listen:?}"),
            Err(e) => tracing::error!("cannot serve metrics at {listen:?}: {e}"),
        }
    });
}

/// The command menu in Telegram's clients: cosmetic, so a failure costs a log line.
pub fn command_menu(first_poll: &FirstPoll, bot: Bot) {
    let gate = first_poll.clone();
    tokio::spawn(async move {
        gate.passed().await;
        if let Err(e) = bot.set_my_commands(commands::menu()).await {
            tracing::info!("setMyCommands failed: {e}");
        }
    });
}
