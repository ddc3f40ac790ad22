//! Rich messages (Bot API 10.1): `sendRichMessage` takes an `InputRichMessage` with
//! exactly one of `html`, `markdown` or `blocks`, at most 32,768 characters of it, and
//! sends one message; and `deleteMessage`, which takes a message of the bot's away (a
//! preview a rich message replaced). A test can make Telegram refuse rich messages
//! ([`FakeTelegram::refuse_rich_messages`]), as a chat or a client version that does not
//! take them would; the rich Markdown itself is taken as written (its parser is not
//! emulated). An accepted rich message is one of the chat's delivered messages
//! (`sendRichMessage` in [`FakeTelegram::sent`], its Markdown as the text).
//!
//! The refusal's words are the fake's own: the Bot API documents no error text for a
//! refused rich message; any 400 is what the gateway must fall back on.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::{Value, json};

use super::{
    FakeTelegram, Response, SendFault, SentMessage, State, api_error, as_i64, bot_user, ok,
    unix_now,
};

/// The most characters a rich message holds.
pub const MAX_RICH_LEN: usize = 32_768;

/// What the fake knows of rich messages and deleted messages.
#[derive(Default)]
pub(super) struct Rich {
    /// While set, every `sendRichMessage` is refused with this 400 description.
    refusal: Option<String>,
    /// Messages the bot deleted.
    deleted: HashSet<(i64, i64)>,
}

impl State {
    /// `sendRichMessage`.
    pub(super) fn send_rich(&self, params: &Value) -> Response {
        const METHOD: &str = "sendRichMessage";
        let chat_id = params.get("chat_id").and_then(as_i64);
        let rich = match params.get("rich_message") {
            Some(Value::String(text)) => serde_json::from_str::<Value>(text).unwrap_or_default(),
            Some(rich) => rich.clone(),
            None => Value::Null,
        };
        let given: Vec<&str> = ["html", "markdown", "blocks"]
            .into_iter()
            .filter(|field| !rich[*field].is_null())
            .collect();
        let text = rich["markdown"]
            .as_str()
            .or(rich["html"].as_str())
            .unwrap_or_default()
            .to_string();
        let mut g = self.lock();
        let fault = if chat_id.is_none() {
            Some(SendFault::bad_request("Bad Request: chat_id is empty"))
        } else if given.len() != 1 {
            Some(SendFault::bad_request(
                "Bad Request: exactly one of html, markdown and blocks must be specified",
            ))
        } else if text.trim().is_empty() && given != ["blocks"] {
            Some(SendFault::bad_request("Bad Request: message text is empty"))
        } else if text.chars().count() > MAX_RICH_LEN {
            Some(SendFault::bad_request("Bad Request: message is too long"))
        } else if let Err(fault) = g.thread_to(chat_id.unwrap_or_default(), params) {
            Some(fault)
        } else if let Some(refusal) = &g.rich.refusal {
            Some(SendFault::bad_request(refusal))
        } else {
            g.chat_refuses(chat_id.unwrap_or_default()).or_else(|| {
                g.flooded(chat_id.unwrap_or_default())
                    .map(SendFault::RetryAfter)
            })
        };
        let chat_id = chat_id.unwrap_or_default();
        if let Some(fault) = fault {
            return self.refuse(g, METHOD, chat_id, text, None, fault);
        }
        g.last_message_id += 1;
        let message_id = g.last_message_id;
        let chat = g.chat(chat_id);
        let thread = g.thread_to(chat_id, params).ok().flatten();
        g.texts
            .insert((chat_id, message_id), (text.clone(), text.clone()));
        g.count_sent(chat_id);
        g.sent.push(SentMessage {
            method: METHOD.to_string(),
            chat_id,
            text,
            parse_mode: None,
            message_id,
            keyboard: None,
            at: Instant::now(),
            thread,
        });
        drop(g);
        self.bump();
        ok(json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": chat,
            "from": bot_user(),
            "rich_message": {},
        }))
    }

    /// `deleteMessage`, of the bot's own messages.
    pub(super) fn delete_message_call(&self, params: &Value) -> Response {
        let chat_id = params.get("chat_id").and_then(as_i64).unwrap_or_default();
        let message_id = params
            .get("message_id")
            .and_then(as_i64)
            .unwrap_or_default();
        let mut g = self.lock();
        if g.texts.remove(&(chat_id, message_id)).is_none() {
            return api_error(400, "Bad Request: message to delete not found", None);
        }
        g.keyboards.remove(&(chat_id, message_id));
        g.rich.deleted.insert((chat_id, message_id));
        drop(g);
        self.bump();
        ok(json!(true))
    }
}

impl FakeTelegram {
    /// From now on (`Some`) every `sendRichMessage` is refused with 400 and this
    /// description; `None` accepts them again.
    pub fn refuse_rich_messages(&self, description: Option<&str>) {
        self.state.lock().rich.refusal = description.map(str::to_string);
    }

    /// Whether the bot deleted message `message_id` of `chat_id`.
    pub fn was_deleted(&self, chat_id: i64, message_id: i64) -> bool {
        self.state
            .lock()
            .rich
            .deleted
            .contains(&(chat_id, message_id))
    }

    /// What `chat_id` shows now ([`FakeTelegram::chat_now`]), without the messages the bot
    /// deleted.
    pub fn chat_shows(&self, chat_id: i64) -> Vec<SentMessage> {
        self.chat_now(chat_id)
            .into_iter()
            .filter(|m| !self.was_deleted(chat_id, m.message_id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bot, http};
    use super::super::*;
    use teloxide_core::{prelude::Requester, types::ChatId};

    #[tokio::test]
    async fn rich_messages_are_sent_refused_when_told_and_previews_deleted() {
        let fake = FakeTelegram::start().await;
        let url = fake.api_url();
        let call = |body: Value| {
            let url = url.clone();
            async move {
                let r = http()
                    .post(format!("{url}/bot{TOKEN}/sendRichMessage"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };
        let table = "| a |\n|---|\n| 1 |";
        let (status, body) = call(json!({"chat_id": 5, "rich_message": {"markdown": table}})).await;
        assert_eq!(status, 200, "{body}");
        let sent = fake.sent_to(5);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].method.as_str(), sent[0].text.as_str()),
            ("sendRichMessage", table)
        );
        for bad in [
            json!({"chat_id": 5, "rich_message": {"markdown": "x", "html": "x"}}),
            json!({"chat_id": 5, "rich_message": {}}),
            json!({"chat_id": 5, "rich_message": {"markdown": "x".repeat(MAX_RICH_LEN + 1)}}),
        ] {
            assert_eq!(call(bad).await.0, 400);
        }
        fake.refuse_rich_messages(Some("Bad Request: RICH_MESSAGE_UNSUPPORTED"));
        let (status, body) = call(json!({"chat_id": 5, "rich_message": {"markdown": table}})).await;
        assert_eq!(status, 400);
        assert_eq!(body["description"], "Bad Request: RICH_MESSAGE_UNSUPPORTED");
        assert_eq!(fake.sent_to(5).len(), 1);

        let bot = bot(&fake);
        let preview = bot.send_message(ChatId(5), "preview").await.unwrap();
        bot.delete_message(ChatId(5), preview.id)
            .await
            .expect("deleteMessage");
        assert!(fake.was_deleted(5, i64::from(preview.id.0)));
        assert!(
            bot.delete_message(ChatId(5), preview.id).await.is_err(),
            "gone already"
        );
        assert_eq!(fake.chat_shows(5).len(), 1, "the rich message alone");
    }
}
