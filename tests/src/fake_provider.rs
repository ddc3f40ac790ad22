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

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::http::{Chunk, HttpServer, Request, Response};

mod audio;

pub use audio::{FormPart, image_urls};

/// The 402 body the real provider returned when the daily quota was exhausted by requests
/// still in flight; the gateway must classify it without retrying forever.
pub const SEED_402_BODY: &str = r#"{"error":{"message":"Insufficient available balance for new requests. Daily quota: $200.00, spent: $199.8100, in use by pending requests: $0.1900 (available: $0.0000). Please wait for ongoing requests to complete.","type":"insufficient_balance","code":"daily_limit_busy"}}"#;

/// The model name used when a request does not say.
pub const DEFAULT_MODEL: &str = "fake-model";

/// The key [`FakeProvider::start`] wants, and the one the harness configures.
pub const API_KEY: &str = "sk-test-key";

/// One function call the scripted model makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model writes them: JSON text, or not.
    pub arguments: String,
}

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

    /// An answer calling `calls`, each `(id, function name, arguments text)`.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Self {
        ProviderReply::ToolCalls(
            calls
                .iter()
                .map(|(id, name, arguments)| ScriptedCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments: arguments.to_string(),
                })
                .collect(),
        )
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

#[derive(Default)]
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
        let no_vision = self.lock().no_vision;
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
            None => return completion(&body, &echo(&body)),
            Some(reply) => reply,
        };
        match reply {
            ProviderReply::Text(content) => completion(&body, &content),
            ProviderReply::Status {
                status,
                headers,
                body,
            } => Response::new(status, headers, body),
            ProviderReply::Hang => Response::Hang,
            ProviderReply::Delay(delay) => {
                tokio::time::sleep(delay).await;
                completion(&body, &echo(&body))
            }
            ProviderReply::ResetMidBody => cut_short(completion(&body, &echo(&body)), true),
            ProviderReply::NeverFinishBody => cut_short(completion(&body, &echo(&body)), false),
            ProviderReply::Reset => Response::Reset,
            ProviderReply::RawBody(raw) => Response::with_type(200, "application/json", raw),
            ProviderReply::Json(value) => Response::json(200, &value),
            ProviderReply::ToolCalls(calls) => tool_calls(&body, &calls),
            ProviderReply::Stream { pieces, every } => stream(&body, &pieces, every, true).await,
            ProviderReply::StreamThenReset { pieces, every } => {
                stream(&body, &pieces, every, false).await
            }
        }
    }
}

impl State {
    /// `POST /v1/audio/transcriptions` (see [`audio`]).
    async fn transcription(&self, req: Request) -> Response {
        let path = req.path_only().to_string();
        let checked = if req.method.eq_ignore_ascii_case("POST") {
            audio::transcription_request(&req)
        } else {
            Err(openai_error(405, "Method not allowed"))
        };
        let refusal = self.key_problem(req.header("authorization"));
        let (logged, said) = match &checked {
            Ok((logged, said)) => (logged.clone(), said.clone()),
            Err(_) => (
                Value::String(String::from_utf8_lossy(&req.body).into_owned()),
                String::new(),
            ),
        };
        let scripted = {
            let mut g = self.lock();
            g.requests.push(ProviderRequest {
                at: Instant::now(),
                path,
                authorization: req.header("authorization").map(str::to_string),
                body: logged,
            });
            if refusal.is_none() && checked.is_ok() {
                g.transcriptions.pop_front()
            } else {
                None
            }
        };
        self.changed.send_replace(());
        if let Some(refusal) = refusal {
            return refusal;
        }
        if let Err(refusal) = checked {
            return refusal;
        }
        match scripted {
            None => audio::transcript(&said),
            Some(ProviderReply::Text(text)) => audio::transcript(&text),
            Some(ProviderReply::Status {
                status,
                headers,
                body,
            }) => Response::new(status, headers, body),
            Some(ProviderReply::Hang) => Response::Hang,
            Some(ProviderReply::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                audio::transcript(&said)
            }
            Some(ProviderReply::Reset) => Response::Reset,
            Some(ProviderReply::RawBody(raw)) => Response::with_type(200, "application/json", raw),
            Some(ProviderReply::Json(value)) => Response::json(200, &value),
            Some(other) => openai_error(500, &format!("not a transcription answer: {other:?}")),
        }
    }

