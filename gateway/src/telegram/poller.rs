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
//! What each update says, and whether a group message is for the bot, is judged in
//! [`super::incoming`]. Knowing the bot's own name for that takes one `getMe`, made beside
//! the first poll (whose answer waits for it) and retried like one.
//!
//! Nothing is acknowledged unread: an update the Bot API client cannot parse (a field
//! changed after a Bot API release) is kept whole in the store with a warning, and
//! answered like any message when its raw form still holds a chat, a sender and text.
//!
//! A webhook left set on the token makes every `getUpdates` fail with 409; it is deleted
//! ([`super::webhook`]) at start-up and whenever a poll meets it again, retried like a
//! poll.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hermes_config::GroupMode;
use teloxide_core::prelude::*;
use teloxide_core::types::{AllowedUpdate, CallbackQuery, Update, UpdateKind};
use teloxide_core::{ApiError, RequestError};
use tokio_util::sync::CancellationToken;

use super::incoming::{
    AddressedAlbums, Identity, raw_sender, raw_text_message, user_message, withheld,
};
use super::webhook::{is_webhook_conflict, webhook_gone};
use crate::first_poll::FirstPoll;
use crate::health::Health;
use crate::store::{Kind, Pending, Store, Unparsed};
use hermes_retry::Backoff;

pub struct PollSettings {
    pub timeout_secs: u32,
    pub retry_max: Duration,
    pub group_mode: GroupMode,
    /// `telegram.max_file_mb` in bytes: the photo size chosen is the largest within it.
    pub max_file_bytes: u64,
    /// Opened once the first `getUpdates` has gone out (with `getMe`, whose answer is in).
    pub first_poll: FirstPoll,
}

