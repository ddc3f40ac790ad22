//! What an update says: the message in it (text, a voice note, a photo, a file, or
//! something the bot cannot use), and whether it is for the bot.
//!
//! In groups (`telegram.group_mode = "mention"`) only messages addressed to the bot are
//! taken: a mention of it, a reply to one of its messages, or a command; a command for
//! another bot (`/new@other_bot`) never is. A file without text of its own is taken when
//! it replies to the bot or its caption mentions it (a caption is never a command).
//!
//! A message keeps the album it belongs to (`media_group_id`) and what it replies to
//! ([`crate::replied`]), for its turn. In a group, an album whose caption is addressed to
//! the bot is for it whole: its other members carry no caption, so no mention, and are
//! taken because their album was ([`AddressedAlbums`]).
//!
//! An update the Bot API client cannot parse (a field changed after a Bot API release) is
//! read from its raw JSON: answered like any message when it still holds a chat, a sender
//! and text, judged as addressed from what the raw form shows.

use std::collections::VecDeque;

use hermes_config::GroupMode;
use serde_json::Value;
use teloxide_core::types::{Message, MessageEntityKind, Update, UpdateKind};

use crate::media::{self, MediaRef};
use crate::replied::Replied;
use crate::store::{Kind, Pending};

/// Who the bot is, for telling which group messages are addressed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: u64,
    /// Without the `@`.
    pub username: String,
}

/// Albums of groups that a member addressed to the bot began, the latest
/// [`ADDRESSED_ALBUMS`]: their later members are for the bot too.
#[derive(Debug, Default)]
pub struct AddressedAlbums(VecDeque<String>);

/// Albums remembered as addressed: an album's members arrive within a second or so, so a
/// few recent ones are all that can still be coming.
const ADDRESSED_ALBUMS: usize = 32;

impl AddressedAlbums {
    fn contains(&self, group: &str) -> bool {
        self.0.iter().any(|g| g == group)
    }

    fn note(&mut self, group: &str) {
        if self.contains(group) {
            return;
        }
        if self.0.len() >= ADDRESSED_ALBUMS {
            self.0.pop_front();
        }
        self.0.push_back(group.to_string());
    }
}

/// The message in `update`, if it is one for the bot: text, a voice note, photo or file
/// (with its caption), or something the bot cannot use (a sticker, a location: kept as
/// [`Kind::Unsupported`], to be answered with what it understands). Anything else (an
/// update of another kind, a service message) is skipped with a log line.
pub fn user_message(
    update: Update,
    me: &Identity,
    group_mode: GroupMode,
    max_file_bytes: u64,
    albums: &mut AddressedAlbums,
) -> Option<Pending> {
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
    let media = MediaRef::of(&message, max_file_bytes);
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
    let group = message.media_group_id().map(|g| g.0.as_str());
    let addressed_text = if media.is_some() || kind == Kind::Unsupported {
        let addressed =
            media_addressed(&message, me, group_mode) || group.is_some_and(|g| albums.contains(g));
        if let Some(group) = group.filter(|_| addressed && !message.chat.is_private()) {
            albums.note(group);
        }
        addressed.then(|| {
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
        addressed(&message, text, me, group_mode)
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
        id: 0,
        message_id: i64::from(message.id.0),
        chat_id: message.chat.id.0,
        user_id: user.id.0,
        text,
        kind,
        media,
        counted: false,
        media_group: group.map(str::to_string),
        replied: Replied::of(&message, me.id, max_file_bytes),
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
pub fn raw_text_message(raw: &Value, me: &Identity, group_mode: GroupMode) -> Option<Pending> {
    let message = raw.get("message")?;
    let message_id = message.get("message_id")?.as_i64()?;
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
        id: 0,
        message_id,
        chat_id,
        user_id,
        text,
        kind: Kind::Message,
        counted: false,
        media: None,
        media_group: None,
        replied: None,
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

/// Who sent an update the client could not parse, as its raw form shows: the `from` of
/// the object it carries (a message, an edit, a press, …).
pub fn raw_sender(raw: &Value) -> Option<u64> {
    raw.as_object()?
        .values()
        .find_map(|v| v.get("from")?.get("id")?.as_u64())
}

/// What is kept of an update that could not be parsed and is not known to come from an
/// allowed user: that it came, and of what kind, never what it said (a stranger's text is
/// not kept anywhere).
pub fn withheld(raw: &Value) -> String {
    let kinds: Vec<&str> = raw
        .as_object()
        .map(|o| {
            o.keys()
                .map(String::as_str)
                .filter(|k| *k != "update_id")
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "update_id": raw.get("update_id"),
        "kinds": kinds,
        "withheld": "not from an allowed user",
    })
    .to_string()
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
