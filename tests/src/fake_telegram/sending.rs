//! What the bot sends: `sendMessage` and `editMessageText` under Telegram's rules (the
//! text checked as Telegram shows it: HTML parsed as Telegram parses it, see [`super::html`];
//! not empty, at most [`MAX_TEXT_LEN`]; an edit must change something and find its
//! message; a topic must be one of the chat's, see [`super::topics`]), `sendChatAction`,
//! and the records and waits tests read them through.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::topics::ChatActionRecord;
use super::{
    FakeTelegram, Inner, Response, SendFault, State, api_error, as_i64, bot_user, buttons, html,
    ok, unix_now,
};

/// Telegram's limit for a message text, in UTF-16 code units after entity parsing.
pub const MAX_TEXT_LEN: usize = 4096;

pub(super) const NOT_MODIFIED: &str = "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message";

/// The chat actions `sendChatAction` accepts.
const CHAT_ACTIONS: [&str; 11] = [
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
];

/// A message the bot delivered (sent, or edited into its new text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// Canonical Telegram spelling: `sendMessage` or `editMessageText`.
    pub method: String,
    pub chat_id: i64,
    /// The text as sent (HTML included).
    pub text: String,
    pub parse_mode: Option<String>,
    /// The id of the message sent, or of the message edited.
    pub message_id: i64,
    /// The inline keyboard the message shows after this send or edit, if any.
    pub keyboard: Option<Value>,
    /// The topic the message is in (an edit: the edited message's); None for General or a
    /// chat without topics.
    pub thread: Option<i64>,
    pub at: Instant,
}

/// A send or edit that was refused, by a scripted [`SendFault`] or because Telegram would
/// have refused it (empty or too long text, HTML it cannot parse, an unknown parse mode,
/// editing to the same text, an unknown message, flood control).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedSend {
    pub method: String,
    pub chat_id: i64,
    pub text: String,
    pub parse_mode: Option<String>,
    pub fault: SendFault,
    pub at: Instant,
}

