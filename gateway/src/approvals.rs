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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_protocol::Decision;
use rand::Rng;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use teloxide_core::types::{
    CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, MessageId, User,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::jobs::ApprovalAsk;
use crate::replies;
use crate::settings::LiveSettings;
use crate::telegram::format::Piece;
use crate::telegram::sender::Sender;
use crate::telegram::split::{MESSAGE_LIMIT, utf16_len};

/// Prefix of the callback data of the approval buttons: `ap:KEY:y` and `ap:KEY:n`.
const DATA_PREFIX: &str = "ap:";
/// The most questions of one job that wait for an answer at once.
pub const MAX_WAITING: usize = 3;
/// Arguments longer than this (bytes, as the model wrote them) are not even parsed: no
/// message could show them.
const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;

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

    /// Asks `chat` about `ask` and sends the decision back, unless `job_over` comes
    /// first; either way the question ends edited, without buttons.
    pub async fn ask(&self, chat: i64, ask: ApprovalAsk, job_over: CancellationToken) {
        let ApprovalAsk { request, decide } = ask;
        let timeout = Duration::from_millis(request.timeout_ms);
        let question = match question(&request.tool, &request.arguments, timeout) {
            Ok(question) => question,
            Err(why) => return self.refuse(chat, &request.tool, &why, decide).await,
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
            .send_with_buttons(chat, &question, &keyboard(&key))
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
                let shown = replies::approval::allowed(&request.tool, &by);
                (Some(Decision::Allowed { by }), shown)
            }
            Ending::Pressed(Pressed { allow: false, by }) => {
                tracing::info!(chat_id = chat, tool = %request.tool, user_id = %by, "tool call denied");
                let shown = replies::approval::denied(&request.tool, &by);
                (Some(Decision::Denied { by }), shown)
            }
            Ending::TimedOut => {
                tracing::info!(chat_id = chat, tool = %request.tool, "no answer to an approval: denied");
                let shown = replies::approval::timed_out(&request.tool, timeout);
                (Some(Decision::TimedOut), shown)
            }
            Ending::JobOver => (None, replies::approval::not_run(&request.tool)),
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
        chat: i64,
        tool: &str,
        why: &Unaskable,
        decide: oneshot::Sender<Decision>,
    ) {
        tracing::info!(chat_id = chat, tool = %tool, "a tool call is denied without asking: {}", why.for_model());
        let _ = decide.send(Decision::Unavailable {
            reason: why.for_model(),
        });
        let note = replies::approval::refused(tool, &why.for_chat());
        if let Err(e) = self.sender.send_once(chat, &note, true).await {
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
            // Not one of ours (no other buttons exist): stop the client's spinner.
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
                Some(_) if !allowed => Some(replies::approval::NOT_YOURS),
                Some(_) => match open.remove(key) {
                    Some(question) => {
                        let by = name(&query.from);
                        let _ = question.press.send(Pressed { allow, by });
                        if allow {
                            Some(replies::approval::PRESSED_ALLOW)
                        } else {
                            Some(replies::approval::PRESSED_DENY)
                        }
                    }
                    None => Some(replies::approval::EXPIRED),
                },
                None => Some(replies::approval::EXPIRED),
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
        if reply == replies::approval::NOT_YOURS {
            tracing::info!(
                user_id = query.from.id.0,
                "a user not in telegram.allowed_users pressed an approval button"
            );
        }
        self.sender.answer_callback(&query.id, Some(reply)).await;
        if reply == replies::approval::EXPIRED
            && let Some((chat, id)) = message
        {
            // A question of an earlier run, or one already settled: no live buttons stay.
            self.sender.remove_keyboard(chat, id).await;
        }
    }
}

/// Why a tool call is denied without asking the chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unaskable {
    /// The arguments are not one JSON value (the parser's words).
    NotJson(String),
    /// An object in them names a key twice (the parser's words, naming the key).
    RepeatedKey(String),
    /// The question would not fit in one message: `chars` is what it would show.
    TooLong { chars: usize },
    /// The job has [`MAX_WAITING`] questions waiting already.
    TooManyWaiting,
}

impl Unaskable {
    /// What the model reads, inside the worker's "the user could not be asked" result.
    pub fn for_model(&self) -> String {
        replies::approval::unaskable_for_model(self)
    }

    fn for_chat(&self) -> String {
        replies::approval::unaskable_for_chat(self)
    }
}

/// The question for a call of `tool` with `arguments`, showing all of them; or why it
/// cannot be asked.
pub fn question(tool: &str, arguments: &str, timeout: Duration) -> Result<Piece, Unaskable> {
    if arguments.len() > MAX_ARGUMENTS_BYTES {
        return Err(Unaskable::TooLong {
            chars: arguments.chars().count(),
        });
    }
    let shown = shown_arguments(arguments)?;
    let question = replies::approval::question(tool, &shown, timeout);
    // What the user sees is the plain text (the HTML shows the same characters): all of
    // it must fit, or the user would allow what they could not see.
    let chars = utf16_len(&question.plain);
    if chars > MESSAGE_LIMIT {
        return Err(Unaskable::TooLong { chars });
    }
    Ok(question)
}

