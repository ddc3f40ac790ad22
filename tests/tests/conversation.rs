//! Talking to it: conversations that persist, commands, and the durable inbox (no message
//! lost even when the gateway is SIGKILLed mid-job).

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{FakeProvider, ProviderReply, SEED_402_BODY};
use hermes_tests::fake_telegram::BOT_USERNAME;
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, USER, eventually};
use nix::sys::signal::Signal;
use std::time::Duration;

/// What the store says was answered for each update, in update order.
fn stored_replies(rig: &Rig) -> Vec<(i64, Option<String>)> {
    let db = rig.gateway.dir.path().join("state/state.db");
    let conn = rusqlite::Connection::open(db).expect("open state.db");
    conn.prepare("SELECT update_id, reply FROM inbox ORDER BY update_id")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("read inbox")
}

hermes_tests::both_modes!(
    a_message_in_flight_when_the_gateway_is_killed_is_answered_once_after_restart,
    the_conversation_is_sent_with_each_message_and_survives_a_restart,
    new_starts_a_fresh_conversation,
    retry_asks_the_last_message_again,
    help_and_status_answer_without_a_job,
    a_chat_answers_in_order_and_asks_to_wait_beyond_its_queue,
    typing_shows_while_a_job_runs,
    stop_kills_the_job_in_flight_and_answers_once,
    stop_with_nothing_running_says_so,
    model_shows_the_chat_s_provider_and_admins_switch_it,
    in_a_group_only_messages_for_the_bot_are_answered,
    answers_are_rendered_from_markdown_to_telegram_html,
    a_long_code_block_is_split_into_complete_blocks,
    a_streamed_answer_is_one_message_edited_as_it_grows,
    flood_control_on_an_edit_pauses_the_edits,
    a_stream_that_breaks_is_retried_and_the_preview_starts_over,
    with_streaming_off_the_answer_arrives_finished,
    an_edit_telegram_cannot_parse_is_made_again_as_plain_text,
    a_job_carries_the_system_prompt_and_the_last_turns,
    stop_for_a_job_still_waiting_for_a_worker_answers_at_once,
    in_group_mode_all_every_message_is_answered,
    a_streamed_answer_longer_than_a_message_ends_as_several,
);

/// Streaming on, with edits spaced `edit_interval_ms` apart.
fn streaming(interval_ms: u64) -> impl FnOnce(&mut GatewayOptions) {
    move |o: &mut GatewayOptions| {
        o.telegram_toml = format!("streaming = true\nedit_interval_ms = {interval_ms}\n");
    }
}

/// `n` sentences, as pieces of a streamed answer, the last one in bold.
fn sentences(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| {
            if i == n {
                format!("**Sentence {i} ends it.**")
            } else {
                format!("Sentence number {i} is here. ")
            }
        })
        .collect()
}

/// The chat's sends and edits, once the message shows `last` (the finished answer).
async fn until_finished(rig: &Rig, last: &str) -> Vec<hermes_tests::fake_telegram::SentMessage> {
    let found = rig
        .telegram
        .wait_for_sent(|m| m.chat_id == USER && m.text.contains(last), PATIENCE)
        .await;
    assert!(
        found.is_some(),
        "never finished: {:#?}\n{}",
        rig.telegram.sent_to(USER),
        rig.gateway.log()
    );
    rig.telegram.sent_to(USER)
}

fn options_like(rig: &Rig, mode: WorkerMode) -> GatewayOptions {
    GatewayOptions {
        providers: vec![rig.provider.base_url()],
        ..GatewayOptions::new(mode)
    }
}

