//! The benchmark's baseline: `hermes-gateway` with every job run inside its own process by
//! the agent library (`hermes_worker::agent`), with no worker and no isolation, as the
//! gateway of the seed incident ran them. `bench` measures what isolation costs against
//! it; nothing else starts it, and `hermes-gateway` itself never links agent code.
//!
//! Everything but the running of jobs is the product's own code (the poller, the chats,
//! the store, the sender), through the library's [`JobRunner`] seam.

use std::sync::Arc;

use hermes_gateway::{BoxFuture, JobLink, JobRunner};
use hermes_protocol::{Job, Outcome};
use tokio::sync::{Semaphore, mpsc};

struct InProcess {
    client: reqwest::Client,
    /// As many jobs at once as the pool would run.
    slots: Semaphore,
}

impl JobRunner for InProcess {
    /// No sandbox and nobody to approve anything: the baseline measures the cost of
    /// isolation on jobs without tools.
    fn run(&self, job: Job, link: JobLink) -> BoxFuture<'_, Outcome> {
        let events = link.events;
        Box::pin(async move {
            let _slot = self.slots.acquire().await;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let outcome = hermes_worker::agent::run(&job, &self.client, &tx).await;
            drop(tx);
            while let Some(event) = rx.recv().await {
                let _ = events.send(event).await;
            }
            outcome
        })
    }
}

fn main() {
    let code = hermes_gateway::main(Some(Box::new(|config| {
        tracing::warn!("bench-only: running jobs inside the gateway's process, without isolation");
        Arc::new(InProcess {
            client: reqwest::Client::new(),
            slots: Semaphore::new(config.workers.pool_size.max(1)),
        }) as Arc<dyn JobRunner>
    })));
    std::process::exit(code);
}
