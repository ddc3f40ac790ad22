//! Many bots on one host (issue 24): 20 gateways, each with its own fake Telegram (20
//! bots) and its own state, sharing one fake provider, as 20 instances of the template
//! unit would. Each bot is sent one message at the same moment; every one gets its own
//! answer, once, in its own chat, and no gateway answers for another. The total memory
//! (every gateway and its workers) and the answer latency are printed: docs/SCALING.md
//! holds them. Only correctness and generous bounds are asserted (the numbers depend on the
//! machine and its load). `HERMES_SCALING_RELEASE=1` runs the release binaries instead of
//! the tests' debug build, as SCALING.md's figures are.

use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::FakeProvider;
use hermes_tests::fake_telegram::FakeTelegram;
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, USER};
use hermes_tests::procs;

const BOTS: usize = 20;

/// The resident memory of `pid` and every live process descended from it, in KiB.
fn tree_rss_kib(pid: i32) -> u64 {
    let mut total = procs::rss_kib(pid).unwrap_or(0);
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for child in procs::children_of(parent) {
            total += procs::rss_kib(child.pid).unwrap_or(0);
            frontier.push(child.pid);
        }
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_gateways_on_one_host_each_answer_their_own_bot() {
    let provider = FakeProvider::start().await;
    let mut bots = Vec::with_capacity(BOTS);
    for _ in 0..BOTS {
        bots.push(FakeTelegram::start().await);
    }
    // `HERMES_SCALING_RELEASE=1`: the operator's release binaries (built if need be), for
    // the figures in docs/SCALING.md; by default the tests' own build.
    let release = std::env::var_os("HERMES_SCALING_RELEASE")
        .is_some()
        .then(hermes_tests::harness::release_binaries);
    let started = Instant::now();
    let gateways: Vec<Gateway> = bots
        .iter()
        .map(|telegram| {
            let mut options = GatewayOptions::new(WorkerMode::Pool);
            // One worker each: the smallest real instance (the default is two).
            options.pool_size = 1;
            options.providers = vec![provider.base_url()];
            if let Some(bins) = &release {
                options.gateway_binary = Some(bins.gateway.clone());
                options.worker_command = Some(bins.worker.clone());
            }
            Gateway::start(&options, &telegram.api_url())
        })
        .collect();
    // Ready: each has a worker waiting (the status file says so), so the message below
    // measures answering, not start-up.
    for gateway in &gateways {
        let ready = hermes_tests::harness::eventually(PATIENCE, || {
            gateway.status_json()["workers"]["idle"].as_u64() == Some(1)
        })
        .await;
        assert!(ready, "a gateway never had its worker:\n{}", gateway.log());
    }
    let ready_after = started.elapsed();
    let idle_kib: u64 = gateways.iter().map(|g| tree_rss_kib(g.pid())).sum();
    let idle_parents_kib: u64 = gateways
        .iter()
        .map(|g| procs::rss_kib(g.pid()).unwrap_or(0))
        .sum();

    // One message to every bot at once, each its own text.
    let asked = Instant::now();
    for (i, telegram) in bots.iter().enumerate() {
        telegram.send_text(USER, USER, &format!("bot {i}: hello"));
    }
    // Awaited in turn: the latency is when the fake Telegram received each answer.
    let mut latencies = Vec::with_capacity(BOTS);
    for (i, telegram) in bots.iter().enumerate() {
        let expected = format!("bot {i}: hello");
        let answer = telegram
            .wait_for_sent(
                |m| m.chat_id == USER && m.text.contains(&expected),
                PATIENCE,
            )
            .await;
        latencies.push(answer.map(|m| m.at.saturating_duration_since(asked)));
    }
    let mut answered: Vec<Duration> = Vec::new();
    for (i, latency) in latencies.iter().enumerate() {
        match latency {
            Some(latency) => answered.push(*latency),
            None => panic!(
                "bot {i} did not answer: {:#?}\n{}",
                bots[i].sent_to(USER),
                gateways[i].log()
            ),
        }
    }
    // Each bot got its own answer, once, and nothing meant for another.
    for (i, telegram) in bots.iter().enumerate() {
        let sent = telegram.sent_to(USER);
        let own = format!("bot {i}: hello");
        assert_eq!(
            sent.iter().filter(|m| m.text.contains(&own)).count(),
            1,
            "bot {i}: {sent:#?}"
        );
        assert!(
            sent.iter().all(|m| m.text.contains(&own)),
            "bot {i} carried another bot's answer: {sent:#?}"
        );
    }
    let busy_kib: u64 = gateways.iter().map(|g| tree_rss_kib(g.pid())).sum();
    answered.sort();
    let p50 = percentile(&answered, 0.5);
    let max = *answered.last().unwrap_or(&Duration::ZERO);
    let profile = if release.is_some() || !cfg!(debug_assertions) {
        "release"
    } else {
        "debug"
    };
    println!(
        "{BOTS} gateways ({profile} build, pool of 1 worker each): all ready in {:.2} s; idle RSS {:.1} MiB in all ({:.1} MiB per instance, gateway {:.1} MiB + worker); after one message each {:.1} MiB; answer latency with all {BOTS} asked at once: p50 {:.0} ms, max {:.0} ms",
        ready_after.as_secs_f64(),
        idle_kib as f64 / 1024.0,
        idle_kib as f64 / 1024.0 / BOTS as f64,
        idle_parents_kib as f64 / 1024.0 / BOTS as f64,
        busy_kib as f64 / 1024.0,
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0,
    );
    // Generous bounds: a debug build on a loaded machine.
    assert!(
        busy_kib < BOTS as u64 * 200 * 1024,
        "{BOTS} instances take {} MiB",
        busy_kib / 1024
    );
    assert!(max < PATIENCE, "the slowest answer took {max:?}");
    assert_eq!(
        provider.request_count(),
        BOTS,
        "one provider call per message"
    );
}