impl FakeTelegram {
    /// Every message delivered, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.state.lock().sent.clone()
    }

    /// Delivered messages for one chat, in order.
    pub fn sent_to(&self, chat_id: i64) -> Vec<SentMessage> {
        self.state
            .lock()
            .sent
            .iter()
            .filter(|m| m.chat_id == chat_id)
            .cloned()
            .collect()
    }

    /// What `chat_id` shows now: each message the bot sent there, in order, with the text
    /// of its last edit (as sent, with its parse mode). An orphaned preview beside the
    /// final reply shows here as a message of its own.
    pub fn chat_now(&self, chat_id: i64) -> Vec<SentMessage> {
        let mut shown: Vec<SentMessage> = Vec::new();
        for message in self.sent_to(chat_id) {
            match shown
                .iter_mut()
                .find(|m| m.message_id == message.message_id)
            {
                Some(earlier) if message.method == "editMessageText" => {
                    earlier.text = message.text;
                    earlier.parse_mode = message.parse_mode;
                    earlier.at = message.at;
                }
                _ => shown.push(message),
            }
        }
        shown
    }

    pub fn failed_sends(&self) -> Vec<FailedSend> {
        self.state.lock().failed.clone()
    }

    /// Sends and edits Telegram would refuse for their text (HTML it cannot parse, an
    /// unknown parse mode, a text empty or too long), scripted faults left out.
    pub fn malformed_sends(&self) -> Vec<FailedSend> {
        self.state.lock().malformed.clone()
    }

    /// From now on, when the last handle to this fake is dropped (the end of a test), it
    /// panics if any send or edit was malformed: the gateway must never send one, and its
    /// plain-text fallback would otherwise hide it from every test that does not look.
    pub fn fail_the_test_on_malformed_sends(&self) {
        self.state.lock().malformed_is_a_bug = true;
    }

    /// The first delivered message matching `pred` (already recorded or arriving within
    /// `timeout`).
    pub async fn wait_for_sent(
        &self,
        pred: impl Fn(&SentMessage) -> bool,
        timeout: Duration,
    ) -> Option<SentMessage> {
        self.state
            .wait_until(timeout, |g| g.sent.iter().find(|m| pred(m)).cloned())
            .await
    }

    /// Wait until at least `n` messages were delivered to `chat_id`; returns what was
    /// delivered by then (possibly fewer at timeout).
    pub async fn wait_for_chat_messages(
        &self,
        chat_id: i64,
        n: usize,
        timeout: Duration,
    ) -> Vec<SentMessage> {
        // Whether it timed out or not, the caller gets what there is.
        self.state
            .wait_until(timeout, |g| {
                (g.sent.iter().filter(|m| m.chat_id == chat_id).count() >= n).then_some(())
            })
            .await;
        self.sent_to(chat_id)
    }

    /// How many messages were delivered to `chat_id` (sends and edits); O(1).
    pub fn sent_count(&self, chat_id: i64) -> usize {
        self.state
            .lock()
            .sent_per_chat
            .get(&chat_id)
            .map_or(0, |count| *count.borrow())
    }

    /// Waits until at least `n` messages were delivered to `chat_id` (sends and edits, as
    /// [`FakeTelegram::wait_for_chat_messages`] counts them); O(1) per check, for
    /// benchmarks whose many chats wait at once. Returns the count by then.
    pub async fn wait_for_chat_count(&self, chat_id: i64, n: usize, timeout: Duration) -> usize {
        let mut count = self
            .state
            .lock()
            .sent_per_chat
            .entry(chat_id)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        let _ = tokio::time::timeout(timeout, count.wait_for(|sent| *sent >= n)).await;
        self.sent_count(chat_id)
    }

    /// Waits until at least `n` messages were sent in all chats together; O(1) per check,
    /// for benchmarks that count many thousands.
    pub async fn wait_for_sent_count(&self, n: usize, timeout: Duration) -> usize {
        self.state
            .wait_until(timeout, |g| (g.sent.len() >= n).then_some(()))
            .await;
        self.state.lock().sent.len()
    }

    /// Wait until at least `n` sends or edits were refused.
    pub async fn wait_for_failed_sends(&self, n: usize, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |g| (g.failed.len() >= n).then_some(()))
            .await
            .is_some()
    }
}

