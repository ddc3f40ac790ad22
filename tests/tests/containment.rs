//! The full fault matrix (issue "Containment, proven"): every way a worker, a provider or
//! Telegram can fail, each contained to its request. Real binaries, fakes on 127.0.0.1,
//! both worker modes. Every test asserts one reply of the right class in the right chat,
//! the gateway's PID unchanged, the next message answered, and (where a worker failed) no
//! process of the worker's group left behind.

use std::time::{Duration, SystemTime};

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{FakeProvider, ProviderReply, SEED_402_BODY};
use hermes_tests::fake_telegram::{PollFault, SendFault};
use hermes_tests::harness::{
    PATIENCE, Rig, USER, bad_worker, eventually, fault_in_bad_worker, fault_in_bad_worker_with,
};
use hermes_tests::procs;
use serde_json::json;

// ---------------------------------------------------------------- worker side

hermes_tests::both_modes!(
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
    worker_flooding_stderr,
);

async fn worker_segfault(mode: WorkerMode) {
    fault_in_bad_worker(mode, "segv", "crashed").await;
}

async fn worker_exit_0_before_answering(mode: WorkerMode) {
    fault_in_bad_worker(mode, "exit 0", "crashed").await;
}

async fn worker_hang_after_partial_events(mode: WorkerMode) {
    fault_in_bad_worker(mode, "partial then hang", "took too long").await;
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
    let socket = rig.gateway.socket_path();
    rig.telegram.send_text(USER, USER, "spawn and hang");
    let sleeping = || {
        procs::with_env("HERMES_WORKER_SOCKET", &socket)
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
    rig.assert_no_stray_processes().await;
    assert_eq!(sleeping(), 0);
    rig.gateway.assert_running(rig.pid);
    assert_eq!(rig.ask("next").await.text, "ok: next");
}

async fn worker_flooding_stderr(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = bad_worker(dir.path(), "bad-worker");
    let mut rig = Rig::start(mode, |o| o.worker_command = Some(worker)).await;
    // 800 lines of 10,000 bytes: 8 MB through the gateway's pipe.
    let reply = rig.ask("stderr flood").await;
    assert_eq!(reply.text, "ok: flooded");
    let log = rig.gateway.log();
    assert!(log.contains("bytes cut"), "long lines must be truncated");
    assert!(log.contains("suppressed"), "a flood must be rate limited");
    assert!(
        log.len() < 1_000_000,
        "the gateway logged {} bytes",
        log.len()
    );
    let rss = procs::rss_kib(rig.pid).unwrap_or(0);
    assert!(rss < 64 * 1024, "the gateway's RSS grew to {rss} KiB");
    rig.assert_still_answering_as_bad_worker().await;
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
    rig.gateway.assert_running(rig.pid);
}

async fn worker_of_another_protocol_version(mode: WorkerMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = bad_worker(dir.path(), "old-protocol");
    let mut rig = Rig::start(mode, |o| o.worker_command = Some(worker)).await;
    let reply = rig.ask("hello").await;
    assert!(
        reply.text.contains("could not be started"),
        "{}",
        reply.text
    );
    rig.assert_logged("protocol version mismatch");
    rig.assert_no_stray_processes().await;
    rig.gateway.assert_running(rig.pid);
}

// ---------------------------------------------------------------- provider side

hermes_tests::both_modes!(
    provider_429_insufficient_quota_is_quota,
    provider_402_daily_limit_busy_is_quota,
    provider_403_is_a_key_problem,
    provider_404_model_not_found_is_rejected,
    provider_400_context_too_long_is_retried_once,
    provider_408_is_retried_then_unavailable,
    provider_429_retry_after_http_date_is_honoured,
    provider_retry_after_past_the_deadline_gives_up_at_once,
    provider_502_html_is_retried_then_unavailable,
    provider_503_is_retried_then_unavailable,
    provider_529_is_retried_then_unavailable,
    provider_refusing_connections_is_unavailable,
    provider_resetting_mid_body_is_unavailable,
    provider_body_that_never_finishes_times_out,
    provider_json_without_choices_is_reported,
    provider_chain_falls_back_after_402,
    provider_chain_both_failing_names_the_first,
);

/// Sends one message with `replies` scripted and checks the reply and request count.
async fn provider_fault(
    mode: WorkerMode,
    replies: Vec<ProviderReply>,
    expected: &str,
    requests: usize,
) -> Rig {
    let mut rig = Rig::start(mode, |o| {
        o.max_retries = 2;
        // The circuit would answer the follow-up from memory; it has tests of its own.
        o.quota_cooldown_secs = Some(0);
    })
    .await;
    for reply in replies {
        rig.provider.push(reply);
    }
    let reply = rig.ask("question").await;
    assert!(
        reply.text.contains(expected),
        "{}\n{}",
        reply.text,
        rig.gateway.log()
    );
    assert_eq!(rig.provider.request_count(), requests, "provider requests");
    rig.assert_still_serving().await;
    rig
}

fn repeat(reply: ProviderReply, n: usize) -> Vec<ProviderReply> {
    std::iter::repeat_n(reply, n).collect()
}

async fn provider_429_insufficient_quota_is_quota(mode: WorkerMode) {
    let body = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    provider_fault(
        mode,
        vec![ProviderReply::status(429, body)],
        "quota or balance",
        1,
    )
    .await;
}

async fn provider_402_daily_limit_busy_is_quota(mode: WorkerMode) {
    let body = r#"{"error":{"code":"daily_limit_busy"}}"#;
    provider_fault(
        mode,
        vec![ProviderReply::status(402, body)],
        "quota or balance",
        1,
    )
    .await;
}

async fn provider_403_is_a_key_problem(mode: WorkerMode) {
    let body = r#"{"error":{"message":"Project does not have access to model","code":"model_not_allowed"}}"#;
    provider_fault(mode, vec![ProviderReply::status(403, body)], "API key", 1).await;
}

async fn provider_404_model_not_found_is_rejected(mode: WorkerMode) {
    let body = r#"{"error":{"message":"The model `nope` does not exist","type":"invalid_request_error","code":"model_not_found"}}"#;
    provider_fault(mode, vec![ProviderReply::status(404, body)], "HTTP 404", 1).await;
}

async fn provider_400_context_too_long_is_retried_once(mode: WorkerMode) {
    let body = r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
    // Trimmed and retried once, then answered.
    provider_fault(
        mode,
        vec![ProviderReply::status(400, body)],
        "echo: question",
        2,
    )
    .await;
}

async fn provider_408_is_retried_then_unavailable(mode: WorkerMode) {
    provider_fault(
        mode,
        repeat(ProviderReply::status(408, "timeout"), 3),
        "unavailable",
        3,
    )
    .await;
}

async fn provider_502_html_is_retried_then_unavailable(mode: WorkerMode) {
    let html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    provider_fault(
        mode,
        repeat(ProviderReply::status(502, html), 3),
        "unavailable",
        3,
    )
    .await;
}

async fn provider_503_is_retried_then_unavailable(mode: WorkerMode) {
    provider_fault(
        mode,
        repeat(
            ProviderReply::status(503, r#"{"error":{"message":"overloaded"}}"#),
            3,
        ),
        "unavailable",
        3,
    )
    .await;
}

async fn provider_529_is_retried_then_unavailable(mode: WorkerMode) {
    provider_fault(
        mode,
        repeat(
            ProviderReply::status(
                529,
                r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
            ),
            3,
        ),
        "unavailable",
        3,
    )
    .await;
}

async fn provider_resetting_mid_body_is_unavailable(mode: WorkerMode) {
    provider_fault(
        mode,
        repeat(ProviderReply::ResetMidBody, 3),
        "unavailable",
        3,
    )
    .await;
}

async fn provider_json_without_choices_is_reported(mode: WorkerMode) {
    let empty = ProviderReply::Json(json!({"id": "x", "object": "chat.completion", "choices": []}));
    provider_fault(mode, repeat(empty, 2), "couldn't read", 2).await;
}

async fn provider_429_retry_after_http_date_is_honoured(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    // A whole second at least 2 s ahead, so truncating to the date's resolution cannot
    // bring it closer than the 1 s checked below, however late the request goes out.
    let now_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs + 3);
    rig.provider.push(ProviderReply::Status {
        status: 429,
        headers: vec![("Retry-After".into(), httpdate(at))],
        body: r#"{"error":{"message":"slow down"}}"#.into(),
    });
    let reply = rig.ask("patience").await;
    assert_eq!(reply.text, "echo: patience");
    let requests = rig.provider.requests();
    assert_eq!(requests.len(), 2);
    // The retry comes no earlier than the date names.
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(gap >= Duration::from_millis(1000), "retried after {gap:?}");
    rig.assert_still_serving().await;
}

/// A retry the deadline cannot accommodate is not attempted: the user hears at once.
async fn provider_retry_after_past_the_deadline_gives_up_at_once(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 5).await;
    rig.provider.push(ProviderReply::rate_limited(60));
    let started = std::time::Instant::now();
    let reply = rig.ask("hurry").await;
    assert!(reply.text.contains("rate-limiting"), "{}", reply.text);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(rig.provider.request_count(), 1);
    rig.assert_still_serving().await;
}

