//! The answer as it is written: one message, sent once there is something worth reading
//! and edited as the text grows, with a status line while tools run. At the end the
//! outbox makes it the finished, formatted answer (or the error), so the chat keeps
//! exactly one reply: the preview is best effort, the final text is durable.
//!
//! Telegram limits how often a bot may edit, so edits are spaced by
//! `telegram.edit_interval_ms` and a 429 pauses them for its `retry_after`; a preview that
//! cannot be edited any more is left alone (the outbox then sends the final text as a new
//! message). Nothing here waits inside the job's loop except the request itself (and a
//! long preview's rendering, on the blocking pool). The streamed text kept here is
//! bounded by [`MAX_ANSWER_BYTES`].
//!
//! The preview's message is recorded in the store as soon as it exists
//! ([`LiveReply::recorded_in`]): a run killed mid-answer cannot edit it, so the next run
//! does, to say it was interrupted, instead of leaving it beside the new answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hermes_protocol::Event;
use teloxide_core::types::MessageId;

use super::format::{self, Piece};
use super::sender::{SendError, Sender};
use super::split::{MESSAGE_LIMIT, utf16_len};
pub use crate::jobs::MAX_ANSWER_BYTES;
use crate::replies;
use crate::store::Store;
pub use crate::text::cut_at_char;

/// Streamed text is shown once it holds a sentence ending past this many characters…
const FIRST_SENTENCE_CHARS: usize = 60;
/// …or this many characters, sentence or not.
const FIRST_SHOW_CHARS: usize = 200;
/// What ends a sentence, for the first preview.
const SENTENCE_ENDS: [&str; 7] = [". ", "! ", "? ", ".\n", "!\n", "?\n", "\n\n"];
/// Longest flood-control pause honoured between edits.
const MAX_PAUSE: Duration = Duration::from_secs(120);
/// Room kept in a preview for the status line and the ellipsis.
const PREVIEW_LIMIT: usize = MESSAGE_LIMIT - 200;
/// The most tools a job may run at once, and the longest name one may have: what a
/// worker's events can make the status line keep. The supervisor fails a worker past
/// either; here, a tool past the first bound is not listed and a name is cut.
pub const MAX_TOOLS_RUNNING: usize = 128;
pub const MAX_TOOL_NAME_BYTES: usize = 256;

pub struct LiveReply {
    sender: Sender,
    chat: i64,
    /// Off: no preview and no status line; the answer arrives as finished messages.
    enabled: bool,
    interval: Duration,
    message: Option<MessageId>,
    /// The HTML the message shows now.
    shown: Option<String>,
    /// Text streamed since the last provider attempt began.
    text: String,
    /// Its length in UTF-16 units, and whether a sentence has ended in it: kept as the
    /// text grows, so a long stream is not measured again at every piece.
    text_units: usize,
    sentence_ended: bool,
    /// Something changed since the message was last drawn.
    changed: bool,
    /// Tools running now, as `server.tool`, in the order they started.
    tools: Vec<String>,
    /// The last send or edit (at first: the job's start).
    last_edit: Option<Instant>,
    paused_until: Option<Instant>,
    /// Editing failed for good (message deleted, …): no more previews.
    stuck: bool,
    /// Where the preview's message is recorded, for a run killed before replacing it.
    store: Option<Arc<Store>>,
}

impl LiveReply {
    pub fn new(sender: Sender, chat: i64, enabled: bool, interval: Duration) -> Self {
        LiveReply {
            sender,
            chat,
            enabled,
            interval,
            message: None,
            shown: None,
            text: String::new(),
            text_units: 0,
            sentence_ended: false,
            changed: false,
            tools: Vec::new(),
            // Counted from the start, so an answer that is done within one interval
            // arrives whole, with no preview to edit and no status line to remove.
            last_edit: Some(Instant::now()),
            paused_until: None,
            stuck: false,
            store: None,
        }
    }

