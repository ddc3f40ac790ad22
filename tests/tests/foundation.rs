//! The foundation's acceptance tests: the real `hermes-gateway` and `hermes-worker`
//! binaries against a fake Telegram Bot API server and a fake OpenAI-compatible provider on
//! 127.0.0.1, every scenario in both worker modes.
//!
//! Each test is an incident the gateway exists to survive; each asserts that the chat got
//! one reply of the right kind, that the gateway is still the same process, that the next
//! message is answered, and that no process of a failed worker is left anywhere.

use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{ProviderReply, SEED_402_BODY};
use hermes_tests::fake_telegram::PollFault;
use hermes_tests::harness::{
    PATIENCE, Rig, USER, bad_worker, binaries, eventually, fault_in_bad_worker,
};
use nix::sys::signal::Signal;

hermes_tests::both_modes!(
    text_from_allowed_user_is_answered,
    provider_402_leaves_gateway_running,
    provider_401_is_reported_as_a_key_problem,
    provider_429_is_retried_after_retry_after,
    provider_500_on_every_attempt_is_reported_unavailable,
    provider_that_never_answers_times_out,
    provider_body_that_is_not_json_is_reported,
    worker_panic_leaves_gateway_running,
    worker_abort_leaves_gateway_running,
    worker_exit_1_leaves_gateway_running,
    worker_hang_is_killed_at_the_deadline,
    telegram_outage_at_start_up_is_survived,
    telegram_outage_mid_run_is_survived,
    stranger_reaches_no_provider_and_learns_their_id,
    sigterm_exits_0_and_leaves_no_worker,
    sigterm_with_a_job_in_flight_tells_the_chat,
    check_config_names_every_problem,
    run_with_invalid_config_exits_78,
    workers_that_die_at_start_back_off_and_users_still_get_replies,
    worker_with_a_wrong_token_is_refused,
    worker_is_isolated_from_the_gateway,
    gateway_killed_with_sigkill_leaves_no_worker,
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

/// The seed incident: a provider's 402 must fail one request, not the service. (The quota
/// circuit, which would answer the next message from memory for a cool-down, is off here
/// so the next message reaches the healthy provider; containment.rs tests the circuit.)
async fn provider_402_leaves_gateway_running(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.quota_cooldown_secs = Some(0)).await;
    rig.provider.push(ProviderReply::status(402, SEED_402_BODY));
    let reply = rig.ask("what is the weather?").await;
    assert!(reply.text.contains("quota or balance"), "{}", reply.text);
    assert_eq!(rig.provider.request_count(), 1, "a 402 must not be retried");
    rig.assert_still_serving().await;
    rig.assert_no_stray_processes().await;
}

async fn provider_401_is_reported_as_a_key_problem(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.provider.push(ProviderReply::status(
        401,
        r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
    ));
    let reply = rig.ask("hi").await;
    assert!(reply.text.contains("API key"), "{}", reply.text);
    assert_eq!(rig.provider.request_count(), 1, "a 401 must not be retried");
    rig.assert_still_serving().await;
}

async fn provider_429_is_retried_after_retry_after(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.provider.push(ProviderReply::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "1".into())],
        body: r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
    });
    let reply = rig.ask("patience").await;
    assert_eq!(reply.text, "echo: patience");
    let requests = rig.provider.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before Retry-After"
    );
    rig.gateway.assert_running(rig.pid);
}

async fn provider_500_on_every_attempt_is_reported_unavailable(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.max_retries = 2).await;
    rig.provider.push_n(
        ProviderReply::status(500, r#"{"error":{"message":"internal"}}"#),
        3,
    );
    let reply = rig.ask("hi").await;
    assert!(reply.text.contains("unavailable"), "{}", reply.text);
    assert_eq!(rig.provider.request_count(), 3, "1 attempt + 2 retries");
    rig.assert_still_serving().await;
}

async fn provider_that_never_answers_times_out(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 2).await;
    rig.provider.push(ProviderReply::Hang);
    let reply = rig.ask("anyone?").await;
    assert!(reply.text.contains("took too long"), "{}", reply.text);
    rig.assert_still_serving().await;
    rig.assert_no_stray_processes().await;
}

