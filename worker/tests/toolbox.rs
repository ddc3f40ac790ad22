//! The toolbox against the tests crate's real MCP server (`mcp-server`), in process:
//! which servers a worker keeps between jobs and which it replaces, and how a call that
//! times out, outlives the deadline, or kills its server ends. The same behaviour through
//! the gateway is in `tests/tests/tools.rs`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hermes_protocol::{Event, ToolCall, ToolServer};
use hermes_tests::harness::{cargo_build, eventually, target_profile_dir};
use hermes_worker::tools::{Abandoned, Toolbox};
use tokio::sync::mpsc;

fn mcp_server() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        cargo_build();
        target_profile_dir().join("mcp-server")
    })
}

fn calc(pid_file: &Path, extra: &[&str], call_timeout_ms: u64) -> ToolServer {
    let mut args = vec!["--pid-file".to_string(), pid_file.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    ToolServer {
        call_timeout_ms,
        ..ToolServer::new("calc", mcp_server().display().to_string(), args)
    }
}

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: "call_1".into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

fn pid(pid_file: &Path) -> i32 {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", pid_file.display()))
}

fn alive(pid: i32) -> bool {
    hermes_tests::procs::info(pid).is_some_and(|p| !p.is_zombie())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

async fn call_one(toolbox: &Toolbox, c: ToolCall, deadline: Instant) -> Result<String, Abandoned> {
    let (events, _rx) = mpsc::unbounded_channel::<Event>();
    let mut results = toolbox.call_all(&[c], deadline, &events).await?;
    Ok(results.remove(0).content)
}

#[tokio::test]
async fn unchanged_servers_are_kept_and_changed_ones_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("calc.pid");
    let mut toolbox = Toolbox::default();
    toolbox.prepare(&[calc(&pid_file, &[], 5000)], soon()).await;
    assert_eq!(toolbox.definitions().len(), 6, "both pages of tools");
    let first = pid(&pid_file);
    assert_eq!(
        call_one(&toolbox, call("calc__add", r#"{"a":1,"b":2}"#), soon()).await,
        Ok("3".into())
    );

    toolbox.prepare(&[calc(&pid_file, &[], 5000)], soon()).await;
    assert_eq!(pid(&pid_file), first, "same entry: same server");

    toolbox.prepare(&[calc(&pid_file, &[], 6000)], soon()).await;
    let second = pid(&pid_file);
    assert_ne!(second, first, "changed entry: a new server");
    assert!(eventually(Duration::from_secs(5), || !alive(first)).await);

    toolbox.prepare(&[], soon()).await;
    assert!(toolbox.definitions().is_empty());
    assert!(eventually(Duration::from_secs(5), || !alive(second)).await);
}

#[tokio::test]
async fn a_call_past_its_timeout_is_an_error_and_its_server_is_replaced_after_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("calc.pid");
    let mut toolbox = Toolbox::default();
    toolbox.prepare(&[calc(&pid_file, &[], 300)], soon()).await;
    let server = pid(&pid_file);
    let started = Instant::now();
    let result = call_one(&toolbox, call("calc__sleep", r#"{"secs":30}"#), soon())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(result.contains("did not answer within"), "{result}");
    // The server still answers other calls during the job…
    assert_eq!(
        call_one(&toolbox, call("calc__add", r#"{"a":1,"b":1}"#), soon()).await,
        Ok("2".into())
    );
    // …and is ended after it, to start afresh with the next.
    toolbox.stop_stale().await;
    assert!(eventually(Duration::from_secs(5), || !alive(server)).await);
    toolbox.prepare(&[calc(&pid_file, &[], 300)], soon()).await;
    assert_ne!(pid(&pid_file), server);
    assert_eq!(toolbox.definitions().len(), 6);
    toolbox.shutdown().await;
}

#[tokio::test]
async fn a_call_still_running_at_the_deadline_is_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("calc.pid");
    let mut toolbox = Toolbox::default();
    toolbox
        .prepare(&[calc(&pid_file, &[], 60_000)], soon())
        .await;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(500);
    let result = call_one(&toolbox, call("calc__sleep", r#"{"secs":30}"#), deadline).await;
    assert_eq!(result, Err(Abandoned));
    assert!(started.elapsed() < Duration::from_secs(3));
    toolbox.shutdown().await;
}

#[tokio::test]
async fn a_server_dying_mid_call_is_an_error_result_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("calc.pid");
    let spec = calc(&pid_file, &["--crash-on-call", "add"], 5000);
    let mut toolbox = Toolbox::default();
    toolbox.prepare(std::slice::from_ref(&spec), soon()).await;
    let server = pid(&pid_file);
    let result = call_one(&toolbox, call("calc__add", r#"{"a":1,"b":1}"#), soon())
        .await
        .unwrap();
    assert!(result.contains("\"calc\" is not available"), "{result}");
    assert!(eventually(Duration::from_secs(5), || !alive(server)).await);
    toolbox.prepare(std::slice::from_ref(&spec), soon()).await;
    assert_ne!(pid(&pid_file), server, "the next job starts it again");
    assert_eq!(
        call_one(&toolbox, call("calc__sleep", r#"{"secs":0}"#), soon()).await,
        Ok("slept 0 s".into())
    );
    toolbox.shutdown().await;
}

/// Pool mode: a server that died between jobs is noticed and started again.
#[tokio::test]
async fn a_server_that_died_while_idle_is_restarted_by_the_next_job() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("calc.pid");
    let spec = calc(&pid_file, &[], 5000);
    let mut toolbox = Toolbox::default();
    toolbox.prepare(std::slice::from_ref(&spec), soon()).await;
    let server = pid(&pid_file);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || !alive(server)).await);
    // The SDK notices the closed pipe on its own task; give it the chance.
    let noticed = Instant::now() + Duration::from_secs(5);
    loop {
        toolbox.prepare(std::slice::from_ref(&spec), soon()).await;
        if pid(&pid_file) != server || Instant::now() > noticed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(pid(&pid_file), server);
    assert_eq!(
        call_one(&toolbox, call("calc__add", r#"{"a":2,"b":2}"#), soon()).await,
        Ok("4".into())
    );
    toolbox.shutdown().await;
}

#[tokio::test]
async fn refused_calls_and_tool_errors_are_results() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("calc.pid");
    let mut toolbox = Toolbox::default();
    toolbox.prepare(&[calc(&pid_file, &[], 5000)], soon()).await;
    let result = call_one(&toolbox, call("calc__add", r#"{"a":"one"}"#), soon())
        .await
        .unwrap();
    assert!(
        result.contains("refused the call: a must be a number"),
        "{result}"
    );
    let result = call_one(&toolbox, call("calc__add", "[1, 2]"), soon())
        .await
        .unwrap();
    assert!(
        result.contains("must be a JSON object, not an array"),
        "{result}"
    );
    toolbox.shutdown().await;
    assert!(eventually(Duration::from_secs(5), || !alive(pid(&pid_file))).await);
}

/// A confirmed tool runs only after an approval; a denial, a timeout, a chat that could
/// not be asked, or nobody to ask at all is an error result and the tool does not run.
#[tokio::test]
async fn a_confirmed_tool_runs_only_when_approved() {
    use hermes_protocol::{Confirm, Decision};
    use hermes_worker::tools::Ask;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("calc.pid");
    let spec = ToolServer {
        confirm: Confirm::Tools(vec!["add".into()]),
        confirm_timeout_ms: 7_000,
        ..calc(&pid_file, &[], 5000)
    };
    let mut toolbox = Toolbox::default();
    toolbox.prepare(std::slice::from_ref(&spec), soon()).await;

    // Not confirmed: runs without asking, even with nobody to ask.
    assert_eq!(
        call_one(&toolbox, call("calc__env", ""), soon())
            .await
            .map(|r| r.contains("PATH=")),
        Ok(true)
    );
    let nobody = call_one(&toolbox, call("calc__add", r#"{"a":1,"b":2}"#), soon())
        .await
        .unwrap();
    assert!(nobody.starts_with("error:"), "{nobody}");
    assert!(nobody.contains("nobody to ask"), "{nobody}");

    let (asks, mut asked) = mpsc::unbounded_channel::<Ask>();
    toolbox.set_approvals(Some(asks));
    for (decision, expected) in [
        (Decision::Allowed { by: "Ann".into() }, "3"),
        (
            Decision::Denied { by: "Ann".into() },
            "error: the user (Ann) denied this call",
        ),
        (
            Decision::TimedOut,
            "error: nobody approved this call within 7 s",
        ),
        (
            Decision::Unavailable {
                reason: "Telegram refused".into(),
            },
            "error: the user could not be asked to approve this call (Telegram refused)",
        ),
    ] {
        let answering = async {
            let ask = asked.recv().await.expect("asked");
            assert_eq!(ask.tool, "calc.add");
            assert_eq!(ask.arguments, r#"{"a":1,"b":2}"#);
            assert_eq!(ask.timeout_ms, 7_000);
            let _ = ask.decide.send(decision);
        };
        let (result, ()) = tokio::join!(
            call_one(&toolbox, call("calc__add", r#"{"a":1,"b":2}"#), soon()),
            answering
        );
        let result = result.unwrap();
        assert!(result.starts_with(expected), "{result}");
    }

    // The job's deadline comes before any answer: the call is not run either.
    let deadline = Instant::now() + Duration::from_millis(300);
    let result = call_one(&toolbox, call("calc__add", r#"{"a":1,"b":2}"#), deadline)
        .await
        .unwrap();
    assert!(result.contains("ran out while waiting"), "{result}");
    assert!(asked.recv().await.is_some(), "it was asked");
    toolbox.shutdown().await;
}
