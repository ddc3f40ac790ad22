//! The wall clock jumping: NTP stepping the clock of a machine whose RTC died, a VM
//! resumed from a snapshot days old. A reply waiting out a Telegram outage must not be
//! dropped as "older than `telegram.outbox_max_age_secs`" because the wall clock moved:
//! its age counts on the monotonic clock once the gateway has taken it in.
//!
//! The jump is real to the gateway: it runs under libfaketime (Debian's `faketime`),
//! preloaded, reading its offset from a file the test rewrites, with the monotonic clock
//! left alone (`FAKETIME_DONT_FAKE_MONOTONIC`), so only `CLOCK_REALTIME` (what
//! `SystemTime::now()` reads) jumps. Without the library the test is skipped, and fails
//! under CI (`tests/src/skip.rs`), where `.ci/run` installs it.
//!
//! That a reply really older than the bound is still dropped is
//! `delivery.rs`'s `a_reply_older_than_the_outbox_age_limit_is_dropped_and_counted`.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use hermes_config::WorkerMode;
use hermes_tests::fake_clock::{FakeClock, ShmLeftovers, unix_now};
use hermes_tests::fake_telegram::{FakeTelegram, SendFault};
use hermes_tests::harness::{Gateway, PATIENCE, Rig, USER, eventually};
use hermes_tests::skip::skip;
use serde_json::Value;

hermes_tests::both_modes!(
    a_reply_waiting_out_an_outage_survives_a_two_day_jump_of_the_wall_clock_and_arrives_once,
);

/// Past the default `telegram.outbox_max_age_secs` (a day), and not a second less.
const JUMP_SECS: i64 = 2 * 86_400;

async fn a_reply_waiting_out_an_outage_survives_a_two_day_jump_of_the_wall_clock_and_arrives_once(
    mode: WorkerMode,
) {
    let Some(clock) = FakeClock::new() else {
        skip("libfaketime.so.1 not found (Debian package `faketime`)");
        return;
    };
    let mut rig = Rig::start(mode, |o| o.env.extend(clock.env())).await;
    let _leftovers = ShmLeftovers(rig.pid);
    assert_eq!(rig.ask("warm up").await.text, "echo: warm up");
    // Reset connections: each attempt fails at once, so the attempts after the jump come
    // within the backoff's cap (`telegram.retry_max_secs`, 1 s here).
    rig.telegram.fail_every_send(Some(SendFault::Reset));
    rig.telegram.send_text(USER, USER, "before the jump");
    assert!(rig.provider.wait_for_requests(2, PATIENCE).await);
    assert!(rig.telegram.wait_for_failed_sends(1, PATIENCE).await);
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["outbox"]["depth"]
            == 1)
        .await,
        "the answer waits in the outbox: {}",
        rig.gateway.status_json()
    );

    let before_the_jump = unix_now();
    clock.set_secs(JUMP_SECS);
    // The gateway's wall clock has jumped: the status it writes every second says so.
    assert!(
        eventually(PATIENCE, || {
            rig.gateway.status_json()["written_at_unix"]
                .as_i64()
                .is_some_and(|at| at >= before_the_jump + JUMP_SECS)
        })
        .await,
        "the gateway never saw the jump: {}\n--- gateway log ---\n{}",
        rig.gateway.status_json(),
        rig.gateway.log()
    );
    // Two more attempts: at least one began after the jump was seen, and there an age read
    // from the wall clock would drop the answer (as it did before issue 21.11).
    let failed = rig.telegram.failed_sends().len();
    eventually(PATIENCE, || {
        rig.telegram.failed_sends().len() >= failed + 2
            || rig.gateway.status_json()["outbox"]["expired"] != 0
    })
    .await;
    let status = rig.gateway.status_json();
    assert_eq!(
        status["outbox"]["expired"],
        0,
        "the answer was dropped as expired after the jump: {status}\n--- gateway log ---\n{}",
        rig.gateway.log()
    );
    assert!(
        rig.telegram.failed_sends().len() >= failed + 2,
        "the answer was not tried again: {status}"
    );
    assert_eq!(status["outbox"]["depth"], 1, "{status}");

    rig.telegram.fail_every_send(None);
    let replies = rig.telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(
        texts_of(&rig.telegram),
        ["echo: warm up", "echo: before the jump"],
        "{replies:?}"
    );
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["outbox"]["depth"]
            == 0)
        .await,
        "{}",
        rig.gateway.status_json()
    );
    let reported = status_command_json(&rig.gateway).await;
    assert_eq!(reported["outbox"]["expired"], 0, "{reported}");
    assert_eq!(reported["outbox"]["depth"], 0, "{reported}");
    assert!(
        !rig.gateway
            .log()
            .contains("dropped a reply that could not be delivered"),
        "{}",
        rig.gateway.log()
    );
    assert_eq!(rig.ask("after").await.text, "echo: after");
    assert_eq!(
        texts_of(&rig.telegram),
        ["echo: warm up", "echo: before the jump", "echo: after"],
        "exactly once, checked after the fact"
    );
    assert_eq!(
        rig.provider.request_count(),
        3,
        "the answer was not asked for again"
    );
    rig.gateway.assert_running(rig.pid);
}

fn texts_of(telegram: &FakeTelegram) -> Vec<String> {
    telegram.sent_to(USER).into_iter().map(|m| m.text).collect()
}

/// `hermes-gateway status --json` for this gateway, as an operator reads it.
async fn status_command_json(gateway: &Gateway) -> Value {
    let (_, out) = gateway.status_command(&["--json"]).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}
