//! `hermes-gateway status` on a host with several bots (issue 24), without systemd: two
//! real gateways whose configurations sit where the `--user` template unit reads them
//! (`$XDG_CONFIG_HOME/hermes/NAME.toml`). With no arguments `status` lists both, a line
//! each (bot, state, pid, uptime, queue, outbox), and exits with the worst of their
//! statuses; `status NAME` is one bot's full report; `--json` for both. A bot SIGKILLed is
//! listed as not running, and how its run ended, while the other is still listed healthy.
//! The real template units under a real systemd are `unit_under_systemd.rs`'s phase 6.

use std::path::Path;
use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::FakeProvider;
use hermes_tests::fake_telegram::FakeTelegram;
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, binaries, eventually};

/// `hermes-gateway status --user ARGS` with `home` as the user's configuration home.
async fn status(home: &Path, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(&binaries().gateway)
        .args(["status", "--user"])
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .env_remove("HERMES_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run status: {e}"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn line_of<'a>(listing: &'a str, name: &str) -> &'a str {
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no line for {name}:\n{listing}"))
}

#[tokio::test]
async fn status_lists_every_bot_on_the_host_and_shows_one() {
    let provider = FakeProvider::start().await;
    let (family_bot, work_bot) = (FakeTelegram::start().await, FakeTelegram::start().await);
    let mut options = GatewayOptions::new(WorkerMode::Pool);
    options.pool_size = 1;
    options.providers = vec![provider.base_url()];
    let family = Gateway::start(&options, &family_bot.api_url());
    let mut work = Gateway::start(&options, &work_bot.api_url());
    let home = tempfile::tempdir().expect("tempdir");
    let configs = home.path().join("hermes");
    std::fs::create_dir_all(&configs).expect("mkdir");
    for (gateway, name) in [(&family, "family"), (&work, "work")] {
        std::fs::copy(&gateway.config_path, configs.join(format!("{name}.toml"))).expect("copy");
    }
    // Not an instance: the single unit's configuration, and another file.
    std::fs::write(configs.join("hermes.toml"), "not toml [").expect("write");
    std::fs::write(configs.join("notes.txt"), "").expect("write");
    for gateway in [&family, &work] {
        let polling = eventually(PATIENCE, || {
            gateway.status_json()["polling"]["state"] == "ok"
                && gateway.status_json()["workers"]["idle"] == 1
        })
        .await;
        assert!(polling, "{}", gateway.log());
    }

    let (code, listing) = status(home.path(), &[]).await;
    assert_eq!(code, 0, "{listing}");
    assert_eq!(
        listing.lines().count(),
        3,
        "a header and two bots:\n{listing}"
    );
    for (gateway, name) in [(&family, "family"), (&work, "work")] {
        let line = line_of(&listing, name);
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[1], "healthy", "{line}");
        assert_eq!(words[2], gateway.pid().to_string(), "{line}");
        // uptime ("N s"), queue 0, outbox 0.
        assert_eq!(&words[5..7], ["0", "0"], "{line}");
    }
    let (code, json) = status(home.path(), &["--json"]).await;
    assert_eq!(code, 0, "{json}");
    let rows: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(rows[0]["name"], "family", "{json}");
    assert_eq!(rows[1]["unit"], "hermes-gateway@work.service", "{json}");
    assert_eq!(rows[1]["pid"], work.pid(), "{json}");
    assert_eq!(rows[1]["status"]["pid"], work.pid(), "{json}");
    let (code, one) = status(home.path(), &["family"]).await;
    assert_eq!(code, 0, "{one}");
    assert!(
        one.contains(&format!("hermes-gateway pid {} (healthy)", family.pid())),
        "{one}"
    );

    // One bot killed: listed as not running, the other still healthy; the worst status.
    work.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(work.wait_exit(Duration::from_secs(10)).await.is_some());
    let (code, listing) = status(home.path(), &[]).await;
    assert_eq!(code, 3, "{listing}");
    assert!(
        line_of(&listing, "work").contains("not running"),
        "{listing}"
    );
    assert!(line_of(&listing, "work").contains("unclean"), "{listing}");
    let family_line = line_of(&listing, "family");
    assert!(
        family_line.contains("healthy") && family_line.contains(&family.pid().to_string()),
        "{listing}"
    );
    let (code, one) = status(home.path(), &["work"]).await;
    assert_eq!(code, 3, "{one}");
    let (code, bad) = status(home.path(), &["../work"]).await;
    assert_eq!(code, 78, "{bad}");
}
