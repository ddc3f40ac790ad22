//! A fake OpenAI-compatible chat-completions provider, so worker and gateway tests can run
//! the whole request path offline and script the provider failures seen in production:
//! quota errors (the seed 402 body), rate limits, hangs, connections reset mid-body, bodies
//! that never finish, garbage JSON, and a provider that stops accepting connections.
//!
//! With nothing scripted it echoes the last user message, so a test can tell which request
//! produced which answer. Every request is logged and tests wait on the log instead of
//! sleeping.
//!
//! It is as strict as OpenAI's API where a lax fake would hide a bug: it wants
//! `Authorization: Bearer <key>` when it has a key (by default [`API_KEY`], which the
//! harness configures, so every test checks the header); it refuses a conversation whose
//! tool turns do not pair up (a `tool` message that answers no call of the assistant
//! message before it, or a call no `tool` message answers) with OpenAI's 400; and it
//! streams scripted tool calls ([`ProviderReply::ToolCalls`]) as OpenAI does, in
//! `delta.tool_calls` pieces, when the request asks for a stream. A refused request is
//! logged but does not use up a scripted reply.
//!
//! This file is the server: the scripted replies, the request log, and routing each
//! request to its endpoint. The rest is by endpoint: `auth` (the key, checked as OpenAI
//! checks it), `chat` (completions as one JSON object, and the requests OpenAI refuses),
//! `stream` (SSE), `tools` (tool calls and the pairing rule for tool turns), `audio`
//! (transcriptions and image parts), `usage` (what answers say they used, and the count of
//! chat requests).

mod audio;
mod auth;
mod chat;
mod stream;
mod tools;
mod usage;

pub use audio::{FormPart, image_urls};
pub use tools::ScriptedCall;
pub use usage::{DEFAULT_USAGE, Reported};

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::http::{HttpServer, Request, Response};
use chat::{completion, cut_short, echo, last_user_text, request_problem};
use stream::stream;
use tools::tool_calls;

/// The 402 body the real provider returned when the daily quota was exhausted by requests
/// still in flight; the gateway must classify it without retrying forever.
pub const SEED_402_BODY: &str = r#"{"error":{"message":"Insufficient available balance for new requests. Daily quota: $200.00, spent: $199.8100, in use by pending requests: $0.1900 (available: $0.0000). Please wait for ongoing requests to complete.","type":"insufficient_balance","code":"daily_limit_busy"}}"#;

/// The model name used when a request does not say.
pub const DEFAULT_MODEL: &str = "fake-model";

/// The key [`FakeProvider::start`] wants, and the one the harness configures.
pub const API_KEY: &str = "sk-test-key";

/// One scripted answer, consumed by one chat-completions request.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderReply {
    /// 200 with this assistant content (streamed as SSE if the request asked for `stream`).
    Text(String),
    /// This status, extra headers and body, verbatim.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Never answer.
    Hang,
    /// Wait this long, then answer with the default echo.
    Delay(Duration),
    /// Send the head and part of the body, then close the connection.
    ResetMidBody,
    /// Send the head and part of the body, then keep the connection open forever.
    NeverFinishBody,
    /// Reset the connection before answering anything.
    Reset,
    /// 200 with this raw body (e.g. invalid JSON).
    RawBody(String),
    /// 200 with this JSON.
    Json(Value),
    /// A reply that arrives piece by piece. To a request with `"stream": true`: SSE
    /// chunks as [`ProviderReply::Text`] streams them, the role chunk at once, then one
    /// piece per chunk each `every` after the one before, then the finish chunk (and the
    /// usage chunk if asked for) and `[DONE]`. To any other request: the joined pieces as
    /// one ordinary completion, after the same total time (`every` × pieces).
    Stream {
        pieces: Vec<String>,
        every: Duration,
    },
    /// An answer that calls these functions (`finish_reason: "tool_calls"`): one
    /// completion with `message.tool_calls`, or, to a request with `"stream": true`, the
    /// SSE chunks OpenAI sends, each call's id and name first and its arguments in pieces.
    ToolCalls(Vec<ScriptedCall>),
    /// Like [`ProviderReply::Stream`], but after the last piece the connection closes:
    /// no finish chunk, no `[DONE]`, no end of the chunked body (a stream that breaks).
    /// To a request without `stream`: the same wait, then half a completion body and a
    /// close ([`ProviderReply::ResetMidBody`]).
    StreamThenReset {
        pieces: Vec<String>,
        every: Duration,
    },
}

