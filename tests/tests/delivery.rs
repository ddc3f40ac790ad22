//! Delivery: every accepted message gets exactly one answer, even when Telegram fails on
//! the way out, across restarts, and at the edges around one instance. The outbox
//! (replies committed before they are sent, retried until Telegram takes them or refuses
//! them for good), turns made of every waiting message, the stop (at once when idle; a job
//! that finishes inside the drain is answered, one cut short is answered by the next run),
//! one gateway per state directory, webhooks, private state, the allowlist as a wall,
//! updates the client cannot parse, the bounds on one job in the parent, and messages
//! whose jobs keep dying.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{API_KEY, FakeProvider, ProviderReply};
use hermes_tests::fake_telegram::{
    BOT_USERNAME, FakeTelegram, PollOutcome, SendFault, SentMessage, TOKEN,
};
use hermes_tests::harness::{
    Gateway, GatewayOptions, PATIENCE, Rig, USER, bad_worker, binaries, eventually,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

hermes_tests::both_modes!(
    an_answer_due_while_telegram_fails_every_send_for_20_s_arrives_once_when_it_recovers,
    an_answer_due_in_a_telegram_outage_arrives_once_across_a_gateway_restart,
    a_burst_of_ten_is_one_or_two_turns_with_every_text_and_nothing_is_sent_after_a_restart,
    a_reply_delivered_to_an_idle_gateway_is_recorded_and_a_kill_sends_nothing_again,
    an_idle_gateway_exits_within_half_a_second_of_sigterm,
    a_second_gateway_on_the_same_state_is_refused_and_the_first_is_untouched,
    a_webhook_left_set_is_deleted_and_polling_goes_on,
    state_files_are_private_under_umask_022,
    a_strangers_group_message_never_reaches_the_provider,
    an_update_the_client_cannot_parse_is_kept_and_its_text_answered,
    a_blocked_chats_reply_is_refused_for_good_and_its_message_done,
    a_migrated_group_gets_its_answer_at_the_new_id,
    an_oversized_history_is_trimmed_and_the_job_answered,
    a_message_whose_job_dies_with_the_gateway_three_times_gets_an_apology,
    a_reply_older_than_the_outbox_age_limit_is_dropped_and_counted,
    a_job_that_finishes_inside_the_drain_is_answered_before_exit,
    a_job_cut_short_by_sigterm_is_answered_once_by_the_next_run,
    send_message_reset_is_retried_and_answered_once,
    send_message_json_5xx_is_retried_and_answered_once,
    send_message_that_hangs_is_retried_and_answered_once,
    a_final_edit_that_fails_is_sent_anew_once,
    an_answer_past_the_bounds_is_ten_messages_ending_with_a_note_that_it_was_cut,
    a_worker_that_never_reads_its_job_is_timed_out_not_waited_on,
    update_ids_that_start_over_lower_after_a_quiet_week_are_followed,
    a_local_bot_api_server_that_restarts_numbering_from_1_is_followed,
);

// ---- update ids --------------------------------------------------------------------------

/// Telegram picks a new random start for `update_id` after a week without updates: lower
/// than every id before, here reusing them. Each message before and after is answered
/// once, and after a restart of the gateway too. (Before: the offset was kept with
/// `max()`, acknowledging the new updates unseen, and a reused id was dropped as stored.)
async fn update_ids_that_start_over_lower_after_a_quiet_week_are_followed(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| o.poll_timeout_secs = 1).await;
    rig.telegram.restart_update_ids(700_000);
    assert_eq!(rig.ask("one").await.text, "echo: one");
    assert_eq!(rig.ask("two").await.text, "echo: two");
    // A quiet week (here: a long poll that ended with nothing), then the ids start over
    // at the same number, below the offset that acknowledged "two". The fake forgets
    // every update below an offset, as the Bot API documents: a gateway that sent the
    // old offset again would never see them.
    let polls = rig.telegram.get_updates_log().len();
    assert!(
        eventually(PATIENCE, || rig.telegram.get_updates_log()[polls..]
            .iter()
            .any(
                |p| p.outcome == PollOutcome::Answered && p.answered_ids.is_empty()
            ))
        .await,
        "{}",
        rig.gateway.log()
    );
    rig.telegram.restart_update_ids(700_000);
    assert_eq!(rig.ask("three").await.text, "echo: three");
    assert_eq!(rig.ask("four").await.text, "echo: four");
    let rig = restart(rig, mode, Stop::Term, |_| {}).await;
    rig.telegram.restart_update_ids(5);
    assert_eq!(rig.ask("five").await.text, "echo: five");
    rig.assert_one_reply_each();
    assert_eq!(rig.provider.request_count(), 5);
}

/// A local Bot API server that restarts numbers its updates from 1 again: the first
/// message after a 10 s outage is answered (it was never answered before: its id was
/// taken, and the offset above it acknowledged it unseen).
async fn a_local_bot_api_server_that_restarts_numbering_from_1_is_followed(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    for text in ["one", "two", "three"] {
        assert_eq!(rig.ask(text).await.text, format!("echo: {text}"));
    }
    let polls = rig.telegram.get_updates_log().len();
    rig.telegram.refuse_connections().await;
    assert!(
        eventually(PATIENCE, || rig
            .gateway
            .log()
            .matches("getUpdates failed")
            .count()
            >= 2)
        .await,
        "{}",
        rig.gateway.log()
    );
    rig.telegram.restart_update_ids(1);
    rig.telegram.accept_connections().await;
    assert!(rig.telegram.wait_for_polls(polls + 1, PATIENCE).await);
    assert_eq!(rig.ask("after").await.text, "echo: after");
    assert_eq!(rig.ask("again").await.text, "echo: again");
    rig.assert_one_reply_each();
    assert_eq!(rig.provider.request_count(), 5);
}

