//! Outgoing messages. Sending is best effort with bounded persistence: Telegram's flood
//! control (`retry_after`) is waited out, network errors are retried a few times, and a
//! refusal (the user blocked the bot, the chat is gone) is logged and dropped. Nothing
//! here can fail the caller: a reply that cannot be delivered must not stop the next one.

use std::time::Duration;

use teloxide_core::prelude::*;
use teloxide_core::types::{ChatAction, ChatId};
use teloxide_core::{ApiError, RequestError};

use super::split::{MESSAGE_LIMIT, split_message};
use crate::backoff::Backoff;

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

impl Sender {
    pub fn new(bot: Bot) -> Self {
        Sender { bot }
    }

    /// Sends `text`, split into as many messages as Telegram's limit requires.
    pub async fn send_text(&self, chat: i64, text: &str) -> Delivery {
        for piece in split_message(text, MESSAGE_LIMIT) {
            if self.send_piece(chat, &piece).await == Delivery::Dropped {
                return Delivery::Dropped;
            }
        }
        Delivery::Sent
    }

    async fn send_piece(&self, chat: i64, text: &str) -> Delivery {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        let mut plain_retry_done = false;
        for attempt in 1..=MAX_TRIES {
            let error = match self.bot.send_message(ChatId(chat), text).await {
                Ok(_) => return Delivery::Sent,
                Err(e) => e,
            };
            let wait = match &error {
                RequestError::RetryAfter(after) => after.duration().min(MAX_RETRY_AFTER),
                RequestError::Network(_)
                | RequestError::Io(_)
                | RequestError::InvalidJson { .. } => backoff.next_delay(),
                RequestError::Api(ApiError::CantParseEntities(why)) if !plain_retry_done => {
                    // Formatting Telegram cannot parse must not cost the user the answer:
                    // the same text goes again as plain text, at once.
                    tracing::info!(
                        chat,
                        "Telegram could not parse the message's entities ({why}); resending as plain text"
                    );
                    plain_retry_done = true;
                    continue;
                }
                RequestError::Api(api) => {
                    tracing::warn!(
                        chat,
                        "Telegram refused a message: {}",
                        describe_api_error(api)
                    );
                    return Delivery::Dropped;
                }
                RequestError::MigrateToChatId(new) => {
                    tracing::warn!(chat, "chat moved to {new}; message dropped");
                    return Delivery::Dropped;
                }
            };
            if attempt < MAX_TRIES {
                tracing::info!(
                    chat,
                    attempt,
                    "sendMessage failed ({error}); retrying in {wait:?}"
                );
                tokio::time::sleep(wait).await;
            } else {
                tracing::warn!(
                    chat,
                    "sendMessage failed {MAX_TRIES} times ({error}); message dropped"
                );
            }
        }
        Delivery::Dropped
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
