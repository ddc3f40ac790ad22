//! `hermes-config`: the configuration file, one TOML file that both binaries read
//! (`hermes-worker ask` runs a job with the same file the gateway uses).
//!
//! An operator who gets the file wrong must learn everything that is wrong at once, each
//! problem with its key and line, before anything starts. So the file is not handed to
//! serde in one piece (which stops at the first error): it is parsed into a spanned tree,
//! and every key is taken and type-checked on its own by [`Section::take`]. Keys nobody
//! took are reported as unknown. Every key has a default except the Telegram token's
//! source (which defaults to `$TELEGRAM_BOT_TOKEN`) and at least one `[[providers]]` entry.
//!
//! Secrets are never required inline: they name an environment variable or a file, and
//! both reach a systemd service as credentials (`$CREDENTIALS_DIRECTORY`), which is how
//! `hermes-gateway service install` delivers them: a `*_env` variable that is unset is read
//! from the credential of the same name, and a relative `*_file` is looked up among the
//! credentials before beside the configuration file. See [`read_variable`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use hermes_protocol::sandbox::Confinement;
use hermes_protocol::{Confirm, ProviderPlan, Secret, ToolServer, TranscriptionPlan};

/// Exit status for a configuration the process cannot run with (`EX_CONFIG` of
/// sysexits.h); the systemd unit does not restart on it.
pub const EXIT_CONFIG: i32 = 78;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from.
    pub path: PathBuf,
    pub telegram: TelegramConfig,
    pub providers: Vec<ProviderConfig>,
    pub workers: WorkersConfig,
    pub state: StateConfig,
    pub agent: AgentConfig,
    pub tools: ToolsConfig,
    /// `[transcription]`; `None`: voice notes get a reply saying voice is not enabled.
    pub transcription: Option<TranscriptionConfig>,
}