impl State {
    pub(super) fn send(&self, params: &Value) -> Response {
        const METHOD: &str = "sendMessage";
        let chat_id = params.get("chat_id").and_then(as_i64);
        let text = params
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let parse_mode = params
            .get("parse_mode")
            .and_then(Value::as_str)
            .map(str::to_string);
        let keyboard = buttons::inline_keyboard(params);
        let mut g = self.lock();
        let shown = match g.send_faults.pop_front() {
            Some(fault) => Err(fault),
            None if chat_id.is_none() => {
                Err(SendFault::bad_request("Bad Request: chat_id is empty"))
            }
            None => match g.chat_refuses(chat_id.unwrap_or_default()) {
                Some(fault) => Err(fault),
                None => g
                    .thread_to(chat_id.unwrap_or_default(), params)
                    .and_then(|_| {
                        g.check_text(METHOD, chat_id.unwrap_or_default(), &text, &parse_mode)
                    }),
            },
        };
        let shown = shown.and_then(|shown| keyboard.clone().map(|_| shown));
        let keyboard = keyboard.unwrap_or_default();
        let chat_id = chat_id.unwrap_or_default();
        let shown = shown.and_then(|shown| match g.flooded(chat_id) {
            Some(secs) => Err(SendFault::RetryAfter(secs)),
            None => Ok(shown),
        });
        let shown = match shown {
            Ok(shown) => shown,
            Err(fault) => return self.refuse(g, METHOD, chat_id, text, parse_mode, fault),
        };

        // Checked above, before anything else could refuse it.
        let thread = g.thread_to(chat_id, params).ok().flatten();
        g.last_message_id += 1;
        let message_id = g.last_message_id;
        let chat = g.chat(chat_id);
        let message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": chat,
            "from": bot_user(),
            "text": shown,
        });
        let mut message = message;
        if let Some(thread) = thread {
            message["message_thread_id"] = json!(thread);
            message["is_topic_message"] = json!(true);
            g.threads.insert((chat_id, message_id), thread);
        }
        if let Some(markup) = &keyboard {
            message["reply_markup"] = markup.clone();
            g.keyboards.insert((chat_id, message_id), markup.clone());
        }
        g.texts.insert((chat_id, message_id), (text.clone(), shown));
        g.count_sent(chat_id);
        g.sent.push(SentMessage {
            method: METHOD.to_string(),
            chat_id,
            text,
            parse_mode,
            message_id,
            keyboard,
            thread,
            at: Instant::now(),
        });
        drop(g);
        self.bump();
        ok(message)
    }

    pub(super) fn edit_text(&self, params: &Value) -> Response {
        const METHOD: &str = "editMessageText";
        let chat_id = params.get("chat_id").and_then(as_i64).unwrap_or_default();
        let message_id = params
            .get("message_id")
            .and_then(as_i64)
            .unwrap_or_default();
        let text = params
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let parse_mode = params
            .get("parse_mode")
            .and_then(Value::as_str)
            .map(str::to_string);
        let keyboard = buttons::inline_keyboard(params);
        let mut g = self.lock();
        let inline = params.get("inline_message_id").is_some();
        // The Bot API parses the new text before it looks for the message.
        let shown = match g.edit_faults.pop_front() {
            Some(fault) => Err(fault),
            None => match g.chat_refuses(chat_id) {
                Some(fault) => Err(fault),
                None => g.check_text(METHOD, chat_id, &text, &parse_mode),
            },
        };
        let shown = shown.and_then(|shown| keyboard.clone().map(|_| shown));
        let keyboard = keyboard.unwrap_or_default();
        let shown = shown.and_then(|shown| {
            if inline {
                return Ok(shown);
            }
            match g.texts.get(&(chat_id, message_id)) {
                None => Err(SendFault::bad_request(
                    "Bad Request: message to edit not found",
                )),
                Some((old, _))
                    if *old == text
                        && g.keyboards.get(&(chat_id, message_id)) == keyboard.as_ref() =>
                {
                    Err(SendFault::bad_request(NOT_MODIFIED))
                }
                Some(_) => Ok(shown),
            }
        });
        let shown = shown.and_then(|shown| match g.flooded(chat_id) {
            Some(secs) => Err(SendFault::RetryAfter(secs)),
            None => Ok(shown),
        });
        let shown = match shown {
            Ok(shown) => shown,
            Err(fault) => return self.refuse(g, METHOD, chat_id, text, parse_mode, fault),
        };
        g.count_sent(chat_id);
        let thread = g.thread_of(chat_id, message_id);
        g.sent.push(SentMessage {
            method: METHOD.to_string(),
            chat_id,
            text: text.clone(),
            parse_mode,
            message_id,
            keyboard: keyboard.clone(),
            thread,
            at: Instant::now(),
        });
        if inline {
            drop(g);
            self.bump();
            return ok(json!(true));
        }
        g.texts.insert((chat_id, message_id), (text, shown.clone()));
        // As on Telegram: an edit without `reply_markup` leaves the message without buttons.
        match &keyboard {
            Some(markup) => g.keyboards.insert((chat_id, message_id), markup.clone()),
            None => g.keyboards.remove(&(chat_id, message_id)),
        };
        let chat = g.chat(chat_id);
        drop(g);
        self.bump();
        let mut edited = json!({
            "message_id": message_id,
            "date": unix_now(),
            "edit_date": unix_now(),
            "chat": chat,
            "from": bot_user(),
            "text": shown,
        });
        if let Some(markup) = keyboard {
            edited["reply_markup"] = markup;
        }
        ok(edited)
    }
}

