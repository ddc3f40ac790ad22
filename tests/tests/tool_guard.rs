//! Tools under guard (issue 11), through the real binaries: a prompt-injected model makes a
//! tool attack the gateway, as the issue did with a shell server from PyPI. The tests
//! crate's MCP server offers `shell` (a command line run with `sh -c`, the honest model of
//! such a server) and `connect` (a Unix socket by path or abstract name); the fake
//! provider asks for the attack, then for a plain answer.
//!
//! Each attack must fail (the model reads an error result saying so, and nothing secret),
//! and leave the gateway untouched: the same process, answering the next message. One
//! entry opts out (`sandbox = false`): it really runs unconfined, is warned about, and the
//! gateway still ignores its stop signals (the sender is its own descendant).

use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::{API_KEY, ProviderReply};
use hermes_tests::fake_telegram::TOKEN;
use hermes_tests::harness::{PATIENCE, Rig, USER, eventually};
use hermes_tests::mcp::{self, list, tool_results};
use hermes_tests::procs;
use serde_json::{Value, json};

hermes_tests::both_modes!(
    a_tool_cannot_read_the_gateways_environment_or_memory,
    a_tool_cannot_read_the_state_configuration_or_credentials,
    a_tool_cannot_stop_or_freeze_the_gateway,
    a_tool_cannot_signal_another_worker_or_its_tools,
    a_tool_cannot_reach_the_worker_socket_or_an_abstract_socket,
    a_tool_writes_only_in_its_scratch_directory_which_goes_with_its_worker,
    a_tool_with_sandbox_false_runs_unconfined_and_the_gateway_ignores_its_signals,
);

/// A second user, for a second chat running at the same time.
const OTHER: i64 = 1002;
const CREDENTIAL: &str = "credential-secret-4242";

/// A gateway with the attack server as `guard` (plus `extra` lines in its entry), and
/// `$CREDENTIALS_DIRECTORY` holding a secret, as systemd's `LoadCredential=` would.
struct Guarded {
    rig: Rig,
    /// Holds the credentials directory and anything else the test needs outside the
    /// gateway's own directory.
    outside: tempfile::TempDir,
}

impl Guarded {
    async fn start(mode: WorkerMode, entries: &str, pool_size: usize) -> Guarded {
        let outside = tempfile::tempdir().expect("tempdir");
        let credentials = outside.path().join("credentials");
        std::fs::create_dir(&credentials).expect("credentials dir");
        std::fs::write(credentials.join("telegram-token"), CREDENTIAL).expect("credential");
        let rig = Rig::start(mode, |o| {
            o.pool_size = pool_size;
            o.job_timeout_secs = 60;
            o.allowed_users = vec![USER, OTHER];
            o.extra_toml = entries.to_string();
            o.env.push((
                "CREDENTIALS_DIRECTORY".into(),
                credentials.display().to_string(),
            ));
        })
        .await;
        assert!(
            eventually(PATIENCE, || rig
                .gateway
                .log()
                .contains("hermes-gateway running"))
            .await,
            "the gateway did not start\n{}",
            rig.gateway.log()
        );
        Guarded { rig, outside }
    }

    fn state_dir(&self) -> PathBuf {
        self.rig.gateway.dir.path().join("state")
    }

    /// The model calls `function` with `arguments`, then answers "done"; the tool result
    /// it was sent.
    async fn call(&self, function: &str, arguments: Value) -> String {
        let before = self.rig.provider.request_count();
        self.rig.provider.push(ProviderReply::tool_calls(&[(
            "call_1",
            function,
            &arguments.to_string(),
        )]));
        self.rig.provider.push(ProviderReply::Text("done".into()));
        let reply = self.rig.ask(&format!("please use {function}")).await;
        assert_eq!(reply.text, "done", "{}", self.rig.gateway.log());
        let requests = self.rig.provider.requests();
        // Earlier calls are in the conversation too: this one's result is the last.
        let result = requests
            .get(before + 1)
            .and_then(|r| tool_results(r).pop())
            .map(|(_, content)| content);
        result.unwrap_or_else(|| panic!("no tool result in {requests:#?}"))
    }

