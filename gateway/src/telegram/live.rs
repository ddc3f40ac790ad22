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

/// Streamed text is shown once it holds a sentence ending past this many characters…
const FIRST_SENTENCE_CHARS: usize = 60;
/// …or this many characters, sentence or not.
const FIRST_SHOW_CHARS: usize = 200;
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
            Event::Attempt { .. } => self.text.clear(),
            Event::Delta(piece) => self.text.push_str(piece),
            Event::ToolStarted { name } => self.tools.push(name.clone()),
            Event::ToolFinished { name, .. } => {
                if let Some(i) = self.tools.iter().position(|t| t == name) {
                    self.tools.remove(i);
                }
            }
            Event::Retrying { .. } | Event::FellBack { .. } => {}
        }
    }

    /// What the message should show now, if anything is worth showing.
    fn wanted(&self) -> Option<Piece> {
        let preview = self.preview();
        let status = (!self.tools.is_empty()).then(|| {
            let line = format!("⚙️ using {} …", self.tools.join(", "));
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
        let text = self.text.trim();
        let len = utf16_len(text);
        let sentence = len >= FIRST_SENTENCE_CHARS
            && [". ", "! ", "? ", ".\n", "!\n", "?\n", "\n\n"]
                .iter()
                .any(|end| text.contains(end));
        // Once the message exists, any text is worth an edit; before, only a sentence or
        // two, so a quick answer arrives whole instead of as a stub that is edited.
        if !(sentence || len >= FIRST_SHOW_CHARS || (self.message.is_some() && len > 0)) {
            return None;
        }
        let mut pieces = format::render(text, PREVIEW_LIMIT).into_iter();
        let mut first = pieces.next()?;
        if pieces.next().is_some() {
            first.html.push_str(" …");
            first.plain.push_str(" …");
        }
        Some(first)
    }

    /// When the loop should call [`LiveReply::draw`], or None while there is nothing new.
    pub fn next_draw(&self) -> Option<Instant> {
        if !self.enabled || self.stuck {
            return None;
        }
        let wanted = self.wanted()?;
        if self.shown.as_ref() == Some(&wanted.html) {
            return None;
        }
        let mut at = Instant::now();
        if let Some(last) = self.last_edit {
            at = at.max(last + self.interval);
        }
        if let Some(until) = self.paused_until {
            at = at.max(until);
        }
        Some(at)
    }

    /// Sends or edits the message to show what is wanted now.
    pub async fn draw(&mut self) {
        let Some(piece) = self.wanted() else { return };
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
                        chat = self.chat,
                        "edits paused for {wait:?} (flood control)"
                    );
                    self.paused_until = Some(Instant::now() + wait.min(MAX_PAUSE));
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
            let mut at = Instant::now();
            if let Some(last) = self.last_edit {
                at = at.max(last + self.interval);
            }
            if let Some(until) = self.paused_until {
                at = at.max(until);
            }
            tokio::time::sleep_until(at.into()).await;
            if self.sender.replace_with(self.chat, id, first).await == Delivery::Dropped {
                return Delivery::Dropped;
            }
            rest = others;
        }
        self.sender.send_pieces(self.chat, rest).await
    }
}