/// How long the outage of the first two tests lasts.
const OUTAGE: Duration = Duration::from_secs(20);

// ---- the outbox ---------------------------------------------------------------------------

async fn an_answer_due_while_telegram_fails_every_send_for_20_s_arrives_once_when_it_recovers(
    mode: WorkerMode,
) {
    let mut rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("warm up").await.text, "echo: warm up");
    rig.telegram
        .fail_every_send(Some(SendFault::server_error()));
    let outage = Instant::now();
    rig.telegram.send_text(USER, USER, "during the outage");
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    assert!(rig.telegram.wait_for_failed_sends(1, PATIENCE).await);
    let db = state_db(&rig.gateway);
    assert_eq!(outbox_len(&db), 1, "the answer is in the outbox");
    assert!(
        !inbox_done(&db, "during the outage"),
        "a message is done only once its answer is out"
    );
    // The answer waits in the outbox, and the status says so; /status too (its reply
    // queues behind the answer, in order). `status` is read before /status is sent:
    // once /status is answered, its own reply is a second one waiting.
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["outbox"]["depth"]
            == 1)
        .await,
        "{}",
        rig.gateway.status_json()
    );
    let (code, text) = rig.gateway.status_command(&[]).await;
    assert_eq!(code, 0, "degraded only once a reply waits a minute: {text}");
    assert!(text.contains("outbox: 1 waiting, oldest"), "{text}");
    rig.telegram.send_text(USER, USER, "/status");
    tokio::time::sleep_until((outage + OUTAGE).into()).await;
    assert!(
        rig.telegram.failed_sends().len() >= 2,
        "the answer was tried again during the outage"
    );
    rig.telegram.fail_every_send(None);
    let replies = rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    let texts = texts(&replies);
    assert_eq!(texts[..2], ["echo: warm up", "echo: during the outage"]);
    assert!(
        texts[2].contains("Replies waiting to be sent: 1, the oldest for"),
        "{texts:?}"
    );
    assert!(eventually(PATIENCE, || inbox_done(&db, "during the outage")).await);
    assert_eq!(rig.ask("after").await.text, "echo: after");
    assert_eq!(
        texts_of(&rig.telegram, USER),
        [
            "echo: warm up",
            "echo: during the outage",
            texts[2].as_str(),
            "echo: after"
        ],
        "exactly once, checked after the fact"
    );
    assert_eq!(rig.provider.request_count(), 3);
    assert!(rig.ask("/status").await.text.contains("No replies waiting"));
    rig.gateway.assert_running(rig.pid);
}

async fn an_answer_due_in_a_telegram_outage_arrives_once_across_a_gateway_restart(
    mode: WorkerMode,
) {
    let rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("warm up").await.text, "echo: warm up");
    rig.telegram
        .fail_every_send(Some(SendFault::server_error()));
    let outage = Instant::now();
    rig.telegram.send_text(USER, USER, "during the outage");
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    assert!(rig.telegram.wait_for_failed_sends(1, PATIENCE).await);
    let mut rig = restart(rig, mode, Stop::Term, |_| {}).await;
    let failed = rig.telegram.failed_sends().len();
    assert!(
        rig.telegram
            .wait_for_failed_sends(failed + 1, PATIENCE)
            .await,
        "the next run sends the answer the previous one left"
    );
    tokio::time::sleep_until((outage + OUTAGE).into()).await;
    rig.telegram.fail_every_send(None);
    let replies = rig.telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(
        texts(&replies),
        ["echo: warm up", "echo: during the outage"]
    );
    assert!(
        rig.gateway
            .log()
            .contains("left undelivered by the previous run"),
        "{}",
        rig.gateway.log()
    );
    assert_eq!(rig.ask("after").await.text, "echo: after");
    assert_eq!(
        texts_of(&rig.telegram, USER),
        ["echo: warm up", "echo: during the outage", "echo: after"]
    );
    assert_eq!(
        rig.provider.request_count(),
        3,
        "the answer was not asked for again"
    );
    rig.gateway.assert_running(rig.pid);
}

async fn a_blocked_chats_reply_is_refused_for_good_and_its_message_done(mode: WorkerMode) {
    let other = 2002;
    let rig = Rig::start(mode, |o| o.allowed_users.push(other)).await;
    rig.telegram.block_chat(USER);
    rig.telegram.send_text(USER, USER, "you will not see this");
    assert!(rig.telegram.wait_for_failed_sends(1, PATIENCE).await);
    let db = state_db(&rig.gateway);
    assert!(
        eventually(PATIENCE, || inbox_done(&db, "you will not see this")).await,
        "the refused reply's message is done\n{}",
        rig.gateway.log()
    );
    assert_eq!(outbox_len(&db), 0);
    assert!(rig.gateway.log().contains("the user blocked the bot"));
    assert_eq!(rig.ask_in(other, other, "me?").await.text, "echo: me?");
    assert_eq!(
        rig.telegram.failed_sends().len(),
        1,
        "a refusal is never retried"
    );
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["outbox"]["refused"]
            == 1)
        .await
    );
}