    async fn shell(&self, command: &str) -> String {
        self.call("guard__shell", json!({ "command": command }))
            .await
    }
}

/// The attack failed: an error result the model reads, refused by the kernel, holding
/// none of `secrets`.
fn assert_refused(result: &str, secrets: &[&str]) {
    assert!(
        result.starts_with("error:"),
        "not an error result: {result}"
    );
    assert!(
        result.contains("Permission denied") || result.contains("Operation not permitted"),
        "not refused by the sandbox: {result}"
    );
    for secret in secrets {
        assert!(!result.contains(secret), "{secret:?} leaked: {result}");
    }
}

/// The secrets every attack looks for: the bot token and the provider key (in the
/// gateway's environment and the job), the credential, and the names that lead to them.
const SECRETS: &[&str] = &[
    TOKEN,
    API_KEY,
    CREDENTIAL,
    "HERMES_TEST_TELEGRAM_TOKEN",
    "SQLite format 3",
];

/// The attack server, sandboxed (the default).
fn guard() -> String {
    mcp::entry("guard", "")
}

async fn a_tool_cannot_read_the_gateways_environment_or_memory(mode: WorkerMode) {
    let mut g = Guarded::start(mode, &guard(), 2).await;
    let pid = g.rig.pid;
    // The tool itself works: it runs commands and writes where it may.
    let works = g
        .shell("echo fine > \"$TMPDIR/probe\" && cat \"$TMPDIR/probe\"")
        .await;
    assert!(works.contains("fine"), "{works}");
    assert!(!works.starts_with("error:"), "{works}");

    let environ = g.shell(&format!("cat /proc/{pid}/environ")).await;
    assert_refused(&environ, SECRETS);
    let memory = g
        .shell(&format!("exec 3< /proc/{pid}/mem && echo opened"))
        .await;
    assert_refused(&memory, &["opened"]);
    let listing = g.shell(&format!("ls /proc/{pid}/")).await;
    assert_refused(&listing, &["environ"]);
    g.rig.assert_still_serving().await;
}

async fn a_tool_cannot_read_the_state_configuration_or_credentials(mode: WorkerMode) {
    let mut g = Guarded::start(mode, &guard(), 2).await;
    let state = g.state_dir();
    let credentials = g.outside.path().join("credentials");
    for path in [
        state.join("state.db"),
        g.rig.gateway.config_path.clone(),
        credentials.join("telegram-token"),
    ] {
        let result = g.shell(&format!("cat {}", path.display())).await;
        assert_refused(&result, SECRETS);
    }
    for dir in [&state, &credentials] {
        let result = g.shell(&format!("ls -a {}", dir.display())).await;
        assert_refused(&result, &["state.db", "telegram-token"]);
    }
    // Hiding is exact: a file beside them (the test's log of the gateway) stays readable.
    let beside = g
        .shell(&format!(
            "head -c 1 {} > /dev/null && echo readable",
            g.rig.gateway.dir.path().join("gateway.log").display()
        ))
        .await;
    assert!(beside.contains("readable"), "{beside}");
    g.rig.assert_still_serving().await;
}

async fn a_tool_cannot_stop_or_freeze_the_gateway(mode: WorkerMode) {
    let mut g = Guarded::start(mode, &guard(), 2).await;
    let pid = g.rig.pid;
    for attack in [
        format!("kill -TERM {pid}"),
        format!("kill -STOP {pid}"),
        format!("kill -INT -{pid}"),
        // Signal 0 only asks: harmless even where it would be allowed.
        "kill -0 -1".to_string(),
    ] {
        let result = g.shell(&attack).await;
        assert_refused(&result, &[]);
        let state = procs::info(pid).map(|p| p.state);
        assert!(
            !matches!(state, Some('T' | 't' | 'Z') | None),
            "after {attack:?} the gateway is {state:?}"
        );
    }
    let log = g.rig.gateway.log();
    assert!(!log.contains("received SIGTERM"), "{log}");
    assert!(!log.contains("received SIGINT"), "{log}");
    g.rig.assert_still_serving().await;
}

