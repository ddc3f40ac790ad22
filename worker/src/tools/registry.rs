//! The toolbox's registry: which servers run, under what sandbox, and the function names
//! and definitions their tools are offered to the model under. It changes between jobs
//! only (`prepare`, `stop_stale`, `shutdown`); during a job, `calls` reads it.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hermes_protocol::ToolServer;
use rmcp::model::Tool;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;

use super::mcp::Server;
use super::{Ask, Toolbox};
use crate::sandbox::Sandbox;

/// The longest a server may take to start and list its tools (and never more than half
/// of what is left of the job, so a slow server still leaves time for an answer).
const START_BOUND: Duration = Duration::from_secs(15);
/// Between server and tool in a function name; `_` is not allowed in server names.
const SEPARATOR: &str = "__";

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

    /// The job's output directory (`Job::output_dir`): set before [`Toolbox::prepare`],
    /// whose index then offers `attach_file` beside the servers' tools (only beside
    /// them: a model without tools makes no file, and a provider that takes no tools is
    /// not sent any). Files named for an earlier job are forgotten.
    pub fn set_output(&mut self, dir: Option<std::path::PathBuf>) {
        self.output = dir.map(super::attach::Output::new);
    }

    /// The files named for the chat during the job, in order (and none any more).
    pub fn take_files(&self) -> Vec<String> {
        self.output
            .as_ref()
            .map(super::attach::Output::take)
            .unwrap_or_default()
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
        if let Some(output) = &self.output
            && self.servers.iter().any(|s| !s.tools().is_empty())
        {
            self.definitions.push(output.definition());
        }
    }
}

/// `{server}__{tool}`, within what OpenAI accepts as a function name
/// (`[a-zA-Z0-9_-]{1,64}`).
pub(super) fn function_name(server: &str, tool: &str) -> String {
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

pub(super) fn definition(name: &str, tool: &Tool) -> Value {
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
