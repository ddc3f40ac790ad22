//! Topics are conversations. In a forum supergroup, and in a private chat where the user
//! turned topics on (Bot API 9.3), people keep one subject per topic, and a bot that
//! answered them all as one conversation would mix their histories and post every answer
//! in "General" (the peers' trackers hold exactly that report). So the key of everything
//! the gateway keeps per conversation (its history, `/new`, `/retry`, `/model`, the turn
//! in hand and the messages waiting behind it, `/stop`) is a [`Place`]: the chat, and the
//! topic in it. Every send names the topic, so an answer lands where its question was
//! asked, after a restart too (the outbox keeps it with each piece).
//!
//! What counts as a topic follows the Bot API: a message is in a topic only when it says
//! `is_topic_message`. A `message_thread_id` without it is a reply thread (a reply in an
//! ordinary supergroup, or in the General topic, names the replied-to message's thread),
//! which is no conversation of its own and cannot be sent to. A forum's General topic
//! (thread 1) is a chat's conversation as it was before topics: it has no thread, and a
//! send into it must not carry `message_thread_id` (Telegram refuses 1 with "message
//! thread not found"). A chat without topics is all General, so it behaves as it always
//! did. (A private chat has no General topic: its topic ids are message ids like any,
//! 1 included.)
//!
//! teloxide-core 0.13 (Bot API 9.1) reads `message_thread_id` and `is_topic_message` on
//! every message whatever its chat, and its `sendMessage` and `sendChatAction` take a
//! thread: private chats' topics need nothing it lacks.

use serde_json::Value;
use teloxide_core::types::{Message, MessageId, ThreadId};

/// The thread id of a forum's General topic: never sent.
const GENERAL: i32 = 1;

/// Whether `thread`, read from a message in a chat of this kind, is a topic one sends to:
/// any in a private chat, any but General in a forum.
fn is_topic(thread: i32, private: bool) -> bool {
    private || thread != GENERAL
}

/// One conversation: a chat, and the topic in it (None: the General topic, or a chat
/// without topics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Place {
    pub chat: i64,
    pub thread: Option<i32>,
}

impl Place {
    /// `chat`'s topic `thread` (as [`Place::of`] read it); no thread, or one that is no
    /// message id, is the chat's own conversation.
    pub fn new(chat: i64, thread: Option<i32>) -> Place {
        Place {
            chat,
            thread: thread.filter(|t| *t > 0),
        }
    }

    /// Where `message` was written, as [`Place`] reads the Bot API (see the module's
    /// documentation): its topic only when it is a topic message.
    pub fn of(message: &Message) -> Place {
        let thread = message
            .thread_id
            .filter(|_| message.is_topic_message)
            .map(|t| t.0.0)
            .filter(|t| is_topic(*t, message.chat.is_private()));
        Place::new(message.chat.id.0, thread)
    }

    /// The topic of a message read from its raw JSON (an update the client could not
    /// parse), by the same rule.
    pub fn thread_of_raw(message: &Value) -> Option<i32> {
        let topic = message
            .get("is_topic_message")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let private = message
            .get("chat")
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
            == Some("private");
        message
            .get("message_thread_id")
            .and_then(Value::as_i64)
            .filter(|_| topic)
            .and_then(|t| i32::try_from(t).ok())
            .filter(|t| *t > 0 && is_topic(*t, private))
    }

    /// What a send into this place carries as `message_thread_id`: nothing for General
    /// (or a chat without topics).
    pub fn thread_id(&self) -> Option<ThreadId> {
        self.thread.map(|t| ThreadId(MessageId(t)))
    }

    /// The thread as the store keeps it: 0 for none (a key column cannot be NULL and
    /// still tell rows apart).
    pub fn thread_key(&self) -> i64 {
        self.thread.map_or(0, i64::from)
    }

    /// The place the store keeps as `chat` and `thread_key`.
    pub fn from_key(chat: i64, thread_key: i64) -> Place {
        Place::new(chat, i32::try_from(thread_key).ok())
    }
}

/// The message `message` replies to, if it is a reply a person made: a message in a
/// forum topic comes "replying" to the topic's creation (the topic's first message, whose
/// id is the thread's), which says nothing about whom it is for. A bot that created the
/// topic would otherwise take every message in it as a reply to itself.
pub fn replied_to(message: &Message) -> Option<&Message> {
    let root = message
        .thread_id
        .filter(|_| message.is_topic_message)
        .map(|t| t.0);
    message.reply_to_message().filter(|r| Some(r.id) != root)
}

