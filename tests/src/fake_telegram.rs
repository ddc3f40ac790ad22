//! A fake Telegram Bot API server, so the gateway can be tested end to end without the
//! internet and against the failures that matter in production: long polls that hang or
//! fail, 409 conflicts, 429 rate limits, servers that go away, messages Telegram refuses.
//!
//! It speaks what teloxide-core 0.13 sends (`POST /bot<TOKEN>/<Method>` with a JSON body) and
//! answers with JSON teloxide deserializes. It keeps a log of everything it was asked, and
//! tests wait on that log through [`FakeTelegram::wait_for_sent`] and friends instead of
//! sleeping. Updates behave like Telegram's: a `getUpdates` answer does not consume them,
//! only a later `offset` acknowledges them.
//!
//! It is as strict as the Bot API where a lax fake would hide a bug: HTML under
//! `parse_mode=HTML` is parsed as Telegram parses it and refused with Telegram's words
//! (see [`html`]); an unknown `parse_mode` or method is refused; `allowed_updates` is kept
//! from call to call and updates of other kinds are never queued; a long poll is held
//! until an update arrives or its `timeout` runs out, and a newer long poll ends the one
//! waiting with 409 as Telegram's server does; and, when a test asks for it, flood control
//! answers 429 with `retry_after`. Inline keyboards are kept per message as Telegram keeps
//! them (an edit of the text without `reply_markup` removes them), a test presses a button
//! as a given user ([`FakeTelegram::press`]), and `answerCallbackQuery` accepts each press's
//! id once (see [`buttons`]).

mod buttons;
mod files;
mod html;

pub use buttons::CallbackAnswer;
pub use files::{Body, FakeFile, FileDownload, MAX_DOWNLOAD_BYTES};

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::http::{HttpServer, Request, Response};

/// The only token the fake accepts.
pub const TOKEN: &str = "123456:TEST-TOKEN";
/// The bot's own user id (the part of [`TOKEN`] before the colon, as with real tokens).
pub const BOT_ID: i64 = 123456;
pub const BOT_USERNAME: &str = "hermes_test_bot";

/// Telegram's limit for a message text, in UTF-16 code units after entity parsing.
pub const MAX_TEXT_LEN: usize = 4096;

/// Telegram caps long polls at 50 seconds.
const MAX_POLL_TIMEOUT_SECS: i64 = 50;

/// The Bot API server answers the first conflict at once and later ones, within this
/// time of it, only after this time (telegram-bot-api's `fail_query_conflict`), so two
/// instances fighting over one token do not spin.
const CONFLICT_THROTTLE: Duration = Duration::from_secs(3);

const NOT_MODIFIED: &str = "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message";

const CONFLICT: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

const WEBHOOK_CONFLICT: &str = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first";

const MIGRATED: &str = "Bad Request: group chat was upgraded to a supergroup chat";

/// Update kinds a bot gets when it never set `allowed_updates` or set an empty list
/// (Bot API, `getUpdates`): every kind but these.
const NOT_BY_DEFAULT: [&str; 3] = ["chat_member", "message_reaction", "message_reaction_count"];

/// The chat actions `sendChatAction` accepts.
const CHAT_ACTIONS: [&str; 11] = [
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
];

/// A scripted failure for one `getUpdates` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollFault {
    /// Answer with this status and body (JSON if it starts with `{`, HTML otherwise).
    Status { status: u16, body: String },
    /// Never answer.
    Hang,
    /// Reset the connection without answering.
    Reset,
    /// HTTP 200 with a body that is not valid JSON.
    InvalidJson,
}

impl PollFault {
    /// What a reverse proxy in front of Telegram sends when the backend is down.
    pub fn bad_gateway_html() -> Self {
        PollFault::Status {
            status: 502,
            body: "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n".into(),
        }
    }

    /// Another `getUpdates` consumer took over (two gateway instances with one token).
    pub fn conflict() -> Self {
        PollFault::Status {
            status: 409,
            body: conflict_body().to_string(),
        }
    }

    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        PollFault::Status {
            status: 429,
            body: retry_after_body(retry_after_secs).to_string(),
        }
    }
}

/// A scripted failure for one `sendMessage` (or `editMessageText`, see
/// [`FakeTelegram::fail_edit`]) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFault {
    /// HTTP 429 with `parameters.retry_after`.
    RetryAfter(u64),
    /// An API error: `{"ok":false,"error_code":status,"description":description}`.
    Status { status: u16, description: String },
    /// Never answer (the message is not delivered).
    Hang,
    /// Reset the connection (the message is not delivered).
    Reset,
    /// The group became a supergroup with this id: 400 with
    /// `parameters.migrate_to_chat_id`.
    Migrated(i64),
}

impl SendFault {
    /// What Telegram says about malformed HTML/Markdown.
    pub fn bad_entities() -> Self {
        SendFault::Status {
            status: 400,
            description:
                "Bad Request: can't parse entities: Unsupported start tag \"foo\" at byte offset 0"
                    .into(),
        }
    }

    /// An error page of Telegram's own, in its JSON form (5xx).
    pub fn server_error() -> Self {
        SendFault::Status {
            status: 500,
            description: "Internal Server Error".into(),
        }
    }

    /// The user blocked the bot.
    pub fn blocked() -> Self {
        SendFault::Status {
            status: 403,
            description: "Forbidden: bot was blocked by the user".into(),
        }
    }

    fn bad_request(description: &str) -> Self {
        SendFault::Status {
            status: 400,
            description: description.into(),
        }
    }
}

/// How many sends and edits Telegram lets through in a window of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: usize,
    pub per: Duration,
}

/// Flood control: a send or edit beyond any of these rates is answered 429 with the
/// seconds until the window has room again. Off unless a test sets it
/// ([`FakeTelegram::set_flood_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FloodLimits {
    /// In any one chat.
    pub per_chat: Option<Rate>,
    /// In any one group (a chat with a negative id), on top of `per_chat`.
    pub per_group: Option<Rate>,
    /// In all chats together.
    pub global: Option<Rate>,
}

impl FloodLimits {
    /// The numbers of Telegram's bot FAQ: about one message a second in a chat, 20 a
    /// minute in a group, 30 a second in all. Telegram publishes no exact algorithm (it
    /// tolerates short bursts), so a sliding window of exactly these is the strict reading.
    pub fn telegram() -> Self {
        FloodLimits {
            per_chat: Some(Rate {
                count: 1,
                per: Duration::from_secs(1),
            }),
            per_group: Some(Rate {
                count: 20,
                per: Duration::from_secs(60),
            }),
            global: Some(Rate {
                count: 30,
                per: Duration::from_secs(1),
            }),
        }
    }
}

/// A message the bot delivered (sent, or edited into its new text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// Canonical Telegram spelling: `sendMessage` or `editMessageText`.
    pub method: String,
    pub chat_id: i64,
    /// The text as sent (HTML included).
    pub text: String,
    pub parse_mode: Option<String>,
    /// The id of the message sent, or of the message edited.
    pub message_id: i64,
    /// The inline keyboard the message shows after this send or edit, if any.
    pub keyboard: Option<Value>,
    pub at: Instant,
}

/// A send or edit that was refused, by a scripted [`SendFault`] or because Telegram would
/// have refused it (empty or too long text, HTML it cannot parse, an unknown parse mode,
/// editing to the same text, an unknown message, flood control).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedSend {
    pub method: String,
    pub chat_id: i64,
    pub text: String,
    pub parse_mode: Option<String>,
    pub fault: SendFault,
    pub at: Instant,
}

/// How one `getUpdates` request ended (so far).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// Still long-polling, or the client left before an answer.
    Waiting,
    /// Answered `ok` (possibly with no updates).
    Answered,
    /// A scripted fault was served.
    Fault(PollFault),
    /// Hung because of [`FakeTelegram::stall_get_updates`].
    Stalled,
    /// Ended with 409 because a newer `getUpdates` arrived while this one waited.
    Conflict,
    /// Refused with 409 because a webhook is set.
    Webhook,
}

/// One `getUpdates` request, logged when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRecord {
    pub at: Instant,
    pub offset: Option<i64>,
    /// The requested long-poll timeout in seconds, as sent.
    pub timeout: Option<i64>,
    pub answered_ids: Vec<i64>,
    pub outcome: PollOutcome,
}

/// Any authorized API call, as received (unknown methods included).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCall {
    pub at: Instant,
    /// As spelled in the URL (teloxide sends `SendMessage`, curl users `sendMessage`).
    pub method: String,
    /// The parameters as JSON (JSON body, query string or form fields).
    pub params: Value,
}

/// A handle to a running fake; clones share the same server. The server stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct FakeTelegram {
    state: Arc<State>,
    server: Arc<HttpServer>,
}