impl ProviderReply {
    /// This status and body, labelled JSON if the body looks like JSON, plain text if not.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        let body = body.into();
        let content_type = if body.trim_start().starts_with(['{', '[']) {
            "application/json"
        } else {
            "text/plain"
        };
        ProviderReply::Status {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    /// The seed 402 "insufficient balance" answer.
    pub fn seed_402() -> Self {
        Self::status(402, SEED_402_BODY)
    }

    /// A 429 with a `Retry-After` header, as OpenAI-compatible providers send it.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ProviderReply::Status {
            status: 429,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Retry-After".into(), retry_after_secs.to_string()),
            ],
            body: json!({"error": {
                "message": "Rate limit reached, please retry later.",
                "type": "rate_limit_exceeded",
                "code": "rate_limit_exceeded",
            }})
            .to_string(),
        }
    }
}

/// One request as the provider received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderRequest {
    pub at: Instant,
    pub path: String,
    pub authorization: Option<String>,
    /// The JSON body; a string holding the raw text if it was not JSON; null if empty.
    pub body: Value,
}

impl ProviderRequest {
    /// The text of the last `user` message, as the default echo sees it.
    pub fn last_user_text(&self) -> Option<String> {
        last_user_text(&self.body)
    }

    pub fn model(&self) -> Option<&str> {
        self.body.get("model")?.as_str()
    }
}

/// A handle to a running fake provider; clones share the server, which stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct FakeProvider {
    state: Arc<State>,
    server: Arc<HttpServer>,
}

struct State {
    /// The key requests must carry; `None`: any or none.
    key: Option<String>,
    inner: Mutex<Inner>,
    /// Bumped on every new request so waits re-check without sleeping.
    changed: watch::Sender<()>,
}

struct Inner {
    script: VecDeque<ProviderReply>,
    /// Replies for requests whose last user message is the key, used before `script`:
    /// lets tests with many concurrent chats script each message's fate.
    by_message: std::collections::HashMap<String, VecDeque<ProviderReply>>,
    requests: Vec<ProviderRequest>,
    /// Scripted answers for transcription requests.
    transcriptions: VecDeque<ProviderReply>,
    /// The model refuses image parts.
    no_vision: bool,
    /// What answers say they used (OpenAI's `usage` object).
    usage: Value,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            script: VecDeque::new(),
            by_message: std::collections::HashMap::new(),
            requests: Vec::new(),
            transcriptions: VecDeque::new(),
            no_vision: false,
            usage: DEFAULT_USAGE.to_json(),
        }
    }
}

impl FakeProvider {
    /// A provider that wants [`API_KEY`].
    pub async fn start() -> FakeProvider {
        FakeProvider::start_with_key(Some(API_KEY)).await
    }

    /// A provider that wants `key` (`None`: one that takes requests without a key, like a
    /// local model server).
    pub async fn start_with_key(key: Option<&str>) -> FakeProvider {
        let state = Arc::new(State {
            key: key.map(str::to_string),
            inner: Mutex::new(Inner::default()),
            changed: watch::Sender::new(()),
        });
        let handler_state = state.clone();
        let server = HttpServer::start(move |req| {
            let state = handler_state.clone();
            async move { state.handle(req).await }
        })
        .await;
        FakeProvider {
            state,
            server: Arc::new(server),
        }
    }

