//! Topics are conversations: in a forum supergroup, and in a private chat with topics
//! (Bot API 9.3), each topic keeps its own history (and `/new`, `/retry`, `/stop`), and
//! every answer, chat action, streamed preview, approval question and piece left in the
//! outbox lands in the topic it answers, after a `kill -9` too. The General topic is the
//! chat's conversation as before topics.
//!
//! Before: every topic shared one conversation, and every answer went to General (a send
//! without `message_thread_id`); the fake Telegram, as strict as the Bot API, records the
//! thread of each send and refuses one that names no topic of its chat.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::fake_telegram::{BOT_USERNAME, SendFault, SentMessage};
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, USER};
use hermes_tests::mcp;
use nix::sys::signal::Signal;

hermes_tests::both_modes!(
    two_topics_of_a_forum_keep_their_own_histories_and_answers_land_in_their_topic,
    an_answer_left_in_the_outbox_by_a_kill_9_lands_in_its_topic_after_the_restart,
    a_private_chat_with_topics_keeps_a_conversation_per_topic,
    new_and_retry_act_on_the_topic_they_were_sent_in,
    a_streamed_answer_and_a_stop_each_stay_in_their_topic,
    an_approval_question_is_asked_in_the_topic_of_its_job,
    in_a_topic_the_bot_created_only_messages_for_the_bot_are_answered,
    a_file_sent_back_goes_to_the_topic_of_its_answer,
);

const FORUM: i64 = -100_200_300;
const A: i64 = 11;
const B: i64 = 22;

/// A rig whose group messages are all for the bot (no mention needed).
async fn rig(mode: WorkerMode) -> Rig {
    Rig::start(mode, group_mode_all).await
}

fn group_mode_all(options: &mut GatewayOptions) {
    options.telegram_toml = "streaming = false\ngroup_mode = \"all\"\n".into();
}

/// Writes `text` in `thread` of `chat` as [`USER`] and returns the one reply, asserting
/// it landed in that topic.
async fn ask_in(rig: &Rig, chat: i64, thread: Option<i64>, text: &str) -> SentMessage {
    let reply = rig
        .reply_to(chat, text, |telegram| {
            telegram.send_text_in_topic(chat, thread, USER, text);
        })
        .await;
    assert_eq!(
        reply.thread, thread,
        "the answer to {text:?} landed in the wrong topic: {reply:#?}"
    );
    reply
}

/// The provider request that asked `text`, as JSON text.
fn request_for(rig: &Rig, text: &str) -> String {
    rig.provider
        .requests()
        .into_iter()
        .find(|r| r.last_user_text().as_deref() == Some(text))
        .unwrap_or_else(|| panic!("no provider request asked {text:?}"))
        .body
        .to_string()
}

async fn two_topics_of_a_forum_keep_their_own_histories_and_answers_land_in_their_topic(
    mode: WorkerMode,
) {
    let mut rig = rig(mode).await;
    rig.telegram.make_forum(FORUM, &[A, B]);
    ask_in(&rig, FORUM, Some(A), "alpha one").await;
    ask_in(&rig, FORUM, Some(B), "beta one").await;
    ask_in(&rig, FORUM, None, "general one").await;
    // A slow answer: "typing…" shows in the topic that waits for it (the turns before
    // are answered, their typing over, when it is asked).
    rig.provider.push_for(
        "alpha two",
        ProviderReply::Delay(Duration::from_millis(900)),
    );
    let before = rig.telegram.chat_actions().len();
    assert_eq!(
        ask_in(&rig, FORUM, Some(A), "alpha two").await.text,
        "echo: alpha two"
    );
    let typing = rig.telegram.chat_actions().split_off(before);
    assert!(
        !typing.is_empty() && typing.iter().all(|a| a.thread == Some(A)),
        "typing shows in topic A: {typing:#?}"
    );
    ask_in(&rig, FORUM, Some(B), "beta two").await;
    ask_in(&rig, FORUM, None, "general two").await;

    let alpha = request_for(&rig, "alpha two");
    assert!(alpha.contains("alpha one"), "{alpha}");
    assert!(
        !alpha.contains("beta") && !alpha.contains("general"),
        "{alpha}"
    );
    let beta = request_for(&rig, "beta two");
    assert!(beta.contains("beta one"), "{beta}");
    assert!(
        !beta.contains("alpha") && !beta.contains("general"),
        "{beta}"
    );
    let general = request_for(&rig, "general two");
    assert!(general.contains("general one"), "{general}");
    assert!(
        !general.contains("alpha") && !general.contains("beta"),
        "{general}"
    );

    rig.assert_one_reply_each();
    assert!(rig.telegram.failed_sends().is_empty());
    rig.gateway.assert_running(rig.pid);
}

