//! Warm spares for `per-request` mode: workers started and through their handshake before
//! a job needs one, so a message does not wait for a spawn.
//!
//! A fresh worker per job is the strongest isolation the gateway offers, and its price was
//! the spawn and handshake on every message's path (about 3.6 ms on a quiet machine, over
//! four times `pool`'s whole dispatch). Each of `workers.spares` keepers holds at most one
//! started worker; a slot that takes a job takes a ready spare (and the keeper starts the
//! next at once, beside the job), or starts one itself when none is ready, as before.
//!
//! A spare holds no chat's data before its job: it was started with the same empty
//! environment and its own empty scratch (and output) directory as any worker, and the only frames it
//! has been sent are the handshake's. The job, its history and its files reach it in the
//! job frame, after a slot took it, and it serves that one job and exits like any
//! per-request worker.
//!
//! A spare that dies while it waits is replaced with a slot's backoff, and its death counts
//! towards `workers.max_restarts` like any other; a reload ([`Spares::refresh`]) replaces
//! the spares that wait, so a worker binary upgraded on disk is used from the next job on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hermes_retry::Backoff;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::SupervisorConfig;
use super::listener::PendingWorkers;
use super::process::SpawnSpec;
use super::slot::RestartIntensity;
use super::worker::{StartError, Use, Worker};
use crate::clock::sleep_until;
use crate::first_poll::FirstPoll;
use crate::health::{Health, WorkerLeft};

/// How long a slot waits for a keeper that said it had a spare (it may have just lost it)
/// before starting a worker itself.
const HANDOVER_WAIT: Duration = Duration::from_millis(20);
/// How long a slot waits for a spare still starting. A start under way is always nearer
/// its end than a new one; the bound only matters when starts hang or fail.
const STARTING_WAIT: Duration = Duration::from_secs(1);

/// How long after its spare was taken a keeper starts the next one.
const NEXT_SPARE_AFTER: Duration = Duration::from_millis(5);

type Request = oneshot::Sender<Worker>;

/// The slots' side: take a ready spare, or learn at once that none is ready.
#[derive(Clone)]
pub struct Spares {
    requests: mpsc::Sender<Request>,
    ready: Arc<AtomicUsize>,
    /// Keepers starting a spare now.
    starting: Arc<AtomicUsize>,
    /// Slots waiting for one of those: at most one per start under way, so jobs that
    /// come together do not queue behind one keeper.
    waiting: Arc<AtomicUsize>,
    generation: Arc<watch::Sender<u64>>,
}

/// What every keeper shares.
struct Shared {
    spec: SpawnSpec,
    pending: PendingWorkers,
    health: Arc<Health>,
    deaths: Arc<RestartIntensity>,
    kill_grace: Duration,
    stop: CancellationToken,
    requests: Mutex<mpsc::Receiver<Request>>,
    ready: Arc<AtomicUsize>,
    starting: Arc<AtomicUsize>,
    first_poll: FirstPoll,
}

impl Spares {
    /// Starts `count` keepers on `tasks`; they end when `stop` is cancelled, stopping the
    /// spares they hold.
    pub fn start(
        count: usize,
        config: &SupervisorConfig,
        spec: SpawnSpec,
        pending: PendingWorkers,
        deaths: Arc<RestartIntensity>,
        stop: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Spares {
        let (requests, receiver) = mpsc::channel(count.max(1) * 4);
        let ready = Arc::new(AtomicUsize::new(0));
        let starting = Arc::new(AtomicUsize::new(0));
        let (generation, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            spec,
            pending,
            health: config.health.clone(),
            deaths,
            kill_grace: config.kill_grace,
            stop,
            requests: Mutex::new(receiver),
            ready: ready.clone(),
            starting: starting.clone(),
            first_poll: config.first_poll.clone(),
        });
        for id in 0..count {
            tasks.spawn(keep(id, shared.clone(), generation.subscribe()));
        }
        Spares {
            requests,
            ready,
            starting,
            waiting: Arc::default(),
            generation: Arc::new(generation),
        }
    }

    /// A ready spare, or the one a keeper is starting now; `None` at once when no keeper
    /// holds or starts one (the slot starts its own worker then, as without spares).
    pub async fn take(&self) -> Option<Worker> {
        let _claim;
        let wait = if self.ready.load(Ordering::SeqCst) > 0 {
            // A keeper whose spare died just now answers only once it has another.
            HANDOVER_WAIT
        } else {
            // Messages closer together than a start: the one under way comes sooner
            // than a second start beside it, which would only slow both down.
            _claim = Claim::on(&self.waiting, self.starting.load(Ordering::SeqCst))?;
            STARTING_WAIT
        };
        let (tx, rx) = oneshot::channel();
        self.requests.try_send(tx).ok()?;
        // A worker handed to a request that gave up goes back to its keeper.
        tokio::time::timeout(wait, rx).await.ok()?.ok()
    }

