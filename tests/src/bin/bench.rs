//! `cargo run --release -p hermes-tests --bin bench -- [--quick]`: what process isolation
//! costs, measured through the real binaries against the fake Telegram server and a fake
//! provider that answers at once.
//!
//! Rows: dispatch overhead (pool, per-request, and the in-process baseline: the same
//! agent code inside the gateway's process, `hermes-gateway-in-process-baseline` of this
//! crate), throughput with 100 chats, recovery after a worker is killed, the parent's
//! footprint, and start-up.
//!
//! Every message is its own job: each chat sends its next message once the last is
//! answered. (Messages that wait while a chat's answer is worked on are asked together,
//! as one turn; a burst into a few chats would measure turns, not messages.) The rows a
//! target compares run side by side, their gateways taking turns, so that the machine's
//! slow minutes fall on all of them (`latencies`, `throughput`). Prints one table and
//! writes the same rows as JSON to `target/bench/latest.json`. Targets are reported, never enforced: a busy machine must
//! not fail a build; a broken harness does.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::harness::{
    GatewayOptions, PATIENCE, Rig, USER, cargo_build, eventually, target_profile_dir,
};
use hermes_tests::procs;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

struct Sizes {
    latency: usize,
    throughput: usize,
    footprint: usize,
    recovery: usize,
    startup: usize,
}