async fn a_migrated_group_gets_its_answer_at_the_new_id(mode: WorkerMode) {
    let group = -500;
    let supergroup = -1_000_000_000_500;
    let rig = Rig::start(mode, |_| {}).await;
    let mention = format!("@{BOT_USERNAME}");
    let first = rig.ask_in(group, USER, &format!("{mention} first")).await;
    assert_eq!(first.text, "echo: first");
    rig.telegram.migrate_chat(group, supergroup);
    rig.telegram
        .send_text(group, USER, &format!("{mention} second"));
    let moved = rig
        .telegram
        .wait_for_chat_messages(supergroup, 1, PATIENCE)
        .await;
    assert_eq!(texts(&moved), ["echo: second"], "{}", rig.gateway.log());
    assert_eq!(rig.telegram.sent_to(group).len(), 1);
    // The conversation moved with the group.
    let third = rig
        .ask_in(supergroup, USER, &format!("{mention} third"))
        .await;
    assert_eq!(third.text, "echo: third");
    let sent = user_and_assistant_texts(&rig.provider.requests()[2].body);
    assert_eq!(
        sent,
        ["first", "echo: first", "second", "echo: second", "third"]
    );
}

async fn a_reply_older_than_the_outbox_age_limit_is_dropped_and_counted(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("hi").await.text, "echo: hi");
    rig.gateway.signal(Signal::SIGTERM);
    assert_eq!(
        rig.gateway.wait_exit(PATIENCE).await.and_then(|s| s.code()),
        Some(0)
    );
    // A reply the previous run committed two days ago and never delivered.
    let conn = rusqlite::Connection::open(state_db(&rig.gateway)).expect("open state.db");
    let two_days_ago = unix_now() - 2 * 86_400;
    conn.execute(
        "INSERT INTO outbox (id, reply, chat_id, html, plain, created_at) VALUES (900, NULL, ?1, 'stale', 'stale', ?2)",
        rusqlite::params![USER, two_days_ago],
    )
    .expect("insert the stale piece");
    conn.execute(
        "INSERT INTO inbox (id, chat_id, user_id, text, received_at, answered_by, reply) VALUES (9000, ?1, ?1, 'old question', ?2, 900, 'stale')",
        rusqlite::params![USER, two_days_ago],
    )
    .expect("insert its message");
    drop(conn);
    let rig = start_again(rig, mode, |_| {});
    let db = state_db(&rig.gateway);
    assert!(
        eventually(PATIENCE, || inbox_done(&db, "old question")).await,
        "{}",
        rig.gateway.log()
    );
    assert_eq!(outbox_len(&db), 0);
    assert!(
        rig.gateway
            .log()
            .contains("dropped a reply that could not be delivered within 86400 s")
    );
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["outbox"]["expired"]
            == 1)
        .await
    );
    assert_eq!(rig.ask("now").await.text, "echo: now");
    assert!(
        !texts_of(&rig.telegram, USER).contains(&"stale".to_string()),
        "the stale reply was never sent"
    );
}

// ---- send failures (issue 16, point 10) ---------------------------------------------------

async fn send_message_reset_is_retried_and_answered_once(mode: WorkerMode) {
    one_send_fault(mode, SendFault::Reset).await;
}

/// teloxide waits 10 s after any 5xx answer before it reports it.
async fn send_message_json_5xx_is_retried_and_answered_once(mode: WorkerMode) {
    one_send_fault(mode, SendFault::server_error()).await;
}

/// The send is abandoned after its timeout (10 s), then made again.
async fn send_message_that_hangs_is_retried_and_answered_once(mode: WorkerMode) {
    one_send_fault(mode, SendFault::Hang).await;
}

async fn one_send_fault(mode: WorkerMode, fault: SendFault) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.telegram.fail_send(fault.clone());
    let reply = rig.ask("hi").await;
    assert_eq!(reply.text, "echo: hi");
    let failed = rig.telegram.failed_sends();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].fault, fault);
    assert_eq!(rig.ask("and again").await.text, "echo: and again");
    assert_eq!(
        texts_of(&rig.telegram, USER),
        ["echo: hi", "echo: and again"],
        "one delivered answer each"
    );
    rig.gateway.assert_running(rig.pid);
}