    /// After a reload: the spares that wait are stopped and started again.
    pub fn refresh(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// A slot's claim on a start under way, given back when it stops waiting.
struct Claim<'a>(&'a AtomicUsize);

impl<'a> Claim<'a> {
    /// None when every start under way is claimed already.
    fn on(waiting: &'a AtomicUsize, starting: usize) -> Option<Claim<'a>> {
        let before = waiting.fetch_add(1, Ordering::SeqCst);
        let claim = Claim(waiting);
        (before < starting).then_some(claim)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One keeper: keeps one spare started until a slot takes it, then starts the next.
async fn keep(id: usize, shared: Arc<Shared>, mut generation: watch::Receiver<u64>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut retry_at: Option<Instant> = None;
    tokio::select! {
        _ = shared.stop.cancelled() => return,
        _ = shared.first_poll.passed() => {}
    }
    loop {
        if let Some(until) = shared.deaths.blocked_until(Instant::now()) {
            retry_at = Some(retry_at.map_or(until, |t| t.max(until)));
        }
        if retry_at.is_some_and(|t| Instant::now() < t) {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = sleep_until(retry_at) => continue,
            }
        }
        // Marked seen before the start, not after: a reload during the start replaces
        // the spare it started (it has seen the old configuration).
        generation.borrow_and_update();
        shared.starting.fetch_add(1, Ordering::SeqCst);
        let started = Worker::start(&shared.spec, &shared.pending, &shared.stop, Use::Spare).await;
        shared.starting.fetch_sub(1, Ordering::SeqCst);
        let mut worker = match started {
            Ok(w) => {
                shared.health.worker_started();
                backoff.reset();
                retry_at = None;
                tracing::debug!(spare = id, worker_pid = w.pid(), "spare worker ready");
                w
            }
            Err(StartError::Stopping) => return,
            Err(e) => {
                shared.health.start_failed();
                shared.deaths.record(Instant::now());
                let delay = backoff.next_delay();
                tracing::error!(
                    spare = id,
                    failures = backoff.failures(),
                    "spare worker failed to start: {e}; next attempt in {delay:?}"
                );
                retry_at = Some(Instant::now() + delay);
                continue;
            }
        };
        loop {
            shared.ready.fetch_add(1, Ordering::SeqCst);
            let event = tokio::select! {
                biased;
                _ = shared.stop.cancelled() => Event::Stop,
                _ = generation.changed() => Event::Refresh,
                _ = worker.idle_broken() => Event::Died,
                request = next_request(&shared.requests) => match request {
                    Some(r) => Event::Taken(r),
                    None => Event::Stop,
                },
            };
            shared.ready.fetch_sub(1, Ordering::SeqCst);
            match event {
                Event::Stop => {
                    worker.stop(shared.kill_grace).await;
                    shared.health.worker_left(WorkerLeft::StoppedWhileIdle);
                    return;
                }
                Event::Refresh => {
                    tracing::debug!(
                        spare = id,
                        worker_pid = worker.pid(),
                        "reload: replacing the spare"
                    );
                    worker.stop(shared.kill_grace).await;
                    shared.health.worker_left(WorkerLeft::StoppedWhileIdle);
                    break;
                }
                Event::Died => {
                    tracing::warn!(
                        spare = id,
                        worker_pid = worker.pid(),
                        "spare worker died or spoke out of turn; replacing it"
                    );
                    worker.discard(shared.kill_grace).await;
                    shared.health.worker_left(WorkerLeft::BrokeWhileIdle);
                    // Counted as a pool's idle worker's death is: past `max_restarts` in
                    // the window, starts pause (checked at the top of the loop).
                    shared.deaths.record(Instant::now());
                    break;
                }
                Event::Taken(request) => match request.send(worker) {
                    Ok(()) => {
                        // The next spare is for the next message, not this one: started
                        // at once, its exec (about a millisecond of CPU) competed with
                        // the job it was taken for on a small machine. A job waiting on
                        // its provider leaves the CPU free after this pause.
                        tokio::select! {
                            _ = shared.stop.cancelled() => return,
                            _ = tokio::time::sleep(NEXT_SPARE_AFTER) => {}
                        }
                        break;
                    }
                    // The slot gave up waiting: the spare is still this keeper's.
                    Err(back) => worker = back,
                },
            }
        }
    }
}

enum Event {
    Stop,
    Refresh,
    Died,
    Taken(Request),
}

async fn next_request(requests: &Mutex<mpsc::Receiver<Request>>) -> Option<Request> {
    requests.lock().await.recv().await
}
