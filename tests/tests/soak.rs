//! Soak under faults: many messages from many chats, a seeded random fifth of them meeting
//! a provider fault, through the real binaries. Passes only if every message got exactly
//! one reply of the expected class, the gateway never changed PID, its memory stayed flat
//! (RSS at the end within 10% of RSS after the first 10% of messages), and no worker
//! process was left once it stopped.
//!
//! `soak_short_*` always run (300 messages from 10 chats). The long variant (20,000 from
//! 100) is ignored by default: `cargo test -p hermes-tests --release -- --ignored soak`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{ProviderReply, SEED_402_BODY};
use hermes_tests::harness::{PATIENCE, Rig, eventually};
use hermes_tests::procs;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short_pool() {
    soak(WorkerMode::Pool, 300, 10, 0x5eed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short_per_request() {
    soak(WorkerMode::PerRequest, 300, 10, 0x5eed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 20,000 messages; run with --release -- --ignored soak"]
async fn soak_long() {
    soak(WorkerMode::Pool, 20_000, 100, 0x1019).await;
    soak(WorkerMode::PerRequest, 20_000, 100, 0x1019).await;
}

/// A fault the fake provider plays for one message, and what the user must then read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    None,
    Quota,
    Auth,
    Unavailable,
    Protocol,
    Rejected,
    RateLimitedOnce,
    Hang,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::Quota,
        Fault::Auth,
        Fault::Unavailable,
        Fault::Protocol,
        Fault::Rejected,
        Fault::RateLimitedOnce,
        Fault::Hang,
    ];

    fn script(self) -> Vec<ProviderReply> {
        match self {
            Fault::None => vec![],
            Fault::Quota => vec![ProviderReply::status(402, SEED_402_BODY)],
            Fault::Auth => vec![ProviderReply::status(
                401,
                r#"{"error":{"message":"bad key"}}"#,
            )],
            Fault::Unavailable => vec![ProviderReply::status(503, "{}"); 3],
            Fault::Protocol => vec![ProviderReply::RawBody("not json".into()); 2],
            Fault::Rejected => vec![ProviderReply::status(
                404,
                r#"{"error":{"code":"model_not_found"}}"#,
            )],
            Fault::RateLimitedOnce => vec![ProviderReply::rate_limited(0)],
            Fault::Hang => vec![ProviderReply::Hang],
        }
    }

    /// A phrase the reply must contain.
    fn expected(self, message: &str) -> String {
        match self {
            Fault::None | Fault::RateLimitedOnce => format!("echo: {message}"),
            Fault::Quota => "quota or balance".into(),
            Fault::Auth => "API key".into(),
            Fault::Unavailable => "unavailable".into(),
            Fault::Protocol => "couldn't read".into(),
            Fault::Rejected => "HTTP 404".into(),
            Fault::Hang => "took too long".into(),
        }
    }
}

/// xorshift64*: a deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

async fn soak(mode: WorkerMode, messages: usize, chats: usize, seed: u64) {
    let first_user = 50_000i64;
    let users: Vec<i64> = (0..chats as i64).map(|i| first_user + i).collect();
    let rig = Arc::new(
        Rig::start(mode, |o| {
            o.allowed_users = users.clone();
            o.pool_size = 4;
            o.job_timeout_secs = 2;
            o.max_retries = 2;
            o.quota_cooldown_secs = Some(0);
        })
        .await,
    );

    // Every message and its fault, decided up front from the seed.
    let mut rng = Rng(seed | 1);
    let mut plan: Vec<Vec<(String, Fault)>> = vec![Vec::new(); chats];
    let mut faults: BTreeMap<Fault, usize> = BTreeMap::new();
    for i in 0..messages {
        let chat = i % chats;
        let fault = if rng.next().is_multiple_of(5) {
            Fault::ALL[(rng.next() % Fault::ALL.len() as u64) as usize]
        } else {
            Fault::None
        };
        let text = format!("m{i} in chat {chat}");
        for reply in fault.script() {
            rig.provider.push_for(&text, reply);
        }
        *faults.entry(fault).or_default() += 1;
        plan[chat].push((text, fault));
    }

    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let baseline = Arc::new(std::sync::Mutex::new(None::<u64>));
    let mut tasks = Vec::new();
    for (chat, script) in plan.into_iter().enumerate() {
        let rig = rig.clone();
        let done = done.clone();
        let baseline = baseline.clone();
        let user = users[chat];
        tasks.push(tokio::spawn(async move {
            for (text, fault) in script {
                let reply = rig.ask_in(user, user, &text).await;
                let expected = fault.expected(&text);
                assert!(
                    reply.text.contains(&expected),
                    "{text} ({fault:?}): got {:?}, expected {expected:?}",
                    reply.text
                );
                let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if n == messages / 10 {
                    let rss = procs::rss_kib(rig.pid);
                    *baseline.lock().unwrap_or_else(|e| e.into_inner()) = rss;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a chat's task failed");
    }
    let elapsed = started.elapsed();

    let mut rig = Arc::try_unwrap(rig).unwrap_or_else(|_| panic!("rig still shared"));
    rig.gateway.assert_running(rig.pid);
    for user in &users {
        let replies = rig.telegram.sent_to(*user);
        assert_eq!(
            replies.len(),
            messages / chats,
            "chat {user}: one reply per message"
        );
    }
    let rss_start = baseline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(0);
    let rss_end = procs::rss_kib(rig.pid).unwrap_or(0);
    let growth = (rss_end as f64 - rss_start as f64) / rss_start.max(1) as f64 * 100.0;

    rig.assert_no_stray_processes().await;
    rig.gateway.signal(Signal::SIGTERM);
    let status = rig.gateway.wait_exit(PATIENCE).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let workers_left = eventually(Duration::from_secs(5), || {
        rig.gateway.descendants().is_empty()
    })
    .await;

    let mix: Vec<String> = faults.iter().map(|(f, n)| format!("{f:?} {n}")).collect();
    println!(
        "soak {}: {messages} messages from {chats} chats in {:.1} s ({:.0} msg/s), faults [{}], \
         gateway pid {} unchanged, RSS {rss_start} KiB after 10% -> {rss_end} KiB at the end ({growth:+.1}%), \
         workers left: {}",
        mode.as_str(),
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        mix.join(", "),
        rig.pid,
        if workers_left {
            0
        } else {
            rig.gateway.descendants().len()
        },
    );
    assert!(workers_left, "worker processes outlived the gateway");
    assert!(
        growth <= 10.0,
        "the gateway's RSS grew {growth:.1}% ({rss_start} -> {rss_end} KiB)"
    );
}
