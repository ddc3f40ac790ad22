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
//!
//! When the job names an output directory, the toolbox also serves one tool of its own,
//! `attach_file` ([`attach`]), and writes the files MCP tools return as content there: the
//! files the answer sends to the chat.
//!
//! The [`Toolbox`] is one value in two files: `registry` (which servers run and what
//! their tools are called; it changes between jobs) and `calls` (the calls of one answer,
//! their approvals, and their results as the model reads them).

pub mod attach;
mod calls;
pub mod mcp;
mod registry;

use std::collections::HashMap;

use hermes_protocol::Decision;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::sandbox::Sandbox;
use mcp::Server;

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
    /// The job's output directory and the files named for the chat ([`attach`]).
    output: Option<attach::Output>,
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

#[cfg(test)]
mod tests;
