//! From a running job to the chat and the store. While the job runs, "typing…" and the
//! answer as it grows ([`LiveReply`], best effort); when it ends, the one final reply in
//! its place (the answer, or the words for its failure), committed to the outbox together
//! with everything it settles: the messages it answers, and a model's answer added to the
//! conversation. So each message is answered once, and the answer is as durable as the
//! question.

use std::future::Future;
use std::time::{Duration, Instant};

use hermes_protocol::{
    CancelReason, ChatMessage, Decision, Event, Failure, MediaKind, Outcome, Role,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Inner, JobContext, Request};
use crate::approvals::{MAX_WAITING, Unaskable};
use crate::clock::sleep_until;
use crate::files_back::Collected;
use crate::jobs::ApprovalAsk;
use crate::media::MediaRef;
use crate::outbox::Reply;
use crate::replies;
use crate::store::Exchange;
use crate::telegram::format;
use crate::telegram::live::{LiveReply, bounded_answer};
use crate::telegram::sender::{Sender, plain_pieces};
use crate::telegram::split::MESSAGE_LIMIT;
use crate::usage::JobUsage;

/// How often "typing…" is renewed while a job runs (Telegram shows it for ~5 s).
const TYPING_EVERY: Duration = Duration::from_secs(4);
/// "typing…" starts only once a job has run this long: a reply that comes sooner makes
/// the indicator invisible anyway, and skipping it saves a Bot API call per message
/// (a sixth of the gateway's instructions per message in the throughput benchmark).
const TYPING_AFTER: Duration = Duration::from_millis(300);
/// How long the reply waits for a job's open approval questions to be edited into "not
/// run" (each one edit, retried through flood control).
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// The most fallback events kept for the circuits: a worker sends one per provider of
/// the job's chain, and the supervisor fails a worker that sends more; this bounds what
/// any runner can make the chat keep.
const MAX_FALLBACKS: usize = 64;

/// What a running job sends its chat: progress, and tool calls to approve.
pub struct Incoming {
    pub events: mpsc::Receiver<Event>,
    pub approvals: mpsc::UnboundedReceiver<ApprovalAsk>,
}

/// What a job left once it ended: its outcome, its fallback events (the quota circuits
/// learn from them) and what its provider calls used.
pub struct Followed {
    pub outcome: Outcome,
    pub fallbacks: Vec<Event>,
    pub usage: JobUsage,
}

