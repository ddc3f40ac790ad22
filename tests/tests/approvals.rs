//! Approvals for dangerous tools (issue 11), through the real binaries: an entry with
//! `confirm = ["shell"]`, the model asking to run it, and the chat's answer. The tool's
//! command touches a marker file, so whether it ran is plain to see.
//!
//! In every case the question names the tool and its arguments, carries two buttons in one
//! row, and ends edited to say what became of it with no buttons left; the model reads an
//! error result unless the call was allowed; the chat holds each question once and one
//! answer, nothing else (counted again after the follow-up, so a question or an answer
//! sent twice fails); the gateway is the same process and answers the next message.

use std::path::{Path, PathBuf};

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::fake_telegram::SentMessage;
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, USER, eventually};
use hermes_tests::mcp::{self, list, tool_results};
use serde_json::json;

hermes_tests::both_modes!(
    an_allowed_call_runs_and_the_question_says_who_allowed_it,
    a_denied_call_does_not_run_and_the_model_is_told,
    an_unanswered_question_counts_as_deny,
    only_an_allowed_user_can_answer,
    stop_while_waiting_ends_the_job_and_removes_the_buttons,
    a_gateway_restarted_while_waiting_asks_again_and_old_buttons_have_expired,
    long_arguments_are_shown_whole_in_an_expandable_quote,
    arguments_naming_a_key_twice_are_refused_without_asking,
    arguments_too_long_to_show_are_refused_without_asking,
    at_most_three_questions_wait_at_once,
    a_press_sent_with_another_message_does_nothing,
);

const ALLOW: &str = "✅ Allow";
const DENY: &str = "❌ Deny";
const STRANGER: i64 = 666;

/// The marker the tool would touch, and the entry that confirms `shell` calls.
struct Marker {
    dir: tempfile::TempDir,
}

impl Marker {
    fn new() -> Marker {
        Marker {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("ran")
    }

    fn ran(&self) -> bool {
        self.path().exists()
    }

    /// `[[tools.mcp]]` for the test server, its `shell` confirmed within `timeout_secs`,
    /// writing only to the marker's directory.
    fn entry(&self, timeout_secs: u64) -> String {
        mcp::entry(
            "guard",
            &format!(
                "confirm = [\"shell\"]\nconfirm_timeout_secs = {timeout_secs}\nwritable = {}\n",
                list(&[self.dir.path().display().to_string()])
            ),
        )
    }

    fn command(&self) -> String {
        format!("touch {} && echo touched", self.path().display())
    }
}

fn options(
    mode: WorkerMode,
    marker: &Marker,
    timeout_secs: u64,
) -> impl FnOnce(&mut GatewayOptions) {
    let entry = marker.entry(timeout_secs);
    move |o: &mut GatewayOptions| {
        o.mode = mode;
        o.job_timeout_secs = 60;
        o.extra_toml = entry;
    }
}

/// The model asks to run `command` with the confirmed tool, then answers "done".
fn script(rig: &Rig, command: &str) {
    let arguments = json!({ "command": command }).to_string();
    rig.provider.push(ProviderReply::tool_calls(&[(
        "call_1",
        "guard__shell",
        &arguments,
    )]));
    rig.provider.push(ProviderReply::Text("done".into()));
}

/// The `n`th question (1-based) sent to the chat, once it is there.
async fn question(rig: &Rig, n: usize) -> SentMessage {
    let mut seen: Vec<i64> = Vec::new();
    let mut last = None;
    for i in 1..=n {
        let next = rig
            .telegram
            .wait_for_sent(
                |m| {
                    m.chat_id == USER
                        && m.method == "sendMessage"
                        && m.text.contains("wants to run")
                        && !seen.contains(&m.message_id)
                },
                PATIENCE,
            )
            .await
            .unwrap_or_else(|| panic!("no question {i}\n{}", rig.gateway.log()));
        seen.push(next.message_id);
        last = Some(next);
    }
    last.unwrap_or_else(|| panic!("asked for question 0"))
}

/// What the question says now, once it no longer shows buttons (it was settled).
async fn settled(rig: &Rig, question: &SentMessage) -> String {
    let edit = rig
        .telegram
        .wait_for_sent(
            |m| {
                m.method == "editMessageText"
                    && m.message_id == question.message_id
                    && m.keyboard.is_none()
            },
            PATIENCE,
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "the question was never settled: {:#?}\n{}",
                rig.telegram.sent_to(USER),
                rig.gateway.log()
            )
        });
    assert_eq!(
        rig.telegram.keyboard(USER, question.message_id),
        None,
        "buttons left behind"
    );
    edit.text
}

