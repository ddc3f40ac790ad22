//! Operations: what systemd and an operator see of the gateway. sd_notify messages
//! (READY, STATUS, WATCHDOG only while polling makes progress, STOPPING) are read from a
//! datagram socket the test binds as `NOTIFY_SOCKET`; `hermes-gateway status`,
//! `check-config`, `service install` and `hermes-worker ask` are run as an operator would
//! run them; stops, reloads, a crash loop, and a state store that is damaged or too new.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1; every scenario
//! declared with `both_modes!` runs in both worker modes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{ProviderReply, SEED_402_BODY};
use hermes_tests::fake_telegram::{PollFault, PollOutcome};
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, USER, binaries, eventually};
use nix::sys::signal::Signal;
use tokio::net::UnixDatagram;

hermes_tests::both_modes!(
    sigterm_exits_0_and_leaves_no_worker,
    sigterm_with_a_job_in_flight_tells_the_chat,
    check_config_names_every_problem,
    run_with_invalid_config_exits_78,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_status_and_a_watchdog_that_follows_polling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    let notify = NotifyLog::listen(socket);
    let t0 = Instant::now();
    let mut rig = Rig::start(WorkerMode::Pool, |o| {
        o.poll_timeout_secs = 1;
        o.env = vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "1000000".into()),
        ];
    })
    .await;
    assert!(
        notify.wait_for("READY=1", t0).await,
        "no READY=1: {:?}",
        notify.lines()
    );
    assert!(
        notify
            .wait_for("STATUS=polling ok; workers 2 idle", t0)
            .await,
        "{:?}",
        notify.lines()
    );
    assert!(
        notify.wait_for("WATCHDOG=1", t0).await,
        "{:?}",
        notify.lines()
    );
    assert_eq!(rig.ask("hi").await.text, "echo: hi");

    // Telegram stops answering getUpdates at all: the poll loop makes no progress, so the
    // pings stop (a client timeout ends the stalled poll only after 1 + 5 s).
    rig.telegram.stall_get_updates(true);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let quiet_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        notify.count("WATCHDOG=1", quiet_from),
        0,
        "WATCHDOG=1 sent while polling was stalled: {:?}",
        notify.lines()
    );
    rig.telegram.stall_get_updates(false);
    let resumed = Instant::now();
    assert!(
        notify.wait_for("WATCHDOG=1", resumed).await,
        "the watchdog did not resume"
    );
    rig.gateway.assert_running(rig.pid);

    let stopping = Instant::now();
    rig.gateway.signal(Signal::SIGTERM);
    assert_eq!(
        rig.gateway.wait_exit(PATIENCE).await.and_then(|s| s.code()),
        Some(0)
    );
    assert!(
        notify.count("STOPPING=1", stopping) > 0,
        "{:?}",
        notify.lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_health_degradation_and_who_stopped_it() {
    let mut rig = Rig::start(WorkerMode::Pool, |o| o.poll_timeout_secs = 1).await;
    assert_eq!(rig.ask("hi").await.text, "echo: hi");
    let pid = rig.pid;
    let (code, out) = status_until(&rig.gateway, |c, o| c == 0 && o.contains("1 answered")).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("pid {pid} (healthy)")), "{out}");
    assert!(
        out.contains("provider p0 (model model-0): quota circuit closed"),
        "{out}"
    );

    rig.telegram.refuse_connections().await;
    let (code, out) = status_until(&rig.gateway, |c, _| c == 1).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("degraded: Telegram polling is failing"),
        "{out}"
    );
    rig.telegram.accept_connections().await;

    rig.gateway.signal(Signal::SIGTERM);
    assert_eq!(
        rig.gateway.wait_exit(PATIENCE).await.and_then(|s| s.code()),
        Some(0)
    );
    let (code, out) = status(&rig.gateway).await;
    assert_eq!(code, 3, "{out}");
    let me = std::process::id();
    assert!(
        out.contains(&format!("last shutdown: SIGTERM from pid {me} (")),
        "{out}"
    );

    // The next run in the same state directory reports this clean stop, and after a
    // SIGKILL the run after that reports an unclean end.
    let options = GatewayOptions {
        providers: vec![rig.provider.base_url()],
        poll_timeout_secs: 1,
        ..GatewayOptions::new(WorkerMode::Pool)
    };
    let Rig {
        telegram, gateway, ..
    } = rig;
    let dir = gateway.into_dir();
    let second = Gateway::start_in(dir, &options, &telegram.api_url());
    let (_, out) = status_until(&second, |_, o| o.contains("previous run: SIGTERM from pid")).await;
    assert!(out.contains("previous run: SIGTERM from pid"), "{out}");
    second.signal(Signal::SIGKILL);
    let dir = second.into_dir();
    let third = Gateway::start_in(dir, &options, &telegram.api_url());
    let (_, out) = status_until(&third, |_, o| o.contains("previous run: unclean")).await;
    assert!(out.contains("previous run: unclean"), "{out}");
}

