//! `hermes-worker`: the agent process of hermes-gateway.
//!
//! The gateway starts it with `serve`; it runs one job at a time: calls the configured
//! OpenAI-compatible providers in order, with retries and fallbacks, calls the MCP tools
//! the model asks for (their servers run as children in this process's group), and
//! returns one outcome. Anything that goes wrong in here (a 402, a panic, a hang, memory exhaustion)
//! ends at most this process: the gateway replies with an error and starts another.
//! `ask` runs the same agent from the command line, for debugging. `sandbox-exec` is the
//! trampoline tool servers start through (it applies the sandbox, then becomes the
//! server), and `sandbox-probe` says what sandbox this kernel allows.
//!
//! Modules: [`serve`] (the gateway protocol), [`outcome_frame`] (a job's outcome within the
//! frame size cap), [`lifetime`] (a worker's life tied to the gateway's),
//! [`warm_up`] (a new worker's HTTP client
//! used once before its first job), [`zygote`] (the template `per-request` workers are
//! forked from), [`code_pages`] (the template's code moved into huge pages, so a fork
//! has it mapped), [`ask`] (standalone); the agent itself is
//! the crate's library (`agent`, `media`, `provider`, `sandbox`, `tools`).

mod ask;
mod code_pages;
mod lifetime;
mod outcome_frame;
mod serve;
mod warm_up;
mod zygote;

pub(crate) use hermes_worker::agent;

use std::ffi::OsString;
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
    /// socket path from HERMES_WORKER_SOCKET, the one-time token from HERMES_WORKER_TOKEN
    /// and the tools' scratch directory from HERMES_WORKER_SCRATCH.
    Serve,
    /// Fork workers for the gateway on request (started by hermes-gateway in per-request
    /// mode, with its socket as stdin; not by hand).
    #[command(hide = true)]
    Zygote,
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
        /// Send this file with the question, through the media path a Telegram file
        /// takes: audio is transcribed, an image goes to providers with vision, a
        /// document as its text.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Write the files the answer sends back (a tool's chart, CSV or image, what the
        /// model attached) into this directory; without it they are only listed.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The question.
        question: String,
    },
    /// Apply a tool sandbox to this process, then run COMMAND in its place (how the worker
    /// starts tool servers; see docs/TOOLS.md). Exits 125 when the sandbox cannot be set
    /// up, 126/127 when COMMAND cannot be run.
    SandboxExec {
        /// The policy (hermes_worker::sandbox::Policy) as JSON.
        #[arg(long, value_name = "JSON")]
        policy_json: String,
        /// The command and its arguments, after `--`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Say which tool sandbox this kernel allows, and which guarantee is weaker and why.
    /// Exits 0 when every guarantee holds, 1 otherwise.
    SandboxProbe {
        /// Print the probe as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "serve" || a == "zygote")
    {
        lifetime::tie_to_the_gateway();
    }
    // Another process of the same user (a tool included) cannot read this process's
    // /proc/PID/environ or memory, nor ptrace it.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("cannot mark the worker non-dumpable: {e}");
    }
    let cli = Cli::parse();
    let cli = match cli.command {
        // Before anything could start a thread: the sandbox restricts the calling thread.
        Command::SandboxExec {
            policy_json,
            command,
        } => sandbox_exec(&policy_json, &command),
        Command::SandboxProbe { json } => sandbox_probe(json),
        command => Cli { command },
    };
    init_logging(matches!(cli.command, Command::Serve | Command::Zygote));
    if let Command::Zygote = cli.command {
        // Before the runtime: the template must stay one thread.
        zygote::run(http_client());
    }
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
    let client = http_client();
    let code = match cli.command {
        Command::Serve => {
            let socket = std::env::var("HERMES_WORKER_SOCKET").unwrap_or_default();
            let token = std::env::var("HERMES_WORKER_TOKEN").unwrap_or_default();
            let scratch =
                PathBuf::from(std::env::var_os("HERMES_WORKER_SCRATCH").unwrap_or_default());
            if socket.is_empty() || token.is_empty() {
                eprintln!(
                    "hermes-worker serve is started by hermes-gateway: HERMES_WORKER_SOCKET and \
                     HERMES_WORKER_TOKEN must be set. To ask a question by hand, use \
                     `hermes-worker ask --config FILE \"question\"`."
                );
                std::process::exit(serve::EXIT_REFUSED);
            }
            lifetime::end(runtime.block_on(serve::serve(
                serve::Gateway::Socket(socket),
                &token,
                &scratch,
                client,
                serve::Start {
                    warm_up: true,
                    one_job: false,
                },
            )))
        }
        Command::Ask {
            config,
            timeout,
            stream,
            file,
            out,
            question,
        } => runtime.block_on(ask::ask(
            &config,
            &question,
            ask::AskOptions {
                timeout: timeout.map(Duration::from_secs),
                stream,
                file,
                out,
            },
            client,
        )),
        Command::SandboxExec { .. } | Command::SandboxProbe { .. } | Command::Zygote => {
            unreachable!("handled before the runtime starts")
        }
    };
    std::process::exit(code);
}

fn http_client() -> reqwest::Client {
    match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build the HTTP client: {e}");
            std::process::exit(serve::EXIT_FAILED);
        }
    }
}

fn sandbox_exec(policy_json: &str, command: &[OsString]) -> ! {
    use hermes_worker::sandbox;
    let error = match (
        serde_json::from_str::<sandbox::Policy>(policy_json),
        command,
    ) {
        (Err(e), _) => sandbox::ExecError::Setup(format!("the policy is not valid JSON: {e}")),
        (Ok(_), []) => sandbox::ExecError::Setup("no command to run".into()),
        (Ok(policy), [program, args @ ..]) => sandbox::exec(&policy, program, args),
    };
    eprintln!("hermes-worker sandbox-exec: {error}");
    std::process::exit(error.exit_code());
}

fn sandbox_probe(json: bool) -> ! {
    let probe = hermes_worker::sandbox::probe();
    if json {
        match serde_json::to_string_pretty(&probe) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("cannot encode the probe: {e}");
                std::process::exit(serve::EXIT_FAILED);
            }
        }
    } else {
        println!("{probe}");
    }
    let full = probe.level() == hermes_worker::sandbox::Level::Full;
    std::process::exit(if full { 0 } else { 1 });
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

#[cfg(test)]
mod tests {
    /// reqwest builds its TLS client on rustls's default provider (ring's, unless one was
    /// installed), and a worker forked per message makes a new TLS connection every time.
    /// With X25519 offered first that costs the worker about 0.6 ms of CPU; rustls 0.23.48
    /// lists secp384r1 first, which ring computes without assembly: about 1.6 ms
    /// (docs/BENCHMARKS.md, "What the fakes do not show: TLS"). An update that does so
    /// must set the order itself (reqwest's `use_preconfigured_tls`).
    #[test]
    fn the_tls_key_exchange_offered_first_is_x25519() {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
        assert_eq!(
            provider.kx_groups.first().map(|group| group.name()),
            Some(rustls::NamedGroup::X25519)
        );
    }
}
