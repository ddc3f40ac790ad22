//! What the running gateway knows about itself, in one place: polling, workers, jobs and
//! provider circuits. Every part of the gateway reports here; `status.json` (read by
//! `hermes-gateway status`), the `STATUS=` line `systemctl status` shows, and the watchdog
//! all read from here, so they can never disagree. What a snapshot of it says, and how it
//! is judged, is in [`snapshot`]; whether the state store takes writes, in
//! [`store_writes`].

mod snapshot;
mod store_writes;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hermes_protocol::{FailureClass, Outcome};

use crate::clock::{unix, unix_now};
use crate::metrics::Metrics;
use crate::sandbox::Report;
pub use snapshot::{
    DEGRADED_MARK, Jobs, OutboxStatus, Polling, PollingState, ProviderStatus, SandboxStatus,
    SchedulesStatus, ShutdownRecord, Snapshot, StoreStatus, StrangersStatus, Workers,
};
pub use store_writes::StoreWrites;

pub struct Health {
    state: Mutex<State>,
    /// Signalled when the first worker start attempt ends, either way (a stored permit, so
    /// a waiter that comes late still wakes).
    first_worker: tokio::sync::Notify,
    /// What the store reports of its writes.
    store: Arc<StoreWrites>,
    pid: u32,
    run_id: String,
    mode: String,
    started: SystemTime,
    started_mono: Instant,
    /// What the metrics endpoint counts beyond the snapshot.
    metrics: Metrics,
}

#[derive(Default)]
struct State {
    /// Last `getUpdates` round trip that ended, success or error: the watchdog's pulse.
    last_round_trip: Option<Instant>,
    last_poll_ok: Option<SystemTime>,
    /// Since when the `getUpdates` now waiting at Telegram has been open, after a call
    /// that succeeded: Telegram holds it while no message comes, and that is health.
    long_poll_open_since: Option<SystemTime>,
    failing_since: Option<SystemTime>,
    last_poll_error: Option<String>,
    workers_idle: usize,
    workers_busy: usize,
    workers_started: u64,
    worker_faults: u64,
    start_failures: u64,
    slots_backing_off: usize,
    answered: u64,
    failed: BTreeMap<FailureClass, u64>,
    previous_shutdown: Option<ShutdownRecord>,
    outbox_depth: usize,
    outbox_oldest_unix: Option<u64>,
    outbox_refused: u64,
    outbox_expired: u64,
    strangers: StrangersStatus,
    /// Messages stored and not answered yet, as the store last counted them.
    queue: usize,
    schedules: SchedulesStatus,
    /// None until the probe has answered.
    sandbox_report: Option<Report>,
    unsandboxed: Vec<String>,
}

/// How a worker left the pool: from which state, and whether it was a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerLeft {
    /// Idle, it died or spoke out of turn.
    BrokeWhileIdle,
    /// Idle, it was stopped with the gateway.
    StoppedWhileIdle,
    /// During a job it crashed, hung or broke the protocol.
    BrokeDuringJob,
    /// After a job it was ended on purpose: retired for its age, `/stop`, the gateway
    /// stopping, or its own request to be retired.
    EndedAfterJob,
}

