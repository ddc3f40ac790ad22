//! `hermes-worker`: the agent process of hermes-gateway.
//!
//! The gateway starts it with `serve`; it runs one job at a time: calls the configured
//! OpenAI-compatible providers in order, with retries and fallbacks, calls the MCP tools
//! the model asks for (their servers run as children in this process's group), and
//! returns one outcome. Anything that goes wrong in here (a 402, a panic, a hang, memory exhaustion)
//! ends at most this process: the gateway replies with an error and starts another.
//! `ask` runs the same agent from the command line, for debugging.
//!
//! Modules: [`serve`] (the gateway protocol), [`ask`] (standalone); the agent itself is
//! the crate's library (`agent`, `provider`, `tools`).

mod ask;
mod serve;

pub(crate) use hermes_worker::agent;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hermes-worker",
    version,
    about = "The agent process of hermes-gateway: runs jobs against OpenAI-compatible providers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve jobs for the gateway (started by hermes-gateway, not by hand). Reads the
    /// socket path from HERMES_WORKER_SOCKET and the one-time token from
    /// HERMES_WORKER_TOKEN.
    Serve,
    /// Ask one question with the gateway's configuration file, without the gateway, and
    /// print the answer; on failure print the typed failure and exit 1 (78: bad config).
    Ask {
        /// The configuration file hermes-gateway uses.
        #[arg(long, short, env = "HERMES_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// Overrides workers.job_timeout_secs.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Ask the provider to stream, and print the answer to stderr as it grows.
        #[arg(long)]
        stream: bool,
        /// The question.
        question: String,
    },
}

fn main() {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::exit(serve::EXIT_FAILED);
        }
    };
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build the HTTP client: {e}");
            std::process::exit(serve::EXIT_FAILED);
        }
    };
    let code = match cli.command {
        Command::Serve => {
            let socket = std::env::var("HERMES_WORKER_SOCKET").unwrap_or_default();
            let token = std::env::var("HERMES_WORKER_TOKEN").unwrap_or_default();
            if socket.is_empty() || token.is_empty() {
                eprintln!(
                    "hermes-worker serve is started by hermes-gateway: HERMES_WORKER_SOCKET and \
                     HERMES_WORKER_TOKEN must be set. To ask a question by hand, use \
                     `hermes-worker ask --config FILE \"question\"`."
                );
                std::process::exit(serve::EXIT_REFUSED);
            }
            runtime.block_on(serve::serve(&socket, &token, client))
        }
        Command::Ask {
            config,
            timeout,
            stream,
            question,
        } => runtime.block_on(ask::ask(
            &config,
            &question,
            ask::AskOptions {
                timeout: timeout.map(Duration::from_secs),
                stream,
            },
            client,
        )),
    };
    std::process::exit(code);
}

/// Under the gateway, stderr is copied into the gateway's log, which stamps the time.
/// The MCP SDK logs every session and notification at `info`; it is held to warnings
/// unless `HERMES_LOG` names it.
fn init_logging(under_gateway: bool) {
    let spec = std::env::var("HERMES_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .ok()
        .filter(|_| !spec.trim().is_empty())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    if !spec.contains("rmcp")
        && let Ok(quiet) = "rmcp=warn".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!under_gateway && std::io::stderr().is_terminal())
        .with_target(false);
    if under_gateway {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