/// Every update Telegram was told to forget (offset past it) is in the store.
fn assert_acknowledged_updates_were_stored(rig: &Rig, db: &std::path::Path) {
    let acked = rig.telegram.acked_up_to();
    let conn = rusqlite::Connection::open(db).expect("open state.db");
    let stored: Vec<i64> = conn
        .prepare("SELECT update_id FROM inbox ORDER BY update_id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("read inbox");
    for id in 1..=acked {
        assert!(
            stored.contains(&id),
            "update {id} was acknowledged but never stored ({stored:?})"
        );
    }
}

async fn a_message_in_flight_when_the_gateway_is_killed_is_answered_once_after_restart(
    mode: WorkerMode,
) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 60).await;
    assert_eq!(rig.ask("first").await.text, "echo: first");
    rig.provider.push(ProviderReply::Hang);
    let id = rig.telegram.send_text(USER, USER, "in flight");
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    // Acknowledged to Telegram by the next poll, which has already gone out.
    assert!(
        rig.telegram.wait_for_ack(id, PATIENCE).await,
        "{}",
        rig.gateway.log()
    );
    rig.gateway.signal(Signal::SIGKILL);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    let db = rig.gateway.dir.path().join("state/state.db");
    assert_acknowledged_updates_were_stored(&rig, &db);
    assert_eq!(
        rig.telegram.sent_to(USER).len(),
        1,
        "nothing answered the killed job yet"
    );

    let options = options_like(&rig, mode);
    let Rig {
        telegram,
        provider,
        gateway,
        ..
    } = rig;
    let restarted = Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url());
    let replies = telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(
        replies.get(1).map(|m| m.text.as_str()),
        Some("echo: in flight"),
        "{}",
        restarted.log()
    );
    assert!(
        restarted
            .log()
            .contains("left unanswered by the previous run")
    );
    // Once: a later message is the very next reply.
    telegram.send_text(USER, USER, "after");
    let replies = telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["echo: first", "echo: in flight", "echo: after"]);
    assert_eq!(provider.request_count(), 4);
}

async fn the_conversation_is_sent_with_each_message_and_survives_a_restart(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("my name is Ann").await.text, "echo: my name is Ann");
    rig.ask("what is my name?").await;
    let second = &rig.provider.requests()[1].body["messages"];
    assert_eq!(second.as_array().map(Vec::len), Some(3), "{second}");
    assert_eq!(second[0]["role"], "user");
    assert_eq!(second[0]["content"], "my name is Ann");
    assert_eq!(second[1]["role"], "assistant");
    assert_eq!(second[1]["content"], "echo: my name is Ann");
    assert_eq!(second[2]["content"], "what is my name?");

    rig.gateway.signal(Signal::SIGTERM);
    assert_eq!(
        rig.gateway.wait_exit(PATIENCE).await.and_then(|s| s.code()),
        Some(0)
    );
    let options = options_like(&rig, mode);
    let Rig {
        telegram,
        provider,
        gateway,
        ..
    } = rig;
    let _restarted = Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url());
    telegram.send_text(USER, USER, "and again?");
    telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    let third = &provider.requests()[2].body["messages"];
    assert_eq!(third.as_array().map(Vec::len), Some(5), "{third}");
}

async fn new_starts_a_fresh_conversation(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    rig.ask("remember this").await;
    let reply = rig.ask("/new").await;
    assert!(reply.text.contains("new conversation"), "{}", reply.text);
    assert_eq!(rig.provider.request_count(), 1, "/new runs no job");
    rig.ask("fresh start").await;
    let messages = &rig.provider.requests()[1].body["messages"];
    assert_eq!(messages.as_array().map(Vec::len), Some(1), "{messages}");
}

async fn retry_asks_the_last_message_again(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| o.quota_cooldown_secs = Some(0)).await;
    rig.provider.push(ProviderReply::status(402, SEED_402_BODY));
    assert!(rig.ask("hello").await.text.contains("quota or balance"));
    assert_eq!(rig.ask("/retry").await.text, "echo: hello");
    let empty = Rig::start(mode, |_| {}).await;
    assert!(
        empty
            .ask("/retry")
            .await
            .text
            .contains("no earlier message")
    );
}