    /// OpenAI's 401 for a missing or wrong key, if this provider wants one.
    fn key_problem(&self, authorization: Option<&str>) -> Option<Response> {
        let key = self.key.as_deref()?;
        let sent = authorization.and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let message = match sent {
            Some(sent) if sent == key => return None,
            Some(sent) => format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                masked(sent)
            ),
            None => "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .into(),
        };
        let code = if sent.is_some() {
            json!("invalid_api_key")
        } else {
            Value::Null
        };
        Some(Response::json(
            401,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
        ))
    }
}

/// A key as OpenAI echoes a wrong one: its ends, the middle starred.
fn masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

/// Why OpenAI would refuse this chat-completions body (400), if it would.
fn request_problem(body: &Value) -> Option<Response> {
    let invalid = |message: &str, param: Value| {
        Some(Response::json(
            400,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}),
        ))
    };
    if !body.is_object() {
        return invalid(
            "We could not parse the JSON body of your request.",
            Value::Null,
        );
    }
    if body.get("model").and_then(Value::as_str).is_none() {
        return invalid("you must provide a model parameter", Value::Null);
    }
    let messages = match body.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return invalid("[] is too short - 'messages'", json!("messages")),
        _ => return invalid("Missing required parameter: 'messages'.", json!("messages")),
    };
    let (message, param) = tool_turn_problem(messages)?;
    invalid(&message, json!(param))
}

/// OpenAI's rule for tool turns: the `tool` messages right after an assistant message
/// with `tool_calls` answer those calls, each by its id, and all of them are answered
/// before the next message of another role. Returns its error message and `param`.
fn tool_turn_problem(messages: &[Value]) -> Option<(String, String)> {
    // The calls of the assistant message whose answers may follow, and those answered.
    let mut open: Option<(Vec<String>, HashSet<String>)> = None;
    let unanswered = |open: &Option<(Vec<String>, HashSet<String>)>, at: usize| {
        let (ids, answered) = open.as_ref()?;
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !answered.contains(*id))
            .map(String::as_str)
            .collect();
        (!missing.is_empty()).then(|| {
            (
                format!(
                    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                    missing.join(", ")
                ),
                format!("messages.[{at}].role"),
            )
        })
    };
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if role == "tool" {
            let Some((ids, answered)) = open.as_mut() else {
                return Some((
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.".into(),
                    format!("messages.[{i}].role"),
                ));
            };
            let id = message
                .get("tool_call_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !ids.iter().any(|known| known == id) {
                return Some((
                    format!(
                        "Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' of previous message."
                    ),
                    format!("messages.[{i}].tool_call_id"),
                ));
            }
            answered.insert(id.to_string());
            continue;
        }
        if let Some(problem) = unanswered(&open, i) {
            return Some(problem);
        }
        let ids: Vec<String> = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|call| call.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        open = (role == "assistant" && !ids.is_empty()).then(|| (ids, HashSet::new()));
    }
    unanswered(&open, messages.len())
}

/// `full` with only half its body sent, then a close (`reset`) or nothing more.
fn cut_short(full: Response, reset: bool) -> Response {
    let Response::Full {
        status,
        headers,
        body: full,
    } = full
    else {
        return full;
    };
    // Half a JSON object is never valid, and the declared length promises far more than
    // will ever come, so clients must notice either way.
    let body_prefix = full[..full.len() / 2].to_vec();
    let declared_len = full.len() + 4096;
    if reset {
        Response::PartialBodyThenReset {
            status,
            headers,
            declared_len,
            body_prefix,
        }
    } else {
        Response::PartialBodyThenHang {
            status,
            headers,
            declared_len,
            body_prefix,
        }
    }
}