/// The chat's final answer, `text`, once it is there.
async fn answer(rig: &Rig, text: &str) -> SentMessage {
    rig.telegram
        .wait_for_sent(|m| m.chat_id == USER && m.text == text, PATIENCE)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no answer {text:?}: {:#?}\n{}",
                rig.telegram.sent_to(USER),
                rig.gateway.log()
            )
        })
}

/// The result the model was sent for the confirmed call (the last tool result).
fn tool_result(rig: &Rig) -> String {
    rig.provider
        .requests()
        .iter()
        .rev()
        .find_map(|r| tool_results(r).pop())
        .map(|(_, content)| content)
        .unwrap_or_else(|| panic!("no tool result\n{}", rig.gateway.log()))
}

/// The press is answered with `expected` (shown briefly by the client).
async fn press(rig: &Rig, question: &SentMessage, user: i64, label: &str, expected: &str) {
    let id = rig
        .telegram
        .press(USER, question.message_id, user, label)
        .unwrap_or_else(|| panic!("no {label} button under {question:#?}"));
    let answered = rig
        .telegram
        .wait_for_callback_answer(&id, PATIENCE)
        .await
        .unwrap_or_else(|| panic!("the press was never answered\n{}", rig.gateway.log()));
    assert_eq!(answered.text.as_deref(), Some(expected));
}

/// The chat holds one question and one answer to it, nothing else; from here the follow-up
/// counts on from those two ([`Rig::assert_replies`]), so a question asked twice, or an
/// answer that comes again later, fails the test.
fn assert_asked_once_and_answered_once(rig: &Rig) {
    rig.assert_replies(2);
}

fn assert_question_shape(question: &SentMessage, marker: &Path) {
    assert!(question.text.contains("guard.shell"), "{}", question.text);
    assert!(
        question.text.contains(&marker.display().to_string()),
        "the arguments are shown: {}",
        question.text
    );
    let keyboard = question.keyboard.as_ref().expect("buttons");
    let rows = keyboard["inline_keyboard"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "one row: {keyboard}");
    let labels: Vec<&str> = rows[0]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect();
    assert_eq!(labels, [ALLOW, DENY]);
}

async fn an_allowed_call_runs_and_the_question_says_who_allowed_it(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    script(&rig, &marker.command());
    rig.telegram.send_text(USER, USER, "touch it");
    let q = question(&rig, 1).await;
    assert_question_shape(&q, &marker.path());
    assert!(!marker.ran(), "ran before it was allowed");
    press(&rig, &q, USER, ALLOW, "Allowed.").await;
    answer(&rig, "done").await;
    assert!(marker.ran(), "{}", rig.gateway.log());
    let result = tool_result(&rig);
    assert!(result.contains("touched"), "{result}");
    assert!(!result.starts_with("error:"), "{result}");
    let said = settled(&rig, &q).await;
    assert!(said.contains("allowed by User1001"), "{said}");
    assert_asked_once_and_answered_once(&rig);
    rig.assert_still_serving().await;
}

async fn a_denied_call_does_not_run_and_the_model_is_told(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    script(&rig, &marker.command());
    rig.telegram.send_text(USER, USER, "touch it");
    let q = question(&rig, 1).await;
    press(&rig, &q, USER, DENY, "Denied.").await;
    answer(&rig, "done").await;
    assert!(!marker.ran(), "a denied call ran");
    let result = tool_result(&rig);
    assert!(result.starts_with("error:"), "{result}");
    assert!(result.contains("denied this call"), "{result}");
    let said = settled(&rig, &q).await;
    assert!(said.contains("denied by User1001"), "{said}");
    assert_asked_once_and_answered_once(&rig);
    rig.assert_still_serving().await;
}