async fn help_and_status_answer_without_a_job(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    for command in ["/start", "/help"] {
        let reply = rig.ask(command).await;
        assert!(
            reply.text.contains("/new") && reply.text.contains("/retry"),
            "{}",
            reply.text
        );
    }
    let status = rig.ask("/status").await;
    assert!(
        status.text.contains("Answering now: p0 (model-0)"),
        "{}",
        status.text
    );
    assert!(rig.ask("/frobnicate").await.text.contains("/help"));
    assert_eq!(rig.provider.request_count(), 0);
    assert!(
        rig.telegram
            .wait_for_calls("setMyCommands", 1, PATIENCE)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_a_newer_version_is_refused_and_a_corrupt_one_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let conn = rusqlite::Connection::open(state.join("state.db")).expect("db");
    conn.pragma_update(None, "user_version", 99)
        .expect("version");
    drop(conn);
    let provider = hermes_tests::fake_provider::FakeProvider::start().await;
    let telegram = hermes_tests::fake_telegram::FakeTelegram::start().await;
    let options = GatewayOptions {
        providers: vec![provider.base_url()],
        ..GatewayOptions::new(WorkerMode::Pool)
    };
    let mut gateway = Gateway::start_in(dir, &options, &telegram.api_url());
    let status = gateway.wait_exit(PATIENCE).await;
    assert_eq!(status.and_then(|s| s.code()), Some(78), "{}", gateway.log());
    assert!(
        gateway.log().contains("written by a newer hermes-gateway"),
        "{}",
        gateway.log()
    );

    let dir = gateway.into_dir();
    std::fs::write(dir.path().join("state/state.db"), vec![0x42u8; 4096]).expect("corrupt");
    let mut gateway = Gateway::start_in(dir, &options, &telegram.api_url());
    telegram.send_text(USER, USER, "still works?");
    let replies = telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        replies.first().map(|m| m.text.as_str()),
        Some("echo: still works?"),
        "{}",
        gateway.log()
    );
    assert!(
        gateway.log().contains("STATE STORE UNREADABLE"),
        "{}",
        gateway.log()
    );
    assert!(gateway.is_running());
}

/// One job at a time per chat, in arrival order; `max_queued_per_chat` may wait behind it;
/// one more is told to wait.
async fn a_chat_answers_in_order_and_asks_to_wait_beyond_its_queue(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| o.max_queued_per_chat = Some(2)).await;
    rig.provider.push_for(
        "first",
        ProviderReply::Delay(std::time::Duration::from_secs(2)),
    );
    rig.telegram.send_text(USER, USER, "first");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    for text in ["second", "third", "fourth"] {
        rig.telegram.send_text(USER, USER, text);
    }
    let replies = rig.telegram.wait_for_chat_messages(USER, 4, PATIENCE).await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert!(
        texts[0].contains("still working on your earlier messages"),
        "{texts:?}"
    );
    assert_eq!(texts[1..], ["echo: first", "echo: second", "echo: third"]);
    assert_eq!(
        rig.provider.request_count(),
        3,
        "the fourth reached no provider"
    );
}

async fn typing_shows_while_a_job_runs(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    rig.provider
        .push(ProviderReply::Delay(std::time::Duration::from_secs(1)));
    rig.telegram.send_text(USER, USER, "slow");
    assert!(
        rig.telegram
            .wait_for_calls("sendChatAction", 1, PATIENCE)
            .await
    );
    let action = rig
        .telegram
        .api_calls()
        .into_iter()
        .find(|c| c.method.eq_ignore_ascii_case("sendChatAction"))
        .expect("a sendChatAction call");
    assert_eq!(action.params["action"], "typing");
    assert_eq!(action.params["chat_id"], USER);
    let replies = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(replies.first().map(|m| m.text.as_str()), Some("echo: slow"));
}

