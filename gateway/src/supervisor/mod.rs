//! Worker supervision: the only part of the gateway that starts, watches and ends
//! processes.
//!
//! The supervisor runs `pool_size` slots. A slot holds at most one worker and runs one job
//! at a time on it. The two modes differ in two numbers only:
//!
//! - `pool`: a slot starts its worker ahead of time and keeps it for up to
//!   `max_jobs_per_worker` jobs;
//! - `per-request`: a slot starts a worker when a job arrives and ends it after that job.
//!
//! In both, a worker that faulted in any way is never given another job, and a slot whose
//! workers keep failing to start backs off between attempts; while it backs off, jobs get
//! an immediate "could not be started" failure instead of waiting in silence.

mod listener;
mod process;
mod stderr_log;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_protocol::{CancelReason, CrashCause, Event, Failure, Job, Outcome};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::clock::sleep_until;
use crate::health::Health;
use crate::jobs::{BoxFuture, JobRunner};
pub use listener::PendingWorkers;
use process::SpawnSpec;
use worker::{Fate, StartError, Stops, Worker};

#[derive(Clone)]
pub struct SupervisorConfig {
    pub mode: WorkerMode,
    pub slots: usize,
    pub program: PathBuf,
    pub socket_dir: PathBuf,
    pub memory_limit_mb: u64,
    pub max_jobs_per_worker: u32,
    pub kill_grace: Duration,
    /// More worker deaths than this within `restart_window` put the pool in backoff.
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub health: Arc<Health>,
}

/// A job handed to the supervisor, with where its outcome goes.
struct Assignment {
    job: Job,
    events: mpsc::UnboundedSender<Event>,
    done: oneshot::Sender<Outcome>,
    /// `/stop`: ends the job wherever it is, its worker's group included.
    cancel: CancellationToken,
    /// Set by the slot that takes the job, before it looks at `cancel`: until then a
    /// cancelled job can be answered at once, as no process of it exists.
    taken: Arc<AtomicBool>,
}

/// The handle the rest of the gateway uses: submit a job, get its outcome.
#[derive(Clone)]
pub struct Supervisor {
    queue: mpsc::Sender<Assignment>,
}

/// Stops the supervisor in two steps: `stop_taking` ends the intake (idle slots finish),
/// `abort` cancels the jobs still running.
pub struct Shutdown {
    pub stop_taking: CancellationToken,
    pub abort: CancellationToken,
}