struct State {
    inner: Mutex<Inner>,
    /// Bumped on every change so long polls and test waits can re-check without sleeping.
    changed: watch::Sender<()>,
}

#[derive(Default)]
struct Inner {
    last_update_id: i64,
    last_message_id: i64,
    pending: VecDeque<(i64, Value)>,
    acked_up_to: i64,
    poll_faults: VecDeque<PollFault>,
    send_faults: VecDeque<SendFault>,
    edit_faults: VecDeque<SendFault>,
    stalled: bool,
    sent: Vec<SentMessage>,
    failed: Vec<FailedSend>,
    polls: Vec<PollRecord>,
    calls: Vec<ApiCall>,
    unauthorized: usize,
    /// Text of every message the bot sent, as sent and as shown, for editMessageText's
    /// rules and for the message a reply quotes.
    texts: HashMap<(i64, i64), (String, String)>,
    /// Chat objects from pushed updates, so replies carry the same chat.
    chats: HashMap<i64, Value>,
    /// When each update was first handed out by a poll, for latency measurements.
    served: HashMap<i64, Instant>,
    /// The last `allowed_updates` a poll set; `None` or empty: the default kinds.
    allowed_updates: Option<Vec<String>>,
    /// Updates never queued because their kind was not allowed when they happened.
    withheld: Vec<Value>,
    /// The poll (index in `polls`) now waiting for updates, which a newer one ends.
    long_poll: Option<usize>,
    /// Polls ended by a newer one, still to answer 409.
    terminated: HashSet<usize>,
    /// Until when a further conflict is answered only after [`CONFLICT_THROTTLE`].
    conflict_quiet_until: Option<Instant>,
    flood: FloodLimits,
    /// What `setMyCommands` set.
    commands: Value,
    /// Sends and edits refused for their own text, not by a scripted fault.
    malformed: Vec<FailedSend>,
    /// Panic when the last handle goes if `malformed` is not empty.
    malformed_is_a_bug: bool,
    /// The inline keyboard each message of the bot shows now.
    keyboards: HashMap<(i64, i64), Value>,
    /// Button presses handed out as `callback_query` updates, by query id, and whether
    /// each was answered.
    presses: HashMap<String, bool>,
    answers: Vec<CallbackAnswer>,
    last_query_id: u64,
    /// While set, every send and edit fails with it.
    every_send_fails: Option<SendFault>,
    /// Chats whose user blocked the bot: 403 to every send there.
    blocked: HashSet<i64>,
    /// Groups that became supergroups: old id to new.
    migrated: HashMap<i64, i64>,
    /// The webhook set on the token, if any: `getUpdates` then answers 409.
    webhook: Option<String>,
    /// How many entries of `sent` each chat has: waits per chat stay O(1).
    sent_per_chat: HashMap<i64, usize>,
    /// Files the bot may fetch (`getFile`, then the download path).
    files: Vec<files::FakeFile>,
    last_file: u64,
    downloads: Vec<files::FileDownload>,
    /// While set, every download is reset before a byte is sent.
    downloads_fail: bool,
}

impl FakeTelegram {
    pub async fn start() -> FakeTelegram {
        let state = Arc::new(State {
            inner: Mutex::new(Inner::default()),
            changed: watch::Sender::new(()),
        });
        let handler_state = state.clone();
        let server = HttpServer::start(move |req| {
            let state = handler_state.clone();
            async move { state.handle(req).await }
        })
        .await;
        FakeTelegram {
            state,
            server: Arc::new(server),
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash: what `Bot::set_api_url` takes.
    pub fn api_url(&self) -> String {
        self.server.url()
    }

    pub fn server(&self) -> &HttpServer {
        &self.server
    }

    // ---- updates ------------------------------------------------------------------------

    /// Queue a text message from `user_id` in `chat_id` (a private chat for positive ids, a
    /// group for negative ones). Returns the update id.
    pub fn send_text(&self, chat_id: i64, user_id: i64, text: &str) -> i64 {
        let chat = default_chat(chat_id);
        let mut g = self.state.lock();
        g.last_message_id += 1;
        let mut message = json!({
            "message_id": g.last_message_id,
            "date": unix_now(),
            "chat": chat,
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
            "text": text,
        });
        let entities = entities_of(text);
        if !entities.is_empty() {
            message["entities"] = Value::Array(entities);
        }
        drop(g);
        self.push_update(json!({ "message": message }))
    }

    /// Queue a text message that replies to message `reply_to` of the same chat (one the
    /// bot sent, or any other). Returns the update id.
    pub fn send_reply(&self, chat_id: i64, user_id: i64, text: &str, reply_to: i64) -> i64 {
        let chat = default_chat(chat_id);
        let mut g = self.state.lock();
        g.last_message_id += 1;
        let original_from = if g.texts.contains_key(&(chat_id, reply_to)) {
            bot_user()
        } else {
            json!({"id": user_id + 1, "is_bot": false, "first_name": "Other"})
        };
        let original_text = g
            .texts
            .get(&(chat_id, reply_to))
            .map(|(_, shown)| shown.clone())
            .unwrap_or_default();
        let message = json!({
            "message_id": g.last_message_id,
            "date": unix_now(),
            "chat": chat,
            "from": {"id": user_id, "is_bot": false, "first_name": "Test"},
            "text": text,
            "reply_to_message": {
                "message_id": reply_to,
                "date": unix_now(),
                "chat": chat,
                "from": original_from,
                "text": original_text,
            },
        });
        drop(g);
        self.push_update(json!({ "message": message }))
    }

    /// Queue a raw update object; its `update_id` is set by the fake. Returns the update id.
    ///
    /// As on Telegram, an update of a kind the bot's last `allowed_updates` excludes is
    /// never queued: it goes to [`FakeTelegram::withheld_updates`] (its id is still used).
    pub fn push_update(&self, mut update: Value) -> i64 {
        let mut g = self.state.lock();
        g.last_update_id += 1;
        let id = g.last_update_id;
        if let Some(chat) = update
            .as_object()
            .and_then(|u| u.values().find_map(|v| v.get("chat")))
            .and_then(|c| Some((c.get("id")?.as_i64()?, c.clone())))
        {
            g.chats.insert(chat.0, chat.1);
        }
        update["update_id"] = json!(id);
        if g.allows(&update) {
            g.pending.push_back((id, update));
        } else {
            g.withheld.push(update);
        }
        drop(g);
        self.state.bump();
        id
    }

    /// Updates that were never queued because the bot's `allowed_updates` excluded their
    /// kind when they happened.
    pub fn withheld_updates(&self) -> Vec<Value> {
        self.state.lock().withheld.clone()
    }

    /// The update kinds the bot last asked for in `getUpdates` (`None`: never asked).
    pub fn allowed_updates(&self) -> Option<Vec<String>> {
        self.state.lock().allowed_updates.clone()
    }

    /// Ids of updates not yet acknowledged.
    pub fn pending_update_ids(&self) -> Vec<i64> {
        self.state
            .lock()
            .pending
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    /// When `update_id` was first handed to the gateway by a `getUpdates` answer.
    pub fn served_at(&self, update_id: i64) -> Option<Instant> {
        self.state.lock().served.get(&update_id).copied()
    }

    /// Highest update id the client acknowledged through `offset` (0 if none).
    pub fn acked_up_to(&self) -> i64 {
        self.state.lock().acked_up_to
    }

    // ---- scripted faults ----------------------------------------------------------------

    /// The next `getUpdates` calls fail with these faults, in order. A faulted call does
    /// not process its `offset`.
    pub fn fail_get_updates(&self, fault: PollFault) {
        self.state.lock().poll_faults.push_back(fault);
        self.state.bump();
    }

    /// While on, every `getUpdates` hangs, including polls already waiting.
    pub fn stall_get_updates(&self, on: bool) {
        self.state.lock().stalled = on;
        self.state.bump();
    }

    /// The next `sendMessage` calls fail, in order.
    pub fn fail_send(&self, fault: SendFault) {
        self.state.lock().send_faults.push_back(fault);
    }

    /// The next `editMessageText` calls fail, in order.
    pub fn fail_edit(&self, fault: SendFault) {
        self.state.lock().edit_faults.push_back(fault);
    }

    /// From now on (until `None`), every `sendMessage` and `editMessageText` fails with
    /// `fault`: Telegram failing on the way out for a while.
    pub fn fail_every_send(&self, fault: Option<SendFault>) {
        self.state.lock().every_send_fails = fault;
        self.state.bump();
    }

    /// The user of private chat `chat_id` blocks the bot: every send there is refused with
    /// 403, as Telegram does.
    pub fn block_chat(&self, chat_id: i64) {
        self.state.lock().blocked.insert(chat_id);
    }

    /// Group `old` becomes supergroup `new`: sends to `old` are refused with
    /// `migrate_to_chat_id`, and its messages come from `new` from now on.
    pub fn migrate_chat(&self, old: i64, new: i64) {
        let mut g = self.state.lock();
        g.migrated.insert(old, new);
        let chat = json!({"id": new, "type": "supergroup", "title": "Test group"});
        g.chats.insert(new, chat);
    }

    /// The user deletes message `message_id` of chat `chat_id`: editing it fails from now
    /// on ("message to edit not found").
    pub fn delete_message(&self, chat_id: i64, message_id: i64) {
        self.state.lock().texts.remove(&(chat_id, message_id));
    }

    /// Sets a webhook on the token, as another framework using it would: `getUpdates`
    /// answers 409 until it is deleted, and a long poll waiting now ends with that 409.
    pub fn set_webhook(&self, url: &str) {
        self.state.lock().webhook = Some(url.to_string());
        self.state.bump();
    }

    /// The webhook set on the token.
    pub fn webhook(&self) -> Option<String> {
        self.state.lock().webhook.clone()
    }

    /// Apply flood control from now on (`FloodLimits::default()` turns it off again).
    pub fn set_flood_limits(&self, limits: FloodLimits) {
        self.state.lock().flood = limits;
    }

    /// Stop listening: new connections get `ECONNREFUSED`.
    pub async fn refuse_connections(&self) {
        self.server.refuse_connections().await;
    }

    /// Listen again on the same port.
    pub async fn accept_connections(&self) {
        self.server.accept_connections().await;
    }

    // ---- records ------------------------------------------------------------------------

    /// Every message delivered, in order.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.state.lock().sent.clone()
    }

    /// Delivered messages for one chat, in order.
    pub fn sent_to(&self, chat_id: i64) -> Vec<SentMessage> {
        self.state
            .lock()
            .sent
            .iter()
            .filter(|m| m.chat_id == chat_id)
            .cloned()
            .collect()
    }

    /// What `chat_id` shows now: each message the bot sent there, in order, with the text
    /// of its last edit (as sent, with its parse mode). An orphaned preview beside the
    /// final reply shows here as a message of its own.
    pub fn chat_now(&self, chat_id: i64) -> Vec<SentMessage> {
        let mut shown: Vec<SentMessage> = Vec::new();
        for message in self.sent_to(chat_id) {
            match shown
                .iter_mut()
                .find(|m| m.message_id == message.message_id)
            {
                Some(earlier) if message.method == "editMessageText" => {
                    earlier.text = message.text;
                    earlier.parse_mode = message.parse_mode;
                    earlier.at = message.at;
                }
                _ => shown.push(message),
            }
        }
        shown
    }

    pub fn failed_sends(&self) -> Vec<FailedSend> {
        self.state.lock().failed.clone()
    }

    /// Sends and edits Telegram would refuse for their text (HTML it cannot parse, an
    /// unknown parse mode, a text empty or too long), scripted faults left out.
    pub fn malformed_sends(&self) -> Vec<FailedSend> {
        self.state.lock().malformed.clone()
    }

    /// From now on, when the last handle to this fake is dropped (the end of a test), it
    /// panics if any send or edit was malformed: the gateway must never send one, and its
    /// plain-text fallback would otherwise hide it from every test that does not look.
    pub fn fail_the_test_on_malformed_sends(&self) {
        self.state.lock().malformed_is_a_bug = true;
    }

    /// Number of authorized calls to `method` (case-insensitive).
    pub fn calls(&self, method: &str) -> usize {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|c| c.method.eq_ignore_ascii_case(method))
            .count()
    }

    /// Every authorized call, in order.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        self.state.lock().calls.clone()
    }

