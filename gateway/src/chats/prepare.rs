//! What a job is sent with: the chat's provider chain (its `/model` choice first) less the
//! providers whose quota circuit is open, and the conversation (the system prompt, the
//! last turns of history, the new message), with the settings the job starts with.

use std::time::Instant;

use hermes_protocol::{ChatMessage, Failure, Job, Role};

use super::{JobContext, Request};
use crate::circuit::Plan;
use crate::commands::model;
use crate::settings::ChatSettings;

/// A job ready to run, and the circuit plan its outcome settles.
pub struct Prepared {
    pub job: Job,
    pub plan: Plan,
}

/// The job for `request`, or, when every provider of the chain has its quota circuit
/// open, the failure to answer with at once (no worker, no request).
pub fn prepare(
    ctx: &JobContext,
    settings: &ChatSettings,
    request: &Request,
    now: Instant,
) -> Result<Prepared, Failure> {
    let chain = model::chain(settings, &ctx.store, request.chat);
    let plan = ctx.circuits.plan(&chain.providers, now);
    if plan.providers.is_empty() {
        let (provider, remaining) = plan.first_skipped.clone().unwrap_or_default();
        return Err(Failure::QuotaExhausted {
            provider,
            detail: format!(
                "quota circuit open for {} s more; no request sent",
                remaining.as_secs()
            ),
        });
    }
    let job = Job {
        id: request.id,
        chat_id: request.chat,
        messages: conversation(ctx, settings, request),
        providers: plan.providers.clone(),
        timeout_ms: u64::try_from(settings.job_timeout.as_millis()).unwrap_or(u64::MAX),
        stream: settings.streaming,
        tools: settings.tools.clone(),
        max_steps: settings.max_steps,
    };
    Ok(Prepared { job, plan })
}

/// The system prompt (if any), the history the chat's conversation keeps, and last the
/// new message.
fn conversation(ctx: &JobContext, settings: &ChatSettings, request: &Request) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    if let Some(prompt) = &settings.system_prompt {
        messages.push(ChatMessage::new(Role::System, prompt.clone()));
    }
    match ctx.store.history(request.chat, ctx.max_history) {
        Ok(history) => messages.extend(history),
        Err(e) => tracing::warn!(
            chat_id = request.chat,
            "cannot read the conversation history, sending none: {e}"
        ),
    }
    messages.push(ChatMessage::new(Role::User, request.text.clone()));
    messages
}
