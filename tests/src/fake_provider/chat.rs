//! Chat completions: the answer with a text (one JSON object, or its SSE events to a
//! request that asks for a stream), the default echo, OpenAI's 400 for a body it would
//! refuse, and a completion whose body is cut short.

use serde_json::{Value, json};

use super::{
    stream::{Sse, wants_stream},
    tools::tool_turn_problem,
};
use crate::http::Response;

/// Why OpenAI would refuse this chat-completions body (400), if it would.
pub(super) fn request_problem(body: &Value) -> Option<Response> {
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

/// `full` with only half its body sent, then a close (`reset`) or nothing more.
pub(super) fn cut_short(full: Response, reset: bool) -> Response {
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

pub(super) fn echo(body: &Value) -> String {
    format!("echo: {}", last_user_text(body).unwrap_or_default())
}

/// Content may be a string or, in the multi-part form, a list of `{type, text}` parts.
pub(super) fn last_user_text(body: &Value) -> Option<String> {
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
/// set `"stream": true`; either reports `usage` (a stream only when asked to).
pub(super) fn completion(request: &Value, content: &str, usage: &Value) -> Response {
    let sse = Sse::new(request, usage);
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
                "usage": usage,
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    use super::super::tests::{ask, post};
    use super::super::{API_KEY, FakeProvider, ProviderReply};

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
}
