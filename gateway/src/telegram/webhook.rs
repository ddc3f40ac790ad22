//! A webhook left set on the bot's token.
//!
//! A bot moved from another framework may still have a webhook set, and while one is,
//! Telegram answers every `getUpdates` with 409. The poller deletes it, keeping the
//! updates Telegram holds, at start-up and whenever a poll meets it again, with a warning
//! each time: a program that set it stops receiving this bot's updates, and the operator
//! should know.

use teloxide_core::prelude::*;
use teloxide_core::{ApiError, RequestError};

/// Deletes the webhook, keeping the updates Telegram holds; at start-up (`starting`) only
/// if `getWebhookInfo` shows one set. Whether one was deleted.
pub async fn webhook_gone(bot: &Bot, starting: bool) -> Result<bool, RequestError> {
    let url = if starting {
        match bot.get_webhook_info().send().await?.url {
            None => return Ok(false),
            Some(url) => url.to_string(),
        }
    } else {
        "(set again since start-up)".into()
    };
    tracing::warn!(
        "WEBHOOK SET on this bot's token ({url}): Telegram does not answer getUpdates while one is set. \
         Deleting it (the updates Telegram holds are kept) and polling instead; \
         if another program set it, it will stop receiving this bot's updates"
    );
    bot.delete_webhook()
        .drop_pending_updates(false)
        .send()
        .await?;
    Ok(true)
}

/// `getUpdates` refused because a webhook is set. teloxide knows only the short form of
/// the description; Telegram sends a longer one.
pub fn is_webhook_conflict(error: &RequestError) -> bool {
    match error {
        RequestError::Api(ApiError::CantGetUpdates) => true,
        RequestError::Api(ApiError::Unknown(description)) => {
            description.contains("can't use getUpdates method while webhook is active")
        }
        _ => false,
    }
}
