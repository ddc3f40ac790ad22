//! The tools a job may use: the configured MCP servers ([`mcp`]), their tools offered to
//! the model as OpenAI function definitions, and the calls the model asks for turned
//! into `tool` messages.
//!
//! The rule here is that a tool cannot end a job. Whatever goes wrong with a call (the
//! model names a tool that does not exist, writes arguments that are not JSON, the tool
//! reports an error, takes too long, returns something that is not text, or its server
//! has died) becomes a result the model reads and can recover from. The one exception is
//! the job's own deadline: a call still running then is abandoned with the job, and the
//! caller learns so, because a tool stuck past the deadline is the gateway's to end.
//!
//! Servers run under the toolbox's [`Sandbox`] when it has one ([`Toolbox::set_sandbox`];
//! none by default), with what each server's entry hides, grants and protects added, unless
//! the entry opts out (`sandbox = false`). A call to a tool its entry says to confirm waits
//! for a person's decision ([`Toolbox::set_approvals`]); anything but an approval becomes
//! an error result, and the tool does not run.

pub mod mcp;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hermes_protocol::{ChatMessage, Decision, Event, ToolCall, ToolServer};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, ResourceContents, Tool};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::sandbox::Sandbox;
use mcp::{CallError, Server};

/// The longest a server may take to start and list its tools (and never more than half
/// of what is left of the job, so a slow server still leaves time for an answer).
const START_BOUND: Duration = Duration::from_secs(15);
/// A result longer than this is cut: it goes to the provider with every later request
/// of the job, and into the stored conversation.
const MAX_RESULT_CHARS: usize = 16_000;
/// Between server and tool in a function name; `_` is not allowed in server names.
const SEPARATOR: &str = "__";

/// The servers of one worker (pool mode: across its jobs while their configuration stays
/// the same; per-request mode and `ask`: for one job).
#[derive(Default)]
pub struct Toolbox {
    servers: Vec<Server>,
    /// Function name offered to the model → (server index, the server's own tool name).
    functions: HashMap<String, (usize, String)>,
    definitions: Vec<Value>,
    /// What servers started from now on run under (each with its entry's confinement).
    sandbox: Option<Sandbox>,
    /// Where calls that need approval are asked about; none: they are denied.
    approvals: Option<UnboundedSender<Ask>>,
}

/// A tool call waiting for a person's decision, and where that decision goes.
pub struct Ask {
    /// `server.tool`.
    pub tool: String,
    /// The arguments as the model wrote them.
    pub arguments: String,
    pub timeout_ms: u64,
    pub decide: oneshot::Sender<Decision>,
}

/// The job's deadline passed while a call was still running.
#[derive(Debug, PartialEq, Eq)]
pub struct Abandoned;

impl Toolbox {
    /// Runs servers started from now on under `sandbox` (its trampoline, its scratch
    /// directory, its policy plus each entry's confinement); None: every server as the
    /// worker's own child, unconfined. A running server under another sandbox is replaced
    /// by the next [`Toolbox::prepare`].
    pub fn set_sandbox(&mut self, sandbox: Option<Sandbox>) {
        self.sandbox = sandbox;
    }

    /// Sends calls that need approval to `approvals` (None: such calls are denied, as
    /// there is nobody to ask).
    pub fn set_approvals(&mut self, approvals: Option<UnboundedSender<Ask>>) {
        self.approvals = approvals;
    }

    /// Makes the running servers match `specs`: an unchanged server that is still
    /// healthy is kept; a new, changed, failed or stale one is (re)started; one no longer
    /// configured is stopped.
    pub async fn prepare(&mut self, specs: &[ToolServer], deadline: Instant) {
        let mut old: Vec<Option<Server>> = std::mem::take(&mut self.servers)
            .into_iter()
            .map(Some)
            .collect();
        let mut kept: Vec<Option<Server>> = Vec::with_capacity(specs.len());
        let sandboxes: Vec<Option<Sandbox>> = specs.iter().map(|s| self.sandbox_for(s)).collect();
        for (spec, sandbox) in specs.iter().zip(&sandboxes) {
            let reusable = old.iter_mut().find(|s| {
                s.as_ref()
                    .is_some_and(|s| &s.spec == spec && &s.sandbox == sandbox && !s.is_stale())
            });
            kept.push(reusable.and_then(Option::take));
        }
        for server in old.into_iter().flatten() {
            tracing::info!(server = server.name(), "stopping tool server");
            server.stop().await;
        }
        let bound = START_BOUND.min(deadline.saturating_duration_since(Instant::now()) / 2);
        let started = join_all(
            specs
                .iter()
                .zip(&sandboxes)
                .zip(&kept)
                .filter(|(_, kept)| kept.is_none())
                .map(|((spec, sandbox), _)| Server::start_in(spec, sandbox.as_ref(), bound)),
        )
        .await;
        let mut started = started.into_iter();
        self.servers = kept
            .into_iter()
            .filter_map(|server| server.or_else(|| started.next()))
            .collect();
        self.index();
    }

