//! Whether a job may start (the user's and everyone's budgets, `usage::budget`), and what
//! it is sent with: the chat's provider chain (its `/model` choice first) less the
//! providers whose quota circuit is open, and the conversation (the system prompt, the
//! last turns of history, the new question), with the settings the job starts with.
//!
//! A job travels in one frame of at most [`MAX_FRAME_LEN`] bytes. A conversation whose
//! history would not fit is trimmed here, oldest turns first, before anything is sent: a
//! job too big to send is the gateway's business, never blamed on a worker.

use std::time::Instant;

use hermes_protocol::{ChatMessage, Failure, Job, MAX_FRAME_LEN, MediaKind, Role, codec};

use super::{JobContext, Request};
use crate::circuit::Plan;
use crate::clock::unix_now;
use crate::commands::model;
use crate::media::MediaRef;
use crate::replied::Replied;
use crate::settings::ChatSettings;
use crate::usage::budget;

/// Room a job may take in its frame: the cap less a margin for the frame's own bytes.
const JOB_ROOM: usize = MAX_FRAME_LEN - 1024;
/// A job whose size estimate stays under this is not measured exactly (encoding it twice
/// would cost every message); the estimate only ever overshoots.
const MEASURE_ABOVE: usize = MAX_FRAME_LEN / 2;

/// A job ready to run, and the circuit plan its outcome settles.
pub struct Prepared {
    pub job: Job,
    pub plan: Plan,
}

/// The job for `request`, or, when a budget is spent or every provider of the chain has
/// its quota circuit open, the failure to answer with at once (no worker, no request);
/// likewise when the question alone does not fit in a job.
pub fn prepare(
    ctx: &JobContext,
    settings: &ChatSettings,
    request: &Request,
    now: Instant,
) -> Result<Prepared, Failure> {
    budget::check(&ctx.store, &settings.budgets, request.user_id, unix_now())?;
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
    let (messages, history_from) = conversation(ctx, settings, request);
    let mut job = Job {
        id: request.id,
        chat_id: request.chat,
        messages,
        providers: plan.providers.clone(),
        timeout_ms: u64::try_from(settings.job_timeout.as_millis()).unwrap_or(u64::MAX),
        stream: settings.streaming,
        tools: settings.tools.clone(),
        max_steps: settings.max_steps,
        // Filled in once the turn's files are fetched.
        attachments: Vec::new(),
        transcription: transcription(settings, request),
        // Named by the supervisor, which makes it in the worker's scratch directory.
        output_dir: None,
    };
    let trimmed = fit_in_frame(&mut job, history_from)?;
    if trimmed > 0 {
        tracing::warn!(
            chat_id = request.chat,
            "the conversation is over the job size limit ({} MiB): its {trimmed} oldest turn(s) were left out",
            MAX_FRAME_LEN / (1024 * 1024)
        );
    }
    Ok(Prepared { job, plan })
}

impl Prepared {
    /// The job asks `request` after some of the turn's messages were taken out of it (their
    /// file was refused or not fetched, and they were answered with why): the question is
    /// what is left. The history stays as it was: the question only got shorter, so the
    /// job still fits in its frame.
    pub fn narrow_to(&mut self, settings: &ChatSettings, request: &Request) {
        if let Some(question) = self.job.messages.last_mut() {
            question.content = request.text.clone();
        }
        self.job.transcription = transcription(settings, request);
    }
}

/// What transcribes the turn's voice notes, when it has any.
fn transcription(
    settings: &ChatSettings,
    request: &Request,
) -> Option<Box<hermes_protocol::TranscriptionPlan>> {
    request
        .media
        .iter()
        .any(|(m, _)| matches!(m.media_kind(), MediaKind::Voice | MediaKind::Audio))
        .then(|| settings.transcription.clone().map(Box::new))
        .flatten()
}

/// The system prompt (if any), the history the chat's conversation keeps, and last the
/// new question; with where the history starts.
fn conversation(
    ctx: &JobContext,
    settings: &ChatSettings,
    request: &Request,
) -> (Vec<ChatMessage>, usize) {
    let mut messages = Vec::new();
    if let Some(prompt) = &settings.system_prompt {
        messages.push(ChatMessage::new(Role::System, prompt.clone()));
    }
    let history_from = messages.len();
    match ctx.store.history(request.chat, ctx.max_history) {
        Ok(history) => messages.extend(history),
        Err(e) => tracing::warn!(
            chat_id = request.chat,
            "cannot read the conversation history, sending none: {e}"
        ),
    }
    messages.push(ChatMessage::new(Role::User, request.text.clone()));
    (messages, history_from)
}

/// Leaves out the oldest turns of `job`'s history (which starts at `history_from` and
/// ends before the last message, the question) until the job fits in a frame; the number
/// of messages left out. The history still starts at a question, never inside a tool
/// exchange. A job that does not fit even without history fails as too long.
fn fit_in_frame(job: &mut Job, history_from: usize) -> Result<usize, Failure> {
    if estimate(job) <= MEASURE_ABOVE {
        return Ok(0);
    }
    let mut removed = 0;
    loop {
        let size = codec::to_bytes(&*job)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size <= JOB_ROOM {
            return Ok(removed);
        }
        let question = job.messages.len().saturating_sub(1);
        if history_from >= question {
            return Err(Failure::ContextTooLong {
                provider: "gateway".into(),
                detail: format!(
                    "the question alone is {size} bytes, over the {JOB_ROOM}-byte job limit"
                ),
            });
        }
        // One turn: the oldest question and everything up to the next one.
        let mut end = history_from + 1;
        while end < question && job.messages[end].role != Role::User {
            end += 1;
        }
        job.messages.drain(history_from..end);
        removed += end - history_from;
    }
}

