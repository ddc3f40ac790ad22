//! Talking to the bot: who is answered, the conversation sent with each message and
//! kept across restarts, one job at a time per chat, groups, the answer rendered from
//! Markdown and cut to Telegram's size, and the durable inbox (a message in flight when
//! the gateway is killed is answered once after the restart).
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::fake_telegram::BOT_USERNAME;
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, USER, eventually};
use nix::sys::signal::Signal;

hermes_tests::both_modes!(
    text_from_allowed_user_is_answered,
    stranger_reaches_no_provider_and_learns_their_id,
    the_conversation_is_sent_with_each_message_and_survives_a_restart,
    a_job_carries_the_system_prompt_and_the_last_turns,
    a_chat_answers_in_order_and_asks_to_wait_beyond_its_queue,
    typing_shows_while_a_job_runs,
    in_a_group_only_messages_for_the_bot_are_answered,
    in_group_mode_all_every_message_is_answered,
    answers_are_rendered_from_markdown_to_telegram_html,
    a_long_code_block_is_split_into_complete_blocks,
    long_replies_are_split_before_sending,
    a_message_in_flight_when_the_gateway_is_killed_is_answered_once_after_restart,
);

async fn text_from_allowed_user_is_answered(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    let reply = rig.ask("hello there").await;
    assert_eq!(reply.text, "echo: hello there");
    let requests = rig.provider.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer sk-test-key")
    );
    assert_eq!(requests[0].body["model"], "model-0");
    assert_eq!(requests[0].body["messages"][0]["content"], "hello there");
    rig.gateway.assert_running(rig.pid);
}

async fn stranger_reaches_no_provider_and_learns_their_id(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    let stranger = 777_000_123;
    let reply = rig.ask_in(stranger, stranger, "let me in").await;
    assert!(reply.text.contains("777000123"), "{}", reply.text);
    assert_eq!(rig.provider.request_count(), 0);
    assert!(
        !rig.gateway.log().contains("answered"),
        "a job ran for the stranger"
    );
    rig.assert_still_serving().await;
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

/// One job at a time per chat, in arrival order; `max_queued_per_chat` messages may wait
/// behind it, and are asked together as the next turn; one more is refused with a reply
/// saying it was not processed, and is done (never answered later).
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
    let replies = rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert!(texts[0].contains("did not process this one"), "{texts:?}");
    assert_eq!(texts[1..], ["echo: first", "echo: second\nthird"]);
    assert_eq!(
        rig.provider.request_count(),
        2,
        "the waiting two were one turn; the fourth reached no provider"
    );
    // Refused is done: a restart does not answer it.
    let mut rig = rig;
    rig.gateway.signal(Signal::SIGTERM);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    let options = options_like(&rig, mode);
    let Rig {
        telegram,
        provider,
        gateway,
        ..
    } = rig;
    let _restarted = Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url());
    telegram.send_text(USER, USER, "fifth");
    let replies = telegram.wait_for_chat_messages(USER, 4, PATIENCE).await;
    assert_eq!(replies[3].text, "echo: fifth");
    assert_eq!(provider.request_count(), 3);
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
    assert!(
        replies.get(1).is_some_and(|m| m.text.contains("and 3+3?")),
        "{replies:?}"
    );
    // A reply to the bot is for it, and brings what it replies to (albums.rs).
    assert_eq!(
        rig.provider
            .requests()
            .last()
            .and_then(|r| r.last_user_text())
            .as_deref(),
        Some("[quoting your message]\n> echo: what is 2+2?\n[end of quote]\nand 3+3?")
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

async fn long_replies_are_split_before_sending(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    let paragraph = "word ".repeat(400);
    let long = [paragraph.trim(); 5].join("\n\n");
    assert!(long.len() > 9000);
    rig.provider.push(ProviderReply::Text(long.clone()));
    rig.telegram.send_text(USER, USER, "tell me everything");
    let sent = rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    for m in &sent {
        assert!(m.text.encode_utf16().count() <= 4096);
    }
    assert_eq!(
        sent.iter()
            .map(|m| m.text.split_whitespace().count())
            .sum::<usize>(),
        2000
    );
    assert!(rig.telegram.failed_sends().is_empty());
    rig.assert_replies(3);
    rig.assert_still_serving().await;
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

fn options_like(rig: &Rig, mode: WorkerMode) -> GatewayOptions {
    GatewayOptions {
        providers: vec![rig.provider.base_url()],
        ..GatewayOptions::new(mode)
    }
}

/// Every update Telegram was told to forget (offset past it) is in the store. (The test's
/// updates are all its user's text messages, numbered from 1; the store keys its rows by
/// its own ids, so what is compared is how many.)
fn assert_acknowledged_updates_were_stored(rig: &Rig, db: &std::path::Path) {
    let acked = rig.telegram.acked_up_to();
    let conn = rusqlite::Connection::open(db).expect("open state.db");
    let stored: Vec<String> = conn
        .prepare("SELECT text FROM inbox ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("read inbox");
    assert!(
        stored.len() as i64 >= acked,
        "{acked} updates acknowledged, {} stored ({stored:?})",
        stored.len()
    );
}
