//! The part of the configuration a running gateway can change on SIGHUP, and the check of
//! what cannot.
//!
//! Who may talk to the bot (and who administers it), the providers (and their keys, read
//! again, and their prices), streaming, the system prompt, tools, the budgets, the job
//! timeout and the settle window are read by each job (or each message) when it starts,
//! from one shared snapshot that a reload swaps whole. A job in flight keeps the snapshot it started with, so a reload
//! drops nothing. The rest (the bot token, the Telegram URL, the worker pool, the state
//! directory) is wired into running parts; a reload that changes it says a restart is
//! needed, and applies the rest.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hermes_config::Config;
use hermes_protocol::{ProviderPlan, ToolServer, TranscriptionPlan};

use crate::media::Limits;

use crate::setup::Setup;

pub struct ChatSettings {
    pub allowed: HashSet<u64>,
    /// May switch a chat's model (`/model NAME`).
    pub admins: HashSet<u64>,
    /// Answers shown while written (edited as they grow), tool status lines.
    pub streaming: bool,
    pub edit_interval: Duration,
    /// A reaction on the message a turn answers, while it runs and when it ends.
    pub reactions: bool,
    /// A ⏹ button under the streamed answer.
    pub stop_button: bool,
    /// Long answers and tables as one rich message.
    pub rich_messages: bool,
    /// In configured order; a chat's own order is `commands::model::chain`'s.
    pub providers: Vec<ProviderPlan>,
    /// Quota cool-down of each provider.
    pub cooldowns: Vec<(String, Duration)>,
    pub system_prompt: Option<String>,
    pub job_timeout: Duration,
    pub tools: Vec<ToolServer>,
    pub max_steps: u32,
    /// How voice notes are transcribed (`[transcription]`), if they are.
    pub transcription: Option<TranscriptionPlan>,
    /// Show a voice note's transcript above the answer.
    pub show_transcript: bool,
    /// What a file may be.
    pub media: Limits,
    /// The caps on usage, and the time zone their days are counted in.
    pub budgets: hermes_config::BudgetsConfig,
    /// How long the rest of an album or of a split text is waited for
    /// (`telegram.settle_ms`; see `chats::settle`).
    pub settle: Duration,
    /// What an answer may send back.
    pub send_files: crate::files_back::Limits,
}

impl ChatSettings {
    pub fn new(config: &Config, setup: &Setup) -> Self {
        ChatSettings {
            allowed: config
                .telegram
                .allowed_users
                .iter()
                .filter_map(|&id| u64::try_from(id).ok())
                .collect(),
            admins: config
                .telegram
                .admin_users
                .iter()
                .filter_map(|&id| u64::try_from(id).ok())
                .collect(),
            streaming: config.telegram.streaming,
            edit_interval: Duration::from_millis(config.telegram.edit_interval_ms),
            reactions: config.telegram.reactions,
            stop_button: config.telegram.stop_button,
            rich_messages: config.telegram.rich_messages,
            providers: setup.providers.clone(),
            cooldowns: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), Duration::from_secs(p.quota_cooldown_secs)))
                .collect(),
            system_prompt: config.agent.system_prompt.clone(),
            job_timeout: config.workers.job_timeout(),
            tools: setup.tools.clone(),
            max_steps: config.agent.max_steps,
            transcription: setup.transcription.clone(),
            show_transcript: config
                .transcription
                .as_ref()
                .is_none_or(|t| t.show_transcript),
            media: Limits {
                max_bytes: config.telegram.max_file_mb * 1024 * 1024,
                download_timeout: Duration::from_secs(config.telegram.download_timeout_secs),
                voice_max_secs: config.transcription.as_ref().map(|t| t.max_seconds),
                vision: setup.providers.iter().any(|p| p.vision),
            },
            budgets: config.budgets.clone(),
            settle: Duration::from_millis(config.telegram.settle_ms),
            send_files: crate::files_back::Limits {
                max_bytes: (config.telegram.max_send_file_mb * 1024 * 1024)
                    .min(crate::files_back::TELEGRAM_MAX_DOCUMENT),
                max_files: config.telegram.max_send_files as usize,
            },
        }
    }
}

/// The current settings, shared; a reload replaces them whole.
#[derive(Clone)]
pub struct LiveSettings(Arc<RwLock<Arc<ChatSettings>>>);

impl LiveSettings {
    pub fn new(settings: ChatSettings) -> Self {
        LiveSettings(Arc::new(RwLock::new(Arc::new(settings))))
    }

    pub fn get(&self) -> Arc<ChatSettings> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, settings: ChatSettings) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }
}

/// The keys of `section` whose values differ between `old` and `new`, named as the file
/// spells them (`section.field`), so a key's name cannot drift from its field.
macro_rules! changed_keys {
    ($old:expr, $new:expr, $section:literal: $($field:ident),+ $(,)?) => {
        [$(
            ($old.$field != $new.$field, concat!($section, ".", stringify!($field))),
        )+]
    };
}

/// Keys whose change only takes effect after a restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let token = [(
        old.telegram.token != new.telegram.token,
        "telegram.token_env/token_file",
    )];
    let telegram = changed_keys!(old.telegram, new.telegram, "telegram":
        api_url, poll_timeout_secs, retry_max_secs, max_queued_per_chat, outbox_max_age_secs,
        group_mode, max_files_total_mb);
    let workers = changed_keys!(old.workers, new.workers, "workers":
        mode, pool_size, command, max_jobs_per_worker, memory_limit_mb, kill_grace_secs,
        shutdown_drain_secs, max_restarts, restart_window_secs, spares);
    let state = changed_keys!(old.state, new.state, "state": dir);
    let metrics = changed_keys!(old.metrics, new.metrics, "metrics": listen);
    token
        .into_iter()
        .chain(telegram)
        .chain(workers)
        .chain(state)
        .chain(metrics)
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[telegram]\nallowed_users = [1]\n{extra}\n[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\nmodel = \"m\"\n"
        );
        Config::parse(&text, Path::new("h.toml"), Path::new("."))
            .unwrap_or_else(|p| panic!("{p:?}"))
    }

    #[test]
    fn a_reload_names_the_keys_that_need_a_restart_and_only_those() {
        let old = config("");
        let mut new = config("streaming = false\ntoken_env = \"OTHER\"\n");
        new.workers.pool_size += 1;
        new.state.dir = Some("/elsewhere".into());
        assert_eq!(
            needs_restart(&old, &new),
            [
                "telegram.token_env/token_file",
                "workers.pool_size",
                "state.dir"
            ]
        );
        assert!(needs_restart(&old, &config("streaming = false\n")).is_empty());
    }
}
