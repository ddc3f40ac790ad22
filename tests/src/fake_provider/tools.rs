//! Tool calls, as OpenAI's chat completions have them: a scripted model that calls
//! functions ([`ProviderReply::ToolCalls`]), answered as one completion or streamed in
//! `delta.tool_calls` pieces, and OpenAI's rule that every call is answered by a `tool`
//! message right after it, which a conversation that breaks it is refused for.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::{
    ProviderReply,
    stream::{Sse, wants_stream},
};
use crate::http::Response;

/// One function call the scripted model makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model writes them: JSON text, or not.
    pub arguments: String,
}

impl ProviderReply {
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
}

impl Sse<'_> {
    /// The chunks of one call: its index, id and name with empty arguments, then the
    /// arguments a few characters at a time.
    pub(super) fn tool_call(&self, index: usize, call: &ScriptedCall) -> Vec<Value> {
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
}

/// [`ProviderReply::ToolCalls`]: one completion, or its SSE chunks to a streaming request.
pub(super) fn tool_calls(request: &Value, calls: &[ScriptedCall], usage: &Value) -> Response {
    let sse = Sse::new(request, usage);
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
                "usage": usage,
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

/// OpenAI's rule for tool turns: the `tool` messages right after an assistant message
/// with `tool_calls` answer those calls, each by its id, and all of them are answered
/// before the next message of another role. Returns its error message and `param`.
pub(super) fn tool_turn_problem(messages: &[Value]) -> Option<(String, String)> {
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{ask, post, post_as, sse_events};
    use super::super::{API_KEY, FakeProvider, ProviderReply};

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