    /// What `spec`'s server runs under: the toolbox's sandbox with the entry's
    /// confinement added; nothing when the entry opts out or the toolbox has no sandbox.
    fn sandbox_for(&self, spec: &ToolServer) -> Option<Sandbox> {
        let base = self.sandbox.as_ref()?;
        let Some(confinement) = &spec.sandbox else {
            tracing::warn!(
                server = %spec.name,
                "this tool server runs without the sandbox (sandbox = false in its entry)"
            );
            return None;
        };
        Some(Sandbox {
            policy: base.policy.clone().confined(confinement),
            trampoline: base.trampoline.clone(),
        })
    }

    /// Stops the servers that died or timed out a call; the next job starts them again.
    pub async fn stop_stale(&mut self) {
        let (stale, healthy): (Vec<Server>, Vec<Server>) = std::mem::take(&mut self.servers)
            .into_iter()
            .partition(|s| s.is_stale() && s.failure().is_none());
        self.servers = healthy;
        for server in stale {
            tracing::info!(
                server = server.name(),
                "stopping a tool server that died or timed out a call"
            );
            server.stop().await;
        }
        self.index();
    }

    /// Stops every server (what dropping does too, without waiting for them to go).
    pub async fn shutdown(&mut self) {
        for server in std::mem::take(&mut self.servers) {
            server.stop().await;
        }
        self.index();
    }

    /// The OpenAI function definitions of every tool offered.
    pub fn definitions(&self) -> &[Value] {
        &self.definitions
    }

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
                            Ok(result) => read_result(&result),
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

    fn unknown_tool(&self, name: &str) -> String {
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

    /// Rebuilds the function names and definitions from the running servers.
    fn index(&mut self) {
        self.functions.clear();
        self.definitions.clear();
        for (i, server) in self.servers.iter().enumerate() {
            for tool in server.tools() {
                let name = function_name(server.name(), &tool.name);
                if self.functions.contains_key(&name) {
                    tracing::warn!(
                        server = server.name(),
                        tool = %tool.name,
                        "two tools map to the function name {name}; offering only the first"
                    );
                    continue;
                }
                self.definitions.push(definition(&name, tool));
                self.functions.insert(name, (i, tool.name.to_string()));
            }
        }
    }
}

/// `{server}__{tool}`, within what OpenAI accepts as a function name
/// (`[a-zA-Z0-9_-]{1,64}`).
fn function_name(server: &str, tool: &str) -> String {
    format!("{server}{SEPARATOR}{tool}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

fn definition(name: &str, tool: &Tool) -> Value {
    let mut parameters: Map<String, Value> = (*tool.input_schema).clone();
    // Providers validate the schema; MCP servers are not always as strict.
    parameters.entry("type").or_insert_with(|| json!("object"));
    if parameters.get("type") == Some(&json!("object")) {
        parameters.entry("properties").or_insert_with(|| json!({}));
    }
    let mut function = Map::new();
    function.insert("name".into(), json!(name));
    if let Some(description) = tool
        .description
        .as_deref()
        .or(tool.title.as_deref())
        .filter(|d| !d.trim().is_empty())
    {
        function.insert("description".into(), json!(description));
    }
    function.insert("parameters".into(), Value::Object(parameters));
    json!({"type": "function", "function": function})
}

/// The model's argument text as the JSON object a tool takes; empty means none.
fn parse_arguments(text: &str) -> Result<JsonObject, String> {
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
fn read_result(result: &CallToolResult) -> (bool, String) {
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

fn cap(text: String) -> String {
    match text.char_indices().nth(MAX_RESULT_CHARS) {
        None => text,
        Some((cut, _)) => {
            let rest = text[cut..].chars().count();
            format!("{}\n[… {rest} more characters cut]", &text[..cut])
        }
    }
}

#[cfg(test)]
mod tests;
