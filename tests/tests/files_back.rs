//! Files back to the user (issue 23), through the real binaries: the tests crate's MCP
//! server writes files into the job's output directory (through its `shell` tool) or
//! answers an image (`chart`), the fake provider attaches them with the built-in
//! `attach_file` tool, and the fake Telegram takes the uploads as Telegram does.
//!
//! Each test is a way files get lost or leak elsewhere: the chat gets a CSV as a document
//! with its name and an image as a photo; a symlink to `/etc/passwd` or a file over the
//! bound is refused with a reply and never uploaded; Telegram failing the upload delays
//! the file, which then arrives once; a gateway killed after committing the file and
//! before sending it sends it once after the restart; and the worker never holds the
//! token.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::fake_telegram::TOKEN;
use hermes_tests::harness::{
    Gateway, GatewayOptions, PATIENCE, Rig, USER, cargo_build, target_profile_dir,
};
use nix::sys::signal::Signal;

hermes_tests::both_modes!(
    a_csv_a_tool_wrote_reaches_the_chat_as_a_document_with_its_name,
    an_image_a_tool_returns_reaches_the_chat_as_a_photo,
    a_symlink_or_a_file_over_the_bound_is_refused_and_never_uploaded,
    telegram_failing_the_upload_delays_the_file_and_it_arrives_once,
    a_file_committed_before_a_kill_arrives_once_after_the_restart,
    the_worker_and_its_files_never_hold_the_token,
    a_file_telegram_refuses_for_good_is_said_in_the_chat_once,
    an_answer_longer_than_ten_messages_follows_whole_as_a_document,
);

const CSV: &str = "a,b\n1,2\n";

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

/// The MCP server as `calc`, and what a test adds to `[telegram]`.
fn options(mode: WorkerMode, telegram: &str) -> impl FnOnce(&mut GatewayOptions) {
    let telegram = telegram.to_string();
    move |o: &mut GatewayOptions| {
        o.mode = mode;
        o.pool_size = 1;
        o.telegram_toml = format!("streaming = false\n{telegram}\n");
        o.extra_toml = format!(
            "\n[[tools.mcp]]\nname = \"calc\"\ncommand = {}\ntimeout_secs = 20\n",
            serde_json::to_string(&mcp_server().display().to_string()).unwrap_or_default()
        );
    }
}

async fn rig(mode: WorkerMode, telegram: &str) -> Rig {
    Rig::start(mode, options(mode, telegram)).await
}

fn call(id: &str, name: &str, arguments: &str) -> ProviderReply {
    ProviderReply::tool_calls(&[(id, name, arguments)])
}

/// The model runs `command` in the tools' working directory, attaches `names`, answers.
fn script(rig: &Rig, command: &str, names: &[&str], answer: &str) {
    let arguments = serde_json::json!({ "command": command }).to_string();
    rig.provider.push(call("call_1", "calc__shell", &arguments));
    let attaches: Vec<(String, String)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                format!("attach_{i}"),
                serde_json::json!({ "path": n }).to_string(),
            )
        })
        .collect();
    let calls: Vec<(&str, &str, &str)> = attaches
        .iter()
        .map(|(id, args)| (id.as_str(), "attach_file", args.as_str()))
        .collect();
    rig.provider.push(ProviderReply::tool_calls(&calls));
    rig.provider.push(ProviderReply::Text(answer.into()));
}

async fn a_csv_a_tool_wrote_reaches_the_chat_as_a_document_with_its_name(mode: WorkerMode) {
    let rig = rig(mode, "").await;
    script(
        &rig,
        &format!("printf '{}' > out/data.csv", CSV.replace('\n', "\\n")),
        &["data.csv"],
        "here is the table",
    );
    let reply = rig.ask("make me a table").await;
    assert_eq!(reply.text, "here is the table", "{}", rig.gateway.log());
    let uploads = rig.telegram.wait_for_uploads(1, PATIENCE).await;
    assert_eq!(uploads.len(), 1, "{}", rig.gateway.log());
    assert_eq!(uploads[0].method, "sendDocument");
    assert_eq!(uploads[0].file_name, "data.csv");
    assert_eq!(uploads[0].chat_id, USER);
    assert_eq!(uploads[0].bytes, CSV.as_bytes());
    assert!(uploads[0].at >= reply.at, "the file comes after the answer");
    // It left the store's file area once Telegram had it.
    let area = rig.gateway.dir.path().join("state").join("outgoing");
    assert!(
        hermes_tests::harness::eventually(PATIENCE, || std::fs::read_dir(&area)
            .map(|d| d.count() == 0)
            .unwrap_or(false))
        .await,
        "{} still holds the file",
        area.display()
    );
    // The next job gets an output directory of its own (in pool mode the same worker and
    // tool server, the directory made anew): the new file goes, the old one is gone.
    script(
        &rig,
        "test ! -e out/data.csv && echo x > out/more.csv",
        &["more.csv"],
        "one more",
    );
    assert_eq!(rig.ask("another").await.text, "one more");
    let uploads = rig.telegram.wait_for_uploads(2, PATIENCE).await;
    assert_eq!(uploads.len(), 2, "{}", rig.gateway.log());
    assert_eq!(uploads[1].file_name, "more.csv");
    assert_eq!(uploads[1].bytes, b"x\n");
}

