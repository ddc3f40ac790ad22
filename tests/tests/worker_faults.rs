//! When a worker fails: panics, aborts, signals, exits, hangs, garbage on the socket,
//! memory exhaustion, children left behind, a worker that never connects or is not ours.
//! Each is contained to its request: the chat gets one reply, the gateway carries on, and
//! no process of the worker's group is left.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::harness::{
    PATIENCE, Rig, USER, bad_worker, eventually, fault_in_bad_worker, fault_in_bad_worker_with,
};
use hermes_tests::procs;
use nix::sys::signal::Signal;

hermes_tests::both_modes!(
    worker_panic_leaves_gateway_running,
    worker_abort_leaves_gateway_running,
    worker_exit_1_leaves_gateway_running,
    worker_hang_is_killed_at_the_deadline,
    worker_segfault,
    worker_exit_0_before_answering,
    worker_hang_after_partial_events,
    worker_that_never_connects,
    worker_of_another_protocol_version,
    worker_sending_garbage_bytes,
    worker_sending_an_oversized_length_prefix,
    worker_answering_another_job,
    worker_allocating_without_bound,
    worker_grandchildren_die_with_it,
    worker_ignoring_sigterm_is_killed_after_the_grace_period,
    worker_child_ignoring_sigterm_dies_with_the_group,
    worker_flooding_stderr,
    workers_that_die_at_start_back_off_and_users_still_get_replies,
    worker_with_a_wrong_token_is_refused,
    worker_is_isolated_from_the_gateway,
    gateway_killed_with_sigkill_leaves_no_worker,
);

async fn worker_panic_leaves_gateway_running(mode: WorkerMode) {
    fault_in_bad_worker(mode, "panic", "crashed").await;
}

async fn worker_abort_leaves_gateway_running(mode: WorkerMode) {
    fault_in_bad_worker(mode, "abort", "crashed").await;
}

async fn worker_exit_1_leaves_gateway_running(mode: WorkerMode) {
    fault_in_bad_worker(mode, "exit 1", "crashed").await;
}

async fn worker_hang_is_killed_at_the_deadline(mode: WorkerMode) {
    fault_in_bad_worker(mode, "hang", "took too long").await;
}

async fn worker_segfault(mode: WorkerMode) {
    fault_in_bad_worker(mode, "segv", "crashed").await;
}

async fn worker_exit_0_before_answering(mode: WorkerMode) {
    fault_in_bad_worker(mode, "exit 0", "crashed").await;
}

async fn worker_hang_after_partial_events(mode: WorkerMode) {
    fault_in_bad_worker(mode, "partial then hang", "took too long").await;
}

async fn worker_that_never_connects(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = bad_worker(dir.path(), "never-connect");
    let mut rig = Rig::start(mode, |o| o.worker_command = Some(worker)).await;
    let reply = rig.ask("hello").await;
    assert!(
        reply.text.contains("could not be started"),
        "{}",
        reply.text
    );
    rig.assert_logged("did not connect");
    rig.assert_no_stray_processes().await;
    // No worker can answer; the gateway itself still does.
    rig.assert_follow_up("/help", "/new").await;
}

/// A worker of the version before this one (protocol 4, before usage events) is refused
/// at the handshake with a line that says which versions met and what to do; the chat
/// hears the agent could not be started, at once rather than after the connect timeout.
async fn worker_of_another_protocol_version(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = bad_worker(dir.path(), "old-protocol");
    let mut rig = Rig::start(mode, |o| o.worker_command = Some(worker)).await;
    let asked = std::time::Instant::now();
    let reply = rig.ask("hello").await;
    assert!(
        reply.text.contains("could not be started"),
        "{}",
        reply.text
    );
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "refused only after {:?}",
        asked.elapsed()
    );
    let old = hermes_protocol::PROTOCOL_VERSION - 1;
    rig.assert_logged(&format!(
        "protocol version mismatch: the worker speaks protocol {old}, this gateway {}; \
         install hermes-worker from the same build as hermes-gateway",
        hermes_protocol::PROTOCOL_VERSION
    ));
    rig.assert_no_stray_processes().await;
    rig.assert_follow_up("/help", "/new").await;
}

