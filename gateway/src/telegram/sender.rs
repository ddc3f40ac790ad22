//! Outgoing messages, one Bot API call at a time, each failure named for what the caller
//! should do next. Persistence is not here: the outbox ([`crate::outbox`]) retries a piece
//! until Telegram accepts it or refuses it for good, and the streamed preview
//! ([`super::live`]) gives up on an edit it cannot make.
//!
//! Everything goes out as [`Piece`]s: Telegram HTML plus the same text without markup,
//! so a piece whose HTML Telegram cannot parse can go again as plain text and bad
//! formatting never costs the user the answer.
//!
//! Sends and edits use a client of their own with a short timeout: a `sendMessage` that
//! hangs must not hold a chat for the long poll's timeout.

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize, Serializer};
use teloxide_core::payloads::{
    AnswerCallbackQuerySetters, EditMessageText, EditMessageTextSetters, SendMessage,
    SendMessageSetters,
};
use teloxide_core::prelude::*;
use teloxide_core::requests::{JsonRequest, Payload};
use teloxide_core::types::{
    CallbackQueryId, ChatAction, ChatId, InlineKeyboardMarkup, InputFile, MessageId, ParseMode,
};
use teloxide_core::{ApiError, RequestError};

use super::format::{self, Piece};
use super::split::{MESSAGE_LIMIT, split_message};

/// How long one `sendMessage` or `editMessageText` may take before it counts as failed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an interactive message (an approval question, its settled text) is tried
/// before it is given up: it only matters while its job waits, so it is not kept in the
/// outbox.
const INTERACTIVE_TRIES: u32 = 3;

/// The longest flood-control pause an interactive message waits out.
const MAX_INTERACTIVE_PAUSE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Sender {
    bot: Bot,
    /// Files (`sendPhoto`, `sendDocument`): a client whose timeout lets 50 MB go up.
    uploads: Bot,
}

/// Why a send or an edit did not show the piece, by what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Flood control: not again before this much time has passed.
    RetryAfter(Duration),
    /// Telegram or the network failed on the way (5xx, reset, timeout, not JSON): try
    /// again later. Telegram may have shown the piece anyway when only its answer was
    /// lost.
    Transient(String),
    /// Telegram cannot parse the piece's HTML: send it as plain text.
    BadEntities(String),
    /// This chat will not take the piece, ever: the bot was blocked or removed, the chat
    /// does not exist, or the request itself is wrong.
    Refused(String),
    /// The group became a supergroup with this id: send there.
    Migrated(i64),
    /// (Edits only.) The message cannot be edited (deleted, too old): send anew.
    CannotEdit(String),
}

/// Plain text as pieces: split to size, escaped for HTML.
pub fn plain_pieces(text: &str) -> Vec<Piece> {
    split_message(text, MESSAGE_LIMIT)
        .into_iter()
        .map(|plain| Piece {
            html: format::escape(&plain),
            plain,
        })
        .collect()
}

impl Sender {
    pub fn new(bot: Bot) -> Self {
        Sender {
            uploads: bot.clone(),
            bot,
        }
    }

    /// Uploads files through `bot` (a client with a longer timeout).
    pub fn with_uploads(mut self, bot: Bot) -> Self {
        self.uploads = bot;
        self
    }

    /// One `sendPhoto` (`photo`) or `sendDocument` of `file`, under its name.
    pub async fn send_file_once(
        &self,
        chat: i64,
        file: &crate::files_back::OutFile,
        photo: bool,
    ) -> Result<(), SendError> {
        let input = InputFile::file(file.path.clone()).file_name(file.name.clone());
        let sent = if photo {
            self.uploads
                .send_photo(ChatId(chat), input)
                .await
                .map(|_| ())
        } else {
            self.uploads
                .send_document(ChatId(chat), input)
                .await
                .map(|_| ())
        };
        sent.map_err(classify)
    }