/// Waits for `run`'s outcome while showing the job's progress in the chat and asking it
/// the job's approvals. Returns once every question is settled (so no button outlives the
/// job), with what the job left.
pub async fn follow(
    ctx: &JobContext,
    chat: i64,
    run: impl Future<Output = Outcome>,
    incoming: Incoming,
    live: &mut LiveReply,
) -> Followed {
    let Incoming {
        mut events,
        mut approvals,
    } = incoming;
    tokio::pin!(run);
    let typing = keep_typing(&ctx.sender, chat);
    tokio::pin!(typing);
    let job_over = CancellationToken::new();
    let mut questions = JoinSet::new();
    // Only fallbacks and usage matter once the job is over; keep those, let the rest go.
    let mut fallbacks = Vec::new();
    let mut usage = JobUsage::default();
    let outcome = loop {
        let draw_at = live.next_draw();
        tokio::select! {
            outcome = &mut run => break outcome,
            Some(event) = events.recv() => {
                live.observe(&event);
                usage.observe(&event);
                keep_fallback(&mut fallbacks, event);
            }
            Some(ask) = approvals.recv() => {
                while questions.try_join_next().is_some() {}
                if questions.len() >= MAX_WAITING {
                    // The model learns why; the chat is not told, so a burst of calls
                    // cannot become a burst of messages.
                    let _ = ask.decide.send(Decision::Unavailable {
                        reason: Unaskable::TooManyWaiting.for_model(),
                    });
                    continue;
                }
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
        usage.observe(&event);
        keep_fallback(&mut fallbacks, event);
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
    Followed {
        outcome,
        fallbacks,
        usage,
    }
}

/// `answer` as the chat gets it: rendered (off this thread when long), cut into at most
/// `format::MAX_PIECES` messages. Should rendering ever panic, the answer still goes out,
/// as plain text.
async fn rendered(answer: &str) -> Vec<format::Piece> {
    match format::render_off_thread(answer, MESSAGE_LIMIT).await {
        Some(pieces) => pieces,
        None => {
            let mut pieces = plain_pieces(answer);
            pieces.truncate(format::MAX_PIECES);
            pieces
        }
    }
}

/// An answer cut after `format::MAX_PIECES` messages (or at `MAX_ANSWER_BYTES`) is sent
/// whole as well, as a file after them: its last message says so instead of only that
/// it was cut. None when it was not cut, or the file could not be written (the cut
/// answer then goes as before).
async fn whole_answer(
    inner: &Inner,
    pieces: &mut [format::Piece],
    answer: &str,
) -> Option<crate::files_back::OutFile> {
    let cut_note = replies::answer_too_many_messages(format::MAX_PIECES);
    let last = pieces.last_mut()?;
    let too_many = last.plain.ends_with(&cut_note);
    let too_long = answer.len() > crate::jobs::MAX_ANSWER_BYTES;
    if !too_many && !too_long {
        return None;
    }
    let area = inner.ctx.outgoing.clone();
    let text = answer.to_string();
    let kept =
        tokio::task::spawn_blocking(move || crate::files_back::keep_answer(&area, &text)).await;
    let file = match kept {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => {
            tracing::warn!("cannot keep a long answer to send it whole: {e}");
            return None;
        }
        Err(e) => {
            tracing::warn!("cannot keep a long answer to send it whole: {e}");
            return None;
        }
    };
    if too_many {
        let note = replies::answer_follows_as(&file.name);
        last.plain.truncate(last.plain.len() - cut_note.len());
        last.plain.push_str(&note);
        let cut_html = crate::html::escape(&cut_note);
        if last.html.ends_with(&cut_html) {
            last.html.truncate(last.html.len() - cut_html.len());
            last.html.push_str(&crate::html::escape(&note));
        }
    }
    Some(file)
}

/// Keeps `event` for the circuits if it is a fallback and there is room.
fn keep_fallback(fallbacks: &mut Vec<Event>, event: Event) {
    if matches!(event, Event::FellBack { .. }) && fallbacks.len() < MAX_FALLBACKS {
        fallbacks.push(event);
    }
}

/// Commits and sends the one final reply for `outcome`, in place of the preview: the
/// turn's messages (and any `/stop` that came for it, `stop_requests`) answered, a
/// model's answer added to the conversation. True when the job was cut short by the
/// gateway stopping: its messages stay waiting for the next run, and the chat was told.
pub async fn deliver(
    inner: &Inner,
    request: Request,
    outcome: Outcome,
    sent_back: Collected,
    live: LiveReply,
    stop_requests: Vec<i64>,
    started: Instant,
) -> bool {
    let chat = request.chat;
    let outbox = &inner.ctx.outbox;
    let elapsed_ms = started.elapsed().as_millis();
    let edit = live.final_edit();
    // A reply the store refuses is the outbox's to hold and commit again before it goes.
    match outcome {
        Outcome::Reply(reply) => {
            tracing::info!(job_id = %request.id, chat_id = chat, user_id = request.user_id, provider = %reply.provider, elapsed_ms, "answered");
            let mut shown = if reply.text.trim().is_empty() {
                replies::EMPTY_ANSWER.to_string()
            } else {
                bounded_answer(reply.text.clone())
            };
            if !reply.heard.is_empty() && inner.ctx.settings.get().show_transcript {
                shown = format!("{}\n\n{shown}", replies::heard(&reply.heard));
            }
            // The conversation keeps a voice note as what it said, and any other file as
            // its placeholder: later turns send the model a reference, not the file.
            let question = heard_question(&request.text, &request.media, &reply.heard);
            let mut transcript = if reply.transcript.is_empty() {
                vec![ChatMessage::new(Role::Assistant, reply.text.clone())]
            } else {
                reply.transcript
            };
            // The conversation keeps what the user was shown.
            if let Some(last) = transcript.last_mut()
                && last.role == Role::Assistant
                && last.content == reply.text
            {
                last.content = bounded_answer(std::mem::take(&mut last.content));
            }
            let exchange = Exchange {
                chat_id: chat,
                question: question.clone(),
                transcript,
                provider: reply.provider,
                model: reply.model,
            };
            let mut pieces = rendered(&shown).await;
            let mut files = sent_back.files;
            if let Some(whole) = whole_answer(inner, &mut pieces, &reply.text).await {
                files.insert(0, whole);
            }
            if !sent_back.refused.is_empty() {
                let refused: Vec<(String, String)> = sent_back
                    .refused
                    .iter()
                    .map(|(name, why)| (name.clone(), why.to_string()))
                    .collect();
                pieces.extend(plain_pieces(&replies::files_not_sent(&refused)));
            }
            let _ = outbox.send(Reply {
                chat,
                answers: &request.rows,
                text: &shown,
                pieces,
                edit,
                exchange: Some(&exchange),
                question: Some(&question),
                files,
            });
        }
        Outcome::Failed(Failure::Cancelled {
            reason: CancelReason::ByUser,
        }) => {
            tracing::info!(job_id = %request.id, chat_id = chat, user_id = request.user_id, elapsed_ms, "stopped by /stop");
            // One reply for the job's messages, the /stops, and what waited behind it.
            let through = stop_requests.iter().copied().max().unwrap_or(i64::MAX);
            let waiting = inner.ctx.store.waiting(chat, through).unwrap_or_else(|e| {
                tracing::error!(chat_id = chat, "cannot read the waiting messages: {e}");
                Vec::new()
            });
            inner.no_longer_waiting(chat, waiting.len());
            let mut answers = request.rows;
            answers.extend(stop_requests);
            answers.extend(waiting);
            let _ = outbox.send(Reply {
                chat,
                answers: &answers,
                text: replies::STOPPED,
                pieces: plain_pieces(replies::STOPPED),
                edit,
                exchange: None,
                question: Some(&request.text),
                files: Vec::new(),
            });
            return false;
        }
        Outcome::Failed(failure @ Failure::Cancelled { .. }) => {
            tracing::warn!(job_id = %request.id, chat_id = chat, user_id = request.user_id, elapsed_ms, "failed: {failure}");
            // Cut short by the gateway stopping: the messages stay waiting, answered by
            // the next run; the chat is told so, and the reply answers nothing.
            let notice = replies::failure_text(&failure);
            let _ = outbox.send(Reply {
                chat,
                answers: &[],
                text: &notice,
                pieces: plain_pieces(&notice),
                edit,
                exchange: None,
                question: None,
                files: Vec::new(),
            });
            answer_late_stops(inner, chat, stop_requests);
            return true;
        }
        Outcome::Failed(failure) => {
            tracing::warn!(job_id = %request.id, chat_id = chat, user_id = request.user_id, class = %failure.class(), elapsed_ms, "failed: {failure}");
            let reply = replies::failure_text(&failure);
            let _ = outbox.send(Reply {
                chat,
                answers: &request.rows,
                text: &reply,
                pieces: plain_pieces(&reply),
                edit,
                exchange: None,
                question: Some(&request.text),
                files: Vec::new(),
            });
        }
    }
    answer_late_stops(inner, chat, stop_requests);
    false
}

/// The turn's text with each voice note's placeholder replaced by what it said.
fn heard_question(text: &str, media: &[(MediaRef, String)], heard: &[String]) -> String {
    let voices = media
        .iter()
        .filter(|(m, _)| matches!(m.media_kind(), MediaKind::Voice | MediaKind::Audio));
    let mut question = text.to_string();
    for ((_, placeholder), said) in voices.zip(heard) {
        question = question.replacen(placeholder, said, 1);
    }
    question
}

/// A /stop that lost the race against the answer still gets its one reply.
fn answer_late_stops(inner: &Inner, chat: i64, stop_requests: Vec<i64>) {
    for stop_update in stop_requests {
        inner.reply(chat, &[stop_update], replies::TOO_LATE);
    }
}

async fn keep_typing(sender: &Sender, chat: i64) -> std::convert::Infallible {
    tokio::time::sleep(TYPING_AFTER).await;
    loop {
        sender.typing(chat).await;
        tokio::time::sleep(TYPING_EVERY).await;
    }
}
