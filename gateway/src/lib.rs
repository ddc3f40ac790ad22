//! `hermes-gateway`: the long-lived parent of the Hermes Telegram agent, as a library the
//! `hermes-gateway` binary (`main.rs`) runs. It is a library only so the benchmark can
//! build its in-process baseline from it (see [`JobRunner`]); the product links no agent
//! code.
//!
//! It polls Telegram, and hands every message to a `hermes-worker` process in its own
//! process group; whatever a request does (a provider's 402, a panic, a hang, memory
//! exhaustion) stays in that group, and the chat gets a plain-language reply. The parent
//! itself runs no provider or agent code.
//!
//! Modules, one responsibility each, from the command line down:
//! - `run`: start-up, the signal loop, a SIGHUP's reload (`run::reload`), the stop's
//!   drain (`run::stop`) and which exit code a failed start gets (`run::exit`: only what
//!   the operator must fix is not restarted), the directories of a run's files made ready
//!   (`run::files`), what starts beside the first poll (`run::beside_first_poll`: the
//!   sandbox probe, the metrics endpoint, the command menu); `check_config`,
//!   `status::report`, `service`: the other commands
//!   (`service::credentials`: the secrets a configuration names, delivered to the unit as
//!   systemd credentials; `service::instance`: one bot of several, an instance of the
//!   template unit; `service::limits`: the stop and watchdog times a unit must allow);
//! - `first_poll`: start-up work (the sandbox probe, the first workers, the command menu)
//!   held until the first `getUpdates` is on its way;
//! - `telegram`: the `getUpdates` loop (`telegram::poller`), what an update says and
//!   whether it is for the bot (`telegram::incoming`), a webhook in polling's way
//!   (`telegram::webhook`), sending (`telegram::sender`), the answer shown as it is
//!   written (`telegram::live`), the reactions that show a turn running and how it ended
//!   (`telegram::reactions`), when an answer goes as a rich message (`telegram::rich`),
//!   the Bot API methods teloxide-core lacks as typed requests (`telegram::bot_api`),
//!   Markdown to Telegram HTML (`telegram::format`, its
//!   parsing in `telegram::format::markdown`, what it must not carry in
//!   `telegram::format::safety`) and cutting to size (`telegram::split`);
//! - `chats`: one task per chat, from stored messages to their one reply: the task takes
//!   its turns (the messages that waited, together) in `chats::turns`, waiting for the
//!   rest of an album or a split text in `chats::settle`, a turn becomes a
//!   job in `chats::prepare`, its progress and outcome reach the chat and the outbox in
//!   `chats::deliver`; a turn's files fetched, and a message whose file is refused
//!   taken out of the turn and answered with why (`chats::turn_files`); strangers
//!   answered once an hour, behind members
//!   (`chats::strangers`); the ⏹ button that stops a turn's job (`chats::stop_button`)
//!   and which message shows the turn's reactions (`chats::reaction`); a former member's
//!   message and one whose jobs keep dying answered without a job (`chats::admit`);
//!   `/schedules` shown with its buttons (`chats::schedules_list`);
//! - `topics`: a forum's topic (or a private chat's) as a conversation of its own: the
//!   `topics::Place` (chat, thread) everything per conversation is kept and sent under;
//! - `commands`: one module per command (`commands::new`, `commands::stop`,
//!   `commands::retry`, `commands::model`, `commands::status`, `commands::usage`), each
//!   owning what it does;
//!   `replies`: every text the user reads; `replied`: what a reply brings into its turn
//!   (the quoted text, the replied-to photo or document); `html`: a message as Telegram's HTML and as
//!   plain text, and escaping (below both `replies` and `telegram::format`);
//! - `jobs`: the seam between the chats and what runs their jobs ([`JobRunner`]);
//! - `media`: voice notes, photos and files: what the inbox keeps of them
//!   (`media::reference`), what the configuration refuses (`media::refusal`), fetched
//!   from Telegram (size and time bounds, `media::download`) into a per-job directory the
//!   job's end removes (`media::job_files`);
//! - `files_back`: files an answer sends back (a tool's chart, CSV or image), taken
//!   from the job's output directory without trusting it (`files_back::collect`), photo
//!   or document (`files_back::photo`), and kept in the state directory until sent;
//! - `supervisor`: the job runner of the product: starting, authenticating
//!   (`supervisor::listener`), watching and killing workers, one slot each
//!   (`supervisor::slot`), one worker as the supervisor sees it (`supervisor::worker`)
//!   and one job on it (`supervisor::worker::job`), what a worker's messages may make
//!   the gateway keep (`supervisor::bounds`),
//!   its scratch directory (`supervisor::scratch`) and its stderr in the log
//!   (`supervisor::stderr_log`), the Unix side in `supervisor::process`; `child`: what
//!   every process started from the worker binary gets between fork and exec (first for
//!   the OOM killer), below the supervisor and the sandbox probe alike;
//! - `store`: SQLite: the durable inbox (`store::inbox`), the outbox (`store::outbox`)
//!   and the conversations (`store::conversation`), WAL checkpoints on a thread of their
//!   own (`store::checkpoint`), the previews on show (`store::previews`), starts taken
//!   back after a clean stop (`store::attempts`), forgetting what is no longer needed
//!   (`store::prune`); `outbox`: sending every committed reply, in order per chat, until
//!   Telegram has it (each chat's queue in `outbox::queue`, sending it in
//!   `outbox::delivery`, replies the store could not take yet in `outbox::held`);
//! - `instances`: several bots on one host, one template unit instance each: their names,
//!   where each keeps its configuration, credentials and state, which ones the host has,
//!   and every directory of any of them (hidden from every tool);
//! - `state_dir`: the state directory private (0700, files 0600) and one gateway's alone
//!   (a `flock`);
//! - `circuit`: skipping a provider whose quota is exhausted, for a cool-down;
//! - `usage`: what the provider calls used, summed per job and recorded per user, chat,
//!   provider and day; the budgets checked before a job (`usage::budget`) in the
//!   calendar of `budgets.time_zone` (`usage::calendar`); everyone's usage for the operator
//!   (`usage::report`, `hermes-gateway usage`);
//! - `health`, `systemd`: what the gateway knows about itself (the published snapshot
//!   and how it is judged: `health::snapshot`; whether the store takes writes:
//!   `health::store_writes`), and sd_notify (READY, STATUS, WATCHDOG);
//!   `status`: publishing it to the state directory, and `status::report`, the
//!   `hermes-gateway status` command that reads it (`status::list`: every bot on the
//!   host, a line each; `status::unit`: what systemd says when the state is private);
//! - `signals`: stop and reload signals with their sender, for the shutdown record (and
//!   ignored when a descendant sent them);
//! - `sandbox`: what each tool server's sandbox hides and protects, and what the kernel
//!   lets it apply; `approvals`: a tool call a user must allow, asked in the chat (what
//!   the user is asked to allow: `approvals::arguments`; its words:
//!   `approvals::texts`);
//! - `settings`: what a SIGHUP reload may change; `setup`: judging a configuration
//!   against this machine;
//! - `schedules`: reminders and scheduled tasks: the model's tools answered, the timer
//!   that fires them as turns, `/schedules` and `/timezone` (`schedules::chat`), the
//!   times (`schedules::times`) and `hermes-gateway schedules` (`schedules::cli`);
//! - `clock`: Unix time for records, and waiting for a moment that may not be set;
//!   `text`: text cut to a size in bytes where a character ends;
//! - `metrics`: the Prometheus text page of counters, gauges and job latency, and its
//!   endpoint (`metrics::server`, bounded so a scraper cannot hold the gateway);
//! - `logging`: the journal natively under systemd (priorities, `CHAT_ID=`-style fields),
//!   text lines elsewhere.
//!
//! Below it: `hermes-protocol` (the wire: messages, frames, the connection, the
//! handshake), `hermes-config` (the configuration file) and `hermes-retry` (backoff).

