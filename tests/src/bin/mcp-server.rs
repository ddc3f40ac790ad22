//! A small MCP tool server (stdio, the official SDK's server side) for the tool tests:
//! `add {a, b}` answers the sum, `sleep {secs}` answers after that long (a tool that
//! hangs), `env {}` answers its whole environment as `NAME=value` lines (what a tool can
//! see). Its tool list comes in two pages, so clients must follow the cursor.
//!
//! And the tools a prompt-injected model would use against the gateway (issue 11):
//! `shell {command}` runs a command line with `sh -c`, as the third-party shell servers
//! do, and answers its exit status, output and errors (an error result when it failed);
//! `connect {path}` or `connect {abstract_name}` opens a Unix stream socket to a path or
//! to an abstract name (the systemd manager, D-Bus and the worker socket are such
//! sockets) and answers whether it connected.
//!
//! `chart {}` answers a small PNG as image content (a tool that makes a picture: issue 23).
//!
//! Faults on request: `--crash-at-start` exits before answering anything,
//! `--crash-on-call TOOL` exits abruptly when TOOL is called, `--pid-file PATH` writes its
//! pid at start so a test can tell whether the process is still there, and
//! `--stubborn-tool` offers one more tool, `stubborn`, that only SIGKILL ends
//! ([`stubborn`]).

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use serde_json::{Value, json};

/// A 4×3 PNG, base64.
const CHART_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAQAAAADCAIAAAA7ljmRAAAAEElEQVR4nGP4z8AARww4OQD1MQv1NXv7ggAAAABJRU5ErkJggg==";

#[derive(Clone)]
struct Calc {
    crash_on_call: Option<String>,
    stubborn_tool: bool,
}

fn schema(value: Value) -> Arc<JsonObject> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "add",
            "Adds two numbers and answers the sum.",
            schema(json!({
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            })),
        ),
        Tool::new(
            "sleep",
            "Waits this many seconds, then answers.",
            schema(json!({
                "type": "object",
                "properties": {"secs": {"type": "number"}},
                "required": ["secs"],
            })),
        ),
        Tool::new(
            "env",
            "Answers this process's environment, one NAME=value per line.",
            schema(json!({"type": "object", "properties": {}})),
        ),
        Tool::new(
            "shell",
            "Runs a command line with sh -c and answers its exit status, output and errors.",
            schema(json!({
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
            })),
        ),
        Tool::new(
            "connect",
            "Connects to a Unix stream socket at a path or an abstract name.",
            schema(json!({
                "type": "object",
                "properties": {"path": {"type": "string"}, "abstract_name": {"type": "string"}},
            })),
        ),
        Tool::new(
            "chart",
            "Draws a chart and answers it as a PNG image.",
            schema(json!({"type": "object", "properties": {}})),
        ),
    ]
}

/// `sh -c command`: its status, stdout and stderr; an error result unless it exited 0.
async fn shell(arguments: &JsonObject) -> Result<CallToolResult, ErrorData> {
    let command = arguments
        .get("command")
        .and_then(Value::as_str)
        .ok_or_else(|| ErrorData::invalid_params("command must be a string", None))?;
    let output = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| ErrorData::internal_error(format!("cannot run sh: {e}"), None))?;
    let text = format!(
        "exit status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(if output.status.success() {
        CallToolResult::success(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::error(vec![ContentBlock::text(text)])
    })
}

/// Connects to a Unix socket; an error result saying why when it cannot.
fn connect(arguments: &JsonObject) -> Result<CallToolResult, ErrorData> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let address = match (
        arguments.get("path").and_then(Value::as_str),
        arguments.get("abstract_name").and_then(Value::as_str),
    ) {
        (Some(path), None) => SocketAddr::from_pathname(path),
        (None, Some(name)) => SocketAddr::from_abstract_name(name.as_bytes()),
        _ => {
            return Err(ErrorData::invalid_params(
                "give path or abstract_name",
                None,
            ));
        }
    }
    .map_err(|e| ErrorData::invalid_params(format!("bad address: {e}"), None))?;
    Ok(match UnixStream::connect_addr(&address) {
        Ok(_) => CallToolResult::success(vec![ContentBlock::text("connected")]),
        Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("cannot connect: {e}"))]),
    })
}

fn number(arguments: &JsonObject, name: &str) -> Result<f64, ErrorData> {
    arguments
        .get(name)
        .and_then(Value::as_f64)
        .ok_or_else(|| ErrorData::invalid_params(format!("{name} must be a number"), None))
}