async fn provider_body_that_is_not_json_is_reported(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    // Retried once as a protocol error, so both attempts get garbage.
    rig.provider
        .push_n(ProviderReply::RawBody("<<this is not json>>".into()), 2);
    let reply = rig.ask("hi").await;
    assert!(reply.text.contains("couldn't read"), "{}", reply.text);
    rig.assert_still_serving().await;
}

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

async fn telegram_outage_at_start_up_is_survived(mode: WorkerMode) {
    let mut rig = Rig::start_with(
        mode,
        |_| {},
        |telegram| {
            for _ in 0..3 {
                telegram.fail_get_updates(PollFault::bad_gateway_html());
            }
        },
    )
    .await;
    assert!(
        rig.telegram.wait_for_polls(3, PATIENCE).await,
        "no polls\n{}",
        rig.gateway.log()
    );
    refuse_polls_for_three_retries(&mut rig).await;
    rig.assert_still_serving().await;
}

async fn telegram_outage_mid_run_is_survived(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    assert_eq!(rig.ask("before").await.text, "echo: before");
    let polls = rig.telegram.get_updates_log().len();
    // teloxide itself waits 10 s after any 5xx before reporting it, so one 502 is "a
    // while" already.
    rig.telegram.fail_get_updates(PollFault::bad_gateway_html());
    // Ends the long poll in progress, so the next poll meets the fault.
    rig.telegram.send_text(USER, USER, "during");
    assert!(rig.telegram.wait_for_polls(polls + 2, PATIENCE).await);
    refuse_polls_for_three_retries(&mut rig).await;
    let replies = rig.telegram.wait_for_chat_messages(USER, 2, PATIENCE).await;
    assert_eq!(
        replies.get(1).map(|m| m.text.as_str()),
        Some("echo: during")
    );
    rig.assert_still_serving().await;
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

async fn sigterm_exits_0_and_leaves_no_worker(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.ask("warm up").await;
    let socket = rig.gateway.socket_path();
    rig.gateway.signal(Signal::SIGTERM);
    let status = rig.gateway.wait_exit(Duration::from_secs(10)).await;
    let status =
        status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM\n{}", rig.gateway.log()));
    assert_eq!(status.code(), Some(0), "{}", rig.gateway.log());
    assert!(
        eventually(Duration::from_secs(5), || hermes_tests::procs::with_env(
            "HERMES_WORKER_SOCKET",
            &socket
        )
        .is_empty())
        .await,
        "worker processes left after the gateway exited"
    );
}

async fn sigterm_with_a_job_in_flight_tells_the_chat(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 120).await;
    rig.provider.push(ProviderReply::Hang);
    rig.telegram.send_text(USER, USER, "slow question");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    let socket = rig.gateway.socket_path();
    rig.gateway.signal(Signal::SIGTERM);
    let status = rig.gateway.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        rig.gateway.log()
    );
    let sent = rig.telegram.sent_to(USER);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].text.contains("restarting"), "{}", sent[0].text);
    assert!(
        eventually(Duration::from_secs(5), || hermes_tests::procs::with_env(
            "HERMES_WORKER_SOCKET",
            &socket
        )
        .is_empty())
        .await,
        "worker processes left after the gateway exited"
    );
}

async fn check_config_names_every_problem(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[telegram]\ntoken_env = \"X\"\nallowed_userz = [1]\n\n[workers]\nmode = \"{}\"\npool_size = \"four\"\n",
            mode.as_str()
        ),
    )
    .expect("write");
    let output = std::process::Command::new(&binaries().gateway)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("line 3: telegram.allowed_userz: unknown key"),
        "{stderr}"
    );
    assert!(stderr.contains("line 7: workers.pool_size"), "{stderr}");
    assert!(stderr.contains("providers: missing"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[telegram]\ntoken_env = \"HERMES_TEST_TOKEN\"\nallowed_users = [1]\n\n[[providers]]\nname = \"main\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\n[workers]\nmode = \"{}\"\ncommand = \"{}\"\n",
            mode.as_str(),
            binaries().worker.display()
        ),
    )
    .expect("write");
    let output = std::process::Command::new(&binaries().gateway)
        .args(["check-config", "--config"])
        .arg(&good)
        .env("HERMES_TEST_TOKEN", "123:abc")
        .output()
        .expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains(mode.as_str()), "{stdout}");
}

