//! What goes over the wire to an OpenAI-compatible `/chat/completions` and what comes
//! back in one piece: the request body (history with tool calls and results, the offered
//! tools, `stream`) and the parsing of a non-streamed answer.
//!
//! Kept apart from the HTTP loop in `mod.rs` because it is pure: every quirk a provider
//! has shown (`content: null` beside `tool_calls`, arguments sent as an object instead
//! of a string, a missing call id) is handled and tested here, without a server.

use hermes_protocol::{ChatMessage, Role, ToolCall, Usage};
use serde_json::{Map, Value, json};

use super::classify::shorten;

/// A usable answer: text, tool calls, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    /// The functions the model asked to call; empty for a final answer.
    pub tool_calls: Vec<ToolCall>,
    /// The model the provider says answered, else the one asked for.
    pub model: String,
    /// What the call used, if the provider said.
    pub usage: Option<Usage>,
}

/// The JSON body of one request. `tools` are OpenAI function definitions and are sent
/// only when there are some: a provider that does not support tools must keep working
/// for a deployment that configured none.
/// `images` (`data:` URLs) go with the last user message, as `image_url` content parts
/// after its text. A streamed request asks for the usage chunk OpenAI sends last
/// (`stream_options.include_usage`): without it a stream says nothing of what it used.
pub fn request_body(
    model: &str,
    messages: &[ChatMessage],
    tools: &[Value],
    stream: bool,
    images: &[String],
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let mut messages: Vec<Value> = messages.iter().map(message_json).collect();
    if !images.is_empty()
        && let Some(last_user) = messages
            .iter_mut()
            .rev()
            .find(|m| m["role"] == json!("user"))
    {
        let text = last_user["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut parts = Vec::new();
        if !text.is_empty() {
            parts.push(json!({"type": "text", "text": text}));
        }
        parts.extend(
            images
                .iter()
                .map(|url| json!({"type": "image_url", "image_url": {"url": url}})),
        );
        last_user["content"] = Value::Array(parts);
    }
    body.insert("messages".into(), Value::Array(messages));
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools.to_vec()));
    }
    if stream {
        body.insert("stream".into(), Value::Bool(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn message_json(message: &ChatMessage) -> Value {
    let mut m = Map::new();
    m.insert("role".into(), json!(message.role.as_str()));
    if message.role == Role::Assistant && !message.tool_calls.is_empty() {
        // OpenAI's own form for an assistant turn that only calls tools; an empty string
        // is refused by some compatible servers.
        let content = if message.content.is_empty() {
            Value::Null
        } else {
            json!(message.content)
        };
        m.insert("content".into(), content);
        let calls = message
            .tool_calls
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect();
        m.insert("tool_calls".into(), Value::Array(calls));
    } else {
        m.insert("content".into(), json!(message.content));
    }
    if let Some(id) = &message.tool_call_id {
        m.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(m)
}

/// `choices[0].message` of a non-streamed answer, or why the body is not a usable one.
pub fn parse_completion(body: &str, asked_model: &str) -> Result<Completion, String> {
    let value: Value = serde_json::from_str(body)
        .map_err(|_| format!("the answer is not JSON: {}", shorten(body)))?;
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("the answer has no choices")?;
    let message = choice
        .get("message")
        .ok_or("the answer's first choice has no message")?;
    let text = message.get("content").and_then(Value::as_str);
    let tool_calls = match message.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(i, call)| tool_call(call, i))
            .collect(),
        Some(_) => return Err("the answer's tool_calls is not a list".into()),
    };
    if text.is_none() && tool_calls.is_empty() {
        return Err("the answer's first choice has no text content".into());
    }
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(asked_model)
        .to_string();
    Ok(Completion {
        text: text.unwrap_or_default().trim().to_string(),
        tool_calls,
        model,
        usage: super::usage::read(value.get("usage")),
    })
}

/// One entry of `message.tool_calls`. Whatever is missing stays empty: a call without a
/// usable name still goes back to the model as an error result, which it can act on,
/// where refusing the whole answer would cost a retry and tell it nothing.
fn tool_call(call: &Value, position: usize) -> ToolCall {
    let function = call.get("function");
    ToolCall {
        id: call
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| synthetic_id(position)),
        name: function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        arguments: arguments_text(function.and_then(|f| f.get("arguments"))),
    }
}

/// A call id for providers that send none; unique within one answer, which is all a
/// `tool` message needs to be matched with its call.
pub fn synthetic_id(position: usize) -> String {
    format!("call_{position}")
}

/// Arguments are specified as JSON text; some servers send the object itself.
fn arguments_text(arguments: Option<&Value>) -> String {
    match arguments {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_parse_and_bad_bodies_are_protocol_errors() {
        let ok = r#"{"model":"m-2","choices":[{"message":{"role":"assistant","content":" hi "}}]}"#;
        assert_eq!(
            parse_completion(ok, "m").unwrap(),
            Completion {
                text: "hi".into(),
                tool_calls: vec![],
                model: "m-2".into(),
                usage: None,
            }
        );
        assert!(
            parse_completion("<<nope>>", "m")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            parse_completion(r#"{"choices":[]}"#, "m")
                .unwrap_err()
                .contains("no choices")
        );
        assert!(parse_completion(r#"{"choices":[{"message":{"content":null}}]}"#, "m").is_err());
        assert!(
            parse_completion(
                r#"{"choices":[{"message":{"content":null,"tool_calls":{"a":1}}}]}"#,
                "m"
            )
            .is_err()
        );
    }

    #[test]
    fn tool_calls_with_null_content_are_an_answer() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[
            {"id":"call_a","type":"function","function":{"name":"calc__add","arguments":"{\"a\":1}"}},
            {"type":"function","function":{"name":"calc__sleep","arguments":{"secs":2}}},
            {"id":"call_c","type":"function","function":{"name":"calc__env"}}
        ]},"finish_reason":"tool_calls"}]}"#;
        let c = parse_completion(body, "asked").unwrap();
        assert_eq!(c.text, "");
        assert_eq!(c.model, "asked");
        assert_eq!(
            c.tool_calls,
            vec![
                ToolCall::new("call_a", "calc__add", r#"{"a":1}"#),
                ToolCall::new("call_1", "calc__sleep", r#"{"secs":2}"#),
                ToolCall::new("call_c", "calc__env", ""),
            ]
        );
    }

    #[test]
    fn request_bodies_carry_tool_calls_results_and_tools_only_when_any() {
        let mut assistant = ChatMessage::new(Role::Assistant, "");
        assistant
            .tool_calls
            .push(ToolCall::new("call_1", "calc__add", r#"{"a":2,"b":3}"#));
        let messages = vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "2+3?"),
            assistant,
            ChatMessage::tool_result("call_1", "5"),
        ];
        let body = request_body("m", &messages, &[], false, &[]);
        assert_eq!(
            body,
            json!({"model": "m", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "2+3?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "calc__add", "arguments": "{\"a\":2,\"b\":3}"}}
                ]},
                {"role": "tool", "content": "5", "tool_call_id": "call_1"},
            ]})
        );
        let tools = vec![json!({"type": "function", "function": {"name": "calc__add"}})];
        let body = request_body("m", &messages[..2], &tools, true, &[]);
        assert_eq!(body["tools"], json!(tools));
        assert_eq!(body["stream"], json!(true));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn images_go_with_the_last_user_message_as_parts_after_its_text() {
        let messages = vec![
            ChatMessage::new(Role::User, "[photo: a.jpg] earlier"),
            ChatMessage::new(Role::Assistant, "ok"),
            ChatMessage::new(Role::User, "what is this?"),
        ];
        let url = "data:image/jpeg;base64,AAAA".to_string();
        let body = request_body("m", &messages, &[], false, std::slice::from_ref(&url));
        assert_eq!(
            body["messages"][0]["content"],
            json!("[photo: a.jpg] earlier")
        );
        assert_eq!(
            body["messages"][2]["content"],
            json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": url}},
            ])
        );
    }
}