async fn an_unanswered_question_counts_as_deny(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 2)).await;
    script(&rig, &marker.command());
    rig.telegram.send_text(USER, USER, "touch it");
    let q = question(&rig, 1).await;
    answer(&rig, "done").await;
    assert!(!marker.ran(), "an unanswered call ran");
    let result = tool_result(&rig);
    assert!(result.starts_with("error:"), "{result}");
    assert!(
        result.contains("nobody approved this call within 2 s"),
        "{result}"
    );
    let said = settled(&rig, &q).await;
    assert!(said.contains("no answer within 2 s"), "{said}");
    // Too late now: the button is gone, so there is nothing to press.
    assert!(
        rig.telegram
            .press(USER, q.message_id, USER, ALLOW)
            .is_none()
    );
    assert_asked_once_and_answered_once(&rig);
    rig.assert_still_serving().await;
}

async fn only_an_allowed_user_can_answer(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    script(&rig, &marker.command());
    rig.telegram.send_text(USER, USER, "touch it");
    let q = question(&rig, 1).await;
    press(
        &rig,
        &q,
        STRANGER,
        ALLOW,
        "Only the bot's allowed users can answer this.",
    )
    .await;
    assert!(!marker.ran(), "a stranger's press ran it");
    assert!(
        rig.telegram.keyboard(USER, q.message_id).is_some(),
        "the question is still open"
    );
    press(&rig, &q, USER, ALLOW, "Allowed.").await;
    answer(&rig, "done").await;
    assert!(marker.ran());
    let said = settled(&rig, &q).await;
    assert!(said.contains("allowed by User1001"), "{said}");
    // The stranger's press was answered on the button only, not in the chat.
    assert_asked_once_and_answered_once(&rig);
    rig.assert_still_serving().await;
}

async fn stop_while_waiting_ends_the_job_and_removes_the_buttons(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    let arguments = json!({ "command": marker.command() }).to_string();
    rig.provider.push(ProviderReply::tool_calls(&[(
        "call_1",
        "guard__shell",
        &arguments,
    )]));
    rig.telegram.send_text(USER, USER, "touch it");
    let q = question(&rig, 1).await;
    rig.telegram.send_text(USER, USER, "/stop");
    let stopped = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == USER && m.text.starts_with("⏹ Stopped."),
            PATIENCE,
        )
        .await;
    assert!(stopped.is_some(), "{}", rig.gateway.log());
    let said = settled(&rig, &q).await;
    assert!(said.contains("not run"), "{said}");
    assert!(!marker.ran(), "a stopped job's call ran");
    // The job ended at the question: the provider was not asked again.
    assert_eq!(rig.provider.request_count(), 1);
    // The question, and "Stopped." as the one answer to the message.
    assert_asked_once_and_answered_once(&rig);
    rig.provider.push(ProviderReply::Text("ok then".into()));
    rig.assert_follow_up("anything else?", "ok then").await;
}