/// Under systemd the gateway keeps its state where its unit says (`$STATE_DIRECTORY`),
/// which the operator's shell does not have. With no `state.dir` in the configuration,
/// `status` without arguments (`$HERMES_CONFIG`) reads that state when it can, and asks
/// systemd when it cannot (a `DynamicUser=` unit's private state): a running, healthy
/// gateway is reported healthy, exit 0, never "not running".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_state_dir_finds_the_running_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let notify = NotifyLog::listen(UnixDatagram::bind(&path).expect("bind notify socket"));
    let unit_state = dir.path().join("unit-state");
    let t0 = Instant::now();
    let rig = Rig::start(WorkerMode::Pool, |o| {
        o.state_dir_in_config = false;
        o.env = vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("STATE_DIRECTORY".into(), unit_state.display().to_string()),
        ];
    })
    .await;
    // Both workers start after the first poll: the status says two once both are up.
    assert!(
        notify
            .wait_for("STATUS=polling ok; workers 2 idle", t0)
            .await,
        "{:?}",
        notify.lines()
    );
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let status = |env: Vec<(&str, std::ffi::OsString)>| {
        let mut command = tokio::process::Command::new(&binaries().gateway);
        command
            .arg("status")
            .current_dir(elsewhere.path())
            .env("HERMES_CONFIG", &rig.gateway.config_path)
            .env_remove("STATE_DIRECTORY")
            .envs(env);
        async move {
            let output = command.output().await.expect("run status");
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )
        }
    };

    // Where the state can be read (run from the unit, or as root), the full report (the
    // status file is rewritten every second, so it may lag the STATUS= line a little).
    let end = Instant::now() + PATIENCE;
    let (code, out) = loop {
        let (code, out) = status(vec![("STATE_DIRECTORY", unit_state.clone().into())]).await;
        if (code == 0 && out.contains("workers: 2 idle")) || Instant::now() >= end {
            break (code, out);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("pid {} (healthy)", rig.pid)), "{out}");
    assert!(out.contains("workers: 2 idle"), "{out}");

    // Where it cannot, systemd's word: its MainPID and the gateway's own STATUS= line.
    let line = notify
        .lines()
        .iter()
        .rev()
        .find_map(|(_, l)| l.strip_prefix("STATUS=").map(str::to_string))
        .expect("a STATUS= line");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let systemctl = bin.join("systemctl");
    std::fs::write(
        &systemctl,
        format!(
            "#!/bin/sh\n# systemctl show hermes-gateway, as systemd answers it\ncat <<'EOF'\nLoadState=loaded\nActiveState=active\nSubState=running\nResult=success\nMainPID={}\nStatusText={line}\nNRestarts=0\nExecMainStatus=0\nEOF\n",
            rig.pid
        ),
    )
    .expect("write systemctl");
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let path_var = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let (code, out) = status(vec![("PATH", path_var)]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("pid {} (healthy), as systemd reports it", rig.pid)),
        "{out}"
    );
    assert!(out.contains("workers 2 idle"), "{out}");
}

