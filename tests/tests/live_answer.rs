//! The running answer, seen and stopped: the ⏹ button under a streamed answer stops its
//! job as `/stop` does, for the user who asked only; a 👀 reaction on the question while
//! its turn runs, settled when it ends (and a chat that allows no reactions answered all
//! the same); and, with `telegram.rich_messages` on, a table answer sent as one rich
//! message, or as today's HTML messages when Telegram refuses it.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::fake_telegram::SentMessage;
use hermes_tests::harness::{GatewayOptions, PATIENCE, Rig, USER};

hermes_tests::both_modes!(
    the_stop_button_stops_the_running_job_like_stop,
    another_users_press_of_the_stop_button_does_nothing_but_answer,
    the_question_shows_eyes_while_its_turn_runs_and_how_it_ended,
    a_chat_refusing_reactions_still_gets_its_answers,
    with_rich_messages_a_table_answer_is_one_rich_message,
    a_refused_rich_message_falls_back_to_html,
);

/// What `/stop` answers, and the ⏹ button too.
const STOPPED: &str = "⏹ Stopped. Send a new message whenever you like.";
/// The button's label.
const STOP: &str = "⏹ Stop";
/// A member of the group besides [`USER`], allowed to talk to the bot.
const OTHER: i64 = 1002;
/// Someone nobody allowed.
const STRANGER: i64 = 6666;

/// The ⏹ button under the preview ends the job as `/stop` does: the preview becomes the
/// same "⏹ Stopped." reply, without the button, the worker's group is gone (its provider
/// connection closed, no process left), and the next message is answered.
async fn the_stop_button_stops_the_running_job_like_stop(mode: WorkerMode) {
    let mut rig = Rig::start(mode, streaming(100)).await;
    rig.provider.push(slow_stream(60));
    rig.telegram.send_text(USER, USER, "tell me a long story");
    let preview = preview_with_button(&rig, USER).await;
    assert!(
        rig.provider
            .server()
            .wait_for_open_connections(1, PATIENCE)
            .await
    );
    let press = rig
        .telegram
        .press(USER, preview.message_id, USER, STOP)
        .expect("the preview shows the button");
    let answer = rig
        .telegram
        .wait_for_callback_answer(&press, PATIENCE)
        .await;
    assert_eq!(
        answer.and_then(|a| a.text).as_deref(),
        Some("Stopping…"),
        "{}",
        rig.gateway.log()
    );
    assert!(
        rig.provider
            .server()
            .wait_for_open_connections(0, PATIENCE)
            .await,
        "the stopped worker still holds its provider connection"
    );
    let shown = ends_as_one_message(&rig, USER, STOPPED).await;
    assert_eq!(
        shown.message_id, preview.message_id,
        "the preview became it"
    );
    assert_eq!(
        rig.telegram.keyboard(USER, preview.message_id),
        None,
        "the button went with the answer"
    );
    rig.assert_logged("stopped by /stop");
    rig.assert_no_stray_processes().await;
    rig.assert_replies(1);
    rig.assert_still_serving().await;
}

/// In a group, another allowed member's press (and a stranger's) is answered with a
/// callback saying only the asker can stop it, and nothing happens: the answer ends as
/// written, and the button goes with it.
async fn another_users_press_of_the_stop_button_does_nothing_but_answer(mode: WorkerMode) {
    let group = -100_555;
    let rig = Rig::start(mode, |o| {
        streaming(100)(o);
        o.telegram_toml.push_str("group_mode = \"all\"\n");
        o.allowed_users = vec![USER, OTHER];
    })
    .await;
    rig.provider.push(slow_stream(30));
    rig.telegram.send_text(group, USER, "tell me a story");
    let preview = preview_with_button(&rig, group).await;
    for presser in [OTHER, STRANGER] {
        let press = rig
            .telegram
            .press(group, preview.message_id, presser, STOP)
            .expect("the button is there");
        let answer = rig
            .telegram
            .wait_for_callback_answer(&press, PATIENCE)
            .await;
        assert_eq!(
            answer.and_then(|a| a.text).as_deref(),
            Some("Only the person who asked can stop this answer."),
            "{}",
            rig.gateway.log()
        );
    }
    let last = ends_as_one_message(&rig, group, "Sentence 30 ends it.").await;
    assert_eq!(last.message_id, preview.message_id);
    assert_eq!(rig.telegram.keyboard(group, preview.message_id), None);
    assert!(!rig.gateway.log().contains("stopped by /stop"));
}

