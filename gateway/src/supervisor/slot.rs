//! One slot of the supervisor: at most one worker, one job at a time on it.
//!
//! A slot starts its worker (ahead of time in `pool` mode, for the job in `per-request`
//! mode), hands it jobs, and decides after each what becomes of it: kept, retired, or
//! ended with its whole process group. A worker that faulted is never given another job.
//! Starts that keep failing back off, and deaths across the pool are counted in a window
//! ([`RestartIntensity`]) so a crash loop cannot become a fork loop; while a slot cannot
//! start a worker, its jobs fail at once with why ([`NotStarted`]).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_protocol::{CancelReason, CrashCause, Failure, Outcome};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::listener::PendingWorkers;
use super::process::SpawnSpec;
use super::spares::Spares;
use super::worker::{Fate, StartError, Stops, Use, Worker};
use super::{Assignment, Shutdown, SupervisorConfig, cancelled};
use crate::clock::sleep_until;
use crate::first_poll::FirstPoll;
use crate::health::{Health, WorkerLeft};
use hermes_retry::Backoff;

#[derive(Debug, Clone, Copy)]
struct SlotPolicy {
    /// Start the worker before a job needs it.
    prestart: bool,
    max_jobs: u32,
}

impl SlotPolicy {
    fn for_mode(config: &SupervisorConfig) -> Self {
        match config.mode {
            WorkerMode::Pool => SlotPolicy {
                prestart: true,
                max_jobs: config.max_jobs_per_worker.max(1),
            },
            WorkerMode::PerRequest => SlotPolicy {
                prestart: false,
                max_jobs: 1,
            },
        }
    }
}

/// Worker deaths across the pool in a sliding window: a crash loop (every job kills its
/// worker) must not turn into a fork loop, so past the limit new workers wait.
pub struct RestartIntensity {
    max: u32,
    window: Duration,
    deaths: std::sync::Mutex<VecDeque<Instant>>,
}

impl RestartIntensity {
    pub fn new(max: u32, window: Duration) -> Self {
        RestartIntensity {
            max,
            window,
            deaths: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    pub(super) fn record(&self, now: Instant) {
        let mut deaths = self.deaths.lock().unwrap_or_else(|e| e.into_inner());
        deaths.push_back(now);
        self.prune(&mut deaths, now);
    }

    /// When over the limit, the moment the oldest death leaves the window.
    pub(super) fn blocked_until(&self, now: Instant) -> Option<Instant> {
        let mut deaths = self.deaths.lock().unwrap_or_else(|e| e.into_inner());
        self.prune(&mut deaths, now);
        if deaths.len() > self.max as usize {
            deaths.front().map(|t| *t + self.window)
        } else {
            None
        }
    }

    fn prune(&self, deaths: &mut VecDeque<Instant>, now: Instant) {
        while deaths
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            deaths.pop_front();
        }
    }
}

/// Why a slot has no worker for a job until a start succeeds; it becomes the job's
/// `CrashCause::NotStarted`.
#[derive(Debug)]
enum NotStarted {
    /// The last start failed; the slot retries after a backoff.
    Failed(StartError),
    /// More workers died in the window than `workers.max_restarts` allows.
    RestartsPaused { max: u32, window: Duration },
}

impl fmt::Display for NotStarted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotStarted::Failed(e) => e.fmt(f),
            NotStarted::RestartsPaused { max, window } => write!(
                f,
                "workers keep dying (more than {max} in {} s); restarts are paused",
                window.as_secs()
            ),
        }
    }
}

pub struct Slot {
    id: usize,
    health: Arc<Health>,
    deaths: Arc<RestartIntensity>,
    /// Whether this slot currently counts as backing off in the health report.
    reported_backoff: bool,
    spec: SpawnSpec,
    pending: PendingWorkers,
    policy: SlotPolicy,
    kill_grace: Duration,
    stop_taking: CancellationToken,
    abort: CancellationToken,
    start_backoff: Backoff,
    /// While set and in the future, starting is not attempted.
    retry_start_at: Option<Instant>,
    not_started: Option<NotStarted>,
    /// `per-request` with `workers.spares`: where a job's worker comes from first.
    spares: Option<Spares>,
    first_poll: FirstPoll,
}

impl Slot {
    pub fn new(
        id: usize,
        config: &SupervisorConfig,
        spec: SpawnSpec,
        pending: PendingWorkers,
        deaths: Arc<RestartIntensity>,
        shutdown: &Shutdown,
        spares: Option<Spares>,
    ) -> Slot {
        Slot {
            id,
            health: config.health.clone(),
            deaths,
            reported_backoff: false,
            spec,
            pending,
            policy: SlotPolicy::for_mode(config),
            kill_grace: config.kill_grace,
            stop_taking: shutdown.stop_taking.clone(),
            abort: shutdown.abort.clone(),
            start_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            retry_start_at: None,
            not_started: None,
            spares,
            first_poll: config.first_poll.clone(),
        }
    }