mod approvals;
mod chats;
mod check_config;
mod child;
mod circuit;
mod clock;
mod commands;
mod files_back;
mod first_poll;
mod health;
mod html;
mod instances;
mod jobs;
mod logging;
mod media;
mod metrics;
mod outbox;
mod replied;
mod replies;
mod run;
mod sandbox;
mod schedules;
mod service;
mod settings;
mod setup;
mod signals;
mod state_dir;
mod status;
mod store;
mod supervisor;
mod systemd;
mod telegram;
mod text;
mod topics;
mod usage;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use jobs::{ApprovalAsk, BoxFuture, JobLink, JobRunner, MakeRunner, ScheduleAsk};

#[derive(Parser)]
#[command(
    name = "hermes-gateway",
    version,
    about = "Telegram gateway for an LLM agent; every request runs in an isolated worker process",
    long_about = "Telegram gateway for an LLM agent.\n\n\
        The gateway polls Telegram and hands each message to a hermes-worker process in its own \
        process group. A provider error, a crash, a hang or memory exhaustion in a request ends \
        that request with a clear reply in the chat; the gateway and the other chats carry on.\n\n\
        Exit codes: 0 after SIGTERM/SIGINT; 78 for what the operator must fix (invalid \
        configuration, a directory the service may not write, a state store from a newer \
        version), which the units do not restart; 75 when another gateway runs on the same \
        state directory; 74 for trouble at start-up that can pass by itself (the state store \
        busy or locked, a full disk or runtime directory, an I/O error); 71 when the \
        operating system refuses a runtime or a signal handler. The units restart every \
        code but 78."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Run {
        /// Configuration file (TOML); see deploy/hermes.example.toml.
        #[arg(long, short, env = "HERMES_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Show what the running gateway publishes: polling, workers, providers, jobs, and the
    /// previous shutdown. Exit 0 healthy, 1 degraded, 3 not running (LSB).
    Status {
        /// One bot of several on this host (the template unit's instance NAME). Without
        /// it, on a host with instances: every instance, a line each (exit status the
        /// worst of theirs).
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// Configuration file (TOML), for its state directory. Default: the installed
        /// unit's (/etc/hermes/hermes.toml; with --user, ~/.config/hermes/hermes.toml).
        #[arg(long, short, env = "HERMES_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The user service's gateway (systemctl --user).
        #[arg(long)]
        user: bool,
        /// Print the raw status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install or remove the systemd unit (deploy/hermes-gateway.service, with this
    /// machine's paths).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List every chat's schedules (reminders and scheduled tasks), with their next run.
    Schedules {
        /// Configuration file (TOML), for its state directory.
        #[arg(long, short, env = "HERMES_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Show what the bot used at its providers, by user and by provider: today, this month
    /// and in total (tokens, and the cost where known). Reads the state store, also while
    /// the gateway runs. Exit 0, or 1 when there is no usage to read.
    Usage {
        /// Configuration file (TOML), for its state directory and budgets.time_zone.
        /// Default: the installed unit's, as for `status`.
        #[arg(long, short, env = "HERMES_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// The user service's gateway (systemctl --user).
        #[arg(long)]
        user: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and the environment it names, print what was found, and
    /// exit 0 (valid) or 78 (one line per problem, with key and line number).
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, env = "HERMES_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Write the unit (system: /etc/systemd/system; --user: ~/.config/systemd/user) with
    /// this binary's path and the configuration's, run daemon-reload, print the next step.
    Install {
        /// Configuration file the service will run with. With --instance NAME it must be
        /// the one the template runs (/etc/hermes/NAME.toml; --user:
        /// ~/.config/hermes/NAME.toml), the default.
        #[arg(long, short, env = "HERMES_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Install bot NAME as an instance of the template unit (hermes-gateway@NAME),
        /// one of several on this host, with its own secrets.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// A user service (systemctl --user) instead of a system one.
        #[arg(long)]
        user: bool,
        /// Print the unit instead of writing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop, disable and remove the unit.
    Uninstall {
        #[arg(long)]
        user: bool,
        /// Remove instance NAME (its credentials and state stay).
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
}

/// Renders an answer as its chat would get it and returns how many messages it became:
/// what the benchmark times for the worst answers it knows (invariant 9).
#[doc(hidden)]
pub fn render_answer(markdown: &str) -> usize {
    telegram::format::render(markdown, telegram::split::MESSAGE_LIMIT).len()
}

/// The largest answer the gateway keeps and renders, in bytes.
#[doc(hidden)]
pub const MAX_ANSWER_BYTES: usize = jobs::MAX_ANSWER_BYTES;

/// The command line of `hermes-gateway`: parses the arguments, runs the command, and
/// returns the exit status. `runner` replaces the worker pool as what runs the jobs of
/// `run`; only the benchmark's baseline passes one.
pub fn main(runner: Option<MakeRunner>) -> i32 {
    let cli = Cli::parse();
    logging::init();
    match cli.command {
        Command::Run { config } => run::run(&config, runner),
        Command::CheckConfig { config } => check_config::check_config(&config),
        Command::Schedules { config } => schedules::cli::schedules_command(&config),
        Command::Status {
            name,
            config,
            user,
            json,
        } => status::status_of(name.as_deref(), config.as_deref(), user, json),
        Command::Usage { config, user, json } => {
            usage::report::usage_command(config.as_deref(), user, json)
        }
        Command::Service(ServiceCommand::Install {
            config,
            instance: Some(name),
            user,
            dry_run,
        }) => service::install_instance(user, &name, config.as_deref(), dry_run),
        Command::Service(ServiceCommand::Install {
            config: Some(config),
            instance: None,
            user,
            dry_run,
        }) => service::install(user, &config, dry_run),
        Command::Service(ServiceCommand::Install {
            config: None,
            instance: None,
            ..
        }) => {
            eprintln!(
                "service install needs --config FILE (one bot) or --instance NAME (one of several)"
            );
            2
        }
        Command::Service(ServiceCommand::Uninstall {
            user,
            instance: Some(name),
            dry_run,
        }) => service::uninstall_instance(user, &name, dry_run),
        Command::Service(ServiceCommand::Uninstall {
            user,
            instance: None,
            dry_run,
        }) => service::uninstall(user, dry_run),
    }
}
