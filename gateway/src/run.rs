//! `hermes-gateway run`: start-up, the long-lived loop, and the stop.
//!
//! The process leaves in two ways only. Invalid configuration (the file, a secret, the
//! worker binary, the directories) exits with 78 before anything starts. SIGTERM or SIGINT
//! stops polling, lets jobs in flight finish for `workers.shutdown_drain_secs`, cancels
//! the rest (their chats are told to send again), ends every worker group, and exits 0.
//! Nothing else (no Telegram error, no provider answer, no worker fault) ends it.

use std::path::Path;
use std::time::Duration;

use hermes_protocol::config::{Config, EXIT_CONFIG};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chats::{ChatRouter, JobContext};
use crate::circuit::Circuits;
use crate::setup::{self, Setup};
use crate::supervisor::{Shutdown, Supervisor, SupervisorConfig};
use crate::telegram::{self, poller, sender::Sender};

/// Exit status when the operating system refuses the basics (a runtime, a signal handler):
/// `EX_OSERR`, which the unit restarts.
const EXIT_OS_ERROR: i32 = 71;

pub fn run(path: &Path) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_CONFIG;
        }
    };
    let setup = match setup::resolve(&config) {
        Ok(s) => s,
        Err(problems) => {
            let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            tracing::error!(
                "invalid configuration in {}:\n{}",
                path.display(),
                lines.join("\n")
            );
            return EXIT_CONFIG;
        }
    };
    for dir in [&setup.state_dir, &setup.runtime_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!("cannot create directory {}: {e}", dir.display());
            return EXIT_CONFIG;
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return EXIT_OS_ERROR;
        }
    };
    runtime.block_on(serve(config, setup))
}

async fn serve(config: Config, setup: Setup) -> i32 {
    let mut stop_signals = match StopSignals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return EXIT_OS_ERROR;
        }
    };
    let bot = match telegram::bot(
        setup.token.expose(),
        &config.telegram.api_url,
        config.telegram.poll_timeout_secs,
    ) {
        Ok(bot) => bot,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_CONFIG;
        }
    };
    let tasks = TaskTracker::new();
    let shutdown = Shutdown {
        stop_taking: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let workers = &config.workers;
    let supervisor = match Supervisor::start(
        SupervisorConfig {
            mode: workers.mode,
            slots: workers.pool_size,
            program: setup.worker_program.clone(),
            socket_dir: setup.runtime_dir.join("workers"),
            memory_limit_mb: workers.memory_limit_mb,
            max_jobs_per_worker: workers.max_jobs_per_worker,
            kill_grace: Duration::from_secs(workers.kill_grace_secs),
        },
        &shutdown,
        &tasks,
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                "cannot create the worker socket in {}: {e}",
                setup.runtime_dir.display()
            );
            return EXIT_CONFIG;
        }
    };
    let router = ChatRouter::new(
        JobContext {
            supervisor,
            circuits: Circuits::new(
                config
                    .providers
                    .iter()
                    .map(|p| (p.name.clone(), Duration::from_secs(p.quota_cooldown_secs))),
            ),
            sender: Sender::new(bot.clone()),
            providers: setup.providers.clone(),
            system_prompt: config.agent.system_prompt.clone(),
            job_timeout: workers.job_timeout(),
        },
        &config.telegram.allowed_users,
        config.telegram.max_queued_per_chat,
        tasks.clone(),
        shutdown.stop_taking.clone(),
    );
    let poll_stop = CancellationToken::new();
    let poller = tokio::spawn(poller::poll(
        bot,
        poller::PollSettings {
            timeout_secs: config.telegram.poll_timeout_secs,
            retry_max: Duration::from_secs(config.telegram.retry_max_secs),
        },
        poll_stop.clone(),
        move |update| router.handle_update(update),
    ));
    tracing::info!(
        pid = std::process::id(),
        mode = workers.mode.as_str(),
        workers = workers.pool_size,
        telegram = %config.telegram.api_url,
        "hermes-gateway running"
    );

    let signal = stop_signals.next().await;
    let drain = Duration::from_secs(workers.shutdown_drain_secs);
    tracing::info!(
        "received {signal}: stopping; jobs in flight get {} s to finish",
        drain.as_secs()
    );
    poll_stop.cancel();
    shutdown.stop_taking.cancel();
    if let Err(e) = poller.await {
        tracing::error!("poller task ended abnormally: {e}");
    }
    tasks.close();
    let drained = tokio::select! {
        _ = tasks.wait() => true,
        _ = tokio::time::sleep(drain) => false,
        signal = stop_signals.next() => {
            tracing::info!("received {signal} again: cancelling jobs now");
            false
        }
    };
    if !drained {
        shutdown.abort.cancel();
        let bound = Duration::from_secs(workers.kill_grace_secs) + Duration::from_secs(5);
        if tokio::time::timeout(bound, tasks.wait()).await.is_err() {
            tracing::warn!("some tasks did not finish within {bound:?}; exiting anyway");
        }
    }
    shutdown.abort.cancel();
    tracing::info!("hermes-gateway stopped");
    0
}

struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
