//! Schedules: reminders and scheduled tasks the model creates with the worker's built-in
//! tools, kept and fired by the gateway as turns whose answers go through the outbox.
//!
//! Time is the gateway's wall clock, moved by the test with libfaketime
//! (`hermes_tests::fake_clock`): the timer reads the wall clock every second, so a jump
//! of the offset is a schedule's time coming, and no test waits real minutes. Without the
//! library the tests are skipped, and fail under CI (`tests/src/skip.rs`).
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! runs in both worker modes.

use hermes_config::WorkerMode;
use hermes_tests::fake_clock::{FakeClock, ShmLeftovers, unix_now};
use hermes_tests::fake_provider::{ProviderReply, Reported};
use hermes_tests::fake_telegram::SendFault;
use hermes_tests::harness::{
    Gateway, GatewayOptions, PATIENCE, Rig, USER, eventually, eventually_async,
};
use hermes_tests::skip::skip;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

hermes_tests::both_modes!(
    a_one_off_fires_once_at_its_time_through_a_telegram_outage_and_a_kill,
    a_recurring_schedule_fires_on_each_slot_and_once_after_a_downtime_spanning_several,
    a_schedule_cancelled_with_its_button_never_fires,
    a_schedule_of_a_user_no_longer_allowed_gets_no_runs,
    a_schedule_created_in_a_topic_answers_in_that_topic,
    a_scheduled_run_counts_against_its_chats_user,
);

const STRANGER: i64 = 4242;

/// The model creates a schedule with `arguments`, then says `done`; returns the tool's
/// result as the model read it.
async fn create(rig: &Rig, arguments: Value) -> String {
    let before = rig.provider.request_count();
    rig.provider.push(ProviderReply::tool_calls(&[(
        "call_1",
        "schedule_create",
        &arguments.to_string(),
    )]));
    rig.provider.push(ProviderReply::Text("done".into()));
    assert_eq!(rig.ask("set it up").await.text, "done");
    assert_eq!(rig.provider.request_count(), before + 2);
    let requests = rig.provider.requests();
    let last = requests.last().expect("the second request");
    last.body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "tool"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_else(|| panic!("no tool result in {}", last.body))
        .to_string()
}

/// The gateway has seen its clock at `at` or later for over a second: every timer tick
/// up to `at` has passed.
async fn seen(rig: &Rig, at: i64) {
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["written_at_unix"]
            .as_i64()
            .is_some_and(|w| w >= at + 2))
        .await,
        "the gateway never saw its clock reach {at}: {}\n--- gateway log ---\n{}",
        rig.gateway.status_json(),
        rig.gateway.log()
    );
}

/// Moves the gateway's clock so that it reads `at` (Unix seconds) now.
fn jump_to(clock: &FakeClock, at: i64) {
    clock.set_secs(at - unix_now());
}

/// The chat's messages that are a schedule's run.
fn runs(rig: &Rig) -> Vec<String> {
    rig.messages_in(USER)
        .into_iter()
        .map(|m| m.text)
        .filter(|t| t.starts_with("⏰ Scheduled task"))
        .collect()
}

fn provider_runs(rig: &Rig) -> usize {
    rig.provider
        .requests()
        .iter()
        .filter(|r| {
            r.last_user_text()
                .is_some_and(|t| t.starts_with("⏰ Scheduled task"))
        })
        .count()
}

fn options(mode: WorkerMode, clock: &FakeClock, provider: &str) -> GatewayOptions {
    let mut o = GatewayOptions::new(mode);
    o.providers = vec![provider.to_string()];
    o.env.extend(clock.env());
    o
}