/// `/stop` ends the job's worker group (the provider sees its connection dropped), the
/// chat gets one "stopped" reply for the two messages, and the next message is answered.
async fn stop_kills_the_job_in_flight_and_answers_once(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 60).await;
    rig.provider.push(ProviderReply::Hang);
    rig.telegram
        .send_text(USER, USER, "think about it for a long time");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    assert!(
        rig.provider
            .server()
            .wait_for_open_connections(1, PATIENCE)
            .await
    );
    let reply = rig.ask("/stop").await;
    assert!(reply.text.contains("Stopped"), "{}", reply.text);
    // The worker's process group is gone: its connection to the provider closed.
    assert!(
        rig.provider
            .server()
            .wait_for_open_connections(0, PATIENCE)
            .await,
        "the stopped worker still holds its provider connection"
    );
    rig.assert_no_stray_processes().await;
    assert_eq!(
        rig.telegram.sent_to(USER).len(),
        1,
        "one reply for the job and /stop"
    );
    let answered = stored_replies(&rig);
    assert_eq!(answered.len(), 2);
    assert!(
        answered
            .iter()
            .all(|(_, r)| r.as_deref().is_some_and(|r| r.contains("Stopped"))),
        "{answered:?}"
    );
    assert!(rig.gateway.log().contains("stopped by /stop"));
    rig.assert_still_serving().await;
}

async fn stop_with_nothing_running_says_so(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    assert!(rig.ask("/stop").await.text.contains("nothing to stop"));
    assert_eq!(rig.ask("hello").await.text, "echo: hello");
    assert_eq!(rig.provider.request_count(), 1);
}

/// `/model` shows the chat's provider; only admins switch; the switch puts the chosen
/// provider first for this chat only, and `/model default` undoes it.
async fn model_shows_the_chat_s_provider_and_admins_switch_it(mode: WorkerMode) {
    let admin = 4242;
    let other_chat = 5151;
    let backup = FakeProvider::start().await;
    let rig = Rig::start(mode, |o| {
        o.providers.push(backup.base_url());
        o.allowed_users.extend([admin, other_chat]);
        o.telegram_toml
            .push_str(&format!("admin_users = [{admin}]\n"));
    })
    .await;
    let shown = rig.ask("/model").await.text;
    assert!(shown.contains("p0 (model-0), the default"), "{shown}");
    assert!(shown.contains("• p1 (model-1)"), "{shown}");
    assert!(
        !shown.contains("Switch with"),
        "only admins are told how to switch: {shown}"
    );
    let refused = rig.ask("/model p1").await.text;
    assert!(refused.contains("Only the bot's admins"), "{refused}");

    let switched = rig.ask_in(admin, admin, "/model model-1").await.text;
    assert_eq!(switched, "This chat now uses p1 (model-1).");
    assert!(
        rig.ask_in(admin, admin, "/model")
            .await
            .text
            .contains("chosen with /model")
    );
    assert!(
        rig.ask_in(admin, admin, "/model nonsense")
            .await
            .text
            .contains("no provider or model called")
    );
    assert_eq!(rig.ask_in(admin, admin, "hi").await.text, "echo: hi");
    assert_eq!(backup.request_count(), 1, "the admin's chat asked p1");
    assert_eq!(backup.requests()[0].model(), Some("model-1"));
    assert_eq!(rig.ask("hi").await.text, "echo: hi");
    assert_eq!(
        rig.provider.request_count(),
        1,
        "other chats keep the default"
    );
    // The chosen provider's fallbacks stay behind it.
    backup.push(ProviderReply::seed_402());
    assert_eq!(rig.ask_in(admin, admin, "again").await.text, "echo: again");
    assert_eq!(
        rig.provider.request_count(),
        2,
        "p0 answered as p1's fallback"
    );
    let back = rig.ask_in(admin, admin, "/model default").await.text;
    assert!(back.contains("back to the default: p0 (model-0)"), "{back}");
    let status = rig.ask_in(admin, admin, "/status").await.text;
    assert!(status.contains("Answering now: p0 (model-0)"), "{status}");
}