impl Health {
    pub fn new(
        mode: &str,
        previous_shutdown: Option<ShutdownRecord>,
        store: Arc<StoreWrites>,
    ) -> Self {
        let started = SystemTime::now();
        let run_id = format!("{:x}-{:x}", unix(started), std::process::id());
        Health {
            state: Mutex::new(State {
                previous_shutdown,
                ..State::default()
            }),
            first_worker: tokio::sync::Notify::new(),
            store,
            pid: std::process::id(),
            run_id,
            mode: mode.to_string(),
            started,
            started_mono: Instant::now(),
            metrics: Metrics::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `getUpdates` succeeded.
    pub fn poll_ok(&self) {
        self.telegram_answered();
        self.lock().long_poll_open_since = None;
    }

    /// Another call to Telegram (`getMe`) succeeded: the first long poll, sent beside it,
    /// stays open.
    pub fn telegram_answered(&self) {
        let mut s = self.lock();
        s.last_round_trip = Some(Instant::now());
        s.last_poll_ok = Some(SystemTime::now());
        s.failing_since = None;
        s.last_poll_error = None;
    }

    /// A long poll was sent after a call that succeeded: while Telegram holds it, polling
    /// is healthy (it is how Telegram says "no news yet"), never failure time.
    pub fn long_poll_open(&self) {
        self.lock().long_poll_open_since = Some(SystemTime::now());
    }

    pub fn poll_failed(&self, error: String) {
        self.metrics.poll_failed();
        let mut s = self.lock();
        s.last_round_trip = Some(Instant::now());
        s.long_poll_open_since = None;
        s.failing_since.get_or_insert_with(SystemTime::now);
        s.last_poll_error = Some(error);
    }

    /// True when a `getUpdates` round trip ended within `period`: the poll loop is alive.
    pub fn polled_within(&self, period: Duration) -> bool {
        self.lock()
            .last_round_trip
            .is_some_and(|t| t.elapsed() <= period)
    }

    /// Whether the watchdog is fed: the poll loop is alive ([`Health::polled_within`]),
    /// and the state store has not been failing for the whole of `period` (a store stuck
    /// that long is not passing by itself: a restart reopens it, or says why it cannot).
    pub fn alive_within(&self, period: Duration) -> bool {
        self.polled_within(period) && !self.store.stuck_for(period)
    }

    pub fn worker_started(&self) {
        let mut s = self.lock();
        s.workers_started += 1;
        s.workers_idle += 1;
        self.first_worker.notify_one();
    }

    /// Resolves once a worker started or failed to start.
    pub async fn first_worker_attempt(&self) {
        self.first_worker.notified().await;
    }

    pub fn worker_busy(&self) {
        let mut s = self.lock();
        s.workers_idle = s.workers_idle.saturating_sub(1);
        s.workers_busy += 1;
    }

    pub fn worker_idle(&self) {
        let mut s = self.lock();
        s.workers_busy = s.workers_busy.saturating_sub(1);
        s.workers_idle += 1;
    }

    pub fn worker_left(&self, how: WorkerLeft) {
        self.metrics.worker_left(how);
        let mut s = self.lock();
        match how {
            WorkerLeft::BrokeWhileIdle | WorkerLeft::StoppedWhileIdle => {
                s.workers_idle = s.workers_idle.saturating_sub(1);
            }
            WorkerLeft::BrokeDuringJob | WorkerLeft::EndedAfterJob => {
                s.workers_busy = s.workers_busy.saturating_sub(1);
            }
        }
        if matches!(how, WorkerLeft::BrokeWhileIdle | WorkerLeft::BrokeDuringJob) {
            s.worker_faults += 1;
        }
    }

    pub fn start_failed(&self) {
        self.lock().start_failures += 1;
        self.first_worker.notify_one();
    }

    pub fn slot_backoff(&self, backing_off: bool) {
        let mut s = self.lock();
        if backing_off {
            s.slots_backing_off += 1;
        } else {
            s.slots_backing_off = s.slots_backing_off.saturating_sub(1);
        }
    }

    /// What the sandbox probe found.
    pub fn set_sandbox_report(&self, report: Report) {
        self.lock().sandbox_report = Some(report);
    }

    /// Which tools run without the sandbox (at start-up and after each reload).
    pub fn set_unsandboxed(&self, unsandboxed: Vec<String>) {
        self.lock().unsandboxed = unsandboxed;
    }

    /// The outbox holds `depth` pieces, the oldest committed at `oldest_unix`.
    pub fn outbox_changed(&self, depth: usize, oldest_unix: Option<u64>) {
        let mut s = self.lock();
        s.outbox_depth = depth;
        s.outbox_oldest_unix = oldest_unix;
    }

    /// The store's count of messages not answered yet (`status`'s queue).
    pub fn set_queue(&self, queue: usize) {
        self.lock().queue = queue;
    }

    pub fn outbox_refused(&self) {
        self.lock().outbox_refused += 1;
    }

    pub fn outbox_expired(&self) {
        self.lock().outbox_expired += 1;
    }

    /// A stranger's message was answered (`true`) or dropped.
    pub fn stranger(&self, answered: bool) {
        let mut s = self.lock();
        if answered {
            s.strangers.answered += 1;
        } else {
            s.strangers.dropped += 1;
        }
    }

    /// What the schedules' runs came to, as the store counts them.
    pub fn schedules(&self, counts: crate::store::RunCounts) {
        self.lock().schedules = SchedulesStatus {
            active: counts.active,
            runs_fired: counts.fired,
            runs_delivered: counts.delivered,
            runs_failed: counts.failed,
            last_failure: counts.last_failure,
        };
    }

    pub fn job_done(&self, outcome: &Outcome) {
        let mut s = self.lock();
        match outcome {
            Outcome::Reply(_) => s.answered += 1,
            Outcome::Failed(f) => *s.failed.entry(f.class()).or_default() += 1,
        }
    }

    pub fn snapshot(&self, providers: Vec<ProviderStatus>) -> Snapshot {
        let s = self.lock();
        let polling_state = match (s.last_round_trip, s.failing_since) {
            (None, _) => PollingState::Starting,
            (Some(_), None) => PollingState::Ok,
            (Some(_), Some(_)) => PollingState::Failing,
        };
        Snapshot {
            pid: self.pid,
            run_id: self.run_id.clone(),
            mode: self.mode.clone(),
            started_at_unix: unix(self.started),
            uptime_secs: self.started_mono.elapsed().as_secs(),
            written_at_unix: unix_now(),
            polling: Polling {
                state: polling_state,
                last_ok_unix: s.last_poll_ok.map(unix),
                long_poll_open_since_unix: s.long_poll_open_since.map(unix),
                failing_since_unix: s.failing_since.map(unix),
                last_error: s.last_poll_error.clone(),
            },
            workers: Workers {
                idle: s.workers_idle,
                busy: s.workers_busy,
                started: s.workers_started,
                faults: s.worker_faults,
                start_failures: s.start_failures,
                slots_backing_off: s.slots_backing_off,
            },
            providers,
            jobs: Jobs {
                answered: s.answered,
                failed: s
                    .failed
                    .iter()
                    .map(|(class, n)| (class.as_str().to_string(), *n))
                    .collect(),
            },
            previous_shutdown: s.previous_shutdown.clone(),
            sandbox: s.sandbox_report.clone().map(|report| SandboxStatus {
                report,
                unsandboxed: s.unsandboxed.clone(),
            }),
            outbox: OutboxStatus {
                depth: s.outbox_depth,
                oldest_age_secs: s.outbox_oldest_unix.map(|at| unix_now().saturating_sub(at)),
                refused: s.outbox_refused,
                expired: s.outbox_expired,
            },
            strangers: s.strangers.clone(),
            queue: s.queue,
            schedules: s.schedules.clone(),
            store: self
                .store
                .trouble()
                .map(|t| StoreStatus {
                    failing_since_unix: Some(t.since_unix),
                    last_error: Some(t.error),
                })
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermes_protocol::Failure;

    #[test]
    fn snapshot_counts_and_judges() {
        let h = Health::new("pool", None, Arc::default());
        assert_eq!(h.snapshot(vec![]).polling.state, PollingState::Starting);
        h.poll_failed("502".into());
        let snap = h.snapshot(vec![]);
        assert_eq!(snap.polling.state, PollingState::Failing);
        assert!(snap.status_line().contains("Telegram unreachable since"));
        assert_eq!(snap.degraded_reasons().len(), 1);
        h.poll_ok();
        h.worker_started();
        h.worker_started();
        h.worker_busy();
        h.job_done(&Outcome::Failed(Failure::TimedOut { after_ms: 1 }));
        let snap = h.snapshot(vec![]);
        assert!(snap.degraded_reasons().is_empty());
        assert_eq!(
            snap.status_line(),
            "polling ok; workers 1 idle 1 busy; 0 answered, 1 failed"
        );
        assert_eq!(snap.jobs.failed.get("timed_out"), Some(&1));
        assert!(h.polled_within(Duration::from_secs(1)));
    }

    #[test]
    fn an_open_long_poll_after_a_success_is_health_not_failure() {
        let h = Health::new("pool", None, Arc::default());
        // getMe answered, the first long poll is open and Telegram holds it.
        h.poll_ok();
        h.long_poll_open();
        let snap = h.snapshot(vec![]);
        assert_eq!(snap.polling.state, PollingState::Ok);
        assert!(snap.polling.long_poll_open_since_unix.is_some());
        assert!(snap.polling.failing_since_unix.is_none());
        assert!(
            snap.degraded_reasons().is_empty(),
            "{:?}",
            snap.degraded_reasons()
        );
        assert!(snap.status_line().starts_with("polling ok;"));
        // A failure closes it.
        h.poll_failed("502".into());
        let snap = h.snapshot(vec![]);
        assert_eq!(snap.polling.state, PollingState::Failing);
        assert!(snap.polling.long_poll_open_since_unix.is_none());
    }

    #[test]
    fn a_failing_store_is_degraded_with_its_error_until_a_commit() {
        let store = Arc::new(StoreWrites::default());
        let h = Health::new("pool", None, store.clone());
        h.poll_ok();
        store.failed(&"database or disk is full");
        let snap = h.snapshot(vec![]);
        let reasons = snap.degraded_reasons();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("state store") && reasons[0].contains("disk is full"),
            "{reasons:?}"
        );
        assert!(
            snap.status_line().contains(DEGRADED_MARK),
            "{}",
            snap.status_line()
        );
        // Failing for a moment is not stuck: the watchdog is still fed.
        assert!(h.alive_within(Duration::from_secs(60)));
        store.committed();
        let snap = h.snapshot(vec![]);
        assert!(snap.degraded_reasons().is_empty());
        assert!(!snap.status_line().contains(DEGRADED_MARK));
    }

    #[test]
    fn a_store_failing_for_a_whole_period_stops_the_watchdog() {
        let store = Arc::new(StoreWrites::default());
        let h = Health::new("pool", None, store.clone());
        let period = Duration::from_millis(50);
        store.failed(&"disk I/O error");
        std::thread::sleep(period * 2);
        h.poll_ok();
        store.failed(&"disk I/O error");
        assert!(h.polled_within(period));
        assert!(
            !h.alive_within(period),
            "a stuck store starves the watchdog"
        );
        store.committed();
        assert!(h.alive_within(period));
    }
}
