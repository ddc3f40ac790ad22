//! Running the real binaries in tests: build them, write a configuration that points at
//! the fakes, start `hermes-gateway`, and watch its process and its workers.
//!
//! Integration tests start the gateway exactly as an operator would (`hermes-gateway run
//! --config FILE`), with the fake Telegram server and fake provider on 127.0.0.1, so what
//! they prove is what runs in production. Each gateway leads a session of its own, as a
//! service under systemd does, so every process it ever started can be found afterwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hermes_config::WorkerMode;
use tokio::process::{Child, Command};

use crate::fake_provider::{API_KEY, FakeProvider};
use crate::fake_telegram::{FakeTelegram, SentMessage, TOKEN};
use crate::procs;

/// Declares each scenario `async fn name(mode: WorkerMode)` as two tests, `name::pool`
/// and `name::per_request`: every guarantee holds in both worker modes.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pool() {
                super::$name(hermes_config::WorkerMode::Pool).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn per_request() {
                super::$name(hermes_config::WorkerMode::PerRequest).await
            }
        }
    )*};
}

/// The user every test talks as unless it says otherwise; private chat id = user id.
pub const USER: i64 = 1001;
/// How long a test waits for anything the gateway should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Binaries {
    pub gateway: PathBuf,
    pub worker: PathBuf,
}

/// Builds `hermes-gateway` and `hermes-worker` in this test's profile (once per test
/// binary) so a test never runs a stale binary.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        cargo_build();
        let profile_dir = profile_dir();
        let binaries = Binaries {
            gateway: profile_dir.join("hermes-gateway"),
            worker: profile_dir.join("hermes-worker"),
        };
        assert!(
            binaries.gateway.is_file(),
            "{} missing",
            binaries.gateway.display()
        );
        assert!(
            binaries.worker.is_file(),
            "{} missing",
            binaries.worker.display()
        );
        binaries
    })
}

/// Builds every binary of the workspace (the gateway, the worker, this crate's fakes and
/// tools) in this binary's profile, from the workspace root, so a test never runs a stale
/// one. Always the whole workspace, with the features `cargo test --workspace` resolves:
/// building `-p hermes-gateway -p hermes-worker` alone resolved fewer features (this
/// crate's `tokio`, `reqwest` and `rmcp` ones), and compiled tokio and the twenty crates
/// built on it a second time, about 110 s of the first test binary's time in CI.
pub fn cargo_build() {
    cargo_build_profile(!cfg!(debug_assertions));
}

/// `hermes-gateway` and `hermes-worker` as the README has an operator build them
/// (`cargo build --release`: the whole workspace), whatever profile the tests run in.
pub fn release_binaries() -> Binaries {
    cargo_build_profile(true);
    let dir = profile_dir().with_file_name("release");
    Binaries {
        gateway: dir.join("hermes-gateway"),
        worker: dir.join("hermes-worker"),
    }
}

/// A small test target of this crate: naming one makes cargo resolve the dev-dependencies'
/// features too, as the debug test build did, while building only the binaries beside it.
const FEATURES_AS_TESTED: &str = "fakes_are_strict";

fn cargo_build_profile(release: bool) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "--quiet", "--workspace", "--bins"]);
    if release {
        // The operator's build: `cargo build --release`, no test target.
        build.arg("--release");
    } else {
        build.args(["--test", FEATURES_AS_TESTED]);
    }
    // Cargo runs tests with its package variables set (CARGO_PKG_NAME, …); passed on,
    // they would make build scripts that watch them rebuild everything each time.
    for (name, _) in std::env::vars_os() {
        let keep = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS"];
        if let Some(name) = name.to_str()
            && name.starts_with("CARGO_")
            && !keep.contains(&name)
        {
            build.env_remove(name);
        }
    }
    let status = build
        .current_dir(workspace_dir())
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(status.success(), "cargo build (release: {release}) failed");
}