    pub async fn run(mut self, queue: Arc<Mutex<mpsc::Receiver<Assignment>>>) {
        let mut worker: Option<Worker> = None;
        if self.policy.prestart {
            tokio::select! {
                _ = self.stop_taking.cancelled() => {}
                _ = self.first_poll.passed() => {}
            }
        }
        loop {
            if self.policy.prestart && worker.is_none() && !self.backing_off() {
                worker = self.start_worker().await;
            }
            let assignment = tokio::select! {
                // Stopping wins over a waiting job: once the gateway stops, queued jobs are
                // cancelled (their chats are told), not started.
                biased;
                _ = self.stop_taking.cancelled() => break,
                next = next_assignment(&queue) => match next {
                    Some(a) => a,
                    None => break,
                },
                _ = idle_broken(&mut worker) => {
                    if let Some(w) = worker.take() {
                        tracing::warn!(slot = self.id, worker_pid = w.pid(), "idle worker died or spoke out of turn; replacing it");
                        w.discard(self.kill_grace).await;
                        self.health.worker_left(WorkerLeft::BrokeWhileIdle);
                        self.deaths.record(Instant::now());
                    }
                    continue;
                }
                _ = sleep_until(self.retry_start_at), if self.policy.prestart && worker.is_none() => continue,
            };
            assignment.taken.store(true, Ordering::SeqCst);
            if assignment.cancel.is_cancelled() {
                let _ = assignment.done.send(cancelled(CancelReason::ByUser));
                continue;
            }
            if worker.is_none() && !self.backing_off() {
                // A spare first (started and through its handshake already); a paused or
                // backing-off slot takes none, as it starts none.
                worker = match &self.spares {
                    Some(spares) => spares.take().await,
                    None => None,
                };
                if worker.is_none() {
                    worker = self.start_worker().await;
                }
            }
            let Some(w) = worker.as_mut() else {
                let detail = match &self.not_started {
                    Some(why) => why.to_string(),
                    None => "no worker available".into(),
                };
                let _ = assignment
                    .done
                    .send(Outcome::Failed(Failure::WorkerCrashed {
                        cause: CrashCause::NotStarted { detail },
                    }));
                continue;
            };
            self.health.worker_busy();
            let mut run = w
                .run_job(
                    &assignment.job,
                    &assignment.events,
                    &assignment.approvals,
                    &assignment.schedules,
                    Stops {
                        abort: &self.abort,
                        cancel: &assignment.cancel,
                    },
                    self.kill_grace,
                )
                .await;
            // Before the worker may take another job or go: its output directory is in
            // its scratch directory.
            w.hand_over_files(&mut run.outcome, assignment.files).await;
            let worn_out = w.jobs_done >= self.policy.max_jobs;
            match (run.fate, worker.take()) {
                (Fate::Reusable, Some(w)) if !worn_out => {
                    worker = Some(w);
                    self.health.worker_idle();
                    let _ = assignment.done.send(run.outcome);
                }
                (Fate::Reusable, Some(w)) => {
                    // A healthy worker retired for its age: nothing of the job runs any
                    // more, so the user need not wait for it to leave.
                    let _ = assignment.done.send(run.outcome);
                    w.stop(self.kill_grace).await;
                    self.health.worker_left(WorkerLeft::EndedAfterJob);
                }
                (fate, w) => {
                    if let Some(w) = w {
                        w.discard(self.kill_grace).await;
                        let left = match fate {
                            Fate::Broken => {
                                self.deaths.record(Instant::now());
                                WorkerLeft::BrokeDuringJob
                            }
                            Fate::Ended | Fate::Reusable => WorkerLeft::EndedAfterJob,
                        };
                        self.health.worker_left(left);
                    }
                    // Reply only after the group of a worker that was ended or broke is
                    // gone, so a user who sees the reply can rely on nothing of that job
                    // still running.
                    let _ = assignment.done.send(run.outcome);
                }
            }
        }
        if let Some(w) = worker.take() {
            w.stop(self.kill_grace).await;
            self.health.worker_left(WorkerLeft::StoppedWhileIdle);
        }
        self.report_backoff(false);
    }

    fn backing_off(&mut self) -> bool {
        let now = Instant::now();
        if let Some(until) = self.deaths.blocked_until(now) {
            // Checked first so the report names the crash loop, not an older start error.
            if self.retry_start_at.is_none_or(|t| t < until) {
                tracing::warn!(
                    slot = self.id,
                    "more than {} worker deaths in {:?}: pausing worker starts until the window clears",
                    self.deaths.max,
                    self.deaths.window
                );
                self.not_started = Some(NotStarted::RestartsPaused {
                    max: self.deaths.max,
                    window: self.deaths.window,
                });
                self.retry_start_at = Some(until);
            }
        }
        let backing_off = self.retry_start_at.is_some_and(|t| now < t);
        self.report_backoff(backing_off);
        backing_off
    }

    fn report_backoff(&mut self, backing_off: bool) {
        if backing_off != self.reported_backoff {
            self.reported_backoff = backing_off;
            self.health.slot_backoff(backing_off);
        }
    }

    async fn start_worker(&mut self) -> Option<Worker> {
        match Worker::start(&self.spec, &self.pending, &self.stop_taking, Use::Now).await {
            Ok(w) => {
                self.health.worker_started();
                self.report_backoff(false);
                self.start_backoff.reset();
                self.retry_start_at = None;
                self.not_started = None;
                tracing::debug!(slot = self.id, worker_pid = w.pid(), "worker ready");
                Some(w)
            }
            Err(StartError::Stopping) => None,
            Err(e) => {
                self.health.start_failed();
                self.deaths.record(Instant::now());
                let delay = self.start_backoff.next_delay();
                tracing::error!(
                    slot = self.id,
                    failures = self.start_backoff.failures(),
                    "worker failed to start: {e}; next attempt in {delay:?}"
                );
                self.retry_start_at = Some(Instant::now() + delay);
                self.not_started = Some(NotStarted::Failed(e));
                self.report_backoff(true);
                None
            }
        }
    }
}

async fn next_assignment(queue: &Mutex<mpsc::Receiver<Assignment>>) -> Option<Assignment> {
    queue.lock().await.recv().await
}

async fn idle_broken(worker: &mut Option<Worker>) {
    match worker {
        Some(w) => w.idle_broken().await,
        None => std::future::pending().await,
    }
}
