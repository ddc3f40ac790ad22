//! `hermes-gateway run`: start-up, the long-lived loop, and the stop.
//!
//! The process leaves in four ways only. Invalid configuration (the file, a secret, the
//! worker binary, directories it may not write, a store of a newer version) exits with 78
//! before anything starts; another gateway holding the state directory, with 75, before
//! anything is touched; local trouble that can pass by itself at start-up (the store busy,
//! a disk or the runtime directory full, an I/O error), with 74, which the units restart
//! ([`exit`]). Once running, store trouble is retried, never an exit. SIGTERM or SIGINT
//! stops polling, lets jobs in flight finish for `workers.shutdown_drain_secs`, cancels
//! the rest (their messages stay stored for the next run, and their chats are told),
//! sends what the outbox can in what is left of that time, ends every worker group, and
//! exits 0; with nothing in flight, at once. Nothing else (no Telegram error, no provider
//! answer, no worker fault) ends it.
//!
//! Start-up goes in the order the guarantees need: the umask and the state directory's
//! lock before anything touches the state; then the replies a previous run left
//! undelivered, first, in their order; then its unanswered messages, each chat's as one
//! turn; then polling, with what can wait beside the first poll ([`beside_first_poll`]).
//! While it runs, SIGHUP reloads the configuration ([`reload`](mod@reload)); the stop's
//! sequence is in [`stop`].

mod beside_first_poll;
mod exit;
mod files;
mod reload;
mod stop;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hermes_config::{Config, EXIT_CONFIG, WorkerMode, load_or_report};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::reload::reload;
use self::stop::{Running, ignore_from_descendant};
use crate::approvals::Desk;
use crate::chats::{ChatRouter, JobContext, is_stop_press};
use crate::circuit::Circuits;
use crate::first_poll::FirstPoll;
use crate::health::Health;
use crate::jobs::{JobRunner, MakeRunner};
use crate::outbox::{Outbox, OutboxConfig};
use crate::sandbox;
use crate::schedules::{Schedules, chat as schedules_chat};
use crate::settings::{ChatSettings, LiveSettings};
use crate::setup::{self, Setup};
use crate::signals::{self, StopReason};
use crate::state_dir;
use crate::status::{self, Publisher};
use crate::store::Store;
use crate::supervisor::{Shutdown, Supervisor, SupervisorConfig};
use crate::systemd::Notifier;
use crate::telegram::{self, poller, reactions::Reactions, sender::Sender};

use self::exit::EXIT_OS_ERROR;

/// Runs the gateway with the configuration at `path`; `runner`, when given, runs the jobs
/// instead of a worker pool (the benchmark's baseline).
pub fn run(path: &Path, runner: Option<MakeRunner>) -> i32 {
    // No other process of the service's user (a tool that escaped or opted out of the
    // sandbox) may read this process's /proc/PID/environ (the bot token) or its memory,
    // nor ptrace it.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot mark the gateway non-dumpable: {e}");
    }
    // Before anything is created: the state holds every conversation.
    state_dir::private_umask();
    let Some((config, setup)) = load_or_report(path, setup::resolve, |e| tracing::error!("{e}"))
    else {
        return EXIT_CONFIG;
    };
    let lock = match state_dir::claim(&setup.state_dir) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!("{e}");
            return exit::for_claim(&e);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&setup.runtime_dir) {
        tracing::error!(
            "cannot create directory {}: {e}",
            setup.runtime_dir.display()
        );
        return exit::for_io(&e);
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
    let code = runtime.block_on(serve(path, config, setup, runner));
    // Everything that holds the store ends with the runtime; only then may another
    // gateway take the directory.
    drop(runtime);
    drop(lock);
    code
}