async fn worker_sending_garbage_bytes(mode: WorkerMode) {
    let rig = fault_in_bad_worker(mode, "garbage", "crashed").await;
    rig.assert_logged("protocol violation");
}

async fn worker_sending_an_oversized_length_prefix(mode: WorkerMode) {
    let rig = fault_in_bad_worker(mode, "oversized", "crashed").await;
    rig.assert_logged("over the");
}

/// A message for a job that is not in flight is dropped; the real job then overruns.
async fn worker_answering_another_job(mode: WorkerMode) {
    let rig = fault_in_bad_worker(mode, "wrong job", "took too long").await;
    rig.assert_logged("which is not the job in flight");
}

async fn worker_allocating_without_bound(mode: WorkerMode) {
    let rig = fault_in_bad_worker_with(mode, "alloc", "crashed", |o| {
        o.job_timeout_secs = 20;
        o.memory_limit_mb = Some(256);
    })
    .await;
    let rss = procs::rss_kib(rig.pid).unwrap_or(0);
    assert!(rss < 64 * 1024, "the gateway's RSS grew to {rss} KiB");
}

/// A worker that leaves a child and a grandchild (`sleep 1000`) in its group, then hangs:
/// at the deadline the whole group is gone, no orphan reparented anywhere.
async fn worker_grandchildren_die_with_it(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = bad_worker(dir.path(), "bad-worker");
    let mut rig = Rig::start(mode, |o| {
        o.worker_command = Some(worker);
        o.job_timeout_secs = 3;
    })
    .await;
    rig.telegram.send_text(USER, USER, "spawn and hang");
    let sleeping = || {
        rig.gateway
            .descendants()
            .into_iter()
            .filter(|p| p.cmdline.starts_with("sleep"))
            .count()
    };
    assert!(
        eventually(PATIENCE, || sleeping() >= 2).await,
        "the worker's children never appeared"
    );
    // The gateway puts every worker first in line for the OOM killer, even one (like this
    // one) that does not do it itself.
    for worker in rig.gateway.workers() {
        let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", worker.pid))
            .unwrap_or_default();
        assert_eq!(adj.trim(), "1000", "worker {} oom_score_adj", worker.pid);
    }
    let replies = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert!(
        replies[0].text.contains("took too long"),
        "{}",
        replies[0].text
    );
    rig.assert_replies(1);
    rig.assert_no_stray_processes().await;
    assert_eq!(sleeping(), 0);
    rig.assert_still_answering_as_bad_worker().await;
}

/// A worker that ignores SIGTERM is SIGKILLed `kill_grace_secs` later: the chat hears,
/// its slot (the only one) takes the next message, and the log shows the SIGKILL was
/// needed.
async fn worker_ignoring_sigterm_is_killed_after_the_grace_period(mode: WorkerMode) {
    let rig = fault_in_bad_worker_with(mode, "ignore sigterm and hang", "took too long", |o| {
        o.pool_size = 1
    })
    .await;
    rig.assert_logged("after SIGTERM; sending SIGKILL to its process group");
}

