//! The answer shown as it is written: one message edited as it grows, flood control on
//! edits, an edit Telegram cannot parse, a stream that breaks and starts over, an answer
//! longer than one message, and streaming turned off. Then the fault matrix's core rows
//! with streaming on, as the product ships: a worker crash, a timeout, a provider failing
//! after some text, `/stop`, an edit Telegram refuses, each while a preview is showing;
//! the chat must end with one message, the final one, and no preview left beside it.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::harness::{GatewayOptions, PATIENCE, Rig, USER};

hermes_tests::both_modes!(
    a_streamed_answer_is_one_message_edited_as_it_grows,
    a_streamed_answer_longer_than_a_message_ends_as_several,
    flood_control_on_an_edit_pauses_the_edits,
    an_edit_telegram_cannot_parse_is_made_again_as_plain_text,
    a_stream_that_breaks_is_retried_and_the_preview_starts_over,
    with_streaming_off_the_answer_arrives_finished,
    a_worker_crash_mid_stream_turns_the_preview_into_the_error,
    a_timeout_mid_stream_turns_the_preview_into_the_error,
    a_provider_failing_after_streamed_text_turns_the_preview_into_the_error,
    stop_mid_stream_turns_the_preview_into_stopped,
    an_edit_telegram_refuses_mid_stream_still_ends_as_one_message,
);

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

async fn flood_control_on_an_edit_pauses_the_edits(mode: WorkerMode) {
    let mut rig = Rig::start(mode, streaming(200)).await;
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
    rig.assert_replies(1);
    rig.assert_still_serving().await;
}

/// The refused edit has markup, so the plain edit must be its text without tags and
/// entities (the HTML sent without a parse mode would show `<b>` and `&amp;`).
async fn an_edit_telegram_cannot_parse_is_made_again_as_plain_text(mode: WorkerMode) {
    let mut rig = Rig::start(mode, streaming(200)).await;
    rig.telegram
        .fail_edit(hermes_tests::fake_telegram::SendFault::bad_entities());
    let mut pieces = vec!["**Fish** & chips come first. ".to_string()];
    pieces.extend(sentences(12));
    rig.provider.push(ProviderReply::Stream {
        pieces,
        every: Duration::from_millis(100),
    });
    rig.telegram.send_text(USER, USER, "go");
    let sent = until_finished(&rig, "<b>Sentence 12 ends it.</b>").await;
    let failed = rig.telegram.failed_sends();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].parse_mode.as_deref(), Some("HTML"));
    assert!(
        failed[0].text.starts_with("<b>Fish</b> &amp; chips"),
        "{}",
        failed[0].text
    );
    let plain = sent
        .iter()
        .find(|m| m.method == "editMessageText" && m.parse_mode.is_none())
        .unwrap_or_else(|| panic!("no plain edit: {sent:#?}"));
    let without_markup = failed[0]
        .text
        .replace("<b>", "")
        .replace("</b>", "")
        .replace("&amp;", "&");
    assert_eq!(plain.text, without_markup, "the same text, without markup");
    assert_eq!(sent.iter().filter(|m| m.method == "sendMessage").count(), 1);
    rig.assert_replies(1);
    rig.assert_still_serving().await;
}

/// A provider stream that breaks off is retried; the preview of the broken attempt is
/// replaced, and the chat still has one message, showing the retry's answer.
async fn a_stream_that_breaks_is_retried_and_the_preview_starts_over(mode: WorkerMode) {
    let mut rig = Rig::start(mode, streaming(200)).await;
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
    rig.assert_replies(1);
    rig.assert_still_serving().await;
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

/// A streamed answer still being written: sentences every 100 ms for 6 s.
fn slow_stream() -> ProviderReply {
    ProviderReply::Stream {
        pieces: sentences(60),
        every: Duration::from_millis(100),
    }
}

/// Waits until the chat shows a preview of the streamed answer.
async fn preview_shown(rig: &Rig) {
    let preview = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == USER && m.text.starts_with("Sentence number 1 is here."),
            PATIENCE,
        )
        .await;
    assert!(
        preview.is_some_and(|m| m.method == "sendMessage"),
        "no preview: {:#?}\n{}",
        rig.telegram.sent_to(USER),
        rig.gateway.log()
    );
}

/// Waits for a message showing `expected`, then asserts it is all the chat shows: the
/// preview became it, and no other message (a stale preview, a second reply) is there.
async fn ends_as_one_message(rig: &Rig, expected: &str) {
    let found = rig
        .telegram
        .wait_for_sent(|m| m.chat_id == USER && m.text.contains(expected), PATIENCE)
        .await;
    assert!(
        found.is_some(),
        "{expected:?} never shown: {:#?}\n{}",
        rig.telegram.sent_to(USER),
        rig.gateway.log()
    );
    let chat = rig.telegram.chat_now(USER);
    assert_eq!(
        chat.len(),
        1,
        "the chat shows more than the final reply: {chat:#?}"
    );
    assert!(chat[0].text.contains(expected), "{chat:#?}");
    let sent = rig.telegram.sent_to(USER);
    assert!(
        sent.iter()
            .any(|m| m.method == "sendMessage" && m.text.starts_with("Sentence number 1")),
        "no preview was shown before the end: {sent:#?}"
    );
    rig.assert_replies(1);
}

