//! What a reply brings along. A user who answers a message (their own, another member's,
//! the bot's) means something by it: "translate this", "and this one?". The model sees
//! only the words it is sent, so the part they quoted (Telegram's `quote.text`, when they
//! selected one) or else the replied-to message's text or caption goes into the turn as
//! context, bounded and marked as quoted, with the replied-to photo or document when
//! Telegram still holds it (its `file_id`; fetched within the usual file bounds like any
//! file of the turn).
//!
//! It is read from the update when the message arrives and kept with it in the inbox, so a
//! message answered after a restart carries it too; the question it becomes, context
//! included, is what the conversation keeps as the user's turn.

use hermes_protocol::MediaKind;
use serde::{Deserialize, Serialize};
use teloxide_core::types::Message;

use crate::media::MediaRef;
use crate::text::cut_at_char;

/// The most of the replied-to text the model is given, in characters: enough for the
/// passage a reply is about, never a whole earlier answer's worth of tokens again.
pub const MAX_QUOTED_CHARS: usize = 2000;
/// A member's name as the context names them, in characters.
const MAX_NAME_CHARS: usize = 64;

/// The message a reply answers, as much of it as the turn takes along.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Replied {
    pub author: Author,
    /// The part the user selected, or the whole text or caption, at most
    /// [`MAX_QUOTED_CHARS`].
    pub text: String,
    /// `text` is a part the user selected (`quote`), not the whole message.
    #[serde(default)]
    pub selected: bool,
    /// `text` was cut at [`MAX_QUOTED_CHARS`].
    #[serde(default)]
    pub cut: bool,
    /// The replied-to message's photo or document.
    #[serde(default)]
    pub media: Option<MediaRef>,
}

/// Who wrote the replied-to message, as the model is told.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "who")]
pub enum Author {
    /// The bot: the model's own earlier answer.
    Bot,
    /// The user who replies.
    Sender,
    /// Another member of the chat.
    Other { name: String },
}

impl Replied {
    /// What `message` replies to, if it replies to a message with text, a caption, a photo
    /// or a document. `bot` is the bot's user id. Of a photo's sizes the largest within
    /// `max_file_bytes` is taken, as for a photo sent.
    pub fn of(message: &Message, bot: u64, max_file_bytes: u64) -> Option<Replied> {
        let original = message.reply_to_message()?;
        let sender = message.from.as_ref().map(|u| u.id.0);
        let quote = message
            .quote()
            .map(|q| q.text.as_str())
            .filter(|t| !t.trim().is_empty());
        let (whole, selected) = match quote {
            Some(quote) => (quote, true),
            None => (
                original.text().or(original.caption()).unwrap_or_default(),
                false,
            ),
        };
        // A voice note or a sticker is not brought along: only what the model can look at.
        let media = MediaRef::of(original, max_file_bytes)
            .filter(|m| matches!(m.media_kind(), MediaKind::Image | MediaKind::Document));
        // A forum topic's messages reply to its creation, a service message: nothing to take.
        if whole.trim().is_empty() && media.is_none() {
            return None;
        }
        let (text, cut) = bounded(whole, MAX_QUOTED_CHARS);
        let author = match original.from.as_ref() {
            Some(user) if user.id.0 == bot => Author::Bot,
            Some(user) if Some(user.id.0) == sender => Author::Sender,
            Some(user) => Author::Other {
                name: bounded(&user.full_name(), MAX_NAME_CHARS).0,
            },
            None => Author::Other {
                name: original
                    .sender_chat
                    .as_ref()
                    .and_then(|c| c.title())
                    .map_or_else(|| "someone".to_string(), |t| bounded(t, MAX_NAME_CHARS).0),
            },
        };
        Some(Replied {
            author,
            text,
            selected,
            cut,
            media,
        })
    }

    /// The context as the model reads it, before the user's own words: a line saying
    /// whose message is quoted, the file's placeholder (`placeholder`: it is part of the
    /// turn; `None` with `self.media` set: it could not be included), then every quoted line
    /// behind "> ".
    pub fn context(&self, placeholder: Option<&str>) -> String {
        let whose = match &self.author {
            Author::Bot => "your message".to_string(),
            Author::Sender => "my earlier message".to_string(),
            Author::Other { name } => format!("a message from {name}"),
        };
        let part = if self.selected { "part of " } else { "" };
        let file = match (&self.media, placeholder) {
            (Some(m), None) => format!(" (its {} could not be included)", m.name()),
            _ => String::new(),
        };
        let mut out = format!("[quoting {part}{whose}{file}]");
        if let Some(placeholder) = placeholder {
            out.push('\n');
            out.push_str(placeholder);
        }
        for line in self.text.lines() {
            out.push_str("\n> ");
            out.push_str(line);
        }
        if self.cut {
            out.push_str(" …");
        }
        out.push_str("\n[end of quote]");
        out
    }
}

