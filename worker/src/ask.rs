//! `hermes-worker ask`: one job from the command line, with the gateway's configuration
//! file and no gateway, for an operator finding out why the bot misbehaves. Progress goes
//! to stderr (attempts, retries, fallbacks, each tool call; with `--stream` the answer as
//! it grows), the answer to stdout. The configured tool servers are started for this one
//! question and stopped after it, in the same sandbox as under the gateway (hiding the
//! configuration, its secret files and the state directory), with a scratch directory of
//! their own under `$TMPDIR` that is removed afterwards. Nobody can approve a call here:
//! calls to tools an entry says to confirm are denied.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use hermes_config::{Config, EXIT_CONFIG, load_or_report};
use hermes_protocol::{ChatMessage, Event, Failure, FailureClass, Job, JobId, Outcome, Role};
use tokio::sync::mpsc;

use crate::agent;
use hermes_worker::sandbox::{Policy, Sandbox};
use hermes_worker::tools::Toolbox;

pub struct AskOptions {
    pub timeout: Option<Duration>,
    pub stream: bool,
}

pub async fn ask(
    config_path: &Path,
    question: &str,
    options: AskOptions,
    client: reqwest::Client,
) -> i32 {
    let Some((config, plans)) =
        load_or_report(config_path, Config::job_plans, |e| eprintln!("{e}"))
    else {
        return EXIT_CONFIG;
    };
    let mut messages = Vec::new();
    if let Some(prompt) = &config.agent.system_prompt {
        messages.push(ChatMessage::new(Role::System, prompt.clone()));
    }
    messages.push(ChatMessage::new(Role::User, question));
    let timeout = options
        .timeout
        .unwrap_or_else(|| config.workers.job_timeout());
    let job = Job {
        id: JobId(1),
        chat_id: 0,
        messages,
        providers: plans.providers,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        stream: options.stream,
        tools: plans.tools,
        max_steps: config.agent.max_steps,
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        // Streamed text is printed as it comes, without line breaks of its own; any other
        // line starts on a fresh one.
        let mut mid_line = false;
        while let Some(event) = events.recv().await {
            if let Event::Delta(piece) = &event {
                eprint!("{piece}");
                let _ = std::io::stderr().flush();
                mid_line = true;
                continue;
            }
            if std::mem::take(&mut mid_line) {
                eprintln!();
            }
            eprintln!("{}", describe(&event));
        }
        if mid_line {
            eprintln!();
        }
    });
    let deadline = agent::deadline_of(&job);
    let scratch = std::env::temp_dir().join(format!("hermes-ask-{}", std::process::id()));
    let mut toolbox = Toolbox::default();
    toolbox.set_sandbox(Some(Sandbox::new(Policy {
        scratch: hermes_config::absolute(&scratch),
        ..Policy::default()
    })));
    toolbox.prepare(&job.tools, deadline).await;
    let run = agent::run_with_tools(&job, &client, &events_tx, &toolbox, deadline).await;
    toolbox.shutdown().await;
    let _ = std::fs::remove_dir_all(&scratch);
    drop(events_tx);
    let _ = printer.await;
    if run.abandoned_tools {
        eprintln!("a tool call was still running at the deadline; its server has been stopped");
    }
    let outcome = run.outcome;
    match outcome {
        Outcome::Reply(reply) => {
            eprintln!("[{}] answered (model {})", reply.provider, reply.model);
            println!("{}", reply.text);
            0
        }
        Outcome::Failed(failure) => {
            eprintln!("error: {failure}");
            eprintln!("hint: {}", advice(&failure));
            1
        }
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::Attempt { provider, attempt } => format!("[{provider}] attempt {attempt}"),
        Event::Retrying {
            provider,
            after_ms,
            reason,
        } => {
            format!(
                "[{provider}] {reason}; retrying in {:.1} s",
                *after_ms as f64 / 1000.0
            )
        }
        Event::FellBack { from, failure } => {
            format!("[{from}] failed: {failure}; trying the next provider, if any")
        }
        Event::Delta(text) => text.clone(),
        Event::ToolStarted { name } => format!("calling {name} …"),
        Event::ToolFinished { name, ok, ms } => {
            format!("{name} {} in {ms} ms", if *ok { "done" } else { "failed" })
        }
    }
}

fn advice(failure: &Failure) -> &'static str {
    match failure.class() {
        FailureClass::QuotaExhausted => {
            "the provider account is out of quota or balance: top it up, or add a fallback [[providers]] entry"
        }
        FailureClass::ProviderAuth => {
            "the provider refused the key: check api_key_env / api_key_file and the key itself"
        }
        FailureClass::RateLimited => {
            "the provider is rate-limiting this key: wait, lower the load, or add a fallback provider"
        }
        FailureClass::ProviderUnavailable => {
            "the provider is down or unreachable from here: check base_url, the network and proxies"
        }
        FailureClass::ContextTooLong => "the conversation does not fit the model's context window",
        FailureClass::ProviderRejected => {
            "the provider refused the request itself: check model and base_url"
        }
        FailureClass::ProviderProtocol => {
            "the answer was not an OpenAI-compatible chat completion: check base_url"
        }
        FailureClass::TimedOut => {
            "no answer within the job timeout: raise workers.job_timeout_secs or --timeout"
        }
        FailureClass::WorkerCrashed | FailureClass::Cancelled => "the job did not finish",
    }
}
