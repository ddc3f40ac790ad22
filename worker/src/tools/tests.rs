//! Unit tests of the tool layer: function names, definitions, argument parsing, reading
//! results, and servers that cannot start (missing, crashing, mute, speaking garbage).

use std::time::{Duration, Instant};

use hermes_protocol::{Event, Role, Secret, ToolCall, ToolServer};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool};
use serde_json::json;
use tokio::sync::mpsc;

use super::calls::{MAX_RESULT_CHARS, cap, parse_arguments, read_result};
use super::mcp::{PASSED_ENV, Server};
use super::registry::{definition, function_name};
use super::*;

fn spec(name: &str, command: &str, args: &[&str]) -> ToolServer {
    ToolServer {
        call_timeout_ms: 1000,
        ..ToolServer::new(name, command, args.iter().map(|a| a.to_string()).collect())
    }
}

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: "call_1".into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

#[test]
fn function_names_fit_what_providers_accept() {
    assert_eq!(function_name("calc", "add"), "calc__add");
    assert_eq!(function_name("fs", "read.file/v2"), "fs__read_file_v2");
    assert_eq!(function_name("s", &"x".repeat(100)).len(), 64);
}

#[test]
fn definitions_are_openai_functions_with_an_object_schema() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "number"}}});
    let tool = Tool::new(
        "add",
        "Adds",
        std::sync::Arc::new(schema.as_object().cloned().unwrap_or_default()),
    );
    assert_eq!(
        definition("calc__add", &tool),
        json!({"type": "function", "function": {
            "name": "calc__add", "description": "Adds", "parameters": schema}})
    );
    let bare = Tool::new("env", "", std::sync::Arc::new(Default::default()));
    assert_eq!(
        definition("calc__env", &bare),
        json!({"type": "function", "function": {
            "name": "calc__env", "parameters": {"type": "object", "properties": {}}}})
    );
}

#[test]
fn arguments_must_be_a_json_object_and_empty_means_none() {
    assert_eq!(parse_arguments("").unwrap(), JsonObject::new());
    assert_eq!(parse_arguments(" {\"a\": 1} ").unwrap()["a"], json!(1));
    assert!(
        parse_arguments("{not json")
            .unwrap_err()
            .contains("not valid JSON")
    );
    assert!(parse_arguments("[1]").unwrap_err().contains("an array"));
}

#[test]
fn results_are_text_errors_say_so_and_other_content_is_named() {
    let ok = CallToolResult::success(vec![ContentBlock::text("5")]);
    assert_eq!(read_result(&ok), (true, "5".into()));
    let failed = CallToolResult::error(vec![ContentBlock::text("division by zero")]);
    assert_eq!(
        read_result(&failed),
        (false, "error: division by zero".into())
    );
    let image = CallToolResult::success(vec![ContentBlock::image("aGk=", "image/png")]);
    let (ok, text) = read_result(&image);
    assert!(!ok);
    assert!(text.contains("only an image (image/png)"), "{text}");
    let mixed = CallToolResult::success(vec![
        ContentBlock::text("a chart"),
        ContentBlock::image("aGk=", "image/png"),
    ]);
    assert_eq!(
        read_result(&mixed),
        (true, "a chart\n[left out: an image (image/png)]".into())
    );
    let empty = CallToolResult::success(vec![]);
    assert_eq!(
        read_result(&empty),
        (true, "(the tool returned no output)".into())
    );
    let mut structured = CallToolResult::success(vec![]);
    structured.structured_content = Some(json!({"sum": 5}));
    assert_eq!(read_result(&structured), (true, r#"{"sum":5}"#.into()));
}

#[test]
fn long_results_are_cut() {
    let long = "é".repeat(MAX_RESULT_CHARS + 10);
    let cut = cap(long);
    assert!(
        cut.ends_with("[… 10 more characters cut]"),
        "{}",
        &cut[cut.len() - 40..]
    );
    assert_eq!(cap("short".into()), "short");
}

#[tokio::test]
async fn a_call_to_an_unknown_tool_is_an_error_result() {
    let toolbox = Toolbox::default();
    let (events, mut rx) = mpsc::unbounded_channel();
    let deadline = Instant::now() + Duration::from_secs(5);
    let results = toolbox
        .call_all(&[call("calc__nope", "{}")], deadline, &events)
        .await
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].role, Role::Tool);
    assert_eq!(results[0].tool_call_id.as_deref(), Some("call_1"));
    assert!(
        results[0].content.contains("no tool named"),
        "{}",
        results[0].content
    );
    assert_eq!(
        rx.recv().await,
        Some(Event::ToolStarted {
            name: "calc__nope".into()
        })
    );
    assert!(matches!(
        rx.recv().await,
        Some(Event::ToolFinished { ok: false, .. })
    ));
}

#[tokio::test]
async fn servers_that_cannot_start_cost_their_tools_not_the_job() {
    let mut toolbox = Toolbox::default();
    let started = Instant::now();
    toolbox
        .prepare(
            &[
                spec("missing", "/nonexistent/hermes-mcp", &[]),
                spec("crash", "false", &[]),
                // Reads its input and never answers `initialize`.
                spec("mute", "sleep", &["100"]),
                spec("garbage", "echo", &["this is not JSON-RPC"]),
            ],
            Instant::now() + Duration::from_secs(2),
        )
        .await;
    // Half of the two seconds left: the bound on starting.
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    assert!(toolbox.definitions().is_empty());
    let failures: Vec<String> = toolbox
        .servers
        .iter()
        .map(|s| s.failure().unwrap_or("running").to_string())
        .collect();
    assert!(failures[0].contains("cannot run"), "{failures:?}");
    assert!(failures[1].contains("start-up"), "{failures:?}");
    assert!(failures[2].contains("within"), "{failures:?}");
    assert!(failures[3].contains("start-up"), "{failures:?}");
    let (events, _rx) = mpsc::unbounded_channel();
    let results = toolbox
        .call_all(
            &[call("mute__anything", "")],
            Instant::now() + Duration::from_secs(1),
            &events,
        )
        .await
        .unwrap();
    assert!(
        results[0].content.contains("\"mute\" is unavailable"),
        "{}",
        results[0].content
    );
    toolbox.shutdown().await;
}

/// A server gets the worker's basic variables and the ones its configuration names,
/// nothing else of the worker's environment.
#[tokio::test]
async fn servers_start_with_a_cleared_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    let mut spec = spec("envdump", "sh", &["-c", "env > \"$OUT\"; exec sleep 100"]);
    spec.env = vec![("OUT".into(), Secret::new(out.display().to_string()))];
    let server = Server::start(&spec, Duration::from_millis(500)).await;
    assert!(server.failure().is_some());
    server.stop().await;
    let env = std::fs::read_to_string(&out).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .collect();
    for name in &names {
        // The shell adds PWD, SHLVL and `_` itself.
        assert!(
            PASSED_ENV.contains(name) || ["OUT", "PWD", "SHLVL", "_"].contains(name),
            "{name} leaked into a tool's environment:\n{env}"
        );
    }
    assert!(names.contains(&"OUT"));
    assert!(names.contains(&"PATH"));
    assert!(
        std::env::vars().any(|(n, _)| n.starts_with("CARGO")),
        "cargo test sets CARGO_*"
    );
}

#[test]
fn unknown_tool_results_list_what_exists() {
    let toolbox = Toolbox::default();
    let text = toolbox.unknown_tool("x");
    assert!(text.contains("no tools are available"), "{text}");
}
