//! Inline keyboards and button presses, as the Bot API has them: a message may carry an
//! `inline_keyboard` of rows of buttons (each with a text and 1-64 bytes of
//! `callback_data`); pressing one sends the bot a `callback_query` update, which the bot
//! answers once with `answerCallbackQuery` (a second answer, or an id never issued, is
//! refused as Telegram refuses it); `editMessageReplyMarkup` replaces or removes a
//! message's buttons, and so does an `editMessageText` (without `reply_markup`, the
//! message has none afterwards).

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    FakeTelegram, Response, SendFault, State, api_error, bot_user, ok, sending::NOT_MODIFIED,
    unix_now,
};

/// One `answerCallbackQuery` the bot made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackAnswer {
    pub query_id: String,
    /// What the client shows briefly; None when the bot only stopped the spinner.
    pub text: Option<String>,
}

/// The `reply_markup` of a send or edit, if it is an inline keyboard Telegram accepts; a
/// malformed one is refused as Telegram refuses it. Other markups (reply keyboards) are
/// not used by the gateway and not emulated.
pub(super) fn inline_keyboard(params: &Value) -> Result<Option<Value>, SendFault> {
    let markup = match params.get("reply_markup") {
        None | Some(Value::Null) => return Ok(None),
        // Forms carry it as JSON text.
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .map_err(|_| bad("Bad Request: can't parse reply keyboard markup JSON object"))?,
        Some(markup) => markup.clone(),
    };
    let Some(rows) = markup.get("inline_keyboard").and_then(Value::as_array) else {
        return Err(bad("Bad Request: unsupported reply_markup"));
    };
    for row in rows {
        let Some(buttons) = row.as_array() else {
            return Err(bad(
                "Bad Request: field \"inline_keyboard\" must be an Array of Arrays",
            ));
        };
        for button in buttons {
            let text = button.get("text").and_then(Value::as_str).unwrap_or("");
            if text.trim().is_empty() {
                return Err(bad(
                    "Bad Request: text buttons are unallowed in the inline keyboard",
                ));
            }
            let data = button
                .get("callback_data")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !(1..=64).contains(&data.len()) {
                return Err(bad("Bad Request: BUTTON_DATA_INVALID"));
            }
        }
    }
    Ok(Some(markup))
}

fn bad(description: &str) -> SendFault {
    SendFault::Status {
        status: 400,
        description: description.into(),
    }
}

impl State {
    /// `editMessageReplyMarkup`: new buttons, or none without `reply_markup`.
    pub(super) fn edit_markup(&self, params: &Value) -> Response {
        let chat_id = params.get("chat_id").and_then(super::as_i64);
        let message_id = params.get("message_id").and_then(super::as_i64);
        let (Some(chat_id), Some(message_id)) = (chat_id, message_id) else {
            return api_error(400, "Bad Request: message to edit not found", None);
        };
        let keyboard = match inline_keyboard(params) {
            Ok(keyboard) => keyboard,
            Err(SendFault::Status { description, .. }) => {
                return api_error(400, &description, None);
            }
            Err(_) => return api_error(400, "Bad Request", None),
        };
        let mut g = self.lock();
        let Some((_, shown)) = g.texts.get(&(chat_id, message_id)).cloned() else {
            return api_error(400, "Bad Request: message to edit not found", None);
        };
        if g.keyboards.get(&(chat_id, message_id)) == keyboard.as_ref() {
            return api_error(400, NOT_MODIFIED, None);
        }
        match &keyboard {
            Some(markup) => g.keyboards.insert((chat_id, message_id), markup.clone()),
            None => g.keyboards.remove(&(chat_id, message_id)),
        };
        let chat = g.chat(chat_id);
        drop(g);
        self.bump();
        let mut message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "edit_date": unix_now(),
            "chat": chat,
            "from": bot_user(),
            "text": shown,
        });
        if let Some(markup) = keyboard {
            message["reply_markup"] = markup;
        }
        ok(message)
    }

    /// `answerCallbackQuery`: once per press.
    pub(super) fn answer_callback(&self, params: &Value) -> Response {
        let id = match params.get("callback_query_id") {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => {
                return api_error(
                    400,
                    "Bad Request: parameter \"callback_query_id\" is required",
                    None,
                );
            }
        };
        let text = params
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string);
        if text.as_ref().is_some_and(|t| t.chars().count() > 200) {
            return api_error(400, "Bad Request: MESSAGE_TOO_LONG", None);
        }
        let mut g = self.lock();
        match g.presses.get_mut(&id) {
            Some(answered @ false) => *answered = true,
            _ => {
                return api_error(
                    400,
                    "Bad Request: query is too old and response timeout expired or query ID is invalid",
                    None,
                );
            }
        }
        g.answers.push(CallbackAnswer { query_id: id, text });
        drop(g);
        self.bump();
        ok(json!(true))
    }
}

