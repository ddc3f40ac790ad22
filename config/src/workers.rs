//! `[workers]`: the `hermes-worker` processes that run jobs: pool or one per request, how
//! many, how long a job may take, their limits, and how they are stopped and restarted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::section::{Doc, Section, Table};

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
    /// `per-request`: workers started and through their handshake before a job needs
    /// one; 0 starts each worker when its job arrives.
    pub spares: usize,
}

impl WorkersConfig {
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_secs)
    }
}

impl Doc<'_> {
    pub(crate) fn workers(&mut self, table: Option<&Table>) -> WorkersConfig {
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
            spares: s.take_in("spares", 1, 0..=64, self),
        };
        s.finish(self);
        config
    }
}