async fn schedules_command(gateway: &Gateway) -> String {
    let out = tokio::process::Command::new(&hermes_tests::harness::binaries().gateway)
        .args(["schedules", "--config"])
        .arg(&gateway.config_path)
        .output()
        .await
        .expect("hermes-gateway schedules");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn a_one_off_fires_once_at_its_time_through_a_telegram_outage_and_a_kill(mode: WorkerMode) {
    let Some(clock) = FakeClock::new() else {
        skip("libfaketime.so.1 not found (Debian package `faketime`)");
        return;
    };
    let rig = Rig::start(mode, |o| o.env.extend(clock.env())).await;
    let mut leftovers = vec![ShmLeftovers(rig.pid)];
    let created = unix_now();
    let result = create(
        &rig,
        json!({"prompt": "Remind me to stretch", "in_seconds": 600}),
    )
    .await;
    assert!(result.starts_with("Schedule #1 created, once"), "{result}");
    let due = created + 600;

    // Five minutes on: not yet.
    jump_to(&clock, due - 300);
    seen(&rig, due - 300).await;
    assert_eq!(provider_runs(&rig), 0, "fired early");

    // Due while Telegram fails: the run is asked once and its answer waits in the outbox.
    rig.telegram.fail_every_send(Some(SendFault::Status {
        status: 500,
        description: "Internal Server Error".into(),
    }));
    jump_to(&clock, due + 5);
    assert!(
        eventually(PATIENCE, || provider_runs(&rig) == 1).await,
        "the schedule never fired\n{}",
        rig.gateway.log()
    );
    assert!(rig.telegram.wait_for_failed_sends(1, PATIENCE).await);
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["outbox"]["depth"]
            == 1)
        .await,
        "{}",
        rig.gateway.status_json()
    );

    // Killed between firing and sending: the answer is the next run's to send.
    let rig = {
        let mut rig = rig;
        rig.gateway.signal(Signal::SIGKILL);
        assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
        let options = options(mode, &clock, &rig.provider.base_url());
        rig.restart_with(|gateway, telegram, _| {
            Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url())
        })
    };
    leftovers.push(ShmLeftovers(rig.pid));
    rig.telegram.fail_every_send(None);
    assert!(
        eventually(PATIENCE, || runs(&rig).len() == 1).await,
        "the run's answer never arrived\n{}",
        rig.gateway.log()
    );
    let run = &runs(&rig)[0];
    assert!(run.contains("echo: ⏰ Scheduled task #1"), "{run}");
    assert!(run.contains("Remind me to stretch"), "{run}");
    assert!(!run.contains("late"), "fired on time: {run}");
    // Delivered, once; counted so in the status; never asked again, never fired again.
    assert!(
        eventually(PATIENCE, || {
            let s = &rig.gateway.status_json()["schedules"];
            s["runs_delivered"] == 1 && s["active"] == 0
        })
        .await,
        "{}",
        rig.gateway.status_json()
    );
    jump_to(&clock, due + 3600);
    seen(&rig, due + 3600).await;
    assert_eq!(runs(&rig).len(), 1);
    assert_eq!(provider_runs(&rig), 1, "the run was asked again");
    assert!(
        schedules_command(&rig.gateway)
            .await
            .starts_with("No schedules")
    );
    assert_eq!(rig.ask("after").await.text, "echo: after");
}

async fn a_recurring_schedule_fires_on_each_slot_and_once_after_a_downtime_spanning_several(
    mode: WorkerMode,
) {
    let Some(clock) = FakeClock::new() else {
        skip("libfaketime.so.1 not found (Debian package `faketime`)");
        return;
    };
    let rig = Rig::start(mode, |o| o.env.extend(clock.env())).await;
    let mut leftovers = vec![ShmLeftovers(rig.pid)];
    let result = create(
        &rig,
        json!({"prompt": "Water the plants", "cron": "*/10 * * * *"}),
    )
    .await;
    assert!(
        result.starts_with("Schedule #1 created, repeating"),
        "{result}"
    );
    let first = (unix_now() / 600 + 1) * 600;

    for (slot, at) in [first, first + 600].into_iter().enumerate() {
        jump_to(&clock, at + 5);
        assert!(
            eventually(PATIENCE, || runs(&rig).len() == slot + 1).await,
            "slot {slot} did not fire\n{}",
            rig.gateway.log()
        );
        seen(&rig, at + 5).await;
        assert_eq!(provider_runs(&rig), slot + 1, "one run per slot");
    }
    assert!(
        runs(&rig).iter().all(|r| !r.contains("late")),
        "{:?}",
        runs(&rig)
    );

    // Down across three slots: fired once at start, marked late, with the first missed.
    let rig = {
        let mut rig = rig;
        rig.gateway.signal(Signal::SIGTERM);
        assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
        jump_to(&clock, first + 4 * 600 + 5);
        let options = options(mode, &clock, &rig.provider.base_url());
        rig.restart_with(|gateway, telegram, _| {
            Gateway::start_in(gateway.into_dir(), &options, &telegram.api_url())
        })
    };
    leftovers.push(ShmLeftovers(rig.pid));
    assert!(
        eventually(PATIENCE, || runs(&rig).len() == 3).await,
        "no run after the downtime\n{}",
        rig.gateway.log()
    );
    seen(&rig, first + 4 * 600 + 5).await;
    let late = &runs(&rig)[2];
    assert!(late.contains("(late: was due at"), "{late}");
    assert_eq!(provider_runs(&rig), 3, "once, not once per missed slot");
    let listed = schedules_command(&rig.gateway).await;
    assert!(listed.contains("repeats (*/10 * * * *)"), "{listed}");
    assert!(listed.contains("runs 3, failed 0"), "{listed}");
}

