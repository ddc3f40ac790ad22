//! The toolbox's call loop: the calls of one model answer run concurrently, each through
//! its approval (when its entry confirms it) to its server, and every way a call can go
//! wrong becomes an error result the model reads, except the job's deadline passing.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hermes_protocol::{ChatMessage, Decision, Event, ToolCall};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, ResourceContents};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::mcp::{CallError, Server};
use super::{Abandoned, Ask, Toolbox};

/// A result longer than this is cut: it goes to the provider with every later request
/// of the job, and into the stored conversation.
pub(super) const MAX_RESULT_CHARS: usize = 16_000;

impl Toolbox {
    /// Runs `calls` concurrently and returns one `tool` message per call, in order.
    pub async fn call_all(
        &self,
        calls: &[ToolCall],
        deadline: Instant,
        events: &UnboundedSender<Event>,
    ) -> Result<Vec<ChatMessage>, Abandoned> {
        let results = join_all(calls.iter().map(|c| self.call(c, deadline, events))).await;
        results.into_iter().collect()
    }

    async fn call(
        &self,
        call: &ToolCall,
        deadline: Instant,
        events: &UnboundedSender<Event>,
    ) -> Result<ChatMessage, Abandoned> {
        if call.name == super::attach::ATTACH
            && let Some(output) = &self.output
        {
            let _ = events.send(Event::ToolStarted {
                name: call.name.clone(),
            });
            let (ok, text) = match parse_arguments(&call.arguments) {
                Ok(arguments) => output.attach(&arguments),
                Err(problem) => (false, problem),
            };
            tracing::info!(tool = %call.name, ok, "tool call finished");
            let _ = events.send(Event::ToolFinished {
                name: call.name.clone(),
                ok,
                ms: 0,
            });
            return Ok(ChatMessage::tool_result(call.id.clone(), text));
        }
        let target = self
            .functions
            .get(&call.name)
            .and_then(|(i, tool)| Some((self.servers.get(*i)?, tool.as_str())));
        let shown = match target {
            Some((server, tool)) => format!("{}.{tool}", server.name()),
            None if call.name.is_empty() => "(unnamed tool)".to_string(),
            None => call.name.clone(),
        };
        let _ = events.send(Event::ToolStarted {
            name: shown.clone(),
        });
        let started = Instant::now();
        let (ok, text) = match target {
            None => (false, self.unknown_tool(&call.name)),
            Some((server, tool)) => match parse_arguments(&call.arguments) {
                Err(problem) => (false, problem),
                Ok(arguments) => match self
                    .approval(server, tool, &shown, &call.arguments, deadline)
                    .await
                {
                    Err(refused) => (false, refused),
                    Ok(()) => {
                        let bound = Duration::from_millis(server.spec.call_timeout_ms)
                            .min(deadline.saturating_duration_since(Instant::now()));
                        match server.call(tool, arguments, bound).await {
                            Ok(result) => self.read_and_keep(&result),
                            Err(CallError::TimedOut) if Instant::now() >= deadline => {
                                tracing::warn!(tool = %shown, "the job's deadline passed during a tool call");
                                return Err(Abandoned);
                            }
                            Err(CallError::TimedOut) => (
                                false,
                                format!(
                                    "error: the tool did not answer within {} s and was abandoned. \
                                 It may be slow or stuck; do not call it again with the same \
                                 arguments. Try another way, or tell the user.",
                                    bound.as_secs_f64().round()
                                ),
                            ),
                            Err(CallError::Gone(reason)) => (
                                false,
                                format!(
                                    "error: the tool server {:?} is not available ({reason}). Its \
                                 tools cannot be used in this answer.",
                                    server.name()
                                ),
                            ),
                            Err(CallError::Refused(message)) => (
                                false,
                                format!("error: the tool server refused the call: {message}"),
                            ),
                        }
                    }
                },
            },
        };
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(tool = %shown, ok, ms, "tool call finished");
        let _ = events.send(Event::ToolFinished {
            name: shown,
            ok,
            ms,
        });
        Ok(ChatMessage::tool_result(call.id.clone(), cap(text)))
    }

