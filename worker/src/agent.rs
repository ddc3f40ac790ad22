//! The agent: one job, the provider chain in order, one outcome. Shared by `serve` (jobs
//! from the gateway) and `ask` (a job from the command line), so an operator debugging
//! with `ask` runs exactly what the gateway runs.

use std::time::{Duration, Instant};

use hermes_protocol::{Event, Failure, Job, Outcome, Reply};
use tokio::sync::mpsc::UnboundedSender;

use crate::provider::{self, ProviderError};

pub async fn run(job: &Job, client: &reqwest::Client, events: &UnboundedSender<Event>) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(job.timeout_ms);
    let mut first_failure: Option<Failure> = None;
    for plan in &job.providers {
        match provider::complete(client, plan, &job.messages, deadline, events).await {
            Ok(completion) => {
                return Outcome::Reply(Reply {
                    transcript: vec![hermes_protocol::ChatMessage::new(
                        hermes_protocol::Role::Assistant,
                        completion.text.clone(),
                    )],
                    text: completion.text,
                    provider: plan.name.clone(),
                    model: completion.model,
                });
            }
            Err(ProviderError::Deadline) => {
                // What the user hears about is the first thing that went wrong.
                return Outcome::Failed(first_failure.unwrap_or(Failure::TimedOut {
                    after_ms: job.timeout_ms,
                }));
            }
            Err(ProviderError::Failed(failure)) => {
                tracing::warn!(provider = %plan.name, "provider failed: {failure}");
                let _ = events.send(Event::FellBack {
                    from: plan.name.clone(),
                    failure: failure.clone(),
                });
                first_failure.get_or_insert(failure);
            }
        }
    }
    Outcome::Failed(first_failure.unwrap_or(Failure::ProviderRejected {
        provider: String::new(),
        status: 0,
        detail: "the job named no provider".into(),
    }))
}
