//! Operations: what systemd and an operator see of the gateway. sd_notify messages
//! (READY, STATUS, WATCHDOG only while polling makes progress, STOPPING) are read from a
//! datagram socket the test binds as `NOTIFY_SOCKET`; `hermes-gateway status` is run as
//! an operator would run it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use hermes_tests::harness::{Gateway, GatewayOptions, PATIENCE, Rig, binaries, eventually};
use nix::sys::signal::Signal;
use tokio::net::UnixDatagram;

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

fn deploy_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `service install --dry-run` prints the unit it would write.
async fn generated_unit(user: bool, dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let config = dir.join("hermes.toml");
    std::fs::write(
        &config,
        "[[providers]]\nname = \"main\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n",
    )
    .expect("write config");
    let mut command = tokio::process::Command::new(&binaries().gateway);
    command
        .args(["service", "install", "--dry-run", "--config"])
        .arg(&config);
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

/// The generated units are the committed ones with this machine's paths: they cannot
/// drift apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_units_match_the_committed_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = std::fs::canonicalize(&binaries().gateway).expect("binary path");
    for (user, file, default_binary, default_config) in [
        (
            false,
            "hermes-gateway.service",
            "/usr/local/bin/hermes-gateway",
            "/etc/hermes/hermes.toml",
        ),
        (
            true,
            "hermes-gateway-user.service",
            "%h/.local/bin/hermes-gateway",
            "%h/.config/hermes/hermes.toml",
        ),
    ] {
        let (unit, config) = generated_unit(user, dir.path()).await;
        let config = std::fs::canonicalize(config).expect("config path");
        let expected = deploy_file(file)
            .replace(default_binary, &binary.display().to_string())
            .replace(default_config, &config.display().to_string());
        assert_eq!(unit, expected, "{file} and the generated unit differ");
    }
}

/// `systemd-analyze verify` accepts both units (where systemd-analyze exists; .ci/run
/// installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_analyze_verifies_the_generated_units() {
    let Ok(analyze) = which("systemd-analyze") else {
        println!("SKIPPED: systemd-analyze is not installed");
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
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or(())
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
