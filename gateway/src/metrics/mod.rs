//! What an operator's Prometheus reads: the gateway's counters, gauges and job latency in
//! the Prometheus text format, served by [`server`] when `[metrics] listen` is set.
//!
//! Most numbers already live in [`crate::health::Health`] (answers by failure class,
//! worker starts, the outbox, the circuits) and are read from its snapshot at each scrape,
//! so the endpoint, `status` and `status.json` can never disagree. What the snapshot does
//! not keep is counted here: messages received, Telegram poll failures, workers that left
//! by cause, and the latency of each job as a histogram. Counting is a few atomic
//! additions, done whether or not the endpoint is on.
//!
//! Labels carry only what the operator configured or a fixed vocabulary (a provider's
//! name, an outcome, a failure class, a cause): never a user's text, a chat or a user id.

pub mod server;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::circuit::CircuitState;
use crate::health::{Snapshot, WorkerLeft};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answer {
    outcome: &'static str,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Provider {
    provider: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerState {
    state: &'static str,
}

/// The counts the health snapshot does not keep.
#[derive(Debug)]
pub struct Metrics {
    received: Counter,
    poll_failures: Counter,
    workers_left: Family<Cause, Counter>,
    job_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            received: Counter::default(),
            poll_failures: Counter::default(),
            workers_left: Family::default(),
            // 5 ms to about 80 s: a job against a fake answers in milliseconds, a real
            // provider with tools in tens of seconds.
            job_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
        }
    }
}

impl Metrics {
    pub fn message_received(&self) {
        self.received.inc();
    }

    pub fn poll_failed(&self) {
        self.poll_failures.inc();
    }

    pub fn worker_left(&self, how: WorkerLeft) {
        let cause = match how {
            WorkerLeft::BrokeWhileIdle => "broke_while_idle",
            WorkerLeft::StoppedWhileIdle => "stopped_while_idle",
            WorkerLeft::BrokeDuringJob => "broke_during_job",
            WorkerLeft::EndedAfterJob => "ended_after_job",
        };
        self.workers_left.get_or_create(&Cause { cause }).inc();
    }

    pub fn job_took(&self, took: std::time::Duration) {
        self.job_seconds.observe(took.as_secs_f64());
    }

    /// Everything, in the Prometheus text format, with `snapshot` for what health keeps.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut registry = Registry::with_prefix("hermes");
        registry.register(
            "messages_received",
            "Messages from allowed users stored for an answer",
            self.received.clone(),
        );
        registry.register(
            "telegram_poll_failures",
            "Calls to Telegram's getUpdates (and getMe, deleteWebhook at start) that failed",
            self.poll_failures.clone(),
        );
        let answers = Family::<Answer, Counter>::default();
        answers
            .get_or_create(&Answer {
                outcome: "reply",
                class: String::new(),
            })
            .inc_by(snapshot.jobs.answered);
        for (class, n) in &snapshot.jobs.failed {
            answers
                .get_or_create(&Answer {
                    outcome: "failed",
                    class: class.clone(),
                })
                .inc_by(*n);
        }
        registry.register(
            "answers",
            "Jobs ended, by outcome and, for failures, the failure class",
            answers,
        );
        let gauge = |v: i64| {
            let g = Gauge::<i64>::default();
            g.set(v);
            g
        };
        let outbox = &snapshot.outbox;
        registry.register(
            "outbox_depth",
            "Reply pieces waiting to be sent",
            gauge(outbox.depth as i64),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest reply piece waiting (0 when none waits)",
            gauge(outbox.oldest_age_secs.unwrap_or(0) as i64),
        );
        let circuits = Family::<Provider, Gauge>::default();
        for p in &snapshot.providers {
            for state in [
                CircuitState::Closed,
                CircuitState::Open,
                CircuitState::Probing,
            ] {
                circuits
                    .get_or_create(&Provider {
                        provider: p.name.clone(),
                        state: circuit_name(state),
                    })
                    .set(i64::from(p.circuit == state));
            }
        }
        registry.register(
            "provider_circuit",
            "1 for the state each provider's circuit is in (closed, open: skipped for its cool-down, probing)",
            circuits,
        );
        let w = &snapshot.workers;
        let workers = Family::<WorkerState, Gauge>::default();
        workers
            .get_or_create(&WorkerState { state: "idle" })
            .set(w.idle as i64);
        workers
            .get_or_create(&WorkerState { state: "busy" })
            .set(w.busy as i64);
        registry.register("workers", "Worker processes alive, by state", workers);
        let started: Counter = Counter::default();
        started.inc_by(w.started);
        registry.register(
            "worker_starts",
            "Workers started and through their handshake",
            started,
        );
        let failed: Counter = Counter::default();
        failed.inc_by(w.start_failures);
        registry.register(
            "worker_start_failures",
            "Worker starts that failed (could not run, died or was refused before its handshake)",
            failed,
        );
        registry.register(
            "worker_exits",
            "Workers gone, by cause: broke (died, hung, broke the protocol) idle or during a job, ended after a job, stopped idle",
            self.workers_left.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "From a turn taken to its outcome, failures included",
            self.job_seconds.clone(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

fn circuit_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::Probing => "probing",
    }
}
