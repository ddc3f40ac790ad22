//! Tools through the real binaries: `hermes-gateway` with `[[tools.mcp]]` entries, its
//! `hermes-worker`s starting MCP servers (the tests crate's `mcp-server`, and a reference
//! server from PyPI where installed), and the fake provider scripted to call them.
//!
//! Each test is a way a tool can go wrong, and each checks what the issue promises: the
//! model gets a result it can act on, the chat gets one reply, the gateway is the same
//! process, and no tool process outlives the worker it belongs to.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{ProviderReply, ProviderRequest};
use hermes_tests::fake_telegram::TOKEN;
use hermes_tests::harness::{
    GatewayOptions, PATIENCE, Rig, USER, cargo_build, eventually, target_profile_dir,
};
use hermes_tests::procs;
use serde_json::{Value, json};

hermes_tests::both_modes!(
    tool_result_reaches_the_model_and_the_answer_the_chat,
    tool_slower_than_its_timeout_is_an_error_result_for_the_model,
    tool_past_the_job_deadline_ends_the_workers_whole_group,
    tool_server_crashing_at_start_leaves_the_job_without_its_tools,
    tool_server_crashing_mid_call_is_an_error_result,
    unknown_tool_name_is_an_error_result,
    invalid_json_arguments_are_an_error_result,
    several_calls_in_one_answer_run_concurrently,
    tools_see_none_of_the_services_secrets,
    the_chat_shows_a_status_line_while_a_tool_runs,
    a_follow_up_question_sees_the_earlier_tool_results,
    a_model_that_keeps_calling_tools_is_stopped_after_max_steps,
    stop_while_a_tool_runs_ends_the_tool_and_what_it_started,
    a_tool_ignoring_sigterm_dies_with_the_group_at_the_deadline,
);

/// The tests crate's MCP server, built once per test binary.
fn mcp_server() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        cargo_build();
        let path = target_profile_dir().join("mcp-server");
        assert!(path.is_file(), "{} missing", path.display());
        path
    })
}

/// A `[[tools.mcp]]` table. JSON string syntax is valid TOML basic-string syntax.
fn tool_entry(
    name: &str,
    command: &Path,
    args: &[String],
    timeout_secs: u64,
    env: &[&str],
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    format!(
        "\n[[tools.mcp]]\nname = {}\ncommand = {}\nargs = {}\ntimeout_secs = {timeout_secs}\nenv = {}\n",
        quote(name),
        quote(&command.display().to_string()),
        list(args.iter().map(|a| quote(a)).collect()),
        list(env.iter().map(|e| quote(e)).collect()),
    )
}