impl Inner {
    /// [`shown_text`], keeping a refusal as a malformed send.
    fn check_text(
        &mut self,
        method: &str,
        chat_id: i64,
        text: &str,
        parse_mode: &Option<String>,
    ) -> Result<String, SendFault> {
        shown_text(text, parse_mode.as_deref()).inspect_err(|fault| {
            self.malformed.push(FailedSend {
                method: method.to_string(),
                chat_id,
                text: text.to_string(),
                parse_mode: parse_mode.clone(),
                fault: fault.clone(),
                at: Instant::now(),
            });
        })
    }
}

impl State {
    /// `sendChatAction`: known actions only, in a topic of the chat's if any, as Telegram.
    pub(super) fn chat_action(&self, params: &Value) -> Response {
        let Some(chat_id) = params.get("chat_id").and_then(as_i64) else {
            return api_error(400, "Bad Request: chat_id is empty", None);
        };
        let action = params.get("action").and_then(Value::as_str).unwrap_or("");
        if !CHAT_ACTIONS.contains(&action) {
            return api_error(400, "Bad Request: wrong parameter action in request", None);
        }
        let mut g = self.lock();
        let Ok(thread) = g.thread_to(chat_id, params) else {
            return api_error(400, super::topics::THREAD_NOT_FOUND, None);
        };
        g.actions.push(ChatActionRecord {
            chat_id,
            thread,
            action: action.to_string(),
            at: Instant::now(),
        });
        drop(g);
        self.bump();
        ok(json!(true))
    }
}

/// The text Telegram would show for `text` sent with `parse_mode`, or why it refuses it,
/// in the Bot API's order: the parse mode, the markup, then the length of what is left.
fn shown_text(text: &str, parse_mode: Option<&str>) -> Result<String, SendFault> {
    let mode = parse_mode.map(str::to_ascii_lowercase);
    let shown = match mode.as_deref() {
        None | Some("") | Some("none") => text.to_string(),
        Some("html") => html::parse(text).map_err(|why| {
            SendFault::bad_request(&format!("Bad Request: can't parse entities: {why}"))
        })?,
        // MarkdownV2's escaping rules are not emulated (nothing here sends it), so its
        // text is taken as shown.
        Some("markdown") | Some("markdownv2") => text.to_string(),
        Some(_) => {
            return Err(SendFault::bad_request(
                "Bad Request: unsupported parse_mode",
            ));
        }
    };
    if shown.trim().is_empty() {
        Err(SendFault::bad_request("Bad Request: message text is empty"))
    } else if utf16_len(&shown) > MAX_TEXT_LEN {
        Err(SendFault::bad_request("Bad Request: message is too long"))
    } else {
        Ok(shown)
    }
}

pub(super) fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