/// [`ProviderReply::Stream`] (`complete`) and [`ProviderReply::StreamThenReset`].
async fn stream(request: &Value, pieces: &[String], every: Duration, complete: bool) -> Response {
    let total = every.saturating_mul(u32::try_from(pieces.len()).unwrap_or(u32::MAX));
    if !wants_stream(request) {
        tokio::time::sleep(total).await;
        let full = completion(request, &pieces.concat());
        return if complete {
            full
        } else {
            cut_short(full, true)
        };
    }
    let sse = Sse::new(request);
    let mut chunks = vec![Chunk {
        after: Duration::ZERO,
        data: sse.event(&sse.role()),
    }];
    chunks.extend(pieces.iter().map(|piece| Chunk {
        after: every,
        data: sse.event(&sse.content(piece)),
    }));
    if complete {
        chunks.push(Chunk {
            after: Duration::ZERO,
            data: sse.end(),
        });
    }
    Response::Stream {
        status: 200,
        headers: vec![("Content-Type".into(), "text/event-stream".into())],
        chunks,
        complete,
    }
}

fn wants_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool) == Some(true)
}

/// The chunks of a streamed chat completion, in the shape OpenAI sends them.
struct Sse<'a> {
    model: &'a str,
    include_usage: bool,
}

impl<'a> Sse<'a> {
    fn new(request: &'a Value) -> Self {
        Sse {
            model: request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_MODEL),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    fn role(&self) -> Value {
        self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)
    }

    fn content(&self, piece: &str) -> Value {
        self.chunk(json!({"content": piece}), Value::Null)
    }

