//! The running answer, visible on the question: while a turn runs past [`TAKEN_AFTER`],
//! the message it answers shows 👀 (`setMessageReaction`), and once the answer is on its
//! way (committed to the outbox, which delivers it in the chat's order) that becomes 👍,
//! or goes after `/stop`; an error shows 😢 however soon it came (`telegram.reactions`,
//! on by default). A quicker answer is its own sign that the turn was taken: it gets no
//! reaction, which spares Telegram two calls per message (and the parent about a fifth of
//! its CPU per message in the benchmark). Only emoji from the set the Bot API lets bots
//! use (`ReactionTypeEmoji`).
//!
//! Reactions only decorate: each turn's are set on a task of their own, in order (the final
//! one never overtaken by the 👀), so the answer never waits for them, and a reaction
//! that fails is given up after one short retry ([`best_effort`]). Some chats do not
//! allow reactions, or not these (Telegram answers 400 `REACTION_INVALID`): such a chat
//! is logged once and left alone for the rest of the run; its turns are answered as
//! usual.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use teloxide_core::payloads::SetMessageReactionSetters;
use teloxide_core::prelude::*;
use teloxide_core::types::{ChatId, MessageId, ReactionType};
use tokio::sync::oneshot;

use super::bot_api::best_effort;
use super::sender::{SendError, Sender, classify};

/// The turn was taken and runs.
pub const TAKEN: &str = "👀";
/// How long a turn runs before it shows [`TAKEN`]: as long as the typing indicator waits
/// (`chats::deliver`), for the same reason.
pub const TAKEN_AFTER: std::time::Duration = std::time::Duration::from_millis(300);
/// Its answer is out.
pub const ANSWERED: &str = "👍";
/// It ended in an error (the reply says which).
pub const FAILED: &str = "😢";
/// The emoji a bot may react with (Bot API, `ReactionTypeEmoji`); the gateway's are
/// checked against it in a test, as Telegram checks them.
#[cfg(test)]
const ALLOWED: &[&str] = &[
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
/// Chats remembered as refusing reactions; past this the memory starts over (a chat then
/// costs one more refused call, and one more log line).
const MAX_REFUSING_CHATS: usize = 10_000;

/// How a turn ended, for its final reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Answered,
    Failed,
    /// `/stop` or the ⏹ button: the reaction goes.
    Stopped,
}

/// Where turns get their reactions.
#[derive(Clone)]
pub struct Reactions {
    sender: Sender,
    refusing: Arc<Mutex<HashSet<i64>>>,
}

/// One turn's reactions: settle it when the turn ends. Dropped unsettled (the gateway
/// stops mid-turn), the 👀 stays, and the next run, which answers the turn, sets it again.
pub struct TurnReaction(Option<oneshot::Sender<Ending>>);

impl TurnReaction {
    /// No reactions for this turn.
    pub fn none() -> Self {
        TurnReaction(None)
    }

    /// The turn ended so: its final reaction replaces the 👀.
    pub fn settle(mut self, ending: Ending) {
        if let Some(settle) = self.0.take() {
            let _ = settle.send(ending);
        }
    }
}

impl Reactions {
    pub fn new(sender: Sender) -> Self {
        Reactions {
            sender,
            refusing: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    fn refuses(&self, chat: i64) -> bool {
        self.refusing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&chat)
    }

    /// Shows 👀 on the message of `chat` that `message` finds once the turn has run for
    /// [`TAKEN_AFTER`] (on the task, off the turn's path), then the final reaction once the
    /// returned handle is settled. A turn answered sooner gets no reaction at all (the
    /// answer itself says it was taken, and the chat is spared two calls); one that fails
    /// sooner gets its 😢 alone.
    pub fn start(
        &self,
        chat: i64,
        message: impl FnOnce() -> Option<i32> + Send + 'static,
    ) -> TurnReaction {
        if self.refuses(chat) {
            return TurnReaction::none();
        }
        let (settle, mut settled) = oneshot::channel();
        let reactions = self.clone();
        tokio::spawn(async move {
            let early = tokio::select! {
                ending = &mut settled => Some(ending),
                () = tokio::time::sleep(TAKEN_AFTER) => None,
            };
            let ending = match early {
                Some(Ok(Ending::Failed)) => Ending::Failed,
                Some(_) => return,
                None => {
                    let Some(id) = message() else { return };
                    let id = MessageId(id);
                    if !reactions.set(chat, id, Some(TAKEN)).await {
                        return;
                    }
                    match settled.await {
                        Ok(ending) => return reactions.end(chat, id, ending).await,
                        Err(_) => return,
                    }
                }
            };
            if let Some(id) = message() {
                reactions.end(chat, MessageId(id), ending).await;
            }
        });
        TurnReaction(Some(settle))
    }

    /// The reaction a turn that ended so is left with.
    async fn end(&self, chat: i64, id: MessageId, ending: Ending) {
        let emoji = match ending {
            Ending::Answered => Some(ANSWERED),
            Ending::Failed => Some(FAILED),
            Ending::Stopped => None,
        };
        self.set(chat, id, emoji).await;
    }

    /// Makes message `id` show `emoji` (None: no reaction); false when Telegram would not.
    async fn set(&self, chat: i64, id: MessageId, emoji: Option<&str>) -> bool {
        let reaction: Vec<ReactionType> = emoji
            .map(|emoji| ReactionType::Emoji {
                emoji: emoji.to_string(),
            })
            .into_iter()
            .collect();
        let bot = self.sender.bot();
        let result = best_effort(|| async {
            bot.set_message_reaction(ChatId(chat), id)
                .reaction(reaction.clone())
                .await
                .map(|_| ())
                .map_err(classify)
        })
        .await;
        match result {
            Ok(()) => true,
            Err(SendError::Refused(why)) => {
                let mut refusing = self.refusing.lock().unwrap_or_else(|e| e.into_inner());
                if refusing.len() >= MAX_REFUSING_CHATS {
                    refusing.clear();
                }
                if refusing.insert(chat) {
                    tracing::info!(
                        chat_id = chat,
                        "Telegram refuses the bot's reactions in this chat ({why}); its turns go on without them"
                    );
                }
                false
            }
            Err(e) => {
                tracing::debug!(chat_id = chat, "a reaction was not set: {e:?}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_reacts_only_with_emoji_bots_may_use() {
        for emoji in [TAKEN, ANSWERED, FAILED] {
            assert!(ALLOWED.contains(&emoji), "{emoji}");
        }
    }
}
