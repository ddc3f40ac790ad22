//! Usage and budgets: what each provider call used (tokens, cached tokens, cost) reaches
//! the store from a whole answer and from a stream's last chunk, and is shown to the user
//! by `/usage` and to the operator by `hermes-gateway usage` and `status`; a user over the
//! daily cap is answered at once, with no provider request made, while another user is
//! not affected; `hermes-worker ask` says what a question used. (A worker of the protocol
//! before usage events is refused at the handshake: `worker_faults.rs`.)
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use std::time::Instant;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::Reported;
use hermes_tests::harness::{GatewayOptions, PATIENCE, Rig, USER, binaries};
use serde_json::Value;

hermes_tests::both_modes!(
    usage_of_a_whole_answer_is_stored_and_shown,
    usage_of_a_streamed_answer_is_stored_and_shown,
    a_user_over_the_daily_cap_is_refused_without_a_provider_request,
);

/// Another allowed user, in their own private chat.
const OTHER: i64 = 2002;

/// Prices of a million tokens: $1 in, $2 out, $0.50 cached.
const PRICES: &str =
    "input_price_per_mtok = 1.0\noutput_price_per_mtok = 2.0\ncached_price_per_mtok = 0.5";

/// Sends `text` as `user` in their private chat and waits for the reply containing
/// `expected`; returns its text.
async fn said(rig: &Rig, user: i64, text: &str, expected: &str) -> String {
    let asked = Instant::now();
    rig.telegram.send_text(user, user, text);
    let reply = rig
        .telegram
        .wait_for_sent(
            |m| m.chat_id == user && m.at >= asked && m.text.contains(expected),
            PATIENCE,
        )
        .await;
    match reply {
        Some(reply) => reply.text,
        None => panic!(
            "no reply containing {expected:?} to {text:?}: {:#?}\n--- gateway log ---\n{}",
            rig.telegram.sent_to(user),
            rig.gateway.log()
        ),
    }
}

/// `hermes-gateway usage --config FILE` (with `args`), as the operator runs it beside the
/// gateway: exit code and output.
async fn usage_command(rig: &Rig, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(&binaries().gateway)
        .args(["usage", "--config"])
        .arg(&rig.gateway.config_path)
        .args(args)
        .output()
        .await
        .expect("run hermes-gateway usage");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn usage_json(rig: &Rig) -> Value {
    let (code, out) = usage_command(rig, &["--json"]).await;
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A whole (non-streamed) answer's usage, priced from the provider's entry: 60 uncached
/// prompt tokens at $1, 40 cached at $0.50, 20 completion at $2 a million: 120 micros.
async fn usage_of_a_whole_answer_is_stored_and_shown(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| o.provider_toml = PRICES.into()).await;
    rig.provider.report_usage(Reported::tokens(100, 20, 40));
    said(&rig, USER, "hello", "echo: hello").await;
    let body = &rig.provider.requests()[0].body;
    assert!(body.get("stream").is_none(), "{body}");

    let shown = said(&rig, USER, "/usage", "Your usage").await;
    for period in ["Today", "This month", "In total"] {
        assert!(
            shown.contains(&format!(
                "{period}: 120 tokens (100 in, 40 of them cached; 20 out) in 1 call, $0.00012"
            )),
            "{shown}"
        );
    }
    assert!(shown.contains("days in UTC"), "{shown}");

    let report = usage_json(&rig).await;
    assert_eq!(report["time_zone"], "UTC");
    assert_eq!(report["users"][0]["user_id"], USER);
    let today = &report["users"][0]["today"];
    assert_eq!(
        (
            &today["calls"],
            &today["prompt_tokens"],
            &today["completion_tokens"],
            &today["cached_tokens"],
            &today["cost_micros"],
        ),
        (
            &Value::from(1),
            &Value::from(100),
            &Value::from(20),
            &Value::from(40),
            &Value::from(120)
        ),
        "{report:#}"
    );
    assert_eq!(report["providers"][0]["provider"], "p0");
    assert_eq!(report["everyone"]["total"]["calls"], 1);
    let (_, text) = usage_command(&rig, &[]).await;
    let user_row = text
        .lines()
        .find(|l| l.starts_with(&format!("user {USER}")))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        user_row.matches("120 tokens, $0.00012").count(),
        3,
        "today, this month, in total: {text}"
    );

    let (_, status) = rig.gateway.status_command(&["--json"]).await;
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(
        status["usage"]["everyone"]["today"]["calls"], 1,
        "{status:#}"
    );
    let (_, status) = rig.gateway.status_command(&[]).await;
    assert!(
        status.contains("usage (days in UTC): today 120 tokens"),
        "{status}"
    );
}