async fn provider_refusing_connections_is_unavailable(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.provider.refuse_connections().await;
    let reply = rig.ask("anyone?").await;
    assert!(reply.text.contains("unavailable"), "{}", reply.text);
    rig.provider.accept_connections().await;
    rig.assert_still_serving().await;
}

async fn provider_body_that_never_finishes_times_out(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 2).await;
    rig.provider.push(ProviderReply::NeverFinishBody);
    let reply = rig.ask("slowly").await;
    assert!(reply.text.contains("took too long"), "{}", reply.text);
    rig.assert_still_serving().await;
    rig.assert_no_stray_processes().await;
}

async fn provider_chain_falls_back_after_402(mode: WorkerMode) {
    let backup = FakeProvider::start().await;
    let url = backup.base_url();
    let mut rig = Rig::start(mode, |o| o.providers.push(url)).await;
    rig.provider.push(ProviderReply::status(402, SEED_402_BODY));
    let reply = rig.ask("hello").await;
    assert_eq!(
        reply.text, "echo: hello",
        "the fallback's answer, nothing alarming"
    );
    assert_eq!(rig.provider.request_count(), 1);
    assert_eq!(backup.request_count(), 1);
    assert_eq!(backup.requests()[0].body["model"], "model-1");
    rig.gateway.assert_running(rig.pid);
}

