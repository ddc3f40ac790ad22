//! Outgoing messages. Sending is best effort with bounded persistence: Telegram's flood
//! control (`retry_after`) is waited out, network errors are retried a few times, and a
//! refusal (the user blocked the bot, the chat is gone) is logged and dropped. Nothing
//! here can fail the caller: a reply that cannot be delivered must not stop the next one.
//!
//! Everything goes out as [`Piece`]s: Telegram HTML plus the same text without markup.
//! When Telegram cannot parse a piece's HTML, that piece goes again as plain text, so bad
//! formatting never costs the user the answer. Edits (the streamed answer) are cheaper to
//! lose: they report flood control to the caller, who pauses, instead of waiting here.

use std::time::Duration;

use teloxide_core::payloads::{
    AnswerCallbackQuerySetters, EditMessageTextSetters, SendMessageSetters,
};
use teloxide_core::prelude::*;
use teloxide_core::types::{
    CallbackQueryId, ChatAction, ChatId, InlineKeyboardMarkup, MessageId, ParseMode,
};
use teloxide_core::{ApiError, RequestError};

use super::format::{self, Piece};
use super::split::{MESSAGE_LIMIT, split_message};
use hermes_retry::Backoff;

/// Tries per message piece before giving up on it.
const MAX_TRIES: u32 = 5;
/// Longest flood-control wait honoured; Telegram asks for seconds, rarely minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Sender {
    bot: Bot,
}

/// Whether a message reached the chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    Dropped,
}

/// How an edit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// The message shows the new text (or already did).
    Done,
    /// Flood control: no edit before this much time has passed.
    RetryAfter(Duration),
    /// The message cannot be edited (deleted, too old) or the request failed.
    Failed,
}

/// Plain text as pieces: split to size, escaped for HTML.
pub fn plain_pieces(text: &str) -> Vec<Piece> {
    split_message(text, MESSAGE_LIMIT)
        .into_iter()
        .map(|plain| Piece {
            html: format::escape(&plain),
            plain,
        })
        .collect()
}

impl Sender {
    pub fn new(bot: Bot) -> Self {
        Sender { bot }
    }

    /// Sends plain `text` (the gateway's own words), split as Telegram's limit requires.
    pub async fn send_text(&self, chat: i64, text: &str) -> Delivery {
        self.send_pieces(chat, &plain_pieces(text)).await
    }

    pub async fn send_pieces(&self, chat: i64, pieces: &[Piece]) -> Delivery {
        for piece in pieces {
            if self.send_piece(chat, piece).await.is_none() {
                return Delivery::Dropped;
            }
        }
        Delivery::Sent
    }

    /// Sends one piece; the id of the message it became, or None when it was dropped.
    pub async fn send_piece(&self, chat: i64, piece: &Piece) -> Option<MessageId> {
        self.send_piece_with(chat, piece, None).await
    }