impl ServerHandler for Calc {
    fn get_info(&self) -> ServerConfig {
        let mut info = InitializeResult::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("hermes-test-mcp-server", "0.1.0");
        info
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut all = tools();
        if self.stubborn_tool {
            all.push(stubborn_tool());
        }
        let second_page = request.and_then(|r| r.cursor).as_deref() == Some("page-2");
        if second_page {
            Ok(ListToolsResult::with_all_items(all[2..].to_vec()))
        } else {
            let mut first = ListToolsResult::with_all_items(all[..2].to_vec());
            first.next_cursor = Some("page-2".into());
            Ok(first)
        }
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if self.crash_on_call.as_deref() == Some(&*request.name) {
            eprintln!(
                "mcp-server: crashing on a call to {} as asked",
                request.name
            );
            std::process::exit(70);
        }
        let arguments = request.arguments.unwrap_or_default();
        match &*request.name {
            "shell" => return shell(&arguments).await.map(Into::into),
            "connect" => return connect(&arguments).map(Into::into),
            "chart" => {
                return Ok(CallToolResult::success(vec![
                    ContentBlock::text("a chart of the numbers"),
                    ContentBlock::image(CHART_PNG, "image/png"),
                ])
                .into());
            }
            _ => {}
        }
        let text = match &*request.name {
            "add" => {
                let sum = number(&arguments, "a")? + number(&arguments, "b")?;
                if sum.fract() == 0.0 && sum.abs() < 1e15 {
                    format!("{}", sum as i64)
                } else {
                    format!("{sum}")
                }
            }
            "sleep" => {
                let secs = number(&arguments, "secs")?;
                tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 3600.0))).await;
                format!("slept {secs} s")
            }
            "stubborn" if self.stubborn_tool => stubborn(&arguments)?,
            "env" => std::env::vars()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("\n"),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("no tool named {other}"),
                    None,
                ));
            }
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// `stubborn {secs, child_pid_file}`: what a tool that will not be stopped looks like.
fn stubborn_tool() -> Tool {
    Tool::new(
        "stubborn",
        "Ignores SIGTERM, starts a child that ignores it too (its pid written to \
         child_pid_file), then blocks for secs seconds.",
        schema(json!({
            "type": "object",
            "properties": {
                "secs": {"type": "number"},
                "child_pid_file": {"type": "string"},
            },
            "required": ["secs", "child_pid_file"],
        })),
    )
}

/// Makes this server a process only SIGKILL ends, with a child just as stubborn: SIGTERM
/// ignored, and the one thread blocked, so neither the signal nor its stdin closing (the
/// worker gone) gets it to exit; the child is out of its stdio and ignores SIGTERM too
/// (an ignored signal stays ignored across exec).
fn stubborn(arguments: &JsonObject) -> Result<String, ErrorData> {
    use nix::sys::signal::{SigHandler, Signal, signal};
    let secs = number(arguments, "secs")?;
    let Some(pid_file) = arguments.get("child_pid_file").and_then(Value::as_str) else {
        return Err(ErrorData::invalid_params(
            "child_pid_file must be a path",
            None,
        ));
    };
    // SAFETY: ignoring a signal runs no code of ours.
    let _ = unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) };
    let child = std::process::Command::new("sh")
        .args(["-c", "trap '' TERM; exec sleep 3600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| ErrorData::internal_error(format!("cannot start sh: {e}"), None))?;
    std::fs::write(pid_file, child.id().to_string())
        .map_err(|e| ErrorData::internal_error(format!("cannot write {pid_file}: {e}"), None))?;
    std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.0, 3600.0)));
    Ok(format!("held out {secs} s"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut crash_on_call = None;
    let mut stubborn_tool = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--crash-at-start" => {
                eprintln!("mcp-server: crashing at start as asked");
                std::process::exit(69);
            }
            "--crash-on-call" => crash_on_call = args.next(),
            "--stubborn-tool" => stubborn_tool = true,
            "--pid-file" => {
                let Some(path) = args.next() else {
                    eprintln!("mcp-server: --pid-file needs a path");
                    std::process::exit(2);
                };
                if let Err(e) = std::fs::write(&path, std::process::id().to_string()) {
                    eprintln!("mcp-server: cannot write {path}: {e}");
                    std::process::exit(2);
                }
            }
            other => {
                eprintln!("mcp-server: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let server = match (Calc {
        crash_on_call,
        stubborn_tool,
    })
    .serve(rmcp::transport::stdio())
    .await
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("mcp-server: initialization failed: {e}");
            std::process::exit(1);
        }
    };
    let _ = server.waiting().await;
}