impl FakeTelegram {
    /// The buttons message `message_id` of `chat_id` shows now.
    pub fn keyboard(&self, chat_id: i64, message_id: i64) -> Option<Value> {
        self.state
            .lock()
            .keyboards
            .get(&(chat_id, message_id))
            .cloned()
    }

    /// `user_id` presses the button labelled `label` under message `message_id`: a
    /// `callback_query` update for the bot, whose id is returned. None when the message
    /// shows no such button (it was removed), as a user cannot press what is not there.
    pub fn press(
        &self,
        chat_id: i64,
        message_id: i64,
        user_id: i64,
        label: &str,
    ) -> Option<String> {
        let mut g = self.state.lock();
        let keyboard = g.keyboards.get(&(chat_id, message_id))?.clone();
        let data = keyboard["inline_keyboard"]
            .as_array()?
            .iter()
            .filter_map(Value::as_array)
            .flatten()
            .find(|button| button["text"].as_str() == Some(label))?["callback_data"]
            .as_str()?
            .to_string();
        let shown = g
            .texts
            .get(&(chat_id, message_id))
            .map(|(_, shown)| shown.clone())
            .unwrap_or_default();
        g.last_query_id += 1;
        let id = format!("{}", 9_000_000 + g.last_query_id);
        g.presses.insert(id.clone(), false);
        let chat = g.chat(chat_id);
        let markup = keyboard;
        drop(g);
        self.push_update(json!({
            "callback_query": {
                "id": id,
                "from": {"id": user_id, "is_bot": false, "first_name": format!("User{user_id}")},
                "message": {
                    "message_id": message_id,
                    "date": unix_now(),
                    "chat": chat,
                    "from": bot_user(),
                    "text": shown,
                    "reply_markup": markup,
                },
                "chat_instance": format!("instance-{chat_id}"),
                "data": data,
            }
        }));
        Some(id)
    }

    /// A client sends `data` with a press on message `message_id`, whatever its buttons
    /// carry (the Bot API does not check that a press's data is a button's: a client may
    /// send any): a forged press. Returns the query's id.
    pub fn press_with_data(
        &self,
        chat_id: i64,
        message_id: i64,
        user_id: i64,
        data: &str,
    ) -> String {
        let mut g = self.state.lock();
        let shown = g
            .texts
            .get(&(chat_id, message_id))
            .map(|(_, shown)| shown.clone())
            .unwrap_or_default();
        g.last_query_id += 1;
        let id = format!("{}", 9_000_000 + g.last_query_id);
        g.presses.insert(id.clone(), false);
        let chat = g.chat(chat_id);
        drop(g);
        self.push_update(json!({
            "callback_query": {
                "id": id,
                "from": {"id": user_id, "is_bot": false, "first_name": format!("User{user_id}")},
                "message": {
                    "message_id": message_id,
                    "date": unix_now(),
                    "chat": chat,
                    "from": bot_user(),
                    "text": shown,
                },
                "chat_instance": format!("instance-{chat_id}"),
                "data": data,
            }
        }));
        id
    }