async fn provider_chain_both_failing_names_the_first(mode: WorkerMode) {
    let backup = FakeProvider::start().await;
    let url = backup.base_url();
    let mut rig = Rig::start(mode, |o| o.providers.push(url)).await;
    rig.provider.push(ProviderReply::status(402, SEED_402_BODY));
    backup.push_n(ProviderReply::status(500, "{}"), 3);
    let reply = rig.ask("hello").await;
    assert!(reply.text.contains("quota or balance"), "{}", reply.text);
    assert_eq!(rig.telegram.sent_to(USER).len(), 1);
    assert_eq!(backup.request_count(), 3);
    rig.gateway.assert_running(rig.pid);
}

// ---------------------------------------------------------------- quota circuit

hermes_tests::both_modes!(
    quota_circuit_spares_an_exhausted_provider,
    quota_circuit_probes_once_after_the_cooldown,
    quota_circuit_sends_traffic_to_the_fallback,
);

/// 20 messages after a 402: at most one request reaches the exhausted provider, and
/// every message still gets the quota reply.
async fn quota_circuit_spares_an_exhausted_provider(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.provider.push(ProviderReply::status(402, SEED_402_BODY));
    for i in 0..20 {
        let reply = rig.ask(&format!("message {i}")).await;
        assert!(
            reply.text.contains("quota or balance"),
            "{i}: {}",
            reply.text
        );
    }
    assert_eq!(rig.provider.request_count(), 1);
    assert!(rig.gateway.log().contains("skipping it for 600 s"));
    rig.gateway.assert_running(rig.pid);
}