    /// When each authorized call to `method` (case-insensitive) arrived, in order: the
    /// spacing of retries as the server saw it.
    pub fn call_times(&self, method: &str) -> Vec<Instant> {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|c| c.method.eq_ignore_ascii_case(method))
            .map(|c| c.at)
            .collect()
    }

    /// Requests refused with 401 because of a wrong token.
    pub fn unauthorized_calls(&self) -> usize {
        self.state.lock().unauthorized
    }

    pub fn get_updates_log(&self) -> Vec<PollRecord> {
        self.state.lock().polls.clone()
    }

    // ---- waiting ------------------------------------------------------------------------

    /// The first delivered message matching `pred` (already recorded or arriving within
    /// `timeout`).
    pub async fn wait_for_sent(
        &self,
        pred: impl Fn(&SentMessage) -> bool,
        timeout: Duration,
    ) -> Option<SentMessage> {
        self.state
            .wait_until(timeout, |g| g.sent.iter().find(|m| pred(m)).cloned())
            .await
    }

    /// Wait until at least `n` messages were delivered to `chat_id`; returns what was
    /// delivered by then (possibly fewer at timeout).
    pub async fn wait_for_chat_messages(
        &self,
        chat_id: i64,
        n: usize,
        timeout: Duration,
    ) -> Vec<SentMessage> {
        // Whether it timed out or not, the caller gets what there is.
        self.state
            .wait_until(timeout, |g| {
                (g.sent.iter().filter(|m| m.chat_id == chat_id).count() >= n).then_some(())
            })
            .await;
        self.sent_to(chat_id)
    }

    /// How many messages were delivered to `chat_id` (sends and edits); O(1).
    pub fn sent_count(&self, chat_id: i64) -> usize {
        self.state
            .lock()
            .sent_per_chat
            .get(&chat_id)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until at least `n` messages were delivered to `chat_id` (sends and edits, as
    /// [`FakeTelegram::wait_for_chat_messages`] counts them); O(1) per check, for
    /// benchmarks whose many chats wait at once. Returns the count by then.
    pub async fn wait_for_chat_count(&self, chat_id: i64, n: usize, timeout: Duration) -> usize {
        self.state
            .wait_until(timeout, |g| {
                (g.sent_per_chat.get(&chat_id).copied().unwrap_or(0) >= n).then_some(())
            })
            .await;
        self.sent_count(chat_id)
    }

    /// Waits until at least `n` messages were sent in all chats together; O(1) per check,
    /// for benchmarks that count many thousands.
    pub async fn wait_for_sent_count(&self, n: usize, timeout: Duration) -> usize {
        self.state
            .wait_until(timeout, |g| (g.sent.len() >= n).then_some(()))
            .await;
        self.state.lock().sent.len()
    }

    /// Wait until at least `n` `getUpdates` requests arrived.
    pub async fn wait_for_polls(&self, n: usize, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |g| (g.polls.len() >= n).then_some(()))
            .await
            .is_some()
    }

    /// Wait until at least `n` authorized calls to `method` arrived.
    pub async fn wait_for_calls(&self, method: &str, n: usize, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |g| {
                let count = g
                    .calls
                    .iter()
                    .filter(|c| c.method.eq_ignore_ascii_case(method))
                    .count();
                (count >= n).then_some(())
            })
            .await
            .is_some()
    }

    /// Wait until the client acknowledged `update_id` (sent an offset above it).
    pub async fn wait_for_ack(&self, update_id: i64, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |g| (g.acked_up_to >= update_id).then_some(()))
            .await
            .is_some()
    }

    /// Wait until at least `n` sends or edits were refused.
    pub async fn wait_for_failed_sends(&self, n: usize, timeout: Duration) -> bool {
        self.state
            .wait_until(timeout, |g| (g.failed.len() >= n).then_some(()))
            .await
            .is_some()
    }
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        // Only the handles hold the server, so this is the last one.
        if Arc::strong_count(&self.server) != 1 || std::thread::panicking() {
            return;
        }
        let g = self.state.lock();
        if g.malformed_is_a_bug && !g.malformed.is_empty() {
            let malformed = g.malformed.clone();
            drop(g);
            panic!("the gateway sent what Telegram would refuse: {malformed:#?}");
        }
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the records from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_replace(());
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Inner) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before checking so a change between the check and the await is not lost.
        let mut rx = self.changed.subscribe();
        loop {
            let found = check(&self.lock());
            if found.is_some() {
                return found;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    async fn handle(&self, req: Request) -> Response {
        let path = percent_decode(req.path_only());
        if let Some(rest) = path.strip_prefix("/file/bot") {
            return self.download(&req, rest);
        }
        let Some((token, method)) = path
            .strip_prefix("/bot")
            .and_then(|rest| rest.split_once('/'))
        else {
            return not_found();
        };
        if token != TOKEN {
            self.lock().unauthorized += 1;
            self.bump();
            return api_error(401, "Unauthorized", None);
        }
        let params = match parse_params(&req) {
            Ok(p) => p,
            Err(e) => return api_error(400, &format!("Bad Request: {e}"), None),
        };
        self.lock().calls.push(ApiCall {
            at: Instant::now(),
            method: method.to_string(),
            params: params.clone(),
        });
        self.bump();

        // Method names are case-insensitive on Telegram's server too.
        match method.to_ascii_lowercase().as_str() {
            "getupdates" => self.get_updates(&params).await,
            "sendmessage" => self.send(&params),
            "editmessagetext" => self.edit_text(&params),
            "editmessagereplymarkup" => self.edit_markup(&params),
            "answercallbackquery" => self.answer_callback(&params),
            "getme" => ok(me()),
            "getfile" => self.get_file(&params),
            "getmycommands" => {
                let commands = self.lock().commands.clone();
                ok(if commands.is_null() {
                    json!([])
                } else {
                    commands
                })
            }
            "setmycommands" => self.set_commands(&params),
            "deletemycommands" => {
                self.lock().commands = Value::Null;
                ok(json!(true))
            }
            "sendchataction" => chat_action(&params),
            "setwebhook" => self.set_webhook_call(&params),
            "deletewebhook" => self.delete_webhook(&params),
            "getwebhookinfo" => {
                let g = self.lock();
                ok(json!({
                    "url": g.webhook.clone().unwrap_or_default(),
                    "has_custom_certificate": false,
                    "pending_update_count": g.pending.len(),
                }))
            }
            _ => not_found(),
        }
    }

    async fn get_updates(&self, params: &Value) -> Response {
        let offset = params.get("offset").and_then(as_i64);
        let timeout = params.get("timeout").and_then(as_i64);
        let limit = params
            .get("limit")
            .and_then(as_i64)
            .unwrap_or(100)
            .clamp(1, 100) as usize;
        let allowed = match params.get("allowed_updates").map(update_kinds) {
            Some(Ok(kinds)) => Some(kinds),
            Some(Err(())) => {
                return api_error(
                    400,
                    "Bad Request: can't parse allowed_updates JSON array",
                    None,
                );
            }
            None => None,
        };
        let wait = Duration::from_secs(timeout.unwrap_or(0).clamp(0, MAX_POLL_TIMEOUT_SECS) as u64);
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.changed.subscribe();

        let (index, early) = {
            let mut g = self.lock();
            let index = g.polls.len();
            g.polls.push(PollRecord {
                at: Instant::now(),
                offset,
                timeout,
                answered_ids: Vec::new(),
                outcome: PollOutcome::Waiting,
            });
            let early = if let Some(fault) = g.poll_faults.pop_front() {
                g.polls[index].outcome = PollOutcome::Fault(fault.clone());
                Some(poll_fault_response(fault))
            } else if g.webhook.is_some() {
                g.polls[index].outcome = PollOutcome::Webhook;
                Some(api_error(409, WEBHOOK_CONFLICT, None))
            } else if g.stalled {
                g.polls[index].outcome = PollOutcome::Stalled;
                Some(Response::Hang)
            } else {
                if let Some(offset) = offset {
                    g.acknowledge(offset);
                }
                // Kept for later calls; it does not touch updates already queued.
                if let Some(kinds) = allowed {
                    g.allowed_updates = Some(kinds);
                }
                // A poll that is going to wait ends the one already waiting, as
                // telegram-bot-api's `do_get_updates` does: the newest consumer wins.
                if !wait.is_zero()
                    && g.pending.is_empty()
                    && let Some(old) = g.long_poll.replace(index)
                {
                    g.polls[old].outcome = PollOutcome::Conflict;
                    g.terminated.insert(old);
                }
                None
            };
            (index, early)
        };
        self.bump();
        if let Some(response) = early {
            return response;
        }
        // However this poll ends (answered, or its client gone), it waits no longer.
        let _waiting = LongPollGuard { state: self, index };

        loop {
            let conflict = {
                let mut g = self.lock();
                if g.terminated.remove(&index) {
                    let now = Instant::now();
                    let delay = match g.conflict_quiet_until {
                        Some(until) if until > now => CONFLICT_THROTTLE,
                        _ => Duration::ZERO,
                    };
                    g.conflict_quiet_until = Some(now + delay + CONFLICT_THROTTLE);
                    Some(delay)
                } else {
                    None
                }
            };
            if let Some(delay) = conflict {
                tokio::time::sleep(delay).await;
                return Response::json(409, &conflict_body());
            }
            {
                let mut g = self.lock();
                if g.stalled {
                    g.polls[index].outcome = PollOutcome::Stalled;
                    return Response::Hang;
                }
                if g.webhook.is_some() {
                    g.polls[index].outcome = PollOutcome::Webhook;
                    return api_error(409, WEBHOOK_CONFLICT, None);
                }
                let batch: Vec<Value> = g
                    .pending
                    .iter()
                    .take(limit)
                    .map(|(_, u)| u.clone())
                    .collect();
                if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                    g.polls[index].answered_ids = batch
                        .iter()
                        .filter_map(|u| u["update_id"].as_i64())
                        .collect();
                    let now = Instant::now();
                    for id in g.polls[index].answered_ids.clone() {
                        g.served.entry(id).or_insert(now);
                    }
                    g.polls[index].outcome = PollOutcome::Answered;
                    drop(g);
                    self.bump();
                    return ok(Value::Array(batch));
                }
            }
            // On timeout the loop comes round once more and answers with what there is.
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
    }

    fn send(&self, params: &Value) -> Response {
        const METHOD: &str = "sendMessage";
        let chat_id = params.get("chat_id").and_then(as_i64);
        let text = params
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let parse_mode = params
            .get("parse_mode")
            .and_then(Value::as_str)
            .map(str::to_string);
        let keyboard = buttons::inline_keyboard(params);
        let mut g = self.lock();
        let shown = match g.send_faults.pop_front() {
            Some(fault) => Err(fault),
            None if chat_id.is_none() => {
                Err(SendFault::bad_request("Bad Request: chat_id is empty"))
            }
            None => match g.chat_refuses(chat_id.unwrap_or_default()) {
                Some(fault) => Err(fault),
                None => g.check_text(METHOD, chat_id.unwrap_or_default(), &text, &parse_mode),
            },
        };
        let shown = shown.and_then(|shown| keyboard.clone().map(|_| shown));
        let keyboard = keyboard.unwrap_or_default();
        let chat_id = chat_id.unwrap_or_default();
        let shown = shown.and_then(|shown| match g.flooded(chat_id) {
            Some(secs) => Err(SendFault::RetryAfter(secs)),
            None => Ok(shown),
        });
        let shown = match shown {
            Ok(shown) => shown,
            Err(fault) => return self.refuse(g, METHOD, chat_id, text, parse_mode, fault),
        };

        g.last_message_id += 1;
        let message_id = g.last_message_id;
        let chat = g.chat(chat_id);
        let message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": chat,
            "from": bot_user(),
            "text": shown,
        });
        let mut message = message;
        if let Some(markup) = &keyboard {
            message["reply_markup"] = markup.clone();
            g.keyboards.insert((chat_id, message_id), markup.clone());
        }
        g.texts.insert((chat_id, message_id), (text.clone(), shown));
        *g.sent_per_chat.entry(chat_id).or_default() += 1;
        g.sent.push(SentMessage {
            method: METHOD.to_string(),
            chat_id,
            text,
            parse_mode,
            message_id,
            keyboard,
            at: Instant::now(),
        });
        drop(g);
        self.bump();
        ok(message)
    }

    fn edit_text(&self, params: &Value) -> Response {
        const METHOD: &str = "editMessageText";
        let chat_id = params.get("chat_id").and_then(as_i64).unwrap_or_default();
        let message_id = params
            .get("message_id")
            .and_then(as_i64)
            .unwrap_or_default();
        let text = params
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let parse_mode = params
            .get("parse_mode")
            .and_then(Value::as_str)
            .map(str::to_string);
        let keyboard = buttons::inline_keyboard(params);
        let mut g = self.lock();
        let inline = params.get("inline_message_id").is_some();
        // The Bot API parses the new text before it looks for the message.
        let shown = match g.edit_faults.pop_front() {
            Some(fault) => Err(fault),
            None => match g.chat_refuses(chat_id) {
                Some(fault) => Err(fault),
                None => g.check_text(METHOD, chat_id, &text, &parse_mode),
            },
        };
        let shown = shown.and_then(|shown| keyboard.clone().map(|_| shown));
        let keyboard = keyboard.unwrap_or_default();
        let shown = shown.and_then(|shown| {
            if inline {
                return Ok(shown);
            }
            match g.texts.get(&(chat_id, message_id)) {
                None => Err(SendFault::bad_request(
                    "Bad Request: message to edit not found",
                )),
                Some((old, _))
                    if *old == text
                        && g.keyboards.get(&(chat_id, message_id)) == keyboard.as_ref() =>
                {
                    Err(SendFault::bad_request(NOT_MODIFIED))
                }
                Some(_) => Ok(shown),
            }
        });
        let shown = shown.and_then(|shown| match g.flooded(chat_id) {
            Some(secs) => Err(SendFault::RetryAfter(secs)),
            None => Ok(shown),
        });
        let shown = match shown {
            Ok(shown) => shown,
            Err(fault) => return self.refuse(g, METHOD, chat_id, text, parse_mode, fault),
        };
        *g.sent_per_chat.entry(chat_id).or_default() += 1;
        g.sent.push(SentMessage {
            method: METHOD.to_string(),
            chat_id,
            text: text.clone(),
            parse_mode,
            message_id,
            keyboard: keyboard.clone(),
            at: Instant::now(),
        });
        if inline {
            drop(g);
            self.bump();
            return ok(json!(true));
        }
        g.texts.insert((chat_id, message_id), (text, shown.clone()));
        // As on Telegram: an edit without `reply_markup` leaves the message without buttons.
        match &keyboard {
            Some(markup) => g.keyboards.insert((chat_id, message_id), markup.clone()),
            None => g.keyboards.remove(&(chat_id, message_id)),
        };
        let chat = g.chat(chat_id);
        drop(g);
        self.bump();
        let mut edited = json!({
            "message_id": message_id,
            "date": unix_now(),
            "edit_date": unix_now(),
            "chat": chat,
            "from": bot_user(),
            "text": shown,
        });
        if let Some(markup) = keyboard {
            edited["reply_markup"] = markup;
        }
        ok(edited)
    }

    /// `setWebhook`: an https URL, as Telegram requires.
    fn set_webhook_call(&self, params: &Value) -> Response {
        let url = params.get("url").and_then(Value::as_str).unwrap_or("");
        if url.is_empty() {
            self.lock().webhook = None;
            return ok(json!(true));
        }
        if !url.starts_with("https://") {
            return api_error(
                400,
                "Bad Request: bad webhook: HTTPS url must be provided for webhook",
                None,
            );
        }
        self.lock().webhook = Some(url.to_string());
        self.bump();
        ok(json!(true))
    }

    /// `deleteWebhook`, dropping the updates Telegram holds only when asked to.
    fn delete_webhook(&self, params: &Value) -> Response {
        let drop_pending = matches!(params.get("drop_pending_updates"), Some(Value::Bool(true)))
            || params.get("drop_pending_updates").and_then(Value::as_str) == Some("true");
        let mut g = self.lock();
        g.webhook = None;
        if drop_pending {
            let last = g.pending.back().map(|(id, _)| *id);
            g.pending.clear();
            if let Some(last) = last {
                g.acked_up_to = g.acked_up_to.max(last);
            }
        }
        drop(g);
        self.bump();
        ok(json!(true))
    }

    /// `setMyCommands`, with the Bot API's rules for a command (1-32 lowercase letters,
    /// digits and underscores) and its description (1-256 characters).
    fn set_commands(&self, params: &Value) -> Response {
        let commands = match params.get("commands") {
            Some(Value::Array(list)) => Value::Array(list.clone()),
            // Forms and queries carry the list as JSON text.
            Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
                Ok(list @ Value::Array(_)) => list,
                _ => return api_error(400, "Bad Request: can't parse commands JSON object", None),
            },
            _ => {
                return api_error(400, "Bad Request: parameter \"commands\" is required", None);
            }
        };
        for command in commands.as_array().into_iter().flatten() {
            let name = command.get("command").and_then(Value::as_str).unwrap_or("");
            let description = command
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("");
            let valid_name = (1..=32).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid_name {
                return api_error(400, "Bad Request: BOT_COMMAND_INVALID", None);
            }
            if !(1..=256).contains(&description.chars().count()) {
                return api_error(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID", None);
            }
        }
        self.lock().commands = commands;
        ok(json!(true))
    }

    fn refuse(
        &self,
        mut g: MutexGuard<'_, Inner>,
        method: &str,
        chat_id: i64,
        text: String,
        parse_mode: Option<String>,
        fault: SendFault,
    ) -> Response {
        g.failed.push(FailedSend {
            method: method.to_string(),
            chat_id,
            text,
            parse_mode,
            fault: fault.clone(),
            at: Instant::now(),
        });
        drop(g);
        self.bump();
        match fault {
            SendFault::RetryAfter(secs) => Response::json(429, &retry_after_body(secs)),
            SendFault::Migrated(to) => {
                api_error(400, MIGRATED, Some(json!({"migrate_to_chat_id": to})))
            }
            SendFault::Status {
                status,
                description,
            } => api_error(status, &description, None),
            SendFault::Hang => Response::Hang,
            SendFault::Reset => Response::Reset,
        }
    }
}