    /// `http://127.0.0.1:PORT/v1`: what an OpenAI client takes as its base URL.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.server.url())
    }

    pub fn server(&self) -> &HttpServer {
        &self.server
    }

    /// Queue a scripted answer for the next chat-completions request.
    pub fn push(&self, reply: ProviderReply) {
        self.state.lock().script.push_back(reply);
    }

    /// Queue the same answer `n` times.
    pub fn push_n(&self, reply: ProviderReply, n: usize) {
        let mut g = self.state.lock();
        g.script.extend(std::iter::repeat_n(reply, n));
    }

    /// Queues `reply` for the next request whose last user message is exactly `message`.
    pub fn push_for(&self, message: &str, reply: ProviderReply) {
        let mut g = self.state.lock();
        g.by_message
            .entry(message.to_string())
            .or_default()
            .push_back(reply);
    }

    /// Scripted answers not consumed yet.
    pub fn pending_replies(&self) -> usize {
        self.state.lock().script.len()
    }

    /// Every request received (any path), in order.
    pub fn requests(&self) -> Vec<ProviderRequest> {
        self.state.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().requests.len()
    }

    /// Wait until at least `n` requests arrived; `false` on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before checking so a request between the check and the await counts.
        let mut rx = self.state.changed.subscribe();
        loop {
            if self.request_count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
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
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, req: Request) -> Response {
        if req.path_only().ends_with("/audio/transcriptions") {
            return self.transcription(req).await;
        }
        let body = if req.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&req.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&req.body).into_owned()))
        };
        let path = req.path_only().to_string();
        let is_chat =
            req.method.eq_ignore_ascii_case("POST") && path.ends_with("/chat/completions");
        let (no_vision, usage) = {
            let g = self.lock();
            (g.no_vision, g.usage.clone())
        };
        let refusal = self
            .key_problem(req.header("authorization"))
            .or_else(|| is_chat.then(|| request_problem(&body)).flatten())
            .or_else(|| {
                is_chat
                    .then(|| audio::content_problem(&body, no_vision))
                    .flatten()
            });
        let scripted = {
            let mut g = self.lock();
            g.requests.push(ProviderRequest {
                at: Instant::now(),
                path: path.clone(),
                authorization: req.header("authorization").map(str::to_string),
                body: body.clone(),
            });
            if refusal.is_none() && is_chat {
                let keyed = last_user_text(&body)
                    .and_then(|text| g.by_message.get_mut(&text))
                    .and_then(VecDeque::pop_front);
                keyed.or_else(|| g.script.pop_front())
            } else {
                None
            }
        };
        self.changed.send_replace(());
        if let Some(refusal) = refusal {
            return refusal;
        }

        if !is_chat {
            if req.method.eq_ignore_ascii_case("GET") && path.ends_with("/models") {
                return Response::json(
                    200,
                    &json!({"object": "list", "data": [
                        {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "fake"}
                    ]}),
                );
            }
            return openai_error(404, &format!("Unknown request URL: {} {path}", req.method));
        }
        let reply = match scripted {
            None => return completion(&body, &echo(&body), &usage),
            Some(reply) => reply,
        };
        match reply {
            ProviderReply::Text(content) => completion(&body, &content, &usage),
            ProviderReply::Status {
                status,
                headers,
                body,
            } => Response::new(status, headers, body),
            ProviderReply::Hang => Response::Hang,
            ProviderReply::Delay(delay) => {
                tokio::time::sleep(delay).await;
                completion(&body, &echo(&body), &usage)
            }
            ProviderReply::ResetMidBody => cut_short(completion(&body, &echo(&body), &usage), true),
            ProviderReply::NeverFinishBody => {
                cut_short(completion(&body, &echo(&body), &usage), false)
            }
            ProviderReply::Reset => Response::Reset,
            ProviderReply::RawBody(raw) => Response::with_type(200, "application/json", raw),
            ProviderReply::Json(value) => Response::json(200, &value),
            ProviderReply::ToolCalls(calls) => tool_calls(&body, &calls, &usage),
            ProviderReply::Stream { pieces, every } => {
                stream(&body, &pieces, every, true, &usage).await
            }
            ProviderReply::StreamThenReset { pieces, every } => {
                stream(&body, &pieces, every, false, &usage).await
            }
        }
    }
}