async fn quota_circuit_probes_once_after_the_cooldown(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.quota_cooldown_secs = Some(2)).await;
    rig.provider.push(ProviderReply::status(402, SEED_402_BODY));
    assert!(rig.ask("one").await.text.contains("quota or balance"));
    assert!(rig.ask("two").await.text.contains("quota or balance"));
    assert_eq!(rig.provider.request_count(), 1);
    // The cool-down is a duration by definition: wait it out.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(rig.ask("three").await.text, "echo: three");
    assert_eq!(rig.provider.request_count(), 2);
    rig.assert_still_serving().await;
}

async fn quota_circuit_sends_traffic_to_the_fallback(mode: WorkerMode) {
    let backup = FakeProvider::start().await;
    let url = backup.base_url();
    let mut rig = Rig::start(mode, |o| o.providers.push(url)).await;
    rig.provider.push(ProviderReply::status(402, SEED_402_BODY));
    for i in 0..5 {
        assert_eq!(rig.ask(&format!("m{i}")).await.text, format!("echo: m{i}"));
    }
    assert_eq!(
        rig.provider.request_count(),
        1,
        "the exhausted primary is skipped"
    );
    assert_eq!(backup.request_count(), 5);
    rig.gateway.assert_running(rig.pid);
}

// ---------------------------------------------------------------- Telegram side

hermes_tests::both_modes!(
    get_updates_409_conflict,
    get_updates_429_retry_after,
    get_updates_502_html,
    get_updates_500,
    get_updates_connection_reset,
    get_updates_that_never_completes,
    get_updates_invalid_json,
    updates_of_other_kinds_are_skipped,
    send_message_429_is_waited_out,
    send_message_bad_entities_is_sent_again_as_plain_text,
    send_message_to_a_blocked_user_does_not_affect_other_chats,
    long_replies_are_split_before_sending,
);

/// Answers one message, scripts `fault` for the next poll, and checks the gateway polls
/// again and answers after it.
async fn poll_fault(mode: WorkerMode, fault: PollFault) -> Rig {
    let mut rig = Rig::start(mode, |o| o.poll_timeout_secs = 1).await;
    assert_eq!(rig.ask("before").await.text, "echo: before");
    let polls = rig.telegram.get_updates_log().len();
    rig.telegram.fail_get_updates(fault);
    assert!(
        rig.telegram.wait_for_polls(polls + 2, PATIENCE).await,
        "{}",
        rig.gateway.log()
    );
    assert!(
        eventually(PATIENCE, || rig.gateway.log().contains("getUpdates failed")).await,
        "{}",
        rig.gateway.log()
    );
    rig.assert_still_serving().await;
    rig
}

async fn get_updates_409_conflict(mode: WorkerMode) {
    let rig = poll_fault(mode, PollFault::conflict()).await;
    assert!(rig.gateway.log().contains("another process is polling"));
}

async fn get_updates_429_retry_after(mode: WorkerMode) {
    poll_fault(mode, PollFault::too_many_requests(1)).await;
}

async fn get_updates_502_html(mode: WorkerMode) {
    poll_fault(mode, PollFault::bad_gateway_html()).await;
}

async fn get_updates_500(mode: WorkerMode) {
    poll_fault(
        mode,
        PollFault::Status {
            status: 500,
            body: r#"{"ok":false,"error_code":500,"description":"Internal Server Error"}"#.into(),
        },
    )
    .await;
}

async fn get_updates_connection_reset(mode: WorkerMode) {
    poll_fault(mode, PollFault::Reset).await;
}

/// A poll that never answers is abandoned after the long-poll period plus a margin.
async fn get_updates_that_never_completes(mode: WorkerMode) {
    poll_fault(mode, PollFault::Hang).await;
}

async fn get_updates_invalid_json(mode: WorkerMode) {
    poll_fault(mode, PollFault::InvalidJson).await;
}

