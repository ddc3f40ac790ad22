//! Streamed answers: server-sent events in the shape OpenAI sends them (a role chunk,
//! content deltas, a finish chunk, the usage chunk when asked for, `[DONE]`), each piece
//! of a scripted [`ProviderReply::Stream`] after its own delay, and a stream that breaks
//! off ([`ProviderReply::StreamThenReset`]).
//!
//! [`ProviderReply::Stream`]: super::ProviderReply::Stream
//! [`ProviderReply::StreamThenReset`]: super::ProviderReply::StreamThenReset

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    DEFAULT_MODEL,
    chat::{completion, cut_short},
};
use crate::http::{Chunk, Response};

/// [`ProviderReply::Stream`] (`complete`) and [`ProviderReply::StreamThenReset`].
///
/// [`ProviderReply::Stream`]: super::ProviderReply::Stream
/// [`ProviderReply::StreamThenReset`]: super::ProviderReply::StreamThenReset
pub(super) async fn stream(
    request: &Value,
    pieces: &[String],
    every: Duration,
    complete: bool,
    usage: &Value,
) -> Response {
    let total = every.saturating_mul(u32::try_from(pieces.len()).unwrap_or(u32::MAX));
    if !wants_stream(request) {
        tokio::time::sleep(total).await;
        let full = completion(request, &pieces.concat(), usage);
        return if complete {
            full
        } else {
            cut_short(full, true)
        };
    }
    let sse = Sse::new(request, usage);
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

pub(super) fn wants_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool) == Some(true)
}

/// The chunks of a streamed chat completion, in the shape OpenAI sends them.
pub(super) struct Sse<'a> {
    pub(super) model: &'a str,
    include_usage: bool,
    /// What the answer says it used: in the usage chunk of a stream, or in the completion.
    pub(super) usage: &'a Value,
}

impl<'a> Sse<'a> {
    pub(super) fn new(request: &'a Value, usage: &'a Value) -> Self {
        Sse {
            usage,
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

    pub(super) fn chunk(&self, delta: Value, finish: Value) -> Value {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    pub(super) fn role(&self) -> Value {
        self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)
    }

    pub(super) fn content(&self, piece: &str) -> Value {
        self.chunk(json!({"content": piece}), Value::Null)
    }

    pub(super) fn event(&self, chunk: &Value) -> Vec<u8> {
        format!("data: {chunk}\n\n").into_bytes()
    }

    /// The finish chunk, the usage chunk if the request asked for it, and `[DONE]`.
    pub(super) fn end(&self) -> Vec<u8> {
        self.end_with("stop")
    }

    pub(super) fn end_with(&self, finish_reason: &str) -> Vec<u8> {
        let mut out = self.event(&self.chunk(json!({}), json!(finish_reason)));
        if self.include_usage {
            out.extend(self.event(&json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [],
                "usage": self.usage,
            })));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::super::tests::{ask, client, post, sse_events};
    use super::super::{FakeProvider, ProviderReply};

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
}