    /// One `sendMessage` of `piece`, as HTML or (`plain`) as its text alone.
    pub async fn send_once(
        &self,
        chat: i64,
        piece: &Piece,
        plain: bool,
    ) -> Result<MessageId, SendError> {
        self.lean::<_, Shown>(send_payload(chat, piece, plain))
            .await
            .map(|shown| MessageId(shown.message_id))
            .map_err(classify)
    }

    /// One `editMessageText` of message `id` to show `piece`. A message that already
    /// shows it counts as edited.
    pub async fn edit_once(
        &self,
        chat: i64,
        id: MessageId,
        piece: &Piece,
        plain: bool,
    ) -> Result<(), SendError> {
        let text = if plain { &piece.plain } else { &piece.html };
        let mut payload = EditMessageText::new(ChatId(chat), id, text.as_str());
        if !plain {
            payload = payload.parse_mode(ParseMode::Html);
        }
        match self.lean::<_, IgnoredAny>(payload).await {
            Ok(_) | Err(RequestError::Api(ApiError::MessageNotModified)) => Ok(()),
            Err(RequestError::Api(
                e @ (ApiError::MessageToEditNotFound
                | ApiError::MessageCantBeEdited
                | ApiError::MessageIdInvalid),
            )) => Err(SendError::CannotEdit(e.to_string())),
            Err(e) => Err(match classify(e) {
                // An edit refused for its own sake (not the chat's) is sent anew instead.
                SendError::Refused(why) if !refuses_the_chat(&why) => SendError::CannotEdit(why),
                other => other,
            }),
        }
    }

    /// Sends `piece` with buttons under it, trying a few times on the way (flood control,
    /// network, HTML Telegram cannot parse); the id of the message, or why it is not there.
    pub async fn send_with_buttons(
        &self,
        chat: i64,
        piece: &Piece,
        keyboard: &InlineKeyboardMarkup,
    ) -> Result<MessageId, SendError> {
        interactive(|plain| async move {
            let payload = send_payload(chat, piece, plain).reply_markup(keyboard.clone());
            self.lean::<_, Shown>(payload)
                .await
                .map(|shown| MessageId(shown.message_id))
                .map_err(classify)
        })
        .await
    }

    /// Makes message `id` show `piece` (without any buttons it had: an edit of the text
    /// drops them), waiting out short flood control; never a new message.
    pub async fn replace_once(
        &self,
        chat: i64,
        id: MessageId,
        piece: &Piece,
    ) -> Result<(), SendError> {
        interactive(|plain| self.edit_once(chat, id, piece, plain)).await
    }

    /// Removes the buttons under message `id`, once; a failure is only logged.
    pub async fn remove_keyboard(&self, chat: i64, id: MessageId) {
        if let Err(e) = self.bot.edit_message_reply_markup(ChatId(chat), id).await
            && !matches!(e, RequestError::Api(ApiError::MessageNotModified))
        {
            tracing::info!(chat_id = chat, "cannot remove a message's buttons: {e}");
        }
    }

    /// Answers a button press (the client stops its spinner and shows `text` briefly).
    pub async fn answer_callback(&self, id: &CallbackQueryId, text: Option<&str>) {
        let request = self.bot.answer_callback_query(id.clone());
        let request = match text {
            Some(text) => request.text(text),
            None => request,
        };
        if let Err(e) = request.await {
            tracing::info!("answerCallbackQuery failed: {e}");
        }
    }

    /// `payload` as a request whose answer is read as `R`, see [`Lean`].
    fn lean<P, R>(&self, payload: P) -> JsonRequest<Lean<P, R>> {
        JsonRequest::new(self.bot.clone(), Lean(payload, PhantomData))
    }

    /// "typing…" in the chat. Purely cosmetic: errors are ignored.
    pub async fn typing(&self, chat: i64) {
        let _ = self
            .bot
            .send_chat_action(ChatId(chat), ChatAction::Typing)
            .await;
    }
}

