//! The agent: one job, one outcome. A step is one completion from the provider chain; an
//! answer that asks for tools gets their results and another step, until the model
//! answers in text or the job's step budget is spent. Shared by `serve` (jobs from the
//! gateway) and `ask` (a job from the command line), so an operator debugging with `ask`
//! runs exactly what the gateway runs.
//!
//! The provider chain works across steps: once a provider fails for good, the next one
//! continues from the same transcript, and the user hears about the first failure only if
//! every provider fails.

use std::time::{Duration, Instant};

use hermes_protocol::{ChatMessage, Event, Failure, Job, Outcome, Reply, Role};
use tokio::sync::mpsc::UnboundedSender;

use crate::media;
use crate::provider::{self, Prompt, ProviderError};
use crate::tools::{Abandoned, Toolbox};

/// What a job produced, and whether it left a tool call running.
#[derive(Debug)]
pub struct Run {
    pub outcome: Outcome,
    /// The deadline passed during a tool call: the tool may still be running, in this
    /// worker's process group, and only ending the group ends it.
    pub abandoned_tools: bool,
}

/// Runs `job` with its tool servers started for this job alone and stopped after it: the
/// per-job lifetime, for callers that keep no worker state (the in-process baseline).
pub async fn run(job: &Job, client: &reqwest::Client, events: &UnboundedSender<Event>) -> Outcome {
    let mut tools = Toolbox::default();
    let deadline = deadline_of(job);
    tools.prepare(&job.tools, deadline).await;
    let run = run_with_tools(job, client, events, &tools, deadline).await;
    tools.shutdown().await;
    run.outcome
}

/// The job's deadline, counted from now (when the worker received it).
pub fn deadline_of(job: &Job) -> Instant {
    Instant::now() + Duration::from_millis(job.timeout_ms)
}

/// Runs `job` with `tools` already prepared for it.
pub async fn run_with_tools(
    job: &Job,
    client: &reqwest::Client,
    events: &UnboundedSender<Event>,
    tools: &Toolbox,
    deadline: Instant,
) -> Run {
    // The turn's files first: a voice note's transcript is the question.
    let turn = match media::prepare(job, client, deadline, events).await {
        Ok(turn) => turn,
        Err(ProviderError::Deadline) => {
            return done(Outcome::Failed(Failure::TimedOut {
                after_ms: job.timeout_ms,
            }));
        }
        Err(ProviderError::Failed(failure)) => {
            tracing::warn!("the turn's files could not be given to the model: {failure}");
            return done(Outcome::Failed(failure));
        }
    };
    let media::Turn {
        mut messages,
        images,
        heard,
    } = turn;
    let mut transcript: Vec<ChatMessage> = Vec::new();
    // A turn with an image goes only to providers that read images.
    let providers = media::usable(&job.providers, !images.is_empty());
    let mut chain = providers.iter().peekable();
    let mut first_failure: Option<Failure> = None;
    // Who answered last, for the reply when the step budget runs out.
    let mut answered_by = (String::new(), String::new());
    let timed_out = |first_failure: Option<Failure>| {
        // What the user hears about is the first thing that went wrong.
        first_failure.unwrap_or(Failure::TimedOut {
            after_ms: job.timeout_ms,
        })
    };
    for _step in 0..job.max_steps.max(1) {
        let prompt = Prompt {
            messages: &messages,
            tools: tools.definitions(),
            stream: job.stream,
            images: &images,
        };
        let (completion, plan) = loop {
            let Some(plan) = chain.peek() else {
                return done(Outcome::Failed(first_failure.unwrap_or_else(no_provider)));
            };
            match provider::complete(client, plan, prompt, deadline, events).await {
                Ok(completion) => break (completion, *plan),
                Err(ProviderError::Deadline) => {
                    return done(Outcome::Failed(timed_out(first_failure)));
                }
                Err(ProviderError::Failed(failure)) => {
                    tracing::warn!(provider = %plan.name, "provider failed: {failure}");
                    let _ = events.send(Event::FellBack {
                        from: plan.name.clone(),
                        failure: failure.clone(),
                    });
                    first_failure.get_or_insert(failure);
                    chain.next();
                }
            }
        };
        answered_by = (plan.name.clone(), completion.model.clone());
        let mut answer = ChatMessage::new(Role::Assistant, completion.text.clone());
        if completion.tool_calls.is_empty() {
            transcript.push(answer);
            return done(Outcome::Reply(Reply {
                text: completion.text,
                provider: plan.name.clone(),
                model: completion.model,
                transcript,
                heard,
                files: tools.take_files(),
            }));
        }
        answer.tool_calls = completion.tool_calls.clone();
        messages.push(answer.clone());
        transcript.push(answer);
        match tools
            .call_all(&completion.tool_calls, deadline, events)
            .await
        {
            Ok(results) => {
                messages.extend(results.iter().cloned());
                transcript.extend(results);
            }
            Err(Abandoned) => {
                return Run {
                    outcome: Outcome::Failed(timed_out(first_failure)),
                    abandoned_tools: true,
                };
            }
        }
        if Instant::now() >= deadline {
            return done(Outcome::Failed(timed_out(first_failure)));
        }
    }
    // The last step's calls were made and their results kept: a follow-up ("go on")
    // starts from them.
    let steps = job.max_steps.max(1);
    tracing::warn!(steps, "the model still asked for tools after the last step");
    let text = format!(
        "I stopped after {steps} steps without reaching an answer: I kept calling tools and \
         did not get to a conclusion. Ask me to continue, or try a narrower question."
    );
    transcript.push(ChatMessage::new(Role::Assistant, text.clone()));
    let (provider, model) = answered_by;
    done(Outcome::Reply(Reply {
        text,
        provider,
        model,
        transcript,
        heard,
        files: tools.take_files(),
    }))
}

fn done(outcome: Outcome) -> Run {
    Run {
        outcome,
        abandoned_tools: false,
    }
}

fn no_provider() -> Failure {
    Failure::ProviderRejected {
        provider: String::new(),
        status: 0,
        detail: "the job named no provider".into(),
    }
}