/// Clears [`Inner::long_poll`] when the poll it names stops waiting, however it stops.
struct LongPollGuard<'a> {
    state: &'a State,
    index: usize,
}

impl Drop for LongPollGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.state.lock();
        if g.long_poll == Some(self.index) {
            g.long_poll = None;
        }
        g.terminated.remove(&self.index);
    }
}

impl Inner {
    /// Why a send or edit in `chat_id` fails whatever its text, if it does: Telegram
    /// failing everything, the bot blocked there, the group moved.
    fn chat_refuses(&self, chat_id: i64) -> Option<SendFault> {
        if let Some(fault) = &self.every_send_fails {
            return Some(fault.clone());
        }
        if self.blocked.contains(&chat_id) {
            return Some(SendFault::blocked());
        }
        self.migrated
            .get(&chat_id)
            .map(|to| SendFault::Migrated(*to))
    }

    /// Apply a `getUpdates` offset: Telegram forgets every update below a positive offset,
    /// and all but the last `-offset` updates for a negative one.
    fn acknowledge(&mut self, offset: i64) {
        if offset > 0 {
            self.pending.retain(|(id, _)| *id >= offset);
            self.acked_up_to = self.acked_up_to.max(offset - 1);
        } else if offset < 0 {
            let keep = offset.unsigned_abs() as usize;
            while self.pending.len() > keep {
                if let Some((id, _)) = self.pending.pop_front() {
                    self.acked_up_to = self.acked_up_to.max(id);
                }
            }
        }
    }

