//! `hermes-worker ask`: one job from the command line, with the gateway's configuration
//! file and no gateway, for an operator finding out why the bot misbehaves. Progress goes
//! to stderr (attempts, retries, fallbacks, each tool call; with `--stream` the answer as
//! it grows), the answer to stdout, and after it, on stderr, what the question used at
//! each provider (tokens, and the cost where the provider or its prices tell it). The configured tool servers are started for this one
//! question and stopped after it, in the same sandbox as under the gateway (hiding the
//! configuration, its secret files and the state directory), with a scratch directory of
//! their own under `$TMPDIR` that is removed afterwards. Nobody can approve a call here:
//! calls to tools an entry says to confirm are denied.
//!
//! `--file PATH` sends a file with the question, through the same media path as a file
//! from Telegram ([`hermes_worker::media`]): audio is transcribed with `[transcription]`
//! (the transcript is printed), an image goes as an image part to the providers with
//! `vision = true`, a document as its text. Its kind is judged by its extension.
//!
//! Files the answer sends back go to `--out DIR`: the tools write them into an output
//! directory inside their scratch directory (the only place the sandbox lets them write),
//! and each file the answer names is copied from there into DIR as the gateway would take
//! it: a regular file, never through a link.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hermes_config::{Config, EXIT_CONFIG, load_or_report};
use hermes_protocol::{
    Attachment, ChatMessage, Event, Failure, FailureClass, Job, JobId, MediaKind, Outcome, Role,
    Usage,
};
use tokio::sync::mpsc;

use crate::agent;
use hermes_worker::sandbox::{Policy, Sandbox};
use hermes_worker::tools::Toolbox;

pub struct AskOptions {
    pub timeout: Option<Duration>,
    pub stream: bool,
    /// A file sent with the question, as if it came with the message.
    pub file: Option<PathBuf>,
    /// Where the answer's files are written.
    pub out: Option<PathBuf>,
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
    let attachments = match &options.file {
        None => Vec::new(),
        Some(path) => match attachment(path) {
            Ok(a) => {
                eprintln!("{}", describe_file(&a, &plans));
                vec![a]
            }
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return 1;
            }
        },
    };
    let question = match attachments.first() {
        Some(a) => format!("{}\n{question}", a.placeholder),
        None => question.to_string(),
    };
    messages.push(ChatMessage::new(Role::User, question.trim()));
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
        attachments,
        transcription: plans.transcription.clone().map(Box::new),
        output_dir: None,
    };
    let scratch = std::env::temp_dir().join(format!("hermes-ask-{}", std::process::id()));
    let output_dir = hermes_config::absolute(&scratch).join("out");
    if let Err(e) = std::fs::create_dir_all(&output_dir) {
        eprintln!("error: cannot make {}: {e}", output_dir.display());
        return 1;
    }
    let mut job = job;
    job.output_dir = Some(output_dir.display().to_string());
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        // Streamed text is printed as it comes, without line breaks of its own; any other
        // line starts on a fresh one. Usage is summed, for after the answer.
        let mut mid_line = false;
        let mut used: Vec<(String, String, Usage)> = Vec::new();
        while let Some(event) = events.recv().await {
            if let Event::Usage {
                provider,
                model,
                usage,
            } = event
            {
                add_usage(&mut used, provider, model, usage);
                continue;
            }
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
        used
    });
    let deadline = agent::deadline_of(&job);
    let mut toolbox = Toolbox::default();
    toolbox.set_sandbox(Some(Sandbox::new(Policy {
        scratch: hermes_config::absolute(&scratch),
        ..Policy::default()
    })));
    toolbox.set_output(Some(output_dir.clone()));
    toolbox.prepare(&job.tools, deadline).await;
    let run = agent::run_with_tools(&job, &client, &events_tx, &toolbox, deadline).await;
    toolbox.shutdown().await;
    if let Outcome::Reply(reply) = &run.outcome {
        keep_files(&output_dir, &reply.files, options.out.as_deref());
    }
    let _ = std::fs::remove_dir_all(&scratch);
    drop(events_tx);
    let used = printer.await.unwrap_or_default();
    if run.abandoned_tools {
        eprintln!("a tool call was still running at the deadline; its server has been stopped");
    }
    let outcome = run.outcome;
    match outcome {
        Outcome::Reply(reply) => {
            for heard in &reply.heard {
                eprintln!("transcript: {heard}");
            }
            eprintln!("[{}] answered (model {})", reply.provider, reply.model);
            println!("{}", reply.text);
            let _ = std::io::stdout().flush();
            print_usage(&used);
            0
        }
        Outcome::Failed(failure) => {
            eprintln!("error: {failure}");
            eprintln!("hint: {}", advice(&failure));
            print_usage(&used);
            1
        }
    }
}

/// Adds one call's `usage` to its provider and model's line.
fn add_usage(used: &mut Vec<(String, String, Usage)>, provider: String, model: String, u: Usage) {
    match used
        .iter_mut()
        .find(|(p, m, _)| *p == provider && *m == model)
    {
        Some((_, _, sum)) => {
            sum.prompt_tokens = sum.prompt_tokens.saturating_add(u.prompt_tokens);
            sum.completion_tokens = sum.completion_tokens.saturating_add(u.completion_tokens);
            sum.cached_tokens = sum.cached_tokens.saturating_add(u.cached_tokens);
            // One call of unknown cost makes the sum unknown.
            sum.cost_micros = sum.cost_micros.zip(u.cost_micros).map(|(a, b)| a + b);
        }
        None => used.push((provider, model, u)),
    }
}

