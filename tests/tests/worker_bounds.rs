//! A worker cannot grow the gateway (issue 21.8): what the gateway keeps for a job from
//! its worker's messages (tools running, fallbacks, approvals) is bounded, and a worker
//! past a bound is a misbehaving worker like one sending garbage: its job fails with the
//! usual reply, its group goes, and the gateway (the same process) answers the next
//! message. The bad worker floods far past every bound before it would answer `ok`.

use hermes_config::WorkerMode;
use hermes_tests::harness::{PATIENCE, Rig, USER, bad_worker, fault_in_bad_worker};

hermes_tests::both_modes!(
    worker_flooding_tools_that_never_finish,
    worker_flooding_fallback_events,
    worker_flooding_approval_requests,
);

/// What the chat reads when its worker misbehaved.
const CRASHED: &str = "crashed";

async fn worker_flooding_tools_that_never_finish(mode: WorkerMode) {
    let rig = fault_in_bad_worker(mode, "flood tools", CRASHED).await;
    rig.assert_logged("protocol violation");
    rig.assert_logged("tools running at once");
}

async fn worker_flooding_fallback_events(mode: WorkerMode) {
    let rig = fault_in_bad_worker(mode, "flood fallbacks", CRASHED).await;
    rig.assert_logged("protocol violation");
    rig.assert_logged("fallback events for a job of 1 provider");
}

/// The first few requests become questions in the chat (at most three wait at once), the
/// rest are denied without asking, and past what any job's steps allow the worker is
/// failed: the questions end "not run", and the message gets the usual reply.
async fn worker_flooding_approval_requests(mode: WorkerMode) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let worker = bad_worker(dir.path(), "bad-worker");
    let mut rig = Rig::start(mode, |o| {
        o.worker_command = Some(worker);
        o.job_timeout_secs = 30;
    })
    .await;
    rig.telegram.send_text(USER, USER, "flood approvals");
    let reply = rig
        .telegram
        .wait_for_sent(|m| m.chat_id == USER && m.text.contains(CRASHED), PATIENCE)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no reply: {:#?}\n{}",
                rig.telegram.sent_to(USER),
                rig.gateway.log()
            )
        });
    assert!(!reply.text.contains("ok: flooded"), "{}", reply.text);
    rig.assert_logged("protocol violation");
    let questions = rig
        .messages_in(USER)
        .into_iter()
        .filter(|m| m.text.contains("wants to run"))
        .count();
    assert!(
        (1..=3).contains(&questions),
        "{questions} questions: {:#?}",
        rig.telegram.sent_to(USER)
    );
    // The questions and the reply, nothing else (no note per denied request).
    rig.assert_replies(questions + 1);
    rig.assert_still_answering_as_bad_worker().await;
}
