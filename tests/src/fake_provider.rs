//! A fake OpenAI-compatible chat-completions provider, so worker and gateway tests can run
//! the whole request path offline and script the provider failures seen in production:
//! quota errors (the seed 402 body), rate limits, hangs, connections reset mid-body, bodies
//! that never finish, garbage JSON, and a provider that stops accepting connections.
//!
//! With nothing scripted it echoes the last user message, so a test can tell which request
//! produced which answer. Every request is logged and tests wait on the log instead of
//! sleeping.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::http::{HttpServer, Request, Response};

/// The 402 body the real provider returned when the daily quota was exhausted by requests
/// still in flight; the gateway must classify it without retrying forever.
pub const SEED_402_BODY: &str = r#"{"error":{"message":"Insufficient available balance for new requests. Daily quota: $200.00, spent: $199.8100, in use by pending requests: $0.1900 (available: $0.0000). Please wait for ongoing requests to complete.","type":"insufficient_balance","code":"daily_limit_busy"}}"#;

/// The model name used when a request does not say.
pub const DEFAULT_MODEL: &str = "fake-model";

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
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
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
        let body = if req.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&req.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&req.body).into_owned()))
        };
        let path = req.path_only().to_string();
        let is_chat =
            req.method.eq_ignore_ascii_case("POST") && path.ends_with("/chat/completions");
        let scripted = {
            let mut g = self.lock();
            g.requests.push(ProviderRequest {
                at: Instant::now(),
                path: path.clone(),
                authorization: req.header("authorization").map(str::to_string),
                body: body.clone(),
            });
            if is_chat && body.is_object() {
                let keyed = last_user_text(&body)
                    .and_then(|text| g.by_message.get_mut(&text))
                    .and_then(VecDeque::pop_front);
                keyed.or_else(|| g.script.pop_front())
            } else {
                None
            }
        };
        self.changed.send_replace(());

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
        if !body.is_object() {
            return openai_error(400, "We could not parse the JSON body of your request.");
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
            ProviderReply::ResetMidBody | ProviderReply::NeverFinishBody => {
                let Response::Full {
                    status,
                    headers,
                    body: full,
                } = completion(&body, &echo(&body))
                else {
                    unreachable!("completion() always builds a full response");
                };
                // Half a JSON object is never valid, and the declared length promises far
                // more than will ever come, so clients must notice either way.
                let body_prefix = full[..full.len() / 2].to_vec();
                let declared_len = full.len() + 4096;
                if matches!(reply, ProviderReply::ResetMidBody) {
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
            ProviderReply::Reset => Response::Reset,
            ProviderReply::RawBody(raw) => Response::with_type(200, "application/json", raw),
            ProviderReply::Json(value) => Response::json(200, &value),
        }
    }
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
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL);
    let usage = json!({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2});
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return Response::json(
            200,
            &json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }],
                "usage": usage,
            }),
        );
    }

    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    // Word-sized deltas, so clients really have to concatenate.
    for piece in content.split_inclusive(' ') {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    if include_usage {
        events.push(json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [],
            "usage": usage,
        }));
    }
    let mut sse: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    sse.push_str("data: [DONE]\n\n");
    Response::with_type(200, "text/event-stream", sse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
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
            .bearer_auth("sk-test")
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
        assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer sk-test"));
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
        let client = reqwest::Client::builder()
            .no_proxy()
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
}
