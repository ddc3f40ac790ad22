//! The chats and what their users do in them: text messages and replies (with the
//! entities Telegram's clients attach), the chat objects updates carry, a user who blocks
//! the bot, a group that becomes a supergroup, a message its user deletes.

use serde_json::{Value, json};

use super::{FakeTelegram, Inner, bot_user, sending::utf16_len, unix_now};

impl FakeTelegram {
    /// Queue a text message from `user_id` in `chat_id` (a private chat for positive ids, a
    /// group for negative ones). Returns the update id.
    pub fn send_text(&self, chat_id: i64, user_id: i64, text: &str) -> i64 {
        let chat = default_chat(chat_id);
        let mut g = self.state.lock();
        g.last_message_id += 1;
        let mut message = json!({
            "message_id": g.last_message_id,
            "date": unix_now(),
            "chat": chat,
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
            "text": text,
        });
        let entities = entities_of(text);
        if !entities.is_empty() {
            message["entities"] = Value::Array(entities);
        }
        drop(g);
        self.push_update(json!({ "message": message }))
    }

    /// Queue a text message that replies to message `reply_to` of the same chat (one the
    /// bot sent, or any other). Returns the update id.
    pub fn send_reply(&self, chat_id: i64, user_id: i64, text: &str, reply_to: i64) -> i64 {
        let chat = default_chat(chat_id);
        let mut g = self.state.lock();
        g.last_message_id += 1;
        let original_from = if g.texts.contains_key(&(chat_id, reply_to)) {
            bot_user()
        } else {
            json!({"id": user_id + 1, "is_bot": false, "first_name": "Other"})
        };
        let original_text = g
            .texts
            .get(&(chat_id, reply_to))
            .map(|(_, shown)| shown.clone())
            .unwrap_or_default();
        let message = json!({
            "message_id": g.last_message_id,
            "date": unix_now(),
            "chat": chat,
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
            "text": text,
            "reply_to_message": {
                "message_id": reply_to,
                "date": unix_now(),
                "chat": chat,
                "from": original_from,
                "text": original_text,
            },
        });
        drop(g);
        self.push_update(json!({ "message": message }))
    }

    /// The user of private chat `chat_id` blocks the bot: every send there is refused with
    /// 403, as Telegram does.
    pub fn block_chat(&self, chat_id: i64) {
        self.state.lock().blocked.insert(chat_id);
    }

    /// Group `old` becomes supergroup `new`: sends to `old` are refused with
    /// `migrate_to_chat_id`, and its messages come from `new` from now on.
    pub fn migrate_chat(&self, old: i64, new: i64) {
        let mut g = self.state.lock();
        g.migrated.insert(old, new);
        let chat = json!({"id": new, "type": "supergroup", "title": "Test group"});
        g.chats.insert(new, chat);
    }

    /// The user deletes message `message_id` of chat `chat_id`: editing it fails from now
    /// on ("message to edit not found").
    pub fn delete_message(&self, chat_id: i64, message_id: i64) {
        self.state.lock().texts.remove(&(chat_id, message_id));
    }
}

impl Inner {
    pub(super) fn chat(&self, chat_id: i64) -> Value {
        self.chats
            .get(&chat_id)
            .cloned()
            .unwrap_or_else(|| default_chat(chat_id))
    }
}

/// The entities Telegram's clients attach: a leading `/command`, and every `@mention`.
pub(super) fn entities_of(text: &str) -> Vec<Value> {
    let mut entities = Vec::new();
    let mut offset = 0;
    for (i, word) in text.split(' ').enumerate() {
        let len = utf16_len(word);
        if i == 0 && word.starts_with('/') && len > 1 {
            entities.push(json!({"type": "bot_command", "offset": 0, "length": len}));
        } else if word.starts_with('@') && len > 1 {
            entities.push(json!({"type": "mention", "offset": offset, "length": len}));
        }
        offset += len + 1;
    }
    entities
}

fn default_chat(chat_id: i64) -> Value {
    if chat_id < 0 {
        json!({"id": chat_id, "type": "group", "title": "Test group"})
    } else {
        json!({"id": chat_id, "type": "private", "first_name": "Test"})
    }
}
