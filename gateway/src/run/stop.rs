//! The stop, after SIGTERM or SIGINT: polling ends, jobs in flight get
//! `workers.shutdown_drain_secs` to finish, the rest are cancelled (their messages stay
//! stored for the next run, and their chats are told), the outbox sends what it can in
//! what is left of that time, and every worker group ends. A second stop signal cancels
//! the jobs at once. With nothing in flight, all of it takes no time.
//!
//! Only a signal from outside stops the gateway: one a worker or a tool it runs sent is
//! ignored, with a warning.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::signals;
use crate::supervisor::Shutdown;

/// At a stop, the outbox gets at least this long to send what the jobs said on their way
/// out, even when the drain used up its time.
const OUTBOX_FLUSH_MIN: Duration = Duration::from_secs(1);

/// What runs until the stop, and how long the stop lets jobs run.
pub struct Running {
    pub poller: JoinHandle<()>,
    pub poll_stop: CancellationToken,
    pub shutdown: Shutdown,
    /// Jobs and what serves them.
    pub tasks: TaskTracker,
    /// The outbox's senders, apart, so the stop can wait for them after the jobs.
    pub outbox_tasks: TaskTracker,
    pub outbox_stop: CancellationToken,
    pub publisher: JoinHandle<()>,
    pub publisher_stop: CancellationToken,
    pub drain: Duration,
    pub kill_grace: Duration,
}

/// Stops what `running` holds, in order, within its drain; a stop signal from `signals`
/// meanwhile hurries it.
pub async fn stop(running: Running, signals: &mut mpsc::UnboundedReceiver<signals::Received>) {
    let drain_ends = Instant::now() + running.drain;
    running.poll_stop.cancel();
    running.shutdown.stop_taking.cancel();
    if let Err(e) = running.poller.await {
        tracing::error!("poller task ended abnormally: {e}");
    }
    running.tasks.close();
    let mut hurry = false;
    let drained = tokio::select! {
        _ = running.tasks.wait() => true,
        _ = tokio::time::sleep_until(drain_ends.into()) => false,
        Some(signal) = next_stop(signals) => {
            tracing::info!("received {signal} again: cancelling jobs now");
            hurry = true;
            false
        }
    };
    if !drained {
        running.shutdown.abort.cancel();
        let bound = running.kill_grace + Duration::from_secs(5);
        if tokio::time::timeout(bound, running.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within {bound:?}; exiting anyway");
        }
    }
    // What the jobs said on their way out (answers, "restarting" notices) goes now, in
    // what is left of the drain (a moment at least); what Telegram does not take by then
    // stays in the outbox for the next run.
    running.outbox_tasks.close();
    if !hurry {
        let flush = drain_ends
            .saturating_duration_since(Instant::now())
            .max(OUTBOX_FLUSH_MIN);
        let flushed = tokio::select! {
            _ = running.outbox_tasks.wait() => true,
            _ = tokio::time::sleep(flush) => false,
            Some(_) = next_stop(signals) => false,
        };
        if !flushed {
            tracing::warn!("replies not yet delivered stay in the outbox for the next run");
        }
    }
    running.outbox_stop.cancel();
    running.outbox_tasks.wait().await;
    running.shutdown.abort.cancel();
    running.publisher_stop.cancel();
    let _ = running.publisher.await;
}

/// The next stop signal; reload signals are ignored here, as are descendants' signals.
async fn next_stop(
    signals: &mut mpsc::UnboundedReceiver<signals::Received>,
) -> Option<signals::Received> {
    loop {
        match signals.recv().await {
            Some(signal) if signal.from_descendant => ignore_from_descendant(&signal),
            Some(signal) if signal.is_reload() => continue,
            other => return other,
        }
    }
}

/// A worker, or a tool a worker runs, sent a stop or reload signal: not obeyed, since
/// nothing a request does may stop the service (the sandbox should have refused it; this
/// covers `sandbox = false` and kernels without the filters).
pub fn ignore_from_descendant(signal: &signals::Received) {
    tracing::warn!(
        "ignoring {signal}: the sender is one of the gateway's own workers or a process it \
         runs (a tool); stop or reload the service from outside (systemctl, or a signal \
         from another process)"
    );
}
