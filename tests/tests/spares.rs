//! `per-request` with warm spares (`workers.spares`): a job takes a worker that was
//! started and through its handshake before the message came, the next one starts beside
//! the job, a spare that dies is replaced, and a reload replaces the spare.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1.

use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::harness::{PATIENCE, Rig, USER, eventually};
use nix::sys::signal::Signal;

async fn rig() -> Rig {
    Rig::start(WorkerMode::PerRequest, |o| o.pool_size = 1).await
}

/// The one spare waiting, once there is exactly one worker.
async fn the_spare(rig: &Rig) -> i32 {
    assert!(
        eventually(PATIENCE, || rig.gateway.workers().len() == 1).await,
        "no spare waits: {:?}\n{}",
        rig.gateway.workers(),
        rig.gateway.log()
    );
    rig.gateway.workers()[0].pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_a_spare_started_before_it_and_the_next_starts_beside_it() {
    let rig = rig().await;
    let spare = the_spare(&rig).await;
    // Before any message: a scratch directory with its empty output directory is all it
    // has been given.
    rig.provider
        .push(ProviderReply::Delay(Duration::from_millis(1500)));
    rig.telegram.send_text(USER, USER, "slow one");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    // While the job runs on the spare, the next spare is already started.
    assert!(
        eventually(PATIENCE, || {
            let pids: Vec<i32> = rig.gateway.workers().iter().map(|w| w.pid).collect();
            pids.len() == 2 && pids.contains(&spare)
        })
        .await,
        "the job's worker {spare} and a new spare: {:?}\n{}",
        rig.gateway.workers(),
        rig.gateway.log()
    );
    let reply = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        reply.first().map(|m| m.text.as_str()),
        Some("echo: slow one")
    );
    // One job per worker: the spare that served it is gone, the next one waits.
    assert!(
        eventually(PATIENCE, || {
            let pids: Vec<i32> = rig.gateway.workers().iter().map(|w| w.pid).collect();
            pids.len() == 1 && !pids.contains(&spare)
        })
        .await,
        "{:?}",
        rig.gateway.workers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_that_dies_is_replaced_and_messages_are_still_answered() {
    let mut rig = rig().await;
    let spare = the_spare(&rig).await;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(spare), Signal::SIGKILL);
    assert!(
        eventually(PATIENCE, || {
            let w = rig.gateway.workers();
            w.len() == 1 && w[0].pid != spare
        })
        .await,
        "not replaced: {:?}\n{}",
        rig.gateway.workers(),
        rig.gateway.log()
    );
    // Killed while it waits, or (when the kill came first) while it starts: replaced
    // either way.
    let log = rig.gateway.log();
    assert!(
        log.contains("spare worker died") || log.contains("spare worker failed to start"),
        "{log}"
    );
    assert_eq!(rig.ask("still there?").await.text, "echo: still there?");
    rig.gateway.assert_running(rig.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_spare() {
    let rig = rig().await;
    let spare = the_spare(&rig).await;
    rig.gateway.signal(Signal::SIGHUP);
    assert!(
        eventually(PATIENCE, || {
            let w = rig.gateway.workers();
            w.len() == 1 && w[0].pid != spare
        })
        .await,
        "the spare was not replaced: {:?}\n{}",
        rig.gateway.workers(),
        rig.gateway.log()
    );
    assert_eq!(rig.ask("after reload").await.text, "echo: after reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spares_no_worker_waits_between_jobs() {
    let rig = Rig::start(WorkerMode::PerRequest, |o| {
        o.pool_size = 1;
        o.spares = Some(0);
    })
    .await;
    assert_eq!(rig.ask("one").await.text, "echo: one");
    assert!(
        eventually(PATIENCE, || rig.gateway.workers().is_empty()).await,
        "{:?}",
        rig.gateway.workers()
    );
}
