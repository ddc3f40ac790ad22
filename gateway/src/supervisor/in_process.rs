//! Bench-only: the same agent code run inside the gateway's process, with no worker and no
//! isolation, as the design of the gateway in the seed incident. Compiled only with the
//! `in-process-baseline` feature and used only when `HERMES_BENCH_IN_PROCESS` is set, so
//! the benchmark can measure what isolation costs against it.

use hermes_protocol::{Event, Job, Outcome};
use tokio::sync::{Semaphore, mpsc};

pub struct InProcess {
    client: reqwest::Client,
    /// As many jobs at once as the pool would run.
    slots: Semaphore,
}

impl InProcess {
    pub fn from_env(slots: usize) -> Option<InProcess> {
        std::env::var_os("HERMES_BENCH_IN_PROCESS")?;
        let client = reqwest::Client::builder().build().ok()?;
        tracing::warn!("bench-only: running jobs inside the gateway's process, without isolation");
        Some(InProcess {
            client,
            slots: Semaphore::new(slots.max(1)),
        })
    }

    pub async fn run(&self, job: Job, events: Option<mpsc::UnboundedSender<Event>>) -> Outcome {
        let _slot = self.slots.acquire().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outcome = hermes_worker::agent::run(&job, &self.client, &tx).await;
        drop(tx);
        while let Some(event) = rx.recv().await {
            if let Some(events) = &events {
                let _ = events.send(event);
            }
        }
        outcome
    }
}