async fn a_schedule_cancelled_with_its_button_never_fires(mode: WorkerMode) {
    let Some(clock) = FakeClock::new() else {
        skip("libfaketime.so.1 not found (Debian package `faketime`)");
        return;
    };
    let rig = Rig::start(mode, |o| o.env.extend(clock.env())).await;
    let _leftovers = ShmLeftovers(rig.pid);
    assert!(
        rig.ask("/timezone Europe/Berlin")
            .await
            .text
            .contains("now Europe/Berlin")
    );
    let created = unix_now();
    let result = create(&rig, json!({"prompt": "Call Ann", "in_seconds": 600})).await;
    assert!(result.contains("(Europe/Berlin)"), "{result}");

    rig.telegram.send_text(USER, USER, "/schedules");
    let list = rig
        .telegram
        .wait_for_sent(|m| m.chat_id == USER && m.keyboard.is_some(), PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no list with buttons\n{}", rig.gateway.log()));
    assert!(list.text.contains("#1 · once"), "{}", list.text);
    assert!(list.text.contains("Call Ann"), "{}", list.text);

    // Someone not allowed cannot cancel it.
    let press = |user: i64| {
        rig.telegram
            .press(USER, list.message_id, user, "Cancel #1")
            .unwrap_or_else(|| panic!("no cancel button: {list:#?}"))
    };
    let refused = press(STRANGER);
    let answer = rig
        .telegram
        .wait_for_callback_answer(&refused, PATIENCE)
        .await;
    assert_eq!(
        answer.and_then(|a| a.text).as_deref(),
        Some("Only the bot's users can cancel schedules.")
    );
    let cancelled = press(USER);
    let answer = rig
        .telegram
        .wait_for_callback_answer(&cancelled, PATIENCE)
        .await;
    assert_eq!(
        answer.and_then(|a| a.text).as_deref(),
        Some("Schedule #1 cancelled.")
    );
    assert!(
        eventually(PATIENCE, || rig.telegram.sent_to(USER).iter().any(|m| m
            .message_id
            == list.message_id
            && m.method == "editMessageText"
            && m.text.starts_with("This chat has no schedules")))
        .await,
        "the list was not updated\n{}",
        rig.gateway.log()
    );
    assert!(rig.telegram.keyboard(USER, list.message_id).is_none());

    jump_to(&clock, created + 3600);
    seen(&rig, created + 3600).await;
    assert_eq!(provider_runs(&rig), 0, "a cancelled schedule fired");
    assert!(runs(&rig).is_empty());
    assert!(
        schedules_command(&rig.gateway)
            .await
            .starts_with("No schedules")
    );
}

async fn a_schedule_of_a_user_no_longer_allowed_gets_no_runs(mode: WorkerMode) {
    let Some(clock) = FakeClock::new() else {
        skip("libfaketime.so.1 not found (Debian package `faketime`)");
        return;
    };
    let rig = Rig::start(mode, |o| o.env.extend(clock.env())).await;
    let _leftovers = ShmLeftovers(rig.pid);
    let created = unix_now();
    let result = create(&rig, json!({"prompt": "Call Ann", "in_seconds": 600})).await;
    assert!(result.starts_with("Schedule #1 created"), "{result}");
    let config = std::fs::read_to_string(&rig.gateway.config_path).expect("read config");
    let narrowed = config.replace(
        &format!("allowed_users = [{USER}]"),
        &format!("allowed_users = [{STRANGER}]"),
    );
    assert_ne!(config, narrowed);
    std::fs::write(&rig.gateway.config_path, &narrowed).expect("write config");
    rig.gateway.signal(Signal::SIGHUP);
    assert!(
        eventually(PATIENCE, || rig
            .gateway
            .log()
            .contains("configuration reloaded"))
        .await,
        "{}",
        rig.gateway.log()
    );
    jump_to(&clock, created + 3600);
    seen(&rig, created + 3600).await;
    assert_eq!(provider_runs(&rig), 0, "a run for a user no longer allowed");
    assert!(runs(&rig).is_empty());
    rig.assert_logged("its user is no longer in telegram.allowed_users");
}

/// A forum (all its messages for the bot) whose topic 22 asks for a schedule: the run is
/// asked and answered in topic 22, not in General.
async fn a_schedule_created_in_a_topic_answers_in_that_topic(mode: WorkerMode) {
    const FORUM: i64 = -100_200_300;
    const TOPIC: i64 = 22;
    let Some(clock) = FakeClock::new() else {
        skip("libfaketime.so.1 not found (Debian package `faketime`)");
        return;
    };
    let mut rig = Rig::start(mode, |o| {
        o.env.extend(clock.env());
        o.telegram_toml = "streaming = false\ngroup_mode = \"all\"\n".into();
    })
    .await;
    let _leftovers = ShmLeftovers(rig.pid);
    rig.telegram.make_forum(FORUM, &[11, TOPIC]);
    rig.provider.push(ProviderReply::tool_calls(&[(
        "call_1",
        "schedule_create",
        &json!({"prompt": "Stand-up notes", "in_seconds": 600}).to_string(),
    )]));
    rig.provider.push(ProviderReply::Text("done".into()));
    let created = unix_now();
    let reply = rig
        .reply_to(FORUM, "set it up", |telegram| {
            telegram.send_text_in_topic(FORUM, Some(TOPIC), USER, "set it up");
        })
        .await;
    assert_eq!((reply.text.as_str(), reply.thread), ("done", Some(TOPIC)));

    jump_to(&clock, created + 605);
    assert!(
        eventually(PATIENCE, || rig
            .messages_in(FORUM)
            .iter()
            .any(|m| m.text.starts_with("⏰ Scheduled task")))
        .await,
        "the schedule never fired\n{}",
        rig.gateway.log()
    );
    let run = rig
        .messages_in(FORUM)
        .into_iter()
        .find(|m| m.text.starts_with("⏰ Scheduled task"))
        .unwrap_or_else(|| panic!("no run"));
    assert!(run.text.contains("Stand-up notes"), "{run:#?}");
    assert_eq!(
        run.thread,
        Some(TOPIC),
        "the run landed outside its topic: {run:#?}"
    );
    rig.gateway.assert_running(rig.pid);
}

/// The run's provider call is the schedule's user's usage, shown by the operator's
/// `hermes-gateway usage` like any turn of theirs.
async fn a_scheduled_run_counts_against_its_chats_user(mode: WorkerMode) {
    let Some(clock) = FakeClock::new() else {
        skip("libfaketime.so.1 not found (Debian package `faketime`)");
        return;
    };
    let rig = Rig::start(mode, |o| o.env.extend(clock.env())).await;
    let _leftovers = ShmLeftovers(rig.pid);
    rig.provider.report_usage(Reported::tokens(100, 20, 0));
    let created = unix_now();
    create(&rig, json!({"prompt": "Count me", "in_seconds": 600})).await;
    let calls = |report: &Value| report["users"][0]["total"]["calls"].as_i64();
    let before = usage_json(&rig).await;
    assert_eq!(before["users"][0]["user_id"], USER, "{before:#}");
    assert_eq!(
        calls(&before),
        Some(2),
        "the tool call and the answer: {before:#}"
    );

    jump_to(&clock, created + 605);
    assert!(
        eventually(PATIENCE, || runs(&rig).len() == 1).await,
        "the schedule never fired\n{}",
        rig.gateway.log()
    );
    // The usage is stored as the job ends, a moment after its answer was sent.
    let after = eventually_async(PATIENCE, || async {
        let report = usage_json(&rig).await;
        (calls(&report) == Some(3)).then_some(report)
    })
    .await
    .unwrap_or_else(|| panic!("the run's usage never counted\n{}", rig.gateway.log()));
    assert_eq!(
        after["users"].as_array().map(Vec::len),
        Some(1),
        "{after:#}"
    );
    assert_eq!(
        after["users"][0]["total"]["prompt_tokens"], 300,
        "{after:#}"
    );
}

async fn usage_json(rig: &Rig) -> Value {
    let out = tokio::process::Command::new(&hermes_tests::harness::binaries().gateway)
        .args(["usage", "--json", "--config"])
        .arg(&rig.gateway.config_path)
        .output()
        .await
        .expect("hermes-gateway usage");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}
