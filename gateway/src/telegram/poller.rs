//! The `getUpdates` long-poll loop: the one thing that must never stop.
//!
//! Every error Telegram or the network can produce (refused connections, 5xx pages, 409
//! from a second poller, 429 flood control, bodies that are not JSON, a request that never
//! completes) is logged and retried after a capped, jittered backoff, at start-up as later.
//! Before the offset that acknowledges a batch is sent, the batch's text messages and that
//! offset are committed to the store (the durable inbox); a batch that cannot be stored is
//! not handed on, so Telegram sends it again. Handing over never blocks on a job, so a
//! slow provider cannot stall polling.
//!
//! Health follows what Telegram said last: a `getMe` or `getUpdates` that succeeded makes
//! polling healthy, and the long poll sent after it stays healthy while Telegram holds it
//! (that is how Telegram says "no news"), so it never counts as failure time. After a
//! failure, the retry asks with timeout 0, which Telegram answers at once: recovery is seen
//! within one backoff, not one long poll later.
//!
//! In groups (`telegram.group_mode = "mention"`) only messages addressed to the bot are
//! taken: a mention of it, a reply to one of its messages, or a command; a command for
//! another bot (`/new@other_bot`) never is. Knowing its own name takes one `getMe`, made
//! before the first poll and retried like one.
//!
//! Nothing is acknowledged unread: an update the Bot API client cannot parse (a field
//! changed after a Bot API release) is kept whole in the store with a warning, and
//! answered like any message when its raw form still holds a chat, a sender and text.
//!
//! A webhook left set on the token (a bot moved from another framework) makes every
//! `getUpdates` fail with 409. It is deleted, keeping the updates Telegram holds, at
//! start-up and whenever a poll meets it again, with a warning each time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hermes_config::GroupMode;
use serde_json::Value;
use teloxide_core::prelude::*;
use teloxide_core::types::{
    AllowedUpdate, CallbackQuery, Message, MessageEntityKind, Update, UpdateKind,
};
use teloxide_core::{ApiError, RequestError};
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::media::{self, MediaRef};
use crate::store::{Kind, Pending, Store, Unparsed};
use hermes_retry::Backoff;

pub struct PollSettings {
    pub timeout_secs: u32,
    pub retry_max: Duration,
    pub group_mode: GroupMode,
    /// `telegram.max_file_mb` in bytes: the photo size chosen is the largest within it.
    pub max_file_bytes: u64,
}

/// Where the poller hands what it receives: `classify` judges a message before it is
/// stored, `deliver` gets it once stored, `pressed` gets a button press.
pub struct Handlers<C, D, P> {
    pub classify: C,
    pub deliver: D,
    pub pressed: P,
}

/// Who the bot is, for telling which group messages are addressed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: u64,
    /// Without the `@`.
    pub username: String,
}