/// A worker dies on SIGTERM but leaves a child that ignores it: the group's SIGKILL after
/// the worker is reaped ends the child too.
async fn worker_child_ignoring_sigterm_dies_with_the_group(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = bad_worker(dir.path(), "bad-worker");
    let mut rig = Rig::start(mode, |o| {
        o.worker_command = Some(worker);
        o.job_timeout_secs = 2;
        o.pool_size = 1;
    })
    .await;
    rig.telegram
        .send_text(USER, USER, "spawn a child that ignores sigterm and hang");
    let stubborn = || {
        rig.gateway
            .descendants()
            .into_iter()
            .filter(|p| p.cmdline == "sleep 1000")
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(PATIENCE, || !stubborn().is_empty()).await,
        "the child never appeared"
    );
    for child in stubborn() {
        assert!(
            procs::ignores(child.pid, Signal::SIGTERM),
            "{child:?} does not ignore SIGTERM"
        );
    }
    let replies = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert!(
        replies
            .first()
            .is_some_and(|r| r.text.contains("took too long")),
        "{replies:?}\n{}",
        rig.gateway.log()
    );
    rig.assert_replies(1);
    rig.assert_no_stray_processes().await;
    assert!(stubborn().is_empty());
    // The worker itself died on SIGTERM: the grace period was not used up.
    let log = rig.gateway.log();
    assert!(!log.contains("after SIGTERM; sending SIGKILL"), "{log}");
    rig.assert_still_answering_as_bad_worker().await;
}

async fn worker_flooding_stderr(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = bad_worker(dir.path(), "bad-worker");
    let mut rig = Rig::start(mode, |o| o.worker_command = Some(worker)).await;
    // 800 lines of 10,000 bytes: 8 MB through the gateway's pipe.
    let reply = rig.ask("stderr flood").await;
    assert_eq!(reply.text, "ok: flooded");
    // The count of dropped lines is logged within a second of the drop, though the
    // worker (in a pool, idle after its answer) writes nothing more.
    assert!(
        eventually(PATIENCE, || rig.gateway.log().contains("suppressed")).await,
        "a flood must be rate limited, and the drop reported"
    );
    let log = rig.gateway.log();
    assert!(log.contains("bytes cut"), "long lines must be truncated");
    assert!(
        log.len() < 1_000_000,
        "the gateway logged {} bytes",
        log.len()
    );
    let rss = procs::rss_kib(rig.pid).unwrap_or(0);
    assert!(rss < 64 * 1024, "the gateway's RSS grew to {rss} KiB");
    rig.assert_still_answering_as_bad_worker().await;
}

/// A worker binary that exits at once (here `/bin/false`): every message still gets a
/// reply, and start attempts back off instead of spinning.
async fn workers_that_die_at_start_back_off_and_users_still_get_replies(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.worker_command = Some("/bin/false".into())).await;
    for text in ["one", "two", "three"] {
        let reply = rig.ask(text).await;
        assert!(
            reply.text.contains("could not be started"),
            "{}",
            reply.text
        );
    }
    let log = rig.gateway.log();
    assert!(
        log.contains("exited with code 1 before connecting"),
        "{log}"
    );
    assert!(log.contains("next attempt in"), "{log}");
    assert_eq!(rig.provider.request_count(), 0);
    rig.assert_follow_up("/help", "/new").await;
}

/// A process that connects to the worker socket with a token it was not given gets
/// nothing; its job is answered with an error instead of waiting for it.
async fn worker_with_a_wrong_token_is_refused(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = bad_worker(dir.path(), "wrong-token");
    let mut rig = Rig::start(mode, |o| o.worker_command = Some(worker)).await;
    let reply = rig.ask("hello").await;
    assert!(
        reply.text.contains("could not be started"),
        "{}",
        reply.text
    );
    let log = rig.gateway.log();
    assert!(log.contains("worker connection refused"), "{log}");
    assert_eq!(rig.provider.request_count(), 0);
    rig.assert_no_stray_processes().await;
    rig.assert_follow_up("/help", "/new").await;
}