/// Telegram holds a long poll while no message comes (here 20 s), as the real one does:
/// that is health. A gateway whose `getMe` answered and whose first long poll is open is
/// healthy at once; after a failed poll it is healthy again as soon as Telegram answers a
/// retry (asked with timeout 0), not one long poll later, and the failure time it logs
/// never includes a long poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_long_poll_is_healthy_from_the_first_poll_and_after_a_failure() {
    let rig = Rig::start(WorkerMode::Pool, |o| o.poll_timeout_secs = 20).await;
    assert!(rig.telegram.wait_for_polls(1, PATIENCE).await);
    let (code, out) = status_until(&rig.gateway, |c, _| c == 0).await;
    assert_eq!(code, 0, "{out}\n{}", rig.gateway.log());
    assert!(out.contains("polling: ok, long poll open since"), "{out}");
    let polls = rig.telegram.get_updates_log();
    assert_eq!(
        polls.len(),
        1,
        "healthy only once the long poll ended: {polls:?}"
    );
    assert_eq!(polls[0].outcome, PollOutcome::Waiting);

    // The held poll returns with a message; the next one fails; the retry asks with
    // timeout 0 and Telegram answers it at once.
    rig.telegram.fail_get_updates(PollFault::bad_gateway_html());
    assert_eq!(rig.ask("hi").await.text, "echo: hi");
    assert!(
        eventually(PATIENCE, || rig
            .gateway
            .log()
            .contains("Telegram reachable again after"))
        .await,
        "{}",
        rig.gateway.log()
    );
    let (code, out) = status_until(&rig.gateway, |c, o| {
        c == 0 && o.contains("long poll open since")
    })
    .await;
    assert_eq!(code, 0, "{out}");
    let polls = rig.telegram.get_updates_log();
    let failed = polls
        .iter()
        .position(|p| matches!(p.outcome, PollOutcome::Fault(_)))
        .expect("the scripted fault was served");
    let retry = &polls[failed + 1];
    assert_eq!(retry.timeout, Some(0), "{polls:?}");
    assert_eq!(retry.outcome, PollOutcome::Answered, "{polls:?}");
    // The gateway says the long poll is open as it sends it: the fake may see it a
    // moment later.
    assert!(
        eventually(PATIENCE, || {
            rig.telegram
                .get_updates_log()
                .last()
                .is_some_and(|p| p.timeout == Some(20) && p.outcome == PollOutcome::Waiting)
        })
        .await,
        "healthy again only once a long poll ended: {:?}",
        rig.telegram.get_updates_log()
    );
    assert!(
        !rig.gateway.log().contains("polling is starting"),
        "{}",
        rig.gateway.log()
    );
}

/// The generated units are the committed ones with this machine's paths, for the README's
/// configuration: the credentials block the secrets it names, `TimeoutStopSec` its drain.
/// They cannot drift apart, and no secret is ever written into a unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_units_match_the_committed_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = std::fs::canonicalize(&binaries().gateway).expect("binary path");
    let encrypts = which("systemd-creds").is_ok();
    for (user, file, default_binary, default_config, default_creds) in [
        (
            false,
            "hermes-gateway.service",
            "/usr/local/bin/hermes-gateway",
            "/etc/hermes/hermes.toml",
            "/etc/hermes/credentials",
        ),
        (
            true,
            "hermes-gateway-user.service",
            "%h/.local/bin/hermes-gateway",
            "%h/.config/hermes/hermes.toml",
            "%h/.config/hermes/credentials",
        ),
    ] {
        let (unit, config) = generated_unit(user, dir.path()).await;
        let config = std::fs::canonicalize(config).expect("config path");
        let creds = dir.path().join("xdg-config/hermes/credentials");
        let creds = if user {
            creds.display().to_string()
        } else {
            default_creds.to_string()
        };
        let mut expected = deploy_file(file)
            .replace(default_binary, &binary.display().to_string())
            .replace(default_config, &config.display().to_string())
            .replace(default_creds, &creds);
        if !user && !encrypts {
            // Without systemd-creds the same secrets are stored as root-only files.
            for name in ["TELEGRAM_BOT_TOKEN", "OPENAI_API_KEY"] {
                expected = expected.replace(
                    &format!("LoadCredentialEncrypted={name}:{creds}/{name}.cred"),
                    &format!("LoadCredential={name}:{creds}/{name}"),
                );
            }
        }
        assert_eq!(unit, expected, "{file} and the generated unit differ");
        assert!(
            !unit.contains(README_SECRET),
            "a secret was written into the unit"
        );
    }
}

