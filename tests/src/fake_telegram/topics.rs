//! Topics, as strictly as the Bot API keeps them: a chat made a forum supergroup, or a
//! private chat with topics turned on (Bot API 9.3), with its set of topics. A message
//! written in a topic carries `message_thread_id` and `is_topic_message` (in a forum, with
//! the topic's creation as the message it replies to, as Telegram sends it); one in the
//! General topic carries neither. A send or chat action whose `message_thread_id` is not
//! one of its chat's topics (the General topic's 1 included, and any thread in a chat
//! without topics) is refused with 400 "Bad Request: message thread not found". The
//! thread of every send, edit (its message's) and chat action is recorded, so a test can
//! tell where an answer landed.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::{Value, json};

use super::{FakeTelegram, Inner, SendFault, as_i64, bot_user, unix_now};

pub(super) const THREAD_NOT_FOUND: &str = "Bad Request: message thread not found";

/// One `sendChatAction` Telegram accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatActionRecord {
    pub chat_id: i64,
    /// The topic it was shown in; None for General or a chat without topics.
    pub thread: Option<i64>,
    pub action: String,
    pub at: Instant,
}

impl FakeTelegram {
    /// Makes `chat_id` a forum supergroup whose topics are `topics` (thread ids; the
    /// General topic is always there and is none of them). Its messages come as from a
    /// forum from now on.
    pub fn make_forum(&self, chat_id: i64, topics: &[i64]) {
        assert!(
            !topics.contains(&1),
            "thread 1 is a forum's General topic, which no send may name"
        );
        let mut g = self.state.lock();
        g.topics.insert(chat_id, topics.iter().copied().collect());
        let chat =
            json!({"id": chat_id, "type": "supergroup", "title": "Test forum", "is_forum": true});
        g.chats.insert(chat_id, chat);
    }

    /// Topic `thread` of forum `chat_id` was created by the bot (`createForumTopic`): every
    /// message in it comes "replying" to the bot's own service message.
    pub fn topic_created_by_bot(&self, chat_id: i64, thread: i64) {
        self.state.lock().bot_topics.insert((chat_id, thread));
    }

    /// Turns topics on in the private chat `chat_id` (Bot API 9.3), with `topics`.
    pub fn enable_private_topics(&self, chat_id: i64, topics: &[i64]) {
        self.state
            .lock()
            .topics
            .insert(chat_id, topics.iter().copied().collect());
    }

    /// Queues a text message from `user_id` in topic `thread` of `chat_id` (None: its
    /// General topic). Returns the update id. Panics if the chat has no such topic: a
    /// user cannot write where there is none.
    pub fn send_text_in_topic(
        &self,
        chat_id: i64,
        thread: Option<i64>,
        user_id: i64,
        text: &str,
    ) -> i64 {
        let mut g = self.state.lock();
        if let Some(thread) = thread {
            assert!(
                g.topics.get(&chat_id).is_some_and(|t| t.contains(&thread)),
                "chat {chat_id} has no topic {thread}"
            );
        }
        let chat = g.chat(chat_id);
        g.last_message_id += 1;
        let message_id = g.last_message_id;
        let mut message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": chat,
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
            "text": text,
        });
        if let Some(thread) = thread {
            message["message_thread_id"] = json!(thread);
            message["is_topic_message"] = json!(true);
            if chat.get("is_forum").and_then(Value::as_bool) == Some(true) {
                let creator = if g.bot_topics.contains(&(chat_id, thread)) {
                    bot_user()
                } else {
                    json!({"id": user_id, "is_bot": false, "first_name": "Test"})
                };
                message["reply_to_message"] = json!({
                    "message_id": thread,
                    "message_thread_id": thread,
                    "is_topic_message": true,
                    "date": unix_now(),
                    "chat": chat,
                    "from": creator,
                    "forum_topic_created": {"name": format!("Topic {thread}"), "icon_color": 7322096},
                });
            }
            g.threads.insert((chat_id, message_id), thread);
        }
        let entities = super::chats::entities_of(text);
        if !entities.is_empty() {
            message["entities"] = Value::Array(entities);
        }
        drop(g);
        self.push_update(json!({ "message": message }))
    }

    /// Every chat action Telegram accepted, in order, with its topic.
    pub fn chat_actions(&self) -> Vec<ChatActionRecord> {
        self.state.lock().actions.clone()
    }
}

