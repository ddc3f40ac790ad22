//! Streamed answers: Server-Sent Events as OpenAI-compatible APIs send them when asked
//! for `"stream": true`, turned into text pieces as they arrive and, at the end, the same
//! [`Completion`] a non-streamed answer gives.
//!
//! Two pure parts, so every way a stream can go wrong is tested without a server:
//! [`Decoder`] cuts bytes (in chunks of any size, a line possibly split across two) into
//! the `data` of each event; [`Assembler`] reads those events, hands out content pieces
//! and stitches streamed tool calls together by `index` (id and name come first, the
//! arguments in pieces), and keeps the usage the last chunk carries when it was asked for.

use std::collections::BTreeMap;

use hermes_protocol::{ToolCall, Usage};
use serde_json::Value;

use super::body::{Completion, synthetic_id};
use super::classify::shorten;

/// An event stream's bytes in, each complete event's `data` out.
#[derive(Default)]
pub struct Decoder {
    /// Bytes after the last line break seen.
    partial: Vec<u8>,
    /// `data:` lines of the event being read.
    data: Vec<String>,
}

impl Decoder {
    /// Feeds one chunk; returns the data of every event it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            self.line(line, &mut events);
        }
        events
    }

    /// The stream ended: an event not closed by a blank line still counts (some servers
    /// end with `data: [DONE]` and no blank line).
    pub fn finish(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            let line = String::from_utf8_lossy(&rest);
            self.line(line.trim_end_matches('\r'), &mut events);
        }
        self.line("", &mut events);
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<String>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                events.push(self.data.join("\n"));
                self.data.clear();
            }
            return;
        }
        // Comments (`: keep-alive`), `event:`, `id:` and `retry:` carry nothing we use.
        if let Some(value) = line.strip_prefix("data:") {
            self.data
                .push(value.strip_prefix(' ').unwrap_or(value).to_string());
        }
    }
}

/// What one event meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A piece of the answer's text, to show as it grows.
    Text(String),
    /// Nothing to show (a role announcement, a tool-call piece, usage).
    Nothing,
    /// `[DONE]`: the answer is complete.
    Done,
}

/// Why a stream gave no answer, in the taxonomy's terms.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamError {
    /// An event that is not a chat-completion chunk: the protocol failure of a stream.
    Unreadable(String),
    /// The provider reported an error inside the stream, or the stream stopped before
    /// the answer was complete: worth another attempt.
    Broken(String),
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Reads chunk events and builds the answer they spell.
pub struct Assembler {
    model: String,
    text: String,
    calls: BTreeMap<u64, PartialCall>,
    saw_choice: bool,
    finished: bool,
    /// From the usage chunk (`stream_options.include_usage`); some servers put it on the
    /// finish chunk instead: the last one seen counts.
    usage: Option<Usage>,
}

impl Assembler {
    pub fn new(asked_model: &str) -> Self {
        Assembler {
            model: asked_model.to_string(),
            text: String::new(),
            calls: BTreeMap::new(),
            saw_choice: false,
            finished: false,
            usage: None,
        }
    }