/// Chat A's job runs a tool (a long `sleep`); chat B's tool tries to end or freeze chat
/// A's worker and its tool. Landlock's signal scoping (ABI 6, Linux 6.12) refuses it;
/// without it, a PID namespace per tool server (worker/tests/sandbox.rs runs that here).
async fn a_tool_cannot_signal_another_worker_or_its_tools(mode: WorkerMode) {
    let probe = hermes_worker::sandbox::probe();
    if probe.guarantees[1].level != hermes_worker::sandbox::Level::Full {
        hermes_tests::skip::skip(&probe.guarantees[1].why);
        return;
    }
    let pids = tempfile::tempdir().expect("tempdir");
    let pid_file = pids.path().join("server.pid");
    let extra = format!(
        "args = {}\nwritable = {}\n",
        list(&["--pid-file".to_string(), pid_file.display().to_string()]),
        list(&[pids.path().display().to_string()])
    );
    let mut g = Guarded::start(mode, &mcp::entry("guard", &extra), 2).await;
    let provider = &g.rig.provider;
    provider.push_for(
        "nap",
        ProviderReply::tool_calls(&[("call_1", "guard__sleep", r#"{"secs": 8}"#)]),
    );
    provider.push_for("nap", ProviderReply::Text("rested".into()));
    g.rig.telegram.send_text(USER, USER, "nap");
    let mut server = 0;
    assert!(
        eventually(PATIENCE, || {
            server = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            server > 0
        })
        .await,
        "chat A's tool server never started\n{}",
        g.rig.gateway.log()
    );
    let worker = procs::info(server).expect("chat A's tool server runs").ppid;
    assert_eq!(
        procs::info(worker).map(|w| w.ppid),
        Some(g.rig.pid),
        "its parent is a worker of this gateway"
    );
    let attack = format!("kill -TERM {worker}; kill -STOP {worker}; kill -TERM {server}");
    provider.push_for(
        "attack",
        ProviderReply::tool_calls(&[(
            "call_1",
            "guard__shell",
            &json!({ "command": attack }).to_string(),
        )]),
    );
    provider.push_for("attack", ProviderReply::Text("done".into()));
    let reply = g.rig.ask_in(OTHER, OTHER, "attack").await;
    assert_eq!(reply.text, "done", "{}", g.rig.gateway.log());
    let result = provider
        .requests()
        .iter()
        .filter(|r| r.last_user_text().as_deref() == Some("attack"))
        .filter_map(|r| tool_results(r).pop())
        .map(|(_, content)| content)
        .next()
        .unwrap_or_default();
    assert_refused(&result, &[]);
    assert_eq!(
        result.matches("Operation not permitted").count(),
        3,
        "{result}"
    );
    for pid in [worker, server] {
        let state = procs::info(pid).map(|p| p.state);
        assert!(
            !matches!(state, Some('T' | 't' | 'Z') | None),
            "{pid} is {state:?}"
        );
    }
    let first = g
        .rig
        .telegram
        .wait_for_sent(|m| m.chat_id == USER && m.text == "rested", PATIENCE)
        .await;
    assert!(
        first.is_some(),
        "chat A's job did not finish\n{}",
        g.rig.gateway.log()
    );
    // Chat A was answered without `ask`: its one reply is in the account from here, so a
    // second "rested" still fails the follow-up's count.
    g.rig.assert_replies(1);
    g.rig.assert_still_serving().await;
}

async fn a_tool_cannot_reach_the_worker_socket_or_an_abstract_socket(mode: WorkerMode) {
    let mut g = Guarded::start(mode, &guard(), 2).await;
    let socket = g.rig.gateway.socket_path();
    assert!(Path::new(&socket).exists(), "the worker socket is {socket}");
    let name = format!("hermes-guard-test-{}-{}", std::process::id(), g.rig.pid);
    let listener = UnixListener::bind_addr(
        &SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name"),
    )
    .expect("bind an abstract socket");
    listener.set_nonblocking(true).expect("nonblocking");
    for arguments in [json!({ "path": socket }), json!({ "abstract_name": name })] {
        let result = g.call("guard__connect", arguments).await;
        assert_refused(&result, &["connected"]);
    }
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::WouldBlock),
        "a connection reached the abstract socket"
    );
    assert!(
        !g.rig.gateway.log().contains("worker connection refused"),
        "a connection reached the worker socket\n{}",
        g.rig.gateway.log()
    );
    g.rig.assert_still_serving().await;
}

/// Writes outside the scratch directory fail; inside they work, are gone by the next job,
/// and the directory itself goes with its worker, a killed one included.
async fn a_tool_writes_only_in_its_scratch_directory_which_goes_with_its_worker(mode: WorkerMode) {
    let mut g = Guarded::start(mode, &guard(), 1).await;
    let outside = g.outside.path().join("written");
    let state = g.state_dir().join("state.db");
    let before = std::fs::metadata(&state).expect("state.db").len();
    let result = g
        .shell(&format!(
            "echo x > {}; echo y >> {}",
            outside.display(),
            state.display()
        ))
        .await;
    assert_refused(&result, &[]);
    assert!(!outside.exists(), "wrote outside the scratch directory");
    assert!(
        std::fs::metadata(&state).expect("state.db").len() >= before,
        "the state store was cut"
    );

    let inside = g.shell("pwd; echo kept > here && cat here").await;
    assert!(!inside.starts_with("error:"), "{inside}");
    assert!(inside.contains("kept"), "{inside}");
    let scratch_root = g.state_dir().join("run/scratch");
    let scratch = inside
        .lines()
        .find(|l| l.starts_with(&scratch_root.display().to_string()))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the tool ran outside {}: {inside}", scratch_root.display()));
    let next = g.shell("ls -A; echo listed").await;
    assert!(
        !next.contains("here"),
        "the scratch was not emptied: {next}"
    );

    let left = |root: &Path| std::fs::read_dir(root).map(|d| d.count()).unwrap_or(0);
    match mode {
        WorkerMode::PerRequest => {
            assert!(
                eventually(Duration::from_secs(10), || !scratch.exists()).await,
                "the worker is gone, its scratch is not"
            );
            // What is left is the spare's, started before any job: nothing but its empty
            // output directory.
            assert!(eventually(Duration::from_secs(10), || left(&scratch_root) <= 1).await);
            for dir in std::fs::read_dir(&scratch_root)
                .into_iter()
                .flatten()
                .flatten()
            {
                let names: Vec<_> = std::fs::read_dir(dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name())
                    .collect();
                assert_eq!(names, ["out"], "a spare's scratch holds files");
                assert_eq!(
                    left(&dir.path().join("out")),
                    0,
                    "a spare's output holds files"
                );
            }
        }
        WorkerMode::Pool => {
            let worker = g.rig.gateway.workers();
            assert_eq!(worker.len(), 1, "{worker:?}");
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(worker[0].pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
            assert!(
                eventually(Duration::from_secs(10), || !scratch.exists()).await,
                "a killed worker left its scratch directory"
            );
            assert!(
                eventually(PATIENCE, || left(&scratch_root) == 1).await,
                "its replacement has one of its own"
            );
        }
    }
    g.rig.assert_still_serving().await;
}

async fn a_tool_with_sandbox_false_runs_unconfined_and_the_gateway_ignores_its_signals(
    mode: WorkerMode,
) {
    let mut g = Guarded::start(mode, &mcp::entry("open", "sandbox = false"), 2).await;
    let warned = "\"open\" runs WITHOUT the sandbox";
    g.rig.assert_logged(warned);
    // And again on every reload, so an opt-out is never forgotten.
    g.rig.gateway.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        eventually(PATIENCE, || g.rig.gateway.log().matches(warned).count()
            >= 2)
        .await,
        "{}",
        g.rig.gateway.log()
    );
    let pid = g.rig.pid;
    let status = g
        .call(
            "open__shell",
            json!({ "command": "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status" }),
        )
        .await;
    assert!(status.contains("Seccomp:\t0"), "{status}");
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
    let state = g.state_dir().join("state.db");
    let read = g
        .call(
            "open__shell",
            json!({ "command": format!("head -c 15 {}", state.display()) }),
        )
        .await;
    assert!(
        read.contains("SQLite format 3"),
        "unconfined reads it: {read}"
    );

    // The sender (the tool's shell) is alive while the gateway looks at who it is.
    let kill = g
        .call(
            "open__shell",
            json!({ "command": format!("kill -TERM {pid} && sleep 1 && echo sent") }),
        )
        .await;
    assert!(kill.contains("sent"), "{kill}");
    assert!(
        eventually(PATIENCE, || g
            .rig
            .gateway
            .log()
            .contains("ignoring SIGTERM"))
        .await,
        "{}",
        g.rig.gateway.log()
    );
    g.rig.assert_still_serving().await;
    assert!(
        !g.rig.gateway.log().contains("stopping; jobs in flight"),
        "{}",
        g.rig.gateway.log()
    );
}

/// What the kernel lets the sandbox apply is said, never left to guess: in the log at
/// start-up, in `hermes-gateway status` (text and JSON) and in `check-config`, with every
/// entry that opted out named; a worker whose probe cannot be run is a warning too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_said_at_start_up_in_status_and_in_check_config() {
    let entries = format!("{}{}", guard(), mcp::entry("open", "sandbox = false"));
    let g = Guarded::start(WorkerMode::Pool, &entries, 1).await;
    let gateway = &hermes_tests::harness::binaries().gateway;
    let probe = hermes_worker::sandbox::probe();
    // The probe answers beside start-up, so its lines may come after "running": the
    // summary where every guarantee holds, else a line for each weaker one (a kernel
    // older than this one's).
    let at_start = match probe.weaker() {
        weaker if weaker.is_empty() => vec![probe.summary.clone()],
        weaker => weaker,
    };
    assert!(
        eventually(PATIENCE, || {
            let log = g.rig.gateway.log();
            at_start.iter().all(|line| log.contains(line))
        })
        .await,
        "{at_start:#?}\n{}",
        g.rig.gateway.log()
    );

    let mut status = String::new();
    let said = eventually(PATIENCE, || {
        let output = std::process::Command::new(gateway)
            .args(["status", "--config"])
            .arg(&g.rig.gateway.config_path)
            .output()
            .expect("run status");
        status = String::from_utf8_lossy(&output.stdout).into_owned();
        status.contains(&probe.summary)
    })
    .await;
    assert!(said, "{status}");
    assert!(
        status.contains("without the sandbox (sandbox = false): open"),
        "{status}"
    );
    let json = std::process::Command::new(gateway)
        .args(["status", "--json", "--config"])
        .arg(&g.rig.gateway.config_path)
        .output()
        .expect("run status --json");
    let json: Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    assert_eq!(json["sandbox"]["unsandboxed"], json!(["open"]), "{json}");
    assert_eq!(
        json["sandbox"]["report"]["probed"]["summary"],
        json!(probe.summary),
        "{json}"
    );

    let check = std::process::Command::new(gateway)
        .args(["check-config", "--config"])
        .arg(&g.rig.gateway.config_path)
        .env("HERMES_TEST_TELEGRAM_TOKEN", TOKEN)
        .env("HERMES_TEST_PROVIDER_KEY", API_KEY)
        .output()
        .expect("run check-config");
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{out}");
    assert!(out.contains(&probe.summary), "{out}");
    assert!(out.contains("WITHOUT the sandbox"), "{out}");
    assert!(
        out.contains("warning: tool server \"open\" runs without the sandbox"),
        "{out}"
    );

    // A worker binary whose probe cannot answer: said as loudly.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = hermes_tests::harness::bad_worker(dir.path(), "bad-worker");
    let rig = Rig::start(WorkerMode::Pool, |o| o.worker_command = Some(broken)).await;
    assert!(
        eventually(PATIENCE, || rig
            .gateway
            .log()
            .contains("WARN tool sandbox: unknown, the probe failed"))
        .await,
        "{}",
        rig.gateway.log()
    );
}