    /// The preview's message is recorded in `store` once sent (see the module's
    /// documentation).
    pub fn recorded_in(mut self, store: Arc<Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Takes in a job event.
    pub fn observe(&mut self, event: &Event) {
        match event {
            // A new attempt starts the answer over: what came before was from an attempt
            // that failed, or a step that ended in tool calls.
            Event::Attempt { .. } => {
                self.text.clear();
                self.text_units = 0;
                self.sentence_ended = false;
            }
            Event::Delta(piece) => {
                let room = MAX_ANSWER_BYTES.saturating_sub(self.text.len());
                if room == 0 {
                    return;
                }
                let piece = cut_at_char(piece, room);
                // The character before the piece too: an end may straddle two pieces.
                let from = self
                    .text
                    .char_indices()
                    .next_back()
                    .map_or(self.text.len(), |(i, _)| i);
                self.text.push_str(piece);
                self.text_units += utf16_len(piece);
                self.sentence_ended = self.sentence_ended
                    || SENTENCE_ENDS
                        .iter()
                        .any(|end| self.text[from..].contains(end));
            }
            Event::ToolStarted { name } => {
                if self.tools.len() >= MAX_TOOLS_RUNNING {
                    return;
                }
                self.tools
                    .push(cut_at_char(name, MAX_TOOL_NAME_BYTES).to_string());
            }
            Event::ToolFinished { name, .. } => {
                let name = cut_at_char(name, MAX_TOOL_NAME_BYTES);
                if let Some(i) = self.tools.iter().position(|t| t == name) {
                    self.tools.remove(i);
                }
            }
            Event::Retrying { .. } | Event::FellBack { .. } | Event::Usage { .. } => return,
        }
        self.changed = true;
    }

    /// Whether the streamed text is worth showing: once the message exists, any text is;
    /// before, only a sentence or two, so a quick answer arrives whole instead of as a
    /// stub that is edited.
    fn text_ready(&self) -> bool {
        let units = self.text_units;
        (self.sentence_ended && units >= FIRST_SENTENCE_CHARS)
            || units >= FIRST_SHOW_CHARS
            || (self.message.is_some() && !self.text.trim().is_empty())
    }

    /// What the message should show now, if anything is worth showing.
    async fn wanted(&self) -> Option<Piece> {
        let preview = self.preview().await;
        let status = (!self.tools.is_empty()).then(|| {
            let line = replies::tools_running(&self.tools);
            Piece {
                html: format!("<i>{}</i>", format::escape(&line)),
                plain: line,
            }
        });
        match (preview, status) {
            (Some(p), Some(s)) => Some(Piece {
                html: format!("{}\n\n{}", p.html, s.html),
                plain: format!("{}\n\n{}", p.plain, s.plain),
            }),
            (p, s) => p.or(s),
        }
    }

    async fn preview(&self) -> Option<Piece> {
        if !self.text_ready() {
            return None;
        }
        let text = self.text.trim();
        // The preview shows one message's worth; markup only ever shortens the visible
        // text, so twice that much source is plenty, and rendering it stays cheap however
        // long the answer grows.
        let end = text
            .char_indices()
            .nth(2 * PREVIEW_LIMIT)
            .map_or(text.len(), |(i, _)| i);
        let mut pieces = format::render_off_thread(&text[..end], PREVIEW_LIMIT)
            .await?
            .into_iter();
        let mut first = pieces.next()?;
        if pieces.next().is_some() || end < text.len() {
            first.html.push_str(" …");
            first.plain.push_str(" …");
        }
        Some(first)
    }

    /// When the loop should call [`LiveReply::draw`], or None while there is nothing new.
    /// Cheap: it renders nothing, so the loop may ask after every streamed piece.
    pub fn next_draw(&self) -> Option<Instant> {
        if !self.enabled || self.stuck || !self.changed {
            return None;
        }
        if self.tools.is_empty() && !self.text_ready() {
            return None;
        }
        Some(self.next_edit_allowed())
    }

    /// The first moment an edit keeps the spacing and any flood-control pause.
    fn next_edit_allowed(&self) -> Instant {
        let mut at = Instant::now();
        if let Some(last) = self.last_edit {
            at = at.max(last + self.interval);
        }
        if let Some(until) = self.paused_until {
            at = at.max(until);
        }
        at
    }

    /// Sends or edits the message to show what is wanted now.
    pub async fn draw(&mut self) {
        self.changed = false;
        let Some(piece) = self.wanted().await else {
            return;
        };
        if self.shown.as_ref() == Some(&piece.html) {
            return;
        }
        self.last_edit = Some(Instant::now());
        let sender = &self.sender;
        match self.message {
            None => {
                let sent = match sender.send_once(self.chat, &piece, false).await {
                    Err(SendError::BadEntities(_)) => {
                        sender.send_once(self.chat, &piece, true).await
                    }
                    other => other,
                };
                match sent {
                    Ok(id) => {
                        self.message = Some(id);
                        self.shown = Some(piece.html);
                        if let Some(store) = &self.store
                            && let Err(e) = store.preview_shown(self.chat, id.0)
                        {
                            tracing::warn!(
                                chat_id = self.chat,
                                "cannot record the preview; a crash now would leave it as it is: {e}"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::info!(chat_id = self.chat, "no preview of the answer: {e:?}");
                        self.stuck = true;
                    }
                }
            }
            Some(id) => {
                let edited = match sender.edit_once(self.chat, id, &piece, false).await {
                    Err(SendError::BadEntities(_)) => {
                        sender.edit_once(self.chat, id, &piece, true).await
                    }
                    other => other,
                };
                match edited {
                    Ok(()) => self.shown = Some(piece.html),
                    Err(SendError::RetryAfter(wait)) => {
                        tracing::info!(
                            chat_id = self.chat,
                            "edits paused for {wait:?} (flood control)"
                        );
                        self.paused_until = Some(Instant::now() + wait.min(MAX_PAUSE));
                        // Not shown yet: draw again once the pause is over.
                        self.changed = true;
                    }
                    Err(e) => {
                        tracing::info!(chat_id = self.chat, "the preview stays as it is: {e:?}");
                        self.stuck = true;
                    }
                }
            }
        }
    }

    /// The preview message the final text should replace, and the first moment an edit
    /// keeps the spacing (and any flood-control pause): the reader already sees nearly all
    /// of it, and an early edit would only earn a 429. None when nothing was shown.
    pub fn final_edit(&self) -> Option<(MessageId, Instant)> {
        self.message.map(|id| (id, self.next_edit_allowed()))
    }
}

/// `answer` as the gateway keeps and shows it: whole up to [`MAX_ANSWER_BYTES`], cut there
/// with a note beyond.
pub fn bounded_answer(answer: String) -> String {
    if answer.len() <= MAX_ANSWER_BYTES {
        return answer;
    }
    let mut cut = cut_at_char(&answer, MAX_ANSWER_BYTES).to_string();
    cut.push_str(&replies::answer_cut(MAX_ANSWER_BYTES / 1024));
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tools_that_never_finish_are_listed_up_to_the_bound() {
        let sender = Sender::new(teloxide_core::Bot::new("0:test"));
        let mut live = LiveReply::new(sender, 1, true, Duration::from_secs(1));
        let long = "t".repeat(10 * MAX_TOOL_NAME_BYTES);
        for i in 0..MAX_TOOLS_RUNNING + 1000 {
            live.observe(&Event::ToolStarted {
                name: format!("{long}{i}"),
            });
        }
        assert_eq!(live.tools.len(), MAX_TOOLS_RUNNING);
        assert!(live.tools.iter().all(|t| t.len() <= MAX_TOOL_NAME_BYTES));
        live.observe(&Event::ToolFinished {
            name: format!("{long}0"),
            ok: true,
            ms: 1,
        });
        assert_eq!(
            live.tools.len(),
            MAX_TOOLS_RUNNING - 1,
            "a cut name still ends"
        );
    }

    #[test]
    fn an_answer_over_the_bound_is_cut_on_a_character_with_a_note() {
        let short = "é".repeat(10);
        assert_eq!(bounded_answer(short.clone()), short);
        let long = "é".repeat(MAX_ANSWER_BYTES);
        let cut = bounded_answer(long);
        let note = replies::answer_cut(MAX_ANSWER_BYTES / 1024);
        assert!(cut.ends_with(&note));
        let kept = &cut[..cut.len() - note.len()];
        assert!(kept.len() <= MAX_ANSWER_BYTES && kept.len() > MAX_ANSWER_BYTES - 4);
        assert!(kept.chars().all(|c| c == 'é'));
    }
}