/// `[transcription]`: voice notes and audio, transcribed by an OpenAI-compatible
/// `POST {base_url}/audio/transcriptions` of one `[[providers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptionConfig {
    /// The `[[providers]]` entry whose base URL and key are used.
    pub provider: String,
    pub model: String,
    /// Longer recordings (as Telegram states their length) are refused before download.
    pub max_seconds: u32,
    /// Show the transcript as a quoted line above the answer.
    pub show_transcript: bool,
    pub line: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct TelegramConfig {
    pub token: SecretSource,
    pub api_url: String,
    /// Telegram user ids allowed to talk to the agent. Empty: nobody.
    pub allowed_users: Vec<i64>,
    /// Long-poll duration of one `getUpdates`.
    pub poll_timeout_secs: u32,
    /// Cap of the backoff between failed Telegram calls.
    pub retry_max_secs: u64,
    /// Messages a chat may have waiting for its next turn; one more is refused.
    pub max_queued_per_chat: usize,
    /// A reply still undelivered this long after it was committed is dropped.
    pub outbox_max_age_secs: u64,
    /// Users who may switch the model with `/model NAME` (they must also be allowed).
    pub admin_users: Vec<i64>,
    /// Show the answer while it is written (one message, edited as text arrives).
    pub streaming: bool,
    /// Least time between two edits of a streamed answer.
    pub edit_interval_ms: u64,
    /// Which group messages the bot answers.
    pub group_mode: GroupMode,
    /// Files (voice notes, photos, documents) larger than this are refused; 20 is the Bot
    /// API's own limit for bots.
    pub max_file_mb: u64,
    /// Bound on fetching one file from Telegram (`getFile` and the download).
    pub download_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupMode {
    /// Only messages that mention the bot or reply to one of its messages.
    Mention,
    /// Every text message in the group.
    All,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub base_url: String,
    pub model: String,
    /// None: no `Authorization` header (a local server).
    pub api_key: Option<SecretSource>,
    pub request_timeout_secs: u64,
    pub max_retries: u32,
    /// After this provider answers "quota exhausted", jobs skip it this long, then one job
    /// probes it again.
    pub quota_cooldown_secs: u64,
    /// The model reads images (OpenAI-compatible `image_url` content parts).
    pub vision: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerMode {
    /// Workers are started ahead and serve many jobs; recycled after any fault.
    Pool,
    /// A fresh worker for every job.
    PerRequest,
}

impl WorkerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::Pool => "pool",
            WorkerMode::PerRequest => "per-request",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkersConfig {
    pub mode: WorkerMode,
    /// Workers (pool) or concurrent jobs (per-request).
    pub pool_size: usize,
    pub job_timeout_secs: u64,
    /// None: `hermes-worker` beside the gateway's own binary.
    pub command: Option<PathBuf>,
    /// A pool worker is replaced after this many jobs.
    pub max_jobs_per_worker: u32,
    /// `RLIMIT_AS` of each worker in MiB; 0 for none.
    pub memory_limit_mb: u64,
    /// Between SIGTERM and SIGKILL of a worker's process group.
    pub kill_grace_secs: u64,
    /// On SIGTERM, how long jobs in flight may still finish before they are cancelled.
    pub shutdown_drain_secs: u64,
    /// More worker deaths than this within `restart_window_secs` pause worker starts.
    pub max_restarts: u32,
    pub restart_window_secs: u64,
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    /// None: `$STATE_DIRECTORY`, else `./state`.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Sent first in every job when set.
    pub system_prompt: Option<String>,
    /// Turns of the conversation (user and assistant messages) sent with each job.
    pub max_history_messages: usize,
    /// Provider round trips with tool calls per job before the agent stops.
    pub max_steps: u32,
}

#[derive(Debug, Clone, Default)]
pub struct ToolsConfig {
    /// `[[tools.mcp]]`: MCP servers over stdio, started by each worker.
    pub mcp: Vec<McpServerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    /// Names of the gateway's environment variables passed to the server; nothing else is.
    pub env: Vec<String>,
    pub timeout_secs: u64,
    /// Paths the server may read (and execute) besides what the sandbox leaves readable,
    /// even inside a hidden path. Absolute.
    pub readable: Vec<PathBuf>,
    /// Paths the server may write besides its scratch directory. Absolute.
    pub writable: Vec<PathBuf>,
    /// `false`: the server runs unconfined (warned about at start-up and on reload).
    pub sandbox: bool,
    /// Its tools that need a user's approval before each call.
    pub confirm: Confirm,
    /// How long an approval is waited for before it counts as denied.
    pub confirm_timeout_secs: u64,
    /// Where the entry is, for problems found later (an unset variable).
    pub key: String,
    pub line: Option<usize>,
}

impl McpServerConfig {
    /// The server as a job carries it, with the variables it passes through resolved. An
    /// unset one is an error naming it: the operator asked for it by name.
    pub fn spec(&self) -> Result<ToolServer, String> {
        let mut env = Vec::new();
        for name in &self.env {
            match read_variable(name) {
                Ok(value) => env.push((name.clone(), Secret::new(value))),
                Err(Unset) => return Err(format!("environment variable {name} is not set")),
            }
        }
        Ok(ToolServer {
            name: self.name.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            env,
            call_timeout_ms: self.timeout_secs.saturating_mul(1000),
            sandbox: self.sandbox.then(|| Confinement {
                readable: self.readable.clone(),
                writable: self.writable.clone(),
                ..Confinement::default()
            }),
            confirm: self.confirm.clone(),
            confirm_timeout_ms: self.confirm_timeout_secs.saturating_mul(1000),
        })
    }
}

/// Where a secret comes from, and which key of the file said so (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    pub from: SecretFrom,
    pub key: String,
    pub line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFrom {
    Env(String),
    /// `base` is the config file's directory, for relative paths outside systemd.
    File {
        path: PathBuf,
        base: PathBuf,
    },
}

impl SecretSource {
    /// Reads the secret now. The problem names the variable or file, and the key that
    /// named it.
    pub fn resolve(&self) -> Result<Secret, Problem> {
        self.read().map_err(|message| self.problem(message))
    }

    fn read(&self) -> Result<Secret, String> {
        match &self.from {
            SecretFrom::Env(name) => match read_variable(name) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(Unset) => Err(format!(
                    "environment variable {name} is not set (nor a credential {name} in $CREDENTIALS_DIRECTORY)"
                )),
            },
            SecretFrom::File { path, base } => {
                let full = secret_file_path(path, base);
                match std::fs::read_to_string(&full) {
                    Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                    Ok(_) => Err(format!("file {} is empty", full.display())),
                    Err(e) => Err(format!("cannot read {}: {e}", full.display())),
                }
            }
        }
    }

    /// The file the secret is read from, when it is one.
    pub fn file(&self) -> Option<PathBuf> {
        match &self.from {
            SecretFrom::Env(_) => None,
            SecretFrom::File { path, base } => Some(secret_file_path(path, base)),
        }
    }

    /// "env TELEGRAM_BOT_TOKEN" or "file /run/credentials/…", for check-config's report.
    pub fn describe(&self) -> String {
        match &self.from {
            SecretFrom::Env(name) => format!("env {name}"),
            SecretFrom::File { path, base } => {
                format!("file {}", secret_file_path(path, base).display())
            }
        }
    }

    fn problem(&self, message: String) -> Problem {
        Problem {
            line: self.line,
            key: self.key.clone(),
            message,
        }
    }
}

/// Neither the environment nor the credentials hold the variable.
#[derive(Debug, PartialEq, Eq)]
pub struct Unset;

/// The value of the environment variable `name`, else of the systemd credential named
/// `name` (`$CREDENTIALS_DIRECTORY/<name>`). The environment wins, so a variable set by hand
/// overrides what the unit delivers; the credential is how the unit delivers a `*_env`
/// secret without putting it in the unit file or the service's environment.
pub fn read_variable(name: &str) -> Result<String, Unset> {
    read_variable_from(name, |n| std::env::var_os(n))
}

/// [`read_variable`] with the environment given by `var`.
fn read_variable_from(
    name: &str,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<String, Unset> {
    if let Some(value) = var(name) {
        return value.into_string().map_err(|_| Unset);
    }
    let creds = var("CREDENTIALS_DIRECTORY").ok_or(Unset)?;
    if !valid_credential_name(name) {
        return Err(Unset);
    }
    let text = std::fs::read_to_string(Path::new(&creds).join(name)).map_err(|_| Unset)?;
    // A credential file made with `echo` ends in a newline that is not part of the secret.
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// A name systemd accepts for a credential: one file name, no '/'.
pub fn valid_credential_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

fn secret_file_path(path: &Path, base: &Path) -> PathBuf {
    secret_file_path_in(
        path,
        base,
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .as_deref()
            .map(Path::new),
    )
}

/// A relative `*_file` is a credential's name first (when the credential exists), then a
/// path beside the configuration file; an absolute one is itself.
fn secret_file_path_in(path: &Path, base: &Path, credentials: Option<&Path>) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    if let Some(creds) = credentials {
        let candidate = creds.join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    base.join(path)
}

impl ProviderConfig {
    /// The provider as a job carries it, key resolved.
    pub fn plan(&self) -> Result<ProviderPlan, Problem> {
        let api_key = match &self.api_key {
            Some(source) => Some(source.resolve()?),
            None => None,
        };
        Ok(ProviderPlan {
            name: self.name.clone(),
            base_url: self.base_url.trim_end_matches('/').to_string(),
            model: self.model.clone(),
            api_key,
            request_timeout_ms: self.request_timeout_secs.saturating_mul(1000),
            max_retries: self.max_retries,
            vision: self.vision,
        })
    }
}

impl WorkersConfig {
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_secs)
    }
}

impl Config {
    /// Reads and validates `path`. Secrets are not read here: see [`Config::job_plans`] and
    /// [`SecretSource::resolve`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, path, &base).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Validates `text`; `base` anchors relative secret file paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, Vec<Problem>> {
        let root = DeTable::parse(text).map_err(|e| {
            vec![Problem {
                line: e.span().map(|s| line_of(text, s.start)),
                key: String::new(),
                message: format!("not valid TOML: {}", e.message().trim()),
            }]
        })?;
        let mut doc = Doc {
            text,
            base,
            problems: Vec::new(),
        };
        let root_span = root.span();
        let root = root.into_inner();
        let mut top = Section::new("", Some((&root, root_span)));

        let telegram_table = top.table("telegram", &mut doc);
        let telegram = doc.telegram(telegram_table.as_ref());
        let providers = doc.providers(&mut top);
        let workers_table = top.table("workers", &mut doc);
        let workers = doc.workers(workers_table.as_ref());
        let state_table = top.table("state", &mut doc);
        let state = doc.state(state_table.as_ref());
        let agent_table = top.table("agent", &mut doc);
        let agent = doc.agent(agent_table.as_ref());
        let tools_table = top.table("tools", &mut doc);
        let tools = doc.tools(tools_table.as_ref());
        let transcription_table = top.table("transcription", &mut doc);
        let transcription = transcription_table
            .as_ref()
            .and_then(|t| doc.transcription(t, &providers));
        top.finish(&mut doc);
        for server in tools.mcp.iter().filter(|m| m.confirm != Confirm::Never) {
            if server.confirm_timeout_secs >= workers.job_timeout_secs {
                doc.problems.push(Problem {
                    line: server.line,
                    key: format!("{}.confirm_timeout_secs", server.key),
                    message: format!(
                        "{} s is not less than workers.job_timeout_secs ({} s): the job would \
                         time out before an approval could",
                        server.confirm_timeout_secs, workers.job_timeout_secs
                    ),
                });
            }
        }

        if doc.problems.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                telegram,
                providers,
                workers,
                state,
                agent,
                tools,
                transcription,
            })
        } else {
            doc.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(doc.problems)
        }
    }

    /// What no tool may read, as far as this file tells: the file itself, every secret
    /// file it names, systemd's credentials directory (`$CREDENTIALS_DIRECTORY`) and
    /// `state.dir` when set. Absolute (relative ones are taken from the working
    /// directory). The gateway adds the state and runtime directories it chose.
    pub fn hidden_paths(&self) -> Vec<PathBuf> {
        let secrets = std::iter::once(&self.telegram.token)
            .chain(self.providers.iter().filter_map(|p| p.api_key.as_ref()))
            .filter_map(SecretSource::file);
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let mut hidden: Vec<PathBuf> = std::iter::once(self.path.clone())
            .chain(secrets)
            .chain(credentials)
            .chain(self.state.dir.clone())
            .map(|p| absolute(&p))
            .collect();
        hidden.sort();
        hidden.dedup();
        hidden
    }

    /// The provider chain and the tool servers as a job carries them, every key and
    /// passed-through variable read now; each one that cannot be is a problem.
    pub fn job_plans(&self) -> Result<JobPlans, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut plans = JobPlans::default();
        for provider in &self.providers {
            match provider.plan() {
                Ok(plan) => plans.providers.push(plan),
                Err(problem) => problems.push(problem),
            }
        }
        let hidden = self.hidden_paths();
        for server in &self.tools.mcp {
            match server.spec() {
                Ok(mut spec) => {
                    if let Some(confinement) = &mut spec.sandbox {
                        confinement.hidden = hidden.clone();
                    }
                    plans.tools.push(spec);
                }
                Err(message) => problems.push(Problem {
                    line: server.line,
                    key: format!("{}.env", server.key),
                    message,
                }),
            }
        }
        plans.transcription = self.transcription.as_ref().and_then(|t| {
            let provider = plans.providers.iter().find(|p| p.name == t.provider)?;
            Some(TranscriptionPlan {
                provider: provider.clone(),
                model: t.model.clone(),
            })
        });
        if problems.is_empty() {
            Ok(plans)
        } else {
            Err(problems)
        }
    }
}

