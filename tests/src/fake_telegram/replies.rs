//! Replies as the Bot API delivers them: `reply_to_message` is the replied-to message as
//! the chat has it (the user's own, another member's, or one of the bot's), without a
//! `reply_to_message` of its own; `quote` is the part the user selected, which Telegram
//! only allows from the replied-to text or caption, with where it starts (in UTF-16 code
//! units). So the fake remembers the messages users sent (the latest [`REMEMBERED`]),
//! as Telegram keeps a chat's history, and a test replies to any of them or to the bot's.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{FakeTelegram, Inner, bot_user, sending::utf16_len, unix_now};

/// Users' messages the fake keeps for replies to them.
const REMEMBERED: usize = 1024;

/// The users' messages a reply can be to, by chat and message id.
#[derive(Default)]
pub(super) struct Remembered {
    messages: HashMap<(i64, i64), Value>,
    /// Oldest first, with the update that carried each.
    order: std::collections::VecDeque<(i64, (i64, i64))>,
}

impl Inner {
    /// Keeps the message an update carries (if it is a new one), for replies to it.
    pub(super) fn remember(&mut self, update: &Value) {
        let Some(message) = update.get("message") else {
            return;
        };
        let (Some(chat), Some(id)) = (
            message["chat"]["id"].as_i64(),
            message["message_id"].as_i64(),
        ) else {
            return;
        };
        let mut kept = message.clone();
        if let Some(m) = kept.as_object_mut() {
            // Telegram's replied-to message carries no reply of its own.
            m.remove("reply_to_message");
            m.remove("quote");
        }
        let update_id = update["update_id"].as_i64().unwrap_or_default();
        let remembered = &mut self.remembered;
        if remembered.messages.insert((chat, id), kept).is_none() {
            remembered.order.push_back((update_id, (chat, id)));
        }
        while remembered.order.len() > REMEMBERED {
            if let Some((_, old)) = remembered.order.pop_front() {
                remembered.messages.remove(&old);
            }
        }
    }

    /// Message `id` of `chat` as a reply to it carries it: one a user sent, or the bot's.
    fn replied_to(&self, chat: i64, id: i64) -> Option<Value> {
        if let Some(message) = self.remembered.messages.get(&(chat, id)) {
            return Some(message.clone());
        }
        let (_, shown) = self.texts.get(&(chat, id))?;
        Some(json!({
            "message_id": id,
            "date": unix_now(),
            "chat": self.chat(chat),
            "from": bot_user(),
            "text": shown,
        }))
    }
}

impl FakeTelegram {
    /// The message id of the user's message update `update_id` carried (what a reply to
    /// it names), while the fake remembers it.
    pub fn message_id_of(&self, update_id: i64) -> Option<i64> {
        let g = self.state.lock();
        g.remembered
            .order
            .iter()
            .find(|(update, _)| *update == update_id)
            .map(|(_, (_, id))| *id)
    }

    /// Queue a text message of `user_id` that replies to message `reply_to` of `chat_id`
    /// (any the fake knows: a user's or the bot's), quoting `quote` of it when given.
    /// Returns the update id. Panics, as Telegram would refuse it, when `reply_to` is not
    /// a message of the chat or `quote` is not part of its text or caption.
    pub fn send_reply_quoting(
        &self,
        chat_id: i64,
        user_id: i64,
        text: &str,
        reply_to: i64,
        quote: Option<&str>,
    ) -> i64 {
        let mut g = self.state.lock();
        let Some(original) = g.replied_to(chat_id, reply_to) else {
            panic!("message {reply_to} of chat {chat_id} is not one Telegram knows");
        };
        g.last_message_id += 1;
        let mut message = json!({
            "message_id": g.last_message_id,
            "date": unix_now(),
            "chat": g.chat(chat_id),
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
            "text": text,
        });
        if let Some(quote) = quote {
            let whole = original["text"]
                .as_str()
                .or(original["caption"].as_str())
                .unwrap_or_default();
            let Some(at) = whole.find(quote).filter(|_| !quote.is_empty()) else {
                panic!("QUOTE_TEXT_INVALID: {quote:?} is not part of {whole:?}");
            };
            message["quote"] = json!({
                "text": quote,
                "position": utf16_len(&whole[..at]),
                "is_manual": true,
            });
        }
        message["reply_to_message"] = original;
        drop(g);
        self.push_update(json!({ "message": message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reply_carries_the_message_and_the_part_quoted() {
        let fake = FakeTelegram::start().await;
        fake.send_text(5, 5, "the first line\nthe second");
        let first = fake.state.lock().last_message_id;
        fake.send_reply_quoting(5, 5, "why?", first, Some("second"));
        let reply = fake.state.lock().pending.back().unwrap().1["message"].clone();
        assert_eq!(
            reply["reply_to_message"]["text"],
            "the first line\nthe second"
        );
        assert_eq!(reply["quote"]["text"], "second");
        assert_eq!(reply["quote"]["position"], 19);
        // A reply to the reply carries the reply, not what it replied to.
        let second = reply["message_id"].as_i64().unwrap();
        fake.send_reply_quoting(5, 5, "and?", second, None);
        let again = fake.state.lock().pending.back().unwrap().1["message"].clone();
        assert!(again["reply_to_message"].get("reply_to_message").is_none());
    }

    #[test]
    #[should_panic(expected = "QUOTE_TEXT_INVALID")]
    fn a_quote_must_be_part_of_the_message() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let fake = rt.block_on(FakeTelegram::start());
        fake.send_text(5, 5, "hello");
        let id = fake.state.lock().last_message_id;
        fake.send_reply_quoting(5, 5, "?", id, Some("bye"));
    }
}
