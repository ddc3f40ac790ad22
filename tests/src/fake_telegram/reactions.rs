//! Reactions, as the Bot API has them for bots: `setMessageReaction` sets a message's
//! reactions to the list given (none removes them), at most one for a bot, each an emoji
//! from the set Telegram lets bots use (`ReactionTypeEmoji`); anything else is refused
//! with 400 `REACTION_INVALID`, as Telegram does, and so is every reaction in a chat a
//! test marks as not allowing them ([`FakeTelegram::refuse_reactions_in`]). The fake keeps
//! each message's reactions, every change in order, for tests to read and wait on. A
//! message id the chat never had is refused (`MESSAGE_ID_INVALID`); whose message it is
//! is not checked.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::{FakeTelegram, Response, State, api_error, as_i64, ok, unix_now};

/// The emoji a bot may react with (Bot API 9.x, `ReactionTypeEmoji`).
pub const ALLOWED_REACTIONS: &[&str] = &[
    "👍",
    "👎",
    "❤",
    "🔥",
    "🥰",
    "👏",
    "😁",
    "🤔",
    "🤯",
    "😱",
    "🤬",
    "😢",
    "🎉",
    "🤩",
    "🤮",
    "💩",
    "🙏",
    "👌",
    "🕊",
    "🤡",
    "🥱",
    "🥴",
    "😍",
    "🐳",
    "❤‍🔥",
    "🌚",
    "🌭",
    "💯",
    "🤣",
    "⚡",
    "🍌",
    "🏆",
    "💔",
    "🤨",
    "😐",
    "🍓",
    "🍾",
    "💋",
    "🖕",
    "😈",
    "😴",
    "😭",
    "🤓",
    "👻",
    "👨‍💻",
    "👀",
    "🎃",
    "🙈",
    "😇",
    "😨",
    "🤝",
    "✍",
    "🤗",
    "🫡",
    "🎅",
    "🎄",
    "☃",
    "💅",
    "🤪",
    "🗿",
    "🆒",
    "💘",
    "🙉",
    "🦄",
    "😘",
    "💊",
    "🙊",
    "😎",
    "👾",
    "🤷‍♂",
    "🤷",
    "🤷‍♀",
    "😡",
];

/// What the fake knows of reactions.
#[derive(Default)]
pub(super) struct Reactions {
    /// Each message's reactions, every accepted change in order.
    set: HashMap<(i64, i64), Vec<Vec<String>>>,
    /// Chats that allow no reaction.
    refusing: HashSet<i64>,
    /// Calls refused, by chat.
    refused: HashMap<i64, usize>,
}

impl State {
    /// `setMessageReaction`.
    pub(super) fn set_reaction(&self, params: &Value) -> Response {
        let chat_id = params.get("chat_id").and_then(as_i64);
        let message_id = params.get("message_id").and_then(as_i64);
        let (Some(chat_id), Some(message_id)) = (chat_id, message_id) else {
            return api_error(
                400,
                "Bad Request: chat_id and message_id are required",
                None,
            );
        };
        let list = match params.get("reaction") {
            None | Some(Value::Null) => Vec::new(),
            // Forms carry it as JSON text.
            Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Array(list)) => list,
                _ => {
                    return api_error(
                        400,
                        "Bad Request: can't parse reaction types JSON object",
                        None,
                    );
                }
            },
            Some(Value::Array(list)) => list.clone(),
            Some(_) => {
                return api_error(
                    400,
                    "Bad Request: can't parse reaction types JSON object",
                    None,
                );
            }
        };
        let mut g = self.lock();
        // A chat that allows no reactions refuses every one as it refuses an emoji it does
        // not allow.
        let invalid = (g.reactions.refusing.contains(&chat_id) && !list.is_empty())
            || !list.iter().all(|r| {
                r["type"] == "emoji"
                    && r["emoji"]
                        .as_str()
                        .is_some_and(|e| ALLOWED_REACTIONS.contains(&e))
            });
        let refusal = if message_id <= 0 || message_id > g.last_message_id {
            Some("Bad Request: MESSAGE_ID_INVALID")
        } else if list.len() > 1 {
            Some("Bad Request: REACTIONS_TOO_MANY")
        } else if invalid {
            Some("Bad Request: REACTION_INVALID")
        } else {
            None
        };
        if let Some(refusal) = refusal {
            *g.reactions.refused.entry(chat_id).or_default() += 1;
            drop(g);
            self.bump();
            return api_error(400, refusal, None);
        }
        let emoji = list
            .iter()
            .filter_map(|r| r["emoji"].as_str().map(str::to_string))
            .collect();
        g.reactions
            .set
            .entry((chat_id, message_id))
            .or_default()
            .push(emoji);
        drop(g);
        self.bump();
        ok(json!(true))
    }
}