/// A chat without topics (or its General topic).
impl From<i64> for Place {
    fn from(chat: i64) -> Place {
        Place { chat, thread: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use teloxide_core::types::{Update, UpdateKind};

    fn message(json: Value) -> Message {
        // As the poller reads it: from the text (teloxide keeps what it cannot parse).
        let text = json!({"update_id": 1, "message": json}).to_string();
        let update: Update = serde_json::from_str(&text).expect("the update parses");
        match update.kind {
            UpdateKind::Message(m) => m,
            other => panic!("not a message: {other:?}"),
        }
    }

    fn base(chat: Value) -> Value {
        json!({
            "message_id": 50,
            "date": 1_700_000_000,
            "chat": chat,
            "from": {"id": 7, "is_bot": false, "first_name": "A"},
            "text": "hi",
        })
    }

    #[test]
    fn a_topic_message_is_its_topics_and_anything_else_the_chats() {
        let forum = json!({"id": -1001, "type": "supergroup", "title": "F", "is_forum": true});
        let mut in_topic = base(forum.clone());
        in_topic["message_thread_id"] = json!(4);
        in_topic["is_topic_message"] = json!(true);
        assert_eq!(Place::of(&message(in_topic)), Place::new(-1001, Some(4)));
        // A reply in General names the replied-to message's thread, but is no topic.
        let mut reply_in_general = base(forum.clone());
        reply_in_general["message_thread_id"] = json!(17);
        assert_eq!(Place::of(&message(reply_in_general)), Place::from(-1001));
        assert_eq!(Place::of(&message(base(forum))), Place::from(-1001));
        // Bot API 9.3: a private chat's topics, as teloxide-core 0.13 reads them.
        let private = json!({"id": 7, "type": "private", "first_name": "A"});
        let mut in_private_topic = base(private);
        in_private_topic["message_thread_id"] = json!(9);
        in_private_topic["is_topic_message"] = json!(true);
        let m = message(in_private_topic.clone());
        assert_eq!(Place::of(&m), Place::new(7, Some(9)));
        assert_eq!(Place::thread_of_raw(&in_private_topic), Some(9));
    }

    #[test]
    fn the_topics_creation_is_no_reply_but_a_reply_in_a_topic_is() {
        let forum = json!({"id": -1001, "type": "supergroup", "title": "F", "is_forum": true});
        let bot = json!({"id": 99, "is_bot": true, "first_name": "Bot"});
        let mut root = base(forum.clone());
        root["message_id"] = json!(4);
        root["from"] = bot;
        root["forum_topic_created"] = json!({"name": "T", "icon_color": 7322096});
        root["message_thread_id"] = json!(4);
        root["is_topic_message"] = json!(true);
        let mut in_topic = base(forum);
        in_topic["message_thread_id"] = json!(4);
        in_topic["is_topic_message"] = json!(true);
        in_topic["reply_to_message"] = root.clone();
        assert!(replied_to(&message(in_topic.clone())).is_none());
        let mut answer = root;
        answer["message_id"] = json!(30);
        answer
            .as_object_mut()
            .map(|o| o.remove("forum_topic_created"));
        answer["text"] = json!("an answer");
        in_topic["reply_to_message"] = answer;
        assert_eq!(
            replied_to(&message(in_topic)).map(|m| m.id.0),
            Some(30),
            "a reply to the bot's answer in the topic"
        );
    }

    #[test]
    fn general_is_never_a_thread_and_the_store_key_reads_back() {
        let forum = json!({"id": -1001, "type": "supergroup", "title": "F", "is_forum": true});
        let mut general = base(forum);
        general["message_thread_id"] = json!(1);
        general["is_topic_message"] = json!(true);
        assert_eq!(Place::of(&message(general.clone())), Place::from(-1001));
        assert_eq!(Place::thread_of_raw(&general), None);
        // A private chat has no General: its first topic may well be message 1.
        let mut first = base(json!({"id": 7, "type": "private", "first_name": "A"}));
        first["message_thread_id"] = json!(1);
        first["is_topic_message"] = json!(true);
        assert_eq!(Place::of(&message(first.clone())), Place::new(7, Some(1)));
        assert_eq!(Place::thread_of_raw(&first), Some(1));
        assert_eq!(
            Place::new(7, Some(1)).thread_id(),
            Some(ThreadId(MessageId(1)))
        );
        assert_eq!(Place::new(5, Some(0)), Place::from(5));
        assert_eq!(Place::new(5, Some(0)).thread_key(), 0);
        let topic = Place::new(-9, Some(123));
        assert_eq!(topic.thread_id(), Some(ThreadId(MessageId(123))));
        assert_eq!(Place::from_key(-9, topic.thread_key()), topic);
        assert_eq!(Place::from_key(-9, 0), Place::from(-9));
    }
}