/// `path` from the working directory when relative; as it is when that cannot be known.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What every job of this configuration is sent with.
#[derive(Debug, Clone, Default)]
pub struct JobPlans {
    /// Tried in order: the first is the primary, the rest are fallbacks.
    pub providers: Vec<ProviderPlan>,
    pub tools: Vec<ToolServer>,
    /// `[transcription]` with its provider's key read.
    pub transcription: Option<TranscriptionPlan>,
}

/// Reads the file at `path`, then lets the caller judge it against this machine
/// (`resolve`: secrets read, a binary found) and turn it into what it runs with. The one
/// sequence `run`, a reload, `check-config` and `hermes-worker ask` follow: the problems
/// of both steps are one [`ConfigError`], given to `report`, and the caller gets nothing
/// to run with.
pub fn load_or_report<T>(
    path: &Path,
    resolve: impl FnOnce(&Config) -> Result<T, Vec<Problem>>,
    report: impl FnOnce(ConfigError),
) -> Option<(Config, T)> {
    let loaded = Config::load(path).and_then(|config| match resolve(&config) {
        Ok(resolved) => Ok((config, resolved)),
        Err(problems) => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }),
    });
    loaded.map_err(report).ok()
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    /// Dotted path of the key, e.g. `workers.pool_size` or `providers[1].model`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", invalid_summary(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn invalid_summary(path: &Path, problems: &[Problem]) -> String {
    let mut s = format!("invalid configuration in {}:", path.display());
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// The file being validated and the problems found so far.
struct Doc<'t> {
    text: &'t str,
    base: &'t Path,
    problems: Vec<Problem>,
}

type Table<'a, 'i> = (&'a DeTable<'i>, Range<usize>);

/// One table of the file. Every key read goes through [`Section::take`], which records it
/// as known, so [`Section::finish`] can name everything else as unknown.
struct Section<'a, 'i> {
    path: String,
    table: Option<Table<'a, 'i>>,
    known: Vec<&'static str>,
}

impl<'a, 'i> Section<'a, 'i> {
    fn new(path: &str, table: Option<Table<'a, 'i>>) -> Self {
        Section {
            path: path.to_string(),
            table,
            known: Vec::new(),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn line(&self, doc: &Doc) -> Option<usize> {
        self.table
            .as_ref()
            .map(|(_, span)| line_of(doc.text, span.start))
    }

    fn raw(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.known.push(key);
        self.table.as_ref().and_then(|(t, _)| t.get(key))
    }

    /// The value of `key` as a `T`, or None when absent or of the wrong type (a problem).
    fn take<T: DeserializeOwned>(&mut self, key: &'static str, doc: &mut Doc) -> Option<T> {
        let value = self.raw(key)?;
        match T::deserialize(value.clone().into_deserializer()) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                doc.problems.push(Problem {
                    line: Some(line_of(doc.text, span.start)),
                    key: self.key_path(key),
                    message: e.message().trim().to_string(),
                });
                None
            }
        }
    }