/// The box a worker runs in: its own process group, an environment without the
/// gateway's secrets and service sockets, its resource limits (no core dumps, the
/// configured address space, 4096 open files), first in line for the OOM killer, and a
/// socket directory only the gateway's user can enter.
async fn worker_is_isolated_from_the_gateway(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| {
        o.job_timeout_secs = 60;
        o.memory_limit_mb = Some(1536);
        o.env = vec![
            ("NOTIFY_SOCKET".into(), "/run/systemd/notify".into()),
            (
                "DBUS_SESSION_BUS_ADDRESS".into(),
                "unix:path=/run/user/0/bus".into(),
            ),
            ("XDG_RUNTIME_DIR".into(), "/run/user/0".into()),
            ("WATCHDOG_USEC".into(), "1000000".into()),
            ("WATCHDOG_PID".into(), "1".into()),
        ];
    })
    .await;
    // Keep a job in flight so a worker exists in both modes.
    rig.provider
        .push(ProviderReply::Delay(Duration::from_secs(3)));
    rig.telegram.send_text(USER, USER, "hold on");
    assert!(
        rig.provider.wait_for_requests(1, PATIENCE).await,
        "{}",
        rig.gateway.log()
    );
    // Only `serve` processes: the sandbox probe, a short-lived child of the gateway too,
    // can be listed mid-exec and be gone when read.
    let workers: Vec<_> = rig
        .gateway
        .workers()
        .into_iter()
        .filter(|w| w.cmdline.contains("serve"))
        .collect();
    assert!(!workers.is_empty(), "no worker process");
    for worker in &workers {
        assert_eq!(
            worker.pgid, worker.pid,
            "a worker must lead its own process group"
        );
        let environ = std::fs::read(format!("/proc/{}/environ", worker.pid)).expect("environ");
        let environ = String::from_utf8_lossy(&environ);
        for secret in [
            "HERMES_TEST_TELEGRAM_TOKEN",
            "HERMES_TEST_PROVIDER_KEY",
            "NOTIFY_SOCKET",
            "DBUS_SESSION_BUS_ADDRESS",
            "XDG_RUNTIME_DIR",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            hermes_tests::fake_telegram::TOKEN,
        ] {
            assert!(!environ.contains(secret), "worker environment has {secret}");
        }
        // The limits as the kernel applies them, soft and hard: no core dumps, the
        // configured address space, and a bounded number of open files.
        let limit = |name: &str| {
            let limit = procs::limit(worker.pid, name)
                .unwrap_or_else(|| panic!("no {name:?} for worker {}", worker.pid));
            (limit.soft, limit.hard)
        };
        let both = |value: u64| (value.to_string(), value.to_string());
        assert_eq!(limit("Max core file size"), both(0));
        assert_eq!(limit("Max address space"), both(1536 * 1024 * 1024));
        let (_, hard_nofile) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .expect("getrlimit");
        assert_eq!(limit("Max open files"), both(hard_nofile.min(4096)));
        let oom =
            std::fs::read_to_string(format!("/proc/{}/oom_score_adj", worker.pid)).expect("oom");
        assert_eq!(oom.trim(), "1000");
    }
    let socket_dir = std::path::Path::new(&rig.gateway.socket_path())
        .parent()
        .expect("dir")
        .to_path_buf();
    let mode_bits = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket_dir)
            .expect("socket dir")
            .permissions(),
    );
    assert_eq!(mode_bits & 0o777, 0o700, "{}", socket_dir.display());
    let reply = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        reply.first().map(|m| m.text.as_str()),
        Some("echo: hold on")
    );
    rig.gateway.assert_running(rig.pid);
}

/// Even a gateway killed without warning leaves no worker behind, not even a worker that
/// cannot notice the socket close: the workers are stopped (SIGSTOP) first, so only the
/// parent-death signal each set on itself at start can end them.
async fn gateway_killed_with_sigkill_leaves_no_worker(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 120).await;
    rig.provider.push(ProviderReply::Hang);
    rig.telegram.send_text(USER, USER, "slow question");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    let workers = rig.gateway.workers();
    assert!(!workers.is_empty());
    for worker in &workers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker.pid), Signal::SIGSTOP)
            .expect("stop a worker");
    }
    rig.gateway.signal(Signal::SIGKILL);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    assert!(
        eventually(Duration::from_secs(10), || rig
            .gateway
            .descendants()
            .is_empty())
        .await,
        "workers outlived a SIGKILLed gateway: {:?}",
        rig.gateway.descendants()
    );
}
