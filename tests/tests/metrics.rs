//! The metrics endpoint (`[metrics] listen`): scraped as Prometheus would, parsed with a
//! Prometheus text-format parser, its counters move after a message and after a failure,
//! no label carries a user's text or id, and scrapers that hold connections open cannot
//! hold the gateway.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::harness::{PATIENCE, Rig, USER, eventually, eventually_async};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

async fn get(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> Option<String> {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

async fn scrape_tcp(port: u16) -> Option<Scrape> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    parse(&get(stream).await?)
}

async fn scrape_unix(path: &Path) -> Option<Scrape> {
    let stream = tokio::net::UnixStream::connect(path).await.ok()?;
    parse(&get(stream).await?)
}

fn parse(body: &str) -> Option<Scrape> {
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()
}

/// The value of the sample named `metric` whose labels include `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
        })
        .and_then(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            Value::Histogram(_) | Value::Summary(_) => None,
        })
}

/// Every label value of every sample.
fn label_values(scrape: &Scrape) -> Vec<String> {
    scrape
        .samples
        .iter()
        .flat_map(|s| {
            let labels: &HashMap<String, String> = &s.labels;
            labels.values().cloned().collect::<Vec<_>>()
        })
        .collect()
}

async fn rig(listen: &str) -> Rig {
    let listen = listen.to_string();
    Rig::start(WorkerMode::Pool, move |o| {
        o.max_retries = 0;
        o.quota_cooldown_secs = Some(0);
        o.extra_toml = format!("\n[metrics]\nlisten = \"{listen}\"\n");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_after_a_message_and_a_failure_and_labels_carry_no_user_data() {
    let port = free_port();
    let rig = rig(&format!("127.0.0.1:{port}")).await;
    let first = eventually_async(PATIENCE, || scrape_tcp(port))
        .await
        .unwrap_or_else(|| panic!("no scrape\n{}", rig.gateway.log()));
    assert_eq!(
        value(&first, "hermes_messages_received_total", &[]),
        Some(0.0)
    );
    assert_eq!(value(&first, "hermes_outbox_depth", &[]), Some(0.0));
    assert_eq!(
        value(
            &first,
            "hermes_provider_circuit",
            &[("provider", "p0"), ("state", "closed")]
        ),
        Some(1.0),
        "{:?}",
        first.samples
    );

    let secret = "my secret words 4242";
    assert_eq!(rig.ask(secret).await.text, format!("echo: {secret}"));
    rig.provider.push(ProviderReply::status(500, "{}"));
    let failed = rig.ask("this one fails").await;
    assert!(!failed.text.starts_with("echo"), "{}", failed.text);

    let after = scrape_tcp(port).await.expect("scrape");
    assert_eq!(
        value(&after, "hermes_messages_received_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&after, "hermes_answers_total", &[("outcome", "reply")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "hermes_answers_total",
            &[("outcome", "failed"), ("class", "provider_unavailable")]
        ),
        Some(1.0),
        "{:?}",
        after.samples
    );
    assert_eq!(
        value(&after, "hermes_job_duration_seconds_count", &[]),
        Some(2.0),
        "{:?}",
        after.samples
    );
    assert!(value(&after, "hermes_worker_starts_total", &[]).is_some_and(|n| n >= 1.0));
    for label in label_values(&after) {
        assert!(
            !label.contains("secret") && !label.contains(&USER.to_string()),
            "a label carries user data: {label}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapers_that_hold_connections_cannot_hold_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("metrics.sock");
    let rig = rig(&socket.display().to_string()).await;
    assert!(
        eventually_async(PATIENCE, || scrape_unix(&socket))
            .await
            .is_some(),
        "no scrape over the Unix socket\n{}",
        rig.gateway.log()
    );
    // More idle connections than the endpoint serves at once, each sending nothing.
    let mut idle = Vec::new();
    for _ in 0..8 {
        if let Ok(s) = tokio::net::UnixStream::connect(&socket).await {
            idle.push(s);
        }
    }
    // Messages are answered meanwhile (timed once the workers are up: they start beside
    // the first poll, as the endpoint does).
    assert!(
        eventually(PATIENCE, || rig.gateway.status_json()["workers"]["idle"]
            == 2)
        .await,
        "{}",
        rig.gateway.status_json()
    );
    let started = std::time::Instant::now();
    assert_eq!(rig.ask("still here?").await.text, "echo: still here?");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The held connections time out; scraping works again without their help.
    let back = eventually_async(Duration::from_secs(10), || scrape_unix(&socket))
        .await
        .expect("the endpoint did not come back");
    assert_eq!(
        value(&back, "hermes_messages_received_total", &[]),
        Some(1.0)
    );
    drop(idle);
}