/// `text` within `max` characters, cut where a character ends; and whether it was cut.
fn bounded(text: &str, max: usize) -> (String, bool) {
    match text.char_indices().nth(max) {
        Some((end, _)) => (cut_at_char(text, end).to_string(), true),
        None => (text.to_string(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(json: serde_json::Value) -> Message {
        serde_json::from_value(json).unwrap()
    }

    fn reply(original: serde_json::Value, quote: Option<&str>) -> Message {
        let mut m = serde_json::json!({
            "message_id": 9, "date": 0,
            "chat": {"id": 5, "type": "private", "first_name": "T"},
            "from": {"id": 5, "is_bot": false, "first_name": "T"},
            "text": "what does this mean?",
            "reply_to_message": original,
        });
        if let Some(q) = quote {
            m["quote"] = serde_json::json!({"text": q, "position": 0, "is_manual": true});
        }
        message(m)
    }

    fn original(from: u64, text: &str) -> serde_json::Value {
        serde_json::json!({
            "message_id": 3, "date": 0,
            "chat": {"id": 5, "type": "private", "first_name": "T"},
            "from": {"id": from, "is_bot": from == 1, "first_name": "Ann", "last_name": "Lee"},
            "text": text,
        })
    }

    #[test]
    fn the_selected_part_is_taken_else_the_whole_text() {
        let r = Replied::of(&reply(original(1, "one two three"), Some("two")), 1, 100).unwrap();
        assert_eq!(
            (r.author.clone(), r.text.as_str(), r.selected),
            (Author::Bot, "two", true)
        );
        assert_eq!(
            r.context(None),
            "[quoting part of your message]\n> two\n[end of quote]"
        );
        let r = Replied::of(&reply(original(7, "a\nb"), None), 1, 100).unwrap();
        assert_eq!(
            r.author,
            Author::Other {
                name: "Ann Lee".into()
            }
        );
        assert_eq!(
            r.context(None),
            "[quoting a message from Ann Lee]\n> a\n> b\n[end of quote]"
        );
        let r = Replied::of(&reply(original(5, "mine"), None), 1, 100).unwrap();
        assert_eq!(r.author, Author::Sender);
    }

    #[test]
    fn a_long_text_is_cut_at_the_bound_on_a_character() {
        let long = "é".repeat(MAX_QUOTED_CHARS + 10);
        let r = Replied::of(&reply(original(1, &long), None), 1, 100).unwrap();
        assert!(r.cut);
        assert_eq!(r.text.chars().count(), MAX_QUOTED_CHARS);
        assert!(r.context(None).ends_with("é …\n[end of quote]"));
    }

    #[test]
    fn a_service_message_or_no_reply_brings_nothing() {
        let plain = message(serde_json::json!({
            "message_id": 9, "date": 0,
            "chat": {"id": 5, "type": "private", "first_name": "T"},
            "from": {"id": 5, "is_bot": false, "first_name": "T"},
            "text": "hi",
        }));
        assert!(Replied::of(&plain, 1, 100).is_none());
        let mut empty = original(1, "");
        empty.as_object_mut().unwrap().remove("text");
        assert!(Replied::of(&reply(empty, None), 1, 100).is_none());
    }

    #[test]
    fn a_replied_to_photo_comes_along_with_its_caption() {
        let mut photo = original(5, "");
        let o = photo.as_object_mut().unwrap();
        o.remove("text");
        o.insert("caption".into(), "my cat".into());
        o.insert(
            "photo".into(),
            serde_json::json!([
                {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90, "file_size": 10},
                {"file_id": "big", "file_unique_id": "b", "width": 900, "height": 900, "file_size": 1000},
            ]),
        );
        let r = Replied::of(&reply(photo.clone(), None), 1, 100).unwrap();
        let media = r.media.clone().unwrap();
        assert_eq!(media.file_id, "small", "the largest within the bound");
        assert_eq!(
            r.context(Some("[photo]")),
            "[quoting my earlier message]\n[photo]\n> my cat\n[end of quote]"
        );
        assert_eq!(
            r.context(None),
            "[quoting my earlier message (its photo.jpg could not be included)]\n> my cat\n[end of quote]"
        );
    }
}