/// Polls until `stop`, storing every text message (as `classify` judges it) and passing it
/// to `deliver` in order. Button presses (`callback_query`) go to `pressed`, after the
/// batch is acknowledged: they answer a question of this run, so they are not stored.
pub async fn poll(
    bot: Bot,
    settings: PollSettings,
    health: Arc<Health>,
    store: Arc<Store>,
    stop: CancellationToken,
    handlers: Handlers<impl Fn(&mut Pending), impl FnMut(Pending), impl FnMut(CallbackQuery)>,
) {
    let Handlers {
        classify,
        mut deliver,
        mut pressed,
    } = handlers;
    let mut offset: i32 = match store.next_update_id() {
        Ok(next) => i32::try_from(next).unwrap_or(0),
        Err(e) => {
            tracing::error!("cannot read the stored offset ({e}); polling from Telegram's");
            0
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), settings.retry_max);
    let mut failing_since: Option<Instant> = None;
    let me = loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = bot.get_me().send() => result,
        };
        match result {
            Ok(me) => {
                health.poll_ok();
                recovered(&mut failing_since);
                break Identity {
                    id: me.user.id.0,
                    username: me.user.username.clone().unwrap_or_default(),
                };
            }
            Err(error) => {
                let delay = backoff.next_delay();
                failing_since.get_or_insert_with(Instant::now);
                if !failed("getMe", &error, delay, &health, &stop).await {
                    return;
                }
            }
        }
    };
    tracing::info!(bot = %me.username, "polling Telegram as @{}", me.username);
    if !drop_webhook(&bot, &health, &stop, &mut backoff, &mut failing_since, true).await {
        return;
    }
    loop {
        // A long poll only after a success: a retry must answer at once to show recovery.
        let timeout = if failing_since.is_some() {
            0
        } else {
            settings.timeout_secs
        };
        let request = bot
            .get_updates()
            .offset(offset)
            .timeout(timeout)
            .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
        if timeout > 0 {
            health.long_poll_open();
        }
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = request.send() => result,
        };
        match result {
            Ok(updates) => {
                health.poll_ok();
                recovered(&mut failing_since);
                let next = updates
                    .iter()
                    .map(update_offset)
                    .max()
                    .unwrap_or(offset)
                    .max(offset);
                let (presses, updates): (Vec<Update>, Vec<Update>) = updates
                    .into_iter()
                    .partition(|u| matches!(u.kind, UpdateKind::CallbackQuery(_)));
                let mut messages = Vec::new();
                let mut unparsed = Vec::new();
                for update in updates {
                    match update.kind {
                        UpdateKind::Error(raw) => {
                            let message = raw_text_message(&raw, &me, settings.group_mode);
                            tracing::warn!(
                                update_id = update.id.0,
                                "an update the Bot API client cannot parse was kept in the store (unparsed_updates); {}",
                                if message.is_some() {
                                    "its text is answered"
                                } else {
                                    "it holds no text message: skipping it"
                                }
                            );
                            unparsed.push(Unparsed {
                                update_id: i64::from(update.id.0),
                                raw: raw.to_string(),
                            });
                            messages.extend(message);
                        }
                        _ => messages.extend(user_message(update, &me, &settings)),
                    }
                }
                for message in &mut messages {
                    classify(message);
                }
                if let Err(e) = store.accept(&messages, &unparsed, i64::from(next)) {
                    // Not acknowledged, so Telegram will send these again.
                    let delay = backoff.next_delay();
                    tracing::error!("cannot store updates ({e}); retrying in {delay:?}");
                    if !pause(delay, &stop).await {
                        return;
                    }
                    continue;
                }
                backoff.reset();
                offset = next;
                for message in messages {
                    deliver(message);
                }
                for press in presses {
                    if let UpdateKind::CallbackQuery(query) = press.kind {
                        pressed(query);
                    }
                }
            }
            Err(error) if is_webhook_conflict(&error) => {
                health.poll_failed(describe(&error));
                failing_since.get_or_insert_with(Instant::now);
                if !drop_webhook(
                    &bot,
                    &health,
                    &stop,
                    &mut backoff,
                    &mut failing_since,
                    false,
                )
                .await
                {
                    return;
                }
            }
            Err(error) => {
                let delay = match &error {
                    RequestError::RetryAfter(after) => after
                        .duration()
                        .clamp(Duration::from_millis(100), settings.retry_max),
                    _ => backoff.next_delay(),
                };
                failing_since.get_or_insert_with(Instant::now);
                if !failed("getUpdates", &error, delay, &health, &stop).await {
                    return;
                }
            }
        }
    }
}

/// After a call that succeeded: ends a run of failures, saying how long it lasted (from
/// the first failure to this answer; an open long poll is never part of it).
fn recovered(failing_since: &mut Option<Instant>) {
    if let Some(since) = failing_since.take() {
        tracing::info!(
            "Telegram reachable again after {:.1} s of failures",
            since.elapsed().as_secs_f64()
        );
    }
}

/// Deletes a webhook set on the token, keeping the updates Telegram holds, so polling
/// works; at start-up (`starting`) only if one is set. Retried like a poll until it is
/// done. False when the gateway stops first.
async fn drop_webhook(
    bot: &Bot,
    health: &Health,
    stop: &CancellationToken,
    backoff: &mut Backoff,
    failing_since: &mut Option<Instant>,
    starting: bool,
) -> bool {
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return false,
            result = webhook_gone(bot, starting) => result,
        };
        match result {
            Ok(()) => return true,
            Err(error) => {
                let delay = backoff.next_delay();
                failing_since.get_or_insert_with(Instant::now);
                if !failed("deleteWebhook", &error, delay, health, stop).await {
                    return false;
                }
            }
        }
    }
}