    /// The chunks of one call: its index, id and name with empty arguments, then the
    /// arguments a few characters at a time.
    fn tool_call(&self, index: usize, call: &ScriptedCall) -> Vec<Value> {
        let mut head = json!({"tool_calls": [{
            "index": index, "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }]});
        if index == 0 {
            head["role"] = json!("assistant");
            head["content"] = Value::Null;
        }
        let mut chunks = vec![self.chunk(head, Value::Null)];
        let chars: Vec<char> = call.arguments.chars().collect();
        for piece in chars.chunks(5) {
            let piece: String = piece.iter().collect();
            chunks.push(self.chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
        chunks
    }

    fn event(&self, chunk: &Value) -> Vec<u8> {
        format!("data: {chunk}\n\n").into_bytes()
    }

    /// The finish chunk, the usage chunk if the request asked for it, and `[DONE]`.
    fn end(&self) -> Vec<u8> {
        self.end_with("stop")
    }

    fn end_with(&self, finish_reason: &str) -> Vec<u8> {
        let mut out = self.event(&self.chunk(json!({}), json!(finish_reason)));
        if self.include_usage {
            out.extend(self.event(&json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [],
                "usage": usage(),
            })));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }
}

fn usage() -> Value {
    json!({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
}

fn openai_error(status: u16, message: &str) -> Response {
    Response::json(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "code": null}}),
    )
}

fn echo(body: &Value) -> String {
    format!("echo: {}", last_user_text(body).unwrap_or_default())
}

/// Content may be a string or, in the multi-part form, a list of `{type, text}` parts.
fn last_user_text(body: &Value) -> Option<String> {
    let message = body
        .get("messages")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    match message.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

/// A successful answer with `content`: one JSON object, or an SSE stream if the request
/// set `"stream": true`.
fn completion(request: &Value, content: &str) -> Response {
    let sse = Sse::new(request);
    if !wants_stream(request) {
        return Response::json(
            200,
            &json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": sse.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }],
                "usage": usage(),
            }),
        );
    }
    let mut body = sse.event(&sse.role());
    // Word-sized deltas, so clients really have to concatenate.
    for piece in content.split_inclusive(' ') {
        body.extend(sse.event(&sse.content(piece)));
    }
    body.extend(sse.end());
    Response::with_type(200, "text/event-stream", body)
}

/// [`ProviderReply::ToolCalls`]: one completion, or its SSE chunks to a streaming request.
fn tool_calls(request: &Value, calls: &[ScriptedCall]) -> Response {
    let sse = Sse::new(request);
    if !wants_stream(request) {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        return Response::json(
            200,
            &json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": sse.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": null, "tool_calls": calls},
                    "finish_reason": "tool_calls",
                }],
                "usage": usage(),
            }),
        );
    }
    let mut body = Vec::new();
    for (index, call) in calls.iter().enumerate() {
        for chunk in sse.tool_call(index, call) {
            body.extend(sse.event(&chunk));
        }
    }
    body.extend(sse.end_with("tool_calls"));
    Response::with_type(200, "text/event-stream", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// A client that sends the key the fake wants, as the worker does.
    fn client() -> reqwest::Client {
        builder().build().unwrap()
    }

    fn builder() -> reqwest::ClientBuilder {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {API_KEY}").parse().unwrap(),
        );
        reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
    }

    fn ask(text: &str) -> Value {
        json!({"model": "m1", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": text},
        ]})
    }

    async fn post(fake: &FakeProvider, body: &Value) -> reqwest::Result<reqwest::Response> {
        client()
            .post(format!("{}/chat/completions", fake.base_url()))
            .json(body)
            .send()
            .await
    }

    #[tokio::test]
    async fn default_echo() {
        let fake = FakeProvider::start().await;
        let r = post(&fake, &ask("ping")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "echo: ping");
        assert_eq!(v["model"], "m1");
        assert_eq!(v["object"], "chat.completion");
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].path, "/v1/chat/completions");
        assert_eq!(
            reqs[0].authorization.as_deref(),
            Some(format!("Bearer {API_KEY}").as_str())
        );
        assert_eq!(reqs[0].last_user_text().as_deref(), Some("ping"));
        assert_eq!(reqs[0].model(), Some("m1"));
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
    async fn broken_bodies() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::ResetMidBody);
        fake.push(ProviderReply::NeverFinishBody);
        fake.push(ProviderReply::Reset);

        let r = post(&fake, &ask("x")).await.expect("head arrives");
        assert_eq!(r.status().as_u16(), 200);
        let err = r.bytes().await.unwrap_err();
        assert!(err.is_body() || err.is_decode(), "{err:?}");

        let r = post(&fake, &ask("y")).await.expect("head arrives");
        let body = tokio::time::timeout(Duration::from_millis(300), r.bytes()).await;
        assert!(body.is_err(), "the body never finishes");

        let err = post(&fake, &ask("z")).await.unwrap_err();
        assert!(err.is_request() || err.is_connect(), "{err:?}");
    }

    #[tokio::test]
    async fn delay_then_echo_and_streaming() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::Delay(Duration::from_millis(50)));
        let started = Instant::now();
        let v: Value = post(&fake, &ask("slow"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(v["choices"][0]["message"]["content"], "echo: slow");

        let mut req = ask("two words");
        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true});
        let r = post(&fake, &req).await.unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = r.text().await.unwrap();
        let mut content = String::new();
        let mut saw_usage = false;
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            saw_usage |= v.get("usage").is_some();
            if let Some(piece) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                content.push_str(piece);
            }
        }
        assert_eq!(content, "echo: two words");
        assert!(saw_usage);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    /// The `data:` payloads of an SSE body, each with when its chunk arrived.
    async fn sse_events(mut r: reqwest::Response) -> (Vec<(Instant, String)>, reqwest::Result<()>) {
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

    fn delta(data: &str) -> Option<String> {
        let v: Value = serde_json::from_str(data).ok()?;
        Some(v.pointer("/choices/0/delta/content")?.as_str()?.to_string())
    }

    fn pieces() -> Vec<String> {
        ["Hel", "lo ", "world"].map(String::from).to_vec()
    }

    const EVERY: Duration = Duration::from_millis(60);

    #[tokio::test]
    async fn stream_sends_each_piece_after_its_delay() {
        let fake = FakeProvider::start().await;
        let client = client();
        let url = format!("{}/chat/completions", fake.base_url());
        fake.push(ProviderReply::Stream {
            pieces: pieces(),
            every: EVERY,
        });
        let mut req = ask("stream please");
        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true});
        let sent = Instant::now();
        let r = client.post(&url).json(&req).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let (events, end) = sse_events(r).await;
        end.expect("a complete stream");
        let data: Vec<&str> = events.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(data.len(), 7, "{data:?}");
        assert_eq!(
            delta(data[0]).as_deref(),
            Some(""),
            "the role chunk comes first"
        );
        let deltas: Vec<String> = data[1..4].iter().filter_map(|d| delta(d)).collect();
        assert_eq!(deltas, pieces());
        for (i, (at, _)) in events[1..4].iter().enumerate() {
            assert!(
                at.duration_since(sent) >= EVERY * (i as u32 + 1),
                "piece {i} came early"
            );
        }
        let finish: Value = serde_json::from_str(data[4]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage: Value = serde_json::from_str(data[5]).unwrap();
        assert!(usage.get("usage").is_some());
        assert_eq!(data[6], "[DONE]");

        // Without `stream`, the joined text as one completion after the same time.
        fake.push(ProviderReply::Stream {
            pieces: pieces(),
            every: EVERY,
        });
        let sent = Instant::now();
        let v: Value = client
            .post(&url)
            .json(&ask("all at once"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(sent.elapsed() >= EVERY * 3);
        assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        // Both answers went over one kept-alive connection.
        assert_eq!(fake.server().connections_accepted(), 1);
    }

    #[tokio::test]
    async fn stream_then_reset_breaks_off_after_the_pieces() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::StreamThenReset {
            pieces: pieces(),
            every: EVERY,
        });
        let mut req = ask("stream please");
        req["stream"] = json!(true);
        let sent = Instant::now();
        let r = post(&fake, &req).await.expect("the head arrives");
        assert_eq!(r.status().as_u16(), 200);
        let (events, end) = sse_events(r).await;
        let err = end.expect_err("the body breaks off");
        assert!(err.is_body() || err.is_decode(), "{err:?}");
        assert!(sent.elapsed() >= EVERY * 3);
        let deltas: Vec<String> = events.iter().filter_map(|(_, d)| delta(d)).collect();
        assert_eq!(deltas.concat(), "Hello world");
        assert!(
            events
                .iter()
                .all(|(_, d)| d != "[DONE]" && !d.contains("\"stop\"")),
            "no finish chunk, no [DONE]: {events:?}"
        );

        // Without `stream`: the wait, then a body cut short.
        fake.push(ProviderReply::StreamThenReset {
            pieces: pieces(),
            every: EVERY,
        });
        let sent = Instant::now();
        let r = post(&fake, &ask("all at once"))
            .await
            .expect("head arrives");
        let err = r.bytes().await.unwrap_err();
        assert!(err.is_body() || err.is_decode(), "{err:?}");
        assert!(sent.elapsed() >= EVERY * 3);
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
    async fn post_as(
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

    #[tokio::test]
    async fn a_missing_or_wrong_key_is_refused_as_openai_does() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::Text("kept for the keyed request".into()));
        let (status, body) = post_as(&fake, None, &ask("x")).await;
        assert_eq!(status, 401);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("You didn't provide an API key."),
            "{body}"
        );
        assert_eq!(body["error"]["code"], Value::Null);
        let (status, body) = post_as(&fake, Some("Bearer sk-wrong-key-123"), &ask("x")).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "invalid_api_key");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("sk-*********-123"), "{message}");
        // Basic auth, or the key without its scheme, is no bearer token.
        for header in ["Basic c2stdGVzdC1rZXk6", API_KEY] {
            assert_eq!(post_as(&fake, Some(header), &ask("x")).await.0, 401);
        }
        let (status, body) = post_as(&fake, Some(&format!("Bearer {API_KEY}")), &ask("x")).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "kept for the keyed request"
        );
        assert_eq!(fake.request_count(), 5, "refused requests are logged too");

        // A provider without a key takes requests without one.
        let open = FakeProvider::start_with_key(None).await;
        assert_eq!(post_as(&open, None, &ask("x")).await.0, 200);
    }

    fn with_messages(messages: Value) -> Value {
        json!({"model": "m1", "messages": messages})
    }

    fn call(id: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": "calc__add", "arguments": "{}"}})
    }

    #[tokio::test]
    async fn tool_turns_that_do_not_pair_up_are_refused_as_openai_does() {
        let fake = FakeProvider::start().await;
        fake.push(ProviderReply::Text("for the valid one".into()));
        let user = json!({"role": "user", "content": "add"});
        let asks = |ids: &[&str]| {
            json!({"role": "assistant", "content": null,
                   "tool_calls": ids.iter().map(|id| call(id)).collect::<Vec<_>>()})
        };
        let answer = |id: &str| json!({"role": "tool", "tool_call_id": id, "content": "5"});
        for (messages, error, param) in [
            (
                json!([user, answer("c1")]),
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                "messages.[1].role",
            ),
            (
                // Answers belong right after their calls, not after a later message.
                json!([user, asks(&["c1"]), answer("c1"), {"role": "assistant", "content": "5"}, answer("c1")]),
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                "messages.[4].role",
            ),
            (
                json!([user, asks(&["c1"]), answer("c2")]),
                "Invalid parameter: 'tool_call_id' of 'c2' not found in 'tool_calls' of previous message.",
                "messages.[2].tool_call_id",
            ),
            (
                json!([user, asks(&["c1", "c2"]), answer("c2"), {"role": "user", "content": "and?"}]),
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: c1",
                "messages.[3].role",
            ),
            (
                json!([user, asks(&["c1"])]),
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: c1",
                "messages.[2].role",
            ),
        ] {
            let (status, body) = post_as(
                &fake,
                Some(&format!("Bearer {API_KEY}")),
                &with_messages(messages.clone()),
            )
            .await;
            assert_eq!(status, 400, "{messages}");
            assert_eq!(body["error"]["message"], error, "{messages}");
            assert_eq!(body["error"]["param"], param, "{messages}");
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
        assert_eq!(
            fake.pending_replies(),
            1,
            "refusals use up no scripted reply"
        );
        // Two rounds of calls, the same id reused in the second, all answered: fine.
        let valid = json!([user, asks(&["c1", "c2"]), answer("c2"), answer("c1"),
                           asks(&["c1"]), answer("c1"), {"role": "assistant", "content": "5"},
                           {"role": "user", "content": "thanks"}]);
        let v: Value = post(&fake, &with_messages(valid))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "for the valid one");
        // Nor are missing models and messages let through.
        for body in [
            json!({"messages": [user]}),
            json!({"model": "m"}),
            with_messages(json!([])),
        ] {
            assert_eq!(
                post(&fake, &body).await.unwrap().status().as_u16(),
                400,
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn scripted_tool_calls_stream_as_openai_streams_them() {
        let fake = FakeProvider::start().await;
        let script = || {
            ProviderReply::tool_calls(&[
                ("call_a", "calc__add", r#"{"a":2,"b":3}"#),
                ("call_b", "calc__env", "{}"),
            ])
        };
        fake.push(script());
        let v: Value = post(&fake, &ask("add"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0],
            json!({"id": "call_a", "type": "function",
                   "function": {"name": "calc__add", "arguments": r#"{"a":2,"b":3}"#}})
        );

        fake.push(script());
        let mut req = ask("add");
        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true});
        let r = post(&fake, &req).await.unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let (events, end) = sse_events(r).await;
        end.unwrap();
        let data: Vec<&str> = events.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(data.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        // Stitch the calls together the way a client must: by index.
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut pieces_of_a = 0;
        for chunk in &chunks {
            for piece in chunk
                .pointer("/choices/0/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let index = piece["index"].as_u64().unwrap() as usize;
                if calls.len() <= index {
                    calls.resize(index + 1, Default::default());
                }
                if let Some(id) = piece["id"].as_str() {
                    calls[index].0 = id.into();
                    calls[index].1 = piece["function"]["name"].as_str().unwrap().into();
                } else {
                    assert!(
                        piece["function"].get("name").is_none(),
                        "the name comes once"
                    );
                }
                calls[index].2 += piece["function"]["arguments"].as_str().unwrap();
                pieces_of_a += usize::from(index == 0);
            }
        }
        assert_eq!(
            calls,
            [
                (
                    "call_a".into(),
                    "calc__add".into(),
                    r#"{"a":2,"b":3}"#.into()
                ),
                ("call_b".into(), "calc__env".into(), "{}".into()),
            ]
        );
        assert!(pieces_of_a > 2, "arguments arrive in several pieces");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        assert!(chunks[chunks.len() - 1].get("usage").is_some());
        assert!(
            chunks[..chunks.len() - 2]
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );
    }
}