impl Inner {
    /// One more message delivered to `chat_id`, told to whoever waits on that chat.
    pub(super) fn count_sent(&mut self, chat_id: i64) {
        self.sent_per_chat
            .entry(chat_id)
            .or_insert_with(|| watch::Sender::new(0))
            .send_modify(|sent| *sent += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{T, bot, http};
    use super::super::*;
    use teloxide_core::{
        ApiError, RequestError,
        payloads::{EditMessageTextSetters, SendMessageSetters},
        prelude::Requester,
        types::{ChatId, MessageId, ParseMode},
    };

    #[tokio::test]
    async fn telegram_rules_for_edits_and_long_texts() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let sent = bot.send_message(ChatId(5), "same").await.unwrap();
        let err = bot
            .edit_message_text(ChatId(5), sent.id, "same")
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageNotModified)),
            "{err:?}"
        );
        let err = bot
            .edit_message_text(ChatId(5), MessageId(9999), "x")
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageToEditNotFound)),
            "{err:?}"
        );
        let err = bot
            .send_message(ChatId(5), "x".repeat(MAX_TEXT_LEN + 1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageIsTooLong)),
            "{err:?}"
        );
        // Markup does not count towards the limit.
        let html = format!("<b>{}</b>", "x".repeat(MAX_TEXT_LEN));
        bot.send_message(ChatId(5), html)
            .parse_mode(ParseMode::Html)
            .await
            .unwrap();
        assert_eq!(fake.failed_sends().len(), 3);
        assert_eq!(fake.sent().len(), 2);
    }

    #[tokio::test]
    async fn waiting_helpers_see_later_messages() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let waiter = tokio::spawn({
            let fake = fake.clone();
            async move { fake.wait_for_sent(|m| m.text.contains("needle"), T).await }
        });
        bot.send_message(ChatId(3), "hay").await.unwrap();
        bot.send_message(ChatId(3), "a needle").await.unwrap();
        let found = waiter.await.unwrap().expect("found");
        assert_eq!(found.text, "a needle");
        let none = fake
            .wait_for_sent(|m| m.chat_id == 4, Duration::from_millis(50))
            .await;
        assert!(none.is_none());
        let some = fake
            .wait_for_chat_messages(3, 5, Duration::from_millis(50))
            .await;
        assert_eq!(some.len(), 2);
    }

    #[tokio::test]
    async fn html_telegram_cannot_parse_is_refused_and_an_unknown_parse_mode_too() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        for html in ["<b>open", "a <br> b", "<b><i>x</b></i>", "1 < 2", "Q&A"] {
            let err = bot
                .send_message(ChatId(5), html)
                .parse_mode(ParseMode::Html)
                .await
                .unwrap_err();
            assert!(
                matches!(err, RequestError::Api(ApiError::CantParseEntities(_))),
                "{html}: {err:?}"
            );
        }
        // The same text without a parse mode is only text.
        bot.send_message(ChatId(5), "<b>open").await.unwrap();
        let sent = bot
            .send_message(ChatId(5), "<b>a &amp; b</b>")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap();
        assert_eq!(sent.text(), Some("a & b"), "the text as Telegram shows it");
        // Markup whose visible text is blank is an empty message.
        let err = bot
            .send_message(ChatId(5), "<b> </b>")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageTextIsEmpty)),
            "{err:?}"
        );
        // Edits are parsed as strictly.
        let err = bot
            .edit_message_text(ChatId(5), sent.id, "<i>x</b>")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::CantParseEntities(_))),
            "{err:?}"
        );

        let url = fake.api_url();
        for mode in ["html5", "Markdown3"] {
            let r = http()
                .post(format!("{url}/bot{TOKEN}/sendMessage"))
                .json(&json!({"chat_id": 5, "text": "x", "parse_mode": mode}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 400);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["description"], "Bad Request: unsupported parse_mode");
        }
        // Parse modes are case-insensitive, and "" means none.
        for mode in ["html", "HTML", ""] {
            let r = http()
                .post(format!("{url}/bot{TOKEN}/sendMessage"))
                .json(&json!({"chat_id": 5, "text": "y", "parse_mode": mode}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{mode:?}");
        }
        assert_eq!(fake.sent().len(), 5);
        assert_eq!(fake.failed_sends().len(), 9);
    }

    #[tokio::test]
    async fn a_malformed_send_fails_the_test_that_asked_for_it() {
        let fake = FakeTelegram::start().await;
        fake.fail_the_test_on_malformed_sends();
        let bot = bot(&fake);
        // A scripted refusal is the test's doing, not the sender's.
        fake.fail_send(SendFault::bad_entities());
        bot.send_message(ChatId(1), "fine").await.unwrap_err();
        assert!(fake.malformed_sends().is_empty());
        bot.send_message(ChatId(1), "<b>unclosed")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap_err();
        assert_eq!(fake.malformed_sends().len(), 1);
        drop(bot);
        let clone = fake.clone();
        drop(clone);
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(fake)));
        assert!(dropped.is_err(), "the last handle panics");
    }
}