    fn take_or<T: DeserializeOwned>(&mut self, key: &'static str, default: T, doc: &mut Doc) -> T {
        self.take(key, doc).unwrap_or(default)
    }

    fn require<T: DeserializeOwned>(&mut self, key: &'static str, doc: &mut Doc) -> Option<T> {
        let present = self
            .table
            .as_ref()
            .is_some_and(|(t, _)| t.get(key).is_some());
        if !present {
            self.known.push(key);
            doc.problems.push(Problem {
                line: self.line(doc),
                key: self.key_path(key),
                message: "missing; this key has no default".into(),
            });
            return None;
        }
        self.take(key, doc)
    }

    /// A number that must lie in `range`.
    fn take_in<T>(
        &mut self,
        key: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
        doc: &mut Doc,
    ) -> T
    where
        T: DeserializeOwned + PartialOrd + Copy + fmt::Display,
    {
        let line = self.raw_line(key, doc);
        match self.take(key, doc) {
            Some(v) if range.contains(&v) => v,
            Some(v) => {
                doc.problems.push(Problem {
                    line,
                    key: self.key_path(key),
                    message: format!("{v} is out of range ({}..={})", range.start(), range.end()),
                });
                default
            }
            None => default,
        }
    }

    fn raw_line(&self, key: &str, doc: &Doc) -> Option<usize> {
        self.table
            .as_ref()
            .and_then(|(t, _)| t.get(key))
            .map(|v| line_of(doc.text, v.span().start))
    }

    /// A sub-table; a value of another type is a problem.
    fn table(&mut self, key: &'static str, doc: &mut Doc) -> Option<Table<'a, 'i>> {
        let value = self.raw(key)?;
        match value.get_ref() {
            DeValue::Table(t) => Some((t, value.span())),
            _ => {
                doc.problems.push(Problem {
                    line: Some(line_of(doc.text, value.span().start)),
                    key: self.key_path(key),
                    message: "must be a table".into(),
                });
                None
            }
        }
    }

    fn finish(self, doc: &mut Doc) {
        let Some((table, _)) = self.table else {
            return;
        };
        for (key, value) in table.iter() {
            if !self.known.contains(&key.get_ref().as_ref()) {
                doc.problems.push(Problem {
                    line: Some(line_of(doc.text, key.span().start.min(value.span().start))),
                    key: self.key_path(key.get_ref()),
                    message: format!("unknown key (known here: {})", self.known.join(", ")),
                });
            }
        }
    }
}

