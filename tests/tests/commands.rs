//! The bot's commands: `/help`, `/status`, `/new`, `/retry`, `/stop` (of a running job, of
//! a job still waiting for a worker, with nothing running) and `/model`.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{FakeProvider, ProviderReply, SEED_402_BODY};
use hermes_tests::harness::{PATIENCE, Rig, USER, eventually};

hermes_tests::both_modes!(
    help_and_status_answer_without_a_job,
    new_starts_a_fresh_conversation,
    retry_asks_the_last_message_again,
    stop_kills_the_job_in_flight_and_answers_once,
    stop_ends_the_messages_waiting_behind_the_job_too,
    stop_with_nothing_running_says_so,
    stop_for_a_job_still_waiting_for_a_worker_answers_at_once,
    model_shows_the_chat_s_provider_and_admins_switch_it,
);

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
    // The store is told once the reply is sent, so it may lag the chat a moment.
    let both_stopped = |answered: &[(i64, Option<String>)]| {
        answered.len() == 2
            && answered
                .iter()
                .all(|(_, r)| r.as_deref().is_some_and(|r| r.contains("Stopped")))
    };
    assert!(
        eventually(PATIENCE, || both_stopped(&stored_replies(&rig))).await,
        "{:?}",
        stored_replies(&rig)
    );
    assert!(rig.gateway.log().contains("stopped by /stop"));
    rig.assert_still_serving().await;
}

/// `/stop` ends the job in flight and the messages that waited behind it: one reply for
/// all of them, none of them asked later.
async fn stop_ends_the_messages_waiting_behind_the_job_too(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| o.job_timeout_secs = 60).await;
    rig.provider.push(ProviderReply::Hang);
    rig.telegram.send_text(USER, USER, "a long one");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    rig.telegram.send_text(USER, USER, "and another");
    rig.telegram.send_text(USER, USER, "and a third");
    // Both stored before the /stop.
    assert!(
        eventually(PATIENCE, || stored_replies(&rig).len() == 3).await,
        "{:?}",
        stored_replies(&rig)
    );
    let reply = rig.ask("/stop").await;
    assert!(reply.text.contains("Stopped"), "{}", reply.text);
    let answered = stored_replies(&rig);
    assert_eq!(answered.len(), 4, "{answered:?}");
    assert!(
        answered
            .iter()
            .all(|(_, r)| r.as_deref().is_some_and(|r| r.contains("Stopped"))),
        "{answered:?}"
    );
    assert_eq!(rig.ask("fresh").await.text, "echo: fresh");
    assert_eq!(
        rig.provider.request_count(),
        2,
        "the waiting ones were never asked"
    );
    assert_eq!(rig.telegram.sent_to(USER).len(), 2);
}

async fn stop_with_nothing_running_says_so(mode: WorkerMode) {
    let rig = Rig::start(mode, |_| {}).await;
    assert!(rig.ask("/stop").await.text.contains("nothing to stop"));
    assert_eq!(rig.ask("hello").await.text, "echo: hello");
    assert_eq!(rig.provider.request_count(), 1);
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
    rig.assert_one_reply_each();
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

/// What the store says was answered for each message, in arrival order.
fn stored_replies(rig: &Rig) -> Vec<(i64, Option<String>)> {
    let db = rig.gateway.dir.path().join("state/state.db");
    let conn = rusqlite::Connection::open(db).expect("open state.db");
    conn.prepare("SELECT id, reply FROM inbox ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("read inbox")
}

fn hermes_tests_stop_text() -> &'static str {
    "⏹ Stopped. Send a new message whenever you like."
}