async fn an_image_a_tool_returns_reaches_the_chat_as_a_photo(mode: WorkerMode) {
    let rig = rig(mode, "").await;
    rig.provider.push(call("call_1", "calc__chart", "{}"));
    rig.provider.push(ProviderReply::Text("your chart".into()));
    let reply = rig.ask("draw it").await;
    assert_eq!(reply.text, "your chart", "{}", rig.gateway.log());
    let uploads = rig.telegram.wait_for_uploads(1, PATIENCE).await;
    assert_eq!(uploads.len(), 1, "{}", rig.gateway.log());
    assert_eq!(uploads[0].method, "sendPhoto");
    assert!(uploads[0].bytes.starts_with(b"\x89PNG"));
    // The model read that it goes to the user.
    let requests = rig.provider.requests();
    let said = requests[1].body.to_string();
    assert!(said.contains("will be sent to the user"), "{said}");
}

async fn a_symlink_or_a_file_over_the_bound_is_refused_and_never_uploaded(mode: WorkerMode) {
    let rig = rig(mode, "max_send_file_mb = 1").await;
    script(
        &rig,
        "ln -s /etc/passwd out/passwd && head -c 1100000 /dev/zero > out/big.bin",
        &["passwd", "big.bin"],
        "sent both",
    );
    rig.telegram.send_text(USER, USER, "send me the files");
    let messages = rig.telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(messages.len(), 2, "{}", rig.gateway.log());
    assert_eq!(messages[0].text, "sent both");
    let note = &messages[1].text;
    assert!(
        note.contains("Not sent") && note.contains("passwd") && note.contains("big.bin"),
        "{note}"
    );
    assert!(note.contains("not a regular file"), "{note}");
    assert!(note.contains("larger than the 1 MB"), "{note}");
    // The answer's pieces were committed together, files last: nothing follows.
    assert!(rig.ask("anything else?").await.text.starts_with("echo"));
    assert!(
        rig.telegram.uploads().is_empty(),
        "{:?}",
        rig.telegram.uploads()
    );
    assert_eq!(
        rig.telegram.calls("sendDocument") + rig.telegram.calls("sendPhoto"),
        0
    );
}

async fn telegram_failing_the_upload_delays_the_file_and_it_arrives_once(mode: WorkerMode) {
    let rig = rig(mode, "").await;
    // One 500 (teloxide pauses 10 s after it), then two broken connections.
    rig.telegram.fail_uploads(1);
    script(
        &rig,
        &format!("printf '{}' > out/data.csv", CSV.replace('\n', "\\n")),
        &["data.csv"],
        "here",
    );
    assert_eq!(rig.ask("table").await.text, "here");
    assert!(rig.telegram.wait_for_failed_uploads(1, PATIENCE).await);
    rig.telegram.reset_uploads(2);
    let uploads = rig.telegram.wait_for_uploads(1, PATIENCE).await;
    assert_eq!(rig.telegram.failed_uploads(), 3);
    assert_eq!(uploads.len(), 1, "{}", rig.gateway.log());
    // Nothing more comes: the next answer goes, and still one file.
    assert!(rig.ask("next").await.text.starts_with("echo"));
    assert_eq!(rig.telegram.uploads().len(), 1);
}

async fn a_file_committed_before_a_kill_arrives_once_after_the_restart(mode: WorkerMode) {
    let mut rig = rig(mode, "").await;
    // Held: every upload fails until the gateway is gone.
    rig.telegram.reset_uploads(usize::MAX);
    script(
        &rig,
        &format!("printf '{}' > out/data.csv", CSV.replace('\n', "\\n")),
        &["data.csv"],
        "here",
    );
    assert_eq!(rig.ask("table").await.text, "here");
    assert!(rig.telegram.wait_for_failed_uploads(1, PATIENCE).await);
    rig.gateway.signal(Signal::SIGKILL);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    rig.telegram.fail_uploads(0);
    let mut next = GatewayOptions::new(mode);
    next.providers = vec![rig.provider.base_url()];
    options(mode, "")(&mut next);
    let rig = rig.restart_with(|gateway, telegram, _| {
        Gateway::start_in(gateway.into_dir(), &next, &telegram.api_url())
    });
    let uploads = rig.telegram.wait_for_uploads(1, PATIENCE).await;
    assert_eq!(uploads.len(), 1, "{}", rig.gateway.log());
    assert_eq!(uploads[0].bytes, CSV.as_bytes());
    assert!(rig.ask("after").await.text.starts_with("echo"));
    assert_eq!(rig.telegram.uploads().len(), 1, "sent once");
    assert_eq!(
        rig.telegram
            .sent_to(USER)
            .iter()
            .filter(|m| m.text == "here")
            .count(),
        1
    );
}