/// The worker is killed (as the OOM killer would) while its answer streams.
async fn a_worker_crash_mid_stream_turns_the_preview_into_the_error(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| {
        streaming(100)(o);
        o.pool_size = 1;
    })
    .await;
    rig.provider.push(slow_stream());
    rig.telegram.send_text(USER, USER, "tell me a long story");
    preview_shown(&rig).await;
    // The job's worker, and in per-request mode the spare waiting beside it.
    let workers = rig.gateway.workers();
    assert!(!workers.is_empty() && workers.len() <= 2, "{workers:?}");
    for worker in &workers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    ends_as_one_message(&rig, "crashed").await;
    rig.assert_no_stray_processes().await;
    rig.assert_still_serving().await;
}

async fn a_timeout_mid_stream_turns_the_preview_into_the_error(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| {
        streaming(100)(o);
        o.job_timeout_secs = 2;
    })
    .await;
    rig.provider.push(slow_stream());
    rig.telegram.send_text(USER, USER, "tell me a long story");
    preview_shown(&rig).await;
    ends_as_one_message(&rig, "took too long").await;
    rig.assert_no_stray_processes().await;
    rig.assert_still_serving().await;
}

/// Every attempt streams some text, then the connection breaks.
async fn a_provider_failing_after_streamed_text_turns_the_preview_into_the_error(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| {
        streaming(100)(o);
        o.max_retries = 1;
        o.quota_cooldown_secs = Some(0);
    })
    .await;
    rig.provider.push_n(
        ProviderReply::StreamThenReset {
            pieces: sentences(8)[..7].to_vec(),
            every: Duration::from_millis(100),
        },
        2,
    );
    rig.telegram.send_text(USER, USER, "tell me a story");
    preview_shown(&rig).await;
    ends_as_one_message(&rig, "unavailable").await;
    assert_eq!(rig.provider.request_count(), 2);
    rig.assert_still_serving().await;
}

/// `/stop` while the answer streams: the preview becomes "Stopped", the one reply for the
/// message and the command.
async fn stop_mid_stream_turns_the_preview_into_stopped(mode: WorkerMode) {
    let mut rig = Rig::start(mode, streaming(100)).await;
    rig.provider.push(slow_stream());
    rig.telegram.send_text(USER, USER, "tell me a long story");
    preview_shown(&rig).await;
    rig.telegram.send_text(USER, USER, "/stop");
    ends_as_one_message(&rig, "Stopped").await;
    rig.assert_no_stray_processes().await;
    rig.assert_still_serving().await;
}

/// Telegram refuses one edit of the preview: the previews stop, and the finished answer
/// still lands in that same message rather than beside it.
async fn an_edit_telegram_refuses_mid_stream_still_ends_as_one_message(mode: WorkerMode) {
    let mut rig = Rig::start(mode, streaming(100)).await;
    rig.telegram
        .fail_edit(hermes_tests::fake_telegram::SendFault::Status {
            status: 400,
            description: "Bad Request: message can't be edited".into(),
        });
    rig.provider.push(ProviderReply::Stream {
        pieces: sentences(20),
        every: Duration::from_millis(100),
    });
    rig.telegram.send_text(USER, USER, "tell me a story");
    preview_shown(&rig).await;
    ends_as_one_message(&rig, "<b>Sentence 20 ends it.</b>").await;
    let failed = rig.telegram.failed_sends();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].method, "editMessageText");
    rig.assert_still_serving().await;
}

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

// A preview left by a gateway killed mid-answer is marked, not left beside the new answer
// (issue 21.11).
hermes_tests::both_modes!(a_gateway_killed_mid_stream_marks_its_preview_interrupted);

async fn a_gateway_killed_mid_stream_marks_its_preview_interrupted(mode: WorkerMode) {
    let mut rig = Rig::start(mode, streaming(100)).await;
    rig.provider.push(slow_stream());
    rig.telegram.send_text(USER, USER, "tell me a long story");
    preview_shown(&rig).await;
    // Once the preview is edited, the gateway has its id (a crash in the moment between
    // Telegram sending the preview and the gateway hearing its id leaves it as it is).
    let edited = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == USER && m.method == "editMessageText",
            PATIENCE,
        )
        .await;
    assert!(edited.is_some(), "{}", rig.gateway.log());
    let preview = rig.telegram.chat_now(USER);
    assert_eq!(preview.len(), 1, "{preview:#?}");
    rig.gateway.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    let mut options = GatewayOptions::new(mode);
    options.providers = vec![rig.provider.base_url()];
    streaming(100)(&mut options);
    let rig = rig.restart_with(|gateway, telegram, _| {
        hermes_tests::harness::Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url())
    });
    let answered = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == USER && m.text == "echo: tell me a long story",
            PATIENCE,
        )
        .await;
    assert!(answered.is_some(), "{}", rig.gateway.log());
    let marked = hermes_tests::harness::eventually(PATIENCE, || {
        rig.telegram
            .chat_now(USER)
            .first()
            .is_some_and(|m| m.text.contains("cut short"))
    })
    .await;
    let chat = rig.telegram.chat_now(USER);
    assert!(
        marked,
        "the preview still shows the killed run's text: {chat:#?}\n{}",
        rig.gateway.log()
    );
    assert_eq!(chat.len(), 2, "{chat:#?}");
    assert_eq!(
        chat[0].message_id, preview[0].message_id,
        "edited, not sent anew"
    );
    assert_eq!(chat[1].text, "echo: tell me a long story");
    let sent = rig.telegram.sent_to(USER);
    let position = |f: &dyn Fn(&str) -> bool| sent.iter().position(|m| f(&m.text));
    assert!(
        position(&|t| t.contains("cut short")) < position(&|t| t == "echo: tell me a long story"),
        "marked before the new answer: {sent:#?}"
    );
}