impl Doc<'_> {
    fn secret(
        &mut self,
        section: &mut Section,
        env_key: &'static str,
        file_key: &'static str,
    ) -> Option<SecretSource> {
        let env_line = section.raw_line(env_key, self);
        let file_line = section.raw_line(file_key, self);
        let env: Option<String> = section.take(env_key, self);
        let file: Option<PathBuf> = section.take(file_key, self);
        match (env, file) {
            (Some(_), Some(_)) => {
                self.problems.push(Problem {
                    line: file_line,
                    key: section.key_path(file_key),
                    message: format!("set either {env_key} or {file_key}, not both"),
                });
                None
            }
            (Some(name), None) => Some(SecretSource {
                from: SecretFrom::Env(name),
                key: section.key_path(env_key),
                line: env_line,
            }),
            (None, Some(path)) => Some(SecretSource {
                from: SecretFrom::File {
                    path,
                    base: self.base.to_path_buf(),
                },
                key: section.key_path(file_key),
                line: file_line,
            }),
            (None, None) => None,
        }
    }

    fn url(&mut self, section: &mut Section, key: &'static str, value: Option<String>) -> String {
        let Some(url) = value else {
            return String::new();
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let ok = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'));
        if !ok {
            let line = section.raw_line(key, self);
            self.problems.push(Problem {
                line,
                key: section.key_path(key),
                message: format!("{url:?} is not an http:// or https:// URL"),
            });
        }
        url
    }

    fn telegram(&mut self, table: Option<&Table>) -> TelegramConfig {
        let mut s = Section::new("telegram", table.cloned());
        let token = self
            .secret(&mut s, "token_env", "token_file")
            .unwrap_or(SecretSource {
                from: SecretFrom::Env("TELEGRAM_BOT_TOKEN".into()),
                key: "telegram.token_env".into(),
                line: None,
            });
        let api_url = s.take("api_url", self);
        let api_url = match api_url {
            Some(u) => self.url(&mut s, "api_url", Some(u)),
            None => "https://api.telegram.org".to_string(),
        };
        let config = TelegramConfig {
            token,
            api_url: api_url.trim_end_matches('/').to_string(),
            allowed_users: s.take_or("allowed_users", Vec::new(), self),
            poll_timeout_secs: s.take_in("poll_timeout_secs", 30, 0..=50, self),
            retry_max_secs: s.take_in("retry_max_secs", 30, 1..=3600, self),
            max_queued_per_chat: s.take_in("max_queued_per_chat", 20, 1..=1000, self),
            outbox_max_age_secs: s.take_in("outbox_max_age_secs", 86_400, 60..=30 * 86_400, self),
            admin_users: s.take_or("admin_users", Vec::new(), self),
            streaming: s.take_or("streaming", true, self),
            edit_interval_ms: s.take_in("edit_interval_ms", 1500, 100..=60_000, self),
            group_mode: s.take_or("group_mode", GroupMode::Mention, self),
            max_file_mb: s.take_in("max_file_mb", 20, 1..=20, self),
            download_timeout_secs: s.take_in("download_timeout_secs", 60, 1..=3600, self),
        };
        s.finish(self);
        config
    }

    /// The tables of an array of tables (`[[key]]`) under `section`, each with its dotted
    /// path; anything else there is a problem. `required` makes an absent or empty array
    /// one too, with `hint` saying what to add.
    fn array_of_tables<'a, 'i>(
        &mut self,
        section: &mut Section<'a, 'i>,
        key: &'static str,
        required: Option<&str>,
    ) -> Vec<(String, Table<'a, 'i>)> {
        let path = section.key_path(key);
        let Some(value) = section.raw(key) else {
            if let Some(hint) = required {
                self.problems.push(Problem {
                    line: None,
                    key: path,
                    message: format!("missing: add at least one {hint}"),
                });
            }
            return Vec::new();
        };
        let DeValue::Array(entries) = value.get_ref() else {
            self.problems.push(Problem {
                line: Some(line_of(self.text, value.span().start)),
                key: path.clone(),
                message: format!("must be an array of tables: write each one as [[{path}]]"),
            });
            return Vec::new();
        };
        if let (true, Some(hint)) = (entries.is_empty(), required) {
            self.problems.push(Problem {
                line: Some(line_of(self.text, value.span().start)),
                key: path.clone(),
                message: format!("empty: add at least one {hint}"),
            });
        }
        let mut tables = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let entry_path = format!("{path}[{i}]");
            match entry.get_ref() {
                DeValue::Table(table) => tables.push((entry_path, (table, entry.span()))),
                _ => self.problems.push(Problem {
                    line: Some(line_of(self.text, entry.span().start)),
                    key: entry_path,
                    message: "must be a table".into(),
                }),
            }
        }
        tables
    }

    /// A `name` key that must be non-empty and unique among `taken`.
    fn unique_name(&mut self, s: &mut Section, name: &Option<String>, taken: &[&str]) {
        let Some(name) = name else { return };
        let message = if name.trim().is_empty() {
            "must not be empty".to_string()
        } else if taken.contains(&name.as_str()) {
            format!("{name:?} is used by another entry")
        } else {
            return;
        };
        self.problems.push(Problem {
            line: s.raw_line("name", self),
            key: s.key_path("name"),
            message,
        });
    }

    fn providers(&mut self, top: &mut Section) -> Vec<ProviderConfig> {
        let entries = self.array_of_tables(
            top,
            "providers",
            Some("[[providers]] entry (name, base_url, model)"),
        );
        let mut providers: Vec<ProviderConfig> = Vec::new();
        for (path, (table, span)) in entries {
            let mut s = Section::new(&path, Some((table, span)));
            let name: Option<String> = s.require("name", self);
            let base_url = s.require("base_url", self);
            let base_url = self.url(&mut s, "base_url", base_url);
            let model: Option<String> = s.require("model", self);
            let api_key = self.secret(&mut s, "api_key_env", "api_key_file");
            let request_timeout_secs = s.take_in("request_timeout_secs", 60, 1..=3600, self);
            let max_retries = s.take_in("max_retries", 2, 0..=10, self);
            let quota_cooldown_secs = s.take_in("quota_cooldown_secs", 600, 0..=86_400, self);
            let vision = s.take_or("vision", false, self);
            let taken: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            self.unique_name(&mut s, &name, &taken);
            s.finish(self);
            if let (Some(name), Some(model)) = (name, model) {
                providers.push(ProviderConfig {
                    name,
                    base_url,
                    model,
                    api_key,
                    request_timeout_secs,
                    max_retries,
                    quota_cooldown_secs,
                    vision,
                });
            }
        }
        providers
    }

    /// `[transcription]`, whose `provider` must name a `[[providers]]` entry.
    fn transcription(
        &mut self,
        table: &Table,
        providers: &[ProviderConfig],
    ) -> Option<TranscriptionConfig> {
        let mut s = Section::new("transcription", Some(table.clone()));
        let line = s.line(self);
        let provider: Option<String> = s.require("provider", self);
        let provider_line = s.raw_line("provider", self);
        let model = s.take_or("model", "whisper-1".to_string(), self);
        let max_seconds = s.take_in("max_seconds", 600, 1..=86_400, self);
        let show_transcript = s.take_or("show_transcript", true, self);
        s.finish(self);
        let provider = provider?;
        if !providers.iter().any(|p| p.name == provider) {
            let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            self.problems.push(Problem {
                line: provider_line,
                key: "transcription.provider".into(),
                message: format!(
                    "{provider:?} names no [[providers]] entry (known: {})",
                    names.join(", ")
                ),
            });
            return None;
        }
        Some(TranscriptionConfig {
            provider,
            model,
            max_seconds,
            show_transcript,
            line,
        })
    }

    fn workers(&mut self, table: Option<&Table>) -> WorkersConfig {
        let mut s = Section::new("workers", table.cloned());
        let config = WorkersConfig {
            mode: s.take_or("mode", WorkerMode::Pool, self),
            pool_size: s.take_in("pool_size", 2, 1..=256, self),
            job_timeout_secs: s.take_in("job_timeout_secs", 180, 1..=86_400, self),
            command: s.take("command", self),
            max_jobs_per_worker: s.take_in("max_jobs_per_worker", 100, 1..=1_000_000, self),
            memory_limit_mb: s.take_in("memory_limit_mb", 2048, 0..=1 << 20, self),
            kill_grace_secs: s.take_in("kill_grace_secs", 2, 0..=60, self),
            shutdown_drain_secs: s.take_in("shutdown_drain_secs", 5, 0..=600, self),
            max_restarts: s.take_in("max_restarts", 20, 1..=100_000, self),
            restart_window_secs: s.take_in("restart_window_secs", 60, 1..=86_400, self),
        };
        s.finish(self);
        config
    }

    fn state(&mut self, table: Option<&Table>) -> StateConfig {
        let mut s = Section::new("state", table.cloned());
        let config = StateConfig {
            dir: s.take("dir", self),
        };
        s.finish(self);
        config
    }

    fn agent(&mut self, table: Option<&Table>) -> AgentConfig {
        let mut s = Section::new("agent", table.cloned());
        let system_prompt: Option<String> = s.take("system_prompt", self);
        let max_history_messages = s.take_in("max_history_messages", 20, 0..=1000, self);
        let max_steps = s.take_in("max_steps", 8, 1..=100, self);
        s.finish(self);
        AgentConfig {
            system_prompt: system_prompt.filter(|p| !p.trim().is_empty()),
            max_history_messages,
            max_steps,
        }
    }

    /// A list of absolute paths (`readable`, `writable`): a relative one would depend on
    /// the worker's working directory.
    fn absolute_paths(&mut self, s: &mut Section, key: &'static str) -> Vec<PathBuf> {
        let line = s.raw_line(key, self);
        let paths: Vec<PathBuf> = s.take_or(key, Vec::new(), self);
        for path in paths.iter().filter(|p| !p.is_absolute()) {
            self.problems.push(Problem {
                line,
                key: s.key_path(key),
                message: format!("{}: use an absolute path", path.display()),
            });
        }
        paths
    }

    /// `confirm = true` (every tool of the server) or `confirm = ["tool", ...]`.
    fn confirm(&mut self, s: &mut Section) -> Confirm {
        let line = s.raw_line("confirm", self);
        let Some(value) = s.raw("confirm") else {
            return Confirm::Never;
        };
        let problem = match value.get_ref() {
            DeValue::Boolean(true) => return Confirm::All,
            DeValue::Boolean(false) => return Confirm::Never,
            DeValue::Array(_) => {
                match Vec::<String>::deserialize(value.clone().into_deserializer()) {
                    Ok(names) if names.iter().any(|n| n.trim().is_empty()) => {
                        "a tool name is empty".to_string()
                    }
                    Ok(names) if names.is_empty() => return Confirm::Never,
                    Ok(names) => return Confirm::Tools(names),
                    Err(e) => e.message().trim().to_string(),
                }
            }
            _ => "use true (every tool of this server) or a list of its tool names".to_string(),
        };
        self.problems.push(Problem {
            line,
            key: s.key_path("confirm"),
            message: problem,
        });
        Confirm::Never
    }

    fn tools(&mut self, table: Option<&Table>) -> ToolsConfig {
        let mut section = Section::new("tools", table.cloned());
        let entries = self.array_of_tables(&mut section, "mcp", None);
        let mut mcp: Vec<McpServerConfig> = Vec::new();
        for (path, (table, span)) in entries {
            let mut s = Section::new(&path, Some((table, span)));
            let name: Option<String> = s.require("name", self);
            let taken: Vec<&str> = mcp.iter().map(|m| m.name.as_str()).collect();
            self.unique_name(&mut s, &name, &taken);
            if let Some(bad) = name
                .as_deref()
                .filter(|n| !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            {
                // The name prefixes function names the provider sees, which OpenAI limits
                // to [a-zA-Z0-9_-]; '_' is kept for the separator.
                self.problems.push(Problem {
                    line: s.raw_line("name", self),
                    key: s.key_path("name"),
                    message: format!("{bad:?}: use only letters, digits and '-'"),
                });
            }
            let command: Option<String> = s.require("command", self);
            let args = s.take_or("args", Vec::new(), self);
            let env = s.take_or("env", Vec::new(), self);
            let timeout_secs = s.take_in("timeout_secs", 30, 1..=3600, self);
            let readable = self.absolute_paths(&mut s, "readable");
            let writable = self.absolute_paths(&mut s, "writable");
            let sandbox = s.take_or("sandbox", true, self);
            let confirm = self.confirm(&mut s);
            let confirm_timeout_secs = s.take_in("confirm_timeout_secs", 120, 1..=3600, self);
            let line = s.line(self);
            s.finish(self);
            if let (Some(name), Some(command)) = (name, command) {
                mcp.push(McpServerConfig {
                    name,
                    command,
                    args,
                    env,
                    timeout_secs,
                    readable,
                    writable,
                    sandbox,
                    confirm,
                    confirm_timeout_secs,
                    key: path,
                    line,
                });
            }
        }
        section.finish(self);
        ToolsConfig { mcp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[telegram]
token_env = "TG"

[[providers]]
name = "main"
base_url = "https://api.example.com/v1"
model = "m"
"#;

    fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse(text, Path::new("hermes.toml"), Path::new("/etc/hermes"))
    }

    /// The problems with `text`, as the lines an operator reads.
    fn problem_lines(text: &str) -> Vec<String> {
        parse(text)
            .expect_err("the file should be refused")
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.telegram.api_url, "https://api.telegram.org");
        assert!(c.telegram.allowed_users.is_empty());
        assert_eq!(c.workers.mode, WorkerMode::Pool);
        assert_eq!(c.workers.pool_size, 2);
        assert_eq!(c.workers.job_timeout_secs, 180);
        assert_eq!(c.providers.len(), 1);
        assert_eq!(c.providers[0].max_retries, 2);
        assert!(c.providers[0].api_key.is_none());
        assert_eq!(c.telegram.token.from, SecretFrom::Env("TG".into()));
    }

    #[test]
    fn token_defaults_to_the_conventional_variable() {
        let c = parse("[[providers]]\nname='a'\nbase_url='http://x'\nmodel='m'\n").unwrap();
        assert_eq!(
            c.telegram.token.from,
            SecretFrom::Env("TELEGRAM_BOT_TOKEN".into())
        );
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = r#"[telegram]
token_env = "TG"
allowd_users = [1]

[workers]
pool_size = "two"
mode = "forked"
"#;
        let problems = parse(text).unwrap_err();
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("line 3: telegram.allowd_users: unknown key")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("line 6: workers.pool_size:")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("line 7: workers.mode:")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("providers: missing")),
            "{lines:#?}"
        );
        assert_eq!(problems.len(), 4, "{lines:#?}");
    }

    #[test]
    fn provider_entries_are_checked_one_by_one() {
        let text = r#"
[[providers]]
name = "a"
base_url = "ftp://nope"
model = "m"

[[providers]]
name = "a"
model = "m"
timeout = 3
"#;
        let lines = problem_lines(text);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("providers[0].base_url") && l.contains("not an http")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("providers[1].base_url: missing")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("providers[1].name") && l.contains("used by another")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("providers[1].timeout: unknown key")),
            "{lines:#?}"
        );
    }

    #[test]
    fn out_of_range_and_both_secret_sources_are_problems() {
        let text = format!("{MINIMAL}\n[workers]\npool_size = 0\n\n[state]\n[agent]\n",).replace(
            "token_env = \"TG\"",
            "token_env = \"TG\"\ntoken_file = \"tok\"",
        );
        let lines = problem_lines(&text);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("workers.pool_size: 0 is out of range")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("not both")), "{lines:#?}");
    }

    /// The example every operator starts from must be valid and show every key.
    #[test]
    fn the_example_configuration_is_valid_and_complete() {
        let text = include_str!("../../deploy/hermes.example.toml");
        let config = parse(text).unwrap_or_else(|p| panic!("{p:#?}"));
        assert_eq!(config.providers[0].name, "main");
        for key in [
            "token_env",
            "api_url",
            "allowed_users",
            "poll_timeout_secs",
            "retry_max_secs",
            "max_queued_per_chat",
            "outbox_max_age_secs",
            "admin_users",
            "streaming",
            "edit_interval_ms",
            "group_mode",
            "max_steps",
            "command",
            "args",
            "env",
            "timeout_secs",
            "name",
            "base_url",
            "model",
            "api_key_env",
            "request_timeout_secs",
            "max_retries",
            "quota_cooldown_secs",
            "mode",
            "pool_size",
            "job_timeout_secs",
            "command",
            "max_jobs_per_worker",
            "memory_limit_mb",
            "kill_grace_secs",
            "shutdown_drain_secs",
            "max_restarts",
            "restart_window_secs",
            "dir",
            "system_prompt",
            "readable",
            "writable",
            "sandbox",
            "confirm",
            "confirm_timeout_secs",
            "max_file_mb",
            "download_timeout_secs",
            "vision",
            "provider",
            "max_seconds",
            "show_transcript",
        ] {
            assert!(
                text.contains(&format!("{key} =")),
                "the example does not show {key}"
            );
        }
    }

    /// The example's `[transcription]`, uncommented, is valid as it stands; one naming no
    /// provider is refused with the names it could use.
    #[test]
    fn transcription_names_a_provider_and_has_defaults() {
        let example = include_str!("../../deploy/hermes.example.toml");
        let uncommented = example
            .replace("# [transcription]", "[transcription]")
            .replace("# provider = \"main\"", "provider = \"main\"");
        let config = parse(&uncommented).unwrap_or_else(|p| panic!("{p:#?}"));
        let t = config.transcription.expect("[transcription]");
        assert_eq!(
            (
                t.provider.as_str(),
                t.model.as_str(),
                t.max_seconds,
                t.show_transcript
            ),
            ("main", "whisper-1", 600, true)
        );
        assert!(!config.providers[0].vision);
        assert_eq!(config.telegram.max_file_mb, 20);
        let wrong = format!("{MINIMAL}\n[transcription]\nprovider = \"whisper\"\n");
        let problems = parse(&wrong).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.key == "transcription.provider" && p.message.contains("names no")),
            "{problems:#?}"
        );
        let too_big = MINIMAL.replace("[telegram]", "[telegram]\nmax_file_mb = 50");
        assert!(parse(&too_big).is_err(), "over the Bot API's 20 MB");
    }

    #[test]
    fn tool_servers_are_checked_entry_by_entry() {
        let text = format!(
            "{MINIMAL}\n[[tools.mcp]]\nname = \"time\"\ncommand = \"python3\"\nargs = [\"-m\", \"mcp_server_time\"]\n\n\
             [[tools.mcp]]\nname = \"time\"\ncommand = 3\n\n[[tools.mcp]]\nname = \"a.b\"\ncommand = \"x\"\ntimeout = 1\n"
        );
        let lines = problem_lines(&text);
        for expected in [
            "tools.mcp[1].name: \"time\" is used by another entry",
            "tools.mcp[1].command:",
            "tools.mcp[2].name: \"a.b\": use only letters",
            "tools.mcp[2].timeout: unknown key",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(expected)),
                "{expected}: {lines:#?}"
            );
        }
        let good = format!(
            "{MINIMAL}\n[[tools.mcp]]\nname = \"time\"\ncommand = \"python3\"\nenv = [\"HERMES_TEST_SURELY_UNSET_VAR\"]\n"
        );
        let config = parse(&good).unwrap();
        assert_eq!(config.tools.mcp[0].timeout_secs, 30);
        let problems = config.job_plans().unwrap_err();
        let tool = problems
            .iter()
            .find(|p| p.key == "tools.mcp[0].env")
            .unwrap_or_else(|| panic!("{problems:?}"));
        assert!(tool.message.contains("HERMES_TEST_SURELY_UNSET_VAR"));
        assert_eq!(tool.line, Some(10));
    }

    #[test]
    fn sandbox_grants_opt_out_and_approvals_are_read_and_checked_with_their_lines() {
        let good = format!(
            "{MINIMAL}\n[[tools.mcp]]\nname = \"files\"\ncommand = \"x\"\n\
             readable = [\"/srv/docs\"]\nwritable = [\"/srv/out\"]\nconfirm = [\"write\"]\n\n\
             [[tools.mcp]]\nname = \"shell\"\ncommand = \"y\"\nsandbox = false\nconfirm = true\n\
             confirm_timeout_secs = 30\n"
        );
        let config = parse(&good).unwrap_or_else(|p| panic!("{p:#?}"));
        let [files, shell] = &config.tools.mcp[..] else {
            panic!("{:?}", config.tools.mcp)
        };
        assert_eq!(files.readable, [PathBuf::from("/srv/docs")]);
        assert_eq!(files.writable, [PathBuf::from("/srv/out")]);
        assert!(files.sandbox);
        assert_eq!(files.confirm, Confirm::Tools(vec!["write".into()]));
        assert_eq!(files.confirm_timeout_secs, 120);
        assert!(!shell.sandbox);
        assert_eq!(shell.confirm, Confirm::All);
        let plans = config.job_plans().unwrap();
        let confinement = plans.tools[0]
            .sandbox
            .as_ref()
            .expect("sandboxed by default");
        assert_eq!(confinement.readable, files.readable);
        assert!(
            confinement
                .hidden
                .contains(&absolute(Path::new("hermes.toml"))),
            "the configuration file is hidden: {confinement:?}"
        );
        assert_eq!(plans.tools[1].sandbox, None, "sandbox = false");
        assert_eq!(plans.tools[1].confirm_timeout_ms, 30_000);

        let bad = format!(
            "{MINIMAL}\n[workers]\njob_timeout_secs = 60\n\n[[tools.mcp]]\nname = \"a\"\ncommand = \"x\"\n\
             readable = [\"docs\"]\nwritable = \"/srv\"\nsandbox = \"no\"\nconfirm = \"all\"\n\n\
             [[tools.mcp]]\nname = \"b\"\ncommand = \"y\"\nconfirm = [\"\"]\n\n\
             [[tools.mcp]]\nname = \"c\"\ncommand = \"z\"\nconfirm = true\n"
        );
        let lines = problem_lines(&bad);
        for expected in [
            "line 16: tools.mcp[0].readable: docs: use an absolute path",
            "line 17: tools.mcp[0].writable:",
            "line 18: tools.mcp[0].sandbox:",
            "line 19: tools.mcp[0].confirm: use true",
            "line 24: tools.mcp[1].confirm: a tool name is empty",
            "line 26: tools.mcp[2].confirm_timeout_secs: 120 s is not less than workers.job_timeout_secs (60 s)",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(expected)),
                "{expected}: {lines:#?}"
            );
        }
        assert_eq!(lines.len(), 6, "{lines:#?}");
    }

    #[test]
    fn the_configuration_and_its_secret_files_are_hidden_from_tools() {
        let text = MINIMAL
            .replace("token_env = \"TG\"", "token_file = \"/run/keys/telegram\"")
            .replace(
                "model = \"m\"",
                "model = \"m\"\napi_key_file = \"/run/keys/provider\"",
            );
        let config = parse(&text).unwrap();
        let hidden = config.hidden_paths();
        for path in ["/run/keys/telegram", "/run/keys/provider"] {
            assert!(hidden.contains(&PathBuf::from(path)), "{hidden:?}");
        }
        assert!(hidden.iter().all(|p| p.is_absolute()), "{hidden:?}");
        assert!(hidden.contains(&absolute(Path::new("hermes.toml"))));
    }

    #[test]
    fn chat_keys_have_defaults_and_are_checked() {
        let c = parse(MINIMAL).unwrap();
        assert!(c.telegram.streaming);
        assert_eq!(c.telegram.edit_interval_ms, 1500);
        assert_eq!(c.telegram.group_mode, GroupMode::Mention);
        assert_eq!(c.agent.max_steps, 8);
        let text = MINIMAL.replace(
            "token_env = \"TG\"",
            "token_env = \"TG\"\ngroup_mode = \"everyone\"\nedit_interval_ms = 5",
        );
        let lines = problem_lines(&text);
        assert!(
            lines.iter().any(|l| l.contains("telegram.group_mode")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("telegram.edit_interval_ms: 5 is out of range")),
            "{lines:#?}"
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let problems = parse("[telegram]\ntoken_env = \n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].message.starts_with("not valid TOML"));
    }

    #[test]
    fn unknown_top_level_section_is_reported() {
        let text = format!("{MINIMAL}\n[telegrm]\nx = 1\n");
        let lines = problem_lines(&text);
        assert!(
            lines.iter().any(|l| l.contains("telegrm: unknown key")),
            "{lines:#?}"
        );
    }

    #[test]
    fn secrets_resolve_from_files_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("hermes-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "sk-123\n").unwrap();
        let text = MINIMAL.replace("model = \"m\"", "model = \"m\"\napi_key_file = \"key\"");
        let c = Config::parse(&text, &dir.join("h.toml"), &dir).unwrap();
        let plan = c.providers[0].plan().unwrap();
        assert_eq!(plan.api_key.unwrap().expose(), "sk-123");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The environment of a test: `vars`, nothing else (the process's own is not touched,
    /// so tests running in parallel cannot see each other's).
    fn env_of(vars: &[(&str, &Path)]) -> impl Fn(&str) -> Option<std::ffi::OsString> + use<> {
        let vars: Vec<(String, std::ffi::OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn an_env_secret_comes_from_the_environment_then_from_the_credential_of_its_name() {
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("TG_TOKEN"), "from-credential\n").unwrap();
        let dir = creds.path();
        // Both: the environment wins (an operator's override beats what the unit delivers).
        let both = env_of(&[
            ("TG_TOKEN", Path::new("from-env")),
            ("CREDENTIALS_DIRECTORY", dir),
        ]);
        assert_eq!(read_variable_from("TG_TOKEN", both).unwrap(), "from-env");
        // Unset: the credential, without the newline `echo` leaves.
        let unit = env_of(&[("CREDENTIALS_DIRECTORY", dir)]);
        assert_eq!(
            read_variable_from("TG_TOKEN", &unit).unwrap(),
            "from-credential"
        );
        // Neither, or a name systemd could never deliver.
        assert_eq!(read_variable_from("OTHER", &unit), Err(Unset));
        assert_eq!(read_variable_from("../TG_TOKEN", &unit), Err(Unset));
        assert_eq!(read_variable_from("TG_TOKEN", env_of(&[])), Err(Unset));
    }

    #[test]
    fn a_relative_file_secret_is_a_credential_first_then_a_path_beside_the_config() {
        let creds = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("telegram-token"), "a").unwrap();
        std::fs::write(base.path().join("telegram-token"), "b").unwrap();
        std::fs::write(base.path().join("only-here"), "c").unwrap();
        let file = |name: &str, credentials: Option<&Path>| {
            secret_file_path_in(Path::new(name), base.path(), credentials)
        };
        assert_eq!(
            file("telegram-token", Some(creds.path())),
            creds.path().join("telegram-token")
        );
        assert_eq!(
            file("only-here", Some(creds.path())),
            base.path().join("only-here")
        );
        assert_eq!(
            file("telegram-token", None),
            base.path().join("telegram-token")
        );
        assert_eq!(file("/abs/key", Some(creds.path())), Path::new("/abs/key"));
    }

    #[test]
    fn a_missing_secret_is_a_problem_naming_the_variable() {
        let c = parse(&MINIMAL.replace("\"TG\"", "\"HERMES_TEST_SURELY_UNSET_VAR\"")).unwrap();
        let problem = c.telegram.token.resolve().unwrap_err();
        assert_eq!(problem.key, "telegram.token_env");
        assert!(
            problem
                .message
                .contains("HERMES_TEST_SURELY_UNSET_VAR is not set")
        );
        assert_eq!(problem.line, Some(3));
        assert!(c.job_plans().is_ok(), "the token is no provider's secret");
    }
}
