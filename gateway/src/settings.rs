//! The part of the configuration a running gateway can change on SIGHUP, and the check of
//! what cannot.
//!
//! Who may talk to the bot (and who administers it), the providers (and their keys, read
//! again), streaming, the system prompt, tools and the job timeout are read by each job
//! when it starts, from one shared snapshot that a
//! reload swaps whole. A job in flight keeps the snapshot it started with, so a reload
//! drops nothing. The rest (the bot token, the Telegram URL, the worker pool, the state
//! directory) is wired into running parts; a reload that changes it says a restart is
//! needed, and applies the rest.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hermes_config::Config;
use hermes_protocol::{ProviderPlan, ToolServer};

use crate::setup::Setup;

pub struct ChatSettings {
    pub allowed: HashSet<u64>,
    /// May switch a chat's model (`/model NAME`).
    pub admins: HashSet<u64>,
    /// Answers shown while written (edited as they grow), tool status lines.
    pub streaming: bool,
    pub edit_interval: Duration,
    /// In configured order; a chat's own order is `commands::model::chain`'s.
    pub providers: Vec<ProviderPlan>,
    /// Quota cool-down of each provider.
    pub cooldowns: Vec<(String, Duration)>,
    pub system_prompt: Option<String>,
    pub job_timeout: Duration,
    pub tools: Vec<ToolServer>,
    pub max_steps: u32,
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

/// Keys whose change only takes effect after a restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (ot, nt) = (&old.telegram, &new.telegram);
    let (ow, nw) = (&old.workers, &new.workers);
    let checks = [
        (ot.token != nt.token, "telegram.token_env/token_file"),
        (ot.api_url != nt.api_url, "telegram.api_url"),
        (
            ot.poll_timeout_secs != nt.poll_timeout_secs,
            "telegram.poll_timeout_secs",
        ),
        (
            ot.retry_max_secs != nt.retry_max_secs,
            "telegram.retry_max_secs",
        ),
        (
            ot.max_queued_per_chat != nt.max_queued_per_chat,
            "telegram.max_queued_per_chat",
        ),
        (nt.group_mode != ot.group_mode, "telegram.group_mode"),
        (ow.mode != nw.mode, "workers.mode"),
        (ow.pool_size != nw.pool_size, "workers.pool_size"),
        (ow.command != nw.command, "workers.command"),
        (
            ow.max_jobs_per_worker != nw.max_jobs_per_worker,
            "workers.max_jobs_per_worker",
        ),
        (
            ow.memory_limit_mb != nw.memory_limit_mb,
            "workers.memory_limit_mb",
        ),
        (
            ow.kill_grace_secs != nw.kill_grace_secs,
            "workers.kill_grace_secs",
        ),
        (
            ow.shutdown_drain_secs != nw.shutdown_drain_secs,
            "workers.shutdown_drain_secs",
        ),
        (ow.max_restarts != nw.max_restarts, "workers.max_restarts"),
        (
            ow.restart_window_secs != nw.restart_window_secs,
            "workers.restart_window_secs",
        ),
        (old.state.dir != new.state.dir, "state.dir"),
    ];
    checks
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect()
}