/// The gateway is killed while a question waits. The next run answers the message once:
/// the model asks again, a new question goes out, the old buttons answer "expired" (and
/// go), and the tool runs only after the new question is allowed.
async fn a_gateway_restarted_while_waiting_asks_again_and_old_buttons_have_expired(
    mode: WorkerMode,
) {
    let marker = Marker::new();
    let rig = Rig::start(mode, options(mode, &marker, 30)).await;
    let arguments = json!({ "command": marker.command() }).to_string();
    let call = ProviderReply::tool_calls(&[("call_1", "guard__shell", &arguments)]);
    rig.provider.push(call.clone());
    rig.telegram.send_text(USER, USER, "touch it");
    let old = question(&rig, 1).await;
    let Rig {
        telegram,
        provider,
        gateway,
        ..
    } = rig;
    gateway.signal(nix::sys::signal::Signal::SIGKILL);
    let mut options_again = GatewayOptions::new(mode);
    options_again.providers = vec![provider.base_url()];
    options(mode, &marker, 30)(&mut options_again);
    provider.push(call);
    provider.push(ProviderReply::Text("done".into()));
    let restarted = Gateway::start_in(gateway.into_dir(), &options_again, &telegram.api_url());
    let rig = Rig::from_parts(telegram, provider, restarted);
    let new = question(&rig, 2).await;
    assert_ne!(new.message_id, old.message_id);
    press(&rig, &old, USER, ALLOW, "This request has expired.").await;
    assert!(
        eventually(PATIENCE, || rig
            .telegram
            .keyboard(USER, old.message_id)
            .is_none())
        .await,
        "the old buttons stayed"
    );
    assert!(!marker.ran(), "an expired button ran the tool");
    press(&rig, &new, USER, ALLOW, "Allowed.").await;
    answer(&rig, "done").await;
    assert!(marker.ran(), "{}", rig.gateway.log());
    // Answered once, after the restart.
    let answers = rig
        .telegram
        .sent_to(USER)
        .iter()
        .filter(|m| m.text == "done")
        .count();
    assert_eq!(answers, 1);
    // The first run's question, the second run's, and the answer: nothing else.
    rig.assert_replies(3);
    let mut rig = rig;
    rig.assert_still_serving().await;
}

/// The model asks to run the confirmed tool with `arguments` as written, then answers
/// "done".
fn script_raw(rig: &Rig, arguments: &str) {
    rig.provider.push(ProviderReply::tool_calls(&[(
        "call_1",
        "guard__shell",
        arguments,
    )]));
    rig.provider.push(ProviderReply::Text("done".into()));
}

/// The chat is told the call was not asked about, and the model why (`reason`); nothing
/// ran and no question was sent.
async fn refused_without_asking(rig: &mut Rig, marker: &Marker, reason: &str) {
    let note = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == USER && m.text.contains("not asked and not run"),
            PATIENCE,
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "no note: {:#?}\n{}",
                rig.telegram.sent_to(USER),
                rig.gateway.log()
            )
        });
    assert!(note.keyboard.is_none(), "{note:#?}");
    answer(rig, "done").await;
    assert!(!marker.ran(), "a refused call ran");
    let result = tool_result(rig);
    assert!(result.starts_with("error:"), "{result}");
    assert!(result.contains(reason), "{result}");
    assert!(
        !rig.telegram
            .sent_to(USER)
            .iter()
            .any(|m| m.text.contains("wants to run")),
        "a question was asked"
    );
    // The note and the answer, nothing else.
    rig.assert_replies(2);
    rig.assert_still_serving().await;
}

/// Padding no longer hides what runs: every character of the arguments is in the
/// question (pretty-printed), folded in an expandable quote when long.
async fn long_arguments_are_shown_whole_in_an_expandable_quote(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    let padding = "x".repeat(1500);
    // The padding first, as a model hiding the command would write it.
    let arguments = format!(
        "{{\"a\": \"{padding}\", \"command\": {}}}",
        serde_json::Value::String(marker.command())
    );
    script_raw(&rig, &arguments);
    rig.telegram.send_text(USER, USER, "touch it");
    let q = question(&rig, 1).await;
    assert!(
        q.text.contains("<blockquote expandable>"),
        "long arguments fold: {}",
        q.text
    );
    assert!(q.text.contains(&padding), "all of the padding: {}", q.text);
    assert!(
        q.text.contains(&format!(
            "\"command\": \"{}\"",
            marker.command().replace('&', "&amp;")
        )),
        "the command after the padding: {}",
        q.text
    );
    press(&rig, &q, USER, ALLOW, "Allowed.").await;
    answer(&rig, "done").await;
    assert!(marker.ran(), "{}", rig.gateway.log());
    assert_asked_once_and_answered_once(&rig);
    rig.assert_still_serving().await;
}

/// `serde_json` keeps the last of two equal keys: a question could show one command and
/// the tool run the other. Such arguments are never asked about.
async fn arguments_naming_a_key_twice_are_refused_without_asking(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    let arguments = format!(
        "{{\"command\": \"echo harmless\", \"nested\": {{\"a\": 1}}, \"command\": {}}}",
        serde_json::Value::String(marker.command())
    );
    script_raw(&rig, &arguments);
    rig.telegram.send_text(USER, USER, "touch it");
    refused_without_asking(&mut rig, &marker, "name a key twice").await;
}