/// A configuration whose stop outgrows the installed unit's `TimeoutStopSec` (systemd would
/// kill jobs still draining) is flagged by `check-config`, with the command that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_flags_a_drain_the_installed_unit_cannot_honour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (unit, config) = generated_unit(true, dir.path()).await;
    let units = dir.path().join("xdg-config/systemd/user");
    std::fs::create_dir_all(&units).expect("unit dir");
    std::fs::write(units.join("hermes-gateway.service"), unit).expect("write unit");
    let check = || {
        tokio::process::Command::new(&binaries().gateway)
            .args(["check-config", "--config"])
            .arg(&config)
            .env("XDG_CONFIG_HOME", dir.path().join("xdg-config"))
            .env("TELEGRAM_BOT_TOKEN", README_SECRET)
            .env("OPENAI_API_KEY", README_SECRET)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
    };
    let output = check().await.expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("TimeoutStopSec"), "{stdout}");

    let longer = format!(
        "{}\n[workers]\nshutdown_drain_secs = 60\ncommand = \"{}\"\n",
        readme_configuration(),
        binaries().worker.display()
    );
    std::fs::write(&config, longer).expect("write config");
    let output = check().await.expect("run check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("warning: ")
            && stdout.contains("TimeoutStopSec=17 is shorter than this configuration's stop (72 s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Fix: hermes-gateway service install --user --config"),
        "{stdout}"
    );
}

/// `service install` refuses a configuration whose secret the unit could not deliver,
/// before writing anything, and says the exact command that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_install_refuses_a_secret_the_unit_could_not_deliver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("hermes.toml");
    std::fs::write(&config, readme_configuration()).expect("write config");
    let output = tokio::process::Command::new(&binaries().gateway)
        .args(["service", "install", "--user", "--config"])
        .arg(&config)
        .env("XDG_CONFIG_HOME", dir.path().join("xdg-config"))
        .env("TELEGRAM_BOT_TOKEN", README_SECRET)
        .env_remove("OPENAI_API_KEY")
        .output()
        .await
        .expect("run service install");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("providers[0].api_key_env: OPENAI_API_KEY is not set in this shell"),
        "{stderr}"
    );
    let config = std::fs::canonicalize(&config).expect("config path");
    assert!(
        stderr.contains(&format!(
            "read -rs OPENAI_API_KEY && export OPENAI_API_KEY && hermes-gateway service install --user --config {}",
            config.display()
        )),
        "{stderr}"
    );
    assert!(
        !dir.path().join("xdg-config").exists(),
        "something was written before the refusal"
    );
}