/// In a group (mention mode) the bot answers a mention (without the mention in what the
/// model reads), a reply to its message and its commands; not chatter, and not commands
/// for other bots. The allowlist applies to who wrote.
async fn in_a_group_only_messages_for_the_bot_are_answered(mode: WorkerMode) {
    let group = -100_777;
    let stranger = 9999;
    let rig = Rig::start(mode, |_| {}).await;
    rig.telegram
        .send_text(group, USER, "chatting among ourselves");
    rig.telegram.send_text(group, USER, "/new@some_other_bot");
    let reply = rig
        .ask_in(group, USER, &format!("@{BOT_USERNAME} what is 2+2?"))
        .await;
    assert_eq!(reply.text, "echo: what is 2+2?");
    assert_eq!(rig.telegram.sent_to(group).len(), 1, "chatter got no reply");
    assert_eq!(rig.provider.request_count(), 1);

    rig.telegram
        .send_reply(group, USER, "and 3+3?", reply.message_id);
    let replies = rig
        .telegram
        .wait_for_chat_messages(group, 2, PATIENCE)
        .await;
    assert_eq!(
        replies.get(1).map(|m| m.text.as_str()),
        Some("echo: and 3+3?")
    );

    let help = rig
        .ask_in(group, USER, &format!("/help@{BOT_USERNAME}"))
        .await;
    assert!(help.text.contains("/new"), "{}", help.text);

    let denied = rig
        .ask_in(group, stranger, &format!("@{BOT_USERNAME} let me in"))
        .await;
    assert!(
        denied.text.contains(&format!("user id is {stranger}")),
        "{}",
        denied.text
    );
    assert_eq!(
        rig.provider.request_count(),
        2,
        "no job for chatter or strangers"
    );
    assert!(
        eventually(PATIENCE, || rig.telegram.pending_update_ids().is_empty()).await,
        "every update was acknowledged, addressed or not"
    );
}

async fn answers_are_rendered_from_markdown_to_telegram_html(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    rig.provider.push(ProviderReply::Text(
        "**Bold** and *italic*, `x < y`, a [link](https://example.com).\n\n\
         - one\n- two\n\n```rust\nfn main() {}\n```"
            .into(),
    ));
    let reply = rig.ask("format something").await;
    assert_eq!(reply.parse_mode.as_deref(), Some("HTML"));
    for expected in [
        "<b>Bold</b>",
        "<i>italic</i>",
        "<code>x &lt; y</code>",
        "<a href=\"https://example.com\">link</a>",
        "• one",
        "<pre><code class=\"language-rust\">fn main() {}</code></pre>",
    ] {
        assert!(
            reply.text.contains(expected),
            "{expected} in {}",
            reply.text
        );
    }
    // The gateway's own words go out escaped, not interpreted.
    let help = rig.ask("/help").await;
    assert!(help.text.contains("/new"), "{}", help.text);
    assert!(rig.telegram.failed_sends().is_empty());
}

/// A code block longer than a message is cut into messages that are each a complete
/// `<pre>` block within Telegram's limit, and nothing is lost.
async fn a_long_code_block_is_split_into_complete_blocks(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    let lines: Vec<String> = (0..400)
        .map(|i| format!("let line_{i:03} = {i} * 2;"))
        .collect();
    rig.provider.push(ProviderReply::Text(format!(
        "Here it is:\n\n```rust\n{}\n```\n\nDone.",
        lines.join("\n")
    )));
    rig.telegram.send_text(USER, USER, "long code please");
    let sent = rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    assert!(sent.len() >= 3, "{sent:?}");
    assert!(
        rig.telegram.failed_sends().is_empty(),
        "{:?}",
        rig.telegram.failed_sends()
    );
    let code_pieces: Vec<&str> = sent
        .iter()
        .map(|m| m.text.as_str())
        .filter(|t| t.contains("let line_"))
        .collect();
    assert!(code_pieces.len() >= 2);
    for piece in &code_pieces {
        assert_eq!(
            piece.matches("<pre>").count(),
            piece.matches("</pre>").count(),
            "{piece}"
        );
    }
    let all: String = sent.iter().map(|m| m.text.as_str()).collect();
    for line in &lines {
        assert!(all.contains(line.as_str()), "{line} lost");
    }
    assert!(all.ends_with("Done."), "{all}");
}