/// `target/<profile>`, where [`cargo_build`] puts binaries.
pub fn target_profile_dir() -> PathBuf {
    profile_dir()
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `target/<profile>`, found from the running test binary (`target/<profile>/deps/…`) or
/// the running tests-crate binary (`target/<profile>/…`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe.parent().unwrap_or_else(|| Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A misbehaving worker binary built by this crate, under the name `as_name` (its fault
/// before any job is chosen by that name; see `src/bin/bad-worker.rs`).
pub fn bad_worker(dir: &Path, as_name: &str) -> PathBuf {
    let original = profile_dir().join("bad-worker");
    assert!(
        original.is_file(),
        "{} missing: build hermes-tests' bins",
        original.display()
    );
    if as_name == "bad-worker" {
        return original;
    }
    let link = dir.join(as_name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&original, &link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    link
}

/// A new directory on `/dev/shm`, when that is a tmpfs.
fn tmpfs_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = nix::sys::statfs::statfs(shm)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !on_tmpfs {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("hermes-run-")
        .tempdir_in(shm)
        .unwrap_or_else(|e| panic!("a runtime directory on {}: {e}", shm.display()));
    Some(dir)
}

/// Everything a test may want to change in the gateway's configuration.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub mode: WorkerMode,
    pub pool_size: usize,
    pub job_timeout_secs: u64,
    /// None: the real `hermes-worker`.
    pub worker_command: Option<PathBuf>,
    pub allowed_users: Vec<i64>,
    /// Base URLs of the providers, in chain order.
    pub providers: Vec<String>,
    pub max_retries: u32,
    pub poll_timeout_secs: u32,
    /// `telegram.retry_max_secs`: short, so polling recovers quickly after a fault.
    pub retry_max_secs: u64,
    /// Appended to the file verbatim.
    pub extra_toml: String,
    /// Extra environment of the gateway process.
    pub env: Vec<(String, String)>,
    /// None: the `hermes-gateway` [`binaries`] built.
    pub gateway_binary: Option<PathBuf>,
    /// `telegram.max_queued_per_chat`, when not the default.
    pub max_queued_per_chat: Option<usize>,
    /// `workers.max_restarts`: high by default, so fault tests are not cut short by the
    /// restart-intensity limit (which has tests of its own).
    pub max_restarts: u32,
    /// `workers.memory_limit_mb`, when not the default.
    pub memory_limit_mb: Option<u64>,
    /// `quota_cooldown_secs` of every provider, when not the default.
    pub quota_cooldown_secs: Option<u64>,
    /// Lines added to the `[telegram]` table verbatim (`streaming = false`, …).
    pub telegram_toml: String,
    /// Name the state directory in the file (`state.dir`); false leaves it to
    /// `$STATE_DIRECTORY`, as under systemd.
    pub state_dir_in_config: bool,
    /// Indices of the providers whose entry says `vision = true`.
    pub vision: Vec<usize>,
    /// `workers.spares`, when not the default.
    pub spares: Option<usize>,
    /// Lines added to every `[[providers]]` entry verbatim (prices, …).
    pub provider_toml: String,
    /// Give the gateway `$RUNTIME_DIRECTORY` on a tmpfs, as the units do (`/run` and
    /// `$XDG_RUNTIME_DIR` are tmpfs on a systemd host), when `/dev/shm` is one; else the
    /// gateway's own default, under its state directory.
    pub runtime_on_tmpfs: bool,
}

impl GatewayOptions {
    pub fn new(mode: WorkerMode) -> Self {
        GatewayOptions {
            mode,
            pool_size: 2,
            job_timeout_secs: 20,
            worker_command: None,
            allowed_users: vec![USER],
            providers: Vec::new(),
            max_retries: 2,
            poll_timeout_secs: 5,
            retry_max_secs: 1,
            extra_toml: String::new(),
            env: Vec::new(),
            gateway_binary: None,
            max_queued_per_chat: None,
            max_restarts: 10_000,
            memory_limit_mb: None,
            quota_cooldown_secs: None,
            // A streamed answer is several sends and edits; most tests want the one
            // finished reply, so streaming is on only where a test is about it.
            telegram_toml: "streaming = false\n".into(),
            state_dir_in_config: true,
            vision: Vec::new(),
            spares: None,
            provider_toml: String::new(),
            runtime_on_tmpfs: false,
        }
    }

    pub fn to_toml(&self, telegram_url: &str, state_dir: &Path) -> String {
        let mut toml = format!(
            "[telegram]\ntoken_env = \"HERMES_TEST_TELEGRAM_TOKEN\"\napi_url = \"{telegram_url}\"\n\
             allowed_users = {:?}\npoll_timeout_secs = {}\nretry_max_secs = {}\n\n",
            self.allowed_users, self.poll_timeout_secs, self.retry_max_secs
        );
        if !self.telegram_toml.is_empty() {
            toml = toml.replacen(
                "[telegram]\n",
                &format!("[telegram]\n{}\n", self.telegram_toml.trim_end()),
                1,
            );
        }
        if let Some(n) = self.max_queued_per_chat {
            toml = toml.replacen(
                "[telegram]\n",
                &format!("[telegram]\nmax_queued_per_chat = {n}\n"),
                1,
            );
        }
        for (i, url) in self.providers.iter().enumerate() {
            toml.push_str(&format!(
                "[[providers]]\nname = \"p{i}\"\nbase_url = \"{url}\"\nmodel = \"model-{i}\"\n\
                 api_key_env = \"HERMES_TEST_PROVIDER_KEY\"\nmax_retries = {}\nrequest_timeout_secs = 60\n\n",
                self.max_retries
            ));
            if let Some(secs) = self.quota_cooldown_secs {
                toml.push_str(&format!("quota_cooldown_secs = {secs}\n\n"));
            }
            if self.vision.contains(&i) {
                toml.push_str("vision = true\n\n");
            }
            if !self.provider_toml.is_empty() {
                toml.push_str(&format!("{}\n\n", self.provider_toml.trim_end()));
            }
        }
        toml.push_str(&format!(
            "[workers]\nmode = \"{}\"\npool_size = {}\njob_timeout_secs = {}\nkill_grace_secs = 1\nshutdown_drain_secs = 2\nmax_restarts = {}\n",
            self.mode.as_str(),
            self.pool_size,
            self.job_timeout_secs,
            self.max_restarts
        ));
        if let Some(mb) = self.memory_limit_mb {
            toml.push_str(&format!("memory_limit_mb = {mb}\n"));
        }
        if let Some(spares) = self.spares {
            toml.push_str(&format!("spares = {spares}\n"));
        }
        if let Some(cmd) = &self.worker_command {
            toml.push_str(&format!("command = \"{}\"\n", cmd.display()));
        }
        if self.state_dir_in_config {
            toml.push_str(&format!("\n[state]\ndir = \"{}\"\n", state_dir.display()));
        }
        toml.push_str(&self.extra_toml);
        toml
    }
}

/// A running `hermes-gateway run`, killed with its workers when dropped.
pub struct Gateway {
    child: Child,
    pid: i32,
    pub dir: tempfile::TempDir,
    /// `$RUNTIME_DIRECTORY` when [`GatewayOptions::runtime_on_tmpfs`] gave one: held to
    /// be removed with the gateway.
    _runtime_dir: Option<tempfile::TempDir>,
    pub config_path: PathBuf,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Gateway {
    pub fn start(options: &GatewayOptions, telegram_url: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Gateway::start_in(dir, options, telegram_url)
    }

    pub fn start_in(
        dir: tempfile::TempDir,
        options: &GatewayOptions,
        telegram_url: &str,
    ) -> Gateway {
        let config_path = dir.path().join("hermes.toml");
        let toml = options.to_toml(telegram_url, &dir.path().join("state"));
        std::fs::write(&config_path, toml).unwrap_or_else(|e| panic!("write config: {e}"));
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("log file: {e}"));
        let program = options
            .gateway_binary
            .clone()
            .unwrap_or_else(|| binaries().gateway.clone());
        let mut command = Command::new(program);
        // A session of its own, as systemd gives a service: every process descended from
        // the gateway carries its pid as session id, even one reparented to init after its
        // parent died, and a worker's environment (which tools no longer inherit) is not
        // needed to find it. Out of the terminal's process group, it would no longer get
        // the Ctrl-C that interrupts a test run: the parent-death signal stops it instead
        // (sent when the thread that started it ends, which outlives the test's body).
        // SAFETY: setsid and prctl are async-signal-safe and allocate nothing.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGTERM))?;
                Ok(())
            });
        }
        let runtime_dir = options.runtime_on_tmpfs.then(tmpfs_dir).flatten();
        let child = command
            .args(["run", "--config"])
            .arg(&config_path)
            .env("HERMES_TEST_TELEGRAM_TOKEN", TOKEN)
            .env("HERMES_TEST_PROVIDER_KEY", API_KEY)
            .env("HERMES_LOG", "info")
            .env_remove("HERMES_CONFIG")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .envs(runtime_dir.iter().map(|d| ("RUNTIME_DIRECTORY", d.path())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start hermes-gateway: {e}"));
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        Gateway {
            child,
            pid,
            dir,
            _runtime_dir: runtime_dir,
            config_path,
            log_path,
            exited: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Kills this gateway (if still running), waits until it is gone (a next run would
    /// find the state directory's lock still held), and hands back its directory, so a
    /// next run can start on the same state.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.start_kill();
        let until = Instant::now() + PATIENCE;
        while self.exited.is_none() && Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(status)) => self.exited = Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        wait_for_the_state_lock(&self.dir.path().join("state"), until);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::mem::replace(&mut self.dir, dir)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Panics with the gateway's log unless it is still running as the same process.
    pub fn assert_running(&mut self, pid: i32) {
        assert_eq!(self.pid, pid, "the gateway's PID changed");
        assert!(
            self.is_running(),
            "the gateway exited: {:?}\n{}",
            self.exited,
            self.log()
        );
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal);
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return Some(status);
        }
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .ok()?;
        self.exited = Some(status);
        Some(status)
    }

    /// The worker socket this gateway listens on (workers get it in
    /// `HERMES_WORKER_SOCKET`; the tools they start do not).
    pub fn socket_path(&self) -> String {
        self.dir
            .path()
            .join(format!("state/run/workers/gateway-{}.sock", self.pid))
            .display()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The status the gateway publishes (`state/status.json`), or null while there is none.
    pub fn status_json(&self) -> serde_json::Value {
        std::fs::read_to_string(self.dir.path().join("state/status.json"))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// `hermes-gateway status` (with `args`) for this gateway, as an operator runs it:
    /// exit code and output.
    pub async fn status_command(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(&binaries().gateway)
            .arg("status")
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .await
            .unwrap_or_else(|e| panic!("run status: {e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The gateway's live child processes: its workers (not the short-lived sandbox probe
    /// it runs at start-up).
    pub fn workers(&self) -> Vec<procs::ProcInfo> {
        // A child forked and not yet through its exec still reads as the gateway itself;
        // one in its exec, or exiting, has no command line to read: neither is a worker
        // yet (or still), and a template read then is not mistaken for one.
        let own = procs::info(self.pid).map(|p| p.cmdline).unwrap_or_default();
        procs::children_of(self.pid)
            .into_iter()
            .filter(|p| !p.is_zombie() && !p.cmdline.is_empty())
            .filter(|p| !p.cmdline.contains("sandbox-probe"))
            // The template per-request workers are forked from runs no job.
            .filter(|p| !p.cmdline.ends_with("hermes-worker zygote"))
            .filter(|p| p.cmdline != own)
            .collect()
    }

    /// Every live process this gateway started, directly or not, wherever it was
    /// reparented: the rest of its session.
    pub fn descendants(&self) -> Vec<procs::ProcInfo> {
        procs::live_in_session(self.pid)
            .into_iter()
            .filter(|p| p.pid != self.pid)
            .collect()
    }

    /// Processes of this gateway that belong to no worker it runs now: anything in its
    /// session but the gateway itself, its live workers and the members of their process
    /// groups (a pool worker's tool servers). A process of a worker that was ended, or one
    /// that left its worker's group, is here.
    pub fn strays(&self) -> Vec<procs::ProcInfo> {
        let workers: Vec<i32> = self.workers().iter().map(|w| w.pid).collect();
        self.descendants()
            .into_iter()
            // The sandbox probe and the template per-request workers are forked from are
            // the gateway's own helpers, not a worker's leftovers.
            .filter(|p| {
                let template = p.ppid == self.pid && p.cmdline.ends_with("hermes-worker zygote");
                !workers.contains(&p.pid)
                    && !workers.contains(&p.pgid)
                    && !p.cmdline.contains("sandbox-probe")
                    && !template
            })
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Everything it started, whatever group it is in: a test that failed must not
        // leave a stubborn process behind for the next.
        for process in self.descendants() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(process.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let own_group = nix::unistd::getpgrp().as_raw();
        for worker in procs::children_of(self.pid) {
            // A child caught between fork and its own setpgid is still in the gateway's
            // group, which is this test's: kill it alone, never the test.
            if worker.pgid == own_group {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(worker.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                continue;
            }
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(worker.pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.start_kill();
    }
}

/// Waits until `condition` holds, checking every 10 ms, for at most `timeout`: for states
/// only /proc can show, where there is no event to wait on.
/// Runs `probe` until it yields a value or `timeout` passes (a scrape, a connection).
pub async fn eventually_async<T, Fut>(
    timeout: Duration,
    mut probe: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gateway wired to a fake Telegram server and a fake provider.
pub struct Rig {
    pub telegram: FakeTelegram,
    pub provider: FakeProvider,
    pub gateway: Gateway,
    pub pid: i32,
    /// Messages (`sendMessage`s, edits not counted) each chat should hold by the test's
    /// own account: one per [`Rig::ask`], and what [`Rig::assert_replies_in`] recorded.
    /// Checked again after each follow-up, so a reply that came twice fails the test.
    accounted: Mutex<HashMap<i64, usize>>,
}

impl Rig {
    /// Starts the fakes and a gateway whose first provider is the fake provider;
    /// `customize` may change anything else.
    pub async fn start(mode: WorkerMode, customize: impl FnOnce(&mut GatewayOptions)) -> Rig {
        Rig::start_with(mode, customize, |_| {}).await
    }

    /// Like [`Rig::start`], with `prepare` run on the fake Telegram server before the
    /// gateway starts (to script faults it meets at start-up).
    pub async fn start_with(
        mode: WorkerMode,
        customize: impl FnOnce(&mut GatewayOptions),
        prepare: impl FnOnce(&FakeTelegram),
    ) -> Rig {
        let telegram = FakeTelegram::start().await;
        telegram.fail_the_test_on_malformed_sends();
        prepare(&telegram);
        let provider = FakeProvider::start().await;
        let mut options = GatewayOptions::new(mode);
        options.providers = vec![provider.base_url()];
        customize(&mut options);
        let gateway = Gateway::start(&options, &telegram.api_url());
        let pid = gateway.pid();
        Rig {
            telegram,
            provider,
            gateway,
            pid,
            accounted: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `text` as [`USER`] in their private chat and returns the one reply.
    pub async fn ask(&self, text: &str) -> SentMessage {
        self.ask_in(USER, USER, text).await
    }

    pub async fn ask_in(&self, chat: i64, user: i64, text: &str) -> SentMessage {
        self.reply_to(chat, text, |telegram| {
            telegram.send_text(chat, user, text);
        })
        .await
    }

    /// Lets `send` deliver anything to the fake Telegram (a voice note, a photo, a
    /// sticker) and returns the one reply in `chat`; `what` names it in a failure.
    pub async fn reply_to(
        &self,
        chat: i64,
        what: &str,
        send: impl FnOnce(&FakeTelegram),
    ) -> SentMessage {
        let text = what;
        let before = self.telegram.sent_to(chat).len();
        send(&self.telegram);
        let sent = self
            .telegram
            .wait_for_chat_messages(chat, before + 1, PATIENCE)
            .await;
        match sent.get(before) {
            Some(reply) => {
                *self.accounted().entry(chat).or_default() += 1;
                reply.clone()
            }
            None => panic!(
                "no reply to {text:?} in chat {chat} within {PATIENCE:?}\n--- gateway log ---\n{}",
                self.gateway.log()
            ),
        }
    }

    /// The same fakes, and the same account of each chat's messages, around a new gateway:
    /// `start` gets the stopped one (for its state) and starts the next.
    pub fn restart_with(
        self,
        start: impl FnOnce(Gateway, &FakeTelegram, &FakeProvider) -> Gateway,
    ) -> Rig {
        let Rig {
            telegram,
            provider,
            gateway,
            accounted,
            ..
        } = self;
        let gateway = start(gateway, &telegram, &provider);
        Rig {
            pid: gateway.pid(),
            telegram,
            provider,
            gateway,
            accounted,
        }
    }

    /// A rig around a gateway the test started again itself (after killing the first),
    /// with the fakes it already had; nothing is accounted for yet.
    pub fn from_parts(telegram: FakeTelegram, provider: FakeProvider, gateway: Gateway) -> Rig {
        Rig {
            pid: gateway.pid(),
            telegram,
            provider,
            gateway,
            accounted: Mutex::new(HashMap::new()),
        }
    }

    fn accounted(&self) -> std::sync::MutexGuard<'_, HashMap<i64, usize>> {
        self.accounted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The messages in `chat`: `sendMessage`s, each counted once however often it was
    /// edited.
    pub fn messages_in(&self, chat: i64) -> Vec<SentMessage> {
        self.telegram
            .sent_to(chat)
            .into_iter()
            .filter(|m| m.method == "sendMessage")
            .collect()
    }

    /// Asserts [`USER`]'s chat holds exactly `n` messages now; see
    /// [`Rig::assert_replies_in`].
    pub fn assert_replies(&self, n: usize) {
        self.assert_replies_in(USER, n);
    }

    /// Asserts `chat` holds exactly `n` messages now, and takes `n` as the test's account
    /// of it (for replies it waited for without [`Rig::ask`]): every follow-up check counts
    /// on from there.
    pub fn assert_replies_in(&self, chat: i64, n: usize) {
        let messages = self.messages_in(chat);
        assert_eq!(
            messages.len(),
            n,
            "messages in chat {chat}: {messages:#?}\n--- gateway log ---\n{}",
            self.gateway.log()
        );
        self.accounted().insert(chat, n);
    }

    /// Asserts every chat holds exactly the messages the test accounted for: one per
    /// [`Rig::ask`], plus what [`Rig::assert_replies_in`] recorded. Run once the reply to a
    /// follow-up is in (a chat is answered in order, so whatever the fault's job sent is in
    /// by then), it catches a reply to the fault that came twice, or one nobody asked for.
    pub fn assert_one_reply_each(&self) {
        let accounted = self.accounted().clone();
        for (chat, n) in accounted {
            let messages = self.messages_in(chat);
            assert_eq!(
                messages.len(),
                n,
                "chat {chat} holds {} messages where the test accounts for {n}: a reply \
                 came twice or unasked\n{messages:#?}\n--- gateway log ---\n{}",
                messages.len(),
                self.gateway.log()
            );
        }
    }

    /// Panics with the gateway's log unless it contains `needle`.
    pub fn assert_logged(&self, needle: &str) {
        let log = self.gateway.log();
        assert!(
            log.contains(needle),
            "the gateway never logged {needle:?}:\n{log}"
        );
    }

    /// Like [`Rig::assert_still_serving`], for a gateway whose workers are `bad-worker`.
    pub async fn assert_still_answering_as_bad_worker(&mut self) {
        self.assert_follow_up("still there?", "ok: still there?")
            .await;
    }

    /// Asserts the gateway is still the same process, a healthy message is answered, and
    /// then that no chat holds a reply the test did not account for
    /// ([`Rig::assert_one_reply_each`]): what every fault test ends with.
    pub async fn assert_still_serving(&mut self) {
        self.assert_follow_up("are you still there?", "are you still there?")
            .await;
    }

    /// The follow-up every fault test ends with: the gateway is the same process, `text`
    /// gets a reply containing `expected`, and then no chat holds a message the test did
    /// not account for ([`Rig::assert_one_reply_each`]).
    ///
    /// `expected` must be a text no reply to the fault contains (an echo of `text`, or a
    /// command's answer): a chat's messages are answered in order, so once the reply to
    /// `text` is there, everything the fault's job sent is there too, and a second reply
    /// to the fault is counted rather than mistaken for the follow-up's.
    pub async fn assert_follow_up(&mut self, text: &str, expected: &str) {
        self.gateway.assert_running(self.pid);
        let asked = Instant::now();
        self.telegram.send_text(USER, USER, text);
        let reply = self
            .telegram
            .wait_for_sent(
                |m| m.chat_id == USER && m.at >= asked && m.text.contains(expected),
                PATIENCE,
            )
            .await;
        assert!(
            reply.is_some(),
            "no reply containing {expected:?} to {text:?} after the fault: {:#?}\n{}",
            self.telegram.sent_to(USER),
            self.gateway.log()
        );
        *self.accounted().entry(USER).or_default() += 1;
        self.assert_one_reply_each();
        self.gateway.assert_running(self.pid);
    }
}

/// Sends `message` to a gateway whose workers are the misbehaving `bad-worker`, and checks
/// that the fault was contained: one reply containing `expected`, no process of the worker
/// left anywhere, the same gateway still running, and the next message answered.
pub async fn fault_in_bad_worker(mode: WorkerMode, message: &str, expected: &str) -> Rig {
    fault_in_bad_worker_with(mode, message, expected, |_| {}).await
}

pub async fn fault_in_bad_worker_with(
    mode: WorkerMode,
    message: &str,
    expected: &str,
    customize: impl FnOnce(&mut GatewayOptions),
) -> Rig {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let worker = bad_worker(dir.path(), "bad-worker");
    let mut rig = Rig::start(mode, |o| {
        o.worker_command = Some(worker);
        o.job_timeout_secs = 2;
        customize(o);
    })
    .await;
    let reply = rig.ask(message).await;
    assert!(
        reply.text.contains(expected),
        "{message}: {}\n{}",
        reply.text,
        rig.gateway.log()
    );
    rig.assert_replies(1);
    rig.assert_no_stray_processes().await;
    // The bad worker answers anything else with "ok: …".
    rig.assert_still_answering_as_bad_worker().await;
    rig
}

impl Rig {
    /// No process this gateway ever started is alive except the workers it runs now and
    /// the members of their groups ([`Gateway::strays`]): a worker ended after a fault
    /// took its tools, their children and anything else in its group with it, even
    /// orphans reparented to init, and even where they ignored SIGTERM.
    pub async fn assert_no_stray_processes(&self) {
        let clean = eventually(Duration::from_secs(5), || self.gateway.strays().is_empty()).await;
        assert!(
            clean,
            "stray processes of this gateway's workers: {:#?}\n--- gateway log ---\n{}",
            self.gateway.strays(),
            self.gateway.log()
        );
    }
}

/// Returns once no process holds the state directory's lock (or at `until`). A gateway
/// that was killed while starting a worker leaves that child between its spawn and its
/// exec for a moment, with a copy of every descriptor, the lock file's too, and so the
/// lock: a gateway started again in that moment is refused (exit 75, which a unit
/// restarts; a test starts it once).
fn wait_for_the_state_lock(state_dir: &Path, until: Instant) {
    let Ok(file) = std::fs::File::open(state_dir.join("gateway.lock")) else {
        return;
    };
    let mut file = file;
    while Instant::now() < until {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            // Dropped at once: released for the gateway that comes next.
            Ok(_free) => return,
            Err((back, _)) => {
                file = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
