//! The unit under a real systemd (252, cgroup v2 with the memory controller), in the
//! throwaway VM of `../shared/systemd-sandbox/` (containers on these machines cannot
//! enforce `MemoryMax=` or trigger `OOMPolicy=`). One boot, four incidents:
//!
//! 1. workers OOM-killed inside `MemoryMax=` again and again: the unit stays `active`, same
//!    `MainPID`, `NRestarts=0`, and `memory.events` counts the kills (`OOMPolicy=continue`);
//! 2. `systemctl stop` returns within `TimeoutStopSec`, `Result=success`, nothing left;
//! 3. a poll loop that stalls (Telegram accepts the connection and never answers) gets the
//!    unit restarted by the watchdog (`Result=watchdog`);
//! 4. `kill -TERM` of a worker: replaced, same `MainPID`; of the gateway: it drains, exits
//!    0, and `Restart=always` brings it back.
//!
//! The gateway needs no Telegram server for any of this: it keeps retrying meanwhile.
//! Skipped, with the reason printed, where the VM cannot start (not root, no apt); under
//! CI (`HERMES_CI`) that fails it instead (`hermes_tests::skip`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hermes_tests::harness::binaries;

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
        assert!(ok, "in the VM, `{command}` failed:\n{out}");
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
    let output = Command::new(&script)
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

const CONFIG: &str = r#"
[telegram]
token_env = "TELEGRAM_BOT_TOKEN"
api_url = "API_URL"
retry_max_secs = 1
poll_timeout_secs = 10

[[providers]]
name = "p"
base_url = "http://127.0.0.1:9/v1"
model = "m"

[workers]
mode = "pool"
pool_size = 1
command = "WORKER"
memory_limit_mb = 0
kill_grace_secs = 1
shutdown_drain_secs = 2
max_restarts = 1000

[state]
dir = "/var/lib/hermes"
"#;

fn config(api_url: &str, worker: &str) -> String {
    CONFIG.replace("API_URL", api_url).replace("WORKER", worker)
}

#[test]
fn the_unit_under_a_real_systemd() {
    let share = tempfile::tempdir().expect("tempdir");
    let bins = binaries();
    let bad_worker = bins.gateway.with_file_name("bad-worker");
    for (from, name) in [
        (&bins.gateway, "hermes-gateway"),
        (&bins.worker, "hermes-worker"),
        (&bad_worker, "bad-worker"),
    ] {
        std::fs::copy(from, share.path().join(name)).unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
    std::os::unix::fs::symlink("bad-worker", share.path().join("alloc-at-start")).expect("symlink");
    std::fs::write(
        share.path().join("oom.toml"),
        config("http://127.0.0.1:9", "/mnt/host/alloc-at-start"),
    )
    .expect("write");
    std::fs::write(
        share.path().join("stall.toml"),
        config("http://127.0.0.1:8081", "/mnt/host/bad-worker"),
    )
    .expect("write");
    std::fs::write(
        share.path().join("calm.toml"),
        config("http://127.0.0.1:9", "/mnt/host/bad-worker"),
    )
    .expect("write");

    let vm = match boot(share.path()) {
        Ok(vm) => vm,
        Err(reason) => {
            hermes_tests::skip::skip(&format!("the VM cannot start: {reason}"));
            return;
        }
    };
    // Install as an operator would: the gateway writes its own unit.
    vm.run("mkdir -p /etc/hermes && cp /mnt/host/oom.toml /etc/hermes/hermes.toml");
    let installed =
        vm.run("/mnt/host/hermes-gateway service install --config /etc/hermes/hermes.toml");
    assert!(
        installed.contains("systemctl enable --now hermes-gateway"),
        "{installed}"
    );
    // The test's own settings: no credential files exist in the VM, a token in the
    // environment instead, and a small memory ceiling.
    vm.run(
        "mkdir -p /etc/systemd/system/hermes-gateway.service.d && printf '[Service]\\nLoadCredential=\\nEnvironment=TELEGRAM_BOT_TOKEN=123:test\\nMemoryMax=120M\\nMemorySwapMax=0\\n' > /etc/systemd/system/hermes-gateway.service.d/test.conf && systemctl daemon-reload",
    );

    // 1. Workers OOM-killed inside MemoryMax: the unit carries on.
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
    assert_eq!(vm.show("ActiveState"), "active", "{}", vm.journal());
    assert_eq!(
        vm.show("MainPID"),
        main_pid,
        "the gateway was replaced:\n{}",
        vm.journal()
    );
    assert_eq!(vm.show("NRestarts"), "0", "{}", vm.journal());
    println!(
        "OOM: {} worker OOM kills, unit active, MainPID {main_pid} unchanged, NRestarts=0",
        oom_kills(&vm)
    );

    // 2. systemctl stop: within TimeoutStopSec, Result=success, nothing left.
    let started = Instant::now();
    vm.run("systemctl stop hermes-gateway");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "stop took {took:?}");
    assert_eq!(vm.show("Result"), "success", "{}", vm.journal());
    // The bracket keeps grep from matching its own command line.
    let (_, left) = vm.exec("ps -eo pid,args | grep '[/]mnt/host/' || true");
    assert!(left.trim().is_empty(), "processes left after stop: {left}");
    println!("stop: {took:?}, Result=success, no process left");

    // 3. A stalled poll loop: Telegram accepts and never answers; the watchdog restarts.
    vm.run("systemd-run --unit=stall-telegram python3 -c \"import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 8081)); s.listen(100); time.sleep(100000)\"");
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
}