/// An upper bound of the job's encoded size: every string's bytes plus room for its
/// length and the fields around it.
fn estimate(job: &Job) -> usize {
    const FIELD: usize = 16;
    let messages: usize = job
        .messages
        .iter()
        .map(|m| {
            FIELD
                + m.content.len()
                + m.tool_call_id.as_ref().map_or(0, |id| id.len() + FIELD)
                + m.tool_calls
                    .iter()
                    .map(|c| c.id.len() + c.name.len() + c.arguments.len() + 3 * FIELD)
                    .sum::<usize>()
        })
        .sum();
    let providers: usize = job
        .providers
        .iter()
        .map(|p| {
            p.name.len()
                + p.base_url.len()
                + p.model.len()
                + p.api_key.as_ref().map_or(0, |k| k.expose().len())
                + 6 * FIELD
        })
        .sum();
    let tools: usize = job
        .tools
        .iter()
        .map(|t| {
            t.name.len()
                + t.command.len()
                + t.args.iter().map(|a| a.len() + FIELD).sum::<usize>()
                + t.env
                    .iter()
                    .map(|(k, v)| k.len() + v.expose().len() + 2 * FIELD)
                    .sum::<usize>()
                + 6 * FIELD
        })
        .sum();
    messages + providers + tools + 8 * FIELD
}

/// One message of a turn as the model is asked it: its row, its text, its file (with the
/// placeholder that stands for it in the question), and what it replies to (with the
/// placeholder of that message's file while the turn has it).
pub(super) struct Asked {
    pub(super) row: i64,
    pub(super) text: String,
    pub(super) file: Option<(MediaRef, String)>,
    pub(super) replied: Option<(Replied, Option<String>)>,
}

impl Asked {
    /// The files this message brings, in the order the question names them: the
    /// replied-to message's first (its context comes first), then its own; each with
    /// whether it is the replied-to one.
    pub(super) fn files(&self) -> impl Iterator<Item = ((MediaRef, String), bool)> + '_ {
        let quoted = self.replied.as_ref().and_then(|(replied, placeholder)| {
            Some(((replied.media.clone()?, placeholder.clone()?), true))
        });
        quoted
            .into_iter()
            .chain(self.file.clone().map(|file| (file, false)))
    }
}

/// The turn's rows, its question (each message on its own lines: what it replies to,
/// quoted, then a file's placeholder, then its text or caption), and its files.
pub(super) fn compose(asked: &[Asked]) -> (Vec<i64>, String, Vec<(MediaRef, String)>) {
    let rows = asked.iter().map(|a| a.row).collect();
    let texts: Vec<String> = asked
        .iter()
        .map(|a| {
            let own = match &a.file {
                None => a.text.clone(),
                Some((_, placeholder)) if a.text.trim().is_empty() => placeholder.clone(),
                Some((_, placeholder)) => format!("{placeholder}\n{}", a.text),
            };
            match &a.replied {
                Some((replied, placeholder)) => {
                    format!("{}\n{own}", replied.context(placeholder.as_deref()))
                }
                None => own,
            }
        })
        .collect();
    let media = asked
        .iter()
        .flat_map(|a| a.files().map(|(file, _)| file))
        .collect();
    (rows, texts.join("\n"), media)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermes_protocol::{JobId, ToolCall};

    fn job(messages: Vec<ChatMessage>) -> Job {
        Job {
            id: JobId(1),
            chat_id: 7,
            messages,
            providers: Vec::new(),
            timeout_ms: 1000,
            stream: false,
            tools: Vec::new(),
            max_steps: 8,
            attachments: Vec::new(),
            transcription: None,
            output_dir: None,
        }
    }

    #[test]
    fn a_small_job_is_left_whole_and_its_estimate_overshoots() {
        let mut asking = ChatMessage::new(Role::Assistant, "");
        asking.tool_calls = vec![ToolCall::new("c1", "time__now", "{}")];
        let mut j = job(vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "hi"),
            asking,
            ChatMessage::tool_result("c1", "12:00"),
            ChatMessage::new(Role::User, "and now?"),
        ]);
        assert!(estimate(&j) >= codec::to_bytes(&j).unwrap().len());
        assert_eq!(fit_in_frame(&mut j, 1).unwrap(), 0);
        assert_eq!(j.messages.len(), 5);
    }

    #[test]
    fn an_oversized_history_loses_its_oldest_turns_and_still_starts_at_a_question() {
        let big = "x".repeat(MAX_FRAME_LEN / 3);
        let mut asking = ChatMessage::new(Role::Assistant, "");
        asking.tool_calls = vec![ToolCall::new("c1", "files__read", "{}")];
        let mut j = job(vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "read it"),
            asking,
            ChatMessage::tool_result("c1", big.clone()),
            ChatMessage::new(Role::Assistant, big.clone()),
            ChatMessage::new(Role::User, "again"),
            ChatMessage::new(Role::Assistant, big.clone()),
            ChatMessage::new(Role::User, "the question"),
        ]);
        let removed = fit_in_frame(&mut j, 1).unwrap();
        assert_eq!(removed, 4, "the whole first turn, tool exchange included");
        let roles: Vec<Role> = j.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(j.messages[3].content, "the question");
        assert!(codec::to_bytes(&j).unwrap().len() <= JOB_ROOM);
    }

    #[test]
    fn a_question_too_big_alone_fails_as_too_long() {
        let mut j = job(vec![
            ChatMessage::new(Role::User, "old"),
            ChatMessage::new(Role::User, "y".repeat(MAX_FRAME_LEN)),
        ]);
        assert!(matches!(
            fit_in_frame(&mut j, 0),
            Err(Failure::ContextTooLong { .. })
        ));
    }
}
