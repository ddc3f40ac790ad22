//! One MCP tool server over stdio, as the worker runs it: a child process in the
//! worker's own process group, spoken to with the official SDK (`rmcp`) as a client.
//!
//! The process is started here rather than by rmcp's child-process transport because
//! where it runs is the point: no new process group or session (the gateway ends a job
//! by killing the worker's group, and that must reach every tool), an environment built
//! from nothing (the worker's scrubbed one is already small; a tool gets even less), and
//! stderr inherited so the gateway logs what the server says. Every step that waits on
//! the server is bounded: a server that never answers `initialize` costs the job its
//! tools, not its answer.
//!
//! With a [`Sandbox`], the same command is started through the `hermes-worker sandbox-exec`
//! trampoline, which applies the policy and then becomes the server (same pid, group,
//! stdio and environment, plus `TMPDIR` and the working directory set to its scratch
//! directory).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::sandbox::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SETUP, Sandbox};
use hermes_protocol::ToolServer;
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    JsonObject, Tool,
};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use tokio::process::{Child, Command};

/// Variables of the worker's own environment a tool server gets, when set: what
/// ordinary programs need to find themselves and their locale. Anything else a server
/// needs is named in its configuration (`env`).
pub const PASSED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// A configured server: running with its tools, or the reason it is not.
pub struct Server {
    pub spec: ToolServer,
    /// What it runs under; a server is reused only under the same.
    pub sandbox: Option<Sandbox>,
    state: Result<Running, String>,
    /// A call timed out or found the server gone: whatever it was doing may still run,
    /// so it is replaced before the next job rather than trusted again.
    stale: AtomicBool,
}

struct Running {
    service: RunningService<RoleClient, ClientConfig>,
    child: Child,
    tools: Vec<Tool>,
}

/// Why a call produced no result.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// No answer within the bound.
    TimedOut,
    /// The server is not running (it failed to start, exited, or closed its pipes).
    Gone(String),
    /// The server answered with a protocol error (unknown tool, invalid parameters, …).
    Refused(String),
}

impl Server {
    /// Starts the server and lists its tools, within `bound`. Never fails: a server that
    /// cannot be used is a [`Server`] without tools that says why.
    pub async fn start(spec: &ToolServer, bound: Duration) -> Server {
        Server::start_in(spec, None, bound).await
    }