/// The first sentences appear before the answer is done, as one message that is edited no
/// more often than the interval, and ends as the whole answer, formatted.
async fn a_streamed_answer_is_one_message_edited_as_it_grows(mode: WorkerMode) {
    let interval = Duration::from_millis(300);
    let rig = Rig::start(mode, streaming(300)).await;
    let pieces = sentences(12);
    rig.provider.push(ProviderReply::Stream {
        pieces: pieces.clone(),
        every: Duration::from_millis(150),
    });
    rig.telegram.send_text(USER, USER, "tell me a story");
    let sent = until_finished(&rig, "<b>Sentence 12 ends it.</b>").await;
    let sends: Vec<_> = sent.iter().filter(|m| m.method == "sendMessage").collect();
    assert_eq!(sends.len(), 1, "one message, edited: {sent:#?}");
    let first = &sends[0];
    assert!(
        first.text.starts_with("Sentence number 1 is here."),
        "{}",
        first.text
    );
    assert!(
        !first.text.contains("Sentence 12"),
        "shown before it was done: {}",
        first.text
    );
    let edits: Vec<_> = sent
        .iter()
        .filter(|m| m.method == "editMessageText")
        .collect();
    assert!(edits.len() >= 2, "{sent:#?}");
    assert!(edits.iter().all(|e| e.message_id == first.message_id));
    for pair in sent.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        // Arrival times, so one request's latency may shorten the next gap a little.
        assert!(
            gap + Duration::from_millis(50) >= interval,
            "edits {gap:?} apart: {sent:#?}"
        );
    }
    let last = sent.last().map(|m| m.text.clone()).unwrap_or_default();
    assert_eq!(
        sent.last().and_then(|m| m.parse_mode.clone()).as_deref(),
        Some("HTML")
    );
    for i in 1..12 {
        assert!(
            last.contains(&format!("Sentence number {i} is here.")),
            "{last}"
        );
    }
    assert!(
        rig.telegram.failed_sends().is_empty(),
        "{:?}",
        rig.telegram.failed_sends()
    );
}

async fn flood_control_on_an_edit_pauses_the_edits(mode: WorkerMode) {
    let rig = Rig::start(mode, streaming(200)).await;
    rig.telegram
        .fail_edit(hermes_tests::fake_telegram::SendFault::RetryAfter(2));
    rig.provider.push(ProviderReply::Stream {
        pieces: sentences(30),
        every: Duration::from_millis(100),
    });
    rig.telegram.send_text(USER, USER, "a long one");
    let sent = until_finished(&rig, "<b>Sentence 30 ends it.</b>").await;
    let failed = rig.telegram.failed_sends();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].method, "editMessageText");
    let next = sent
        .iter()
        .find(|m| m.at > failed[0].at)
        .unwrap_or_else(|| panic!("nothing after the 429: {sent:#?}"));
    let waited = next.at.duration_since(failed[0].at);
    assert!(
        waited >= Duration::from_millis(1900),
        "edited again after {waited:?}"
    );
    assert_eq!(sent.iter().filter(|m| m.method == "sendMessage").count(), 1);
}

