//! `hermes-config`: the configuration file, one TOML file that both binaries read
//! (`hermes-worker ask` runs a job with the same file the gateway uses).
//!
//! An operator who gets the file wrong must learn everything that is wrong at once, each
//! problem with its key and line, before anything starts. So the file is not handed to
//! serde in one piece (which stops at the first error): it is parsed into a spanned tree,
//! and every key is taken and type-checked on its own (module `section`). Keys nobody
//! took are reported as unknown. Every key has a default except the Telegram token's
//! source (which defaults to `$TELEGRAM_BOT_TOKEN`) and at least one `[[providers]]` entry.
//!
//! Secrets are never required inline: they name an environment variable or a file, both of
//! which systemd can deliver as credentials (module `secrets`, [`read_variable`]).
//!
//! The modules follow the file (`deploy/hermes.example.toml`), one per section:
//!
//! - `telegram`: `[telegram]`, the bot, who may use it, polling, streaming, downloads.
//! - `providers`: `[[providers]]`, the model endpoints in fallback order.
//! - `transcription`: `[transcription]`, voice notes through one of the providers.
//! - `workers`: `[workers]`, the worker processes, their mode, limits and restarts.
//! - `state`: `[state]`, the state directory.
//! - `agent`: `[agent]`, the system prompt, history and tool-calling rounds of a job.
//! - `tools`: `[[tools.mcp]]`, MCP servers, their sandbox grants and approvals.
//! - `schedules`: `[schedules]`, reminders and scheduled tasks: time zone, bound per chat.
//! - `metrics`: `[metrics]`, the optional Prometheus endpoint.
//! - `budgets`: `[budgets]`, caps on tokens and cost per user and for everyone, and the
//!   time zone their days and months are counted in.
//!
//! and around them:
//!
//! - `secrets`: where a secret comes from (`*_env`, `*_file`, systemd credentials).
//! - `section`: reading a table key by key, each problem with its key and line.
//! - `report`: the problems, the error a binary prints, [`load_or_report`], [`EXIT_CONFIG`].
//! - `plans`: what a job is sent with ([`JobPlans`]) and what its tools may not read.

mod agent;
mod budgets;
mod metrics;
mod plans;
mod providers;
mod report;
mod schedules;
mod secrets;
mod section;
mod state;
mod telegram;
#[cfg(test)]
mod test_support;
mod tools;
mod transcription;
mod workers;

use std::path::{Path, PathBuf};

use toml::de::DeTable;

pub use agent::AgentConfig;
pub use budgets::{BudgetsConfig, Caps};
pub use metrics::{MetricsConfig, MetricsListen};
pub use plans::{JobPlans, absolute};
pub use providers::ProviderConfig;
pub use report::{ConfigError, EXIT_CONFIG, Problem, load_or_report};
pub use schedules::{SchedulesConfig, valid_time_zone};
pub use secrets::{SecretFrom, SecretSource, Unset, read_variable, valid_credential_name};
pub use state::StateConfig;
pub use telegram::{GroupMode, TelegramConfig};
pub use tools::{McpServerConfig, ToolsConfig};
pub use transcription::TranscriptionConfig;
pub use workers::{WorkerMode, WorkersConfig};

use report::line_of;
use section::{Doc, Section};

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
    pub schedules: SchedulesConfig,
    pub metrics: MetricsConfig,
    /// `[budgets]`; by default no cap.
    pub budgets: BudgetsConfig,
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
        let metrics_table = top.table("metrics", &mut doc);
        let metrics = doc.metrics(metrics_table.as_ref());
        let transcription_table = top.table("transcription", &mut doc);
        let transcription = transcription_table
            .as_ref()
            .and_then(|t| doc.transcription(t, &providers));
        let schedules_table = top.table("schedules", &mut doc);
        let schedules = doc.schedules(schedules_table.as_ref());
        let budgets_table = top.table("budgets", &mut doc);
        let budgets = doc.budgets(budgets_table.as_ref());
        top.finish(&mut doc);
        doc.confirm_within_job_timeout(&tools, &workers);

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
                schedules,
                metrics,
                budgets,
            })
        } else {
            doc.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(doc.problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{MINIMAL, parse};

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
            "reactions",
            "stop_button",
            "rich_messages",
            "group_mode",
            "settle_ms",
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
            "spares",
            "listen",
            "dir",
            "system_prompt",
            "readable",
            "writable",
            "sandbox",
            "confirm",
            "confirm_timeout_secs",
            "max_file_mb",
            "max_send_file_mb",
            "max_send_files",
            "download_timeout_secs",
            "vision",
            "provider",
            "max_seconds",
            "show_transcript",
            "time_zone",
            "max_per_chat",
            "input_price_per_mtok",
            "output_price_per_mtok",
            "cached_price_per_mtok",
            "time_zone",
            "daily_tokens",
            "monthly_tokens",
            "daily_cost",
            "monthly_cost",
        ] {
            assert!(
                text.contains(&format!("{key} =")),
                "the example does not show {key}"
            );
        }
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let problems = parse("[telegram]\ntoken_env = \n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].message.starts_with("not valid TOML"));
    }
}