/// `sendMessage` of `piece`, as HTML or (`plain`) as its text alone.
fn send_payload(chat: i64, piece: &Piece, plain: bool) -> SendMessage {
    if plain {
        SendMessage::new(ChatId(chat), piece.plain.as_str())
    } else {
        SendMessage::new(ChatId(chat), piece.html.as_str()).parse_mode(ParseMode::Html)
    }
}

/// A Bot API request whose answer is read only as far as the gateway uses it (`R`).
/// teloxide reads a sent or edited message into a whole `Message`, through serde's
/// buffered path for its flattened and untagged parts; the gateway uses its id at most,
/// and that parse was about a tenth of the gateway's instructions per message in the
/// throughput benchmark. Errors are read by teloxide as for any request.
pub struct Lean<P, R>(P, PhantomData<fn() -> R>);

impl<P: Payload, R> Payload for Lean<P, R> {
    type Output = R;
    const NAME: &'static str = P::NAME;

    fn timeout_hint(&self) -> Option<Duration> {
        self.0.timeout_hint()
    }
}

impl<P: Serialize, R> Serialize for Lean<P, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// A sent message, as far as the gateway reads it.
#[derive(Deserialize)]
struct Shown {
    message_id: i32,
}

/// An interactive request (`attempt(plain)`) tried a few times: again as plain text when
/// Telegram cannot parse the HTML, after a short flood-control pause, or after a transient
/// failure; anything else is given up at once.
async fn interactive<T, F: Future<Output = Result<T, SendError>>>(
    mut attempt: impl FnMut(bool) -> F,
) -> Result<T, SendError> {
    let mut plain = false;
    let mut last = SendError::Transient("not tried".into());
    for _ in 0..INTERACTIVE_TRIES {
        let error = match attempt(plain).await {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        match &error {
            SendError::BadEntities(_) if !plain => plain = true,
            SendError::RetryAfter(wait) if *wait <= MAX_INTERACTIVE_PAUSE => {
                tokio::time::sleep(*wait).await
            }
            SendError::Transient(_) => {}
            _ => return Err(error),
        }
        last = error;
    }
    Err(last)
}

/// What a failed request means for the piece.
fn classify(error: RequestError) -> SendError {
    match error {
        RequestError::RetryAfter(after) => SendError::RetryAfter(after.duration()),
        RequestError::MigrateToChatId(to) => SendError::Migrated(to.0),
        RequestError::Api(ApiError::CantParseEntities(why)) => SendError::BadEntities(why),
        RequestError::Api(ApiError::BotBlocked) => {
            SendError::Refused("the user blocked the bot".into())
        }
        // teloxide names the descriptions it knows; the rest it keeps as they came. Those
        // of a request Telegram judged ("Bad Request: …", "Forbidden: …") will not change
        // on a retry; anything else (an "Internal Server Error" body with a 5xx) may.
        RequestError::Api(ApiError::Unknown(description)) => {
            if ["Bad Request", "Forbidden"]
                .iter()
                .any(|p| description.starts_with(p))
            {
                SendError::Refused(description)
            } else {
                SendError::Transient(description)
            }
        }
        // A revoked token is the operator's to fix; the reply waits for it (until it is
        // too old).
        RequestError::Api(e @ ApiError::InvalidToken) => SendError::Transient(e.to_string()),
        RequestError::Api(e) => SendError::Refused(e.to_string()),
        RequestError::Network(e) => SendError::Transient(if e.is_timeout() {
            format!("no answer within {} s", SEND_TIMEOUT.as_secs())
        } else {
            format!("network error: {}", hermes_retry::root_cause(e.as_ref()))
        }),
        RequestError::Io(e) => SendError::Transient(format!("i/o error: {e}")),
        RequestError::InvalidJson { raw, .. } => {
            let snippet: String = raw.chars().take(80).collect();
            SendError::Transient(format!("answer is not Bot API JSON: {snippet:?}"))
        }
    }
}

/// A refusal that is about the chat (the bot may not write there), not the message.
pub fn refuses_the_chat(why: &str) -> bool {
    why.starts_with("Forbidden")
        || why.contains("blocked")
        || why.contains("chat not found")
        || why.contains("kicked")
}
