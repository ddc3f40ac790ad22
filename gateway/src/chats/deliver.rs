//! From a running job to the chat and the store. While the job runs, "typing…" and the
//! answer as it grows ([`LiveReply`]); when it ends, the one final reply in its place (the
//! answer, or the words for its failure), then the message marked answered in the store,
//! with the exchange added to the conversation, so it is answered once.

use std::future::Future;
use std::time::{Duration, Instant};

use hermes_protocol::{CancelReason, ChatMessage, Event, Failure, Outcome, Role};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Inner, JobContext, Request};
use crate::clock::sleep_until;
use crate::jobs::ApprovalAsk;
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
/// How long the reply waits for a job's open approval questions to be edited into "not
/// run" (each one edit, retried through flood control).
const SETTLE_BOUND: Duration = Duration::from_secs(30);

/// What a running job sends its chat: progress, and tool calls to approve.
pub struct Incoming {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub approvals: mpsc::UnboundedReceiver<ApprovalAsk>,
}

/// Waits for `run`'s outcome while showing the job's progress in the chat and asking it
/// the job's approvals. Returns once every question is settled (so no button outlives the
/// job), with the job's fallback events: the quota circuits learn from them.
pub async fn follow(
    ctx: &JobContext,
    chat: i64,
    run: impl Future<Output = Outcome>,
    incoming: Incoming,
    live: &mut LiveReply,
) -> (Outcome, Vec<Event>) {
    let Incoming {
        mut events,
        mut approvals,
    } = incoming;
    tokio::pin!(run);
    let typing = keep_typing(&ctx.sender, chat);
    tokio::pin!(typing);
    let job_over = CancellationToken::new();
    let mut questions = JoinSet::new();
    // Only fallbacks matter once the job is over; keep those, let the rest go.
    let mut fallbacks = Vec::new();
    let outcome = loop {
        let draw_at = live.next_draw();
        tokio::select! {
            outcome = &mut run => break outcome,
            Some(event) = events.recv() => {
                live.observe(&event);
                if matches!(event, Event::FellBack { .. }) {
                    fallbacks.push(event);
                }
            }
            Some(ask) = approvals.recv() => {
                let desk = ctx.desk.clone();
                let job_over = job_over.clone();
                questions.spawn(async move { desk.ask(chat, ask, job_over).await });
            }
            Some(_) = questions.join_next(), if !questions.is_empty() => {}
            _ = sleep_until(draw_at) => live.draw().await,
            never = &mut typing => match never {},
        }
    };
    while let Ok(event) = events.try_recv() {
        if matches!(event, Event::FellBack { .. }) {
            fallbacks.push(event);
        }
    }
    job_over.cancel();
    if tokio::time::timeout(SETTLE_BOUND, questions.join_all())
        .await
        .is_err()
    {
        tracing::warn!(
            chat_id = chat,
            "approval questions not settled within {SETTLE_BOUND:?}"
        );
    }
    (outcome, fallbacks)
}

/// The one final reply for `outcome`, in place of the preview, and the store told: the
/// message (and any `/stop` that came for it, `stop_requests`) answered, a model's answer
/// added to the conversation.
pub async fn deliver(
    inner: &Inner,
    request: Request,
    outcome: Outcome,
    live: LiveReply,
    stop_requests: Vec<i64>,
    started: Instant,
) {
    let Request {
        id,
        chat,
        update_id,
        user_id,
        text,
    } = request;
    let elapsed_ms = started.elapsed().as_millis();
    match outcome {
        Outcome::Reply(reply) => {
            tracing::info!(job_id = %id, chat_id = chat, user_id, provider = %reply.provider, elapsed_ms, "answered");
            let shown = if reply.text.trim().is_empty() {
                replies::EMPTY_ANSWER.to_string()
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
            tracing::info!(job_id = %id, chat_id = chat, user_id, elapsed_ms, "stopped by /stop");
            live.finish_plain(replies::STOPPED).await;
            inner.done(update_id, replies::STOPPED);
            for stop_update in &stop_requests {
                inner.done(*stop_update, replies::STOPPED);
            }
            return;
        }
        Outcome::Failed(failure) => {
            tracing::warn!(job_id = %id, chat_id = chat, user_id, class = %failure.class(), elapsed_ms, "failed: {failure}");
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
        inner.ctx.sender.send_text(chat, replies::TOO_LATE).await;
        inner.done(stop_update, replies::TOO_LATE);
    }
}

async fn keep_typing(sender: &Sender, chat: i64) -> std::convert::Infallible {
    tokio::time::sleep(TYPING_AFTER).await;
    loop {
        sender.typing(chat).await;
        tokio::time::sleep(TYPING_EVERY).await;
    }
}