    /// [`shown_text`], keeping a refusal as a malformed send.
    fn check_text(
        &mut self,
        method: &str,
        chat_id: i64,
        text: &str,
        parse_mode: &Option<String>,
    ) -> Result<String, SendFault> {
        shown_text(text, parse_mode.as_deref()).inspect_err(|fault| {
            self.malformed.push(FailedSend {
                method: method.to_string(),
                chat_id,
                text: text.to_string(),
                parse_mode: parse_mode.clone(),
                fault: fault.clone(),
                at: Instant::now(),
            });
        })
    }

    fn chat(&self, chat_id: i64) -> Value {
        self.chats
            .get(&chat_id)
            .cloned()
            .unwrap_or_else(|| default_chat(chat_id))
    }

    /// Whether Telegram would queue `update` for this bot now.
    fn allows(&self, update: &Value) -> bool {
        let Some(kind) = update
            .as_object()
            .and_then(|u| u.keys().find(|k| *k != "update_id"))
        else {
            return true;
        };
        match &self.allowed_updates {
            Some(kinds) if !kinds.is_empty() => kinds.iter().any(|k| k == kind),
            _ => !NOT_BY_DEFAULT.contains(&kind.as_str()),
        }
    }

    /// Seconds to wait if one more send or edit in `chat_id` now would pass a flood
    /// limit; `None` if it may go.
    fn flooded(&self, chat_id: i64) -> Option<u64> {
        let now = Instant::now();
        let limits = [
            (self.flood.per_chat, true),
            (self.flood.per_group.filter(|_| chat_id < 0), true),
            (self.flood.global, false),
        ];
        let mut wait = Duration::ZERO;
        for (rate, this_chat_only) in limits {
            let Some(rate) = rate else { continue };
            let in_window: Vec<Instant> = self
                .sent
                .iter()
                .filter(|m| !this_chat_only || m.chat_id == chat_id)
                .map(|m| m.at)
                .filter(|at| now.duration_since(*at) < rate.per)
                .collect();
            if in_window.len() >= rate.count.max(1) {
                // Room again when the oldest sends that fill the window leave it.
                let oldest = in_window[in_window.len() - rate.count.max(1)];
                wait = wait.max(rate.per.saturating_sub(now.duration_since(oldest)));
            }
        }
        // Telegram asks for whole seconds, at least one.
        (!wait.is_zero()).then(|| wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// `allowed_updates` as a list of kinds: a JSON array, or JSON text of one (forms).
fn update_kinds(value: &Value) -> Result<Vec<String>, ()> {
    let list = match value {
        Value::Array(list) => list.clone(),
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(list)) => list,
            _ => return Err(()),
        },
        _ => return Err(()),
    };
    Ok(list
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect())
}

/// `sendChatAction`: known actions only, as Telegram.
fn chat_action(params: &Value) -> Response {
    if params.get("chat_id").and_then(as_i64).is_none() {
        return api_error(400, "Bad Request: chat_id is empty", None);
    }
    let action = params.get("action").and_then(Value::as_str).unwrap_or("");
    if CHAT_ACTIONS.contains(&action) {
        ok(json!(true))
    } else {
        api_error(400, "Bad Request: wrong parameter action in request", None)
    }
}

/// The entities Telegram's clients attach: a leading `/command`, and every `@mention`.
fn entities_of(text: &str) -> Vec<Value> {
    let mut entities = Vec::new();
    let mut offset = 0;
    for (i, word) in text.split(' ').enumerate() {
        let len = utf16_len(word);
        if i == 0 && word.starts_with('/') && len > 1 {
            entities.push(json!({"type": "bot_command", "offset": 0, "length": len}));
        } else if word.starts_with('@') && len > 1 {
            entities.push(json!({"type": "mention", "offset": offset, "length": len}));
        }
        offset += len + 1;
    }
    entities
}

fn default_chat(chat_id: i64) -> Value {
    if chat_id < 0 {
        json!({"id": chat_id, "type": "group", "title": "Test group"})
    } else {
        json!({"id": chat_id, "type": "private", "first_name": "Test"})
    }
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "Hermes", "username": BOT_USERNAME})
}