/// `usage [main] model m: 100 prompt tokens (40 cached), 20 completion; cost $0.00012`,
/// a line per provider and model that answered; a line saying so when none reported any.
fn print_usage(used: &[(String, String, Usage)]) {
    if used.is_empty() {
        eprintln!("usage: none reported by the provider");
    }
    for (provider, model, u) in used {
        let cost = match u.cost_micros {
            Some(micros) => format!("cost {}", hermes_protocol::format_money(micros)),
            None => "cost unknown (no usage.cost from the provider, no prices configured)".into(),
        };
        eprintln!(
            "usage [{provider}] model {model}: {} prompt tokens ({} cached), {} completion; {cost}",
            u.prompt_tokens, u.cached_tokens, u.completion_tokens
        );
    }
}

/// Copies each of `files` (names in `from`) into `out`, or lists them when there is no
/// `out`; a name that is not a regular file there (a link, a directory) is refused.
fn keep_files(from: &Path, files: &[String], out: Option<&Path>) {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(out) = out else {
        if !files.is_empty() {
            eprintln!(
                "the answer sends {} file(s): {}; use --out DIR to keep them",
                files.len(),
                files.join(", ")
            );
        }
        return;
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: cannot make {}: {e}", out.display());
        return;
    }
    for name in files {
        let copied = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(from.join(name))
            .and_then(|mut file| {
                if !file.metadata()?.is_file() {
                    return Err(std::io::Error::other("not a regular file"));
                }
                let mut to = std::fs::File::create(out.join(name))?;
                std::io::copy(&mut file, &mut to)
            });
        match copied {
            Ok(bytes) => eprintln!("file: {} ({bytes} bytes)", out.join(name).display()),
            Err(e) => eprintln!("file {name} not kept: {e}"),
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
        Event::Usage {
            provider, usage, ..
        } => format!("[{provider}] used {} tokens", usage.tokens()),
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
        FailureClass::Media => {
            "the file could not be given to the model: see [transcription], vision = true, and the supported file types in docs/CHAT.md"
        }
        FailureClass::OverBudget => "a [budgets] cap is spent (the gateway's check; ask has none)",
    }
}

/// The file at `path` as an attachment, its kind and type judged by its extension.
fn attachment(path: &Path) -> std::io::Result<Attachment> {
    let size = std::fs::metadata(path)?.len();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let (kind, mime) = match extension.as_str() {
        "ogg" | "oga" | "opus" => (MediaKind::Voice, Some("audio/ogg")),
        "mp3" => (MediaKind::Audio, Some("audio/mpeg")),
        "m4a" => (MediaKind::Audio, Some("audio/mp4")),
        "wav" => (MediaKind::Audio, Some("audio/wav")),
        "flac" => (MediaKind::Audio, Some("audio/flac")),
        "webm" => (MediaKind::Audio, Some("audio/webm")),
        "jpg" | "jpeg" => (MediaKind::Image, Some("image/jpeg")),
        "png" => (MediaKind::Image, Some("image/png")),
        "webp" => (MediaKind::Image, Some("image/webp")),
        "gif" => (MediaKind::Image, Some("image/gif")),
        "pdf" => (MediaKind::Document, Some("application/pdf")),
        _ => (MediaKind::Document, None),
    };
    let placeholder = match kind {
        MediaKind::Voice | MediaKind::Audio => "[voice note]".to_string(),
        MediaKind::Image => format!("[photo: {file_name}]"),
        MediaKind::Document => format!("[file: {file_name}]"),
    };
    Ok(Attachment {
        kind,
        path: hermes_config::absolute(path).display().to_string(),
        file_name,
        mime_type: mime.map(str::to_string),
        size,
        duration_secs: None,
        placeholder,
    })
}

/// What will be done with the file, for stderr.
fn describe_file(a: &Attachment, plans: &hermes_config::JobPlans) -> String {
    match a.kind {
        MediaKind::Voice | MediaKind::Audio => match &plans.transcription {
            Some(t) => format!(
                "{} ({} bytes): transcribing with {} ({}/audio/transcriptions, model {})",
                a.file_name, a.size, t.provider.name, t.provider.base_url, t.model
            ),
            None => format!(
                "{}: audio, but no [transcription] is configured",
                a.file_name
            ),
        },
        MediaKind::Image => {
            let vision: Vec<&str> = plans
                .providers
                .iter()
                .filter(|p| p.vision)
                .map(|p| p.name.as_str())
                .collect();
            if vision.is_empty() {
                format!(
                    "{}: an image, but no provider has vision = true",
                    a.file_name
                )
            } else {
                format!(
                    "{} ({} bytes): sent as an image part to {}",
                    a.file_name,
                    a.size,
                    vision.join(", ")
                )
            }
        }
        MediaKind::Document => format!(
            "{} ({} bytes): given to the model as text",
            a.file_name, a.size
        ),
    }
}