    /// [`Sender::send_piece`] with buttons under the message.
    pub async fn send_piece_with(
        &self,
        chat: i64,
        piece: &Piece,
        keyboard: Option<InlineKeyboardMarkup>,
    ) -> Option<MessageId> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        let mut plain = false;
        for attempt in 1..=MAX_TRIES {
            let request = if plain {
                self.bot.send_message(ChatId(chat), piece.plain.as_str())
            } else {
                self.bot
                    .send_message(ChatId(chat), piece.html.as_str())
                    .parse_mode(ParseMode::Html)
            };
            let request = match &keyboard {
                Some(keyboard) => request.reply_markup(keyboard.clone()),
                None => request,
            };
            let error = match request.await {
                Ok(message) => return Some(message.id),
                Err(e) => e,
            };
            let wait = match &error {
                RequestError::RetryAfter(after) => after.duration().min(MAX_RETRY_AFTER),
                RequestError::Network(_)
                | RequestError::Io(_)
                | RequestError::InvalidJson { .. } => backoff.next_delay(),
                RequestError::Api(ApiError::CantParseEntities(why)) if !plain => {
                    tracing::info!(
                        chat_id = chat,
                        "Telegram could not parse the message's entities ({why}); resending as plain text"
                    );
                    plain = true;
                    continue;
                }
                RequestError::Api(api) => {
                    tracing::warn!(
                        chat_id = chat,
                        "Telegram refused a message: {}",
                        describe_api_error(api)
                    );
                    return None;
                }
                RequestError::MigrateToChatId(new) => {
                    tracing::warn!(chat_id = chat, "chat moved to {new}; message dropped");
                    return None;
                }
            };
            if attempt < MAX_TRIES {
                tracing::info!(
                    chat_id = chat,
                    attempt,
                    "sendMessage failed ({error}); retrying in {wait:?}"
                );
                tokio::time::sleep(wait).await;
            } else {
                tracing::warn!(
                    chat_id = chat,
                    "sendMessage failed {MAX_TRIES} times ({error}); message dropped"
                );
            }
        }
        None
    }

    /// Replaces the text of message `id` with `piece`, once (plain text again if Telegram
    /// cannot parse the HTML).
    pub async fn edit_piece(&self, chat: i64, id: MessageId, piece: &Piece) -> Edit {
        let html = self
            .bot
            .edit_message_text(ChatId(chat), id, piece.html.as_str())
            .parse_mode(ParseMode::Html)
            .await;
        let error = match html {
            Ok(_) => return Edit::Done,
            Err(RequestError::Api(ApiError::CantParseEntities(why))) => {
                tracing::info!(
                    chat_id = chat,
                    "Telegram could not parse an edit's entities ({why}); editing as plain text"
                );
                match self
                    .bot
                    .edit_message_text(ChatId(chat), id, piece.plain.as_str())
                    .await
                {
                    Ok(_) => return Edit::Done,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        match error {
            RequestError::Api(ApiError::MessageNotModified) => Edit::Done,
            RequestError::RetryAfter(after) => Edit::RetryAfter(after.duration()),
            other => {
                tracing::info!(chat_id = chat, "editMessageText failed: {other}");
                Edit::Failed
            }
        }
    }

    /// Makes message `id` show `piece` (without any buttons it had), waiting out flood
    /// control; never a new message.
    pub async fn replace_once(&self, chat: i64, id: MessageId, piece: &Piece) -> Edit {
        for _ in 0..MAX_TRIES {
            match self.edit_piece(chat, id, piece).await {
                Edit::RetryAfter(wait) => tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await,
                done_or_failed => return done_or_failed,
            }
        }
        Edit::Failed
    }

    /// Removes the buttons under message `id`, once; a failure is only logged.
    pub async fn remove_keyboard(&self, chat: i64, id: MessageId) {
        if let Err(e) = self.bot.edit_message_reply_markup(ChatId(chat), id).await
            && !matches!(e, RequestError::Api(ApiError::MessageNotModified))
        {
            tracing::info!(chat_id = chat, "cannot remove a message's buttons: {e}");
        }
    }

    /// Answers a button press (the client stops its spinner and shows `text` briefly).
    pub async fn answer_callback(&self, id: &CallbackQueryId, text: Option<&str>) {
        let request = self.bot.answer_callback_query(id.clone());
        let request = match text {
            Some(text) => request.text(text),
            None => request,
        };
        if let Err(e) = request.await {
            tracing::info!("answerCallbackQuery failed: {e}");
        }
    }

    /// Makes message `id` show `piece`, waiting out flood control, and sends it as a new
    /// message when the old one cannot be edited: for the final state of a streamed answer,
    /// which must arrive.
    pub async fn replace_with(&self, chat: i64, id: MessageId, piece: &Piece) -> Delivery {
        for _ in 0..MAX_TRIES {
            match self.edit_piece(chat, id, piece).await {
                Edit::Done => return Delivery::Sent,
                Edit::RetryAfter(wait) => tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await,
                Edit::Failed => break,
            }
        }
        match self.send_piece(chat, piece).await {
            Some(_) => Delivery::Sent,
            None => Delivery::Dropped,
        }
    }

    /// "typing…" in the chat. Purely cosmetic: errors are ignored.
    pub async fn typing(&self, chat: i64) {
        let _ = self
            .bot
            .send_chat_action(ChatId(chat), ChatAction::Typing)
            .await;
    }
}

fn describe_api_error(error: &ApiError) -> String {
    match error {
        ApiError::BotBlocked => "the user blocked the bot".into(),
        other => other.to_string(),
    }
}