fn openai_error(status: u16, message: &str) -> Response {
    Response::json(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "code": null}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const T: Duration = Duration::from_secs(5);

    /// A client that sends the key the fake wants, as the worker does.
    pub(super) fn client() -> reqwest::Client {
        builder().build().unwrap()
    }

    pub(super) fn builder() -> reqwest::ClientBuilder {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {API_KEY}").parse().unwrap(),
        );
        reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
    }

    pub(super) fn ask(text: &str) -> Value {
        json!({"model": "m1", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": text},
        ]})
    }

    pub(super) async fn post(
        fake: &FakeProvider,
        body: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        client()
            .post(format!("{}/chat/completions", fake.base_url()))
            .json(body)
            .send()
            .await
    }

    /// The `data:` payloads of an SSE body, each with when its chunk arrived.
    pub(super) async fn sse_events(
        mut r: reqwest::Response,
    ) -> (Vec<(Instant, String)>, reqwest::Result<()>) {
        let mut events = Vec::new();
        let mut pending = String::new();
        loop {
            match r.chunk().await {
                Ok(Some(bytes)) => {
                    let at = Instant::now();
                    pending.push_str(&String::from_utf8_lossy(&bytes));
                    while let Some(end) = pending.find("\n\n") {
                        let event: String = pending.drain(..end + 2).collect();
                        if let Some(data) = event.trim_end().strip_prefix("data: ") {
                            events.push((at, data.to_string()));
                        }
                    }
                }
                Ok(None) => return (events, Ok(())),
                Err(e) => return (events, Err(e)),
            }
        }
    }

    #[tokio::test]
    async fn scripted_in_order() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::seed_402());
        fake.push(ProviderReply::rate_limited(7));
        fake.push_n(
            ProviderReply::Status {
                status: 503,
                headers: vec![],
                body: "down".into(),
            },
            2,
        );
        fake.push(ProviderReply::Text("scripted".into()));
        fake.push(ProviderReply::RawBody("{not json".into()));
        fake.push(ProviderReply::Json(json!({"weird": true})));
        assert_eq!(fake.pending_replies(), 7);

        let r = post(&fake, &ask("a")).await.unwrap();
        assert_eq!(r.status().as_u16(), 402);
        assert_eq!(r.text().await.unwrap(), SEED_402_BODY);
        let r = post(&fake, &ask("b")).await.unwrap();
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        for _ in 0..2 {
            let r = post(&fake, &ask("c")).await.unwrap();
            assert_eq!(r.status().as_u16(), 503);
            assert_eq!(r.text().await.unwrap(), "down");
        }
        let v: Value = post(&fake, &ask("d")).await.unwrap().json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "scripted");
        let r = post(&fake, &ask("e")).await.unwrap();
        assert_eq!(r.text().await.unwrap(), "{not json");
        let v: Value = post(&fake, &ask("f")).await.unwrap().json().await.unwrap();
        assert_eq!(v, json!({"weird": true}));
        let v: Value = post(&fake, &ask("g")).await.unwrap().json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "echo: g");
        assert_eq!(fake.request_count(), 8);
        assert_eq!(fake.pending_replies(), 0);
    }

    #[tokio::test]
    async fn hang_times_out_and_connection_is_released() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::Hang);
        let client = builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let err = client
            .post(format!("{}/chat/completions", fake.base_url()))
            .json(&ask("x"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert!(fake.wait_for_requests(1, T).await);
        // The client dropped its connection, so the hanging one on our side ends too.
        assert!(fake.server().wait_for_open_connections(0, T).await);
    }

    #[tokio::test]
    async fn refuse_and_accept_connections() {
        let fake = FakeProvider::start().await;
        fake.refuse_connections().await;
        let err = post(&fake, &ask("x")).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert_eq!(fake.request_count(), 0);
        fake.accept_connections().await;
        let v: Value = post(&fake, &ask("back"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "echo: back");
    }

    #[tokio::test]
    async fn other_paths_and_bad_json() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::Text("kept for the real request".into()));
        let r = client()
            .get(format!("{}/models", fake.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = client()
            .post(format!("{}/chat/completions", fake.base_url()))
            .body("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(fake.requests()[1].body, json!("nope"));
        assert_eq!(fake.pending_replies(), 1);
    }

    pub(super) async fn post_as(
        fake: &FakeProvider,
        authorization: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/chat/completions", fake.base_url()))
            .json(body);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let r = request.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}