/// The test server as `calc`, writing its pid to `pid_file`, with `extra` arguments. The
/// sandbox lets it write only there besides its scratch directory.
fn calc(pid_file: &Path, extra: &[&str], timeout_secs: u64) -> String {
    let mut args = vec!["--pid-file".to_string(), pid_file.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    format!(
        "{}writable = [{}]\n",
        tool_entry("calc", mcp_server(), &args, timeout_secs, &[]),
        serde_json::to_string(&pid_file.parent().unwrap_or(pid_file).display().to_string())
            .unwrap_or_default()
    )
}

/// A gateway whose replies are one `sendMessage` each, with `tools` configured.
async fn rig(mode: WorkerMode, tools: String, customize: impl FnOnce(&mut GatewayOptions)) -> Rig {
    Rig::start(mode, |o| {
        o.telegram_toml = "streaming = false".into();
        o.extra_toml = tools;
        customize(o);
    })
    .await
}

/// A chat completion whose answer is `calls`: `(id, function name, arguments text)`.
fn tool_calls(calls: &[(&str, &str, &str)]) -> ProviderReply {
    ProviderReply::tool_calls(calls)
}

fn tool_call(name: &str, arguments: &str) -> ProviderReply {
    tool_calls(&[("call_1", name, arguments)])
}

/// The `tool` messages of a request, as (tool_call_id, content).
fn tool_messages(request: &ProviderRequest) -> Vec<(String, String)> {
    request.body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap_or_default().to_string(),
                m["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The only tool result of the provider's `n`th request (0-based).
fn only_tool_result(rig: &Rig, n: usize) -> String {
    let requests = rig.provider.requests();
    let request = requests
        .get(n)
        .unwrap_or_else(|| panic!("no request {n}: {requests:#?}\n{}", rig.gateway.log()));
    only_tool_result_of(request)
}

fn offered_functions(request: &ProviderRequest) -> Vec<String> {
    request.body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
        .collect()
}

/// The pid the server wrote, waiting for it to start.
async fn server_pid(pid_file: &Path) -> i32 {
    let mut pid = None;
    let found = eventually(PATIENCE, || {
        pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        pid.is_some()
    })
    .await;
    assert!(found, "the MCP server never wrote {}", pid_file.display());
    pid.unwrap_or_default()
}

fn alive(pid: i32) -> bool {
    procs::info(pid).is_some_and(|p| !p.is_zombie())
}

async fn assert_gone(pid: i32, what: &str) {
    assert!(
        eventually(Duration::from_secs(10), || !alive(pid)).await,
        "{what} (pid {pid}) is still running: {:?}",
        procs::info(pid)
    );
}

/// Acceptance 1: the model calls `add`, its result comes back to the model as a `tool`
/// message, and the chat gets the answer. The server runs in its worker's process group,
/// kept for the next job in pool mode, ended with the worker in per-request mode (the
/// deadline test checks the group while the worker still runs, in both modes).
async fn tool_result_reaches_the_model_and_the_answer_the_chat(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let mut rig = rig(mode, calc(&pid_file, &[], 30), |o| o.pool_size = 1).await;
    rig.provider
        .push(tool_call("calc__add", r#"{"a": 2, "b": 3}"#));
    rig.provider.push(ProviderReply::Text("2 + 3 = 5".into()));
    let reply = rig.ask("what is 2 + 3?").await;
    assert_eq!(reply.text, "2 + 3 = 5", "{}", rig.gateway.log());
    rig.assert_replies(1);

    let requests = rig.provider.requests();
    assert_eq!(requests.len(), 2);
    let mut offered = offered_functions(&requests[0]);
    offered.sort();
    // `env`, `shell` and `connect` are on the server's second page of tools.
    assert_eq!(
        offered,
        [
            "attach_file",
            "calc__add",
            "calc__chart",
            "calc__connect",
            "calc__env",
            "calc__shell",
            "calc__sleep"
        ]
    );
    let add = requests[0].body["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["function"]["name"] == "calc__add"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(add["type"], "function");
    assert_eq!(add["function"]["parameters"]["required"], json!(["a", "b"]));
    let messages = requests[1].body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let call = &messages[messages.len() - 2];
    assert_eq!(call["role"], "assistant");
    assert_eq!(call["tool_calls"][0]["id"], "call_1");
    assert_eq!(call["tool_calls"][0]["function"]["name"], "calc__add");
    assert_eq!(only_tool_result(&rig, 1), "5");

    let server = server_pid(&pid_file).await;
    match mode {
        WorkerMode::Pool => {
            let info = procs::info(server).expect("pool mode keeps the server running");
            let worker = procs::info(info.ppid).expect("its parent is running");
            assert_eq!(
                worker.ppid, rig.pid,
                "the server's parent is a worker of this gateway"
            );
            assert_eq!(worker.pgid, worker.pid, "the worker leads its own group");
            assert_eq!(
                info.pgid, worker.pgid,
                "the server is in its worker's group"
            );
            let next = rig.ask("and now?").await;
            assert_eq!(next.text, "echo: and now?");
            assert!(alive(server), "pool mode keeps the server for the next job");
            assert_eq!(server_pid(&pid_file).await, server, "not restarted");
            assert_eq!(offered_functions(&rig.provider.requests()[2]).len(), 7);
        }
        WorkerMode::PerRequest => {
            assert_gone(server, "the per-request worker's tool server").await;
        }
    }
    rig.gateway.assert_running(rig.pid);
}

/// Acceptance 2: `sleep` takes longer than `timeout_secs`; the model is told so, the chat
/// gets an answer, and the server (which may still be sleeping) is gone after the job.
async fn tool_slower_than_its_timeout_is_an_error_result_for_the_model(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let mut rig = rig(mode, calc(&pid_file, &[], 1), |_| {}).await;
    rig.provider
        .push(tool_call("calc__sleep", r#"{"secs": 60}"#));
    rig.provider
        .push(ProviderReply::Text("the tool was too slow, sorry".into()));
    let started = Instant::now();
    let reply = rig.ask("take a nap").await;
    assert_eq!(
        reply.text,
        "the tool was too slow, sorry",
        "{}",
        rig.gateway.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    rig.assert_replies(1);
    let result = only_tool_result(&rig, 1);
    assert!(result.starts_with("error:"), "{result}");
    assert!(result.contains("did not answer within 1 s"), "{result}");
    let server = server_pid(&pid_file).await;
    assert_gone(server, "the server with a timed-out call").await;
    rig.assert_still_serving().await;
}

/// Acceptance 3: the tool hangs past the job's deadline. One "took too long" reply, the
/// worker's whole process group (its MCP server included) killed, the gateway unchanged,
/// the next message answered.
async fn tool_past_the_job_deadline_ends_the_workers_whole_group(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let mut rig = rig(mode, calc(&pid_file, &[], 60), |o| o.job_timeout_secs = 3).await;
    rig.provider
        .push(tool_call("calc__sleep", r#"{"secs": 600}"#));
    rig.telegram.send_text(USER, USER, "sleep forever");
    let server = server_pid(&pid_file).await;
    let group = procs::info(server).expect("the server is running").pgid;
    assert!(
        procs::info(group).is_some_and(|w| w.ppid == rig.pid),
        "the server's group is led by a worker of this gateway"
    );
    let sent = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    let reply = sent
        .first()
        .unwrap_or_else(|| panic!("no reply\n{}", rig.gateway.log()));
    assert!(reply.text.contains("took too long"), "{}", reply.text);
    // The worker said so itself, so the gateway ended the group at the deadline rather
    // than after its own margin.
    rig.assert_logged("asks to be retired");
    assert!(
        eventually(Duration::from_secs(10), || procs::live_group_members(group)
            .is_empty())
        .await,
        "left of the worker's group: {:?}",
        procs::live_group_members(group)
    );
    assert!(!alive(server));
    rig.assert_replies(1);
    rig.assert_still_serving().await;
    rig.assert_replies(2);
}

/// Acceptance 4: a server that dies at start costs its tools, not the answer.
async fn tool_server_crashing_at_start_leaves_the_job_without_its_tools(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let mut rig = rig(mode, calc(&pid_file, &["--crash-at-start"], 30), |_| {}).await;
    let reply = rig.ask("hello").await;
    assert_eq!(reply.text, "echo: hello", "{}", rig.gateway.log());
    rig.assert_replies(1);
    let requests = rig.provider.requests();
    assert!(
        requests[0].body.get("tools").is_none(),
        "{:#?}",
        requests[0].body
    );
    rig.assert_logged("tool server unavailable");
    rig.assert_still_serving().await;
}

/// Acceptance 4: a server that dies in the middle of a call: the model is told the tool is
/// unavailable, the chat gets an answer, and the next job starts the server again.
async fn tool_server_crashing_mid_call_is_an_error_result(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let mut rig = rig(
        mode,
        calc(&pid_file, &["--crash-on-call", "add"], 30),
        |o| o.pool_size = 1,
    )
    .await;
    rig.provider
        .push(tool_call("calc__add", r#"{"a": 1, "b": 1}"#));
    rig.provider
        .push(ProviderReply::Text("the calculator broke".into()));
    let reply = rig.ask("1 + 1?").await;
    assert_eq!(reply.text, "the calculator broke", "{}", rig.gateway.log());
    rig.assert_replies(1);
    let result = only_tool_result(&rig, 1);
    assert!(result.contains("\"calc\" is not available"), "{result}");
    rig.assert_still_serving().await;
    let requests = rig.provider.requests();
    assert_eq!(
        offered_functions(&requests[2]).len(),
        7,
        "the next job has the server again"
    );
}

/// Acceptance 4: the model names a tool that does not exist.
async fn unknown_tool_name_is_an_error_result(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rig = rig(mode, calc(&dir.path().join("calc.pid"), &[], 30), |_| {}).await;
    rig.provider
        .push(tool_call("calc__divide", r#"{"a": 1, "b": 0}"#));
    rig.provider
        .push(ProviderReply::Text("I cannot divide".into()));
    let reply = rig.ask("1 / 0?").await;
    assert_eq!(reply.text, "I cannot divide", "{}", rig.gateway.log());
    rig.assert_replies(1);
    let result = only_tool_result(&rig, 1);
    assert!(
        result.contains("no tool named \"calc__divide\""),
        "{result}"
    );
    assert!(
        result.contains("calc__add"),
        "it lists what exists: {result}"
    );
    rig.assert_still_serving().await;
}

/// Acceptance 4: the model's arguments are not JSON.
async fn invalid_json_arguments_are_an_error_result(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rig = rig(mode, calc(&dir.path().join("calc.pid"), &[], 30), |_| {}).await;
    rig.provider
        .push(tool_call("calc__add", r#"{"a": 2, "b":"#));
    rig.provider.push(ProviderReply::Text("oops".into()));
    let reply = rig.ask("2 + ?").await;
    assert_eq!(reply.text, "oops", "{}", rig.gateway.log());
    rig.assert_replies(1);
    let result = only_tool_result(&rig, 1);
    assert!(result.contains("not valid JSON"), "{result}");
    rig.assert_still_serving().await;
}

/// Several calls in one answer run at the same time, and their results come back in the
/// order of the calls.
async fn several_calls_in_one_answer_run_concurrently(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rig = rig(mode, calc(&dir.path().join("calc.pid"), &[], 30), |_| {}).await;
    rig.provider.push(tool_calls(&[
        ("call_a", "calc__sleep", r#"{"secs": 2}"#),
        ("call_b", "calc__sleep", r#"{"secs": 2}"#),
        ("call_c", "calc__add", r#"{"a": 40, "b": 2}"#),
    ]));
    rig.provider.push(ProviderReply::Text("done".into()));
    let reply = rig.ask("do three things").await;
    assert_eq!(reply.text, "done", "{}", rig.gateway.log());
    let requests = rig.provider.requests();
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(gap >= Duration::from_secs(2), "{gap:?}");
    assert!(
        gap < Duration::from_millis(3900),
        "the sleeps ran one after the other: {gap:?}"
    );
    assert_eq!(
        tool_messages(&requests[1]),
        [
            ("call_a".to_string(), "slept 2 s".to_string()),
            ("call_b".to_string(), "slept 2 s".to_string()),
            ("call_c".to_string(), "42".to_string()),
        ]
    );
    rig.assert_still_serving().await;
}

/// Acceptance 5: a tool's environment holds none of the service's secrets or service-manager
/// addresses, only the basics and what its entry names.
async fn tools_see_none_of_the_services_secrets(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = Vec::new();
    let tools = tool_entry("calc", mcp_server(), &args, 30, &["HERMES_TEST_PASSED"]);
    let notify = dir.path().join("notify.sock").display().to_string();
    let mut rig = rig(mode, tools, |o| {
        o.env = vec![
            ("NOTIFY_SOCKET".into(), notify),
            (
                "DBUS_SESSION_BUS_ADDRESS".into(),
                "unix:path=/nonexistent/bus".into(),
            ),
            ("XDG_RUNTIME_DIR".into(), "/nonexistent/xdg".into()),
            ("HERMES_TEST_PASSED".into(), "passed-through".into()),
        ]
    })
    .await;
    rig.provider.push(tool_call("calc__env", "{}"));
    rig.provider.push(ProviderReply::Text("seen".into()));
    assert_eq!(rig.ask("what do you see?").await.text, "seen");
    let env = only_tool_result(&rig, 1);
    assert!(env.contains("HERMES_TEST_PASSED=passed-through"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    for secret in [
        "NOTIFY_SOCKET",
        "DBUS_SESSION_BUS_ADDRESS",
        "XDG_RUNTIME_DIR",
        "HERMES_WORKER_TOKEN",
        "HERMES_WORKER_SOCKET",
        "HERMES_TEST_TELEGRAM_TOKEN",
        TOKEN,
        "HERMES_TEST_PROVIDER_KEY",
        "sk-test-key",
    ] {
        assert!(!env.contains(secret), "a tool sees {secret}:\n{env}");
    }
    rig.assert_still_serving().await;
}

/// The Python interpreter that has the reference time server installed, if any.
fn python_with_time_server() -> Result<String, String> {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys, mcp_server_time; print(sys.executable)"])
        .output()
        .map_err(|e| format!("python3 cannot be run: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "mcp-server-time is not installed (.ci/run installs it with pip): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Acceptance 6: a third-party server, the reference `mcp-server-time` from PyPI,
/// answers a call end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_time_server_from_pypi_answers_a_call() {
    let python = match python_with_time_server() {
        Ok(python) => python,
        Err(reason) => {
            hermes_tests::skip::skip(&reason);
            return;
        }
    };
    let args = ["-m".to_string(), "mcp_server_time".to_string()];
    let tools = tool_entry("time", Path::new(&python), &args, 30, &[]);
    let mut rig = rig(WorkerMode::Pool, tools, |_| {}).await;
    rig.provider.push(tool_call(
        "time__get_current_time",
        r#"{"timezone": "Etc/UTC"}"#,
    ));
    rig.provider.push(ProviderReply::Text("it is now".into()));
    let reply = rig.ask("what time is it in UTC?").await;
    assert_eq!(reply.text, "it is now", "{}", rig.gateway.log());
    let offered = offered_functions(&rig.provider.requests()[0]);
    assert!(
        offered.contains(&"time__get_current_time".to_string()),
        "{offered:?}"
    );
    assert!(
        offered.contains(&"time__convert_time".to_string()),
        "{offered:?}"
    );
    let result = only_tool_result(&rig, 1);
    let value: Value = serde_json::from_str(&result)
        .unwrap_or_else(|e| panic!("not the server's JSON ({e}): {result}"));
    assert_eq!(value["timezone"], "Etc/UTC", "{result}");
    assert!(
        value["datetime"].as_str().is_some_and(|d| d.contains('T')),
        "{result}"
    );
    rig.assert_still_serving().await;
}

/// With streaming on, a tool that takes a while shows as a status line, and that same
/// message becomes the answer.
async fn the_chat_shows_a_status_line_while_a_tool_runs(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let rig = rig(mode, calc(&pid_file, &[], 30), |o| {
        o.telegram_toml = "streaming = true\nedit_interval_ms = 200".into();
    })
    .await;
    rig.provider
        .push(tool_call("calc__sleep", r#"{"secs": 2}"#));
    rig.provider
        .push(ProviderReply::Text("I slept **well**.".into()));
    rig.telegram.send_text(USER, USER, "take a nap");
    let status = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == USER && m.text.contains("using calc.sleep"),
            PATIENCE,
        )
        .await
        .unwrap_or_else(|| panic!("no status line\n{}", rig.gateway.log()));
    assert_eq!(status.method, "sendMessage");
    let answer = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == USER && m.text.contains("<b>well</b>"),
            PATIENCE,
        )
        .await
        .unwrap_or_else(|| panic!("no answer\n{:#?}", rig.telegram.sent_to(USER)));
    assert_eq!(answer.method, "editMessageText");
    assert_eq!(
        answer.message_id, status.message_id,
        "the status line became the answer"
    );
    assert!(!answer.text.contains("using"), "{}", answer.text);
    let sends = rig.telegram.sent_to(USER);
    assert_eq!(
        sends.iter().filter(|m| m.method == "sendMessage").count(),
        1,
        "{sends:#?}"
    );
}

/// The conversation keeps the tool call and its result: the next question is sent with
/// them, in the order the provider needs (call, then result, then answer).
async fn a_follow_up_question_sees_the_earlier_tool_results(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let rig = rig(mode, calc(&pid_file, &[], 30), |_| {}).await;
    rig.provider
        .push(tool_call("calc__add", r#"{"a": 20, "b": 22}"#));
    rig.provider.push(ProviderReply::Text("It is 42.".into()));
    assert_eq!(rig.ask("add 20 and 22").await.text, "It is 42.");
    assert_eq!(
        rig.ask("and what was that again?").await.text,
        "echo: and what was that again?"
    );
    let requests = rig.provider.requests();
    let history = requests[2].body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let roles: Vec<&str> = history.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(
        roles,
        ["user", "assistant", "tool", "assistant", "user"],
        "{history:#?}"
    );
    assert_eq!(history[1]["tool_calls"][0]["function"]["name"], "calc__add");
    assert_eq!(history[2]["content"], "42");
    assert_eq!(
        history[2]["tool_call_id"],
        history[1]["tool_calls"][0]["id"]
    );
}

async fn a_model_that_keeps_calling_tools_is_stopped_after_max_steps(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let tools = format!("{}\n[agent]\nmax_steps = 2\n", calc(&pid_file, &[], 30));
    let mut rig = rig(mode, tools, |_| {}).await;
    for _ in 0..2 {
        rig.provider
            .push(tool_call("calc__add", r#"{"a": 1, "b": 1}"#));
    }
    let reply = rig.ask("loop forever").await;
    assert!(
        reply.text.starts_with("I stopped after 2 steps"),
        "{}",
        reply.text
    );
    assert_eq!(rig.provider.request_count(), 2);
    rig.assert_replies(1);
    rig.assert_still_serving().await;
}

/// A tool call of the stubborn kind (SIGTERM ignored, by the server and by a child it
/// starts), with the child's pid written to `child_pid_file`.
fn stubborn_call(child_pid_file: &Path) -> ProviderReply {
    let arguments = json!({"secs": 600, "child_pid_file": child_pid_file}).to_string();
    tool_call("calc__stubborn", &arguments)
}

/// The stubborn server and its child, once both run and ignore SIGTERM.
async fn stubborn_processes(pid_file: &Path, child_pid_file: &Path) -> [i32; 2] {
    let server = server_pid(pid_file).await;
    let child = server_pid(child_pid_file).await;
    for pid in [server, child] {
        assert!(
            eventually(PATIENCE, || procs::ignores(
                pid,
                nix::sys::signal::Signal::SIGTERM
            ))
            .await,
            "{:?} does not ignore SIGTERM",
            procs::info(pid)
        );
    }
    [server, child]
}

/// `/stop` while a tool runs, and the tool is one that ignores SIGTERM and has started a
/// child that ignores it too: the chat hears "Stopped" once the tool, its child and the
/// worker are all gone, and the next message is answered.
async fn stop_while_a_tool_runs_ends_the_tool_and_what_it_started(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let child_pid_file = dir.path().join("child.pid");
    let mut rig = rig(mode, calc(&pid_file, &["--stubborn-tool"], 600), |o| {
        o.job_timeout_secs = 60;
        o.pool_size = 1;
    })
    .await;
    rig.provider.push(stubborn_call(&child_pid_file));
    rig.telegram.send_text(USER, USER, "hold everything");
    let [server, child] = stubborn_processes(&pid_file, &child_pid_file).await;
    let reply = rig.ask("/stop").await;
    assert!(reply.text.contains("Stopped"), "{}", reply.text);
    // Found by the harness's own check (the gateway's session), then by pid.
    rig.assert_no_stray_processes().await;
    assert_gone(server, "the stubborn tool server").await;
    assert_gone(child, "the stubborn tool's child").await;
    rig.assert_replies(1);
    rig.assert_still_serving().await;
}

/// The same stubborn tool still running at the job's deadline: "took too long", and the
/// worker's group, the tool and its child included, gone.
async fn a_tool_ignoring_sigterm_dies_with_the_group_at_the_deadline(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let child_pid_file = dir.path().join("child.pid");
    let mut rig = rig(mode, calc(&pid_file, &["--stubborn-tool"], 600), |o| {
        o.job_timeout_secs = 3;
        o.pool_size = 1;
    })
    .await;
    rig.provider.push(stubborn_call(&child_pid_file));
    rig.telegram.send_text(USER, USER, "hold everything");
    let [server, child] = stubborn_processes(&pid_file, &child_pid_file).await;
    let sent = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert!(
        sent.first()
            .is_some_and(|m| m.text.contains("took too long")),
        "{sent:?}\n{}",
        rig.gateway.log()
    );
    // Found by the harness's own check (the gateway's session), then by pid.
    rig.assert_no_stray_processes().await;
    assert_gone(server, "the stubborn tool server").await;
    assert_gone(child, "the stubborn tool's child").await;
    rig.assert_replies(1);
    rig.assert_still_serving().await;
}

/// `hermes-worker ask` runs the same agent: it starts the tool servers, prints each call's
/// progress to stderr and the answer to stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_prints_tool_progress_and_the_answer() {
    // The configuration gives no key, so the provider is one that wants none.
    let provider = hermes_tests::fake_provider::FakeProvider::start_with_key(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("calc.pid");
    let config = dir.path().join("hermes.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"main\"\nbase_url = \"{}\"\nmodel = \"m\"\n{}",
            provider.base_url(),
            calc(&pid_file, &[], 30)
        ),
    )
    .expect("write config");
    provider.push(tool_call("calc__add", r#"{"a": 40, "b": 2}"#));
    provider.push(ProviderReply::Text("40 + 2 = 42".into()));
    let output = tokio::process::Command::new(&hermes_tests::harness::binaries().worker)
        .args(["ask", "--config"])
        .arg(&config)
        .arg("what is 40 + 2?")
        .output()
        .await
        .expect("run hermes-worker ask");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "40 + 2 = 42"
    );
    assert!(stderr.contains("calling calc.add"), "{stderr}");
    assert!(stderr.contains("calc.add done in"), "{stderr}");
    assert_eq!(only_tool_result_of(&provider.requests()[1]), "42");
    let server = server_pid(&pid_file).await;
    assert!(!alive(server), "the tool server ended with ask");
}

/// The only tool result of `request`, the answer to `call_1`.
fn only_tool_result_of(request: &ProviderRequest) -> String {
    let results = tool_messages(request);
    assert_eq!(results.len(), 1, "{:#?}", request.body);
    assert_eq!(results[0].0, "call_1");
    results[0].1.clone()
}
