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
//! (see `html`); an unknown `parse_mode` or method is refused; `allowed_updates` is kept
//! from call to call and updates of other kinds are never queued; a long poll is held
//! until an update arrives or its `timeout` runs out, and a newer long poll ends the one
//! waiting with 409 as Telegram's server does; and, when a test asks for it, flood control
//! answers 429 with `retry_after`. Inline keyboards are kept per message as Telegram keeps
//! them (an edit of the text without `reply_markup` removes them), a test presses a button
//! as a given user ([`FakeTelegram::press`]), and `answerCallbackQuery` accepts each press's
//! id once (see `buttons`).
//!
//! This file is the server and its state: the handle, the call log, routing each method
//! to its area, and the bot's own profile (`getMe`, its command menu). Each area of the
//! API is a module of its own: `updates` (queuing and polling, offsets, the webhook),
//! `sending` (sends, edits, chat actions, and their records), `chats` (what users do
//! in them, blocking, migration), `faults` (the scripted misbehaviours and flood
//! control), `buttons`, `files`, `uploads` (files the bot sends), `albums` (media
//! groups, one update per member, and long pastes split), `replies` (a reply carrying the
//! message and the part it quotes), `reactions` (only the emoji bots may use), `rich`
//! (rich messages, refused when a test says so, and deleting a message), `topics` (forums
//! and private chats with topics, and where each send landed), and `params` (how a call's
//! parameters arrive).

mod albums;
mod buttons;
mod chats;
mod faults;
mod files;
mod html;
mod params;
mod reactions;
mod replies;
mod rich;
mod sending;
mod topics;
mod updates;
mod uploads;

pub use albums::{Album, MAX_MESSAGE_TEXT, split_paste};
pub use buttons::CallbackAnswer;
pub use faults::{FloodLimits, PollFault, Rate, SendFault};
pub use files::{Body, FakeFile, FileDownload, MAX_DOWNLOAD_BYTES};
pub use reactions::ALLOWED_REACTIONS;
pub use rich::MAX_RICH_LEN;
pub use sending::{FailedSend, MAX_TEXT_LEN, SentMessage};
pub use topics::ChatActionRecord;
pub use updates::{PollOutcome, PollRecord};
pub use uploads::Upload;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::http::{HttpServer, Request, Response};
use params::{as_i64, parse_params, percent_decode};

/// The only token the fake accepts.
pub const TOKEN: &str = "123456:TEST-TOKEN";
/// The bot's own user id (the part of [`TOKEN`] before the colon, as with real tokens).
pub const BOT_ID: i64 = 123456;
pub const BOT_USERNAME: &str = "hermes_test_bot";

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
    /// Until when a further conflict is answered only after `updates::CONFLICT_THROTTLE`.
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
    /// How many entries of `sent` each chat has, watched per chat: a benchmark's many
    /// waiting chats wake only for their own chat, not all of them for every call (a
    /// wake-up storm whose cost grew with how slowly answers came, and took the CPU from
    /// the gateway it measured).
    sent_per_chat: HashMap<i64, watch::Sender<usize>>,
    /// Files the bot may fetch (`getFile`, then the download path).
    files: Vec<files::FakeFile>,
    last_file: u64,
    downloads: Vec<files::FileDownload>,
    /// While set, every download is reset before a byte is sent.
    downloads_fail: bool,
    /// Reactions set on messages (see [`reactions`]).
    reactions: reactions::Reactions,
    /// Rich messages and deleted messages (see [`rich`]).
    rich: rich::Rich,
    /// Forums and private chats with topics: each one's topics (thread ids).
    topics: HashMap<i64, HashSet<i64>>,
    /// Forum topics the bot created, by chat and thread.
    bot_topics: HashSet<(i64, i64)>,
    /// The topic of each message written or sent in one, by chat and message id.
    threads: HashMap<(i64, i64), i64>,
    /// Chat actions accepted, in order.
    actions: Vec<ChatActionRecord>,
    /// Files the bot sent (`sendDocument`, `sendPhoto`).
    uploads: uploads::Uploads,
    /// Users' messages, for replies to them.
    remembered: replies::Remembered,
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
        // Files come as multipart bodies, which only the upload methods take.
        if req
            .header("content-type")
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("multipart/form-data"))
        {
            return match method.to_ascii_lowercase().as_str() {
                "senddocument" | "sendphoto" => self.upload(method, &req),
                _ => api_error(400, "Bad Request: unexpected multipart body", None),
            };
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
            "setmessagereaction" => self.set_reaction(&params),
            "sendrichmessage" => self.send_rich(&params),
            "deletemessage" => self.delete_message_call(&params),
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
            "sendchataction" => self.chat_action(&params),
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

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide_core::{
        payloads::{GetUpdatesSetters, SendMessageSetters},
        prelude::Requester,
        types::{ChatId, ParseMode, UpdateKind, UserId},
    };

    pub(super) const T: Duration = Duration::from_secs(5);

    pub(super) fn bot(fake: &FakeTelegram) -> teloxide_core::Bot {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        teloxide_core::Bot::with_client(TOKEN, client)
            .set_api_url(reqwest::Url::parse(&fake.api_url()).unwrap())
    }

    pub(super) fn http() -> reqwest::Client {
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
}