impl FakeTelegram {
    /// `user_id` writes `text` in `chat_id` (as [`FakeTelegram::send_text`]); returns the
    /// message's id, which its reactions are recorded under.
    pub fn send_text_returning_id(&self, chat_id: i64, user_id: i64, text: &str) -> i64 {
        let mut g = self.state.lock();
        g.last_message_id += 1;
        let id = g.last_message_id;
        let chat = g.chat(chat_id);
        drop(g);
        self.push_update(json!({"message": {
            "message_id": id,
            "date": unix_now(),
            "chat": chat,
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
            "text": text,
        }}));
        id
    }

    /// From now on chat `chat_id` allows no reaction: each is refused with
    /// `REACTION_INVALID` (removing one is still allowed).
    pub fn refuse_reactions_in(&self, chat_id: i64) {
        self.state.lock().reactions.refusing.insert(chat_id);
    }

    /// Every reaction message `message_id` of `chat_id` was given, in order (an empty
    /// list: its reactions were removed).
    pub fn reactions_on(&self, chat_id: i64, message_id: i64) -> Vec<Vec<String>> {
        self.state
            .lock()
            .reactions
            .set
            .get(&(chat_id, message_id))
            .cloned()
            .unwrap_or_default()
    }

    /// How many reaction calls in `chat_id` were refused.
    pub fn refused_reactions(&self, chat_id: i64) -> usize {
        self.state
            .lock()
            .reactions
            .refused
            .get(&chat_id)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until message `message_id` of `chat_id` shows exactly `emoji` (empty: no
    /// reaction, after it had one); true once it does.
    pub async fn wait_for_reaction(
        &self,
        chat_id: i64,
        message_id: i64,
        emoji: &[&str],
        timeout: Duration,
    ) -> bool {
        self.state
            .wait_until(timeout, |g| {
                let now = g.reactions.set.get(&(chat_id, message_id))?.last()?;
                (now.iter().map(String::as_str).eq(emoji.iter().copied())).then_some(())
            })
            .await
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{T, bot};
    use super::super::*;
    use teloxide_core::{
        ApiError, RequestError,
        payloads::SetMessageReactionSetters,
        prelude::Requester,
        types::{ChatId, MessageId, ReactionType},
    };

    fn emoji(e: &str) -> ReactionType {
        ReactionType::Emoji { emoji: e.into() }
    }

    #[tokio::test]
    async fn reactions_follow_the_bot_api_rules() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let id = fake.send_text_returning_id(5, 5, "hi");
        let message = MessageId(id as i32);
        bot.set_message_reaction(ChatId(5), message)
            .reaction([emoji("👀")])
            .await
            .expect("an allowed emoji");
        let invalid = bot
            .set_message_reaction(ChatId(5), message)
            .reaction([emoji("🦆")])
            .await
            .unwrap_err();
        assert!(
            matches!(&invalid, RequestError::Api(ApiError::Unknown(d)) if d == "Bad Request: REACTION_INVALID"),
            "{invalid:?}"
        );
        assert!(
            bot.set_message_reaction(ChatId(5), message)
                .reaction([emoji("👍"), emoji("👌")])
                .await
                .is_err(),
            "a bot sets one reaction at most"
        );
        assert!(
            bot.set_message_reaction(ChatId(5), MessageId(9999))
                .reaction([emoji("👍")])
                .await
                .is_err(),
            "a message the chat never had"
        );
        bot.set_message_reaction(ChatId(5), message)
            .await
            .expect("removing");
        assert_eq!(fake.reactions_on(5, id), [vec!["👀".to_string()], vec![]]);
        assert_eq!(fake.refused_reactions(5), 3);
        fake.refuse_reactions_in(5);
        assert!(
            bot.set_message_reaction(ChatId(5), message)
                .reaction([emoji("👍")])
                .await
                .is_err(),
            "a chat that allows no reactions"
        );
        assert!(fake.wait_for_reaction(5, id, &[], T).await);
        assert!(
            !fake
                .wait_for_reaction(5, id, &["👍"], Duration::from_millis(50))
                .await
        );
    }
}