/// A streamed answer's preview cannot take the final text (the user deleted it): the
/// final text is sent anew, once.
async fn a_final_edit_that_fails_is_sent_anew_once(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| {
        o.telegram_toml = "streaming = true\nedit_interval_ms = 1000\n".into();
    })
    .await;
    let head = "A sentence long enough to be shown while the rest is written. ".repeat(4);
    let mut pieces = vec![head.clone()];
    pieces.extend((0..10).map(|i| format!("tail {i} ")));
    let full: String = pieces.concat();
    rig.provider.push(ProviderReply::Stream {
        pieces,
        every: Duration::from_millis(100),
    });
    rig.telegram.send_text(USER, USER, "stream it");
    let preview = rig
        .telegram
        .wait_for_sent(|m| m.chat_id == USER, PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no preview\n{}", rig.gateway.log()));
    assert_ne!(preview.text, full.trim(), "a preview, not the answer");
    rig.telegram.delete_message(USER, preview.message_id);
    let answer = rig
        .telegram
        .wait_for_sent(|m| m.text == full.trim(), PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no final answer\n{}", rig.gateway.log()));
    assert_eq!(answer.method, "sendMessage", "sent anew");
    assert_ne!(answer.message_id, preview.message_id);
    assert!(
        rig.telegram
            .failed_sends()
            .iter()
            .all(|f| f.method == "editMessageText"),
        "only edits of the deleted preview failed"
    );
    assert_eq!(rig.ask("next").await.text, "echo: next");
    let sent = rig.telegram.sent_to(USER);
    assert_eq!(
        sent.iter().filter(|m| m.text == full.trim()).count(),
        1,
        "{sent:#?}"
    );
    assert_eq!(
        sent.len(),
        3,
        "the preview, the answer sent anew, the next: {sent:#?}"
    );
}

// ---- turns --------------------------------------------------------------------------------

async fn a_burst_of_ten_is_one_or_two_turns_with_every_text_and_nothing_is_sent_after_a_restart(
    mode: WorkerMode,
) {
    let rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("warm up").await.text, "echo: warm up");
    let burst: Vec<String> = (1..=10).map(|i| format!("part {i}")).collect();
    for text in &burst {
        rig.telegram.send_text(USER, USER, text);
    }
    // Each turn asks its messages joined, in order; together they are the burst.
    let asked = |rig: &Rig| -> Vec<String> {
        rig.provider.requests()[1..]
            .iter()
            .filter_map(|r| r.last_user_text())
            .collect()
    };
    assert!(
        eventually(PATIENCE, || asked(&rig).join("\n") == burst.join("\n")).await,
        "{:?}\n{}",
        asked(&rig),
        rig.gateway.log()
    );
    let turns = asked(&rig).len();
    assert!((1..=2).contains(&turns), "{turns} turns");
    let replies = rig
        .telegram
        .wait_for_chat_messages(USER, 1 + turns, PATIENCE)
        .await;
    let expected: Vec<String> = std::iter::once("echo: warm up".to_string())
        .chain(asked(&rig).iter().map(|t| format!("echo: {t}")))
        .collect();
    assert_eq!(texts(&replies), expected);
    // The conversation keeps each turn as one question.
    let rig = restart(rig, mode, Stop::Term, |_| {}).await;
    assert_eq!(rig.ask("after").await.text, "echo: after");
    let history = user_and_assistant_texts(&rig.provider.requests().last().unwrap().body);
    assert_eq!(history.len(), 2 * (1 + turns) + 1, "{history:?}");
    assert_eq!(
        texts_of(&rig.telegram, USER).len(),
        1 + turns + 1,
        "nothing was sent again after the restart"
    );
}

/// A delivered piece leaves the store with its next write, and an idle gateway writes
/// nothing else: it is recorded on its own within moments, so a SIGKILL after that sends
/// nothing twice.
async fn a_reply_delivered_to_an_idle_gateway_is_recorded_and_a_kill_sends_nothing_again(
    mode: WorkerMode,
) {
    // The next long poll's (empty) commit comes only after 30 s.
    let rig = Rig::start(mode, |o| o.poll_timeout_secs = 30).await;
    rig.telegram.send_text(USER, USER, "hello");
    let replies = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(texts(&replies), ["echo: hello"]);
    let db = state_db(&rig.gateway);
    assert!(
        eventually(Duration::from_secs(5), || outbox_len(&db) == 0
            && inbox_done(&db, "hello"))
        .await,
        "the delivered reply is still in the outbox: {}",
        outbox_len(&db)
    );
    let rig = restart(rig, mode, Stop::Kill, |_| {}).await;
    assert_eq!(rig.ask("after").await.text, "echo: after");
    assert_eq!(
        texts_of(&rig.telegram, USER),
        ["echo: hello", "echo: after"]
    );
}

// ---- the stop -----------------------------------------------------------------------------

async fn an_idle_gateway_exits_within_half_a_second_of_sigterm(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("warm up").await.text, "echo: warm up");
    // Idle: the answer is out and the chat's next long poll waits.
    let polls = rig.telegram.get_updates_log().len();
    assert!(rig.telegram.wait_for_polls(polls + 1, PATIENCE).await);
    let sent = Instant::now();
    rig.gateway.signal(Signal::SIGTERM);
    let status = rig.gateway.wait_exit(PATIENCE).await;
    let took = sent.elapsed();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        rig.gateway.log()
    );
    // The requirement itself (issue 12): an idle gateway stops at once.
    assert!(
        took < Duration::from_millis(500),
        "an idle gateway took {took:?} to exit after SIGTERM\n{}",
        rig.gateway.log()
    );
}

async fn a_job_that_finishes_inside_the_drain_is_answered_before_exit(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.provider
        .push_for("slow", ProviderReply::Delay(Duration::from_secs(1)));
    // Its first send fails: the retry too must happen before the exit.
    rig.telegram.fail_send(SendFault::Reset);
    rig.telegram.send_text(USER, USER, "slow");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    rig.gateway.signal(Signal::SIGTERM);
    assert_eq!(
        rig.gateway.wait_exit(PATIENCE).await.and_then(|s| s.code()),
        Some(0)
    );
    assert_eq!(
        texts_of(&rig.telegram, USER),
        ["echo: slow"],
        "answered before the exit\n{}",
        rig.gateway.log()
    );
    let rig = start_again(rig, mode, |_| {});
    assert_eq!(rig.ask("next").await.text, "echo: next");
    assert_eq!(texts_of(&rig.telegram, USER), ["echo: slow", "echo: next"]);
    assert_eq!(rig.provider.request_count(), 2);
}