/// One measured row.
struct Row {
    name: String,
    value: String,
    target: String,
    met: Option<bool>,
    json: Value,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only throughput,startup`: just those groups of rows (latency, throughput,
    // recovery, footprint, startup), for profiling one of them.
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_string).collect());
    let runs = |group: &str| only.as_ref().is_none_or(|o| o.iter().any(|g| g == group));
    // `--spares N`: `workers.spares` of the per-request rows (default: the product's, 1).
    let spares: Option<usize> = args
        .iter()
        .position(|a| a == "--spares")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; numbers are only meaningful with --release");
    }
    let sizes = if quick {
        Sizes {
            latency: 300,
            throughput: 2000,
            footprint: 2000,
            recovery: 10,
            startup: 3,
        }
    } else {
        Sizes {
            latency: 3000,
            throughput: 20_000,
            footprint: 10_000,
            recovery: 30,
            startup: 10,
        }
    };
    let mut rows = Vec::new();
    // First, though printed last: every `Gateway::start` forks this process (the harness
    // needs `setsid` between fork and exec), and after the other rows it holds 500-700 MB
    // of their fakes; that fork and the exec's teardown of its copy were 20-40 ms of the
    // "exec to first getUpdates" it measured (45-50 ms in a full run, 5-6 ms alone). A
    // service manager forks a small process. The disk is synced first for the same
    // reason: a new store's first writes must not wait behind earlier writeback.
    let start = if runs("startup") {
        nix::unistd::sync();
        Some(startup(sizes.startup).await)
    } else {
        None
    };
    let latencies = if runs("latency") {
        Some(latencies(build_baseline(), spares, sizes.latency).await)
    } else {
        // The harness builds the normal binaries itself.
        None
    };
    if let Some(Latencies {
        pool,
        per_request,
        inproc,
        watched,
        ..
    }) = &latencies
    {
        latency_rows(&mut rows, pool, per_request, inproc);
        rows.push(Row {
            name: "dispatch latency, pool, [metrics] on and scraped 5 times a second".into(),
            value: format!(
                "p50 {:.2} / p99 {:.2} / max {:.2} ms ({:+.2} ms p50 over pool)",
                watched.p50,
                watched.p99,
                watched.max,
                watched.p50 - pool.p50
            ),
            target: "p50 <= pool's +0.1 ms".into(),
            met: Some(watched.p50 - pool.p50 <= 0.1),
            json: json!({"p50_ms": watched.p50, "p99_ms": watched.p99, "max_ms": watched.max, "n": watched.n}),
        });
    }

    if runs("throughput") {
        let mut pool_of_8 = None;
        let measured = throughput(&THROUGHPUT_ROWS, spares, sizes.throughput).await;
        for ((mode, pool_size), t) in THROUGHPUT_ROWS.into_iter().zip(measured) {
            let per_msg = |s: f64| s * 1e6 / sizes.throughput as f64;
            let (target, met) = match (mode, pool_size) {
                (WorkerMode::Pool, 8) => {
                    pool_of_8 = Some(t.rate());
                    (">= 2000 messages/s".to_string(), Some(t.rate() >= 2000.0))
                }
                (WorkerMode::PerRequest, _) => match pool_of_8 {
                    Some(pool) => (
                        format!(">= half of pool's ({:.0} messages/s)", pool / 2.0),
                        Some(t.rate() >= pool / 2.0),
                    ),
                    None => (String::new(), None),
                },
                _ => (String::new(), None),
            };
            let label = match mode {
                WorkerMode::Pool => format!("pool of {pool_size}"),
                WorkerMode::PerRequest => format!("per-request, {pool_size} at once"),
            };
            rows.push(Row {
                name: format!("throughput, 100 chats talking, {label}"),
                value: format!(
                    "{:.0} messages/s ({} messages); CPU per message: gateway {:.0} µs, workers {:.0} µs, bench process (fakes + driver) {:.0} µs; machine {:.0}% busy; {:.1} messages a getUpdates",
                    t.rate(),
                    sizes.throughput,
                    per_msg(t.gateway_s),
                    per_msg(t.workers_s),
                    per_msg(t.bench_s),
                    t.machine_busy() * 100.0,
                    sizes.throughput as f64 / t.polls.max(1) as f64
                ),
                target,
                met,
                json: json!({"messages_per_s": t.rate(), "messages": sizes.throughput, "pool_size": pool_size,
                             "mode": mode.as_str(),
                             "cpu_s": {"gateway": t.gateway_s, "workers": t.workers_s, "bench_process": t.bench_s,
                                       "wall": t.wall_s, "machine_busy_fraction": t.machine_busy()},
                             "send_chat_action_calls": t.typing_calls,
                             "get_updates_calls": t.polls}),
            });
        }
    }

    if runs("render") {
        let (shape, samples, pieces) = worst_render(if quick { 5 } else { 30 });
        let r = stats(samples);
        rows.push(Row {
            name: format!("render + split, worst 64 KiB answer found ({shape})"),
            value: format!(
                "p50 {:.2} / max {:.2} ms, {pieces} messages",
                r.p50, r.max
            ),
            target: "< 50 ms, <= 10 messages".into(),
            met: Some(r.max < 50.0 && pieces <= 10),
            json: json!({"shape": shape, "p50_ms": r.p50, "max_ms": r.max, "n": r.n, "messages": pieces}),
        });
    }

    if runs("recovery") {
        let recovery_ms = recovery(sizes.recovery).await;
        rows.push(Row {
            name: "recovery after SIGKILL of a worker (pool)".into(),
            value: format!(
                "p50 {:.1} / max {:.1} ms to the next served job",
                recovery_ms.p50, recovery_ms.max
            ),
            target: "<= 20 ms".into(),
            met: Some(recovery_ms.p50 <= 20.0),
            json: json!({"p50_ms": recovery_ms.p50, "max_ms": recovery_ms.max, "n": recovery_ms.n}),
        });
    }
    if let Some(Latencies { pool, cold, .. }) = &latencies {
        let spawn_cost = cold.p50 - pool.p50;
        rows.push(Row {
            name: "per-request without spares (spares = 0)".into(),
            value: format!(
                "p50 {:.2} / p99 {:.2} / max {:.2} ms; one spawn + handshake {spawn_cost:.2} ms (its p50 minus pool's)",
                cold.p50, cold.p99, cold.max
            ),
            target: String::new(),
            met: None,
            json: json!({"p50_ms": cold.p50, "p99_ms": cold.p99, "max_ms": cold.max, "n": cold.n,
                         "spawn_and_handshake_ms": spawn_cost}),
        });
    }

    if runs("footprint") {
        footprint_rows(&mut rows, sizes.footprint).await;
    }

    if let Some(start) = start {
        rows.push(Row {
            name: "start-up: exec to first getUpdates / to READY=1".into(),
            value: format!(
                "{:.1} / {:.1} ms (p50 of {})",
                start.first_poll_ms, start.ready_ms, sizes.startup
            ),
            target: "first getUpdates <= 10 ms, READY=1 <= 50 ms".into(),
            met: Some(start.first_poll_ms <= 10.0 && start.ready_ms <= 50.0),
            json: json!({"first_get_updates_ms": start.first_poll_ms, "ready_ms": start.ready_ms}),
        });
    }

    print_table(&rows, quick);
    match write_json(&rows, quick) {
        Ok(path) => println!("\nwrote {}", path.display()),
        Err(e) => {
            eprintln!("cannot write the JSON results: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn latency_rows(rows: &mut Vec<Row>, pool: &Stats, per_request: &Stats, inproc: &Stats) {
    for (name, stats) in [
        ("in-process baseline", inproc),
        ("pool", pool),
        ("per-request", per_request),
    ] {
        let (target, met) = match name {
            "pool" => (
                "p50 <= +0.5 ms, p99 <= +2 ms over baseline".to_string(),
                Some(stats.p50 - inproc.p50 <= 0.5 && stats.p99 - inproc.p99 <= 2.0),
            ),
            "per-request" => (
                format!(
                    "p50 <= pool's +0.3 ms ({:.2}), p99 <= pool's +1 ms ({:.2})",
                    pool.p50 + 0.3,
                    pool.p99 + 1.0
                ),
                Some(stats.p50 - pool.p50 <= 0.3 && stats.p99 - pool.p99 <= 1.0),
            ),
            _ => (String::new(), None),
        };
        rows.push(Row {
            name: format!("dispatch latency, {name}"),
            value: format!(
                "p50 {:.2} / p99 {:.2} / max {:.2} ms (x{:.2} of baseline p50, +{:.2} ms)",
                stats.p50, stats.p99, stats.max, stats.p50 / inproc.p50.max(1e-9), stats.p50 - inproc.p50
            ),
            target,
            met,
            json: json!({"p50_ms": stats.p50, "p99_ms": stats.p99, "max_ms": stats.max, "n": stats.n,
                         "ratio_to_baseline_p50": stats.p50 / inproc.p50.max(1e-9)}),
        });
    }
}

async fn footprint_rows(rows: &mut Vec<Row>, n: usize) {
    let footprint = footprint(n).await;
    rows.push(Row {
        name: "parent RSS idle / after jobs / after failed jobs".into(),
        value: format!(
            "{:.1} / {:.1} / {:.1} MiB ({} jobs each)",
            footprint.idle_kib as f64 / 1024.0,
            footprint.after_jobs_kib as f64 / 1024.0,
            footprint.after_failures_kib as f64 / 1024.0,
            n
        ),
        target: "<= 20 MiB idle, <= 25 MiB after failed jobs".into(),
        met: Some(footprint.idle_kib <= 20 * 1024 && footprint.after_failures_kib <= 25 * 1024),
        json: json!({"idle_kib": footprint.idle_kib, "after_jobs_kib": footprint.after_jobs_kib,
                     "after_failed_jobs_kib": footprint.after_failures_kib, "jobs": n}),
    });
    rows.push(Row {
        name: "idle worker RSS / parent threads".into(),
        value: format!(
            "{:.1} MiB / {} threads",
            footprint.worker_kib as f64 / 1024.0,
            footprint.threads
        ),
        target: String::new(),
        met: None,
        json: json!({"worker_idle_kib": footprint.worker_kib, "parent_threads": footprint.threads}),
    });
}

/// Builds the in-process baseline (a binary of this crate: the gateway's library with the
/// agent library running its jobs).
fn build_baseline() -> PathBuf {
    cargo_build();
    target_profile_dir().join(BASELINE)
}

const BASELINE: &str = "hermes-gateway-in-process-baseline";

struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

/// The answers that cost the renderer most (nesting of every kind, a few thousand deep,
/// and long plain text), each filled to the gateway's answer bound: the one whose median
/// render is slowest, its `n` timings in ms, and how many messages it became.
fn worst_render(n: usize) -> (String, Vec<f64>, usize) {
    let fill = |unit: &str| -> String {
        let mut answer = String::new();
        while answer.len() + unit.len() <= hermes_gateway::MAX_ANSWER_BYTES {
            answer.push_str(unit);
        }
        answer
    };
    let nested = |open: &str, close: &str| -> String {
        let depth = hermes_gateway::MAX_ANSWER_BYTES / (open.len() + close.len() + 1) - 8;
        format!("{}text{}", open.repeat(depth), close.repeat(depth))
    };
    let shapes = [
        ("nested bullets", nested("- ", "")),
        ("nested numbers", nested("1. ", "")),
        ("nested quotes", nested("> ", "")),
        ("quoted bullets", nested("> - ", "")),
        ("nested emphasis", nested("*_", "_*")),
        ("nested links", nested("[", "](https://x.org)")),
        ("empty bullets", fill("-\n")),
        ("table rows", fill("| a | **b** | `c` |\n")),
        ("words", fill("word ")),
        (
            "mixed markup",
            fill("**bold** _it_ `code` [l](https://x.org) ~~s~~\n- item\n> quote\n"),
        ),
    ];
    let mut worst: Option<(String, Vec<f64>, usize)> = None;
    for (shape, answer) in shapes {
        let mut pieces = 0;
        let samples: Vec<f64> = (0..n)
            .map(|_| {
                let start = Instant::now();
                pieces = hermes_gateway::render_answer(std::hint::black_box(&answer));
                ms(start.elapsed())
            })
            .collect();
        let median = stats(samples.clone()).p50;
        if worst
            .as_ref()
            .is_none_or(|(_, w, _)| stats(w.clone()).p50 < median)
        {
            worst = Some((shape.to_string(), samples, pieces));
        }
    }
    worst.unwrap_or_default()
}

fn stats(mut samples: Vec<f64>) -> Stats {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        n: samples.len(),
    }
}

/// The `[telegram]` keys as shipped (streaming on): the harness turns streaming off for
/// tests that want one message per reply, but the numbers must be the product's.
/// `HERMES_BENCH_TELEGRAM_TOML="reactions = false"` measures the same build with other
/// keys, to tell what one feature costs.
///
/// And the runtime directory as the units give it, on a tmpfs (`RuntimeDirectory=` is
/// under `/run`, `$XDG_RUNTIME_DIR` for a `--user` unit): each worker's scratch and output
/// directories are made and removed there. On this machine, which has no systemd, the
/// gateway's own default is under the state directory, on disk, where those `mkdir`s and
/// `rmdir`s cost a `per-request` message about 120 µs of the gateway's CPU that no
/// deployment pays (docs/BENCHMARKS.md).
fn product_defaults(options: &mut GatewayOptions) {
    options.runtime_on_tmpfs = true;
    options.telegram_toml.clear();
    if let Ok(extra) = std::env::var("HERMES_BENCH_TELEGRAM_TOML") {
        options.telegram_toml = extra;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The dispatch latency of every configuration the latency rows compare.
struct Latencies {
    pool: Stats,
    per_request: Stats,
    inproc: Stats,
    /// `per-request` without spares: every job waits for its worker's spawn and handshake,
    /// what the spares take off the path.
    cold: Stats,
    /// `pool` with the metrics endpoint on and a scraper reading it every 200 ms
    /// (Prometheus's default is every 15 s): what watching costs the message path.
    watched: Stats,
}

/// How often the latency rows ask: one bot's messages at most 50 a second, above the
/// about 30 answers a second Telegram lets a bot send, so the fastest a bot is asked and
/// still answers. Back to back, a message came 1 ms after the last answer, quicker than any
/// process can be started: `per-request`'s warm spare, started when its predecessor takes
/// a job, could never be ready, and the row measured the spawn it exists to hide. The same
/// pause follows every message whichever gateway is asked next, so what one gateway does
/// after its answer (its store's commit, a spare's start) is not in the next one's sample.
const LATENCY_PACE: Duration = Duration::from_millis(20);

/// Measures the configurations side by side: all are started and warmed up first, then
/// asked in turns, one message at a time, each turn in a new random order. Measured one
/// after the other (as until 2026-12-05), the machine's drift from one minute to the next
/// (0.2-0.3 ms of p50 between two runs of the same row) was as large as the margins the
/// targets compare (pool's +0.1 and +0.3 ms), and decided them in CI's quick runs.
async fn latencies(baseline: PathBuf, spares: Option<usize>, n: usize) -> Latencies {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let rigs = [
        latency_rig(WorkerMode::Pool, None, None, "").await,
        latency_rig(WorkerMode::PerRequest, None, spares, "").await,
        latency_rig(WorkerMode::Pool, Some(baseline), None, "").await,
        latency_rig(WorkerMode::PerRequest, None, Some(0), "").await,
        latency_rig(
            WorkerMode::Pool,
            None,
            None,
            &format!("\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
        )
        .await,
    ];
    let stop = tokio_util::sync::CancellationToken::new();
    let scraper = tokio::spawn(scrape_every_200_ms(metrics_port, stop.clone()));
    let mut samples: [Vec<f64>; 5] = std::array::from_fn(|_| Vec::with_capacity(n));
    let mut order: Vec<usize> = (0..rigs.len()).collect();
    for i in 0..n {
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
        for &r in &order {
            let asked = tokio::time::Instant::now();
            samples[r].push(ask_timed(&rigs[r], &format!("m{i}")).await);
            tokio::time::sleep_until(asked + LATENCY_PACE).await;
        }
    }
    stop.cancel();
    let scrapes = scraper.await.unwrap_or(0);
    assert!(scrapes > 0, "the scraper never read the metrics");
    let [pool, per_request, inproc, cold, watched] = samples.map(stats);
    Latencies {
        pool,
        per_request,
        inproc,
        cold,
        watched,
    }
}

/// Reads `GET /metrics` every 200 ms until `stop`; returns how many reads succeeded.
async fn scrape_every_200_ms(port: u16, stop: tokio_util::sync::CancellationToken) -> usize {
    let mut scrapes = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return scrapes,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut body = Vec::new();
            if s.read_to_end(&mut body).await.is_ok() && body.starts_with(b"HTTP/1.1 200") {
                scrapes += 1;
            }
        }
    }
}

/// A gateway of one latency configuration, started and warmed up.
async fn latency_rig(
    mode: WorkerMode,
    baseline: Option<PathBuf>,
    spares: Option<usize>,
    extra_toml: &str,
) -> Rig {
    let rig = Rig::start(mode, |o| {
        product_defaults(o);
        o.spares = spares;
        o.extra_toml = extra_toml.to_string();
        o.poll_timeout_secs = 30;
        if let Some(binary) = baseline {
            o.gateway_binary = Some(binary);
            // Checked at start-up like any configuration, though never started.
            o.worker_command = Some(hermes_tests::harness::binaries().worker.clone());
        }
    })
    .await;
    for i in 0..20 {
        rig.ask(&format!("warm-up {i}")).await;
    }
    rig
}

/// From the update leaving the fake `getUpdates` to the reply reaching the fake
/// `sendMessage`, in milliseconds.
async fn ask_timed(rig: &Rig, text: &str) -> f64 {
    let before = rig.telegram.sent_to(USER).len();
    let id = rig.telegram.send_text(USER, USER, text);
    let sent = rig
        .telegram
        .wait_for_chat_messages(USER, before + 1, PATIENCE)
        .await;
    let reply = sent
        .get(before)
        .unwrap_or_else(|| panic!("no reply\n{}", rig.gateway.log()));
    let served = rig.telegram.served_at(id).expect("the update was served");
    ms(reply.at.duration_since(served))
}

/// What a throughput row measured, summed over its rounds.
#[derive(Default)]
struct Throughput {
    messages: usize,
    /// CPU seconds used while the row was measured by the gateway, its workers (live and
    /// reaped), and this process (the fake servers and the driver).
    gateway_s: f64,
    workers_s: f64,
    bench_s: f64,
    /// Seconds from each round's first message to its last reply.
    wall_s: f64,
    /// The machine's busy and total CPU ticks (anything, other users included).
    machine_busy_ticks: u64,
    machine_ticks: u64,
    /// "typing…" indicators sent.
    typing_calls: usize,
    /// `getUpdates` calls: how many updates a poll brought (the fake, as the Bot API
    /// server, answers a woken poll 1 ms after the last update it got, 2 ms after the
    /// first at most; a slower rate or a less busy gateway gets fewer a poll).
    polls: usize,
}

impl Throughput {
    fn add(&mut self, round: &Throughput) {
        self.messages += round.messages;
        self.gateway_s += round.gateway_s;
        self.workers_s += round.workers_s;
        self.bench_s += round.bench_s;
        self.wall_s += round.wall_s;
        self.machine_busy_ticks += round.machine_busy_ticks;
        self.machine_ticks += round.machine_ticks;
        self.typing_calls += round.typing_calls;
        self.polls += round.polls;
    }

    fn rate(&self) -> f64 {
        self.messages as f64 / self.wall_s
    }

    fn machine_busy(&self) -> f64 {
        self.machine_busy_ticks as f64 / self.machine_ticks.max(1) as f64
    }
}

/// CPU time of the gateway, of its workers and of this process at one moment.
struct CpuSnapshot {
    gateway: procs::CpuTicks,
    /// Live workers' own ticks, by pid.
    workers: Vec<(i32, u64)>,
    bench: u64,
    machine: (u64, u64),
}

impl CpuSnapshot {
    fn take(rig: &Rig) -> Self {
        CpuSnapshot {
            gateway: procs::cpu_ticks(rig.pid).unwrap_or_default(),
            workers: rig
                .gateway
                .workers()
                .iter()
                .filter_map(|w| Some((w.pid, procs::cpu_ticks(w.pid)?.own)))
                .collect(),
            bench: procs::cpu_ticks(std::process::id() as i32)
                .unwrap_or_default()
                .own,
            machine: procs::machine_ticks().unwrap_or_default(),
        }
    }

    /// Worker ticks between `self` and `later`: a worker alive at the start either died
    /// (its whole time is in the gateway's reaped-children count) or is still alive (its
    /// whole time is in `later`), so its time before the start is subtracted either way.
    fn worker_ticks_until(&self, later: &CpuSnapshot) -> u64 {
        let before: u64 = self.workers.iter().map(|(_, t)| t).sum();
        let alive: u64 = later.workers.iter().map(|(_, t)| t).sum();
        let reaped = later.gateway.reaped_children - self.gateway.reaped_children;
        (alive + reaped).saturating_sub(before)
    }
}

/// Clock ticks per second as /proc counts them (USER_HZ), fixed at 100 on Linux.
const TICKS_PER_S: f64 = 100.0;

/// The throughput rows: a pool of 2, a pool of 8, and per-request with 8 at once.
const THROUGHPUT_ROWS: [(WorkerMode, usize); 3] = [
    (WorkerMode::Pool, 2),
    (WorkerMode::Pool, 8),
    (WorkerMode::PerRequest, 8),
];
/// The chats that talk in a throughput row.
const THROUGHPUT_CHATS: i64 = 100;
/// Messages each chat sends before a row is measured: `agent.max_history_messages` (20
/// by default) counts questions and answers, so after 10 each a job carries as much
/// history as it ever will, as in a bot that has been talking for a while.
const HISTORY_FILL: usize = 10;
/// Messages a row is measured for at a time, before the next row takes its turn.
const THROUGHPUT_ROUND: usize = 1000;

/// For each row, 100 chats sending `n` messages in all, each chat its next once the last
/// is answered: messages per second until every reply is out.
///
/// The rows are measured side by side, as the latency rows are: their gateways start
/// together, each chat of each fills its history first (not measured), and then the rows
/// take turns of [`THROUGHPUT_ROUND`] messages, in a new random order each round, until
/// each has sent `n`. Measured one after the other, a minute apart, the same row moved by
/// 15 % between runs of this machine, and the rows' ratio (per-request's target) with it.
async fn throughput(
    rows: &[(WorkerMode, usize)],
    spares: Option<usize>,
    n: usize,
) -> Vec<Throughput> {
    let users: Vec<i64> = (0..THROUGHPUT_CHATS).map(|i| 70_000 + i).collect();
    let callgrind = callgrind_wrapper();
    let mut rigs = Vec::new();
    for &(mode, pool_size) in rows {
        rigs.push(throughput_rig(mode, pool_size, spares, &users, callgrind.as_ref()).await);
    }
    let filled = HISTORY_FILL * users.len();
    for rig in &rigs {
        chats_talk(rig, &users, filled, 0).await;
    }
    if callgrind.is_some() {
        for rig in &rigs {
            callgrind_control("--zero", rig.pid);
        }
    }
    let mut totals: Vec<Throughput> = rigs.iter().map(|_| Throughput::default()).collect();
    let mut order: Vec<usize> = (0..rigs.len()).collect();
    let mut sent = 0;
    while sent < n {
        let round = THROUGHPUT_ROUND.min(n - sent);
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
        for &r in &order {
            totals[r].add(&measure_round(&rigs[r], &users, round, filled + sent).await);
        }
        sent += round;
    }
    if let Some((_, dir)) = &callgrind {
        for (rig, (_, pool_size)) in rigs.iter().zip(rows) {
            callgrind_control(
                &format!("--dump=burst of {n}, pool of {pool_size}"),
                rig.pid,
            );
            eprintln!(
                "callgrind: the gateway's burst is in {}/callgrind.out.{}.*",
                dir.display(),
                rig.pid
            );
        }
    }
    totals
}

/// A gateway of one throughput row, started and warmed up, its pool full (per-request:
/// its spare ready).
async fn throughput_rig(
    mode: WorkerMode,
    pool_size: usize,
    spares: Option<usize>,
    users: &[i64],
    callgrind: Option<&(PathBuf, PathBuf)>,
) -> Rig {
    let rig = Rig::start(mode, |o| {
        product_defaults(o);
        o.pool_size = pool_size;
        o.allowed_users = users.to_vec();
        if mode == WorkerMode::PerRequest {
            o.spares = spares;
        }
        if let Some((wrapper, _)) = callgrind {
            o.gateway_binary = Some(wrapper.clone());
            o.worker_command = Some(hermes_tests::harness::binaries().worker.clone());
        } else if let Some(wrapper) = prefix_wrapper() {
            o.gateway_binary = Some(wrapper);
            o.worker_command = Some(hermes_tests::harness::binaries().worker.clone());
        }
    })
    .await;
    rig.ask_in(users[0], users[0], "warm up").await;
    let filled = match mode {
        WorkerMode::Pool => pool_size,
        WorkerMode::PerRequest => 1,
    };
    assert!(
        eventually(PATIENCE, || rig.gateway.workers().len() >= filled).await,
        "the pool did not fill\n{}",
        rig.gateway.log()
    );
    rig
}

/// One round of a row: its chats send `n` messages in all (the first numbered `already`).
async fn measure_round(rig: &Rig, users: &[i64], n: usize, already: usize) -> Throughput {
    let cpu_before = CpuSnapshot::take(rig);
    let polls_before = rig.telegram.calls("getUpdates");
    let typing_before = rig.telegram.calls("sendChatAction");
    let started = Instant::now();
    chats_talk(rig, users, n, already).await;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_after = CpuSnapshot::take(rig);
    let secs = |ticks: u64| ticks as f64 / TICKS_PER_S;
    Throughput {
        messages: n,
        gateway_s: secs(cpu_after.gateway.own.saturating_sub(cpu_before.gateway.own)),
        workers_s: secs(cpu_before.worker_ticks_until(&cpu_after)),
        bench_s: secs(cpu_after.bench.saturating_sub(cpu_before.bench)),
        wall_s,
        machine_busy_ticks: cpu_after.machine.0.saturating_sub(cpu_before.machine.0),
        machine_ticks: cpu_after.machine.1.saturating_sub(cpu_before.machine.1),
        typing_calls: rig.telegram.calls("sendChatAction") - typing_before,
        polls: rig.telegram.calls("getUpdates") - polls_before,
    }
}

/// With `HERMES_BENCH_CALLGRIND=DIR` set, the throughput rows run the gateway under
/// `valgrind --tool=callgrind` (its workers natively) and dump the instructions of the
/// burst alone into DIR: a before/after measure of the gateway's own CPU cost that a busy
/// machine does not blur. The rates measured then are meaningless.
fn callgrind_wrapper() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(std::env::var_os("HERMES_BENCH_CALLGRIND")?);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let wrapper = dir.join("gateway-under-callgrind.sh");
    write_gateway_wrapper(
        &wrapper,
        &format!(
            "exec valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file={}/callgrind.out.%p",
            dir.display()
        ),
    );
    Some((wrapper, dir))
}

/// Writes `wrapper`, a shell script that runs the gateway after `prefix` on its line.
fn write_gateway_wrapper(wrapper: &std::path::Path, prefix: &str) {
    let script = format!(
        "#!/bin/sh\n{prefix} {} \"$@\"\n",
        hermes_tests::harness::binaries().gateway.display()
    );
    std::fs::write(wrapper, script).unwrap_or_else(|e| panic!("{}: {e}", wrapper.display()));
    std::fs::set_permissions(wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", wrapper.display()));
}

/// With `HERMES_BENCH_GATEWAY_PREFIX='mkdir -p /tmp/st/$$; exec strace -D -f -ff -o /tmp/st/$$/t'`
/// (a shell line ending in a command; `$$` is the gateway's pid), the throughput and
/// start-up rows run the gateway under that command: where its time goes, by system call
/// or by function. The rates measured then are meaningless.
fn prefix_wrapper() -> Option<PathBuf> {
    let prefix = std::env::var("HERMES_BENCH_GATEWAY_PREFIX").ok()?;
    let wrapper =
        std::env::temp_dir().join(format!("hermes-bench-prefix-{}.sh", std::process::id()));
    write_gateway_wrapper(&wrapper, &prefix);
    Some(wrapper)
}

fn callgrind_control(action: &str, pid: i32) {
    let status = std::process::Command::new("callgrind_control")
        .arg(action)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("callgrind_control: {e}"));
    assert!(status.success(), "callgrind_control {action} {pid} failed");
}

/// SIGKILL the pool's only worker, send a message: time until it is answered.
async fn recovery(n: usize) -> Stats {
    let rig = Rig::start(WorkerMode::Pool, |o| {
        product_defaults(o);
        o.pool_size = 1;
    })
    .await;
    rig.ask("warm up").await;
    let mut samples = Vec::new();
    for i in 0..n {
        let Some(worker) = rig.gateway.workers().first().map(|w| w.pid) else {
            panic!("no worker\n{}", rig.gateway.log());
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL);
        let killed = Instant::now();
        let reply = rig.ask(&format!("after kill {i}")).await;
        samples.push(ms(reply.at.duration_since(killed)));
        assert!(
            eventually(PATIENCE, || rig
                .gateway
                .workers()
                .iter()
                .any(|w| w.pid != worker))
            .await,
            "no replacement worker"
        );
    }
    stats(samples)
}

struct Footprint {
    idle_kib: u64,
    after_jobs_kib: u64,
    after_failures_kib: u64,
    worker_kib: u64,
    threads: u64,
}

async fn footprint(n: usize) -> Footprint {
    let users: Vec<i64> = (0..10).map(|i| 80_000 + i).collect();
    let rig = Rig::start(WorkerMode::Pool, |o| {
        product_defaults(o);
        o.allowed_users = users.clone();
        o.max_retries = 0;
        o.quota_cooldown_secs = Some(0);
    })
    .await;
    assert!(eventually(PATIENCE, || rig.gateway.workers().len() == 2).await);
    assert!(rig.telegram.wait_for_polls(1, PATIENCE).await);
    let idle_kib = procs::rss_kib(rig.pid).unwrap_or(0);
    let worker_kib = rig
        .gateway
        .workers()
        .first()
        .and_then(|w| procs::rss_kib(w.pid))
        .unwrap_or(0);
    chats_talk(&rig, &users, n, 0).await;
    let after_jobs_kib = procs::rss_kib(rig.pid).unwrap_or(0);
    rig.provider.push_n(ProviderReply::status(500, "{}"), n);
    chats_talk(&rig, &users, n, n).await;
    let after_failures_kib = procs::rss_kib(rig.pid).unwrap_or(0);
    let threads = procs::threads(rig.pid).unwrap_or(0);
    Footprint {
        idle_kib,
        after_jobs_kib,
        after_failures_kib,
        worker_kib,
        threads,
    }
}

/// `n` messages spread over `users`, every chat sending its next once the last is
/// answered, all chats at once; returns when every reply is out. `already`: messages
/// sent before, for distinct texts.
async fn chats_talk(rig: &Rig, users: &[i64], n: usize, already: usize) {
    let mut chats = Vec::new();
    for (k, user) in users.iter().copied().enumerate() {
        let count = n / users.len() + usize::from(k < n % users.len());
        let before = rig.telegram.sent_count(user);
        let telegram = rig.telegram.clone();
        chats.push(tokio::spawn(async move {
            for j in 0..count {
                telegram.send_text(user, user, &format!("m{} of chat {user}", already + j));
                let got = telegram
                    .wait_for_chat_count(user, before + j + 1, PATIENCE)
                    .await;
                if got < before + j + 1 {
                    return Err(format!("chat {user}: no reply to its message {j}"));
                }
            }
            Ok(())
        }));
    }
    for chat in chats {
        if let Err(e) = chat.await.unwrap_or_else(|e| Err(e.to_string())) {
            panic!("{e}\n{}", rig.gateway.log());
        }
    }
}

struct Startup {
    first_poll_ms: f64,
    ready_ms: f64,
}

async fn startup(n: usize) -> Startup {
    let mut first_poll = Vec::new();
    let mut ready = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).expect("bind notify socket");
        let telegram = hermes_tests::fake_telegram::FakeTelegram::start().await;
        let provider = hermes_tests::fake_provider::FakeProvider::start().await;
        let mut options = GatewayOptions::new(WorkerMode::Pool);
        product_defaults(&mut options);
        if let Some(w) = prefix_wrapper() {
            options.gateway_binary = Some(w);
            options.worker_command = Some(hermes_tests::harness::binaries().worker.clone());
        }
        options.providers = vec![provider.base_url()];
        options
            .env
            .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
        let exec = Instant::now();
        let gateway = hermes_tests::harness::Gateway::start(&options, &telegram.api_url());
        let mut buf = vec![0u8; 4096];
        let ready_at = loop {
            let n = tokio::time::timeout(PATIENCE, socket.recv(&mut buf))
                .await
                .expect("no READY=1")
                .expect("notify socket");
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                break Instant::now();
            }
        };
        assert!(
            telegram.wait_for_polls(1, PATIENCE).await,
            "no getUpdates\n{}",
            gateway.log()
        );
        let polled = telegram.get_updates_log()[0].at;
        first_poll.push(ms(polled.duration_since(exec)));
        ready.push(ms(ready_at.duration_since(exec)));
        drop(gateway);
    }
    Startup {
        first_poll_ms: stats(first_poll).p50,
        ready_ms: stats(ready).p50,
    }
}

fn print_table(rows: &[Row], quick: bool) {
    println!(
        "\nhermes-gateway benchmark ({}; {} cores; release build: {})\n",
        if quick { "--quick" } else { "full" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        !cfg!(debug_assertions)
    );
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for row in rows {
        let verdict = match row.met {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "",
        };
        println!("{:width$}  {}", row.name, row.value);
        if !row.target.is_empty() {
            println!("{:width$}    target {}: {verdict}", "", row.target);
        }
    }
}

fn write_json(rows: &[Row], quick: bool) -> std::io::Result<PathBuf> {
    let dir = target_profile_dir().join("../bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("latest.json");
    let value = json!({
        "quick": quick,
        "release": !cfg!(debug_assertions),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "rows": rows.iter().map(|r| json!({
            "row": r.name, "value": r.value, "target": r.target, "met": r.met, "data": r.json,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&value).unwrap_or_default(),
    )?;
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}
