//! The operator's path under a real systemd (252, cgroup v2 with the memory controller), in
//! the throwaway VM of `../shared/systemd-sandbox/` (containers on these machines cannot
//! enforce `MemoryMax=` or trigger `OOMPolicy=`). One boot:
//!
//! 0. "Operating it" (`docs/OPERATING.md`), line for line: binaries in `/usr/local/bin`,
//!    the README's own configuration (its `*_env` keys exported in the installing shell,
//!    and the URL of a Bot API stub that holds `getUpdates` for its timeout as Telegram does),
//!    `check-config`, `service install`, `systemctl enable --now`; no drop-in touches
//!    credentials or the environment. Then the unit is active, `hermes-gateway status` with
//!    no arguments exits 0 and names the workers (as root from the state, as another user
//!    from systemd), `journalctl -p warning` has nothing from
//!    the start, every line is a journal entry of its own priority, no secret is in the
//!    unit, and systemd stops the idle unit within 2 s with `Result=success`;
//! 1. a credential gone: `status=243/CREDENTIALS`, and the unit is not restarted;
//! 2. workers OOM-killed inside `MemoryMax=` again and again: the unit stays `active`, same
//!    `MainPID`, `NRestarts=0`, and `memory.events` counts the kills (`OOMPolicy=continue`);
//!    then `systemctl stop` within `TimeoutStopSec`, `Result=success`, nothing left;
//! 3. a poll loop that stalls (Telegram accepts the connection and never answers) gets the
//!    unit restarted by the watchdog (`Result=watchdog`);
//! 4. `kill -TERM` of a worker: replaced, same `MainPID`; of the gateway: it drains, exits
//!    0, and `Restart=always` brings it back;
//! 5. a tool told to stop the service (issue 11): the README's configuration with the tests'
//!    shell MCP server as a tool, the host's fake Telegram and fake provider (reached from
//!    the guest at 10.0.2.2), and a scripted model that makes the tool run `systemctl stop`,
//!    `busctl … StopUnit`, `kill -TERM` of the main PID, and read the gateway's environment,
//!    its credentials and its state database: every attack is an error result holding no
//!    secret and no conversation, each chat still gets its answer, and the unit stays
//!    active with the same `MainPID` and `NRestarts`;
//! 6. several bots on one host (issue 24): the single unit uninstalled, two instances of
//!    the template installed as `docs/OPERATING.md` ("Several bots on one host") says, line
//!    for line, each with its own fake Telegram on the host (two bots); both answer, a
//!    tool of one (`work`, in `per-request` mode: its workers are forked from the worker
//!    template) cannot read the other's state or credentials, `status` lists both
//!    truthfully; then a worker of `family` is OOM-killed inside its `MemoryMax=` and
//!    `work`'s gateway is SIGKILLed: each comes back alone, answering again, and the other's
//!    `MainPID` is unchanged.
//!
//! Skipped, with the reason printed, where the VM cannot start (not root, no apt); under
//! CI (`HERMES_CI`) that fails it instead (`hermes_tests::skip`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hermes_tests::fake_provider::{API_KEY, FakeProvider, ProviderReply};
use hermes_tests::fake_telegram::{FakeTelegram, TOKEN};
use hermes_tests::harness::{PATIENCE, USER, binaries};
use hermes_tests::mcp::tool_results;

struct Vm {
    script: PathBuf,
    cache: PathBuf,
}