/// A provider stream that breaks off is retried; the preview of the broken attempt is
/// replaced, and the chat still has one message, showing the retry's answer.
async fn a_stream_that_breaks_is_retried_and_the_preview_starts_over(mode: WorkerMode) {
    let rig = Rig::start(mode, streaming(200)).await;
    rig.provider.push(ProviderReply::StreamThenReset {
        pieces: sentences(8)[..7].to_vec(),
        every: Duration::from_millis(100),
    });
    rig.provider
        .push(ProviderReply::Text("The second try worked.".into()));
    rig.telegram.send_text(USER, USER, "try hard");
    let sent = until_finished(&rig, "The second try worked.").await;
    assert_eq!(rig.provider.request_count(), 2);
    assert_eq!(
        sent.iter().filter(|m| m.method == "sendMessage").count(),
        1,
        "{sent:#?}"
    );
    assert!(
        sent[0].text.contains("Sentence number 1"),
        "the broken attempt was shown: {sent:#?}"
    );
    assert_eq!(
        sent.last().map(|m| m.text.as_str()),
        Some("The second try worked.")
    );
}

async fn with_streaming_off_the_answer_arrives_finished(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    rig.provider.push(ProviderReply::Stream {
        pieces: sentences(6),
        every: Duration::from_millis(200),
    });
    let reply = rig.ask("no streaming here").await;
    assert!(
        reply.text.contains("<b>Sentence 6 ends it.</b>"),
        "{}",
        reply.text
    );
    assert_eq!(rig.telegram.sent_to(USER).len(), 1);
    let request = &rig.provider.requests()[0].body;
    assert_ne!(request["stream"], true, "{request}");
}

async fn an_edit_telegram_cannot_parse_is_made_again_as_plain_text(mode: WorkerMode) {
    let rig = Rig::start(mode, streaming(200)).await;
    rig.telegram
        .fail_edit(hermes_tests::fake_telegram::SendFault::bad_entities());
    rig.provider.push(ProviderReply::Stream {
        pieces: sentences(12),
        every: Duration::from_millis(100),
    });
    rig.telegram.send_text(USER, USER, "go");
    let sent = until_finished(&rig, "<b>Sentence 12 ends it.</b>").await;
    let failed = rig.telegram.failed_sends();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].parse_mode.as_deref(), Some("HTML"));
    let plain = sent
        .iter()
        .find(|m| m.method == "editMessageText" && m.parse_mode.is_none())
        .unwrap_or_else(|| panic!("no plain edit: {sent:#?}"));
    assert_eq!(plain.text, failed[0].text, "the same text, without markup");
    assert_eq!(sent.iter().filter(|m| m.method == "sendMessage").count(), 1);
}

/// The job sends the system prompt first and only the last `max_history_messages` turns;
/// each answer is stored with its time, provider and model.
async fn a_job_carries_the_system_prompt_and_the_last_turns(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| {
        o.extra_toml =
            "\n[agent]\nsystem_prompt = \"Be brief.\"\nmax_history_messages = 2\n".into();
    })
    .await;
    for text in ["one", "two", "three"] {
        rig.ask(text).await;
    }
    let third = &rig.provider.requests()[2].body["messages"];
    let sent: Vec<(&str, &str)> = third
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["role"].as_str()?, m["content"].as_str()?)))
        .collect();
    assert_eq!(
        sent,
        [
            ("system", "Be brief."),
            ("user", "two"),
            ("assistant", "echo: two"),
            ("user", "three")
        ]
    );
    let db = rig.gateway.dir.path().join("state/state.db");
    let conn = rusqlite::Connection::open(db).expect("open state.db");
    let turns = || -> Vec<(String, i64, Option<String>, Option<String>)> {
        conn.prepare("SELECT role, at, provider, model FROM turns ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect()
            })
            .expect("read turns")
    };
    // The answer is stored right after it is sent.
    assert!(
        eventually(PATIENCE, || turns().len() == 6).await,
        "{:?}",
        turns()
    );
    let stored = turns();
    for (role, at, provider, model) in &stored {
        assert!(*at > 1_700_000_000, "{role} stored with its time");
        if role == "assistant" {
            assert_eq!(provider.as_deref(), Some("p0"));
            assert_eq!(model.as_deref(), Some("model-0"));
        }
    }
}