impl Inner {
    /// The topic a send or chat action in `chat_id` names (`message_thread_id`), or
    /// Telegram's refusal when the chat has no such topic.
    pub(super) fn thread_to(&self, chat_id: i64, params: &Value) -> Result<Option<i64>, SendFault> {
        let Some(thread) = params.get("message_thread_id") else {
            return Ok(None);
        };
        match as_i64(thread) {
            Some(thread)
                if self
                    .topics
                    .get(&chat_id)
                    .is_some_and(|topics: &HashSet<i64>| topics.contains(&thread)) =>
            {
                Ok(Some(thread))
            }
            _ => Err(SendFault::bad_request(THREAD_NOT_FOUND)),
        }
    }

    /// The topic message `message_id` of `chat_id` is in.
    pub(super) fn thread_of(&self, chat_id: i64, message_id: i64) -> Option<i64> {
        self.threads.get(&(chat_id, message_id)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::http;
    use super::super::*;

    #[tokio::test]
    async fn a_thread_that_is_not_one_of_the_chats_topics_is_refused() {
        let fake = FakeTelegram::start().await;
        fake.make_forum(-100, &[5, 9]);
        fake.enable_private_topics(42, &[3]);
        let url = fake.api_url();
        let call = |method: &'static str, body: Value| {
            let url = url.clone();
            async move {
                let r = http()
                    .post(format!("{url}/bot{TOKEN}/{method}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            }
        };
        for (chat, thread) in [(-100, 1), (-100, 3), (42, 5), (77, 5)] {
            for (method, body) in [
                (
                    "sendMessage",
                    json!({"chat_id": chat, "message_thread_id": thread, "text": "x"}),
                ),
                (
                    "sendChatAction",
                    json!({"chat_id": chat, "message_thread_id": thread, "action": "typing"}),
                ),
            ] {
                let (status, body) = call(method, body).await;
                assert_eq!(status, 400, "{method} to {chat}/{thread}");
                assert_eq!(body["description"], super::THREAD_NOT_FOUND);
            }
        }
        let (status, sent) = call(
            "sendMessage",
            json!({"chat_id": -100, "message_thread_id": 9, "text": "in 9"}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(sent["result"]["message_thread_id"], 9);
        assert_eq!(sent["result"]["is_topic_message"], true);
        let id = sent["result"]["message_id"].clone();
        call(
            "editMessageText",
            json!({"chat_id": -100, "message_id": id, "text": "edited"}),
        )
        .await;
        call("sendMessage", json!({"chat_id": -100, "text": "general"})).await;
        call(
            "sendChatAction",
            json!({"chat_id": 42, "message_thread_id": 3, "action": "typing"}),
        )
        .await;
        let threads: Vec<(String, Option<i64>)> = fake
            .sent()
            .into_iter()
            .map(|m| (m.text, m.thread))
            .collect();
        assert_eq!(
            threads,
            [
                ("in 9".to_string(), Some(9)),
                ("edited".to_string(), Some(9)),
                ("general".to_string(), None)
            ]
        );
        let actions = fake.chat_actions();
        assert_eq!(actions.len(), 1);
        assert_eq!((actions[0].chat_id, actions[0].thread), (42, Some(3)));
    }

    #[tokio::test]
    async fn a_topic_message_parses_as_teloxide_reads_it() {
        let fake = FakeTelegram::start().await;
        fake.make_forum(-100, &[5]);
        fake.enable_private_topics(42, &[3]);
        fake.send_text_in_topic(-100, Some(5), 7, "in a forum topic");
        fake.send_text_in_topic(-100, None, 7, "in General");
        fake.send_text_in_topic(42, Some(3), 42, "in a private topic");
        let bot = super::super::tests::bot(&fake);
        let updates = teloxide_core::prelude::Requester::get_updates(&bot)
            .await
            .unwrap();
        let seen: Vec<(Option<i32>, bool, bool)> = updates
            .into_iter()
            .map(|u| match u.kind {
                teloxide_core::types::UpdateKind::Message(m) => (
                    m.thread_id.map(|t| t.0.0),
                    m.is_topic_message,
                    m.chat.is_private(),
                ),
                other => panic!("not a message: {other:?}"),
            })
            .collect();
        assert_eq!(
            seen,
            [
                (Some(5), true, false),
                (None, false, false),
                (Some(3), true, true)
            ]
        );
    }
}