/// `systemd-analyze verify` accepts both units (where systemd-analyze exists; .ci/run
/// installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_analyze_verifies_the_generated_units() {
    let Ok(analyze) = which("systemd-analyze") else {
        hermes_tests::skip::skip("systemd-analyze is not installed (.ci/run installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for user in [false, true] {
        let (unit, _) = generated_unit(user, dir.path()).await;
        let units = tempfile::tempdir().expect("tempdir");
        let path = units.path().join("hermes-gateway.service");
        std::fs::write(&path, unit).expect("write unit");
        // Verified as a system unit in both cases: `--user` needs a running user manager.
        let output = tokio::process::Command::new(&analyze)
            .arg("verify")
            .arg(&path)
            .output()
            .await
            .expect("run systemd-analyze");
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "systemd-analyze verify (user: {user}):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The system unit's hardening stays rated OK or better (2.0 OK on systemd 252): the
    // credentials, the Landlock calls and the tool sandbox's user and PID namespaces
    // must not cost more.
    let (unit, _) = generated_unit(false, dir.path()).await;
    let units = tempfile::tempdir().expect("tempdir");
    let path = units.path().join("hermes-gateway.service");
    std::fs::write(&path, unit).expect("write unit");
    let output = tokio::process::Command::new(&analyze)
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .await
        .expect("run systemd-analyze security");
    let report = String::from_utf8_lossy(&output.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall rating:\n{report}"));
    assert!(
        overall.contains(" OK") || overall.contains(" SAFE"),
        "{overall}"
    );
    println!("{}", overall.trim());
}

/// SIGHUP reloads the configuration without dropping the job in flight; a bad new file
/// keeps the old configuration and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_dropping_jobs_and_keeps_a_good_config() {
    let newcomer = 2002;
    let mut rig = Rig::start(WorkerMode::Pool, |_| {}).await;
    let stranger = rig.ask_in(newcomer, newcomer, "hello?").await;
    assert!(stranger.text.contains("2002"), "{}", stranger.text);

    // A slow job is in flight while the file changes and SIGHUP arrives.
    rig.provider
        .push(hermes_tests::fake_provider::ProviderReply::Delay(
            Duration::from_secs(2),
        ));
    rig.telegram.send_text(
        hermes_tests::harness::USER,
        hermes_tests::harness::USER,
        "slow one",
    );
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    let config = std::fs::read_to_string(&rig.gateway.config_path).expect("read config");
    let widened = config.replace(
        &format!("allowed_users = [{}]", hermes_tests::harness::USER),
        &format!(
            "allowed_users = [{}, {newcomer}]",
            hermes_tests::harness::USER
        ),
    );
    assert_ne!(config, widened);
    std::fs::write(&rig.gateway.config_path, &widened).expect("write config");
    rig.gateway.signal(Signal::SIGHUP);
    assert!(
        eventually(PATIENCE, || rig
            .gateway
            .log()
            .contains("configuration reloaded"))
        .await,
        "{}",
        rig.gateway.log()
    );
    let slow = rig
        .telegram
        .wait_for_chat_messages(hermes_tests::harness::USER, 1, PATIENCE)
        .await;
    assert_eq!(
        slow.first().map(|m| m.text.as_str()),
        Some("echo: slow one")
    );
    assert_eq!(
        rig.ask_in(newcomer, newcomer, "now?").await.text,
        "echo: now?"
    );

    std::fs::write(&rig.gateway.config_path, "this is = = not toml").expect("write config");
    rig.gateway.signal(Signal::SIGHUP);
    assert!(
        eventually(PATIENCE, || rig
            .gateway
            .log()
            .contains("keeping the old configuration"))
        .await,
        "{}",
        rig.gateway.log()
    );
    assert_eq!(
        rig.ask_in(newcomer, newcomer, "still?").await.text,
        "echo: still?"
    );
    rig.gateway.assert_running(rig.pid);
}

async fn sigterm_exits_0_and_leaves_no_worker(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |_| {}).await;
    rig.ask("warm up").await;
    rig.gateway.signal(Signal::SIGTERM);
    let status = rig.gateway.wait_exit(Duration::from_secs(10)).await;
    let status =
        status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM\n{}", rig.gateway.log()));
    assert_eq!(status.code(), Some(0), "{}", rig.gateway.log());
    assert!(
        eventually(Duration::from_secs(5), || rig
            .gateway
            .descendants()
            .is_empty())
        .await,
        "processes left after the gateway exited: {:?}",
        rig.gateway.descendants()
    );
}

async fn sigterm_with_a_job_in_flight_tells_the_chat(mode: WorkerMode) {
    let mut rig = Rig::start(mode, |o| o.job_timeout_secs = 120).await;
    rig.provider.push(ProviderReply::Hang);
    rig.telegram.send_text(USER, USER, "slow question");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
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
        eventually(Duration::from_secs(5), || rig
            .gateway
            .descendants()
            .is_empty())
        .await,
        "processes left after the gateway exited: {:?}",
        rig.gateway.descendants()
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

/// `hermes-worker ask`, the operator's debugging entry point: the same agent, no gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_prints_the_reply_or_the_typed_failure() {
    let provider = hermes_tests::fake_provider::FakeProvider::start_with_key(Some("sk-ask")).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_a_newer_version_is_refused_and_a_corrupt_one_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let conn = rusqlite::Connection::open(state.join("state.db")).expect("db");
    conn.pragma_update(None, "user_version", 99)
        .expect("version");
    drop(conn);
    let provider = hermes_tests::fake_provider::FakeProvider::start().await;
    let telegram = hermes_tests::fake_telegram::FakeTelegram::start().await;
    let options = GatewayOptions {
        providers: vec![provider.base_url()],
        ..GatewayOptions::new(WorkerMode::Pool)
    };
    let mut gateway = Gateway::start_in(dir, &options, &telegram.api_url());
    let status = gateway.wait_exit(PATIENCE).await;
    assert_eq!(status.and_then(|s| s.code()), Some(78), "{}", gateway.log());
    assert!(
        gateway.log().contains("written by a newer hermes-gateway"),
        "{}",
        gateway.log()
    );

    let dir = gateway.into_dir();
    std::fs::write(dir.path().join("state/state.db"), vec![0x42u8; 4096]).expect("corrupt");
    let mut gateway = Gateway::start_in(dir, &options, &telegram.api_url());
    telegram.send_text(USER, USER, "still works?");
    let replies = telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        replies.first().map(|m| m.text.as_str()),
        Some("echo: still works?"),
        "{}",
        gateway.log()
    );
    assert!(
        gateway.log().contains("STATE STORE UNREADABLE"),
        "{}",
        gateway.log()
    );
    assert!(gateway.is_running());
}