/// The message a turn answers shows 👀 while the turn runs (before its answer is out),
/// then 👍 once it is answered; one stopped with `/stop` ends with no reaction, and one
/// that fails with 😢, at once when it fails at once. A turn answered at once gets none.
/// Only emoji from the set bots may use (the fake refuses the rest, and fails the test
/// here).
async fn the_question_shows_eyes_while_its_turn_runs_and_how_it_ended(mode: WorkerMode) {
    // Well within the 300 ms a turn runs before it shows 👀, measured from the test's side.
    const AT_ONCE: Duration = Duration::from_millis(200);
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.provider
        .push(ProviderReply::Delay(Duration::from_secs(1)));
    let asked = rig.telegram.send_text_returning_id(USER, USER, "slow one");
    assert!(
        rig.telegram
            .wait_for_reaction(USER, asked, &["👀"], PATIENCE)
            .await,
        "no 👀: {:?}\n{}",
        rig.telegram.reactions_on(USER, asked),
        rig.gateway.log()
    );
    assert!(
        rig.telegram.sent_to(USER).is_empty(),
        "the 👀 came after the answer"
    );
    let reply = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(reply[0].text, "echo: slow one");
    assert!(
        rig.telegram
            .wait_for_reaction(USER, asked, &["👍"], PATIENCE)
            .await,
        "{:?}",
        rig.telegram.reactions_on(USER, asked)
    );
    rig.assert_replies(1);

    rig.provider.push(ProviderReply::Hang);
    let stopped = rig.telegram.send_text_returning_id(USER, USER, "forever");
    assert!(
        rig.telegram
            .wait_for_reaction(USER, stopped, &["👀"], PATIENCE)
            .await
    );
    // Stopped once its request hangs at the provider, not before it took the reply.
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    rig.telegram.send_text(USER, USER, "/stop");
    assert!(
        rig.telegram
            .wait_for_reaction(USER, stopped, &[], PATIENCE)
            .await,
        "{:?}",
        rig.telegram.reactions_on(USER, stopped)
    );

    rig.provider.push(ProviderReply::status(
        401,
        r#"{"error":{"message":"Incorrect API key provided"}}"#,
    ));
    let failing = rig.telegram.send_text_returning_id(USER, USER, "who am I?");
    let asked_at = std::time::Instant::now();
    let replies = rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    let failed_at_once = asked_at.elapsed() < AT_ONCE;
    assert!(
        replies.last().is_some_and(|m| m.text.contains("API key")),
        "{replies:#?}"
    );
    assert!(
        rig.telegram
            .wait_for_reaction(USER, failing, &["😢"], PATIENCE)
            .await,
        "{:?}",
        rig.telegram.reactions_on(USER, failing)
    );
    if failed_at_once {
        assert_eq!(
            rig.telegram.reactions_on(USER, failing),
            [["😢"]],
            "a failure at once shows its 😢 alone"
        );
    }
    assert_eq!(rig.telegram.refused_reactions(USER), 0);
    rig.assert_replies_in(USER, 3);

    // Answered at once: the answer is the sign, and no reaction follows it (the ask after
    // it shows that the turn's reaction task, had it set one, has had its time).
    let quick = rig.telegram.send_text_returning_id(USER, USER, "quick");
    let asked_at = std::time::Instant::now();
    rig.telegram.wait_for_chat_messages(USER, 4, PATIENCE).await;
    let answered_at_once = asked_at.elapsed() < AT_ONCE;
    rig.provider
        .push(ProviderReply::Delay(Duration::from_secs(1)));
    let slow = rig
        .telegram
        .send_text_returning_id(USER, USER, "slow again");
    assert!(
        rig.telegram
            .wait_for_reaction(USER, slow, &["👍"], PATIENCE)
            .await
    );
    // A loaded machine may take longer than the gateway's wait to answer: then the
    // reaction is the one of a slow turn.
    assert!(
        !answered_at_once || rig.telegram.reactions_on(USER, quick).is_empty(),
        "{:?}",
        rig.telegram.reactions_on(USER, quick)
    );
    // The 👍 is set when the answer is committed, which can be just before it arrives.
    rig.telegram.wait_for_chat_messages(USER, 5, PATIENCE).await;
    rig.assert_replies_in(USER, 5);
    rig.assert_still_serving().await;
}

/// A chat that allows no reactions (Telegram answers `REACTION_INVALID`) gets every answer
/// as usual, the refusal logged once for the chat.
async fn a_chat_refusing_reactions_still_gets_its_answers(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.telegram.refuse_reactions_in(USER);
    // Long enough a turn to be shown a reaction.
    rig.provider
        .push(ProviderReply::Delay(Duration::from_secs(1)));
    assert_eq!(rig.ask("first").await.text, "echo: first");
    assert!(
        hermes_tests::harness::eventually(PATIENCE, || rig.telegram.refused_reactions(USER) > 0)
            .await,
        "{}",
        rig.gateway.log()
    );
    assert_eq!(rig.ask("second").await.text, "echo: second");
    rig.assert_still_serving().await;
    let log = rig.gateway.log();
    assert_eq!(
        log.matches("refuses the bot's reactions").count(),
        1,
        "logged once for the chat:\n{log}"
    );
}

/// The answer to send as a table, and how its first row reads as HTML.
const TABLE: &str =
    "Here you go:\n\n| fruit | price |\n| --- | --- |\n| apple | 1 |\n| pear | 2 |\n";

