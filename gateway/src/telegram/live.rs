//! The answer as it is written: one message, sent once there is something worth reading
//! and edited as the text grows, with a status line while tools run; at the end it becomes
//! the finished, formatted answer (or the error), so the chat keeps exactly one reply.
//!
//! Telegram limits how often a bot may edit, so edits are spaced by
//! `telegram.edit_interval_ms` and a 429 pauses them for its `retry_after`; a preview that
//! cannot be edited any more is left alone and the final text is sent as a new message.
//! Nothing here waits inside the job's loop except the edit request itself.

use std::time::{Duration, Instant};

use hermes_protocol::Event;
use teloxide_core::types::MessageId;

use super::format::{self, Piece};
use super::sender::{Delivery, Edit, Sender, plain_pieces};
use super::split::{MESSAGE_LIMIT, utf16_len};
use crate::replies;

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
        }
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
            Event::ToolStarted { name } => self.tools.push(name.clone()),
            Event::ToolFinished { name, .. } => {
                if let Some(i) = self.tools.iter().position(|t| t == name) {
                    self.tools.remove(i);
                }
            }
            Event::Retrying { .. } | Event::FellBack { .. } => return,
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
    fn wanted(&self) -> Option<Piece> {
        let preview = self.preview();
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

    fn preview(&self) -> Option<Piece> {
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
        let mut pieces = format::render(&text[..end], PREVIEW_LIMIT).into_iter();
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
        let Some(piece) = self.wanted() else { return };
        if self.shown.as_ref() == Some(&piece.html) {
            return;
        }
        self.last_edit = Some(Instant::now());
        match self.message {
            None => match self.sender.send_piece(self.chat, &piece).await {
                Some(id) => {
                    self.message = Some(id);
                    self.shown = Some(piece.html);
                }
                None => self.stuck = true,
            },
            Some(id) => match self.sender.edit_piece(self.chat, id, &piece).await {
                Edit::Done => self.shown = Some(piece.html),
                Edit::RetryAfter(wait) => {
                    tracing::info!(
                        chat_id = self.chat,
                        "edits paused for {wait:?} (flood control)"
                    );
                    self.paused_until = Some(Instant::now() + wait.min(MAX_PAUSE));
                    // Not shown yet: draw again once the pause is over.
                    self.changed = true;
                }
                Edit::Failed => self.stuck = true,
            },
        }
    }

    /// Ends with the model's answer (Markdown), formatted.
    pub async fn finish_markdown(self, markdown: &str) -> Delivery {
        let pieces = format::render(markdown, MESSAGE_LIMIT);
        self.finish(pieces).await
    }

    /// Ends with the gateway's own words (an error, a notice), as plain text.
    pub async fn finish_plain(self, text: &str) -> Delivery {
        self.finish(plain_pieces(text)).await
    }

    async fn finish(self, pieces: Vec<Piece>) -> Delivery {
        let mut rest = pieces.as_slice();
        if let (Some(id), Some((first, others))) = (self.message, pieces.split_first()) {
            // The last edit keeps the spacing too (and a flood-control pause): the reader
            // already sees nearly all of it, and an early edit would only earn a 429.
            tokio::time::sleep_until(self.next_edit_allowed().into()).await;
            if self.sender.replace_with(self.chat, id, first).await == Delivery::Dropped {
                return Delivery::Dropped;
            }
            rest = others;
        }
        self.sender.send_pieces(self.chat, rest).await
    }
}