    /// Every `answerCallbackQuery` accepted, in order.
    pub fn callback_answers(&self) -> Vec<CallbackAnswer> {
        self.state.lock().answers.clone()
    }

    /// The answer to press `query_id`, once it arrives (within `timeout`).
    pub async fn wait_for_callback_answer(
        &self,
        query_id: &str,
        timeout: Duration,
    ) -> Option<CallbackAnswer> {
        self.state
            .wait_until(timeout, |g| {
                g.answers.iter().find(|a| a.query_id == query_id).cloned()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::bot;
    use super::super::*;
    use teloxide_core::{
        payloads::SendMessageSetters,
        prelude::Requester,
        types::{ChatId, UpdateKind, UserId},
    };

    /// Buttons as the gateway uses them: sent with a message, pressed by a user (an update
    /// teloxide parses), answered once, and gone after an edit of the text.
    #[tokio::test]
    async fn buttons_are_pressed_answered_once_and_removed_by_edits() {
        use teloxide_core::payloads::{AnswerCallbackQuerySetters, EditMessageReplyMarkupSetters};
        use teloxide_core::types::{InlineKeyboardButton, InlineKeyboardMarkup};
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let markup = InlineKeyboardMarkup::new([[
            InlineKeyboardButton::callback("Yes", "k:y"),
            InlineKeyboardButton::callback("No", "k:n"),
        ]]);
        let sent = bot
            .send_message(ChatId(42), "sure?")
            .reply_markup(markup.clone())
            .await
            .expect("sendMessage with buttons parses");
        let id = i64::from(sent.id.0);
        assert!(fake.keyboard(42, id).is_some());
        assert!(fake.sent()[0].keyboard.is_some());
        let press = fake.press(42, id, 7, "No").expect("the button is there");
        let updates = bot.get_updates().await.expect("a callback query parses");
        let UpdateKind::CallbackQuery(query) = &updates[0].kind else {
            panic!("not a callback query: {:?}", updates[0].kind);
        };
        assert_eq!(query.data.as_deref(), Some("k:n"));
        assert_eq!(query.from.id, UserId(7));
        assert_eq!(query.id.0, press);
        bot.answer_callback_query(query.id.clone())
            .text("Denied.")
            .await
            .expect("answerCallbackQuery");
        assert!(
            bot.answer_callback_query(query.id.clone()).await.is_err(),
            "a press is answered once"
        );
        assert_eq!(
            fake.wait_for_callback_answer(&press, Duration::from_secs(1))
                .await
                .and_then(|a| a.text),
            Some("Denied.".into())
        );
        assert!(fake.press(42, id, 7, "Maybe").is_none());
        bot.edit_message_text(ChatId(42), sent.id, "denied")
            .await
            .expect("an edit");
        assert_eq!(
            fake.keyboard(42, id),
            None,
            "an edit without markup drops the buttons"
        );
        assert!(
            fake.press(42, id, 7, "Yes").is_none(),
            "nothing left to press"
        );
        bot.edit_message_reply_markup(ChatId(42), sent.id)
            .reply_markup(markup)
            .await
            .expect("buttons back");
        assert!(fake.keyboard(42, id).is_some());
        bot.edit_message_reply_markup(ChatId(42), sent.id)
            .await
            .expect("buttons removed");
        assert_eq!(fake.keyboard(42, id), None);
        assert!(
            bot.edit_message_reply_markup(ChatId(42), sent.id)
                .await
                .is_err(),
            "removing nothing is 'not modified'"
        );
        let bad =
            InlineKeyboardMarkup::new([[InlineKeyboardButton::callback("x", "d".repeat(65))]]);
        assert!(
            bot.send_message(ChatId(42), "long data")
                .reply_markup(bad)
                .await
                .is_err(),
            "callback data over 64 bytes is refused"
        );
    }
}