/// With `telegram.rich_messages` on, a streamed answer that holds a table ends as one rich
/// message of the model's Markdown; the preview it replaces is deleted, so the chat shows
/// that message alone.
async fn with_rich_messages_a_table_answer_is_one_rich_message(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| {
        streaming(100)(o);
        o.telegram_toml.push_str("rich_messages = true\n");
    })
    .await;
    let mut pieces = sentences(8);
    pieces.push(format!("\n\n{TABLE}"));
    rig.provider.push(ProviderReply::Stream {
        pieces: pieces.clone(),
        every: Duration::from_millis(100),
    });
    rig.telegram.send_text(USER, USER, "prices?");
    let preview = preview_with_button(&rig, USER).await;
    let rich = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == USER && m.method == "sendRichMessage",
            PATIENCE,
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "no rich message: {:#?}\n{}",
                rig.telegram.sent_to(USER),
                rig.gateway.log()
            )
        });
    assert_eq!(
        rich.text.trim(),
        pieces.concat().trim(),
        "the model's Markdown as it is"
    );
    assert!(
        hermes_tests::harness::eventually(PATIENCE, || rig
            .telegram
            .was_deleted(USER, preview.message_id))
        .await,
        "the preview stays beside the rich message: {:#?}",
        rig.telegram.sent_to(USER)
    );
    let shown = rig.telegram.chat_shows(USER);
    assert_eq!(shown.len(), 1, "{shown:#?}");
    assert_eq!(shown[0].method, "sendRichMessage");
    // Nothing of its HTML form went out after it: the preview was its only other message.
    let sent = rig.telegram.sent_to(USER);
    assert_eq!(
        sent.last().map(|m| m.method.as_str()),
        Some("sendRichMessage"),
        "{sent:#?}"
    );
    rig.assert_replies(1);
    // A short answer without a table stays an ordinary message.
    let plain = rig.ask("hello").await;
    assert_eq!(
        (plain.method.as_str(), plain.text.as_str()),
        ("sendMessage", "echo: hello")
    );
    rig.assert_still_serving().await;
}

/// Telegram refusing the rich message (any 400) costs nothing: the answer goes as today's
/// HTML messages, in place of the preview, once.
async fn a_refused_rich_message_falls_back_to_html(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| {
        streaming(100)(o);
        o.telegram_toml.push_str("rich_messages = true\n");
    })
    .await;
    rig.telegram
        .refuse_rich_messages(Some("Bad Request: RICH_MESSAGE_UNSUPPORTED"));
    let mut pieces = sentences(8);
    pieces.push(format!("\n\n{TABLE}"));
    rig.provider.push(ProviderReply::Stream {
        pieces,
        every: Duration::from_millis(100),
    });
    rig.telegram.send_text(USER, USER, "prices?");
    let preview = preview_with_button(&rig, USER).await;
    let last = ends_as_one_message(&rig, USER, "apple").await;
    assert_eq!(last.message_id, preview.message_id, "the preview became it");
    assert_eq!(last.parse_mode.as_deref(), Some("HTML"));
    let refused: Vec<_> = rig
        .telegram
        .failed_sends()
        .into_iter()
        .filter(|f| f.method == "sendRichMessage")
        .collect();
    assert_eq!(refused.len(), 1, "tried once, then HTML: {refused:#?}");
    rig.assert_logged("sending it as HTML messages");
    rig.assert_replies(1);
    rig.assert_still_serving().await;
}

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

/// An answer of `n` sentences, one every 100 ms.
fn slow_stream(n: usize) -> ProviderReply {
    ProviderReply::Stream {
        pieces: sentences(n),
        every: Duration::from_millis(100),
    }
}

/// Waits for the preview of the streamed answer in `chat`, showing the ⏹ button.
async fn preview_with_button(rig: &Rig, chat: i64) -> SentMessage {
    let preview = rig
        .telegram
        .wait_for_sent(
            |m| {
                m.chat_id == chat
                    && m.method == "sendMessage"
                    && m.text.starts_with("Sentence number 1 is here.")
            },
            PATIENCE,
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "no preview: {:#?}\n{}",
                rig.telegram.sent_to(chat),
                rig.gateway.log()
            )
        });
    let keyboard = preview.keyboard.clone().unwrap_or_default();
    assert_eq!(
        keyboard["inline_keyboard"][0][0]["text"], STOP,
        "the preview carries the ⏹ button: {preview:#?}"
    );
    preview
}

/// Waits for the final message in `chat` (no button under it) showing `expected`, then
/// asserts it is all the chat shows (the preview became it), and returns it.
async fn ends_as_one_message(rig: &Rig, chat: i64, expected: &str) -> SentMessage {
    let found = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == chat && m.text.contains(expected) && m.keyboard.is_none(),
            PATIENCE,
        )
        .await;
    assert!(
        found.is_some(),
        "{expected:?} never shown: {:#?}\n{}",
        rig.telegram.sent_to(chat),
        rig.gateway.log()
    );
    let shown = rig.telegram.chat_shows(chat);
    assert_eq!(
        shown.len(),
        1,
        "the chat shows more than the final reply: {shown:#?}"
    );
    assert!(shown[0].text.contains(expected), "{shown:#?}");
    shown[0].clone()
}
