//! Rich messages (Bot API 10.1): `sendRichMessage`, one message of up to 32,768
//! characters that Telegram's clients render with tables, headings and lists. The gateway
//! sends the model's Markdown as it is (`rich_message.markdown`): Telegram's rich Markdown
//! is CommonMark with tables, so nothing is converted and nothing has to be cut.

use serde::Serialize;
use serde::de::IgnoredAny;

use super::Method;
use crate::topics::Place;

/// The most characters (Unicode scalar values) a rich message may hold.
pub const RICH_LIMIT: usize = 32_768;

/// `sendRichMessage`, with the parameters the gateway uses.
#[derive(Debug, Clone, Serialize)]
pub struct SendRichMessage {
    pub chat_id: i64,
    /// The topic it answers in (never a forum's General: see `topics::Place`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<i32>,
    pub rich_message: InputRichMessage,
}

/// `InputRichMessage`: exactly one of `html`, `markdown` or `blocks`; the gateway sends
/// Markdown.
#[derive(Debug, Clone, Serialize)]
pub struct InputRichMessage {
    pub markdown: String,
}

impl Method for SendRichMessage {
    const NAME: &'static str = "sendRichMessage";
    /// The sent message; nothing of it is read (the outbox needs only to know it went).
    type Output = IgnoredAny;
}

impl SendRichMessage {
    pub fn markdown(place: Place, markdown: &str) -> Self {
        SendRichMessage {
            chat_id: place.chat,
            message_thread_id: place.thread,
            rich_message: InputRichMessage {
                markdown: markdown.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_what_the_bot_api_documents() {
        let json = serde_json::to_value(SendRichMessage::markdown(
            Place::new(5, None),
            "| a |\n|---|\n| 1 |",
        ))
        .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"chat_id": 5, "rich_message": {"markdown": "| a |\n|---|\n| 1 |"}})
        );
    }
}