async fn run_with_invalid_config_exits_78(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!("[workers]\nmode = \"{}\"\npool_size = -1\n", mode.as_str()),
    )
    .expect("write");
    let output = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(&binaries().gateway)
            .args(["run", "--config"])
            .arg(&path)
            .output(),
    )
    .await
    .expect("run with a bad config did not exit")
    .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("workers.pool_size"), "{stderr}");
    assert!(stderr.contains("providers: missing"), "{stderr}");
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
    rig.gateway.assert_running(rig.pid);
    assert_eq!(rig.provider.request_count(), 0);
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
    rig.gateway.assert_running(rig.pid);
}

/// The box a worker runs in: its own process group, an environment without the
/// gateway's secrets and service sockets, no core dumps, first in line for the OOM
/// killer, and a socket directory only the gateway's user can enter.
async fn worker_is_isolated_from_the_gateway(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| {
        o.job_timeout_secs = 60;
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
    let workers = rig.gateway.workers();
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
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", worker.pid)).expect("limits");
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .expect("core limit");
        assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
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

/// Even a gateway killed without warning leaves no worker behind: each notices the socket
/// close (and gets the parent-death signal) and exits.
async fn gateway_killed_with_sigkill_leaves_no_worker(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 120).await;
    rig.provider.push(ProviderReply::Hang);
    rig.telegram.send_text(USER, USER, "slow question");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    let socket = rig.gateway.socket_path();
    assert!(!hermes_tests::procs::with_env("HERMES_WORKER_SOCKET", &socket).is_empty());
    rig.gateway.signal(Signal::SIGKILL);
    assert!(rig.gateway.wait_exit(PATIENCE).await.is_some());
    assert!(
        eventually(Duration::from_secs(10), || hermes_tests::procs::with_env(
            "HERMES_WORKER_SOCKET",
            &socket
        )
        .is_empty())
        .await,
        "workers outlived a SIGKILLed gateway: {:?}",
        hermes_tests::procs::with_env("HERMES_WORKER_SOCKET", &socket)
    );
}

/// Telegram refuses connections until the gateway has retried three more times, then
/// comes back; the gateway must still be the same process.
async fn refuse_polls_for_three_retries(rig: &mut Rig) {
    rig.telegram.refuse_connections().await;
    let failures_before = count(&rig.gateway.log(), "getUpdates failed");
    assert!(
        eventually(PATIENCE, || count(&rig.gateway.log(), "getUpdates failed")
            >= failures_before + 3)
        .await,
        "the gateway stopped retrying\n{}",
        rig.gateway.log()
    );
    rig.gateway.assert_running(rig.pid);
    rig.telegram.accept_connections().await;
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// `hermes-worker ask`, the operator's debugging entry point: the same agent, no gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_prints_the_reply_or_the_typed_failure() {
    let provider = hermes_tests::fake_provider::FakeProvider::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("hermes.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"main\"\nbase_url = \"{}\"\nmodel = \"m\"\napi_key_env = \"HERMES_TEST_KEY\"\n",
            provider.base_url()
        ),
    )
    .expect("write");
    let ask = |question: &str| {
        tokio::process::Command::new(&binaries().worker)
            .args(["ask", "--config"])
            .arg(&config)
            .arg(question)
            .env("HERMES_TEST_KEY", "sk-ask")
            .output()
    };

    let output = ask("hello").await.expect("run ask");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "echo: hello"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("[main] attempt 1"));
    assert_eq!(
        provider.requests()[0].authorization.as_deref(),
        Some("Bearer sk-ask")
    );

    provider.push(ProviderReply::status(402, SEED_402_BODY));
    let output = ask("again").await.expect("run ask");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: quota_exhausted (provider main): HTTP 402: Insufficient available balance"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(output.stdout.is_empty());

    let output = tokio::process::Command::new(&binaries().worker)
        .args(["ask", "--config"])
        .arg(&config)
        .arg("no key")
        .env_remove("HERMES_TEST_KEY")
        .output()
        .await
        .expect("run ask");
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("HERMES_TEST_KEY is not set"));
}