/// The arguments as the question shows them: the value the worker will parse and pass on,
/// pretty-printed, with what could hide text escaped.
fn shown_arguments(arguments: &str) -> Result<String, Unaskable> {
    let text = arguments.trim();
    // The worker calls a tool with no arguments as with an empty object.
    if text.is_empty() {
        return Ok("{}".into());
    }
    if let Err(e) = serde_json::from_str::<UniqueKeys>(text) {
        return Err(if e.is_data() {
            Unaskable::RepeatedKey(e.to_string())
        } else {
            Unaskable::NotJson(e.to_string())
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Unaskable::NotJson(e.to_string()))?;
    let pretty =
        serde_json::to_string_pretty(&value).map_err(|e| Unaskable::NotJson(e.to_string()))?;
    Ok(reveal(&pretty))
}

/// Walks a JSON text and fails on the first object that names a key twice: `serde_json`
/// silently keeps the last, so a question could show one value and the tool get another.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = HashSet::new();
        // Keys come unescaped, so `"a"` and `"\u0061"` are the same key, as for the parser.
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key {key:?} appears twice"
                )));
            }
            map.next_value::<UniqueKeys>()?;
            seen.insert(key);
        }
        Ok(UniqueKeys)
    }
}

/// `pretty` (JSON from `serde_json`) with every character that shows as nothing, moves
/// text around or passes for a space written as a `\u` escape: the same JSON value, but
/// nothing in a string can hide or reorder what the user reads. Outside strings the text
/// holds only ASCII, so every such character is inside one, where an escape is valid.
fn reveal(pretty: &str) -> String {
    let mut shown = String::with_capacity(pretty.len());
    for c in pretty.chars() {
        if hides_text(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                shown.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Control and format characters, invisible fillers, and whitespace other than the
/// space and the newlines of the layout.
fn hides_text(c: char) -> bool {
    if c == ' ' || c == '\n' {
        return false;
    }
    c.is_control()
        || c.is_whitespace()
        || matches!(
            c as u32,
            0x00AD
                | 0x034F
                | 0x061C
                | 0x115F..=0x1160
                | 0x17B4..=0x17B5
                | 0x180B..=0x180F
                | 0x200B..=0x200F
                | 0x202A..=0x202E
                | 0x2060..=0x206F
                | 0x3164
                | 0xFE00..=0xFE0F
                | 0xFEFF
                | 0xFFA0
                | 0xFFF0..=0xFFFB
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0000..=0xE0FFF
        )
}

/// The two buttons, in one row, short enough for a phone.
fn keyboard(key: &str) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new([[
        InlineKeyboardButton::callback(
            replies::approval::ALLOW_BUTTON,
            format!("{DATA_PREFIX}{key}:y"),
        ),
        InlineKeyboardButton::callback(
            replies::approval::DENY_BUTTON,
            format!("{DATA_PREFIX}{key}:n"),
        ),
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

    #[test]
    fn a_key_named_twice_at_any_depth_is_refused() {
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"x": [{"b": 1}, {"c": {"d": 1, "d": 1}}]}"#,
            r#"{"a": 1, "\u0061": 2}"#,
        ] {
            assert!(
                matches!(shown_arguments(text), Err(Unaskable::RepeatedKey(_))),
                "{text}"
            );
        }
        assert!(shown_arguments(r#"{"a": {"a": 1}, "b": [{"a": 2}]}"#).is_ok());
        assert!(matches!(
            shown_arguments(r#"{"a": "#),
            Err(Unaskable::NotJson(_))
        ));
        assert_eq!(shown_arguments("  ").as_deref(), Ok("{}"));
    }

    #[test]
    fn characters_that_hide_text_are_shown_as_escapes() {
        let shown = shown_arguments("{\"c\": \"rm\u{202e}fr- \u{200b}x\u{a0}y\u{e0041}\"}")
            .unwrap_or_default();
        assert_eq!(
            shown,
            "{\n  \"c\": \"rm\\u202efr- \\u200bx\\u00a0y\\udb40\\udc41\"\n}"
        );
        // The same value as before, so what is shown is what runs.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&shown).ok(),
            serde_json::from_str("{\"c\": \"rm\u{202e}fr- \u{200b}x\u{a0}y\u{e0041}\"}").ok()
        );
    }

    #[test]
    fn the_question_shows_everything_or_is_not_asked() {
        let timeout = Duration::from_secs(30);
        let fits = format!(r#"{{"a": "{}"}}"#, "x".repeat(3500));
        let q = question("t.t", &fits, timeout).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(q.plain.contains(&"x".repeat(3500)));
        assert!(utf16_len(&q.plain) <= MESSAGE_LIMIT);
        let over = format!(r#"{{"a": "{}"}}"#, "x".repeat(4100));
        assert!(matches!(
            question("t.t", &over, timeout),
            Err(Unaskable::TooLong { .. })
        ));
        let huge = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_ARGUMENTS_BYTES));
        assert!(matches!(
            question("t.t", &huge, timeout),
            Err(Unaskable::TooLong { .. })
        ));
    }
}
