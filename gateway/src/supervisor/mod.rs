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
//! A `per-request` worker is forked from a template process that paid the exec once
//! ([`zygote`]), which is most of what a fresh worker per message used to cost.
//!
//! In both, a worker that faulted in any way is never given another job, and a slot whose
//! workers keep failing to start backs off between attempts; while it backs off, jobs get
//! an immediate "could not be started" failure instead of waiting in silence.

mod bounds;
mod forked;
mod listener;
mod process;
mod scratch;
mod slot;
mod spares;
mod stderr_log;
mod worker;
mod zygote;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_protocol::{CancelReason, Event, Failure, Job, Outcome};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::files_back::FileDrop;
use crate::first_poll::FirstPoll;
use crate::health::Health;
use crate::jobs::{ApprovalAsk, BoxFuture, JobLink, JobRunner, ScheduleAsk};
use listener::PendingWorkers;
use process::SpawnSpec;
use slot::{RestartIntensity, Slot};
pub use spares::Spares;
use zygote::Zygote;

#[derive(Clone)]
pub struct SupervisorConfig {
    pub mode: WorkerMode,
    pub slots: usize,
    pub program: PathBuf,
    pub socket_dir: PathBuf,
    /// Where each worker's scratch directory is made (under the runtime directory).
    pub scratch_root: PathBuf,
    pub memory_limit_mb: u64,
    pub max_jobs_per_worker: u32,
    pub kill_grace: Duration,
    /// More worker deaths than this within `restart_window` put the pool in backoff.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// `per-request`: workers kept started ahead ([`spares`]); 0 for none.
    pub spares: usize,
    pub health: Arc<Health>,
    /// The first workers start once the first poll is on its way ([`crate::first_poll`]).
    pub first_poll: FirstPoll,
}

/// A job handed to the supervisor, with where its outcome goes.
struct Assignment {
    job: Job,
    events: mpsc::Sender<Event>,
    approvals: mpsc::UnboundedSender<ApprovalAsk>,
    schedules: mpsc::UnboundedSender<ScheduleAsk>,
    done: oneshot::Sender<Outcome>,
    /// `/stop`: ends the job wherever it is, its worker's group included.
    cancel: CancellationToken,
    /// Set by the slot that takes the job, before it looks at `cancel`: until then a
    /// cancelled job can be answered at once, as no process of it exists.
    taken: Arc<AtomicBool>,
    /// Where the answer's files go ([`crate::files_back`]).
    files: Option<FileDrop>,
}

/// The handle the rest of the gateway uses: submit a job, get its outcome.
#[derive(Clone)]
pub struct Supervisor {
    queue: mpsc::Sender<Assignment>,
    renewal: Renewal,
}

/// What a reload renews of the workers, so a worker binary replaced on disk is used from
/// the next job on: the template `per-request` workers are forked from, and the spares
/// that wait (forked from the new template).
#[derive(Clone)]
pub struct Renewal {
    spares: Option<Spares>,
    zygote: Option<Arc<Zygote>>,
}

impl Renewal {
    pub fn renew(&self) {
        if let Some(zygote) = &self.zygote {
            zygote.refresh();
        }
        if let Some(spares) = &self.spares {
            spares.refresh();
        }
    }
}

/// Stops the supervisor in two steps: `stop_taking` ends the intake (idle slots finish),
/// `abort` cancels the jobs still running.
pub struct Shutdown {
    pub stop_taking: CancellationToken,
    pub abort: CancellationToken,
}

impl Supervisor {
    /// Binds the worker socket and starts the slots on `tasks`. The socket's accept loop
    /// is not one of them: it runs until `abort`, and a stop waits only for work in
    /// flight, so an idle gateway stops at once.
    pub fn start(
        config: SupervisorConfig,
        shutdown: &Shutdown,
        tasks: &TaskTracker,
    ) -> std::io::Result<Supervisor> {
        let (listener, socket) = listener::bind(&config.socket_dir)?;
        scratch::clear(&config.scratch_root)?;
        let pending = PendingWorkers::default();
        tokio::spawn(listener::accept_loop(
            listener,
            pending.clone(),
            shutdown.abort.clone(),
        ));
        let (queue, receiver) = mpsc::channel(config.slots.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        // Only the built-in worker can be a template; another program is spawned.
        let zygote = (config.mode == WorkerMode::PerRequest
            && config.program.file_name() == Some(std::ffi::OsStr::new("hermes-worker"))
            && forked::pidfds_work())
        .then(|| Arc::new(Zygote::new()));
        let spec = SpawnSpec {
            program: config.program.clone(),
            socket,
            scratch_root: config.scratch_root.clone(),
            memory_limit_mb: config.memory_limit_mb,
            zygote: zygote.clone(),
        };
        let deaths = Arc::new(RestartIntensity::new(
            config.max_restarts,
            config.restart_window,
        ));
        let spares = (config.mode == WorkerMode::PerRequest && config.spares > 0).then(|| {
            Spares::start(
                config.spares,
                &config,
                spec.clone(),
                pending.clone(),
                deaths.clone(),
                shutdown.stop_taking.clone(),
                tasks,
            )
        });
        for slot in 0..config.slots.max(1) {
            let s = Slot::new(
                slot,
                &config,
                spec.clone(),
                pending.clone(),
                deaths.clone(),
                shutdown,
                spares.clone(),
            );
            tasks.spawn(s.run(receiver.clone()));
        }
        Ok(Supervisor {
            queue,
            renewal: Renewal { spares, zygote },
        })
    }

    /// What a reload renews.
    pub fn renewal(&self) -> Renewal {
        self.renewal.clone()
    }

    /// Runs `job` on a worker: see [`JobRunner::run`]. A cancelled job ends once none of
    /// its processes is left.
    async fn run_on_worker(&self, job: Job, link: JobLink) -> Outcome {
        let JobLink {
            events,
            approvals,
            schedules,
            cancel,
            files,
        } = link;
        let (done, mut outcome) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let assignment = Assignment {
            job,
            events,
            approvals,
            schedules,
            done,
            cancel: cancel.clone(),
            taken: taken.clone(),
            files,
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
    fn run(&self, job: Job, link: JobLink) -> BoxFuture<'_, Outcome> {
        Box::pin(self.run_on_worker(job, link))
    }
}

fn cancelled(reason: CancelReason) -> Outcome {
    Outcome::Failed(Failure::Cancelled { reason })
}