/// What `getMe` returns; teloxide's `Me` requires all of these fields.
fn me() -> Value {
    let mut me = bot_user();
    let fields = json!({
        "can_join_groups": true,
        "can_read_all_group_messages": false,
        "supports_inline_queries": false,
        "can_connect_to_business": false,
        "has_main_web_app": false,
    });
    if let (Some(me), Some(fields)) = (me.as_object_mut(), fields.as_object()) {
        me.extend(fields.clone());
    }
    me
}

/// The text Telegram would show for `text` sent with `parse_mode`, or why it refuses it,
/// in the Bot API's order: the parse mode, the markup, then the length of what is left.
fn shown_text(text: &str, parse_mode: Option<&str>) -> Result<String, SendFault> {
    let mode = parse_mode.map(str::to_ascii_lowercase);
    let shown = match mode.as_deref() {
        None | Some("") | Some("none") => text.to_string(),
        Some("html") => html::parse(text).map_err(|why| {
            SendFault::bad_request(&format!("Bad Request: can't parse entities: {why}"))
        })?,
        // MarkdownV2's escaping rules are not emulated (nothing here sends it), so its
        // text is taken as shown.
        Some("markdown") | Some("markdownv2") => text.to_string(),
        Some(_) => {
            return Err(SendFault::bad_request(
                "Bad Request: unsupported parse_mode",
            ));
        }
    };
    if shown.trim().is_empty() {
        Err(SendFault::bad_request("Bad Request: message text is empty"))
    } else if utf16_len(&shown) > MAX_TEXT_LEN {
        Err(SendFault::bad_request("Bad Request: message is too long"))
    } else {
        Ok(shown)
    }
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ok(result: Value) -> Response {
    Response::json(200, &json!({"ok": true, "result": result}))
}

fn api_error(status: u16, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": status, "description": description});
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    Response::json(status, &body)
}

/// What Telegram answers for a path or method it does not know.
fn not_found() -> Response {
    api_error(404, "Not Found", None)
}

fn conflict_body() -> Value {
    json!({"ok": false, "error_code": 409, "description": CONFLICT})
}

fn retry_after_body(secs: u64) -> Value {
    json!({
        "ok": false,
        "error_code": 429,
        "description": format!("Too Many Requests: retry after {secs}"),
        "parameters": {"retry_after": secs},
    })
}

fn poll_fault_response(fault: PollFault) -> Response {
    match fault {
        PollFault::Status { status, body } => {
            let content_type = if body.trim_start().starts_with('{') {
                "application/json"
            } else {
                "text/html"
            };
            Response::with_type(status, content_type, body)
        }
        PollFault::Hang => Response::Hang,
        PollFault::Reset => Response::Reset,
        PollFault::InvalidJson => Response::with_type(
            200,
            "application/json",
            r#"{"ok":true,"result":[{"update_id":"#,
        ),
    }
}

/// Integers arrive as JSON numbers from teloxide but as strings from forms and queries.
fn as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())
}

/// The call's parameters as a JSON object, from whichever encoding the client used. Files
/// (multipart bodies) are not taken: nothing here sends any.
fn parse_params(req: &Request) -> Result<Value, String> {
    let mut params = Map::new();
    if let Some(query) = req.query() {
        params.extend(parse_form(query));
    }
    let content_type = req
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if req.body.iter().all(u8::is_ascii_whitespace) {
        // No body: parameters, if any, came in the query.
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        params.extend(parse_form(&String::from_utf8_lossy(&req.body)));
    } else {
        let body: Value =
            serde_json::from_slice(&req.body).map_err(|e| format!("invalid JSON body: {e}"))?;
        match body {
            Value::Object(map) => params.extend(map),
            _ => return Err("JSON body is not an object".into()),
        }
    }
    Ok(Value::Object(params))
}