async fn webhook_gone(bot: &Bot, starting: bool) -> Result<(), RequestError> {
    let url = if starting {
        match bot.get_webhook_info().send().await?.url {
            None => return Ok(()),
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
    Ok(())
}

/// `getUpdates` refused because a webhook is set. teloxide knows only the short form of
/// the description; Telegram sends a longer one.
fn is_webhook_conflict(error: &RequestError) -> bool {
    match error {
        RequestError::Api(ApiError::CantGetUpdates) => true,
        RequestError::Api(ApiError::Unknown(description)) => {
            description.contains("can't use getUpdates method while webhook is active")
        }
        _ => false,
    }
}

/// After a failed call: reports it (health, log) and waits `delay`. False when the
/// gateway stops first.
async fn failed(
    call: &str,
    error: &RequestError,
    delay: Duration,
    health: &Health,
    stop: &CancellationToken,
) -> bool {
    let described = describe(error);
    tracing::warn!(
        "{call} failed: {described}; retrying in {:.1} s",
        delay.as_secs_f64()
    );
    health.poll_failed(described);
    pause(delay, stop).await
}

/// Waits `delay`; false when the gateway stops first.
async fn pause(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// The message in `update`, if it is one for the bot: text, a voice note, photo or file
/// (with its caption), or something the bot cannot use (a sticker, a location: kept as
/// [`Kind::Unsupported`], to be answered with what it understands). Anything else (an
/// update of another kind, a service message) is skipped with a log line.
fn user_message(update: Update, me: &Identity, settings: &PollSettings) -> Option<Pending> {
    let id = update.id.0;
    let UpdateKind::Message(message) = update.kind else {
        tracing::info!(update_id = id, "skipping an update that is not a message");
        return None;
    };
    let Some(user) = message.from.as_ref() else {
        tracing::info!(
            update_id = id,
            chat_id = message.chat.id.0,
            "skipping a message without a sender"
        );
        return None;
    };
    let media = MediaRef::of(&message, settings.max_file_bytes);
    let unsupported = media::unsupported(&message);
    let (text, kind) = match (message.text(), &media, unsupported) {
        (Some(text), _, _) => (text, Kind::Message),
        (None, Some(_), _) => (message.caption().unwrap_or_default(), Kind::Message),
        (None, None, Some(what)) => (what, Kind::Unsupported),
        (None, None, None) => {
            tracing::info!(
                update_id = id,
                chat_id = message.chat.id.0,
                "skipping a message without text (a service message)"
            );
            return None;
        }
    };
    let addressed_text = if media.is_some() || kind == Kind::Unsupported {
        media_addressed(&message, me, settings.group_mode).then(|| {
            if kind == Kind::Unsupported {
                text.to_string()
            } else {
                let stripped = strip_mention(text, &format!("@{}", me.username));
                if me.username.is_empty() {
                    text.trim().to_string()
                } else {
                    stripped
                }
            }
        })
    } else {
        addressed(&message, text, me, settings.group_mode)
    };
    let text = match addressed_text {
        Some(text) => text,
        None => {
            tracing::debug!(
                update_id = id,
                chat_id = message.chat.id.0,
                "skipping a group message not addressed to the bot"
            );
            return None;
        }
    };
    Some(Pending {
        update_id: i64::from(id),
        chat_id: message.chat.id.0,
        user_id: user.id.0,
        text,
        kind,
        media,
        counted: false,
    })
}

/// Whether a message without text of its own (a file, a sticker) is for the bot: in a
/// private chat or with `group_mode = "all"` always; in a group when it replies to one of
/// the bot's messages or its caption mentions the bot (never as a command: a caption is
/// not one).
fn media_addressed(message: &Message, me: &Identity, mode: GroupMode) -> bool {
    if message.chat.is_private() || mode == GroupMode::All {
        return true;
    }
    if !(message.chat.is_group() || message.chat.is_supergroup()) {
        return false;
    }
    let replied_to_bot = message
        .reply_to_message()
        .and_then(|m| m.from.as_ref())
        .is_some_and(|u| u.id.0 == me.id);
    let mention = format!("@{}", me.username);
    let mentioned = message.parse_caption_entities().is_some_and(|entities| {
        entities.iter().any(|e| match e.kind() {
            MessageEntityKind::Mention => {
                !me.username.is_empty() && e.text().eq_ignore_ascii_case(&mention)
            }
            MessageEntityKind::TextMention { user } => user.id.0 == me.id,
            _ => false,
        })
    });
    replied_to_bot || mentioned
}

/// The text message in an update that could not be parsed, read from its raw JSON: a
/// message with a chat, a sender and text, addressed to the bot as [`addressed`] would
/// judge from what the raw form shows (in a group: a command of ours, or a mention).
fn raw_text_message(raw: &Value, me: &Identity, group_mode: GroupMode) -> Option<Pending> {
    let update_id = raw.get("update_id")?.as_i64()?;
    let message = raw.get("message")?;
    let chat = message.get("chat")?;
    let chat_id = chat.get("id")?.as_i64()?;
    let user_id = message.get("from")?.get("id")?.as_u64()?;
    let text = message.get("text")?.as_str()?;
    let mention = format!("@{}", me.username);
    let text = if let Some(command) = text
        .split_whitespace()
        .next()
        .filter(|w| w.starts_with('/'))
    {
        match command.split_once('@') {
            Some((_, bot)) if !bot.eq_ignore_ascii_case(&me.username) => return None,
            _ => text.to_string(),
        }
    } else if chat.get("type").and_then(Value::as_str) == Some("private")
        || group_mode == GroupMode::All
    {
        text.to_string()
    } else if !me.username.is_empty()
        && text
            .to_ascii_lowercase()
            .contains(&mention.to_ascii_lowercase())
    {
        let stripped = strip_mention(text, &mention);
        if stripped.is_empty() {
            text.to_string()
        } else {
            stripped
        }
    } else {
        return None;
    };
    Some(Pending {
        update_id,
        chat_id,
        user_id,
        text,
        kind: Kind::Message,
        counted: false,
        media: None,
    })
}

/// The text to answer if `message` is for the bot, with a mention of it taken out.
fn addressed(message: &Message, text: &str, me: &Identity, mode: GroupMode) -> Option<String> {
    let mention = format!("@{}", me.username);
    if let Some(command) = text
        .split_whitespace()
        .next()
        .filter(|w| w.starts_with('/'))
    {
        return match command.split_once('@') {
            Some((_, bot)) if !bot.eq_ignore_ascii_case(&me.username) => None,
            _ => Some(text.to_string()),
        };
    }
    if message.chat.is_private() || mode == GroupMode::All {
        return Some(text.to_string());
    }
    if !(message.chat.is_group() || message.chat.is_supergroup()) {
        return None;
    }
    let replied_to_bot = message
        .reply_to_message()
        .and_then(|m| m.from.as_ref())
        .is_some_and(|u| u.id.0 == me.id);
    let mentioned = message.parse_entities().is_some_and(|entities| {
        entities.iter().any(|e| match e.kind() {
            MessageEntityKind::Mention => {
                !me.username.is_empty() && e.text().eq_ignore_ascii_case(&mention)
            }
            MessageEntityKind::TextMention { user } => user.id.0 == me.id,
            _ => false,
        })
    });
    if !(replied_to_bot || mentioned) {
        return None;
    }
    let stripped = strip_mention(text, &mention);
    Some(if stripped.is_empty() {
        text.to_string()
    } else {
        stripped
    })
}

/// `text` without the bot's `@name` (any case), trimmed; line breaks are kept.
fn strip_mention(text: &str, mention: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let needle = mention.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    // ASCII lowercasing keeps byte offsets, so positions in `lower` are valid in `text`.
    for (at, _) in lower.match_indices(&needle) {
        out.push_str(&text[rest..at]);
        rest = at + needle.len();
    }
    out.push_str(&text[rest..]);
    out.trim().to_string()
}

/// The offset that acknowledges `update`.
fn update_offset(update: &Update) -> i32 {
    i32::try_from(update.id.0)
        .unwrap_or(i32::MAX)
        .saturating_add(1)
}

fn describe(error: &RequestError) -> String {
    match error {
        RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => {
            "409 Conflict: another process is polling with this bot token".into()
        }
        error if is_webhook_conflict(error) => {
            "409 Conflict: a webhook is set on this bot's token".into()
        }
        RequestError::Network(e) => {
            if e.is_timeout() {
                "no answer before the HTTP timeout".into()
            } else {
                format!("network error: {}", hermes_retry::root_cause(e.as_ref()))
            }
        }
        RequestError::InvalidJson { raw, .. } => {
            let snippet: String = raw.chars().take(120).collect();
            format!("response is not Bot API JSON: {snippet:?}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mention_is_taken_out_and_the_rest_kept() {
        assert_eq!(
            strip_mention("@Hermes_Bot what is\n2+2?", "@hermes_bot"),
            "what is\n2+2?"
        );
        assert_eq!(
            strip_mention("hey @hermes_bot, hi", "@hermes_bot"),
            "hey , hi"
        );
        assert_eq!(strip_mention("@hermes_bot", "@hermes_bot"), "");
    }
}