/// Arguments the question cannot show whole in one message are refused, not cut.
async fn arguments_too_long_to_show_are_refused_without_asking(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    let arguments =
        json!({ "command": format!("{} # {}", marker.command(), "y".repeat(5000)) }).to_string();
    script_raw(&rig, &arguments);
    rig.telegram.send_text(USER, USER, "touch it");
    refused_without_asking(&mut rig, &marker, "too long to show the user whole").await;
}

/// Five confirmed calls at once: three questions, and the model reads for the other two
/// that too many wait already; allowing the three runs them.
async fn at_most_three_questions_wait_at_once(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    let calls: Vec<(String, String)> = (1..=5)
        .map(|i| {
            (
                format!("call_{i}"),
                json!({ "command": format!("echo {i}") }).to_string(),
            )
        })
        .collect();
    let scripted: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|(id, arguments)| (id.as_str(), "guard__shell", arguments.as_str()))
        .collect();
    rig.provider.push(ProviderReply::tool_calls(&scripted));
    rig.provider.push(ProviderReply::Text("done".into()));
    rig.telegram.send_text(USER, USER, "echo five times");
    let third = question(&rig, 3).await;
    let questions: Vec<SentMessage> = rig
        .telegram
        .sent_to(USER)
        .into_iter()
        .filter(|m| m.method == "sendMessage" && m.text.contains("wants to run"))
        .collect();
    assert_eq!(questions.len(), 3, "{questions:#?}");
    assert_eq!(questions[2].message_id, third.message_id);
    for q in &questions {
        press(&rig, q, USER, ALLOW, "Allowed.").await;
    }
    answer(&rig, "done").await;
    let results = rig
        .provider
        .requests()
        .iter()
        .rev()
        .find_map(|r| {
            let results = tool_results(r);
            (!results.is_empty()).then_some(results)
        })
        .unwrap_or_else(|| panic!("no tool results\n{}", rig.gateway.log()));
    assert_eq!(results.len(), 5, "{results:#?}");
    let refused = results
        .iter()
        .filter(|(_, content)| content.contains("already wait for the user's approval"))
        .count();
    assert_eq!(refused, 2, "{results:#?}");
    // Three questions and the answer: a refusal for too many is told the model only.
    rig.assert_replies(4);
    rig.assert_still_serving().await;
}

/// A client may send any button data with a press on any message it sees: the question's
/// key pressed from under another message (here, the user's own) does nothing, and the
/// question stays open until pressed under itself.
async fn a_press_sent_with_another_message_does_nothing(mode: WorkerMode) {
    let marker = Marker::new();
    let mut rig = Rig::start(mode, options(mode, &marker, 30)).await;
    script(&rig, &marker.command());
    let asked = rig.telegram.send_text(USER, USER, "touch it");
    let q = question(&rig, 1).await;
    let keyboard = q.keyboard.as_ref().expect("buttons");
    let allow_data = keyboard["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .expect("data")
        .to_string();
    let forged = rig.telegram.press_with_data(USER, asked, USER, &allow_data);
    let answered = rig
        .telegram
        .wait_for_callback_answer(&forged, PATIENCE)
        .await
        .unwrap_or_else(|| panic!("the press was never answered\n{}", rig.gateway.log()));
    assert_eq!(answered.text, None, "nothing is said to a forged press");
    assert!(!marker.ran(), "a press from another message ran it");
    assert!(
        rig.telegram.keyboard(USER, q.message_id).is_some(),
        "the question is still open"
    );
    press(&rig, &q, USER, DENY, "Denied.").await;
    answer(&rig, "done").await;
    assert!(!marker.ran(), "a denied call ran");
    let said = settled(&rig, &q).await;
    assert!(said.contains("denied by User1001"), "{said}");
    assert_asked_once_and_answered_once(&rig);
    rig.assert_still_serving().await;
}
