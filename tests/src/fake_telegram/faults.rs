//! The misbehaviours a test scripts: `getUpdates` calls that fail, hang or stall, sends
//! and edits that Telegram refuses (one by one, or all for a while), flood control that
//! answers 429 with `retry_after`, and a server that stops listening and comes back; and
//! how a refused send is answered and logged.

use std::{
    sync::MutexGuard,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{FailedSend, FakeTelegram, Inner, Response, State, api_error, updates::conflict_body};

const MIGRATED: &str = "Bad Request: group chat was upgraded to a supergroup chat";

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

    pub(super) fn bad_request(description: &str) -> Self {
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

impl FakeTelegram {
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
}

impl State {
    /// Logs a send or edit refused with `fault` and answers it as Telegram does.
    pub(super) fn refuse(
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

impl Inner {
    /// Why a send or edit in `chat_id` fails whatever its text, if it does: Telegram
    /// failing everything, the bot blocked there, the group moved.
    pub(super) fn chat_refuses(&self, chat_id: i64) -> Option<SendFault> {
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

    /// Seconds to wait if one more send or edit in `chat_id` now would pass a flood
    /// limit; `None` if it may go.
    pub(super) fn flooded(&self, chat_id: i64) -> Option<u64> {
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

fn retry_after_body(secs: u64) -> Value {
    json!({
        "ok": false,
        "error_code": 429,
        "description": format!("Too Many Requests: retry after {secs}"),
        "parameters": {"retry_after": secs},
    })
}

pub(super) fn poll_fault_response(fault: PollFault) -> Response {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{T, bot};
    use super::super::*;
    use teloxide_core::{
        ApiError, RequestError,
        payloads::GetUpdatesSetters,
        prelude::Requester,
        types::{ChatId, MessageId},
    };

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
}