impl Vm {
    fn exec(&self, command: &str) -> (bool, String) {
        let output = Command::new(&self.script)
            .arg(&self.cache)
            .arg("exec")
            .arg(command)
            .output();
        match output {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }

    fn run(&self, command: &str) -> String {
        let (ok, out) = self.exec(command);
        assert!(
            ok,
            "in the VM, `{command}` failed:\n{out}\n{}",
            self.journal()
        );
        out
    }

    fn show(&self, property: &str) -> String {
        self.exec(&format!(
            "systemctl show -p {property} --value hermes-gateway"
        ))
        .1
        .trim()
        .to_string()
    }

    /// Polls `condition` (each check is an ssh round trip) until it holds or `timeout`.
    fn wait(&self, timeout: Duration, mut condition: impl FnMut(&Vm) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if condition(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        condition(self)
    }

    /// `systemctl start hermes-gateway`; a failure shows the unit's status and journal.
    fn start_unit(&self) {
        let (started, out) = self.exec("systemctl start hermes-gateway");
        assert!(
            started,
            "in the VM, `systemctl start hermes-gateway` failed:\n{out}\n{}\n{}",
            self.exec("systemctl status --no-pager hermes-gateway").1,
            self.journal()
        );
    }

    fn journal(&self) -> String {
        self.exec("journalctl -u hermes-gateway --no-pager -n 60").1
    }

    /// `hermes-gateway status` as an operator types it, until it exits 0 (or `timeout`).
    /// The unit is active, under the same main process, not restarted since `restarts`.
    fn assert_carried_on(&self, main_pid: &str, restarts: &str) {
        assert_eq!(self.show("ActiveState"), "active", "{}", self.journal());
        assert_eq!(
            self.show("MainPID"),
            main_pid,
            "the gateway was replaced:\n{}",
            self.journal()
        );
        assert_eq!(self.show("NRestarts"), restarts, "{}", self.journal());
    }

    fn healthy_status(&self, timeout: Duration) -> (bool, String) {
        let mut last = String::new();
        let healthy = self.wait(timeout, |vm| {
            let (ok, out) = vm.exec("hermes-gateway status");
            last = out;
            ok
        });
        (healthy, last)
    }

    /// Seconds systemd took to stop the unit (from leaving `active` to `inactive`, as it
    /// records them: not `systemctl`'s own start, which on this emulated CPU took up to half
    /// a second more), and its Result.
    fn timed_stop(&self) -> (f64, String) {
        self.run("systemctl stop hermes-gateway");
        let micros = |property: &str| -> Option<u64> { self.show(property).trim().parse().ok() };
        let took = match (
            micros("ActiveExitTimestampMonotonic"),
            micros("InactiveEnterTimestampMonotonic"),
        ) {
            (Some(left), Some(stopped)) if stopped >= left => (stopped - left) as f64 / 1e6,
            _ => f64::MAX,
        };
        (took, self.show("Result"))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg(&self.cache)
            .arg("down")
            .output();
    }
}

fn sandbox_script() -> Option<PathBuf> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/systemd-sandbox/boot-systemd.sh");
    path.is_file().then_some(path)
}

/// Boots the VM with `share` at /mnt/host, or says why it cannot.
fn boot(share: &Path) -> Result<Vm, String> {
    let script = sandbox_script().ok_or("../shared/systemd-sandbox/boot-systemd.sh not found")?;
    if !nix::unistd::geteuid().is_root() {
        return Err("the VM needs root".into());
    }
    // Kept between runs on one machine: building the image takes minutes.
    let cache = std::env::var_os("SDSB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hermes-systemd-sandbox"));
    // The script does not lock its cache; .ci/run builds the image beside the earlier tests
    // under this same lock (flock(1)), and this waits for it rather than build it twice at
    // once.
    let mut lock_path = cache.clone().into_os_string();
    lock_path.push(".lock");
    let output = Command::new("flock")
        .arg(&lock_path)
        .arg(&script)
        .arg(&cache)
        .arg("up")
        .env("SDSB_SHARE", share)
        .env("SDSB_MEM", "1024")
        .output()
        .map_err(|e| format!("cannot run the sandbox script: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the VM did not start: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    Ok(Vm { script, cache })
}

/// The VM's Bot API stub: `getMe` answers, `getUpdates` is held for its timeout.
const TELEGRAM_STUB: &str = include_str!("../vm/telegram-stub.py");
const STUB_URL: &str = "http://127.0.0.1:8081";
/// Accepts connections and never answers: a stalled Telegram.
const STALL_URL: &str = "http://127.0.0.1:8082";
/// The fakes' own secrets (the in-guest stub takes any token): the same credentials serve
/// the stub of the operator's path and the host's fakes of the tool attacks.
const PROVIDER_KEY: &str = API_KEY;
/// The host as the guest sees it (QEMU user networking): the fakes listen on the host's
/// 127.0.0.1.
const HOST_FROM_GUEST: &str = "10.0.2.2";
/// Said in a chat before the attacks, so the state database holds it: no tool result may.
const HISTORY: &str = "the launch code is swordfish-7731";

/// A Markdown file of the repository, by its path from the root (`docs/OPERATING.md`).
fn doc(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The lines of the first fenced block of `language` after `heading` in `doc`.
fn doc_block(doc: &str, heading: &str, language: &str) -> Vec<String> {
    let lines: Vec<&str> = doc.lines().collect();
    let from = lines
        .iter()
        .position(|l| l.trim() == heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let fence = format!("```{language}");
    let start = from
        + lines[from..]
            .iter()
            .position(|l| l.trim() == fence)
            .unwrap_or_else(|| panic!("no {fence} block after {heading:?}"))
        + 1;
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.trim() == "```")
            .expect("the block's end");
    let indent = lines[start].len() - lines[start].trim_start().len();
    lines[start..end]
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").to_string())
        .collect()
}

/// The README's configuration (step 3 of "Running it for real"), pointed at `api_url`,
/// with `extra` appended (a `[workers]` table for the incidents).
fn configuration(api_url: &str, extra: &str) -> String {
    let mut lines = doc_block(&doc("README.md"), "## Running it for real", "toml");
    let telegram = lines
        .iter()
        .position(|l| l == "[telegram]")
        .expect("[telegram]");
    lines.insert(telegram + 1, format!("api_url = \"{api_url}\""));
    format!("{}\n{extra}", lines.join("\n"))
}

/// The README's configuration pointed at the host's fakes, with the tests' shell MCP server
/// (shared at /mnt/host) as the tool `shell`, sandboxed as by default.
fn tools_configuration(telegram: &FakeTelegram, provider: &FakeProvider) -> String {
    let guest = |url: String| url.replace("127.0.0.1", HOST_FROM_GUEST);
    let readme = configuration(&guest(telegram.api_url()), "");
    let users = "allowed_users = [123456789]";
    let base_url = "base_url = \"https://api.openai.com/v1\"";
    assert!(
        readme.contains(users) && readme.contains(base_url),
        "{readme}"
    );
    let toml = readme.replacen(users, &format!("allowed_users = [{USER}]"), 1);
    let toml = toml.replacen(
        base_url,
        &format!("base_url = \"{}\"", guest(provider.base_url())),
        1,
    );
    format!(
        "{toml}\n[[tools.mcp]]\nname = \"shell\"\ncommand = \"/mnt/host/mcp-server\"\ntimeout_secs = 30\n"
    )
}

/// Sends `text` in [`USER`]'s chat; the model calls `shell__shell` with `command` (if any),
/// then answers `answer`. The tool result the model was sent (if a tool was called), once
/// the chat has `answer`.
fn ask(
    runtime: &tokio::runtime::Runtime,
    telegram: &FakeTelegram,
    provider: &FakeProvider,
    text: &str,
    command: Option<&str>,
    answer: &str,
) -> Option<String> {
    if let Some(command) = command {
        let arguments = serde_json::json!({ "command": command }).to_string();
        provider.push_for(
            text,
            ProviderReply::tool_calls(&[(&call_id(answer), "shell__shell", &arguments)]),
        );
    }
    provider.push_for(text, ProviderReply::Text(answer.into()));
    let asked = Instant::now();
    telegram.send_text(USER, USER, text);
    let reply = runtime.block_on(telegram.wait_for_sent(
        |m| m.chat_id == USER && m.at >= asked && m.text == answer,
        PATIENCE * 2,
    ));
    assert!(
        reply.is_some(),
        "no {answer:?} in the chat after {text:?}: {:#?}",
        telegram.sent_to(USER)
    );
    command?;
    // Earlier calls are in the conversation too: this one's result carries its own id.
    provider
        .requests()
        .iter()
        .flat_map(tool_results)
        .find(|(id, _)| *id == call_id(answer))
        .map(|(_, content)| content)
}

/// The id of the tool call answered by `answer`, unique in the conversation.
fn call_id(answer: &str) -> String {
    format!("call-{answer}")
}

/// The workers of the incidents: one, quick to stop, restarts never paused.
fn workers(command: &str) -> String {
    format!(
        "[workers]\npool_size = 1\ncommand = \"{command}\"\nmemory_limit_mb = 0\nkill_grace_secs = 1\nshutdown_drain_secs = 2\nmax_restarts = 1000\n"
    )
}

#[test]
fn the_unit_under_a_real_systemd() {
    let began = Instant::now();
    let share = tempfile::tempdir().expect("tempdir");
    // The host's fakes for the tool attacks (5.), served by this runtime's threads while
    // the test's own thread drives the VM.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let telegram = runtime.block_on(FakeTelegram::start());
    let provider = runtime.block_on(FakeProvider::start());
    // The two bots of 6., each a Telegram of its own.
    let family_telegram = runtime.block_on(FakeTelegram::start());
    let work_telegram = runtime.block_on(FakeTelegram::start());
    let files = [
        ("hermes.toml", configuration(STUB_URL, "")),
        (
            "oom.toml",
            configuration(STUB_URL, &workers("/mnt/host/alloc-at-start")),
        ),
        (
            "stall.toml",
            configuration(STALL_URL, &workers("/mnt/host/bad-worker")),
        ),
        (
            "calm.toml",
            configuration(STUB_URL, &workers("/mnt/host/bad-worker")),
        ),
        ("tools.toml", tools_configuration(&telegram, &provider)),
        (
            "family.toml",
            configuration(
                &family_telegram
                    .api_url()
                    .replace("127.0.0.1", HOST_FROM_GUEST),
                &workers("/mnt/host/bad-worker"),
            )
            .replacen(
                "allowed_users = [123456789]",
                &format!("allowed_users = [{USER}]"),
                1,
            ),
        ),
        // `work` runs a fresh worker per job, forked from the template, so its tools'
        // attacks come from forked workers under the unit's sandbox.
        (
            "work.toml",
            format!(
                "{}\n[workers]\nmode = \"per-request\"\n",
                tools_configuration(&work_telegram, &provider)
            ),
        ),
        ("telegram-stub.py", TELEGRAM_STUB.to_string()),
    ];
    for (name, text) in files {
        std::fs::write(share.path().join(name), text).expect("write");
    }
    // The binaries this test run built, not a release build of its own: the operator's
    // `cargo build --release` differs only in optimisation, and compiling it was most of the
    // eight minutes this test took in the README's test command from a fresh clone.
    let bins = hermes_tests::harness::binaries();
    let vm = match boot(share.path()) {
        Ok(vm) => vm,
        Err(reason) => {
            hermes_tests::skip::skip(&format!("the VM cannot start: {reason}"));
            return;
        }
    };
    let booted = began.elapsed();
    println!("the VM booted in {:.0} s", booted.as_secs_f64());
    vm.run("systemd-run --unit=telegram-stub python3 /mnt/host/telegram-stub.py");
    vm.run("systemd-run --unit=stall-telegram python3 -c \"import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 8082)); s.listen(100); time.sleep(100000)\"");
    // The test's own misbehaving worker, from this test's build.
    let bad_worker = binaries().gateway.with_file_name("bad-worker");
    for (from, name) in [
        (&bins.gateway, "hermes-gateway"),
        (&bins.worker, "hermes-worker"),
        (&bad_worker, "bad-worker"),
    ] {
        std::fs::copy(from, share.path().join(name)).unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
    std::os::unix::fs::symlink("bad-worker", share.path().join("alloc-at-start")).expect("symlink");
    std::fs::copy(hermes_tests::mcp::server(), share.path().join("mcp-server"))
        .expect("copy mcp-server");
    println!(
        "binaries copied after {:.0} s",
        began.elapsed().as_secs_f64()
    );

    // 0. "Operating it" (docs/OPERATING.md), line for line, in one shell: the exported
    // secrets are the installing shell's, as an operator's would be.
    let install: Vec<String> = doc_block(&doc("docs/OPERATING.md"), "## Operating it", "sh")
        .into_iter()
        .map(|l| {
            l.replace(
                "TELEGRAM_BOT_TOKEN=...",
                &format!("TELEGRAM_BOT_TOKEN={TOKEN}"),
            )
            .replace(
                "OPENAI_API_KEY=...",
                &format!("OPENAI_API_KEY={PROVIDER_KEY}"),
            )
        })
        .collect();
    assert!(
        install
            .iter()
            .any(|l| l.starts_with("hermes-gateway service install"))
            && install.iter().any(|l| l.contains(TOKEN)),
        "{install:#?}"
    );
    let script = format!("set -e\ncd /mnt/host\n{}\n", install.join("\n"));
    let installed = vm.run(&script);
    assert!(installed.contains("configuration OK"), "{installed}");
    assert!(
        installed.contains("stored TELEGRAM_BOT_TOKEN")
            && installed.contains("stored OPENAI_API_KEY"),
        "{installed}"
    );
    assert_eq!(vm.show("ActiveState"), "active", "{}", vm.journal());
    let (healthy, status) = vm.healthy_status(Duration::from_secs(60));
    assert!(healthy, "{status}\n{}", vm.journal());
    assert!(
        status.contains("(healthy)") && status.contains("workers: 2 idle"),
        "{status}"
    );
    assert!(status.contains("long poll open since"), "{status}");
    // A user who is not root cannot read the dynamic user's private state: systemd's word.
    let (ok, as_nobody) = vm.exec("runuser -u nobody -- hermes-gateway status");
    assert!(ok, "{as_nobody}");
    assert!(
        as_nobody.contains("(healthy), as systemd reports it"),
        "{as_nobody}"
    );
    // As docs/OPERATING.md says: nothing at priority warning or above. (A guarantee the
    // sandbox cannot keep would be information while no tool is configured, a warning once
    // one is: phase 5 checks that there is none.)
    let warnings = vm.run("journalctl -u hermes-gateway -p warning -b --no-pager -o cat");
    let noise: Vec<&str> = warnings
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("-- "))
        .collect();
    assert!(
        noise.is_empty(),
        "start-up noise at priority warning or above:\n{warnings}"
    );
    // Journal-native: no second timestamp in the message, priorities by level.
    let entries = vm.run(
        "journalctl -u hermes-gateway -b -o verbose --no-pager SYSLOG_IDENTIFIER=hermes-gateway",
    );
    assert!(entries.contains("PRIORITY=5"), "{entries}");
    assert!(
        entries.contains("MESSAGE=hermes-gateway running"),
        "{entries}"
    );
    let (_, unit) = vm.exec("cat /etc/systemd/system/hermes-gateway.service");
    assert!(
        !unit.contains(TOKEN) && !unit.contains(PROVIDER_KEY),
        "a secret is in the unit:\n{unit}"
    );
    assert!(
        unit.contains("LoadCredentialEncrypted=TELEGRAM_BOT_TOKEN:/etc/hermes/credentials/TELEGRAM_BOT_TOKEN.cred"),
        "{unit}"
    );
    // Installing again from a shell without the variables keeps what was stored.
    let stored = vm.run("sha256sum /etc/hermes/credentials/*");
    vm.run("env -u TELEGRAM_BOT_TOKEN -u OPENAI_API_KEY hermes-gateway service install --config /etc/hermes/hermes.toml");
    assert_eq!(vm.run("sha256sum /etc/hermes/credentials/*"), stored);
    let (_, unit) = vm.exec("cat /etc/systemd/system/hermes-gateway.service");
    assert!(
        unit.contains("LoadCredentialEncrypted=OPENAI_API_KEY:"),
        "{unit}"
    );
    let (idle_stop, idle_result) = vm.timed_stop();
    assert_eq!(idle_result, "success", "{}", vm.journal());
    println!(
        "operator path: installed as docs/OPERATING.md says, healthy, no warnings; idle stop {idle_stop:.2} s"
    );
    // Where the stop's time went, as the journal saw it (the gateway's part and systemd's).
    println!(
        "{}",
        vm.run("journalctl -b --no-pager -o short-precise -n 40 | grep -iE 'stopp|SIGTERM|deactivated|hermes-gateway\\[|worker' | tail -n 15")
    );

    // 1. A credential gone: systemd cannot start it (243/CREDENTIALS), and does not retry.
    vm.run("mv /etc/hermes/credentials/OPENAI_API_KEY.cred /root/");
    let (started, _) = vm.exec("systemctl start hermes-gateway");
    assert!(!started, "started without its credential");
    assert!(vm.wait(Duration::from_secs(15), |vm| vm.show("ActiveState")
        == "failed"));
    assert_eq!(vm.show("ExecMainStatus"), "243", "{}", vm.journal());
    std::thread::sleep(Duration::from_secs(6)); // past RestartSec=5
    assert_eq!(vm.show("NRestarts"), "0", "{}", vm.journal());
    assert_eq!(vm.show("ActiveState"), "failed", "{}", vm.journal());
    vm.run("mv /root/OPENAI_API_KEY.cred /etc/hermes/credentials/ && systemctl reset-failed hermes-gateway");
    println!("credentials: a missing one is status=243/CREDENTIALS, not restarted");

    // 2. Workers OOM-killed inside MemoryMax: the unit carries on. The memory ceiling is
    // the test's own drop-in (it touches neither credentials nor the environment).
    vm.run("cp /mnt/host/oom.toml /etc/hermes/hermes.toml");
    vm.run(
        "mkdir -p /etc/systemd/system/hermes-gateway.service.d && printf '[Service]\\nMemoryMax=120M\\nMemorySwapMax=0\\n' > /etc/systemd/system/hermes-gateway.service.d/memory.conf && systemctl daemon-reload",
    );
    vm.start_unit();
    assert_eq!(vm.show("ActiveState"), "active", "{}", vm.journal());
    let main_pid = vm.show("MainPID");
    assert_ne!(
        main_pid,
        "0",
        "no main process right after start:\n{}",
        vm.journal()
    );
    let oom_kills = |vm: &Vm| -> u64 {
        vm.exec("cat /sys/fs/cgroup/system.slice/hermes-gateway.service/memory.events")
            .1
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        vm.wait(Duration::from_secs(120), |vm| oom_kills(vm) >= 3),
        "fewer than 3 OOM kills: {}\n{}",
        oom_kills(&vm),
        vm.journal()
    );
    vm.assert_carried_on(&main_pid, "0");
    println!(
        "OOM: {} worker OOM kills, unit active, MainPID {main_pid} unchanged, NRestarts=0",
        oom_kills(&vm)
    );
    let started = Instant::now();
    vm.run("systemctl stop hermes-gateway");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "stop took {took:?}");
    assert_eq!(vm.show("Result"), "success", "{}", vm.journal());
    // The bracket keeps grep from matching its own command line.
    let (_, left) =
        vm.exec("ps -eo pid,args | grep -e '[/]mnt/host/alloc' -e '[/]mnt/host/bad' -e '[/]usr/local/bin/hermes' || true");
    assert!(left.trim().is_empty(), "processes left after stop: {left}");
    vm.run(
        "rm /etc/systemd/system/hermes-gateway.service.d/memory.conf && systemctl daemon-reload",
    );
    println!("stop under OOM kills: {took:?}, Result=success, no process left");

    // 3. A stalled poll loop: Telegram accepts and never answers; the watchdog restarts.
    vm.run("cp /mnt/host/stall.toml /etc/hermes/hermes.toml");
    vm.run("printf '[Service]\\nWatchdogSec=3\\n' > /etc/systemd/system/hermes-gateway.service.d/watchdog.conf && systemctl daemon-reload");
    vm.start_unit();
    assert!(
        vm.wait(Duration::from_secs(60), |vm| vm
            .journal()
            .contains("Watchdog timeout")),
        "no watchdog timeout:\n{}",
        vm.journal()
    );
    assert!(vm.wait(
        Duration::from_secs(30),
        |vm| vm.show("NRestarts").parse::<u32>().unwrap_or(0) >= 1
    ));
    println!("watchdog: a stalled poll loop was killed (Watchdog timeout) and restarted");
    vm.run("systemctl stop hermes-gateway stall-telegram");
    vm.run("rm /etc/systemd/system/hermes-gateway.service.d/watchdog.conf && systemctl daemon-reload && systemctl reset-failed hermes-gateway || true");

    // 4. kill -TERM of a worker, then of the gateway.
    vm.run("cp /mnt/host/calm.toml /etc/hermes/hermes.toml && systemctl start hermes-gateway");
    let main_pid = vm.show("MainPID");
    let worker = |vm: &Vm| {
        vm.exec(&format!("pgrep -P {main_pid} bad-worker"))
            .1
            .trim()
            .to_string()
    };
    assert!(
        vm.wait(Duration::from_secs(30), |vm| !worker(vm).is_empty()),
        "{}",
        vm.journal()
    );
    let first = worker(&vm);
    vm.run(&format!("kill -TERM {first}"));
    assert!(
        vm.wait(Duration::from_secs(30), |vm| {
            let w = worker(vm);
            !w.is_empty() && w != first
        }),
        "the worker was not replaced:\n{}",
        vm.journal()
    );
    assert_eq!(vm.show("MainPID"), main_pid);
    // Its death is a warning tagged with its pid: `journalctl WORKER_PID=…` finds it.
    let tagged = vm.run(&format!(
        "journalctl -u hermes-gateway -b -p warning -o cat --no-pager WORKER_PID={first}"
    ));
    assert!(
        tagged.contains("worker") && !tagged.contains("-- No entries --"),
        "no warning carries WORKER_PID={first}:\n{tagged}\n{}",
        vm.journal()
    );
    let restarts = vm.show("NRestarts").parse::<u32>().unwrap_or(0);
    vm.run(&format!("kill -TERM {main_pid}"));
    assert!(
        vm.wait(Duration::from_secs(60), |vm| {
            vm.show("NRestarts").parse::<u32>().unwrap_or(0) > restarts
                && vm.show("ActiveState") == "active"
        }),
        "the gateway did not come back after SIGTERM:\n{}",
        vm.journal()
    );
    assert!(
        vm.journal().contains("received SIGTERM"),
        "{}",
        vm.journal()
    );
    println!(
        "kill -TERM: a worker is replaced under the same MainPID; the gateway drains, exits 0 and is restarted"
    );

    // 5. A tool told to stop the service and read its secrets: the unit carries on.
    vm.run("cp /mnt/host/tools.toml /etc/hermes/hermes.toml && systemctl restart hermes-gateway");
    let (healthy, status) = vm.healthy_status(Duration::from_secs(60));
    assert!(healthy, "{status}\n{}", vm.journal());
    let main_pid = vm.show("MainPID");
    let restarts = vm.show("NRestarts");
    // Landlock ABI 2 on this kernel: no signal scoping and no control of truncation, made
    // up for by a PID namespace per tool server and the seccomp filter, inside the unit's
    // own restrictions (RestrictNamespaces=user pid, SystemCallFilter=).
    let probe = vm.run(&format!(
        "journalctl -u hermes-gateway _PID={main_pid} -o cat --no-pager | grep 'tool sandbox'"
    ));
    assert!(
        probe.contains("tool sandbox: every guarantee holds")
            && probe.contains("a PID namespace per tool server"),
        "the sandbox is weaker in the unit:\n{probe}"
    );
    println!("tools: {}", probe.trim());
    let workers_before = vm.run("pgrep -x hermes-worker | sort").trim().to_string();
    let worker_pids: Vec<&str> = workers_before.lines().collect();
    assert_eq!(
        worker_pids.len(),
        2,
        "the README's pool of two: {workers_before}"
    );
    // A file the service's user owns and may write, outside the tool's scratch directory
    // and grants: in the unit's private /tmp, shared by the gateway and its workers.
    let victim = "/tmp/victim";
    let uid = vm
        .run("stat -c %u /var/lib/private/hermes")
        .trim()
        .to_string();
    vm.run(&format!(
        "d=$(ls -d /tmp/systemd-private-*-hermes-gateway.service-*/tmp) && printf kept > $d/victim && chown {uid} $d/victim && chmod 0600 $d/victim"
    ));
    let since = vm.run("date +%s").trim().to_string();
    let ask = |text: &str, command: Option<&str>, answer: &str| {
        ask(&runtime, &telegram, &provider, text, command, answer)
    };
    ask(&format!("remember: {HISTORY}"), None, "noted");
    // Where the conversation is: the attack on the state must have something to find.
    let stored = vm.run("grep -rl swordfish-7731 /var/lib/private/hermes/ || true");
    assert!(!stored.trim().is_empty(), "the conversation is not stored");
    // The tool works: an error below is a refusal, not a server that never started.
    let works = ask("who are you?", Some("id; echo fine"), "done-0").unwrap_or_default();
    assert!(
        works.contains("fine") && !works.starts_with("error:"),
        "the shell tool does not run in the unit: {works}\n{}",
        vm.journal()
    );
    println!("tools: `id; echo fine` -> {works:?}");
    let attacks = [
        "systemctl stop hermes-gateway".to_string(),
        "busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager StopUnit ss hermes-gateway.service replace".to_string(),
        // systemd gives the service no $MAINPID; the model can be told the number.
        format!("kill -TERM ${{MAINPID:-{main_pid}}}"),
        format!("cat /proc/{main_pid}/environ"),
        "cat ${CREDENTIALS_DIRECTORY:-/run/credentials/hermes-gateway.service}/TELEGRAM_BOT_TOKEN".to_string(),
        "cat /var/lib/hermes/state.db".to_string(),
        // Other workers: Landlock ABI 2 cannot scope signals, the PID namespace hides them.
        format!("kill -TERM {}", worker_pids.join(" ")),
        // Truncation: Landlock ABI 2 does not control it, the seccomp filter refuses it.
        format!("python3 -c \"import os; os.open('{victim}', os.O_RDONLY | os.O_TRUNC)\""),
        format!("truncate -s 0 {victim}"),
    ];
    let secrets = [TOKEN, PROVIDER_KEY, "swordfish", "SQLite format 3"];
    for (i, attack) in attacks.iter().enumerate() {
        let answer = format!("done-{}", i + 1);
        let result = ask(&format!("attack {}", i + 1), Some(attack), &answer)
            .unwrap_or_else(|| panic!("no tool result for {attack:?}"));
        println!("tools: `{attack}` -> {result:?}");
        assert!(
            result.starts_with("error:"),
            "`{attack}` did not fail: {result}"
        );
        // Refused by the sandbox (or hidden by ProtectProc=invisible), not merely by a
        // missing polkit: unsandboxed, `systemctl stop` fails too, with "Transport
        // endpoint is not connected".
        assert!(
            [
                "Operation not permitted",
                "Permission denied",
                "No such file or directory",
                "No such process"
            ]
            .iter()
            .any(|refusal| result.contains(refusal)),
            "`{attack}` was not refused by the sandbox: {result}"
        );
        for secret in secrets {
            assert!(
                !result.contains(secret),
                "`{attack}` handed the model {secret:?}: {result}"
            );
        }
    }
    vm.assert_carried_on(&main_pid, &restarts);
    assert_eq!(
        vm.run("pgrep -x hermes-worker | sort").trim(),
        workers_before,
        "a worker was ended:\n{}",
        vm.journal()
    );
    let kept = vm.run("cat /tmp/systemd-private-*-hermes-gateway.service-*/tmp/victim");
    assert_eq!(kept.trim(), "kept", "the file was truncated");
    // Neither a stop job nor a signal reached it (both are logged the moment they do).
    let after = vm.run(&format!(
        "journalctl -u hermes-gateway --since @{since} -o cat --no-pager"
    ));
    assert!(
        !after.contains("Stopping") && !after.contains("received SIGTERM"),
        "{after}"
    );
    println!(
        "tools: {} attacks refused, unit active, MainPID {main_pid} and NRestarts={restarts} unchanged",
        attacks.len()
    );

    // 6. Several bots on one host: two instances, installed as docs/OPERATING.md says.
    vm.run("hermes-gateway service uninstall && rm -rf /var/lib/hermes /var/lib/private/hermes");
    let install: Vec<String> = doc_block(
        &doc("docs/OPERATING.md"),
        "## Several bots on one host",
        "sh",
    )
    .into_iter()
    .map(|l| {
        l.replace(
            "TELEGRAM_BOT_TOKEN=...",
            &format!("TELEGRAM_BOT_TOKEN={TOKEN}"),
        )
        .replace(
            "OPENAI_API_KEY=...",
            &format!("OPENAI_API_KEY={PROVIDER_KEY}"),
        )
    })
    .collect();
    let script = format!("set -e\ncd /mnt/host\n{}\n", install.join("\n"));
    let installed = vm.run(&script);
    println!("instances: installed as docs/OPERATING.md says:\n{installed}");
    let show = |vm: &Vm, unit: &str, property: &str| {
        vm.exec(&format!("systemctl show -p {property} --value {unit}"))
            .1
            .trim()
            .to_string()
    };
    let (family, work) = ("hermes-gateway@family", "hermes-gateway@work");
    let instance_journal =
        |vm: &Vm, unit: &str| vm.exec(&format!("journalctl -u {unit} --no-pager -n 40")).1;
    for unit in [family, work] {
        assert!(
            vm.wait(Duration::from_secs(60), |vm| show(vm, unit, "ActiveState")
                == "active"),
            "{unit} is not active:\n{}",
            instance_journal(&vm, unit)
        );
    }
    // Each has its own credentials, state, runtime directory and user.
    vm.run("test -f /etc/hermes/credentials/family/TELEGRAM_BOT_TOKEN.cred && test -f /etc/hermes/credentials/work/TELEGRAM_BOT_TOKEN.cred");
    assert_ne!(show(&vm, family, "MainPID"), show(&vm, work, "MainPID"));
    let owners = vm.run(&format!(
        "stat -c %u /proc/{}/ /proc/{}/",
        show(&vm, family, "MainPID"),
        show(&vm, work, "MainPID")
    ));
    let owners: Vec<&str> = owners.split_whitespace().collect();
    assert!(
        owners.len() == 2 && owners[0] != owners[1],
        "the two bots run as one user: {owners:?}"
    );
    // Both answer, each in its own bot.
    let say = |telegram: &FakeTelegram, text: &str, expect: &str| {
        let asked = Instant::now();
        telegram.send_text(USER, USER, text);
        runtime
            .block_on(telegram.wait_for_sent(
                |m| m.chat_id == USER && m.at >= asked && m.text.contains(expect),
                PATIENCE * 2,
            ))
            .is_some()
    };
    assert!(
        say(&family_telegram, "hello family", "ok: hello family"),
        "family did not answer: {:#?}\n{}",
        family_telegram.sent_to(USER),
        instance_journal(&vm, family)
    );
    self::ask(
        &runtime,
        &work_telegram,
        &provider,
        "hello work",
        None,
        "work answers",
    );
    // A tool of `work` cannot read `family`'s state or credentials.
    let family_state = vm.run("grep -rl 'hello family' /var/lib/private/hermes/family/ || true");
    assert!(
        !family_state.trim().is_empty(),
        "family's chat is not stored"
    );
    for (i, attack) in [
        "cat /var/lib/hermes/family/state.db",
        "cat /var/lib/private/hermes/family/state.db",
        "ls /etc/hermes/credentials/family",
        "cat /run/credentials/hermes-gateway@family.service/TELEGRAM_BOT_TOKEN",
    ]
    .iter()
    .enumerate()
    {
        let answer = format!("work-done-{i}");
        let result = self::ask(
            &runtime,
            &work_telegram,
            &provider,
            &format!("work attack {i}"),
            Some(attack),
            &answer,
        )
        .unwrap_or_else(|| panic!("no tool result for {attack:?}"));
        println!("instances: work's tool `{attack}` -> {result:?}");
        assert!(
            result.starts_with("error:"),
            "`{attack}` did not fail: {result}"
        );
        for secret in [TOKEN, PROVIDER_KEY, "hello family", "SQLite format 3"] {
            assert!(
                !result.contains(secret),
                "`{attack}` read {secret:?}: {result}"
            );
        }
    }
    // Its workers came from the template, which is the gateway's child.
    let work_main = show(&vm, work, "MainPID");
    let children = vm.run(&format!(
        "for c in $(cat /proc/{work_main}/task/*/children); do tr '\\0' ' ' < /proc/$c/cmdline; echo; done"
    ));
    assert!(
        children
            .lines()
            .any(|l| l.trim_end().ends_with("hermes-worker zygote")),
        "work's gateway has no worker template:\n{children}"
    );
    println!("instances: work's gateway's children:\n{children}");
    // `status` lists both, truthfully.
    let listed = |vm: &Vm| {
        let (ok, out) = vm.exec("hermes-gateway status");
        (ok, out)
    };
    let mut status_out = String::new();
    assert!(
        vm.wait(Duration::from_secs(30), |vm| {
            let (ok, out) = listed(vm);
            status_out = out;
            ok
        }),
        "status does not say both are healthy:\n{status_out}"
    );
    for (name, unit) in [("family", family), ("work", work)] {
        let pid = show(&vm, unit, "MainPID");
        assert!(
            status_out.lines().any(|l| l.starts_with(name)
                && l.contains("healthy")
                && l.split_whitespace().any(|w| w == pid)),
            "status does not list {name} healthy with pid {pid}:\n{status_out}"
        );
    }
    println!("instances: status lists both:\n{status_out}");
    let json = vm.run("hermes-gateway status --json");
    let rows: serde_json::Value = serde_json::from_str(&json).expect("status --json");
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{json}");
    let (ok, one) = vm.exec("hermes-gateway status work");
    assert!(ok && one.contains("(healthy)"), "{one}");
    // Each one's journal under its own name.
    let tagged = vm.run("journalctl -b --no-pager -o cat -t hermes-gateway-family | grep 'hermes-gateway running' || true");
    assert!(tagged.contains("hermes-gateway running"), "{tagged}");
    let field = vm.run("journalctl -b --no-pager -o cat HERMES_INSTANCE=work | grep 'hermes-gateway running' || true");
    assert!(field.contains("hermes-gateway running"), "{field}");

    // A worker of `family` OOM-killed inside its MemoryMax; `work` is not touched.
    let family_pid = show(&vm, family, "MainPID");
    let work_pid = show(&vm, work, "MainPID");
    vm.run(&format!(
        "systemctl set-property --runtime {family} MemoryMax=150M MemorySwapMax=0"
    ));
    let cgroup = show(&vm, family, "ControlGroup");
    let family_oom = |vm: &Vm| -> u64 {
        // The slice's name has a backslash (`system-hermes\x2dgateway.slice`).
        vm.exec(&format!("cat '/sys/fs/cgroup{cgroup}/memory.events'"))
            .1
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        say(&family_telegram, "alloc", "agent crashed"),
        "no crash reply after the OOM kill: {:#?}\n{}",
        family_telegram.sent_to(USER),
        instance_journal(&vm, family)
    );
    assert!(family_oom(&vm) >= 1, "no OOM kill in {cgroup}");
    assert!(
        say(&family_telegram, "still there?", "ok: still there?"),
        "family did not answer after the OOM kill:\n{}",
        instance_journal(&vm, family)
    );
    assert_eq!(
        show(&vm, family, "MainPID"),
        family_pid,
        "{}",
        instance_journal(&vm, family)
    );
    assert_eq!(
        show(&vm, work, "MainPID"),
        work_pid,
        "{}",
        instance_journal(&vm, work)
    );
    assert_eq!(show(&vm, work, "NRestarts"), "0");
    println!(
        "instances: a worker of family OOM-killed ({} in its cgroup), family answers again; both MainPIDs unchanged",
        family_oom(&vm)
    );
    // `work`'s gateway SIGKILLed: systemd restarts it alone.
    vm.run(&format!("kill -KILL {work_pid}"));
    assert!(
        vm.wait(Duration::from_secs(60), |vm| {
            let pid = show(vm, work, "MainPID");
            show(vm, work, "ActiveState") == "active" && pid != "0" && pid != work_pid
        }),
        "work did not come back after SIGKILL:\n{}",
        instance_journal(&vm, work)
    );
    self::ask(
        &runtime,
        &work_telegram,
        &provider,
        "work again",
        None,
        "work is back",
    );
    assert_eq!(
        show(&vm, family, "MainPID"),
        family_pid,
        "{}",
        instance_journal(&vm, family)
    );
    assert_eq!(show(&vm, family, "NRestarts"), "0");
    assert!(
        say(&family_telegram, "and family?", "ok: and family?"),
        "family stopped answering when work was killed"
    );
    let mut status_out = String::new();
    assert!(
        vm.wait(Duration::from_secs(30), |vm| {
            let (ok, out) = listed(vm);
            status_out = out;
            ok && out_has_pid(&status_out, "work", &show(vm, work, "MainPID"))
        }),
        "status after the restart:\n{status_out}"
    );
    println!("instances: work SIGKILLed and restarted alone; status:\n{status_out}");
    vm.run(&format!("systemctl stop {family} {work}"));

    println!(
        "the VM test took {:.0} s (boot {:.0} s)",
        began.elapsed().as_secs_f64(),
        booted.as_secs_f64()
    );
    // Checked last, so every other incident is still checked while the drain of an idle
    // gateway is slower than it should be. The gateway's own exit is held to 0.5 s on the
    // host (`delivery::an_idle_gateway_exits_within_half_a_second_of_sigterm`). Here, with
    // unoptimised binaries on an emulated CPU, it took 0.26 s alone and 0.95 s with the
    // other tests running beside it; `systemctl stop` timed from outside took 1.55 s that
    // time, which failed the 1 s this bound was. The bound is for what only systemd shows:
    // a stop that waits out a worker's kill grace (2 s), the drain (5 s) or TimeoutStopSec.
    assert!(
        idle_stop < 2.0,
        "systemd took {idle_stop:.2} s to stop the idle unit (more than 2 s)"
    );
}

/// `status`'s list has a line for `name` with `pid`.
fn out_has_pid(status: &str, name: &str, pid: &str) -> bool {
    status
        .lines()
        .any(|l| l.starts_with(name) && l.split_whitespace().any(|w| w == pid))
}