async fn an_answer_left_in_the_outbox_by_a_kill_9_lands_in_its_topic_after_the_restart(
    mode: WorkerMode,
) {
    let mut rig = rig(mode).await;
    rig.telegram.make_forum(FORUM, &[A, B]);
    ask_in(&rig, FORUM, Some(A), "alpha one").await;
    // Telegram takes no send now: the answer is committed to the outbox and waits there.
    rig.telegram
        .fail_every_send(Some(SendFault::server_error()));
    rig.telegram
        .send_text_in_topic(FORUM, Some(B), USER, "beta one");
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    assert!(rig.telegram.wait_for_failed_sends(1, PATIENCE).await);
    rig.gateway.signal(Signal::SIGKILL);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());

    let provider_url = rig.provider.base_url();
    let mut rig = rig.restart_with(|gateway, telegram, _| {
        let mut options = GatewayOptions::new(mode);
        options.providers = vec![provider_url];
        group_mode_all(&mut options);
        Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url())
    });
    let failed = rig.telegram.failed_sends().len();
    assert!(
        rig.telegram
            .wait_for_failed_sends(failed + 1, PATIENCE)
            .await,
        "the next run sends what the killed one left"
    );
    rig.telegram.fail_every_send(None);
    let landed = rig
        .telegram
        .wait_for_sent(|m| m.text == "echo: beta one", PATIENCE)
        .await
        .unwrap_or_else(|| panic!("the answer never came\n{}", rig.gateway.log()));
    assert_eq!(landed.thread, Some(B), "{landed:#?}");
    rig.assert_replies_in(FORUM, 2);

    ask_in(&rig, FORUM, Some(B), "beta two").await;
    let beta = request_for(&rig, "beta two");
    assert!(
        beta.contains("beta one") && !beta.contains("alpha"),
        "{beta}"
    );
    assert_eq!(
        rig.provider.request_count(),
        3,
        "the answer in the outbox was not asked for again"
    );
    rig.assert_one_reply_each();
    rig.gateway.assert_running(rig.pid);
}

async fn a_private_chat_with_topics_keeps_a_conversation_per_topic(mode: WorkerMode) {
    let mut rig = rig(mode).await;
    // A private chat has no General topic: its first topic may be message 1.
    rig.telegram.enable_private_topics(USER, &[1, 4]);
    ask_in(&rig, USER, Some(1), "first topic").await;
    ask_in(&rig, USER, Some(4), "second topic").await;
    ask_in(&rig, USER, Some(1), "first again").await;
    ask_in(&rig, USER, Some(4), "second again").await;
    let first = request_for(&rig, "first again");
    assert!(
        // (Not just "second": the schedule tool's schema says `in_seconds`.)
        first.contains("first topic") && !first.contains("second topic"),
        "{first}"
    );
    let second = request_for(&rig, "second again");
    assert!(
        second.contains("second topic") && !second.contains("first topic"),
        "{second}"
    );
    rig.assert_one_reply_each();
    rig.gateway.assert_running(rig.pid);
}

async fn new_and_retry_act_on_the_topic_they_were_sent_in(mode: WorkerMode) {
    let rig = rig(mode).await;
    rig.telegram.make_forum(FORUM, &[A, B]);
    ask_in(&rig, FORUM, Some(A), "alpha one").await;
    ask_in(&rig, FORUM, Some(B), "beta one").await;
    let started = ask_in(&rig, FORUM, Some(A), "/new").await;
    assert!(
        started.text.contains("new conversation"),
        "{}",
        started.text
    );
    ask_in(&rig, FORUM, Some(A), "alpha two").await;
    ask_in(&rig, FORUM, Some(B), "beta two").await;
    let alpha = request_for(&rig, "alpha two");
    assert!(
        !alpha.contains("alpha one"),
        "/new started topic A over: {alpha}"
    );
    let beta = request_for(&rig, "beta two");
    assert!(
        beta.contains("beta one"),
        "topic B kept its history: {beta}"
    );
    assert_eq!(rig.provider.request_count(), 4, "/new runs no job");
    // `/retry` in A asks A's last question again, not the chat's last (B's).
    let again = ask_in(&rig, FORUM, Some(A), "/retry").await;
    assert_eq!(again.text, "echo: alpha two");
    assert_eq!(rig.provider.request_count(), 5);
    rig.assert_one_reply_each();
}