async fn the_worker_and_its_files_never_hold_the_token(mode: WorkerMode) {
    let rig = rig(mode, "").await;
    script(&rig, "env > out/env.txt", &["env.txt"], "the environment");
    assert_eq!(rig.ask("env").await.text, "the environment");
    let uploads = rig.telegram.wait_for_uploads(1, PATIENCE).await;
    assert_eq!(uploads.len(), 1, "{}", rig.gateway.log());
    let env = String::from_utf8_lossy(&uploads[0].bytes).to_string();
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains(TOKEN), "a tool's environment holds the token");
    for worker in rig.gateway.workers() {
        if let Ok(environ) = std::fs::read(format!("/proc/{}/environ", worker.pid)) {
            assert!(!String::from_utf8_lossy(&environ).contains(TOKEN));
        }
    }
}

async fn a_file_telegram_refuses_for_good_is_said_in_the_chat_once(mode: WorkerMode) {
    let rig = rig(mode, "").await;
    // Telegram refuses an empty file (400).
    script(&rig, ": > out/empty.txt", &["empty.txt"], "here it is");
    rig.telegram.send_text(USER, USER, "an empty file please");
    let messages = rig.telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(messages.len(), 2, "{}", rig.gateway.log());
    assert_eq!(messages[0].text, "here it is");
    assert!(
        messages[1].text.contains("empty.txt could not be sent")
            && messages[1].text.contains("file must be non-empty"),
        "{}",
        messages[1].text
    );
    assert!(rig.ask("next").await.text.starts_with("echo"));
    assert_eq!(rig.telegram.sent_to(USER).len(), 3, "said once");
    assert!(rig.telegram.uploads().is_empty());
    assert_eq!(rig.telegram.calls("sendDocument"), 1, "not tried again");
}

/// Today's cap is ten messages: the answer is cut there, and now follows whole as
/// `answer.md`, which its last message says.
async fn an_answer_longer_than_ten_messages_follows_whole_as_a_document(mode: WorkerMode) {
    let rig = rig(mode, "").await;
    let answer: String = (0..9000).map(|i| format!("w{i} ")).collect();
    assert!(answer.len() > 10 * 4096 && answer.len() < 64 * 1024);
    rig.provider.push(ProviderReply::Text(answer.clone()));
    rig.telegram.send_text(USER, USER, "tell me everything");
    let messages = rig
        .telegram
        .wait_for_chat_messages(USER, 10, PATIENCE)
        .await;
    assert_eq!(messages.len(), 10, "{}", rig.gateway.log());
    let last = &messages[9].text;
    assert!(
        last.ends_with("the whole answer follows as answer.md.)"),
        "{last}"
    );
    let uploads = rig.telegram.wait_for_uploads(1, PATIENCE).await;
    assert_eq!(uploads.len(), 1, "{}", rig.gateway.log());
    assert_eq!(uploads[0].method, "sendDocument");
    assert_eq!(uploads[0].file_name, "answer.md");
    let sent = String::from_utf8_lossy(&uploads[0].bytes).to_string();
    assert!(
        sent == answer.trim_end(),
        "{} bytes sent of {}",
        sent.len(),
        answer.len()
    );
    assert!(rig.ask("short").await.text.starts_with("echo"));
    assert_eq!(rig.telegram.sent_to(USER).len(), 11);
}

/// `hermes-worker ask --out DIR` writes the answer's files into DIR: the image a tool
/// answered, and a CSV a tool wrote that the model attached; a symlink attached is not
/// followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_writes_the_answers_files_to_the_directory_named() {
    let provider = hermes_tests::fake_provider::FakeProvider::start_with_key(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("hermes.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"main\"\nbase_url = \"{}\"\nmodel = \"m\"\n\n[[tools.mcp]]\nname = \"calc\"\ncommand = {}\n",
            provider.base_url(),
            serde_json::to_string(&mcp_server().display().to_string()).unwrap_or_default()
        ),
    )
    .expect("write config");
    provider.push(call("call_0", "calc__chart", "{}"));
    let command = format!(
        "printf '{}' > out/data.csv && ln -s /etc/passwd out/passwd",
        CSV.replace('\n', "\\n")
    );
    let arguments = serde_json::json!({ "command": command }).to_string();
    provider.push(call("call_1", "calc__shell", &arguments));
    provider.push(ProviderReply::tool_calls(&[
        ("a1", "attach_file", r#"{"path": "data.csv"}"#),
        ("a2", "attach_file", r#"{"path": "passwd"}"#),
    ]));
    provider.push(ProviderReply::Text("made them".into()));
    let out = dir.path().join("files");
    let output = tokio::process::Command::new(&hermes_tests::harness::binaries().worker)
        .args(["ask", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .arg("make a chart and a table")
        .output()
        .await
        .expect("run hermes-worker ask");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "made them");
    assert_eq!(
        std::fs::read(out.join("data.csv")).unwrap_or_default(),
        CSV.as_bytes(),
        "{stderr}"
    );
    let chart = std::fs::read(out.join("image-2.png")).unwrap_or_default();
    assert!(chart.starts_with(b"\x89PNG"), "{stderr}");
    assert!(
        !out.join("passwd").exists(),
        "a link was followed: {stderr}"
    );
    assert!(stderr.contains("file passwd not kept"), "{stderr}");
}