/// Where the poller hands what it receives: `classify` judges a message before it is
/// stored, `deliver` gets it once stored, `pressed` gets a button press.
pub struct Handlers<C, D, P> {
    pub classify: C,
    pub deliver: D,
    pub pressed: P,
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
    // No offset: what Telegram has not had acknowledged, whichever sequence it is on.
    let mut offset: Option<i32> = None;
    // getMe (the bot's name, for mentions) and the webhook check are independent: asked
    // together, the first poll waits for one round trip, not two.
    let mut me_backoff = Backoff::new(Duration::from_millis(500), settings.retry_max);
    let mut me_failing: Option<Instant> = None;
    let mut backoff = Backoff::new(Duration::from_millis(500), settings.retry_max);
    let mut failing_since: Option<Instant> = None;
    let who = async {
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => return None,
                result = bot.get_me().send() => result,
            };
            match result {
                Ok(me) => {
                    health.telegram_answered();
                    recovered(&mut me_failing);
                    break Some(Identity {
                        id: me.user.id.0,
                        username: me.user.username.clone().unwrap_or_default(),
                    });
                }
                Err(error) => {
                    let delay = me_backoff.next_delay();
                    me_failing.get_or_insert_with(Instant::now);
                    if !failed("getMe", &error, delay, &health, &stop).await {
                        return None;
                    }
                }
            }
        }
    };
    let webhook = drop_webhook(
        &bot,
        &health,
        &stop,
        &mut failing_since,
        true,
        settings.retry_max,
    );
    // The first poll goes beside them: its answer waits for the bot's name, but the time to
    // the first poll is not two round trips. Should a webhook still be set when it
    // arrives, it meets the conflict every poll can meet, and is retried.
    let first = async {
        tokio::select! {
            _ = stop.cancelled() => None,
            result = get_updates(&bot, settings.timeout_secs, None, &health) => Some(result),
        }
    };
    let named = async {
        let named = tokio::join!(who, webhook);
        // Their answers are in, so the first poll, sent with them, has gone out too: what
        // waited for it may start (opened sooner, the workers' forks would hold its
        // connection up).
        settings.first_poll.open();
        named
    };
    let ((me, webhook_deleted), first) = tokio::join!(named, first);
    let (Some(me), Some(webhook_deleted), Some(first)) = (me, webhook_deleted, first) else {
        return;
    };
    // The first poll met the webhook the check beside it found and deleted: asked again,
    // not a failure, and not deleted twice.
    let first = match first {
        Err(e) if webhook_deleted && is_webhook_conflict(&e) => None,
        first => Some(first),
    };
    failing_since = failing_since.or(me_failing);
    tracing::info!(bot = %me.username, "polling Telegram as @{}", me.username);
    let mut albums = AddressedAlbums::default();
    let mut first = first;
    loop {
        let result = match first.take() {
            Some(result) => result,
            None => {
                // A long poll only after a success: a retry must answer at once to show
                // recovery.
                let timeout = if failing_since.is_some() {
                    0
                } else {
                    settings.timeout_secs
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    result = get_updates(&bot, timeout, offset, &health) => result,
                }
            }
        };
        match result {
            Ok(updates) => {
                health.poll_ok();
                recovered(&mut failing_since);
                // What Telegram returned decides, lower than before included: its ids
                // start over after a quiet week or a local server's restart.
                let next = updates.iter().map(update_offset).max();
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
                            // Kept whole only when it is an allowed user's: `classify`,
                            // the one judge of that, is asked about its sender.
                            let from_member = raw_sender(&raw).is_some_and(|user_id| {
                                let mut sender = Pending {
                                    user_id,
                                    ..Pending::default()
                                };
                                classify(&mut sender);
                                sender.kind != Kind::Stranger
                            });
                            unparsed.push(Unparsed {
                                update_id: i64::from(update.id.0),
                                raw: if from_member {
                                    raw.to_string()
                                } else {
                                    withheld(&raw)
                                },
                            });
                            messages.extend(message);
                        }
                        _ => messages.extend(user_message(
                            update,
                            &me,
                            settings.group_mode,
                            settings.max_file_bytes,
                            &mut albums,
                        )),
                    }
                }
                for message in &mut messages {
                    classify(message);
                }
                if let Err(e) = store.accept(&mut messages, &unparsed) {
                    // Not acknowledged, so Telegram will send these again.
                    let delay = backoff.next_delay();
                    tracing::error!("cannot store updates ({e}); retrying in {delay:?}");
                    offset = None;
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
                offset = None;
                if drop_webhook(
                    &bot,
                    &health,
                    &stop,
                    &mut failing_since,
                    false,
                    settings.retry_max,
                )
                .await
                .is_none()
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
                // Whether the last offset reached Telegram is unknown, and a server that
                // went away may come back numbering from 1: the next poll asks for what
                // is unacknowledged (a batch stored already is known by its messages).
                offset = None;
                if !failed("getUpdates", &error, delay, &health, &stop).await {
                    return;
                }
            }
        }
    }
}

/// One `getUpdates` from `offset` (what is unacknowledged with None), held by Telegram
/// up to `timeout` seconds.
async fn get_updates(
    bot: &Bot,
    timeout: u32,
    offset: Option<i32>,
    health: &Health,
) -> Result<Vec<Update>, RequestError> {
    let mut request = bot
        .get_updates()
        .timeout(timeout)
        .allowed_updates([AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
    if let Some(offset) = offset {
        request = request.offset(offset);
    }
    if timeout > 0 {
        health.long_poll_open();
    }
    request.send().await
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
/// done: whether one was deleted, or None when the gateway stops first.
async fn drop_webhook(
    bot: &Bot,
    health: &Health,
    stop: &CancellationToken,
    failing_since: &mut Option<Instant>,
    starting: bool,
    retry_max: Duration,
) -> Option<bool> {
    let mut backoff = Backoff::new(Duration::from_millis(500), retry_max);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return None,
            result = webhook_gone(bot, starting) => result,
        };
        match result {
            Ok(deleted) => return Some(deleted),
            Err(error) => {
                let delay = backoff.next_delay();
                failing_since.get_or_insert_with(Instant::now);
                if !failed("deleteWebhook", &error, delay, health, stop).await {
                    return None;
                }
            }
        }
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