/// With every worker busy, a chat's job waits in the supervisor's queue; `/stop` ends it
/// there at once, and it never reaches a provider.
async fn stop_for_a_job_still_waiting_for_a_worker_answers_at_once(mode: WorkerMode) {
    let other = 3003;
    let rig = Rig::start(mode, |o| {
        o.pool_size = 1;
        o.job_timeout_secs = 60;
        o.allowed_users.push(other);
    })
    .await;
    rig.provider.push_for("busy", ProviderReply::Hang);
    rig.telegram.send_text(other, other, "busy");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    rig.telegram.send_text(USER, USER, "waiting for a worker");
    let typing = rig
        .telegram
        .wait_for_calls("sendChatAction", 2, PATIENCE)
        .await;
    assert!(typing, "both jobs started");
    let reply = rig.ask("/stop").await;
    assert!(reply.text.contains("Stopped"), "{}", reply.text);
    assert_eq!(
        rig.provider.request_count(),
        1,
        "the stopped job reached no provider"
    );
    assert!(
        rig.telegram.sent_to(other).is_empty(),
        "the other chat's job runs on"
    );
    assert_eq!(
        rig.ask_in(other, other, "/stop").await.text,
        hermes_tests_stop_text()
    );
}

fn hermes_tests_stop_text() -> &'static str {
    "⏹ Stopped. Send a new message whenever you like."
}

async fn in_group_mode_all_every_message_is_answered(mode: WorkerMode) {
    let group = -100_888;
    let rig = Rig::start(mode, |o| o.telegram_toml.push_str("group_mode = \"all\"\n")).await;
    assert_eq!(
        rig.ask_in(group, USER, "no mention here").await.text,
        "echo: no mention here"
    );
    rig.telegram.send_text(group, USER, "/new@some_other_bot");
    assert_eq!(rig.ask_in(group, USER, "still?").await.text, "echo: still?");
    assert_eq!(
        rig.telegram.sent_to(group).len(),
        2,
        "another bot's command is not ours"
    );
}

/// The preview of a long answer is one message's worth with "…"; at the end that message
/// becomes the first part and the rest follow as new messages.
async fn a_streamed_answer_longer_than_a_message_ends_as_several(mode: WorkerMode) {
    let rig = Rig::start(mode, streaming(300)).await;
    // About 9,700 characters: three messages.
    let mut pieces: Vec<String> = (1..=120)
        .map(|i| {
            format!("Sentence {i:03} of a long answer, padded to be about eighty chars long. ")
        })
        .collect();
    pieces.push("The end.".into());
    rig.provider.push(ProviderReply::Stream {
        pieces,
        every: Duration::from_millis(15),
    });
    rig.telegram.send_text(USER, USER, "write a lot");
    let sent = until_finished(&rig, "The end.").await;
    let sends: Vec<_> = sent.iter().filter(|m| m.method == "sendMessage").collect();
    assert_eq!(
        sends.len(),
        3,
        "the preview, then the other two parts: {sent:#?}"
    );
    assert!(
        sent.iter().any(|m| m.text.ends_with(" …")),
        "a preview of a long answer says there is more"
    );
    let first_final = sent
        .iter()
        .rev()
        .find(|m| m.method == "editMessageText")
        .expect("the preview was edited into the first part");
    assert_eq!(first_final.message_id, sends[0].message_id);
    assert!(first_final.text.starts_with("Sentence 001"));
    assert!(!first_final.text.ends_with(" …"), "{}", first_final.text);
    let all = format!("{} {} {}", first_final.text, sends[1].text, sends[2].text);
    for i in 1..=120 {
        assert!(all.contains(&format!("Sentence {i:03} ")), "{i} lost");
    }
    assert!(
        rig.telegram.failed_sends().is_empty(),
        "{:?}",
        rig.telegram.failed_sends()
    );
}