async fn serve(path: &Path, config: Config, setup: Setup, runner: Option<MakeRunner>) -> i32 {
    let first_poll = FirstPoll::new();
    let mut signals = match signals::listen() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return EXIT_OS_ERROR;
        }
    };
    let poll_timeout = Duration::from_secs(u64::from(config.telegram.poll_timeout_secs));
    let clients = match telegram::Clients::new(
        setup.token.expose(),
        &config.telegram.api_url,
        poll_timeout,
    ) {
        Ok(clients) => clients,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_CONFIG;
        }
    };
    let workers = &config.workers;
    let previous = status::previous_shutdown(&setup.state_dir);
    if let Some(record) = &previous {
        tracing::info!("previous run {} ended: {}", record.run_id, record.reason);
    }
    let store = match Store::open(&setup.state_dir) {
        Ok(store) => Arc::new(store),
        Err(e) => {
            tracing::error!("{e}");
            return exit::for_store(&e);
        }
    };
    // What the previous run left, read before anything starts: a store that cannot be
    // read now would leave those replies unsent and those messages unanswered for the
    // whole run, so it is a failed start, restarted while the trouble lasts.
    let left_over = store
        .outbox()
        .and_then(|pieces| Ok((pieces, store.previews()?, store.unanswered()?)));
    let (undelivered, previews, unanswered) = match left_over {
        Ok(left_over) => left_over,
        Err(e) => {
            tracing::error!("cannot read what the previous run left: {e}");
            return exit::for_store(&e);
        }
    };
    let health = Arc::new(Health::new(workers.mode.as_str(), previous, store.writes()));
    // What the sandbox can apply here, and who opted out. The probe runs beside start-up
    // (a worker binary that hangs must not hold it up); its answer goes to the log and
    // the status as soon as it comes.
    sandbox::warn_opted_out(&config);
    health.set_unsandboxed(
        sandbox::opted_out(&config)
            .iter()
            .map(|n| n.to_string())
            .collect(),
    );
    beside_first_poll::sandbox_probe(&first_poll, &health, &setup.worker_program, &config);
    let notifier = Arc::new(Notifier::from_env());
    let settings = LiveSettings::new(ChatSettings::new(&config, &setup));
    let circuits = Arc::new(Circuits::new(settings.get().cooldowns.clone()));
    // Jobs and what serves them; the outbox's senders apart, so a stop can wait for each.
    let tasks = TaskTracker::new();
    let outbox_tasks = TaskTracker::new();
    let outbox_stop = CancellationToken::new();
    let shutdown = Shutdown {
        stop_taking: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let mut renewal = None;
    let (runner, wait_for_first_worker): (Arc<dyn JobRunner>, bool) = match runner {
        Some(make) => (make(&config), false),
        None => match Supervisor::start(
            SupervisorConfig {
                mode: workers.mode,
                slots: workers.pool_size,
                program: setup.worker_program.clone(),
                socket_dir: setup.runtime_dir.join("workers"),
                scratch_root: setup.runtime_dir.join("scratch"),
                memory_limit_mb: workers.memory_limit_mb,
                max_jobs_per_worker: workers.max_jobs_per_worker,
                kill_grace: Duration::from_secs(workers.kill_grace_secs),
                max_restarts: workers.max_restarts,
                restart_window: Duration::from_secs(workers.restart_window_secs),
                spares: workers.spares,
                health: health.clone(),
                first_poll: first_poll.clone(),
            },
            &shutdown,
            &tasks,
        ) {
            Ok(supervisor) => {
                renewal = Some(supervisor.renewal());
                (Arc::new(supervisor), workers.mode == WorkerMode::Pool)
            }
            Err(e) => {
                tracing::error!(
                    "cannot create the worker socket or scratch directories in {}: {e}",
                    setup.runtime_dir.display()
                );
                return exit::for_io(&e);
            }
        },
    };
    let publisher_stop = CancellationToken::new();
    let publisher = Publisher {
        health: health.clone(),
        circuits: circuits.clone(),
        settings: settings.clone(),
        state_dir: setup.state_dir.clone(),
        notifier: notifier.clone(),
        store: store.clone(),
    };
    if let Some(listen) = config.metrics.listen.clone() {
        beside_first_poll::metrics(
            &first_poll,
            listen,
            publisher.clone(),
            publisher_stop.clone(),
        );
    }
    let publisher = tokio::spawn(publisher.run(publisher_stop.clone()));
    let (fetcher, outgoing) = match files::areas(&config, &setup, clients.fetching, &undelivered) {
        Ok(areas) => areas,
        Err(code) => return code,
    };
    let sender = Sender::new(clients.sending).with_uploads(clients.uploading);
    let desk = Desk::new(sender.clone(), settings.clone());
    let reactions = Reactions::new(sender.clone());
    let outbox = Outbox::new(
        OutboxConfig {
            store: store.clone(),
            sender: sender.clone(),
            health: health.clone(),
            max_age: Duration::from_secs(config.telegram.outbox_max_age_secs),
            retry_max: Duration::from_secs(config.telegram.retry_max_secs),
        },
        outbox_tasks.clone(),
        outbox_stop.clone(),
    );
    // Replies the previous run committed but did not deliver go first, in their order.
    match outbox.resume(undelivered, previews) {
        0 => {}
        n => tracing::info!("sending {n} reply piece(s) left undelivered by the previous run"),
    }
    let schedules = Schedules::new(store.clone(), config.schedules.clone());
    let router = ChatRouter::new(
        JobContext {
            runner,
            health: health.clone(),
            circuits: circuits.clone(),
            sender: sender.clone(),
            outbox,
            settings: settings.clone(),
            store: store.clone(),
            max_history: config.agent.max_history_messages,
            desk: desk.clone(),
            fetcher,
            reactions,
            schedules: schedules.clone(),
            outgoing,
        },
        config.telegram.max_queued_per_chat,
        tasks.clone(),
        shutdown.stop_taking.clone(),
    );
    // Messages the previous run stored but did not answer come next: each chat's as one
    // turn.
    if !unanswered.is_empty() {
        tracing::info!(
            "answering {} message(s) left unanswered by the previous run",
            unanswered.len()
        );
    }
    router.resume(unanswered);
    beside_first_poll::command_menu(&first_poll, clients.polling.clone());
    let poll_stop = CancellationToken::new();
    // Due schedules fire as turns until the poller stops: a stop takes no new work.
    tokio::spawn(schedules.clone().run(
        router.clone(),
        settings.clone(),
        health.clone(),
        poll_stop.clone(),
    ));
    tokio::spawn(crate::store::prune_on_schedule(
        store.clone(),
        poll_stop.clone(),
    ));
    let poller = tokio::spawn(poller::poll(
        clients.polling,
        poller::PollSettings {
            timeout_secs: config.telegram.poll_timeout_secs,
            retry_max: Duration::from_secs(config.telegram.retry_max_secs),
            group_mode: config.telegram.group_mode,
            max_file_bytes: config.telegram.max_file_mb * 1024 * 1024,
            first_poll: first_poll.clone(),
        },
        health.clone(),
        store.clone(),
        poll_stop.clone(),
        poller::Handlers {
            classify: {
                let router = router.clone();
                move |message: &mut _| router.classify(message)
            },
            deliver: {
                let (router, health) = (router.clone(), health.clone());
                move |message| {
                    health.metrics().message_received();
                    router.handle(message)
                }
            },
            // A ⏹ button's press is the router's (its job's stop), a schedule's Cancel the
            // schedules', any other an approval's.
            pressed: {
                let (sender, settings) = (sender.clone(), settings.clone());
                move |press| {
                    if is_stop_press(&press) {
                        router.on_stop_press(press);
                    } else if schedules_chat::is_ours(&press) {
                        schedules_chat::on_callback(
                            schedules.clone(),
                            sender.clone(),
                            settings.clone(),
                            press,
                        );
                    } else {
                        desk.on_callback(press);
                    }
                }
            },
        },
    ));
    // Ready once local start-up is done: a pool's first worker has had its try (bounded,
    // so a broken worker binary does not hold start-up hostage). Telegram is not waited
    // for: an outage at boot must not look like a failed start.
    if wait_for_first_worker {
        let _ = tokio::time::timeout(FIRST_WORKER_WAIT, health.first_worker_attempt()).await;
    }
    notifier.ready();
    tracing::info!(
        pid = std::process::id(),
        run = health.run_id(),
        mode = workers.mode.as_str(),
        workers = workers.pool_size,
        telegram = %config.telegram.api_url,
        "hermes-gateway running"
    );

    let stop_reason = loop {
        match signals.recv().await {
            Some(signal) if signal.from_descendant => ignore_from_descendant(&signal),
            Some(signal) if signal.is_reload() => {
                tracing::info!("received {signal}: reloading {}", path.display());
                reload(path, &config, &settings, &circuits, &health);
                // A worker binary replaced on disk is used from the next job on.
                if let Some(renewal) = &renewal {
                    renewal.renew();
                }
            }
            Some(signal) => break StopReason::Signal(signal),
            None => break StopReason::ListenerGone,
        }
    };
    notifier.stopping();
    let drain = Duration::from_secs(workers.shutdown_drain_secs);
    tracing::info!(
        "received {stop_reason}: stopping; jobs in flight get {} s to finish",
        drain.as_secs()
    );
    stop::stop(
        Running {
            poller,
            poll_stop,
            shutdown,
            tasks,
            outbox_tasks,
            outbox_stop,
            publisher,
            publisher_stop,
            drain,
            kill_grace: Duration::from_secs(workers.kill_grace_secs),
        },
        &mut signals,
    )
    .await;
    status::record_shutdown(&setup.state_dir, health.run_id(), &stop_reason);
    tracing::info!("hermes-gateway stopped");
    0
}

/// How long start-up waits for a pool's first worker before declaring itself ready.
const FIRST_WORKER_WAIT: Duration = Duration::from_secs(10);
