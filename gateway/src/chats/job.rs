//! One message through one job: the conversation and the provider chain it is sent with,
//! the worker that runs it, the answer shown as it grows, and the one final reply stored
//! with the conversation.

use std::time::{Duration, Instant};

use hermes_protocol::{CancelReason, ChatMessage, Event, Failure, Job, JobId, Outcome, Role};
use tokio::sync::mpsc;

use super::{InFlightSlot, Inner};
use crate::commands::{model, stop};
use crate::replies;
use crate::store::Exchange;
use crate::telegram::live::LiveReply;
use crate::telegram::sender::Sender;

/// How often "typing…" is renewed while a job runs (Telegram shows it for ~5 s).
const TYPING_EVERY: Duration = Duration::from_secs(4);
/// "typing…" starts only once a job has run this long: a reply that comes sooner makes
/// the indicator invisible anyway, and skipping it saves a Bot API call per message
/// (a sixth of the gateway's instructions per message in the throughput benchmark).
const TYPING_AFTER: Duration = Duration::from_millis(300);

pub struct Request {
    pub id: JobId,
    pub chat: i64,
    pub update_id: i64,
    pub user_id: u64,
    /// What the model is asked: the message, or the earlier one for `/retry`.
    pub text: String,
}

pub async fn run(inner: &Inner, request: Request, in_flight: &InFlightSlot) {
    let ctx = &inner.ctx;
    let Request {
        id,
        chat,
        update_id,
        user_id,
        text,
    } = request;
    // The settings this job starts with; a reload meanwhile does not change them.
    let settings = ctx.settings.get();
    let mut messages = Vec::new();
    if let Some(prompt) = &settings.system_prompt {
        messages.push(ChatMessage::new(Role::System, prompt.clone()));
    }
    match ctx.store.history(chat, ctx.max_history) {
        Ok(history) => messages.extend(history),
        Err(e) => tracing::warn!(
            chat,
            "cannot read the conversation history, sending none: {e}"
        ),
    }
    messages.push(ChatMessage::new(Role::User, text.clone()));
    let mut providers = settings.providers.clone();
    match ctx.store.chat_provider(chat) {
        Ok(Some(chosen)) => model::first(&mut providers, |p| p.name == chosen),
        Ok(None) => {}
        Err(e) => tracing::warn!(chat, "cannot read the chat's model, using the default: {e}"),
    }
    let started = Instant::now();
    let plan = ctx.circuits.plan(&providers, started);
    if plan.providers.is_empty() {
        let (provider, remaining) = plan.first_skipped.clone().unwrap_or_default();
        let failure = Failure::QuotaExhausted {
            provider,
            detail: format!(
                "quota circuit open for {} s more; no request sent",
                remaining.as_secs()
            ),
        };
        tracing::warn!(job = %id, chat, user = user_id, class = %failure.class(), "failed: {failure}");
        ctx.health.job_done(&Outcome::Failed(failure.clone()));
        let reply = replies::failure_text(&failure);
        ctx.sender.send_text(chat, &reply).await;
        inner.done(update_id, &reply);
        return;
    }
    let job = Job {
        id,
        chat_id: chat,
        messages,
        providers: plan.providers.clone(),
        timeout_ms: u64::try_from(settings.job_timeout.as_millis()).unwrap_or(u64::MAX),
        stream: settings.streaming,
        tools: settings.tools.clone(),
        max_steps: settings.max_steps,
    };
    let cancel = in_flight.begin();
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let run = ctx.runner.run(job, events_tx, cancel);
    tokio::pin!(run);
    let typing = keep_typing(&ctx.sender, chat);
    tokio::pin!(typing);
    let mut live = LiveReply::new(
        ctx.sender.clone(),
        chat,
        settings.streaming,
        settings.edit_interval,
    );
    // Only fallbacks matter once the job is over; keep those, let the rest go.
    let mut fallbacks = Vec::new();
    let outcome = loop {
        let draw_at = live.next_draw();
        tokio::select! {
            outcome = &mut run => break outcome,
            Some(event) = events_rx.recv() => {
                live.observe(&event);
                if matches!(event, Event::FellBack { .. }) {
                    fallbacks.push(event);
                }
            }
            _ = sleep_until(draw_at), if draw_at.is_some() => live.draw().await,
            never = &mut typing => match never {},
        }
    };
    let stop_requests = in_flight.end();
    while let Ok(event) = events_rx.try_recv() {
        if matches!(event, Event::FellBack { .. }) {
            fallbacks.push(event);
        }
    }
    ctx.circuits
        .settle(&plan, &fallbacks, &outcome, Instant::now());
    ctx.health.job_done(&outcome);
    let elapsed_ms = started.elapsed().as_millis();
    match outcome {
        Outcome::Reply(reply) => {
            tracing::info!(job = %id, chat, user = user_id, provider = %reply.provider, elapsed_ms, "answered");
            let shown = if reply.text.trim().is_empty() {
                "(The model returned an empty answer.)".to_string()
            } else {
                reply.text.clone()
            };
            live.finish_markdown(&shown).await;
            let transcript = if reply.transcript.is_empty() {
                vec![ChatMessage::new(Role::Assistant, reply.text)]
            } else {
                reply.transcript
            };
            let exchange = Exchange {
                chat_id: chat,
                question: text,
                transcript,
                provider: reply.provider,
                model: reply.model,
            };
            inner.finish(update_id, &shown, Some(&exchange));
        }
        Outcome::Failed(Failure::Cancelled {
            reason: CancelReason::ByUser,
        }) => {
            tracing::info!(job = %id, chat, user = user_id, elapsed_ms, "stopped by /stop");
            live.finish_plain(stop::STOPPED).await;
            inner.done(update_id, stop::STOPPED);
            for stop_update in &stop_requests {
                inner.done(*stop_update, stop::STOPPED);
            }
            return;
        }
        Outcome::Failed(failure) => {
            tracing::warn!(job = %id, chat, user = user_id, class = %failure.class(), elapsed_ms, "failed: {failure}");
            let reply = replies::failure_text(&failure);
            live.finish_plain(&reply).await;
            // A job cancelled by a stop stays in the inbox: the next run answers it.
            if !matches!(failure, Failure::Cancelled { .. }) {
                inner.done(update_id, &reply);
            }
        }
    }
    // A /stop that lost the race against the answer still gets its one reply.
    for stop_update in stop_requests {
        ctx.sender.send_text(chat, stop::TOO_LATE).await;
        inner.done(stop_update, stop::TOO_LATE);
    }
}

async fn keep_typing(sender: &Sender, chat: i64) -> std::convert::Infallible {
    tokio::time::sleep(TYPING_AFTER).await;
    loop {
        sender.typing(chat).await;
        tokio::time::sleep(TYPING_EVERY).await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