    /// Waits for a person's decision when `server`'s entry confirms `tool`: Ok to run it,
    /// or the error result the model reads instead.
    async fn approval(
        &self,
        server: &Server,
        tool: &str,
        shown: &str,
        arguments: &str,
        deadline: Instant,
    ) -> Result<(), String> {
        if !server.spec.confirm.covers(tool) {
            return Ok(());
        }
        let not_run = "It was not run. Do not call it again with the same arguments unless \
                       the user asks you to; tell the user what you wanted to do.";
        let Some(approvals) = &self.approvals else {
            return Err(format!(
                "error: {shown} needs a person's approval before each call, and there is \
                 nobody to ask here. {not_run}"
            ));
        };
        let (decide, decision) = oneshot::channel();
        let ask = Ask {
            tool: shown.to_string(),
            arguments: arguments.to_string(),
            timeout_ms: server.spec.confirm_timeout_ms,
            decide,
        };
        if approvals.send(ask).is_err() {
            return Err(format!(
                "error: the user could not be asked to approve this call. {not_run}"
            ));
        }
        let decision = match tokio::time::timeout_at(deadline.into(), decision).await {
            Ok(Ok(decision)) => decision,
            Ok(Err(_)) => {
                return Err(format!("error: this call was not approved. {not_run}"));
            }
            Err(_) => {
                return Err(format!(
                    "error: the time for this answer ran out while waiting for the user's \
                     approval. {not_run}"
                ));
            }
        };
        tracing::info!(tool = %shown, ?decision, "approval decided");
        match decision {
            Decision::Allowed { .. } => Ok(()),
            Decision::Denied { by } => Err(format!(
                "error: the user ({by}) denied this call. {not_run}"
            )),
            Decision::TimedOut => Err(format!(
                "error: nobody approved this call within {} s, so it counts as denied. \
                 {not_run}",
                server.spec.confirm_timeout_ms.div_ceil(1000)
            )),
            Decision::Unavailable { reason } => Err(format!(
                "error: the user could not be asked to approve this call ({reason}). {not_run}"
            )),
        }
    }

    /// What the model reads of `result`, its files (images, embedded resources) written
    /// to the output directory for the chat first, when the job has one.
    fn read_and_keep(&self, result: &CallToolResult) -> (bool, String) {
        let read = read_result(result);
        let Some(output) = &self.output else {
            return read;
        };
        let notes = output.keep(result);
        if notes.is_empty() {
            return read;
        }
        match read {
            // Only files: what the model reads is that they go to the user.
            (false, text) if text.starts_with("error: the tool returned only") => {
                (true, notes.join("\n"))
            }
            (ok, text) => (ok, format!("{text}\n{}", notes.join("\n"))),
        }
    }

    pub(super) fn unknown_tool(&self, name: &str) -> String {
        let mut names: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut text = if names.is_empty() {
            format!("error: there is no tool named {name:?}; no tools are available.")
        } else {
            format!(
                "error: there is no tool named {name:?}. Available tools: {}.",
                names.join(", ")
            )
        };
        for server in &self.servers {
            if let Some(reason) = server.failure() {
                text.push_str(&format!(
                    " The tool server {:?} is unavailable ({reason}).",
                    server.name()
                ));
            }
        }
        text
    }
}

/// The model's argument text as the JSON object a tool takes; empty means none.
pub(super) fn parse_arguments(text: &str) -> Result<JsonObject, String> {
    if text.trim().is_empty() {
        return Ok(JsonObject::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "error: the arguments must be a JSON object, not {}. Call the tool again with \
             an object matching its parameters.",
            kind(&other)
        )),
        Err(e) => Err(format!(
            "error: the arguments are not valid JSON ({e}). Call the tool again with a JSON \
             object matching its parameters."
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What the model reads of a tool's result, and whether the call succeeded. Text is
/// passed on; other content is named, not passed (the model here reads text only).
pub(super) fn read_result(result: &CallToolResult) -> (bool, String) {
    let mut texts = Vec::new();
    let mut left_out = Vec::new();
    for block in &result.content {
        match block {
            ContentBlock::Text(t) => texts.push(t.text.clone()),
            ContentBlock::Resource(r) => match &r.resource {
                ResourceContents::TextResourceContents { text, .. } => texts.push(text.clone()),
                ResourceContents::BlobResourceContents { mime_type, .. } => {
                    left_out.push(format!(
                        "a binary resource ({})",
                        mime_type.as_deref().unwrap_or("unknown type")
                    ));
                }
                _ => left_out.push("a resource of a kind this agent does not know".into()),
            },
            ContentBlock::ResourceLink(link) => texts.push(format!("[resource: {}]", link.uri)),
            ContentBlock::Image(i) => left_out.push(format!("an image ({})", i.mime_type)),
            ContentBlock::Audio(a) => left_out.push(format!("audio ({})", a.mime_type)),
            _ => left_out.push("content of a kind this agent does not know".into()),
        }
    }
    if texts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        texts.push(structured.to_string());
    }
    let is_error = result.is_error == Some(true);
    if texts.is_empty() && !left_out.is_empty() {
        return (
            false,
            format!(
                "error: the tool returned only {}, which this agent cannot read.",
                left_out.join(", ")
            ),
        );
    }
    let mut text = texts.join("\n");
    if !left_out.is_empty() {
        text.push_str(&format!("\n[left out: {}]", left_out.join(", ")));
    }
    if is_error {
        let text = if text.trim().is_empty() {
            "the tool reported an error without saying which".to_string()
        } else {
            text
        };
        (false, format!("error: {text}"))
    } else if text.trim().is_empty() {
        (true, "(the tool returned no output)".into())
    } else {
        (true, text)
    }
}

pub(super) fn cap(text: String) -> String {
    match text.char_indices().nth(MAX_RESULT_CHARS) {
        None => text,
        Some((cut, _)) => {
            let rest = text[cut..].chars().count();
            format!("{}\n[… {rest} more characters cut]", &text[..cut])
        }
    }
}