async fn updates_of_other_kinds_are_skipped(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    let chat = json!({"id": USER, "type": "private", "first_name": "Test"});
    let from = json!({"id": USER, "is_bot": false, "first_name": "Test"});
    rig.telegram.push_update(
        json!({"message": {"message_id": 90, "date": 1, "chat": chat, "from": from,
        "photo": [{"file_id": "a", "file_unique_id": "b", "width": 1, "height": 1}]}}),
    );
    rig.telegram.push_update(json!({"message": {"message_id": 91, "date": 1, "chat": chat, "from": from,
        "sticker": {"file_id": "a", "file_unique_id": "b", "type": "regular", "width": 1, "height": 1, "is_animated": false, "is_video": false}}}));
    rig.telegram.push_update(json!({"edited_message": {"message_id": 92, "date": 1, "edit_date": 2, "chat": chat, "from": from, "text": "edited"}}));
    rig.telegram.push_update(
        json!({"callback_query": {"id": "1", "from": from, "chat_instance": "x", "data": "d"}}),
    );
    rig.telegram
        .push_update(json!({"some_future_update": {"x": 1}}));
    let reply = rig.ask("plain text").await;
    assert_eq!(reply.text, "echo: plain text");
    assert_eq!(
        rig.telegram.sent_to(USER).len(),
        1,
        "nothing answered the other updates"
    );
    assert_eq!(rig.provider.request_count(), 1);
    let log = rig.gateway.log();
    assert!(log.matches("skipping").count() >= 5, "{log}");
    rig.gateway.assert_running(rig.pid);
}

async fn send_message_429_is_waited_out(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.telegram.fail_send(SendFault::RetryAfter(1));
    let reply = rig.ask("hi").await;
    assert_eq!(reply.text, "echo: hi");
    let failed = rig.telegram.failed_sends();
    assert_eq!(failed.len(), 1);
    let waited = reply.at.duration_since(failed[0].at);
    assert!(waited >= Duration::from_secs(1), "resent after {waited:?}");
    rig.assert_still_serving().await;
}

async fn send_message_bad_entities_is_sent_again_as_plain_text(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.telegram.fail_send(SendFault::bad_entities());
    let reply = rig.ask("*unbalanced").await;
    assert_eq!(reply.text, "echo: *unbalanced");
    assert_eq!(reply.parse_mode, None, "the retry is plain text");
    rig.assert_still_serving().await;
}

async fn send_message_to_a_blocked_user_does_not_affect_other_chats(mode: WorkerMode) {
    let other = 2002;
    let mut rig = Rig::start(mode, |o| o.allowed_users.push(other)).await;
    rig.telegram.fail_send(SendFault::blocked());
    rig.telegram.send_text(USER, USER, "you will not see this");
    assert!(rig.telegram.wait_for_failed_sends(1, PATIENCE).await);
    assert!(
        eventually(PATIENCE, || rig
            .gateway
            .log()
            .contains("the user blocked the bot"))
        .await,
        "{}",
        rig.gateway.log()
    );
    assert_eq!(rig.ask_in(other, other, "me?").await.text, "echo: me?");
    rig.assert_still_serving().await;
}

async fn long_replies_are_split_before_sending(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    let paragraph = "word ".repeat(400);
    let long = [paragraph.trim(); 5].join("\n\n");
    assert!(long.len() > 9000);
    rig.provider.push(ProviderReply::Text(long.clone()));
    rig.telegram.send_text(USER, USER, "tell me everything");
    let sent = rig.telegram.wait_for_chat_messages(USER, 3, PATIENCE).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    for m in &sent {
        assert!(m.text.encode_utf16().count() <= 4096);
    }
    assert_eq!(
        sent.iter()
            .map(|m| m.text.split_whitespace().count())
            .sum::<usize>(),
        2000
    );
    assert!(rig.telegram.failed_sends().is_empty());
    rig.assert_still_serving().await;
}

fn httpdate(at: SystemTime) -> String {
    ::httpdate::fmt_http_date(at)
}