/// Restart intensity: a worker that dies on every job must not become a fork loop. Past
/// `max_restarts` deaths in the window, starts pause (visible in `status`) and messages
/// are still answered, at once, with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_intensity_pauses_a_crash_loop_and_still_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = hermes_tests::harness::bad_worker(dir.path(), "bad-worker");
    let mut rig = Rig::start(WorkerMode::PerRequest, |o| {
        o.worker_command = Some(worker);
        o.max_restarts = 2;
        o.pool_size = 1;
    })
    .await;
    for _ in 0..3 {
        assert!(rig.ask("panic").await.text.contains("crashed"));
    }
    let reply = rig.ask("hello").await;
    assert!(
        reply.text.contains("could not be started"),
        "{}",
        reply.text
    );
    rig.assert_logged("pausing worker starts");
    let (code, out) = status_until(&rig.gateway, |_, o| o.contains("backing off")).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 worker slot(s) backing off"), "{out}");
    rig.gateway.assert_running(rig.pid);
}

/// Everything the gateway sent to its notify socket, with arrival times.
#[derive(Clone, Default)]
struct NotifyLog(Arc<Mutex<Vec<(Instant, String)>>>);

impl NotifyLog {
    fn listen(socket: UnixDatagram) -> NotifyLog {
        let log = NotifyLog::default();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines() {
                    sink.0
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), line.to_string()));
                }
            }
        });
        log
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, prefix: &str, since: Instant) -> usize {
        self.lines()
            .iter()
            .filter(|(t, l)| *t >= since && l.starts_with(prefix))
            .count()
    }

    async fn wait_for(&self, prefix: &str, since: Instant) -> bool {
        eventually(PATIENCE, || self.count(prefix, since) > 0).await
    }
}

async fn status(gateway: &Gateway) -> (i32, String) {
    let output = tokio::process::Command::new(&binaries().gateway)
        .args(["status", "--config"])
        .arg(&gateway.config_path)
        .output()
        .await
        .expect("run status");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Runs `hermes-gateway status` until `accept` likes its result (bounded by PATIENCE);
/// returns the last result either way.
async fn status_until(gateway: &Gateway, accept: impl Fn(i32, &str) -> bool) -> (i32, String) {
    let end = Instant::now() + PATIENCE;
    loop {
        let (code, out) = status(gateway).await;
        if accept(code, &out) || Instant::now() >= end {
            return (code, out);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn deploy_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the README's configuration names as secrets is set to in the tests' shells.
const README_SECRET: &str = "123:never-in-a-unit";

/// The configuration of the README's "Running it for real", verbatim.
fn readme_configuration() -> String {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .expect("read README.md");
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .windows(2)
        .position(|w| w[0].trim() == "```toml" && w[1].trim() == "[telegram]")
        .expect("the README's configuration")
        + 1;
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == "```")
            .expect("its end");
    let indent = lines[start].len() - lines[start].trim_start().len();
    let mut text: String = lines[start..end]
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

/// `service install --dry-run` prints the unit it would write for the README's
/// configuration, its secrets exported as the README says.
async fn generated_unit(user: bool, dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let config = dir.join("hermes.toml");
    std::fs::write(&config, readme_configuration()).expect("write config");
    let mut command = tokio::process::Command::new(&binaries().gateway);
    command
        .args(["service", "install", "--dry-run", "--config"])
        .arg(&config)
        .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
        .env("TELEGRAM_BOT_TOKEN", README_SECRET)
        .env("OPENAI_API_KEY", README_SECRET);
    if user {
        command.arg("--user");
    }
    let output = command.output().await.expect("run service install");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (String::from_utf8_lossy(&output.stdout).into_owned(), config)
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