async fn a_streamed_answer_and_a_stop_each_stay_in_their_topic(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| {
        o.telegram_toml = "streaming = true\nedit_interval_ms = 200\ngroup_mode = \"all\"\n".into();
    })
    .await;
    rig.telegram.make_forum(FORUM, &[A, B]);
    let mut pieces: Vec<String> = (1..20)
        .map(|i| format!("Sentence number {i} is here. "))
        .collect();
    pieces.push("The story ends.".into());
    rig.provider.push_for(
        "tell a story",
        ProviderReply::Stream {
            pieces,
            every: Duration::from_millis(150),
        },
    );
    rig.provider.push_for("wait forever", ProviderReply::Hang);
    rig.telegram
        .send_text_in_topic(FORUM, Some(A), USER, "tell a story");
    rig.telegram
        .send_text_in_topic(FORUM, Some(B), USER, "wait forever");
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    // `/stop` in B ends B's job, not the answer A is being shown.
    rig.telegram
        .send_text_in_topic(FORUM, Some(B), USER, "/stop");
    let stopped = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == FORUM && m.text.contains("Stopped"),
            PATIENCE,
        )
        .await
        .unwrap_or_else(|| panic!("no stop reply\n{}", rig.gateway.log()));
    assert_eq!(stopped.thread, Some(B), "{stopped:#?}");
    let finished = rig
        .telegram
        .wait_for_sent(|m| m.text.contains("The story ends."), PATIENCE)
        .await
        .unwrap_or_else(|| panic!("the story never finished\n{}", rig.gateway.log()));
    assert_eq!(finished.thread, Some(A), "{finished:#?}");
    let story: Vec<SentMessage> = rig
        .telegram
        .sent_to(FORUM)
        .into_iter()
        .filter(|m| m.text.contains("Sentence"))
        .collect();
    assert!(
        story.iter().any(|m| m.method == "sendMessage")
            && story.iter().any(|m| m.method == "editMessageText"),
        "a preview, edited: {story:#?}"
    );
    assert!(
        story.iter().all(|m| m.thread == Some(A)),
        "the preview and its edits are in topic A: {story:#?}"
    );
    assert_eq!(
        rig.messages_in(FORUM).len(),
        2,
        "{:#?}",
        rig.telegram.sent_to(FORUM)
    );
}

async fn an_approval_question_is_asked_in_the_topic_of_its_job(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| {
        o.job_timeout_secs = 60;
        o.extra_toml = mcp::entry(
            "guard",
            "confirm = [\"shell\"]\nconfirm_timeout_secs = 30\n",
        );
    })
    .await;
    rig.telegram.enable_private_topics(USER, &[3, 4]);
    let arguments = serde_json::json!({ "command": "echo hi" }).to_string();
    rig.provider.push(ProviderReply::tool_calls(&[(
        "call_1",
        "guard__shell",
        &arguments,
    )]));
    rig.provider.push(ProviderReply::Text("done".into()));
    rig.telegram
        .send_text_in_topic(USER, Some(4), USER, "run it");
    let question = rig
        .telegram
        .wait_for_sent(|m| m.text.contains("wants to run"), PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no question\n{}", rig.gateway.log()));
    assert_eq!(question.thread, Some(4), "{question:#?}");
    rig.telegram
        .press(USER, question.message_id, USER, "✅ Allow")
        .unwrap_or_else(|| panic!("no Allow button under {question:#?}"));
    let done = rig
        .telegram
        .wait_for_sent(|m| m.text == "done", PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no answer\n{}", rig.gateway.log()));
    assert_eq!(done.thread, Some(4), "{done:#?}");
    assert!(
        rig.telegram
            .sent_to(USER)
            .iter()
            .all(|m| m.thread == Some(4)),
        "{:#?}",
        rig.telegram.sent_to(USER)
    );
}

/// Every message of a forum topic comes "replying" to the topic's creation; when the bot
/// created the topic, that is no reply to the bot: with `group_mode = "mention"` (the
/// default) only a mention (or a real reply to it) is for the bot, in that topic too.
async fn in_a_topic_the_bot_created_only_messages_for_the_bot_are_answered(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    rig.telegram.make_forum(FORUM, &[A]);
    rig.telegram.topic_created_by_bot(FORUM, A);
    rig.telegram
        .send_text_in_topic(FORUM, Some(A), USER, "people talking among themselves");
    let question = format!("@{BOT_USERNAME} what time is it");
    let reply = ask_in(&rig, FORUM, Some(A), &question).await;
    assert_eq!(reply.text, "echo: what time is it");
    let asked: Vec<Option<String>> = rig
        .provider
        .requests()
        .iter()
        .map(|r| r.last_user_text())
        .collect();
    assert_eq!(asked, [Some("what time is it".to_string())]);
    rig.assert_one_reply_each();
}

/// An answer too long for ten messages follows whole as `answer.md`: the messages and the
/// document go to the topic it answers.
async fn a_file_sent_back_goes_to_the_topic_of_its_answer(mode: WorkerMode) {
    let rig = rig(mode).await;
    rig.telegram.enable_private_topics(USER, &[3, 4]);
    let answer: String = (0..9000).map(|i| format!("w{i} ")).collect();
    rig.provider.push(ProviderReply::Text(answer));
    rig.telegram
        .send_text_in_topic(USER, Some(4), USER, "tell me everything");
    let uploads = rig.telegram.wait_for_uploads(1, PATIENCE).await;
    assert_eq!(uploads.len(), 1, "{}", rig.gateway.log());
    assert_eq!(uploads[0].file_name, "answer.md");
    assert_eq!(uploads[0].thread, Some(4), "the document is in topic 4");
    let messages = rig.telegram.sent_to(USER);
    assert_eq!(messages.len(), 10, "{messages:#?}");
    assert!(
        messages.iter().all(|m| m.thread == Some(4)),
        "{messages:#?}"
    );
}