hermes_tests::both_modes!(a_tool_cannot_read_the_credentials_a_user_install_stored);

/// `service install --user` (issue 21.5) keeps the secrets as plaintext 0600 files in
/// `~/.config/hermes/credentials`, and a newer systemd keeps a user unit's state in
/// `~/.local/state/hermes`, nowhere near them. A real user install into a temporary HOME
/// (with a `systemctl` that only says yes, as no user manager runs here) lays them out;
/// the gateway then runs as the user unit would start it, and a tool asks for them.
async fn a_tool_cannot_read_the_credentials_a_user_install_stored(mode: WorkerMode) {
    let outside = tempfile::tempdir().expect("tempdir");
    let home = outside.path().join("home");
    let xdg_config = home.join(".config");
    let config = xdg_config.join("hermes/hermes.toml");
    std::fs::create_dir_all(config.parent().expect("a parent")).expect("config dir");
    std::fs::write(
        &config,
        "[telegram]\ntoken_env = \"HERMES_TEST_TELEGRAM_TOKEN\"\n\n[[providers]]\n\
         name = \"p0\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\
         api_key_env = \"HERMES_TEST_PROVIDER_KEY\"\n",
    )
    .expect("write config");
    let bin = outside.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    let systemctl = bin.join("systemctl");
    std::fs::write(&systemctl, "#!/bin/sh\nexit 0\n").expect("write systemctl");
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))
        .expect("chmod systemctl");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let install = std::process::Command::new(&hermes_tests::harness::binaries().gateway)
        .args(["service", "install", "--user", "--config"])
        .arg(&config)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", &xdg_config)
        .env("PATH", &path)
        .env("HERMES_TEST_TELEGRAM_TOKEN", TOKEN)
        .env("HERMES_TEST_PROVIDER_KEY", API_KEY)
        .output()
        .expect("run service install");
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let stored = xdg_config.join("hermes/credentials");
    let token_file = stored.join("HERMES_TEST_TELEGRAM_TOKEN");
    assert_eq!(
        std::fs::read_to_string(&token_file).expect("the stored token"),
        TOKEN
    );
    // What the unit gives the service: the credentials copied to a directory of
    // systemd's, the state where systemd 253 and later keep a user unit's.
    let delivered = outside
        .path()
        .join("run/credentials/hermes-gateway.service");
    std::fs::create_dir_all(&delivered).expect("delivered dir");
    for entry in std::fs::read_dir(&stored).expect("stored credentials") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), delivered.join(entry.file_name())).expect("deliver");
    }
    let state = home.join(".local/state/hermes");
    let mut g = Guarded {
        rig: Rig::start(mode, |o| {
            o.allowed_users = vec![USER];
            o.extra_toml = guard();
            o.state_dir_in_config = false;
            for (key, value) in [
                ("HOME", &home),
                ("XDG_CONFIG_HOME", &xdg_config),
                ("CREDENTIALS_DIRECTORY", &delivered),
                ("STATE_DIRECTORY", &state),
            ] {
                o.env.push((key.into(), value.display().to_string()));
            }
        })
        .await,
        outside,
    };
    assert!(
        eventually(PATIENCE, || g
            .rig
            .gateway
            .log()
            .contains("hermes-gateway running"))
        .await,
        "the gateway did not start\n{}",
        g.rig.gateway.log()
    );
    let read = g.shell(&format!("cat {}", token_file.display())).await;
    // The refusal names the file, so only the values may not appear.
    assert_refused(&read, &[TOKEN, API_KEY]);
    let listing = g.shell(&format!("ls -a {}", stored.display())).await;
    assert_refused(&listing, &["HERMES_TEST_TELEGRAM_TOKEN"]);
    // Hiding is exact: the unit the install wrote beside them (no secret in it) is not.
    let unit = xdg_config.join("systemd/user/hermes-gateway.service");
    let beside = g
        .shell(&format!(
            "grep -c LoadCredential {} && echo readable",
            unit.display()
        ))
        .await;
    assert!(beside.contains("readable"), "{beside}");
    g.rig.assert_still_serving().await;
}