async fn a_job_cut_short_by_sigterm_is_answered_once_by_the_next_run(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 60).await;
    rig.provider.push_for("long", ProviderReply::Hang);
    rig.telegram.send_text(USER, USER, "long");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    rig.gateway.signal(Signal::SIGTERM);
    assert_eq!(
        rig.gateway.wait_exit(PATIENCE).await.and_then(|s| s.code()),
        Some(0)
    );
    let notice = texts_of(&rig.telegram, USER);
    assert_eq!(notice.len(), 1, "{notice:?}");
    assert!(notice[0].contains("restarting"), "{notice:?}");
    let rig = start_again(rig, mode, |o| o.job_timeout_secs = 60);
    let replies = rig.telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(texts(&replies)[1], "echo: long", "{}", rig.gateway.log());
    assert_eq!(rig.ask("after").await.text, "echo: after");
    assert_eq!(texts_of(&rig.telegram, USER).len(), 3, "answered once");
    assert_eq!(rig.provider.request_count(), 3);
}

// ---- one instance, webhooks, private state ------------------------------------------------

async fn a_second_gateway_on_the_same_state_is_refused_and_the_first_is_untouched(
    mode: WorkerMode,
) {
    let rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("first").await.text, "echo: first");
    assert!(eventually(PATIENCE, || rig.gateway.status_json()["pid"] == rig.pid).await);
    let state = rig.gateway.dir.path().join("state");
    // The first gateway's workers each have a scratch directory (and its output directory)
    // while they live (in per-request mode, the one that answered may still be leaving,
    // and its spare starting).
    let scratch = state.join("run").join("scratch");
    let listing = |dir: &Path| -> Vec<(PathBuf, u32)> {
        listing(dir)
            .into_iter()
            .filter(|(p, _)| !p.starts_with(&scratch) || p == &scratch)
            .collect()
    };
    let before = listing(&state);
    let started = Instant::now();
    let second = tokio::process::Command::new(&binaries().gateway)
        .args(["run", "--config"])
        .arg(&rig.gateway.config_path)
        .env("HERMES_TEST_TELEGRAM_TOKEN", TOKEN)
        .env("HERMES_TEST_PROVIDER_KEY", API_KEY)
        .env_remove("NOTIFY_SOCKET")
        .output();
    let second = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the second gateway exits at once")
        .expect("run the second gateway");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", rig.pid)),
        "names the running instance: {stderr}"
    );
    assert!(started.elapsed() < PATIENCE);
    // It touched nothing: no new file, no socket of its own, the status the first's.
    assert_eq!(listing(&state), before);
    assert_eq!(rig.gateway.status_json()["pid"], rig.pid);
    assert_eq!(
        rig.telegram.calls("getMe"),
        1,
        "the second never reached Telegram"
    );
    assert_eq!(rig.ask("still first").await.text, "echo: still first");
    assert_eq!(rig.provider.request_count(), 2);
}

async fn a_webhook_left_set_is_deleted_and_polling_goes_on(mode: WorkerMode) {
    let rig = Rig::start_with(
        mode,
        |_| {},
        |telegram| {
            telegram.set_webhook("https://old-framework.example/hook");
            // Telegram keeps what arrives meanwhile; deleting the webhook must not drop it.
            telegram.send_text(USER, USER, "sent while the webhook was set");
        },
    )
    .await;
    let first = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        texts(&first),
        ["echo: sent while the webhook was set"],
        "{}",
        rig.gateway.log()
    );
    assert_eq!(rig.telegram.webhook(), None);
    // Found at start-up by the check sent beside the first poll, which may meet it
    // (then it is asked again, and the webhook is not deleted twice); no later poll does.
    rig.assert_logged("WEBHOOK SET on this bot's token (https://old-framework.example/hook)");
    assert!(
        rig.telegram
            .get_updates_log()
            .iter()
            .skip(1)
            .all(|p| p.outcome != PollOutcome::Webhook),
        "{:?}",
        rig.telegram.get_updates_log()
    );
    assert!(!rig.gateway.log().contains("set again since start-up"));
    let deletes: Vec<Value> = rig
        .telegram
        .api_calls()
        .into_iter()
        .filter(|c| c.method.eq_ignore_ascii_case("deleteWebhook"))
        .map(|c| c.params)
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_ne!(deletes[0]["drop_pending_updates"], json!(true));
    // Set again while polling: the next poll meets the 409, and the gateway deletes it again.
    rig.telegram
        .set_webhook("https://old-framework.example/again");
    assert!(
        eventually(PATIENCE, || rig.telegram.webhook().is_none()).await,
        "{}",
        rig.gateway.log()
    );
    assert_eq!(rig.ask("and now?").await.text, "echo: and now?");
    assert_eq!(rig.telegram.calls("deleteWebhook"), 2);
}