fn parse_form(s: &str) -> Map<String, Value> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let decode = |x: &str| percent_decode(&x.replace('+', " "));
            (decode(k), Value::String(decode(v)))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide_core::{
        ApiError, RequestError,
        payloads::{EditMessageTextSetters, GetUpdatesSetters, SendMessageSetters},
        prelude::Requester,
        types::{AllowedUpdate, ChatId, MessageId, ParseMode, UpdateKind, UserId},
    };

    const T: Duration = Duration::from_secs(5);

    fn bot(fake: &FakeTelegram) -> teloxide_core::Bot {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        teloxide_core::Bot::with_client(TOKEN, client)
            .set_api_url(reqwest::Url::parse(&fake.api_url()).unwrap())
    }

    fn http() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn teloxide_round_trip() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);

        let me = bot.get_me().await.expect("getMe parses");
        assert_eq!(me.username(), BOT_USERNAME);

        let first = fake.send_text(42, 7, "hello there");
        let second = fake.send_text(-100, 8, "/ask what?");
        assert_eq!((first, second), (1, 2));

        let updates = bot.get_updates().await.expect("getUpdates parses");
        assert_eq!(updates.len(), 2);
        let UpdateKind::Message(msg) = &updates[0].kind else {
            panic!("not a message: {:?}", updates[0].kind);
        };
        assert_eq!(updates[0].id.0, 1);
        assert_eq!(msg.chat.id, ChatId(42));
        assert!(msg.chat.is_private());
        assert_eq!(msg.from.as_ref().unwrap().id, UserId(7));
        assert_eq!(msg.text(), Some("hello there"));
        let UpdateKind::Message(group_msg) = &updates[1].kind else {
            panic!("not a message");
        };
        assert!(group_msg.chat.is_group());
        assert_eq!(group_msg.from.as_ref().unwrap().id, UserId(8));

        // Answering does not consume; acknowledging does.
        assert_eq!(fake.pending_update_ids(), vec![1, 2]);
        let updates = bot.get_updates().offset(2).await.unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].id.0, 2);
        assert_eq!(fake.acked_up_to(), 1);
        assert_eq!(fake.pending_update_ids(), vec![2]);
        let updates = bot.get_updates().offset(3).timeout(0).await.unwrap();
        assert!(updates.is_empty());
        assert_eq!(fake.acked_up_to(), 2);
        assert!(fake.pending_update_ids().is_empty());
        let log = fake.get_updates_log();
        assert_eq!(log.len(), 3);
        assert_eq!(log[1].offset, Some(2));
        assert_eq!(log[1].answered_ids, vec![2]);
        assert_eq!(log[2].outcome, PollOutcome::Answered);

        let sent = bot
            .send_message(ChatId(42), "hi")
            .parse_mode(ParseMode::Html)
            .await
            .expect("sendMessage parses");
        assert_eq!(sent.text(), Some("hi"));
        assert_eq!(sent.chat.id, ChatId(42));
        assert!(sent.from.as_ref().unwrap().is_bot);
        let edited = bot
            .edit_message_text(ChatId(42), sent.id, "hi again")
            .await
            .expect("editMessageText parses");
        assert_eq!(edited.id, sent.id);
        assert_eq!(edited.text(), Some("hi again"));

        let records = fake.sent();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].method, "sendMessage");
        assert_eq!(records[0].chat_id, 42);
        assert_eq!(records[0].text, "hi");
        assert_eq!(records[0].parse_mode.as_deref(), Some("HTML"));
        assert_eq!(records[0].message_id, i64::from(sent.id.0));
        assert_eq!(records[1].method, "editMessageText");
        assert_eq!(records[1].text, "hi again");
        assert_eq!(fake.calls("sendMessage"), 1);
        assert_eq!(fake.calls("getupdates"), 3);

        bot.send_chat_action(ChatId(42), teloxide_core::types::ChatAction::Typing)
            .await
            .expect("sendChatAction");
        bot.delete_webhook().await.expect("deleteWebhook");
        assert_eq!(fake.calls("SendChatAction"), 1);
    }

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

    #[tokio::test]
    async fn telegram_rules_for_edits_and_long_texts() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let sent = bot.send_message(ChatId(5), "same").await.unwrap();
        let err = bot
            .edit_message_text(ChatId(5), sent.id, "same")
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageNotModified)),
            "{err:?}"
        );
        let err = bot
            .edit_message_text(ChatId(5), MessageId(9999), "x")
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageToEditNotFound)),
            "{err:?}"
        );
        let err = bot
            .send_message(ChatId(5), "x".repeat(MAX_TEXT_LEN + 1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageIsTooLong)),
            "{err:?}"
        );
        // Markup does not count towards the limit.
        let html = format!("<b>{}</b>", "x".repeat(MAX_TEXT_LEN));
        bot.send_message(ChatId(5), html)
            .parse_mode(ParseMode::Html)
            .await
            .unwrap();
        assert_eq!(fake.failed_sends().len(), 3);
        assert_eq!(fake.sent().len(), 2);
    }

    #[tokio::test]
    async fn long_poll_waits_for_a_push() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let poll = tokio::spawn({
            let bot = bot.clone();
            async move { bot.get_updates().timeout(10).await }
        });
        assert!(fake.wait_for_polls(1, T).await);
        assert_eq!(fake.get_updates_log()[0].outcome, PollOutcome::Waiting);
        let id = fake.send_text(1, 1, "late");
        let updates = tokio::time::timeout(T, poll)
            .await
            .expect("long poll answered on push")
            .unwrap()
            .unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].id.0 as i64, id);
    }

    #[tokio::test]
    async fn poll_faults_and_stall() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        fake.send_text(1, 1, "kept");
        fake.fail_get_updates(PollFault::conflict());
        fake.fail_get_updates(PollFault::too_many_requests(1));
        fake.fail_get_updates(PollFault::InvalidJson);
        fake.fail_get_updates(PollFault::Reset);

        let err = bot.get_updates().offset(5).await.unwrap_err();
        assert!(
            matches!(
                err,
                RequestError::Api(ApiError::TerminatedByOtherGetUpdates)
            ),
            "{err:?}"
        );
        let err = bot.get_updates().await.unwrap_err();
        assert!(matches!(err, RequestError::RetryAfter(_)), "{err:?}");
        let err = bot.get_updates().await.unwrap_err();
        assert!(matches!(err, RequestError::InvalidJson { .. }), "{err:?}");
        let err = bot.get_updates().await.unwrap_err();
        assert!(matches!(err, RequestError::Network(_)), "{err:?}");
        // The faulted poll with offset 5 acknowledged nothing.
        assert_eq!(fake.acked_up_to(), 0);
        assert_eq!(bot.get_updates().await.unwrap().len(), 1);

        fake.stall_get_updates(true);
        let stalled = tokio::spawn({
            let bot = bot.clone();
            async move { bot.get_updates().await }
        });
        assert!(fake.wait_for_polls(6, T).await);
        assert!(fake.server().wait_for_open_connections(1, T).await);
        assert_eq!(fake.get_updates_log()[5].outcome, PollOutcome::Stalled);
        stalled.abort();
        assert!(fake.server().wait_for_open_connections(0, T).await);
        fake.stall_get_updates(false);
        assert_eq!(bot.get_updates().await.unwrap().len(), 1);
    }

    /// teloxide sleeps 10 s after any 5xx before reading the body (DELAY_ON_SERVER_ERROR in
    /// teloxide-core's net/request.rs), so this test takes that long. The gateway sees the
    /// same delay on every 5xx poll.
    #[tokio::test]
    async fn bad_gateway_html_is_an_error_not_a_panic() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        fake.fail_get_updates(PollFault::bad_gateway_html());
        let err = bot.get_updates().await.unwrap_err();
        assert!(matches!(err, RequestError::InvalidJson { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn send_faults() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        fake.fail_send(SendFault::RetryAfter(3));
        fake.fail_send(SendFault::bad_entities());
        fake.fail_send(SendFault::blocked());
        let err = bot.send_message(ChatId(9), "a").await.unwrap_err();
        assert!(
            matches!(err, RequestError::RetryAfter(s) if s.seconds() == 3),
            "{err:?}"
        );
        let err = bot.send_message(ChatId(9), "b").await.unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::CantParseEntities(_))),
            "{err:?}"
        );
        let err = bot.send_message(ChatId(9), "c").await.unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::BotBlocked)),
            "{err:?}"
        );
        bot.send_message(ChatId(9), "d").await.unwrap();
        let failed = fake.failed_sends();
        assert_eq!(
            failed.iter().map(|f| f.text.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(failed[0].fault, SendFault::RetryAfter(3));
        let sent = fake.wait_for_chat_messages(9, 1, T).await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].text, "d");
    }

    #[tokio::test]
    async fn waiting_helpers_see_later_messages() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let waiter = tokio::spawn({
            let fake = fake.clone();
            async move { fake.wait_for_sent(|m| m.text.contains("needle"), T).await }
        });
        bot.send_message(ChatId(3), "hay").await.unwrap();
        bot.send_message(ChatId(3), "a needle").await.unwrap();
        let found = waiter.await.unwrap().expect("found");
        assert_eq!(found.text, "a needle");
        let none = fake
            .wait_for_sent(|m| m.chat_id == 4, Duration::from_millis(50))
            .await;
        assert!(none.is_none());
        let some = fake
            .wait_for_chat_messages(3, 5, Duration::from_millis(50))
            .await;
        assert_eq!(some.len(), 2);
    }

    #[tokio::test]
    async fn wrong_token_case_and_encodings() {
        let fake = FakeTelegram::start().await;
        let url = fake.api_url();
        let r = http()
            .post(format!("{url}/bot1:WRONG/getMe"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            json!({"ok":false,"error_code":401,"description":"Unauthorized"})
        );
        assert_eq!(fake.unauthorized_calls(), 1);

        // Lower-case method, form body, percent-encoded token.
        let r = http()
            .post(format!("{url}/bot123456%3ATEST-TOKEN/sendmessage"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("chat_id=77&text=hello+world%21")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let sent = fake.sent();
        assert_eq!(sent[0].chat_id, 77);
        assert_eq!(sent[0].text, "hello world!");

        // A method Telegram does not have is a 404, as there.
        let r = http()
            .get(format!("{url}/bot{TOKEN}/whatever?x=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            json!({"ok": false, "error_code": 404, "description": "Not Found"})
        );
        assert_eq!(fake.api_calls().last().unwrap().params, json!({"x": "1"}));
    }

    #[tokio::test]
    async fn html_telegram_cannot_parse_is_refused_and_an_unknown_parse_mode_too() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        for html in ["<b>open", "a <br> b", "<b><i>x</b></i>", "1 < 2", "Q&A"] {
            let err = bot
                .send_message(ChatId(5), html)
                .parse_mode(ParseMode::Html)
                .await
                .unwrap_err();
            assert!(
                matches!(err, RequestError::Api(ApiError::CantParseEntities(_))),
                "{html}: {err:?}"
            );
        }
        // The same text without a parse mode is only text.
        bot.send_message(ChatId(5), "<b>open").await.unwrap();
        let sent = bot
            .send_message(ChatId(5), "<b>a &amp; b</b>")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap();
        assert_eq!(sent.text(), Some("a & b"), "the text as Telegram shows it");
        // Markup whose visible text is blank is an empty message.
        let err = bot
            .send_message(ChatId(5), "<b> </b>")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::MessageTextIsEmpty)),
            "{err:?}"
        );
        // Edits are parsed as strictly.
        let err = bot
            .edit_message_text(ChatId(5), sent.id, "<i>x</b>")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Api(ApiError::CantParseEntities(_))),
            "{err:?}"
        );

        let url = fake.api_url();
        for mode in ["html5", "Markdown3"] {
            let r = http()
                .post(format!("{url}/bot{TOKEN}/sendMessage"))
                .json(&json!({"chat_id": 5, "text": "x", "parse_mode": mode}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 400);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["description"], "Bad Request: unsupported parse_mode");
        }
        // Parse modes are case-insensitive, and "" means none.
        for mode in ["html", "HTML", ""] {
            let r = http()
                .post(format!("{url}/bot{TOKEN}/sendMessage"))
                .json(&json!({"chat_id": 5, "text": "y", "parse_mode": mode}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{mode:?}");
        }
        assert_eq!(fake.sent().len(), 5);
        assert_eq!(fake.failed_sends().len(), 9);
    }

    #[tokio::test]
    async fn allowed_updates_are_kept_and_other_kinds_never_queued() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        let callback = || json!({"callback_query": {"id": "1", "from": {"id": 7, "is_bot": false, "first_name": "T"}, "chat_instance": "c"}});
        // Before any setting: every kind but the member and reaction ones.
        let early_callback = fake.push_update(callback());
        fake.push_update(json!({"message_reaction": {}}));
        assert_eq!(fake.withheld_updates().len(), 1);
        let updates = bot
            .get_updates()
            .allowed_updates([AllowedUpdate::Message])
            .timeout(0)
            .await
            .unwrap();
        // The setting does not touch updates that came before it.
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].id.0 as i64, early_callback);
        assert_eq!(fake.allowed_updates(), Some(vec!["message".to_string()]));
        // From now on a callback query is never queued, even for polls that do not say.
        fake.push_update(callback());
        let message = fake.send_text(7, 7, "hi");
        let updates = bot
            .get_updates()
            .offset(early_callback as i32 + 1)
            .timeout(0)
            .await
            .unwrap();
        let ids: Vec<i64> = updates.iter().map(|u| u.id.0 as i64).collect();
        assert_eq!(ids, [message]);
        assert_eq!(fake.withheld_updates().len(), 2);
        // An empty list is the default again.
        bot.get_updates()
            .allowed_updates([])
            .offset(message as i32 + 1)
            .timeout(0)
            .await
            .unwrap();
        let again = fake.push_update(callback());
        assert_eq!(fake.pending_update_ids(), [again]);
    }

    #[tokio::test]
    async fn a_newer_long_poll_ends_the_waiting_one_with_409() {
        let fake = FakeTelegram::start().await;
        let first = tokio::spawn({
            let bot = bot(&fake);
            async move { bot.get_updates().timeout(30).await }
        });
        assert!(fake.wait_for_polls(1, T).await);
        let second = tokio::spawn({
            let bot = bot(&fake);
            async move { bot.get_updates().timeout(30).await }
        });
        let err = tokio::time::timeout(T, first)
            .await
            .expect("the older poll is answered at once")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                err,
                RequestError::Api(ApiError::TerminatedByOtherGetUpdates)
            ),
            "{err:?}"
        );
        assert_eq!(fake.get_updates_log()[0].outcome, PollOutcome::Conflict);
        // The newer one is the consumer now.
        let id = fake.send_text(1, 1, "to the survivor");
        let updates = tokio::time::timeout(T, second)
            .await
            .expect("the newer poll still waits for updates")
            .unwrap()
            .unwrap();
        assert_eq!(updates[0].id.0 as i64, id);

        // A poll whose client left is no longer waiting: the next one meets no conflict.
        let gone = tokio::spawn({
            let bot = bot(&fake);
            async move { bot.get_updates().offset(id as i32 + 1).timeout(30).await }
        });
        assert!(fake.wait_for_polls(3, T).await);
        assert!(fake.server().wait_for_open_connections(1, T).await);
        gone.abort();
        assert!(fake.server().wait_for_open_connections(0, T).await);
        let quick = bot(&fake).get_updates().timeout(1).await;
        assert!(quick.unwrap().is_empty());
        assert_eq!(fake.get_updates_log()[2].outcome, PollOutcome::Waiting);
    }

    #[tokio::test]
    async fn a_long_poll_with_nothing_queued_is_held_for_its_timeout() {
        let fake = FakeTelegram::start().await;
        let started = Instant::now();
        let updates = bot(&fake).get_updates().timeout(1).await.unwrap();
        assert!(updates.is_empty());
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "answered after {:?}",
            started.elapsed()
        );
        let times = fake.call_times("getUpdates");
        assert_eq!(times.len(), 1);
        assert!(times[0] <= fake.get_updates_log()[0].at);
    }

    #[tokio::test]
    async fn flood_limits_answer_429_with_the_wait_until_the_window_has_room() {
        let fake = FakeTelegram::start().await;
        let bot = bot(&fake);
        // Off by default.
        for i in 0..5 {
            bot.send_message(ChatId(1), format!("burst {i}"))
                .await
                .unwrap();
        }
        fake.set_flood_limits(FloodLimits {
            per_chat: Some(Rate {
                count: 2,
                per: Duration::from_secs(3),
            }),
            ..FloodLimits::default()
        });
        let err = bot.send_message(ChatId(1), "one more").await.unwrap_err();
        let RequestError::RetryAfter(after) = err else {
            panic!("{err:?}");
        };
        assert!((1..=3).contains(&after.seconds()), "{after:?}");
        // Edits count, other chats do not.
        let id = MessageId(fake.sent_to(1)[0].message_id as i32);
        let err = bot
            .edit_message_text(ChatId(1), id, "edited")
            .await
            .unwrap_err();
        assert!(matches!(err, RequestError::RetryAfter(_)), "{err:?}");
        bot.send_message(ChatId(2), "elsewhere").await.unwrap();

        fake.set_flood_limits(FloodLimits {
            global: Some(Rate {
                count: 1,
                per: Duration::from_secs(60),
            }),
            ..FloodLimits::default()
        });
        let err = bot.send_message(ChatId(3), "anywhere").await.unwrap_err();
        let RequestError::RetryAfter(after) = err else {
            panic!("{err:?}");
        };
        assert_eq!(after.seconds(), 60);
        let refused: Vec<String> = fake
            .failed_sends()
            .into_iter()
            .filter(|f| matches!(f.fault, SendFault::RetryAfter(_)))
            .map(|f| f.method)
            .collect();
        assert_eq!(refused, ["sendMessage", "editMessageText", "sendMessage"]);
        assert_eq!(
            FloodLimits::telegram().per_chat,
            Some(Rate {
                count: 1,
                per: Duration::from_secs(1)
            })
        );
    }

    #[tokio::test]
    async fn chat_actions_and_commands_follow_the_bot_api_rules() {
        let fake = FakeTelegram::start().await;
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
        assert_eq!(
            call("sendChatAction", json!({"chat_id": 1, "action": "typing"}))
                .await
                .0,
            200
        );
        let (status, body) =
            call("sendChatAction", json!({"chat_id": 1, "action": "dancing"})).await;
        assert_eq!(status, 400);
        assert_eq!(
            body["description"],
            "Bad Request: wrong parameter action in request"
        );
        let good = json!({"commands": [{"command": "new_chat2", "description": "Start over"}]});
        assert_eq!(call("setMyCommands", good.clone()).await.0, 200);
        assert_eq!(
            call("getMyCommands", json!({})).await.1["result"],
            good["commands"]
        );
        for bad in [
            json!({"command": "New", "description": "x"}),
            json!({"command": "/new", "description": "x"}),
            json!({"command": "", "description": "x"}),
            json!({"command": "new", "description": ""}),
        ] {
            let (status, body) = call("setMyCommands", json!({"commands": [bad]})).await;
            assert_eq!(status, 400, "{body}");
        }
    }

    #[tokio::test]
    async fn a_malformed_send_fails_the_test_that_asked_for_it() {
        let fake = FakeTelegram::start().await;
        fake.fail_the_test_on_malformed_sends();
        let bot = bot(&fake);
        // A scripted refusal is the test's doing, not the sender's.
        fake.fail_send(SendFault::bad_entities());
        bot.send_message(ChatId(1), "fine").await.unwrap_err();
        assert!(fake.malformed_sends().is_empty());
        bot.send_message(ChatId(1), "<b>unclosed")
            .parse_mode(ParseMode::Html)
            .await
            .unwrap_err();
        assert_eq!(fake.malformed_sends().len(), 1);
        drop(bot);
        let clone = fake.clone();
        drop(clone);
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(fake)));
        assert!(dropped.is_err(), "the last handle panics");
    }

    #[test]
    fn helpers() {
        assert_eq!(percent_decode("a%3Ab%zz"), "a:b%zz");
    }
}