    /// [`Server::start`] under `sandbox`, when given.
    pub async fn start_in(spec: &ToolServer, sandbox: Option<&Sandbox>, bound: Duration) -> Server {
        let state = match tokio::time::timeout(bound, connect(spec, sandbox)).await {
            Ok(Ok(running)) => Ok(running),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!(
                "did not finish starting within {:.0} s",
                bound.as_secs_f64()
            )),
        };
        match &state {
            Ok(running) => tracing::info!(
                server = %spec.name,
                pid = running.child.id().unwrap_or(0),
                tools = running.tools.len(),
                sandboxed = sandbox.is_some(),
                "tool server started"
            ),
            Err(reason) => tracing::warn!(server = %spec.name, "tool server unavailable: {reason}"),
        }
        Server {
            spec: spec.clone(),
            sandbox: sandbox.cloned(),
            state,
            stale: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The tools it offers; none when it is not running.
    pub fn tools(&self) -> &[Tool] {
        match &self.state {
            Ok(running) => &running.tools,
            Err(_) => &[],
        }
    }

    /// Why it is not running, when it is not.
    pub fn failure(&self) -> Option<&str> {
        self.state.as_ref().err().map(String::as_str)
    }

    /// Whether it must be replaced before it serves another job.
    pub fn is_stale(&self) -> bool {
        match &self.state {
            Err(_) => true,
            Ok(running) => {
                self.stale.load(Ordering::Relaxed)
                    || running.service.is_closed()
                    || running.service.peer().is_transport_closed()
            }
        }
    }

    /// Calls `tool` with `arguments`, waiting at most `bound`.
    pub async fn call(
        &self,
        tool: &str,
        arguments: JsonObject,
        bound: Duration,
    ) -> Result<CallToolResult, CallError> {
        let running = match &self.state {
            Ok(running) => running,
            Err(reason) => return Err(CallError::Gone(reason.clone())),
        };
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        // Dropping the call at the bound makes rmcp send `notifications/cancelled`;
        // whether the server honours it is up to the server, hence `stale`.
        match tokio::time::timeout(bound, running.service.peer().call_tool(params)).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(ServiceError::McpError(error))) => Err(CallError::Refused(error.message.into())),
            Ok(Err(ServiceError::UnexpectedResponse)) => Err(CallError::Refused(
                "the server answered with something other than a tool result (it may want \
                 input or a task this agent cannot handle)"
                    .into(),
            )),
            Ok(Err(other)) => {
                self.stale.store(true, Ordering::Relaxed);
                Err(CallError::Gone(format!(
                    "the server stopped answering: {other}"
                )))
            }
            Err(_) => {
                self.stale.store(true, Ordering::Relaxed);
                Err(CallError::TimedOut)
            }
        }
    }

    /// Ends the server's process and waits (bounded) for it to go. Anything it started
    /// itself stays in the worker's group, which the gateway ends with the worker.
    pub async fn stop(self) {
        if let Ok(mut running) = self.state {
            let pid = running.child.id();
            let _ = running.child.start_kill();
            if tokio::time::timeout(Duration::from_secs(2), running.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(server = %self.spec.name, ?pid, "tool server did not exit after SIGKILL");
            }
            drop(running.service);
        }
    }
}

async fn connect(spec: &ToolServer, sandbox: Option<&Sandbox>) -> Result<Running, String> {
    let mut command = match sandbox {
        None => Command::new(&spec.command),
        Some(sandbox) => {
            let mut command = Command::new(&sandbox.trampoline);
            command
                .arg0("hermes-worker")
                .args(sandbox.arguments(spec.command.as_ref()));
            command
        }
    };
    command
        .args(&spec.args)
        .env_clear()
        .envs(passed_env())
        .envs(spec.env.iter().map(|(name, value)| (name, value.expose())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", spec.command))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("its standard input and output could not be connected".into());
    };
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("hermes-worker", env!("CARGO_PKG_VERSION")),
    );
    let service = match client.serve((stdout, stdin)).await {
        Ok(service) => service,
        Err(error) => {
            return Err(start_failure(&mut child, sandbox.is_some(), &error.to_string()).await);
        }
    };
    let tools = match service.peer().list_all_tools().await {
        Ok(tools) => tools,
        Err(error) => {
            return Err(start_failure(
                &mut child,
                sandbox.is_some(),
                &format!("cannot list its tools: {error}"),
            )
            .await);
        }
    };
    Ok(Running {
        service,
        child,
        tools,
    })
}

/// Describes a failed start, naming the exit status when the server has exited (briefly
/// waited for, since a crash usually closes the pipes just before the process ends).
/// Under the sandbox the trampoline's own statuses say what went wrong before the server
/// ran (its stderr, in the log, says more).
async fn start_failure(child: &mut Child, sandboxed: bool, error: &str) -> String {
    match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
        Ok(Ok(status)) if sandboxed => match status.code() {
            Some(EXIT_SETUP) => "its sandbox could not be set up".into(),
            Some(EXIT_NOT_FOUND) => "its command was not found".into(),
            Some(EXIT_CANNOT_EXECUTE) => "its command could not be executed".into(),
            _ => format!("exited during start-up ({status})"),
        },
        Ok(Ok(status)) => format!("exited during start-up ({status})"),
        _ => format!("failed during start-up: {error}"),
    }
}

fn passed_env() -> Vec<(&'static str, std::ffi::OsString)> {
    PASSED_ENV
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|value| (*name, value)))
        .collect()
}