async fn state_files_are_private_under_umask_022(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    // A state directory an older version left readable to all, with a readable file.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(state.join("notes.txt"), "old").expect("write");
    std::fs::set_permissions(
        state.join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let wrapper = dir.path().join("gateway-umask-022.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\numask 022\nexec '{}' \"$@\"\n",
            binaries().gateway.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut rig = rig_in(dir, mode, |o| o.gateway_binary = Some(wrapper)).await;
    assert_eq!(rig.ask("hello").await.text, "echo: hello");
    assert!(eventually(PATIENCE, || state.join("status.json").exists()).await);
    assert_private(&state);
    rig.gateway.signal(Signal::SIGTERM);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    assert!(state.join("last-shutdown.json").exists());
    assert_private(&state);
}

// ---- the allowlist, updates that cannot be parsed -----------------------------------------

async fn a_strangers_group_message_never_reaches_the_provider(mode: WorkerMode) {
    let group = -4242;
    let stranger = 5555;
    let rig = Rig::start(mode, |_| {}).await;
    let bot = format!("@{BOT_USERNAME}");
    let told = rig
        .ask_in(group, stranger, &format!("{bot} SECRET-ONE"))
        .await;
    assert!(told.text.contains("5555"), "{}", told.text);
    // /retry right after: the stranger's message is no question to ask again.
    let retry = rig.ask_in(group, USER, "/retry").await;
    assert!(retry.text.contains("no earlier message"), "{}", retry.text);
    rig.provider
        .push_for("hello", ProviderReply::Delay(Duration::from_secs(1)));
    rig.telegram.send_text(group, USER, &format!("{bot} hello"));
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    // While that job runs, a stranger and an allowed user write: only the allowed
    // message becomes the next turn.
    rig.telegram
        .send_text(group, stranger, &format!("{bot} SECRET-TWO"));
    rig.telegram.send_text(group, USER, &format!("{bot} more"));
    assert!(
        rig.telegram
            .wait_for_sent(|m| m.text == "echo: more", PATIENCE)
            .await
            .is_some(),
        "{}",
        rig.gateway.log()
    );
    assert_eq!(rig.ask_in(group, USER, "/retry").await.text, "echo: more");
    assert_eq!(
        rig.ask_in(group, USER, &format!("{bot} last")).await.text,
        "echo: last"
    );
    let requests = rig.provider.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[1].last_user_text().as_deref(), Some("more"));
    for request in &requests {
        assert!(
            !request.body.to_string().contains("SECRET"),
            "a stranger's text reached the provider: {}",
            request.body
        );
    }
    let db = rusqlite::Connection::open(state_db(&rig.gateway)).expect("open state.db");
    for (table, column) in [
        ("inbox", "text"),
        ("turns", "content"),
        ("chats", "last_question"),
    ] {
        let found: i64 = db
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE {column} LIKE '%SECRET%'"),
                [],
                |r| r.get(0),
            )
            .expect("query");
        assert_eq!(found, 0, "a stranger's text is stored in {table}");
    }
}

/// The four updates wait at Telegram before the gateway starts, so its first poll takes
/// them together: pushed one by one after the start, the stranger's second could come a
/// poll later than the reply to their first, which the test waits for.
async fn an_update_the_client_cannot_parse_is_kept_and_its_text_answered(mode: WorkerMode) {
    let chat = json!({"id": USER, "type": "private", "first_name": "Test"});
    let from = json!({"id": USER, "is_bot": false, "first_name": "Test"});
    // A stranger's, with text and without: the store keeps that they came, never what
    // they said.
    let stranger = json!({"id": 666, "is_bot": false, "first_name": "Stranger"});
    let strangers_chat = json!({"id": 666, "type": "private", "first_name": "Stranger"});
    let rig = Rig::start_with(
        mode,
        |_| {},
        |telegram| {
            // A field of a type the client does not expect, as after a Bot API change.
            telegram.push_update(json!({"message": {"message_id": 50, "date": "tomorrow",
                "chat": chat, "from": from, "text": "parse me if you can"}}));
            telegram.push_update(json!({"message": {"message_id": 51, "date": "tomorrow",
                "chat": chat, "from": from, "sticker": "not text"}}));
            telegram.push_update(json!({"message": {"message_id": 52, "date": "tomorrow",
                "chat": strangers_chat, "from": stranger, "text": "my secret words"}}));
            telegram.push_update(json!({"message": {"message_id": 53, "date": "tomorrow",
                "chat": strangers_chat, "from": stranger, "caption": "my other secret"}}));
        },
    )
    .await;
    let replies = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        texts(&replies),
        ["echo: parse me if you can"],
        "{}",
        rig.gateway.log()
    );
    rig.assert_logged("cannot parse");
    assert!(
        rig.telegram
            .wait_for_chat_messages(666, 1, PATIENCE)
            .await
            .len()
            == 1
    );
    let db = rusqlite::Connection::open(state_db(&rig.gateway)).expect("open state.db");
    let kept: Vec<String> = db
        .prepare("SELECT raw FROM unparsed_updates ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("read unparsed_updates");
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert!(kept[..2].iter().all(|raw| raw.contains("tomorrow")));
    assert!(
        kept[2..].iter().all(|raw| !raw.contains("secret")),
        "{kept:?}"
    );
    assert_eq!(
        rig.ask("and a normal one").await.text,
        "echo: and a normal one"
    );
    assert_eq!(texts_of(&rig.telegram, USER).len(), 2);
}

// ---- bounds on one job, poison messages ---------------------------------------------------