    pub fn event(&mut self, data: &str) -> Result<Step, StreamError> {
        if data.trim() == "[DONE]" {
            return Ok(Step::Done);
        }
        let value: Value = serde_json::from_str(data).map_err(|_| {
            StreamError::Unreadable(format!("a stream event is not JSON: {}", shorten(data)))
        })?;
        if let Some(error) = value.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| error.to_string());
            return Err(StreamError::Broken(format!(
                "the provider reported an error mid-stream: {}",
                shorten(&message)
            )));
        }
        if let Some(model) = value.get("model").and_then(Value::as_str) {
            self.model = model.to_string();
        }
        if let Some(usage) = super::usage::read(value.get("usage")) {
            self.usage = Some(usage);
        }
        let choices = match value.get("choices") {
            Some(Value::Array(choices)) => choices,
            // A usage-only chunk (`stream_options.include_usage`) has an empty list; one
            // without the key at all is no chunk.
            None | Some(Value::Null) if value.get("usage").is_some() => return Ok(Step::Nothing),
            _ => {
                return Err(StreamError::Unreadable(format!(
                    "a stream event has no choices: {}",
                    shorten(data)
                )));
            }
        };
        let Some(choice) = choices.first() else {
            return Ok(Step::Nothing);
        };
        self.saw_choice = true;
        if choice.get("finish_reason").is_some_and(|r| !r.is_null()) {
            self.finished = true;
        }
        let Some(delta) = choice.get("delta") else {
            return Ok(Step::Nothing);
        };
        if let Some(Value::Array(calls)) = delta.get("tool_calls") {
            for (position, call) in calls.iter().enumerate() {
                self.tool_call_piece(call, position);
            }
        }
        match delta.get("content").and_then(Value::as_str) {
            Some(piece) if !piece.is_empty() => {
                self.text.push_str(piece);
                Ok(Step::Text(piece.to_string()))
            }
            _ => Ok(Step::Nothing),
        }
    }

    fn tool_call_piece(&mut self, call: &Value, position: usize) {
        // `index` says which call a piece belongs to; a server that omits it sends each
        // call whole, in order.
        let index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let entry = self.calls.entry(index).or_default();
        if let Some(id) = call.get("id").and_then(Value::as_str)
            && entry.id.is_empty()
        {
            entry.id = id.to_string();
        }
        let function = call.get("function");
        // Some servers repeat the name in every piece: it is taken once, not appended.
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str)
            && entry.name.is_empty()
        {
            entry.name = name.to_string();
        }
        match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(piece)) => entry.arguments.push_str(piece),
            Some(Value::Null) | None => {}
            Some(other) => entry.arguments.push_str(&other.to_string()),
        }
    }

    /// The answer, once the stream has ended; `done` says whether `[DONE]` came.
    pub fn finish(self, done: bool) -> Result<Completion, StreamError> {
        if !done && !self.finished {
            return Err(StreamError::Broken(
                "the stream ended before the answer was complete".into(),
            ));
        }
        if !self.saw_choice {
            return Err(StreamError::Unreadable(
                "the stream carried no answer".into(),
            ));
        }
        let tool_calls = self
            .calls
            .into_values()
            .enumerate()
            .map(|(position, call)| ToolCall {
                id: if call.id.is_empty() {
                    synthetic_id(position)
                } else {
                    call.id
                },
                name: call.name,
                arguments: call.arguments,
            })
            .collect();
        Ok(Completion {
            text: self.text.trim().to_string(),
            tool_calls,
            model: self.model,
            usage: self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stream: &str, chunk_size: usize) -> (Vec<String>, Result<Completion, StreamError>) {
        let mut decoder = Decoder::default();
        let mut assembler = Assembler::new("asked");
        let mut pieces = Vec::new();
        let mut done = false;
        let mut datas = Vec::new();
        for chunk in stream.as_bytes().chunks(chunk_size) {
            datas.extend(decoder.push(chunk));
        }
        datas.extend(decoder.finish());
        for data in datas {
            match assembler.event(&data) {
                Ok(Step::Text(t)) => pieces.push(t),
                Ok(Step::Nothing) => {}
                Ok(Step::Done) => {
                    done = true;
                    break;
                }
                Err(e) => return (pieces, Err(e)),
            }
        }
        (pieces, assembler.finish(done))
    }

    const TEXT: &str = "data: {\"model\":\"m-9\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
        : keep-alive\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"}}]}\r\n\r\n\
        event: message\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"world\"},\"finish_reason\":null}]}\n\n\
        data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn text_arrives_in_pieces_whatever_the_chunking() {
        for size in [1, 2, 7, 64, TEXT.len()] {
            let (pieces, completion) = run(TEXT, size);
            assert_eq!(pieces, ["Hello ", "world"], "chunk size {size}");
            let c = completion.unwrap();
            assert_eq!(c.text, "Hello world");
            assert_eq!(c.model, "m-9");
            assert!(c.tool_calls.is_empty());
            let usage = c.usage.expect("the usage chunk");
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (2, 1));
        }
    }

    #[test]
    fn tool_calls_are_assembled_by_index() {
        let stream = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"calc__add","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","function":{"name":"calc__sleep","arguments":"{\"secs\""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"calc__add","arguments":"2,\"b\":3}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":":1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"function":{"name":"calc__env"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]
        .iter()
        .map(|d| format!("data: {d}\n\n"))
        .collect::<String>()
            + "data: [DONE]\n\n";
        let (pieces, completion) = run(&stream, 5);
        assert!(pieces.is_empty());
        let c = completion.unwrap();
        assert_eq!(c.text, "");
        assert_eq!(
            c.tool_calls,
            vec![
                ToolCall::new("call_a", "calc__add", r#"{"a":2,"b":3}"#),
                ToolCall::new("call_b", "calc__sleep", r#"{"secs":1}"#),
                ToolCall::new("call_2", "calc__env", ""),
            ]
        );
    }

    #[test]
    fn a_stream_cut_short_is_broken_and_garbage_is_unreadable() {
        let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
        let (pieces, completion) = run(cut, 8);
        assert_eq!(pieces, ["Hel"]);
        assert!(matches!(completion, Err(StreamError::Broken(_))));

        let (_, completion) = run("data: {not json\n\n", 4);
        assert!(matches!(completion, Err(StreamError::Unreadable(_))));

        let (_, completion) = run("data: {\"object\":\"weird\"}\n\n", 4);
        assert!(matches!(completion, Err(StreamError::Unreadable(_))));

        let (_, completion) = run("data: [DONE]\n\n", 4);
        assert!(matches!(completion, Err(StreamError::Unreadable(_))));

        let error = "data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
        let (_, completion) = run(error, 100);
        assert_eq!(
            completion,
            Err(StreamError::Broken(
                "the provider reported an error mid-stream: overloaded".into()
            ))
        );
    }

    #[test]
    fn a_finish_reason_without_done_is_complete_and_a_last_line_counts() {
        let stream =
            "data: {\"choices\":[{\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}";
        let (_, completion) = run(stream, 3);
        assert_eq!(completion.unwrap().text, "ok");
    }
}
