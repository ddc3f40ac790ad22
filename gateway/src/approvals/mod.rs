//! Approvals: a tool call its `[[tools.mcp]]` entry says to confirm runs only after a
//! person in the chat pressed **Allow**.
//!
//! The worker asks (over its socket), the gateway asks the chat: a message naming the tool
//! and its whole arguments with two buttons in one row. What is shown is what runs: the
//! arguments pretty-printed from the value the worker will parse, with every character
//! that could hide text written as an escape; arguments that cannot be shown whole in one
//! message, that are not JSON, or that repeat a key (a parser keeps only one of the two,
//! and a reader may look at the other) are refused without asking, the model told why and
//! the chat told briefly. At most [`MAX_WAITING`] questions of one job wait at once; more
//! are denied with the reason told to the model only (a model that fans out into many
//! confirmed calls would bury the chat in buttons nobody can weigh one by one, and a note
//! for each would do the same). Only an allowed
//! user may answer (anyone else pressing gets a callback answer saying so, and the
//! question stays open); no answer within the entry's `confirm_timeout_secs` is a denial.
//! Whatever happens, the question is then edited to say what was decided and by whom, and
//! the buttons go with that edit: when the job ends first (`/stop`, its deadline, the
//! gateway stopping) the question says it was not run.
//!
//! Button presses arrive as `callback_query` updates, which the poller hands straight
//! here ([`Desk::on_callback`]), not through the inbox: a press is about a question that
//! lives only as long as this process and its job. Each question is known by a random key
//! in its buttons' data, so a button of a question that no longer exists (answered, timed
//! out, or asked by a gateway that has since restarted) is answered "expired" and its
//! buttons are removed. A key counts only from the message it was sent with: a client can
//! send any data with a press on any message it sees, so a press whose chat or message is
//! not the question's does nothing (in a group, a member could otherwise answer a question
//! from under another message, where nobody reads what it allows).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_protocol::Decision;
use rand::Rng;
use teloxide_core::types::{
    CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, MessageId, User,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::jobs::ApprovalAsk;
use crate::settings::LiveSettings;
use crate::telegram::format::Piece;
use crate::telegram::sender::Sender;
use crate::topics::Place;

mod arguments;
mod texts;

pub use arguments::{Unaskable, question};

/// Prefix of the callback data of the approval buttons: `ap:KEY:y` and `ap:KEY:n`.
const DATA_PREFIX: &str = "ap:";
/// The most questions of one job that wait for an answer at once.
pub const MAX_WAITING: usize = 3;
/// Arguments longer than this (bytes, as the model wrote them) are not even parsed: no
/// message could show them.
pub(crate) const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;

/// Where approvals are asked and answered: the questions open now, and what it takes to
/// ask and to check who answers.
#[derive(Clone)]
pub struct Desk {
    open: Arc<Mutex<HashMap<String, Open>>>,
    sender: Sender,
    settings: LiveSettings,
}

/// A question waiting for a press.
struct Open {
    chat: i64,
    /// The message that carries its buttons; None until Telegram said which it is.
    message: Option<MessageId>,
    press: oneshot::Sender<Pressed>,
}

/// An allowed user's answer.
#[derive(Debug)]
struct Pressed {
    allow: bool,
    by: String,
}

/// How a question ended.
enum Ending {
    Pressed(Pressed),
    TimedOut,
    JobOver,
}

impl Desk {
    pub fn new(sender: Sender, settings: LiveSettings) -> Self {
        Desk {
            open: Arc::new(Mutex::new(HashMap::new())),
            sender,
            settings,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks `place` (the chat, in the topic the job answers) about `ask` and sends the
    /// decision back, unless `job_over` comes first; either way the question ends edited,
    /// without buttons.
    pub async fn ask(&self, place: Place, ask: ApprovalAsk, job_over: CancellationToken) {
        let chat = place.chat;
        let ApprovalAsk { request, decide } = ask;
        let timeout = Duration::from_millis(request.timeout_ms);
        let question = match question(&request.tool, &request.arguments, timeout) {
            Ok(question) => question,
            Err(why) => return self.refuse(place, &request.tool, &why, decide).await,
        };
        let key = new_key();
        let (press, pressed) = oneshot::channel();
        self.lock().insert(
            key.clone(),
            Open {
                chat,
                message: None,
                press,
            },
        );
        let message = match self
            .sender
            .send_with_buttons(place, &question, &keyboard(&key))
            .await
        {
            Ok(message) => message,
            Err(e) => {
                self.lock().remove(&key);
                tracing::warn!(
                    chat_id = chat,
                    tool = %request.tool,
                    "cannot ask the chat to approve a tool call ({e:?}); it is denied"
                );
                let _ = decide.send(Decision::Unavailable {
                    reason: "the question could not be sent to the chat".into(),
                });
                return;
            }
        };
        if let Some(open) = self.lock().get_mut(&key) {
            open.message = Some(message);
        }
        tokio::pin!(pressed);
        let ending = tokio::select! {
            answer = &mut pressed => match answer {
                Ok(pressed) => Ending::Pressed(pressed),
                // The entry was dropped without an answer: nothing does that.
                Err(_) => Ending::JobOver,
            },
            _ = tokio::time::sleep(timeout) => Ending::TimedOut,
            _ = job_over.cancelled() => Ending::JobOver,
        };
        // A press that came in as the wait ended wins: whoever pressed saw it accepted.
        let ending = match (self.lock().remove(&key), ending) {
            (None, Ending::TimedOut | Ending::JobOver) => match pressed.try_recv() {
                Ok(pressed) => Ending::Pressed(pressed),
                Err(_) => Ending::JobOver,
            },
            (_, ending) => ending,
        };
        let (decision, shown) = match ending {
            Ending::Pressed(Pressed { allow: true, by }) => {
                tracing::info!(chat_id = chat, tool = %request.tool, user_id = %by, "tool call allowed");
                let shown = texts::allowed(&request.tool, &by);
                (Some(Decision::Allowed { by }), shown)
            }
            Ending::Pressed(Pressed { allow: false, by }) => {
                tracing::info!(chat_id = chat, tool = %request.tool, user_id = %by, "tool call denied");
                let shown = texts::denied(&request.tool, &by);
                (Some(Decision::Denied { by }), shown)
            }
            Ending::TimedOut => {
                tracing::info!(chat_id = chat, tool = %request.tool, "no answer to an approval: denied");
                let shown = texts::timed_out(&request.tool, timeout);
                (Some(Decision::TimedOut), shown)
            }
            Ending::JobOver => (None, texts::not_run(&request.tool)),
        };
        if let Some(decision) = decision {
            let _ = decide.send(decision);
        }
        self.settle(chat, message, &shown).await;
    }

    /// Denies a call the chat is not asked about, telling the model why and the chat
    /// briefly (best effort: the denial does not wait on it).
    async fn refuse(
        &self,
        place: Place,
        tool: &str,
        why: &Unaskable,
        decide: oneshot::Sender<Decision>,
    ) {
        let chat = place.chat;
        tracing::info!(chat_id = chat, tool = %tool, "a tool call is denied without asking: {}", why.for_model());
        let _ = decide.send(Decision::Unavailable {
            reason: why.for_model(),
        });
        let note = texts::refused(tool, &why.for_chat());
        if let Err(e) = self.sender.send_once(place, &note, true).await {
            tracing::info!(
                chat_id = chat,
                "cannot tell the chat a tool call was refused: {e:?}"
            );
        }
    }

    /// Shows how a question ended in its place, without its buttons (an edit of the text
    /// drops them); when the text cannot be edited, the buttons are removed at least.
    async fn settle(&self, chat: i64, message: MessageId, shown: &Piece) {
        if self
            .sender
            .replace_once(chat, message, shown)
            .await
            .is_err()
        {
            self.sender.remove_keyboard(chat, message).await;
        }
    }

    /// A button was pressed. Never blocks the poller: the answer goes out on its own task.
    pub fn on_callback(&self, query: CallbackQuery) {
        let desk = self.clone();
        tokio::spawn(async move { desk.answer(query).await });
    }

    async fn answer(&self, query: CallbackQuery) {
        let Some((key, allow)) = query.data.as_deref().and_then(parse_data) else {
            // Not one of ours (the ⏹ buttons go to the chats): stop the client's spinner.
            self.sender.answer_callback(&query.id, None).await;
            return;
        };
        let message = query.message.as_ref().map(|m| (m.chat().id.0, m.id()));
        let allowed = self.settings.get().allowed.contains(&query.from.id.0);
        let reply = {
            let mut open = self.lock();
            match open.get(key) {
                // Not this question's message: nothing happens, not even "expired", and
                // no buttons are touched (they may be another live question's).
                Some(question)
                    if question.message.is_none()
                        || message != question.message.map(|id| (question.chat, id)) =>
                {
                    None
                }
                Some(_) if !allowed => Some(texts::NOT_YOURS),
                Some(_) => match open.remove(key) {
                    Some(question) => {
                        let by = name(&query.from);
                        let _ = question.press.send(Pressed { allow, by });
                        if allow {
                            Some(texts::PRESSED_ALLOW)
                        } else {
                            Some(texts::PRESSED_DENY)
                        }
                    }
                    None => Some(texts::EXPIRED),
                },
                None => Some(texts::EXPIRED),
            }
        };
        let Some(reply) = reply else {
            tracing::info!(
                user_id = query.from.id.0,
                "an approval button's data came with another message than its question's: ignored"
            );
            self.sender.answer_callback(&query.id, None).await;
            return;
        };
        if reply == texts::NOT_YOURS {
            tracing::info!(
                user_id = query.from.id.0,
                "a user not in telegram.allowed_users pressed an approval button"
            );
        }
        self.sender.answer_callback(&query.id, Some(reply)).await;
        if reply == texts::EXPIRED
            && let Some((chat, id)) = message
        {
            // A question of an earlier run, or one already settled: no live buttons stay.
            self.sender.remove_keyboard(chat, id).await;
        }
    }
}

/// The two buttons, in one row, short enough for a phone.
fn keyboard(key: &str) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new([[
        InlineKeyboardButton::callback(texts::ALLOW_BUTTON, format!("{DATA_PREFIX}{key}:y")),
        InlineKeyboardButton::callback(texts::DENY_BUTTON, format!("{DATA_PREFIX}{key}:n")),
    ]])
}

/// The question's key and whether the button allows, from a button's data.
fn parse_data(data: &str) -> Option<(&str, bool)> {
    let rest = data.strip_prefix(DATA_PREFIX)?;
    let (key, verdict) = rest.rsplit_once(':')?;
    match verdict {
        "y" => Some((key, true)),
        "n" => Some((key, false)),
        _ => None,
    }
}

fn new_key() -> String {
    let bytes: [u8; 12] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who pressed, as the question and the model are told: the first name, and the username
/// when there is one.
fn name(user: &User) -> String {
    match &user.username {
        Some(username) => format!("{} (@{username})", user.first_name),
        None => user.first_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn button_data_fits_telegrams_64_bytes_and_reads_back() {
        let key = new_key();
        let markup = keyboard(&key);
        assert_eq!(markup.inline_keyboard.len(), 1, "one row");
        assert_eq!(markup.inline_keyboard[0].len(), 2);
        for (button, allow) in markup.inline_keyboard[0].iter().zip([true, false]) {
            let teloxide_core::types::InlineKeyboardButtonKind::CallbackData(data) = &button.kind
            else {
                panic!("{button:?}");
            };
            assert!(data.len() <= 64, "{data}");
            assert_eq!(parse_data(data), Some((key.as_str(), allow)));
            assert!(button.text.chars().count() <= 10, "{}", button.text);
        }
        assert_eq!(parse_data("ap:k:maybe"), None);
        assert_eq!(parse_data("other"), None);
    }
}