async fn an_oversized_history_is_trimmed_and_the_job_answered(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("hi").await.text, "echo: hi");
    let mut rig = rig;
    rig.gateway.signal(Signal::SIGTERM);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    // Eight turns of 700 KiB answers: 5.6 MB of history, over the 4 MiB job frame.
    let conn = rusqlite::Connection::open(state_db(&rig.gateway)).expect("open state.db");
    for i in 0..8 {
        conn.execute(
            "INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (?1, 1, 'user', ?2, 0)",
            rusqlite::params![USER, format!("question {i}")],
        )
        .expect("insert");
        conn.execute(
            "INSERT INTO turns (chat_id, conversation, role, content, at) VALUES (?1, 1, 'assistant', ?2, 0)",
            rusqlite::params![USER, format!("answer {i} ") + &"x".repeat(700 * 1024)],
        )
        .expect("insert");
    }
    drop(conn);
    let mut rig = start_again(rig, mode, |_| {});
    assert_eq!(
        rig.ask("after a long talk").await.text,
        "echo: after a long talk"
    );
    let sent = user_and_assistant_texts(&rig.provider.requests()[1].body);
    assert_eq!(sent.last().map(String::as_str), Some("after a long talk"));
    assert!(
        sent.iter().any(|t| t.starts_with("answer 7 ")),
        "the newest turns are kept"
    );
    assert!(
        !sent.iter().any(|t| t == "question 0" || t == "hi"),
        "the oldest turns are left out"
    );
    assert!(
        sent[0].starts_with("question "),
        "history starts at a question"
    );
    rig.assert_logged("oldest turn(s) were left out");
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["workers"]["faults"]
            == 0)
        .await,
        "not blamed on the worker"
    );
    rig.assert_still_serving().await;
}

async fn a_message_whose_job_dies_with_the_gateway_three_times_gets_an_apology(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 60).await;
    for _ in 0..3 {
        rig.provider.push_for("poison", ProviderReply::Hang);
    }
    rig.telegram.send_text(USER, USER, "poison");
    for attempt in 1..=3 {
        assert!(
            rig.provider.wait_for_requests(attempt, PATIENCE).await,
            "attempt {attempt}\n{}",
            rig.gateway.log()
        );
        // The gateway dies mid-job, as a message that crashes it would make it.
        rig = restart(rig, mode, Stop::Kill, |o| o.job_timeout_secs = 60).await;
    }
    let reply = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(reply.len(), 1, "{}", rig.gateway.log());
    assert!(
        reply[0]
            .text
            .contains("tried to answer this message 3 times"),
        "{}",
        reply[0].text
    );
    assert_eq!(rig.provider.request_count(), 3, "no fourth attempt");
    assert_eq!(rig.ask("next").await.text, "echo: next");
}

async fn an_answer_past_the_bounds_is_ten_messages_ending_with_a_note_that_it_was_cut(
    mode: WorkerMode,
) {
    let rig = Rig::start(mode, |o| {
        o.telegram_toml = "streaming = true\nedit_interval_ms = 200\n".into();
    })
    .await;
    let paragraph = format!("{}\n\n", "word ".repeat(199));
    let long: String = paragraph.repeat(100); // 100 KB
    let pieces: Vec<String> = long
        .as_bytes()
        .chunks(10 * 1024)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    rig.provider.push(ProviderReply::Stream {
        pieces,
        every: Duration::from_millis(20),
    });
    rig.telegram.send_text(USER, USER, "say a lot");
    // 100 KB is past both bounds: 64 KiB kept, and at most 10 messages of it shown (the
    // 10th ends with the note), the whole answer following as a document.
    let note = "(Cut here: the whole answer follows as answer.md.)";
    assert!(
        rig.telegram
            .wait_for_sent(|m| m.text.contains(note), PATIENCE)
            .await
            .is_some(),
        "{}",
        rig.gateway.log()
    );
    // The final state of the chat: every message as last shown, in order.
    let mut shown: Vec<(i64, String)> = Vec::new();
    for m in rig.telegram.sent_to(USER) {
        match shown.iter_mut().find(|(id, _)| *id == m.message_id) {
            Some(entry) => entry.1 = m.text.clone(),
            None => shown.push((m.message_id, m.text.clone())),
        }
    }
    let all: String = shown.iter().map(|(_, t)| t.as_str()).collect();
    assert!(
        all.trim_end().ends_with(note),
        "{}",
        &all[all.len() - 200..]
    );
    let words = all.matches("word").count();
    assert!(
        words * 5 <= 10 * 4096 && words * 5 > 9 * 4096,
        "{words} words shown"
    );
    assert_eq!(shown.len(), 10, "{}", &all[all.len() - 200..]);
    let uploads = rig.telegram.wait_for_uploads(1, PATIENCE).await;
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].file_name, "answer.md");
    assert_eq!(
        uploads[0].bytes.len(),
        long.trim_end().len(),
        "the whole answer"
    );
}

/// The job frame is sent inside the deadline: a worker that never reads its socket (with
/// a job bigger than the socket's buffer) cannot hold the chat.
async fn a_worker_that_never_reads_its_job_is_timed_out_not_waited_on(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let deaf = bad_worker(dir.path(), "deaf");
    let prompt = "Be thorough. ".repeat(100_000); // 1.2 MB in every job
    let mut rig = Rig::start(mode, |o| {
        o.worker_command = Some(deaf);
        o.job_timeout_secs = 2;
        o.extra_toml = format!("\n[agent]\nsystem_prompt = \"{prompt}\"\n");
    })
    .await;
    let reply = rig.ask("hello?").await;
    assert!(reply.text.contains("took too long"), "{}", reply.text);
    rig.gateway.assert_running(rig.pid);
    assert_eq!(texts_of(&rig.telegram, USER).len(), 1);
}