/// A streamed answer asks for the usage chunk and is counted from it, with the cost the
/// provider sent (as OpenRouter does), which wins over the configured prices.
async fn usage_of_a_streamed_answer_is_stored_and_shown(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| {
        o.telegram_toml = "streaming = true\n".into();
        o.provider_toml = PRICES.into();
    })
    .await;
    rig.provider.report_usage(Reported {
        cost: Some(0.25),
        ..Reported::tokens(300, 50, 0)
    });
    said(&rig, USER, "stream this", "echo: stream this").await;
    let body = &rig.provider.requests()[0].body;
    assert_eq!(body["stream"], true, "{body}");
    assert_eq!(body["stream_options"]["include_usage"], true, "{body}");

    let shown = said(&rig, USER, "/usage", "Your usage").await;
    assert!(
        shown.contains("Today: 350 tokens (300 in; 50 out) in 1 call, $0.25"),
        "{shown}"
    );
    let report = usage_json(&rig).await;
    assert_eq!(report["users"][0]["today"]["cost_micros"], 250_000);
    assert_eq!(report["users"][0]["today"]["completion_tokens"], 50);
}

/// 120 tokens a call against a daily cap of 100 a user: the first message crosses it and
/// is answered; the second is refused at once, and the provider never hears of it; another
/// user is answered as before.
async fn a_user_over_the_daily_cap_is_refused_without_a_provider_request(mode: WorkerMode) {
    let rig = Rig::start(mode, |o| {
        o.allowed_users = vec![USER, OTHER];
        o.extra_toml =
            "\n[budgets]\ntime_zone = \"Europe/Berlin\"\n[budgets.per_user]\ndaily_tokens = 100\n"
                .into();
    })
    .await;
    rig.provider.report_usage(Reported::tokens(100, 20, 0));
    said(&rig, USER, "first", "echo: first").await;
    let requests = rig.provider.chat_request_count();
    assert_eq!(requests, 1);

    let refused = said(&rig, USER, "second", "budget").await;
    assert!(
        refused.contains("You have used up your daily budget (100 tokens)")
            && refused.contains("at midnight (Europe/Berlin)"),
        "{refused}"
    );
    assert_eq!(
        rig.provider.chat_request_count(),
        requests,
        "a request was made for a user over the cap"
    );
    rig.assert_logged("refused without a worker");

    said(&rig, OTHER, "mine", "echo: mine").await;
    assert_eq!(rig.provider.chat_request_count(), requests + 1);

    let shown = said(&rig, USER, "/usage", "Your usage").await;
    assert!(
        shown.contains("Your daily budget: 120 of 100 tokens used."),
        "{shown}"
    );
    let report = usage_json(&rig).await;
    let users: Vec<i64> = report["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["user_id"].as_i64())
        .collect();
    assert_eq!(users, [USER, OTHER], "{report:#}");
    assert_eq!(report["everyone"]["today"]["calls"], 2);
    assert_eq!(report["time_zone"], "Europe/Berlin");
}

/// `hermes-worker ask` prints the answer, then what it used at the provider, priced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_shows_usage_after_the_answer() {
    let provider = hermes_tests::fake_provider::FakeProvider::start().await;
    provider.report_usage(Reported::tokens(100, 20, 40));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("hermes.toml");
    let options = GatewayOptions {
        providers: vec![provider.base_url()],
        provider_toml: PRICES.into(),
        ..GatewayOptions::new(WorkerMode::Pool)
    };
    std::fs::write(
        &config,
        options.to_toml("http://127.0.0.1:9", &dir.path().join("state")),
    )
    .expect("write");
    let output = tokio::process::Command::new(&binaries().worker)
        .args(["ask", "--config"])
        .arg(&config)
        .arg("hello")
        .env(
            "HERMES_TEST_PROVIDER_KEY",
            hermes_tests::fake_provider::API_KEY,
        )
        .env("HERMES_TEST_TELEGRAM_TOKEN", "unused")
        .output()
        .await
        .expect("run ask");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "echo: hello"
    );
    let answered = stderr.find("answered").expect("the answer's line");
    let usage = stderr
        .find(
            "usage [p0] model model-0: 100 prompt tokens (40 cached), 20 completion; cost $0.00012",
        )
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(usage > answered, "usage comes after the answer: {stderr}");
}