impl Supervisor {
    /// Binds the worker socket and starts the slots on `tasks`.
    pub fn start(
        config: SupervisorConfig,
        shutdown: &Shutdown,
        tasks: &TaskTracker,
    ) -> std::io::Result<Supervisor> {
        let (listener, socket) = listener::bind(&config.socket_dir)?;
        let pending = PendingWorkers::default();
        tasks.spawn(listener::accept_loop(
            listener,
            pending.clone(),
            shutdown.abort.clone(),
        ));
        let (queue, receiver) = mpsc::channel(config.slots.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let spec = SpawnSpec {
            program: config.program.clone(),
            socket,
            memory_limit_mb: config.memory_limit_mb,
        };
        let policy = SlotPolicy::for_mode(&config);
        let deaths = Arc::new(RestartIntensity::new(
            config.max_restarts,
            config.restart_window,
        ));
        for slot in 0..config.slots.max(1) {
            let s = Slot {
                id: slot,
                health: config.health.clone(),
                deaths: deaths.clone(),
                reported_backoff: false,
                spec: spec.clone(),
                pending: pending.clone(),
                policy,
                kill_grace: config.kill_grace,
                stop_taking: shutdown.stop_taking.clone(),
                abort: shutdown.abort.clone(),
                start_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
                retry_start_at: None,
                last_start_error: None,
            };
            tasks.spawn(s.run(receiver.clone()));
        }
        Ok(Supervisor { queue })
    }

    /// Runs `job` on a worker: see [`JobRunner::run`]. A cancelled job ends once none of
    /// its processes is left.
    async fn run_on_worker(
        &self,
        job: Job,
        events: mpsc::UnboundedSender<Event>,
        cancel: CancellationToken,
    ) -> Outcome {
        let (done, mut outcome) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let assignment = Assignment {
            job,
            events,
            done,
            cancel: cancel.clone(),
            taken: taken.clone(),
        };
        if self.queue.send(assignment).await.is_err() {
            return cancelled(CancelReason::Shutdown);
        }
        tokio::select! {
            result = &mut outcome => return result.unwrap_or_else(|_| cancelled(CancelReason::Shutdown)),
            _ = cancel.cancelled() => {}
        }
        if !taken.load(Ordering::SeqCst) {
            // Still queued: the slot that takes it will see the cancel and drop it.
            return cancelled(CancelReason::ByUser);
        }
        // A dropped sender means the slots stopped before taking the job.
        outcome
            .await
            .unwrap_or_else(|_| cancelled(CancelReason::Shutdown))
    }
}

impl JobRunner for Supervisor {
    fn run(
        &self,
        job: Job,
        events: mpsc::UnboundedSender<Event>,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Outcome> {
        Box::pin(self.run_on_worker(job, events, cancel))
    }
}

fn cancelled(reason: CancelReason) -> Outcome {
    Outcome::Failed(Failure::Cancelled { reason })
}

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
struct RestartIntensity {
    max: u32,
    window: Duration,
    deaths: std::sync::Mutex<std::collections::VecDeque<Instant>>,
}

impl RestartIntensity {
    fn new(max: u32, window: Duration) -> Self {
        RestartIntensity {
            max,
            window,
            deaths: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn record(&self, now: Instant) {
        let mut deaths = self.deaths.lock().unwrap_or_else(|e| e.into_inner());
        deaths.push_back(now);
        self.prune(&mut deaths, now);
    }

    /// When over the limit, the moment the oldest death leaves the window.
    fn blocked_until(&self, now: Instant) -> Option<Instant> {
        let mut deaths = self.deaths.lock().unwrap_or_else(|e| e.into_inner());
        self.prune(&mut deaths, now);
        if deaths.len() > self.max as usize {
            deaths.front().map(|t| *t + self.window)
        } else {
            None
        }
    }

    fn prune(&self, deaths: &mut std::collections::VecDeque<Instant>, now: Instant) {
        while deaths
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            deaths.pop_front();
        }
    }
}

struct Slot {
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
    last_start_error: Option<String>,
}

impl Slot {
    async fn run(mut self, queue: Arc<Mutex<mpsc::Receiver<Assignment>>>) {
        let mut worker: Option<Worker> = None;
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
                        tracing::warn!(slot = self.id, worker = w.pid(), "idle worker died or spoke out of turn; replacing it");
                        w.discard(self.kill_grace).await;
                        self.health.worker_gone(true, true);
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
            if worker.is_none() {
                worker = if self.backing_off() {
                    None
                } else {
                    self.start_worker().await
                };
            }
            let Some(w) = worker.as_mut() else {
                let detail = self
                    .last_start_error
                    .clone()
                    .unwrap_or_else(|| "no worker available".into());
                let _ = assignment
                    .done
                    .send(Outcome::Failed(Failure::WorkerCrashed {
                        cause: CrashCause::NotStarted { detail },
                    }));
                continue;
            };
            self.health.worker_busy();
            let run = w
                .run_job(
                    &assignment.job,
                    &assignment.events,
                    Stops {
                        abort: &self.abort,
                        cancel: &assignment.cancel,
                    },
                    self.kill_grace,
                )
                .await;
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
                    self.health.worker_gone(false, false);
                }
                (fate, w) => {
                    if let Some(w) = w {
                        w.discard(self.kill_grace).await;
                        if fate == Fate::Broken {
                            self.deaths.record(Instant::now());
                        }
                        self.health.worker_gone(false, fate == Fate::Broken);
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
            self.health.worker_gone(true, false);
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
                self.last_start_error = Some(format!(
                    "workers keep dying (more than {} in {} s); restarts are paused",
                    self.deaths.max,
                    self.deaths.window.as_secs()
                ));
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
        match Worker::start(&self.spec, &self.pending, &self.stop_taking).await {
            Ok(w) => {
                self.health.worker_started();
                self.report_backoff(false);
                self.start_backoff.reset();
                self.retry_start_at = None;
                self.last_start_error = None;
                tracing::debug!(slot = self.id, worker = w.pid(), "worker ready");
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
                self.last_start_error = Some(e.to_string());
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