// ---- helpers ------------------------------------------------------------------------------

/// How a gateway is stopped before the next run starts on its state.
enum Stop {
    Term,
    Kill,
}

fn options(
    mode: WorkerMode,
    provider: &FakeProvider,
    customize: impl FnOnce(&mut GatewayOptions),
) -> GatewayOptions {
    let mut options = GatewayOptions::new(mode);
    options.providers = vec![provider.base_url()];
    customize(&mut options);
    options
}

/// Stops the rig's gateway (`how`) and starts another on the same state and fakes.
async fn restart(
    mut rig: Rig,
    mode: WorkerMode,
    how: Stop,
    customize: impl FnOnce(&mut GatewayOptions),
) -> Rig {
    match how {
        Stop::Term => {
            rig.gateway.signal(Signal::SIGTERM);
            assert_eq!(
                rig.gateway.wait_exit(PATIENCE).await.and_then(|s| s.code()),
                Some(0),
                "{}",
                rig.gateway.log()
            );
        }
        Stop::Kill => {
            rig.gateway.signal(Signal::SIGKILL);
            assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
        }
    }
    start_again(rig, mode, customize)
}

/// A new gateway on the state of `rig`'s (stopped) one, with the same fakes.
fn start_again(rig: Rig, mode: WorkerMode, customize: impl FnOnce(&mut GatewayOptions)) -> Rig {
    let options = options(mode, &rig.provider, customize);
    rig.restart_with(|gateway, telegram, _| {
        Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url())
    })
}

/// A rig whose gateway runs in `dir` (prepared by the test).
async fn rig_in(
    dir: tempfile::TempDir,
    mode: WorkerMode,
    customize: impl FnOnce(&mut GatewayOptions),
) -> Rig {
    let telegram = FakeTelegram::start().await;
    telegram.fail_the_test_on_malformed_sends();
    let provider = FakeProvider::start().await;
    let options = options(mode, &provider, customize);
    let gateway = Gateway::start_in(dir, &options, &telegram.api_url());
    Rig::from_parts(telegram, provider, gateway)
}

fn texts(messages: &[SentMessage]) -> Vec<String> {
    messages.iter().map(|m| m.text.clone()).collect()
}

fn texts_of(telegram: &FakeTelegram, chat: i64) -> Vec<String> {
    texts(&telegram.sent_to(chat))
}

/// The user and assistant contents of a chat-completions request, in order.
fn user_and_assistant_texts(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user" || m["role"] == "assistant")
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect()
}

fn state_db(gateway: &Gateway) -> PathBuf {
    gateway.dir.path().join("state/state.db")
}

/// Done as the store defines it: marked done, or answered by a reply with no piece left to
/// send. The message is found by its text (the store keys rows by their own id).
fn inbox_done(db: &Path, text: &str) -> bool {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return false;
    };
    conn.query_row(
        "SELECT done_at IS NOT NULL OR (answered_by IS NOT NULL AND answered_by NOT IN
         (SELECT coalesce(reply, id) FROM outbox)) FROM inbox WHERE text = ?1",
        [text],
        |r| r.get(0),
    )
    .unwrap_or(false)
}

fn outbox_len(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)))
        .unwrap_or(-1)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Every entry below `dir`, with its mode.
fn listing(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            found.push((path, meta.permissions().mode() & 0o777));
        }
    }
    found.sort();
    // The WAL's shared memory and the status file come and go; what matters is the set
    // of names the second gateway could have added.
    found
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

/// The state directory 0700, its regular files 0600, nothing in it open to others.
fn assert_private(state: &Path) {
    let dir_mode = std::fs::metadata(state).expect("stat").permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "{}", state.display());
    for (path, mode) in listing(state) {
        // A worker's scratch (and output) directory goes with its worker, listed or not.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
        } else if meta.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", path.display());
        } else {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
    }
}

// Clean restarts are not failed attempts (issue 21.11).
hermes_tests::both_modes!(a_message_cut_short_by_sigterm_at_every_start_is_still_answered);

/// A stop by SIGTERM during a slow job, as many times as the bound on failed starts
/// (`MAX_ATTEMPTS`, 3): none of them is the message's fault, so the next run answers it
/// instead of giving up on it.
async fn a_message_cut_short_by_sigterm_at_every_start_is_still_answered(mode: WorkerMode) {
    const MAX_ATTEMPTS: usize = 3;
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 60).await;
    for _ in 0..MAX_ATTEMPTS {
        rig.provider.push_for("slow", ProviderReply::Hang);
    }
    rig.telegram.send_text(USER, USER, "slow");
    for start in 1..=MAX_ATTEMPTS {
        assert!(
            rig.provider.wait_for_requests(start, PATIENCE).await,
            "start {start}\n{}",
            rig.gateway.log()
        );
        rig = restart(rig, mode, Stop::Term, |o| o.job_timeout_secs = 60).await;
    }
    let answered = rig
        .telegram
        .wait_for_sent(|m| m.text == "echo: slow", PATIENCE)
        .await;
    let texts = texts_of(&rig.telegram, USER);
    assert!(answered.is_some(), "{texts:?}\n{}", rig.gateway.log());
    assert!(!texts.iter().any(|t| t.contains("given up")), "{texts:?}");
    assert_eq!(rig.provider.request_count(), MAX_ATTEMPTS + 1);
    assert_eq!(rig.ask("next").await.text, "echo: next");
}
